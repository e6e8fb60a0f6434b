"""Where the planned runs execute: here, one per GPU on this node, or on SLURM.

Every launcher hands a run the *same* config the planner resolved (the sweep's overrides plus the
run's own), so the run id -- and with it the run directory, checkpoints and record -- is the one
in plan.json. Each run writes its own record before it exits; the sweep rebuilds the study's
state from disk alone (docs/reliability.md: the launcher's parent may die, the array keeps running).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.plan.design import PlannedRun
from pipeline.records import RecordError, load_record
from pipeline.sweep.slurm_array import submit_array
from pipeline.train.engine import REQUEUE_EXIT_CODE
from pipeline.train.lock import claim_unfinished, describe, release
from pipeline.train.run import execute
from pipeline.train.stop import STOP, Preempted

POLL_S = 2.0   # how often the node launcher looks for finished runs


def launch_local(study: Study, runs: list[PlannedRun], count_attempt=None) -> str | None:
    """One after another in this process (CPU demo, a single GPU). A failed run does not stop the sweep;
    a preemption signal does (it was for this whole process): then "stopped" is returned and the sweep
    exits 75. `count_attempt(run_id)` is called when a run really starts, so a run the stop prevented
    from starting is not charged an attempt (issue 18, #4)."""
    owns_signals = STOP.install()  # a signal between runs or during a run's start-up must not kill the sweep
    try:
        for i, run in enumerate(runs, 1):
            if STOP.requested:
                print(f"received {STOP.signal_name}: {len(runs) - i + 1} runs not started; relaunch the sweep "
                      "to continue", flush=True)
                return "stopped"
            outcome = _run_here(study, run, f"[{i}/{len(runs)}]", count_attempt)
            if outcome == "stopped":
                return "stopped"
    finally:
        if owns_signals:
            STOP.uninstall()
    return None


def _run_here(study: Study, run: PlannedRun, tag: str, count_attempt) -> str | None:
    rd = Path(study.results_dir) / study.sweep_name / "runs" / run.run_id
    state, record = claim_unfinished(rd, run.run_id)  # never re-enter a run another sweep finished
    if state == "held":
        print(f"{tag} {run.run_id}: being trained by {describe(record)}, not started here", flush=True)
        return None
    if state == "finished":
        print(f"{tag} {run.run_id}: already {record['status']} (finished by another worker), skipped", flush=True)
        return None
    print(f"{tag} {run.run_id}: N={run.spec.n_params:.3g} D={run.spec.tokens:.3g} "
          f"C={run.spec.flops['exact']:.2e}", flush=True)
    try:
        if count_attempt is not None:
            count_attempt(run.run_id)
        record = execute(run.job)
        if record["status"] == "preempted":  # the signal was for this whole process: stop the sweep here
            print(f"{tag} {run.run_id}: preempted ({record.get('stop_signal')}), checkpoint saved; "
                  "relaunch the sweep to resume", flush=True)
            return "stopped"
        loss = record.get("final_val_loss")
        print(f"{tag} {run.run_id}: {record['status']}"
              + (f", val loss {loss:.4f}, {record['tokens_per_s'] / 1e3:.0f}k tok/s" if loss else ""), flush=True)
    except Preempted as stop:  # during the run's start-up: nothing trained
        print(f"{tag} {run.run_id}: {stop}; relaunch the sweep to resume", flush=True)
        return "stopped"
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - recorded as failed by the run itself; go on
        print(f"{tag} {run.run_id}: failed ({type(err).__name__}: {err})", flush=True)
    finally:
        release(rd)
    return None


def train_command(overrides: list[str], run: PlannedRun, port: int | None = None) -> list[str]:
    """`python -m pipeline.train ...`, or `accelerate launch` over the run's GPUs (one process per GPU).

    `--multi_gpu` starts one process per GPU through torchrun; on a machine without GPUs the same
    command starts CPU processes on gloo (accelerate's `--cpu --num_processes N` would start one).
    Runs that share a node need their own rendezvous `port` (all default to 29500).
    """
    args = ["-m", "pipeline.train", *overrides, *run.overrides, "train.progress=false"]
    if run.gpus == 1:
        return [sys.executable, *args]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(run.gpus),
            *(["--main_process_port", str(port)] if port else []), *args]


def free_port() -> int:
    """A TCP port free right now (the OS picks it); the run binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _preempted(study: Study, run: PlannedRun, code: int) -> bool:
    """Exit 75, or (under accelerate launch, which reports any failing rank as 1) a record saying preempted."""
    if code == REQUEUE_EXIT_CODE:
        return True
    try:
        return load_record(Path(study.results_dir) / study.sweep_name / "runs" / run.run_id)["status"] == "preempted"
    except RecordError:
        return False


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
            command = train_command(overrides, run, port=free_port() if run.gpus > 1 else None)
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
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
            if code != 0 and _preempted(study, run, code):
                queue.append(run)


def launch_slurm(study: Study, runs: list[PlannedRun], overrides: list[str]) -> None:

    submit_array(study, runs, overrides)
