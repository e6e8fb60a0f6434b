"""The SLURM path of the sweep: one array job, one task per pending run, via hydra-submitit-launcher.

`python -m pipeline.sweep ... launcher.mode=slurm` plans the runs and calls `submit_array`, which
  1. checks the launcher settings (a bad value fails here, not after hours in the queue),
  2. writes `<results>/<sweep>/slurm/submission-<hash>.json`: the working directory and each run's
     full resolved config (the planner's `PlannedRun.job`) -- everything a task needs,
  3. runs `python -m pipeline.sweep.slurm_task -m hydra/launcher=submitit_slurm hydra.launcher.*=...
     submission=<file> run_id=<id1>,<id2>,...`: Hydra's submitit launcher submits ONE array job
     (`#SBATCH --array=0-<n-1>%<array_parallelism>`) and, like every Hydra multirun, waits for it.
     The wait is only for reporting: if this process dies, the array keeps running, every task
     writes its own record, and `python -m pipeline.sweep <same overrides> sweep.dry_run=true`
     rebuilds the study's state from disk alone (docs/reliability.md).

Preemption and time limits -- one owner per concern:
  * signal: submitit asks SLURM for `--signal=USR1@120` (SUBMITIT_PREEMPT_SIGNAL=USR1 instead of its
    default USR2, because USR1 is the signal pipeline/train/engine.py already turns into a checkpoint, and
    slurm/pilot.sbatch uses it too). SLURM sends it 120 s before the time limit, and at preemption on
    clusters with PreemptParameters=send_user_signal.
  * saving: the engine finishes the current step, writes a checkpoint and returns "preempted".
  * requeueing: submitit. The task hands the signal back to submitit's handler, which calls the
    Hydra launcher's `checkpoint()` (resubmit with the same arguments), runs `scontrol requeue` and
    counts timeouts against `max_num_timeout` (hence it must be >= 1: Hydra's default of 0 would
    drop the run at its first time limit). The requeued task finds the newest checkpoint itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config.load import as_dict
from pipeline.errors import UserError
from pipeline.records import atomic_write_json
from pipeline.sweep.scheduler_state import submission_tag

PREEMPT_SIGNAL = "USR1"      # see the module doc; read by submitit from SUBMITIT_PREEMPT_SIGNAL
SIGNAL_DELAY_S = 120         # signal this long before the time limit: one step plus a checkpoint save
# A time limit must leave training time beyond the signal delay; anything shorter is surely a slip
# (hours typed as minutes) and would only requeue, save and requeue again.
MIN_TIMEOUT_MIN = 5


def check_launcher(study, n_runs: int | None = None, executor: str = "slurm") -> None:
    """Refuse settings that would waste queue time or lose runs; one-line UserErrors.

    Cheap and offline: the sweep may call it (n_runs=None) before preparing data or planning.
    """
    lc = study.launcher
    if n_runs is not None and n_runs < 1:
        raise UserError("no pending runs to submit: every run is done or running (sweep.dry_run=true shows them)")
    if lc.timeout_min < MIN_TIMEOUT_MIN:
        raise UserError(f"launcher.timeout_min={lc.timeout_min} is too short: give at least {MIN_TIMEOUT_MIN} "
                        f"minutes (SLURM signals {SIGNAL_DELAY_S} s before the limit to save a checkpoint)")
    if executor == "local":
        return  # the local executor (tests, a workstation) has no queue, partition or requeue count
    if lc.max_num_timeout < 1:
        raise UserError(f"launcher.max_num_timeout={lc.max_num_timeout} would drop a run at its first time limit "
                        "or preemption: set launcher.max_num_timeout=3 (runs resume from their checkpoints)")
    if not lc.partition:
        raise UserError("launcher.partition is not set: name your cluster's GPU partition, e.g. "
                        "launcher.partition=gpu (`sinfo -s` lists them)")
    if lc.gpus_per_node > 1:
        raise UserError(f"launcher.gpus_per_node={lc.gpus_per_node}: each array task trains one run on one GPU; "
                        "set launcher.gpus_per_node=1 (the array spreads the runs over GPUs)")
    if lc.gpus_per_node < 1 and study.train.device == "cuda":
        raise UserError("train.device=cuda but launcher.gpus_per_node=0: set launcher.gpus_per_node=1")
    for key in ("cpus_per_task", "mem_gb", "array_parallelism"):
        if getattr(lc, key) < 1:
            raise UserError(f"launcher.{key}={getattr(lc, key)} must be >= 1")


def hydra_quote(value) -> str:
    """A value for a Hydra override: numbers and booleans bare, strings single-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def sweep_dir(study) -> Path:
    return Path(study.results_dir) / study.sweep_name


