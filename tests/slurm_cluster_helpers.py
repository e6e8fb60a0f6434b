"""Waiting on a real SLURM cluster without hanging: every wait has a deadline and fails with the log
that explains it (tests/test_slurm_cluster.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.train import scheduler  # noqa: F401 - re-exported for the tests

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
TIMEOUT_S = 600


def cluster_script():
    """scripts/slurm_cluster.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("slurm_cluster", REPO / "scripts" / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sweep(args: list[str], log: Path | None, wait: bool = True, dry_run: bool = False):
    """`python -m pipeline.sweep ARGS`: (exit code, output) when waited for, else (the process, its log)."""
    cmd = [sys.executable, "-m", "pipeline.sweep", *args, *(["sweep.dry_run=true"] if dry_run else [])]
    if log is None:
        done = subprocess.run(cmd, cwd=REPO, env={**ENV, **os.environ}, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        return done.returncode, done.stdout + done.stderr
    proc = subprocess.Popen(cmd, cwd=REPO, env={**ENV, **os.environ}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    if not wait:
        return proc, log
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the sweep did not end in {TIMEOUT_S} s:\n{log.read_text()[-3000:]}") from None
    return code, log.read_text()


def sweep_log(root: Path) -> str:
    """Every array task's output (submitit's logs) under a results folder."""
    return "".join(p.read_text(errors="replace") for p in sorted(Path(root).rglob("*_log.*")))


def wait_for(condition, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"waited {timeout_s:.0f} s for {what}\n{tail}")


def wait_for_progress(run_dir: Path, steps: int, procs: list, log: Path) -> dict:
    """The lease of the SLURM task training `run_dir` once it has logged `steps` steps (checkpointed each)."""
    found = {}

    def ready() -> bool:
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"the sweep ended before {run_dir.name} reached step {steps}:\n{log.read_text()[-3000:]}")
        try:
            lease = json.loads((run_dir / ".lock").read_text())
            rows = (run_dir / "train.jsonl").read_text().count("\n")
        except (OSError, ValueError):
            return False
        found.update(lease)
        return bool(lease.get("slurm_job_id")) and rows >= steps

    wait_for(ready, TIMEOUT_S, f"{run_dir.name} to reach step {steps} in a SLURM job", log)
    return found


def job_field(job: str, field: str) -> str | None:
    """One field of `scontrol show job` (Restarts, JobState, ...)."""
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    for word in out.split():
        key, _, value = word.partition("=")
        if key == field:
            return value
    return None


def wait_for_job(job: str, states: set[str], restarts: int | None = None, timeout_s: float = TIMEOUT_S) -> None:
    def reached() -> bool:
        return scheduler.job_state(job) in states and (restarts is None or job_field(job, "Restarts") == str(restarts))

    try:
        wait_for(reached, timeout_s, f"job {job} to be {'/'.join(sorted(states))}")
    except AssertionError as err:
        raise AssertionError(f"{err}: it is {scheduler.job_state(job)}, restarts {job_field(job, 'Restarts')}") from None
