"""Where the planned runs execute: here, one per GPU on this node, or on SLURM.

Every launcher hands a run the *same* config the planner resolved (the sweep's overrides plus the
run's own), so the run id -- and with it the run directory, checkpoints and record -- is the one
in plan.json. Each run writes its own record before it exits; the sweep rebuilds the study's
state from disk alone (RELIABILITY.md: the launcher's parent may die, the array keeps running).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import Study
from pipeline.errors import UserError
from pipeline.plan import PlannedRun


def launch_local(study: Study, runs: list[PlannedRun]) -> None:
    """One after another in this process (CPU demo, a single GPU). A failed run does not stop the sweep."""
    from pipeline.lock import claim, release
    from pipeline.train import execute

    for i, run in enumerate(runs, 1):
        rd = Path(study.results_dir) / study.sweep_name / "runs" / run.run_id
        if not claim(rd):
            print(f"[{i}/{len(runs)}] {run.run_id}: held by another worker, skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.run_id}: N={run.spec.n_params:.3g} D={run.spec.tokens:.3g} "
              f"C={run.spec.flops['exact']:.2e}", flush=True)
        try:
            job = run.job
            record = execute(job)
            if record["status"] == "preempted":  # the signal was for this whole process: stop the sweep here
                print(f"[{i}/{len(runs)}] {run.run_id}: preempted ({record.get('stop_signal')}), checkpoint saved; "
                      "relaunch the sweep to resume", flush=True)
                return
            loss = record.get("final_val_loss")
            print(f"[{i}/{len(runs)}] {run.run_id}: {record['status']}"
                  + (f", val loss {loss:.4f}, {record['tokens_per_s'] / 1e3:.0f}k tok/s" if loss else ""), flush=True)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - recorded as failed by the run itself; go on
            print(f"[{i}/{len(runs)}] {run.run_id}: failed ({type(err).__name__}: {err})", flush=True)
        finally:
            release(rd)


def train_command(overrides: list[str], run: PlannedRun) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", *overrides, *run.overrides, "train.progress=false"]


def launch_node(study: Study, runs: list[PlannedRun], overrides: list[str]) -> None:
    """Several runs at once on one node, one per GPU (CUDA_VISIBLE_DEVICES), as subprocesses.

    A preempted run (exit 75) is started again and resumes from its checkpoint.
    """
    gpus = study.launcher.gpus
    if gpus < 1:
        raise UserError(f"launcher.gpus={gpus} must be >= 1")
    queue = sorted(runs, key=lambda r: -r.spec.flops["exact"])  # longest first: shortest makespan
    active: dict[int, tuple[subprocess.Popen, PlannedRun]] = {}
    log_dir = Path(study.results_dir) / study.sweep_name / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    while queue or active:
        for gpu in range(gpus):
            if gpu not in active and queue:
                run = queue.pop(0)
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
                log = open(log_dir / f"{run.run_id}.log", "a")  # noqa: SIM115 - closed when the process ends
                proc = subprocess.Popen(train_command(overrides, run), env=env, stdout=log, stderr=subprocess.STDOUT)
                active[gpu] = (proc, run)
                print(f"gpu {gpu}: {run.run_id} started (log {log.name})", flush=True)
        time.sleep(2)
        for gpu, (proc, run) in list(active.items()):
            code = proc.poll()
            if code is None:
                continue
            del active[gpu]
            print(f"gpu {gpu}: {run.run_id} exited {code}", flush=True)
            if code == 75:
                queue.append(run)


def launch_slurm(study: Study, runs: list[PlannedRun], overrides: list[str]) -> None:
    from pipeline.slurm import submit_array

    submit_array(study, runs, overrides)
