"""`python -m pipeline.train`: one run -- parse, build, run, record, finish trackers.

    python -m pipeline.train model=tiny run_dir=/tmp/run1              # ~1 min on a laptop CPU
    python -m pipeline.train experiment=cpu_tiny model.size=2e5 train.flops=3e12
    accelerate launch -m pipeline.train experiment=h100_pilot ...      # several GPUs, one run
    python -m pipeline.train --config-dir <fit dir> experiment=full_run train.dry_run=true  # the launch, checked

Several processes (one run): every rank runs this module; the main process holds the run's lock and
writes its files (docs/multiprocess.md). On a CPU-only machine `accelerate launch --multi_gpu
--num_processes 2` starts two gloo processes (accelerate's `--cpu --num_processes 2` starts one).

Relaunching the same command resumes from the newest checkpoint in the run directory (derived
from the run id, never from a timestamp). Exit status: 0 ok or diverged (both are recorded
outcomes), 75 preempted (checkpoint saved; relaunch to resume), 2 bad input, 1 failure.
"""

from __future__ import annotations

# Before anything slow is imported (torch takes seconds): from here on SIGTERM/SIGUSR1 are remembered
# and acted on at the first step boundary (checkpoint if anything was trained, record, exit 75).
from pipeline.train.stop import STOP  # isort: skip

STOP.install()

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from pipeline.cli import is_main_process, load_study, run_main  # noqa: E402
from pipeline.plan.design import check_run  # noqa: E402
from pipeline.train.dry_run import dry_run, render  # noqa: E402
from pipeline.train.engine import REQUEUE_EXIT_CODE  # noqa: E402
from pipeline.train.run import execute  # noqa: E402
from pipeline.train.stop import Preempted  # noqa: E402

USAGE = __doc__


def main(overrides: list[str], flags: dict) -> int:
    job = load_study(overrides, flags)
    if job is None:  # --cfg printed it
        return 0
    if job.train.dry_run:  # resolved at the world size it records; no process group, no data
        print(render(dry_run(job)))
        return 0
    check_run(job)  # resolve the run before its corpus is prepared: a bad combination costs nothing
    say = print if is_main_process() else (lambda *args, **kwargs: None)  # one final line per run, not per rank
    try:
        record = execute(job)
    except Preempted as stop:  # before the run had a record: nothing trained, nothing to save
        say(f"{stop}: nothing trained yet; relaunch to start", flush=True)
        return REQUEUE_EXIT_CODE
    if record.get("already_finished"):
        say(f"{record['run_id']}: already {record['status']}, nothing to do -> {Path(record['run_dir']) / 'run.json'}")
        return 0
    line = (f"{record['run_id']}: {record['status']}, val loss {record['final_val_loss']:.4f}"
            if record["final_val_loss"] is not None else f"{record['run_id']}: {record['status']}")
    say(f"{line} -> {Path(record['run_dir']) / 'run.json'}")
    return record["exit_code"]


def exit_now(code) -> None:
    """Leave without the interpreter's teardown when this process was one rank of several.

    With torch 2.13 and gloo a rank can abort at exit ("terminate called without an active
    exception", status 134) after its run ended -- seen with FSDP2 even after
    destroy_process_group -- which turns a recorded ok (0) or preempted (75) into a failure for srun,
    torchrun and the sweep. Everything the run owes is written by now (record, logs, checkpoint,
    W&B finished), so flush and exit with the real status.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    try:
        run_main(main, USAGE)
    except SystemExit as done:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            exit_now(done.code)
        raise
