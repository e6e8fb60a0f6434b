"""`python -m pipeline.sweep`: plan the pilot study, skip what is done, launch the rest.

    python -m pipeline.sweep experiment=cpu_tiny                       # CPU demo, runs one after another
    python -m pipeline.sweep experiment=cpu_tiny sweep.dry_run=true    # the plan and each run's state
    python -m pipeline.sweep experiment=h100_pilot launcher.mode=node  # one run per GPU on this node
    python -m pipeline.sweep experiment=h100_pilot launcher=slurm launcher.partition=gpu

Files are the source of truth: a run is done when its `run.json` says ok or diverged; failed runs
are retried up to `sweep.max_retries` times; preempted or interrupted runs resume from their
checkpoints. Relaunching the same command is always safe (idempotent).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cli import load_study, run_main
from pipeline.config import Study, as_dict
from pipeline.errors import UserError
from pipeline.lock import lock_holder
from pipeline.plan import PlannedRun, check_design, plan_sweep, plan_table
from pipeline.results import RecordError, atomic_write_json, load_record

USAGE = __doc__
TERMINAL = ("ok", "diverged")


def sweep_dir(study: Study) -> Path:
    return Path(study.results_dir) / study.sweep_name


def run_dir_of(study: Study, run: PlannedRun) -> Path:
    return sweep_dir(study) / "runs" / run.run_id


def run_state(study: Study, run: PlannedRun | str) -> str:
    """done | diverged | failed | running | preempted | missing | corrupt -- from disk alone."""
    rd = sweep_dir(study) / "runs" / (run if isinstance(run, str) else run.run_id)
    if not (rd / "run.json").exists():
        return "running" if lock_holder(rd) else ("interrupted" if (rd / "checkpoints").exists() else "missing")
    try:
        status = load_record(rd)["status"]
    except RecordError:
        return "corrupt"
    if status == "ok":
        return "done"
    if status == "running":
        return "running" if lock_holder(rd) else "interrupted"
    return status


def attempts_path(study: Study) -> Path:
    return sweep_dir(study) / "attempts.json"


def load_attempts(study: Study) -> dict:
    path = attempts_path(study)
    return json.loads(path.read_text()) if path.exists() else {}


def pending_runs(study: Study, runs: list[PlannedRun]) -> tuple[list[PlannedRun], dict[str, str]]:
    """Runs to launch now, and every run's state. Failed runs count against sweep.max_retries."""
    attempts = load_attempts(study)
    states, todo = {}, []
    for run in runs:
        state = run_state(study, run)
        states[run.run_id] = state
        if state in ("done", "diverged", "running"):
            continue
        if state == "failed" and attempts.get(run.run_id, 0) > study.sweep.max_retries:
            states[run.run_id] = "failed (retries exhausted)"
            continue
        todo.append(run)
    return todo, states


def status_counts(states: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def write_plan(study: Study, runs: list[PlannedRun], overrides: list[str]) -> Path:
    path = sweep_dir(study) / "plan.json"
    atomic_write_json(path, {
        "sweep": study.sweep_name, "experiment": study.experiment, "config": as_dict(study),
        "overrides": list(overrides),
        "runs": [{"run_id": r.run_id, "overrides": list(r.overrides), "params": r.spec.params,
                  "tokens": r.spec.tokens, "flops": r.spec.flops, "budget_flops": r.spec.budget_flops,
                  "shape": r.spec.shape.to_dict(), "steps": r.spec.steps} for r in runs],
        "total_flops_exact": sum(r.spec.flops["exact"] for r in runs),
    })
    return path


def launch(study: Study, runs: list[PlannedRun], overrides: list[str]) -> None:
    """Launch in waves: cooldown reuse's trunks first, then the branches whose trunk is done.

    A branch starts from its trunk's checkpoints, so it cannot share a wave with it on a node or a
    SLURM array (both launchers return only when their wave has ended). Without cooldown reuse
    there is one wave. A branch whose trunk did not finish waits for the next launch.
    """
    trunks = [r for r in runs if r.job.train.keep_steps]
    waves = [trunks, [r for r in runs if not r.job.train.keep_steps]] if trunks else [runs]
    for wave in waves:
        ready = [r for r in wave if not r.job.train.branch_from or run_state(study, r.job.train.branch_from) == "done"]
        waiting = len(wave) - len(ready)
        if waiting:
            print(f"{waiting} cooldown branches wait for their trunk to finish; relaunch after it has", flush=True)
        if ready and _launch_wave(study, ready, overrides) == "stopped":
            return


def _launch_wave(study: Study, runs: list[PlannedRun], overrides: list[str]) -> str | None:
    mode = study.launcher.mode.value
    attempts = load_attempts(study)
    for run in runs:
        attempts[run.run_id] = attempts.get(run.run_id, 0) + 1
    atomic_write_json(attempts_path(study), attempts)
    if mode == "local":
        from pipeline.launchers import launch_local
        return launch_local(study, runs)
    if mode == "node":
        from pipeline.launchers import launch_node
        return launch_node(study, runs, overrides)
    from pipeline.launchers import launch_slurm
    return launch_slurm(study, runs, overrides)


def main(overrides: list[str], flags: dict) -> int:
    study = load_study(overrides, flags)
    if study is None:  # --cfg printed it
        return 0
    if study.launcher.mode.value == "slurm" and not study.sweep.dry_run:
        from pipeline.slurm import check_launcher

        check_launcher(study)  # before any data preparation or attempt is counted
    check_design(study)  # before the corpus is prepared: a typo must not cost a data preparation
    from pipeline import data as data_lib

    manifest = data_lib.prepare_corpus(study.data)
    import torch

    device_type = "cuda" if study.train.device == "cuda" or (study.train.device == "auto" and torch.cuda.is_available()) else "cpu"
    world_size = study.launcher.gpus_per_run if study.launcher.mode.value == "node" else 1
    runs = plan_sweep(study, manifest.vocab_size, world_size)
    if not runs:
        raise UserError("the sweep has no runs: give sweep.sizes and budgets (or tokens)")
    plan_path = write_plan(study, runs, overrides)
    todo, states = pending_runs(study, runs)
    print(plan_table(runs, device_type, states))
    print(f"plan: {plan_path}\nstate: {status_counts(states)}")
    if study.sweep.dry_run:
        return 0
    if todo:
        print(f"launching {len(todo)} of {len(runs)} runs ({study.launcher.mode.value})", flush=True)
        launch(study, todo, overrides)
    _, states = pending_runs(study, runs)
    print(f"sweep {study.sweep_name}: {status_counts(states)} -> {sweep_dir(study)}")
    unfinished = [k for k, v in states.items() if v not in TERMINAL and v != "done"]
    if unfinished:
        print(f"{len(unfinished)} runs not finished; relaunch the same command to resume or retry them")
        return 1
    print(f"next: python -m pipeline.fit {' '.join(overrides)}")
    return 0


if __name__ == "__main__":
    run_main(main, USAGE)