def launcher_overrides(study, executor: str = "slurm") -> list[str]:
    """LauncherConfig -> `hydra/launcher=submitit_<executor>` plus its `hydra.launcher.*` fields.

    Field names: hydra_plugins.hydra_submitit_launcher.config, SlurmQueueConf / LocalQueueConf.
    """
    lc = study.launcher
    folder = lc.submitit_folder or str(sweep_dir(study) / "submitit" / "%j")
    common = {"timeout_min": lc.timeout_min, "submitit_folder": folder, "name": study.sweep_name,
              "tasks_per_node": 1, "nodes": 1}
    if executor == "local":
        return ["hydra/launcher=submitit_local"] + [f"hydra.launcher.{k}={hydra_quote(v)}" for k, v in common.items()]
    if executor != "slurm":
        raise ValueError(f"executor must be slurm or local, not {executor!r}")
    slurm = {**common, "gpus_per_node": lc.gpus_per_node or None, "cpus_per_task": lc.cpus_per_task, "mem_gb": lc.mem_gb,
             "array_parallelism": lc.array_parallelism, "max_num_timeout": lc.max_num_timeout,
             "signal_delay_s": SIGNAL_DELAY_S, "partition": lc.partition, "account": lc.account, "qos": lc.qos,
             "constraint": lc.constraint}
    out = ["hydra/launcher=submitit_slurm"]
    out += [f"hydra.launcher.{k}={hydra_quote(v)}" for k, v in slurm.items() if v is not None]
    # --requeue: SLURM may also requeue the task itself (node failure, PreemptMode=REQUEUE).
    out.append("+hydra.launcher.additional_parameters.requeue=true")
    # Inside the job, before srun: submitit must listen for the same signal it asked SLURM for,
    # even on clusters that do not export the submitting environment (SBATCH_EXPORT=NONE).
    out.append(f"hydra.launcher.setup=['export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}']")
    return out


def write_submission(study, runs, overrides: list[str]) -> Path:
    """The file every task reads. Named by a hash of its content, so a relaunch with other runs or
    overrides never rewrites the file an earlier array's requeued tasks still read."""

    payload = {
        "cwd": os.getcwd(),
        "sweep": study.sweep_name,
        "sweep_overrides": list(overrides),   # for people reading the file; tasks use "config"
        "runs": {r.run_id: {"config": as_dict(r.job), "vocab_size": r.spec.shape.vocab_size,
                            "overrides": list(r.overrides)} for r in runs},
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
    path = (sweep_dir(study) / "slurm" / f"submission-{digest}.json").resolve()
    atomic_write_json(path, payload)
    return path


def hydra_command(study, runs, submission: Path, executor: str = "slurm") -> list[str]:
    """The Hydra multirun that submits the array (one job per run id)."""
    run_ids = ",".join(hydra_quote(r.run_id) for r in runs)
    # The array's comment names its submission file: the sweep's status maps task i to the i-th run
    # (pipeline/sweep/scheduler_state.py).
    tag = [f"+hydra.launcher.additional_parameters.comment={hydra_quote(submission_tag(submission))}"]
    return [sys.executable, "-m", "pipeline.sweep.slurm_task", "-m", *launcher_overrides(study, executor),
            *(tag if executor == "slurm" else []),
            f"hydra.sweep.dir={hydra_quote(str((sweep_dir(study) / 'submitit').resolve()))}",
            "hydra.sweep.subdir=${run_id}",   # Hydra's per-job log dir, named by run id (never a counter)
            f"submission={hydra_quote(str(submission))}", f"run_id={run_ids}"]


def start_array(study, runs, overrides: list[str], executor: str = "slurm") -> subprocess.Popen:
    """Check, write the submission file and start the Hydra multirun that submits the array."""
    check_launcher(study, len(runs), executor)
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401 - only to fail early and clearly
    except ImportError as err:
        raise UserError("launcher.mode=slurm needs hydra-submitit-launcher: pip install -e '.[slurm]'") from err
    if executor == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise UserError("sbatch/srun not found: launch from a SLURM login node, or use launcher.mode=node "
                        "(one run per GPU on this machine) or slurm/pilot.sbatch")
    submission = write_submission(study, runs, overrides)
    print(f"submitting {len(runs)} runs as one {executor} array (submission {submission}); this process waits "
          "for the array -- if it dies the array keeps running, and `sweep.dry_run=true` shows the state",
          flush=True)
    env = {**os.environ, "SUBMITIT_PREEMPT_SIGNAL": PREEMPT_SIGNAL}
    return subprocess.Popen(hydra_command(study, runs, submission, executor), env=env)


def submit_array(study, runs, overrides: list[str], executor: str = "slurm") -> int:
    """Submit the runs as one array job and wait for it (see the module doc). Returns Hydra's exit code.

    A non-zero code means a task failed or the submission was refused; the sweep then reports each
    run's state from disk, and relaunching the same sweep command resubmits what is not done.
    """
    code = start_array(study, runs, overrides, executor).wait()
    if code:
        print(f"hydra-submitit-launcher exited {code}: a task failed or the submission was refused "
              f"(logs: {sweep_dir(study) / 'submitit'})", flush=True)
    return code
