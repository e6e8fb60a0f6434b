"""The sweep's state and dispatch: which planned runs are done, pending or failed, and launching the rest.

Files are the source of truth: a run is done when its `run.json` says ok or diverged; failed runs
are retried up to `sweep.max_retries` times; preempted or interrupted runs resume from their
checkpoints. Relaunching the same command is always safe (idempotent).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pipeline.config.load import as_dict
from pipeline.config.schema import Study
from pipeline.plan.design import PlannedRun
from pipeline.records import RecordError, atomic_write_json, load_record, writable_dir_error
from pipeline.sweep.launchers import launch_local, launch_node, launch_slurm
from pipeline.train.lock import lock_holder

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


def _read_attempts(path: Path) -> dict | None:
    """{run_id: launches} from attempts.json; {} when there is none; None when it is unreadable."""
    try:
        attempts = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    valid = isinstance(attempts, dict) and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                               and v >= 0 for k, v in attempts.items())
    return attempts if valid else None


def load_attempts(study: Study) -> dict:
    """Launch counts per run. A corrupt attempts.json (torn, edited, garbage) never blocks the sweep: it is
    named, counted as empty (failed runs get their retries again), and set aside when counts are next
    written (quarantine_attempts); the dry run only reads."""
    path = attempts_path(study)
    attempts = _read_attempts(path)
    if attempts is None:
        print(f"warning: {path} is unreadable (not a JSON object of run id -> launches); counting attempts afresh",
              file=sys.stderr, flush=True)
        return {}
    return attempts


def quarantine_attempts(study: Study) -> Path | None:
    """Move an unreadable attempts.json aside (kept, for a person to look at); return where it went."""
    path = attempts_path(study)
    if _read_attempts(path) is not None:
        return None
    aside = path.with_name(f"attempts.json.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    print(f"warning: moved the unreadable {path.name} to {aside}", file=sys.stderr, flush=True)
    return aside


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


def write_plan(study: Study, runs: list[PlannedRun], overrides: list[str], design: dict | None = None) -> Path:
    """plan.json: the runs, and with the adaptive design its rounds so far and why each was chosen."""
    path = sweep_dir(study) / "plan.json"
    try:
        _write_plan(study, runs, overrides, path, design)
    except OSError as err:  # a read-only or full results folder: one line with the path
        raise writable_dir_error(path, err, "results_dir") from err
    return path


def _write_plan(study: Study, runs: list[PlannedRun], overrides: list[str], path: Path, design: dict | None) -> None:
    atomic_write_json(path, {
        "sweep": study.sweep_name, "experiment": study.experiment, "config": as_dict(study),
        "overrides": list(overrides),
        "runs": [{"run_id": r.run_id, "overrides": list(r.overrides), "params": r.spec.params,
                  "tokens": r.spec.tokens, "flops": r.spec.flops, "budget_flops": r.spec.budget_flops,
                  "shape": r.spec.shape.to_dict(), "steps": r.spec.steps} for r in runs],
        "total_flops_exact": sum(r.spec.flops["exact"] for r in runs),
        **({"design": design} if design is not None else {}),
    })


def launch(study: Study, runs: list[PlannedRun], overrides: list[str]) -> str | None:
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
            return "stopped"
    return None


def count_attempts(study: Study, run_ids: list[str]) -> None:
    """One more attempt for each run (a corrupt attempts.json is moved aside first, and counting restarts)."""
    attempts = load_attempts(study)
    for run_id in run_ids:
        attempts[run_id] = attempts.get(run_id, 0) + 1
    try:
        quarantine_attempts(study)
        atomic_write_json(attempts_path(study), attempts)
    except OSError as err:
        raise writable_dir_error(attempts_path(study), err, "results_dir") from err


def _launch_wave(study: Study, runs: list[PlannedRun], overrides: list[str]) -> str | None:
    mode = study.launcher.mode.value
    if mode == "local":  # counted as each run starts: a sweep stopped early charges no attempt to the rest
        return launch_local(study, runs, count_attempt=lambda run_id: count_attempts(study, [run_id]))
    count_attempts(study, [run.run_id for run in runs])
    if mode == "node":
        return launch_node(study, runs, overrides)
    return launch_slurm(study, runs, overrides)



