"""One task of the SLURM array: train (or resume) one planned run, then let submitit requeue it.

    python -m pipeline.sweep.slurm_task -m hydra/launcher=submitit_slurm ... submission=<file> run_id=<a>,<b>

You do not call this yourself: `pipeline.sweep.slurm_array.submit_array` builds the command (one Hydra multirun
job per run id). The task reads its run's full config from the submission file the sweep wrote (the
planner's resolved `PlannedRun.job`, not overrides to re-compose: what was planned is what runs, even
if conf/ changes while the job waits in the queue), checks that it still resolves to the same run id
-- hence the same run directory -- claims the run's lease (pipeline/train/lock.py: keyed on this SLURM
job, so a requeued task takes over its own run at once) and calls `pipeline.train.execute`, which
resumes from the newest checkpoint on its own -- also after a plain `scontrol requeue` or a node
failure, which restart the task from submitit's original pickle without any checkpoint call.

Preemption and time limits (pipeline/sweep/slurm_array.py explains the design): the engine turns the signal into
"finish the step, save a checkpoint, return status preempted"; this task then hands the same signal
back to submitit's handler, which asks the Hydra launcher for `checkpoint()` (resubmit with the same
arguments), runs `scontrol requeue` and counts the timeout against `max_num_timeout`.
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from pipeline.config.load import to_schema
from pipeline.config.schema import Study
from pipeline.config.validate import validate_study as validate_Study
from pipeline.errors import UserError
from pipeline.plan.runspec import resolve_run
from pipeline.train.engine import REQUEUE_EXIT_CODE
from pipeline.train.lock import claim_unfinished, describe, read_lease, release
from pipeline.train.run import execute, run_directory
from pipeline.train.stop import Preempted


@dataclass
class SlurmJobConfig:
    run_id: str = MISSING       # one run of the submission (Hydra sweeps over these)
    submission: str = MISSING   # the JSON file pipeline.sweep.slurm_array.write_submission wrote


def load_submission(path: Path, run_id: str) -> tuple[dict, dict]:
    """(the submission, its entry for `run_id`: {"config", "vocab_size", "overrides"})."""
    try:
        submission = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the submission file {path} ({err}): relaunch the sweep to rewrite it") from err
    entry = submission["runs"].get(run_id)
    if entry is None:
        raise UserError(f"run {run_id} is not in {path}: relaunch the sweep to resubmit it")
    return submission, entry


def stop_signal(record: dict) -> str | None:
    """The signal that stopped a preempted run ("SIGUSR1"), from its record."""
    if record.get("stop_signal"):
        return str(record["stop_signal"])
    # The engine states the reason as "received SIGUSR1 at step 42" (pipeline/train/engine.py).
    match = re.match(r"received (SIG\w+)", str(record.get("error") or ""))
    return match.group(1) if match else None


def hand_back_to_submitit(record: dict) -> None:
    """Re-deliver submitit's own preemption signal so that submitit requeues this task.

    Only for the signal submitit listens to (SLURM's `--signal`, sent before the time limit and, with
    PreemptParameters=send_user_signal, at preemption). A plain SIGTERM is also what `scancel` sends:
    the run stops with its checkpoint saved and is not requeued (SLURM requeues it itself when the
    cluster preempts with PreemptMode=REQUEUE and the job has --requeue; relaunching the sweep does too).
    """
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return  # not inside a submitit job (e.g. a test calling run_task): nothing to requeue
    import submitit

    usr_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    if stop_signal(record) != usr_signal.name:
        return
    handler = signal.getsignal(usr_signal)
    if not callable(handler):
        return
    print(f"{record['run_id']}: checkpoint saved at step {record.get('steps_done')}; asking submitit to requeue",
          flush=True)
    # submitit's handler dumps the launcher's checkpoint() (same arguments), requeues, and exits.
    signal.raise_signal(usr_signal)


def run_task(run_id: str, submission_path: str | Path) -> dict:
    """Train or resume run `run_id`; return a short summary (the record on disk is the truth)."""

    submission, entry = load_submission(Path(submission_path), run_id)
    # Relative paths in the config (results_dir, data caches) mean what they meant at submission.
    os.chdir(submission["cwd"])
    job = to_schema(entry["config"], Study)
    validate_Study(job)
    spec = resolve_run(job, int(entry["vocab_size"]))
    if spec.run_id != run_id:
        raise UserError(f"run {run_id} now resolves to {spec.run_id} (the code changed since submission): "
                        "relaunch the sweep so it plans and submits again")
    run_dir = run_directory(job, spec)
    state, found = claim_unfinished(run_dir, run_id)  # the record is read under the lease
    if state == "finished":  # a duplicate or requeued task of a finished run, or another sweep finished it
        print(f"{run_id}: already {found['status']}, nothing to do", flush=True)
        return {"run_id": run_id, "status": found["status"], "skipped": True}
    if state == "held":
        # Not trained here and not done: the sweep's status reads the run's state from disk and its holder's
        # job from the scheduler, so this task's own COMPLETED never stands for the run's.
        print(f"{run_id}: not trained here -- {describe(found)} holds it and is still running", flush=True)
        return {"run_id": run_id, "status": "held", "holder": describe(found), "skipped": True}
    taken_over = (read_lease(run_dir) or {}).get("took_over")
    if taken_over:  # e.g. this very task before SLURM requeued it (killed, preempted, node lost)
        print(f"{run_id}: took the run over from {taken_over}; resuming from its newest checkpoint", flush=True)
    try:
        record = execute(job)
    except Preempted as stop:  # during the run's start-up: nothing trained, requeue all the same
        record = {"run_id": run_id, "status": "preempted", "stop_signal": stop.signal_name, "steps_done": 0,
                  "exit_code": REQUEUE_EXIT_CODE}
    finally:
        release(run_dir)
    if record["exit_code"] == REQUEUE_EXIT_CODE:
        hand_back_to_submitit(record)
    return {"run_id": run_id, "status": record["status"], "final_val_loss": record.get("final_val_loss"),
            "skipped": False}


def _task(cfg) -> dict:
    return run_task(str(cfg.run_id), str(cfg.submission))


def main() -> None:
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="slurm_job", node=SlurmJobConfig)
    hydra.main(version_base="1.3", config_path=None, config_name="slurm_job")(_task)()


if __name__ == "__main__":
    # Call through the importable module, not `__main__`: submitit pickles the task function, and a
    # function of `__main__` would be pickled by value instead of by name.
    from pipeline.sweep import slurm_task

    slurm_task.main()
