"""`python -m pipeline.train`: one run -- parse, build, run, record, finish trackers.

    python -m pipeline.train model=tiny run_dir=/tmp/run1              # ~1 min on a laptop CPU
    python -m pipeline.train experiment=cpu_tiny model.size=2e5 train.flops=3e12
    accelerate launch -m pipeline.train experiment=h100_pilot ...      # several GPUs, one run

Relaunching the same command resumes from the newest checkpoint in the run directory (derived
from the run id, never from a timestamp). Exit status: 0 ok or diverged (both are recorded
outcomes), 75 preempted (checkpoint saved; relaunch to resume), 2 bad input, 1 failure.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cli import load_study, run_main
from pipeline.errors import UserError
from pipeline.plan.design import check_run
from pipeline.train.lock import claim_unfinished, lock_holder, release
from pipeline.train.run import execute, run_directory

USAGE = __doc__


def main(overrides: list[str], flags: dict) -> int:
    job = load_study(overrides, flags)
    if job is None:  # --cfg printed it
        return 0
    spec = check_run(job)  # resolve the run before its corpus is prepared: a bad combination costs nothing
    if spec is None:  # the vocabulary is known only after preparing the data
        record = execute(job)
    else:
        # A finished run is never re-entered (a node launcher's task of a run another sweep finished, a
        # repeated command): the record is checked under the run's lock, which execute() takes over.
        run_dir = run_directory(job, spec)
        state, done = claim_unfinished(run_dir, spec.run_id)
        if state == "held":
            raise UserError(f"run {spec.run_id} is being trained by another process ({lock_holder(run_dir)}): "
                            "wait for it, or stop it and relaunch")
        if state == "finished":
            print(f"{spec.run_id}: already {done['status']}, nothing to do -> {run_dir / 'run.json'}")
            return 0
        try:
            record = execute(job)
        finally:
            release(run_dir)
    line = (f"{record['run_id']}: {record['status']}, val loss {record['final_val_loss']:.4f}"
            if record["final_val_loss"] is not None else f"{record['run_id']}: {record['status']}")
    print(f"{line} -> {Path(record['run_dir']) / 'run.json'}")
    return record["exit_code"]


if __name__ == "__main__":
    run_main(main, USAGE)
