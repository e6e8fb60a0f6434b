"""Where the planned runs execute: here, one per GPU on this node, or on SLURM.

Every launcher hands a run the *same* config the planner resolved (the sweep's overrides plus the
run's own), so the run id -- and with it the run directory, checkpoints and record -- is the one
in plan.json. Each run writes its own record before it exits; the sweep rebuilds the study's
state from disk alone (docs/reliability.md: the launcher's parent may die, the array keeps running).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.plan.design import PlannedRun
from pipeline.sweep.slurm_array import submit_array
from pipeline.train.lock import claim_unfinished, release
from pipeline.train.run import execute

POLL_S = 2.0   # how often the node launcher looks for finished runs


def launch_local(study: Study, runs: list[PlannedRun]) -> str | None:
    """One after another in this process (CPU demo, a single GPU). A failed run does not stop the sweep;
    a preemption signal does (it was for this whole process): then "stopped" is returned."""

    for i, run in enumerate(runs, 1):
        rd = Path(study.results_dir) / study.sweep_name / "runs" / run.run_id
        state, record = claim_unfinished(rd, run.run_id)  # never re-enter a run another sweep finished
        if state == "held":
            print(f"[{i}/{len(runs)}] {run.run_id}: held by another worker, skipped", flush=True)
            continue
        if state == "finished":
            print(f"[{i}/{len(runs)}] {run.run_id}: already {record['status']} (finished by another worker), "
                  "skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.run_id}: N={run.spec.n_params:.3g} D={run.spec.tokens:.3g} "
              f"C={run.spec.flops['exact']:.2e}", flush=True)
        try:
            job = run.job
            record = execute(job)
            if record["status"] == "preempted":  # the signal was for this whole process: stop the sweep here
                print(f"[{i}/{len(runs)}] {run.run_id}: preempted ({record.get('stop_signal')}), checkpoint saved; "
                      "relaunch the sweep to resume", flush=True)
                return "stopped"
            loss = record.get("final_val_loss")
            print(f"[{i}/{len(runs)}] {run.run_id}: {record['status']}"
                  + (f", val loss {loss:.4f}, {record['tokens_per_s'] / 1e3:.0f}k tok/s" if loss else ""), flush=True)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - recorded as failed by the run itself; go on
            print(f"[{i}/{len(runs)}] {run.run_id}: failed ({type(err).__name__}: {err})", flush=True)
        finally:
            release(rd)
    return None


def train_command(overrides: list[str], run: PlannedRun) -> list[str]:
    """`python -m pipeline.train ...`, or `accelerate launch` over the run's GPUs (data parallel)."""
    args = ["-m", "pipeline.train", *overrides, *run.overrides, "train.progress=false"]
    if run.gpus == 1:
        return [sys.executable, *args]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(run.gpus), *args]


def launch_node(study: Study, runs: list[PlannedRun], overrides: list[str]) -> None:
    """Several runs at once on one node as subprocesses, each on its own GPUs (CUDA_VISIBLE_DEVICES).

    A run takes `run.gpus` GPUs: one by default, or `launcher.gpus_per_run` under `accelerate
    launch` for the sizes that need it (pipeline.plan.gpus_for_run). Runs start longest first, in
    that order, each as soon as enough GPUs are free (in order, so a multi-GPU run is never starved
    by smaller ones). A preempted run (exit 75) is queued again and resumes from its checkpoint.
    """
    gpus = study.launcher.gpus
    if gpus < 1 or study.launcher.gpus_per_run < 1:
        raise UserError(f"launcher.gpus={gpus} and launcher.gpus_per_run={study.launcher.gpus_per_run} must be >= 1")
    too_big = next((r for r in runs if r.gpus > gpus), None)
    if too_big:
        raise UserError(f"run {too_big.run_id} needs {too_big.gpus} GPUs but launcher.gpus={gpus}: "
                        "lower launcher.gpus_per_run or raise launcher.gpus")
    queue = sorted(runs, key=lambda r: -r.spec.flops["exact"])  # longest first: shortest makespan
    free = list(range(gpus))
    active: list[tuple[subprocess.Popen, PlannedRun, list[int]]] = []
    log_dir = Path(study.results_dir) / study.sweep_name / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    while queue or active:
        while queue and queue[0].gpus <= len(free):
            run = queue.pop(0)
            devices, free = free[:run.gpus], free[run.gpus:]
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, devices))}
            log = open(log_dir / f"{run.run_id}.log", "a")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen(train_command(overrides, run), env=env, stdout=log, stderr=subprocess.STDOUT)
            active.append((proc, run, devices))
            print(f"gpu {','.join(map(str, devices))}: {run.run_id} started (log {log.name})", flush=True)
        time.sleep(POLL_S)
        for entry in list(active):
            proc, run, devices = entry
            code = proc.poll()
            if code is None:
                continue
            active.remove(entry)
            free = sorted(free + devices)
            print(f"gpu {','.join(map(str, devices))}: {run.run_id} exited {code}", flush=True)
            if code == 75:
                queue.append(run)


def launch_slurm(study: Study, runs: list[PlannedRun], overrides: list[str]) -> None:

    submit_array(study, runs, overrides)
