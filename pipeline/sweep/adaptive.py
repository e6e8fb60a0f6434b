"""`sweep.design=adaptive`: IsoFLOP seed budgets, then rounds of runs chosen from the fit, launched as any sweep.

The rounds' state lives in `<sweep>/design.json` (and is copied into plan.json): for each round the fit
it was chosen from, the runs it added (size, budget, seed offset -- enough to plan them again) and why;
at the end why the design stopped. A round is written *before* its runs launch, so a relaunch (after a
crash, a preemption, a SLURM requeue) plans exactly the same runs, and the usual skip-what-is-done of
the sweep trains each of them once; the design continues from the records where it stopped.

The choice itself needs a fitted law, so it is a decision (pipeline/decide/next_runs.py): this module,
earlier in the flow than fit/ and decide/, takes it as a function (`next_round`), which the entry point
(`python -m pipeline.sweep`) wires to the fit of the records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.plan.adaptive import run_at, static_round
from pipeline.plan.design import PlannedRun, plan_table
from pipeline.records import atomic_write_json
from pipeline.sweep.dispatch import launch, pending_runs, status_counts, sweep_dir, write_plan
from pipeline.train.engine import REQUEUE_EXIT_CODE

DESIGN_FILE = "design.json"
MAX_SEED_OFFSET = 64


def design_path(study: Study) -> Path:
    return sweep_dir(study) / DESIGN_FILE


def load_design(study: Study) -> dict:
    """{"rounds": [...], "stopped": reason or None}; a fresh design when there is no file yet."""
    path = design_path(study)
    if not path.exists():
        return {"rounds": [], "stopped": None}
    try:
        state = json.loads(path.read_text())
        assert isinstance(state["rounds"], list)
        return state
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise UserError(f"{path} is not a readable adaptive design ({type(err).__name__}): move it aside to "
                        "choose the rounds afresh (the finished runs are kept and reused)") from err


def round_runs(study: Study, vocab_size: int, world_size: int, state: dict) -> list[PlannedRun]:
    """The runs every recorded round chose, planned again from their (size, budget, seed offset)."""
    return [run_at(study, vocab_size, world_size, p["key"]["size"], p["key"]["budget"], p["key"]["seed_offset"])
            for r in state["rounds"] for p in r["picks"]]


def realizer(study: Study, vocab_size: int, world_size: int, planned_ids: set[str]) -> Callable:
    """The chooser's `realize`: ideal (N, C) candidates -> runs that can be trained (sizes snapped to shapes,
    priced by the exact FLOP count; a "seed" candidate gets the next free train.seed offset)."""
    def realize(cands):
        keep, n, d, flops, keys, seen = [], [], [], [], [], set(planned_ids)
        for i in range(len(cands)):
            offsets = range(1, MAX_SEED_OFFSET) if cands.kind[i] == "seed" else (0,)
            for offset in offsets:
                try:
                    run = run_at(study, vocab_size, world_size, float(cands.n[i]), float(cands.budget[i]), offset)
                except UserError:   # too few steps, no shape near that size: not a candidate
                    break
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    keep.append(i), n.append(run.spec.params[study.convention]), d.append(run.spec.tokens)
                    flops.append(run.spec.flops["exact"])
                    keys.append({"size": float(cands.n[i]), "budget": float(cands.budget[i]), "seed_offset": offset,
                                 "run_id": run.run_id})
                    break
        sub = cands.subset(np.array(keep, dtype=int))
        return type(cands)(np.array(n, dtype=float), np.array(d, dtype=float), np.array(flops, dtype=float),
                           sub.budget, sub.kind, sub.unit), keys
    return realize


def fallback(study: Study, state: dict, result: dict) -> dict:
    """No law yet (too few or too noisy runs): add the static IsoFLOP plan's next budget, or stop when the
    plan has none left or sweep.max_rounds ran."""
    picks = static_round(study, sum(1 for r in state["rounds"] if r.get("rule") == "static")) \
        if len(state["rounds"]) < study.sweep.max_rounds else []
    if not picks:
        return {**result, "stop": f"{result['fit_error']}, and the static plan has no budget left to add"}
    why = f"budget {picks[0]['budget']:.3g} added from the static IsoFLOP plan: {result['fit_error']}"
    out = [{"key": key, "n": key["size"], "budget": key["budget"], "kind": "new budget", "reason": why} for key in picks]
    return {**result, "stop": None, "picks": out, "rule": "static"}


def run_adaptive(study: Study, seed_runs: list[PlannedRun], vocab_size: int, world_size: int, overrides: list[str],
                 device_type: str, next_round: Callable[[dict, Callable], dict]) -> int:
    """Launch the seed runs and every recorded round, then fit and choose rounds until the design stops."""
    state = load_design(study)
    while True:
        runs = seed_runs + round_runs(study, vocab_size, world_size, state)
        plan_path = write_plan(study, runs, overrides, design=state)
        todo, states = pending_runs(study, runs)
        print(plan_table(runs, device_type, states))
        print(f"plan: {plan_path}\nstate: {status_counts(states)}; adaptive design: {len(state['rounds'])} rounds chosen"
              + (f", stopped: {state['stopped']}" if state.get("stopped") else ""), flush=True)
        if study.sweep.dry_run:
            if not state.get("stopped"):
                print("dry run: the next rounds are chosen from the fit of these runs' results")
            return 0
        if todo:
            print(f"launching {len(todo)} of {len(runs)} runs ({study.launcher.mode.value})", flush=True)
            if launch(study, todo, overrides) == "stopped":
                return REQUEUE_EXIT_CODE
            _, states = pending_runs(study, runs)
        waiting = [k for k, v in states.items() if v not in ("done", "diverged", "failed (retries exhausted)")]
        if waiting:
            print(f"{len(waiting)} runs not finished; relaunch the same command to resume or retry them")
            return 1
        realize = realizer(study, vocab_size, world_size, {r.run_id for r in runs})
        result = next_round(state, realize)   # recomputed on every relaunch: the same records give the same answer
        if result.get("fit_error"):
            result = fallback(study, state, result)
        if result["stop"]:
            state = {**state, "stopped": result["stop"], "final_fit": result["fit"]}
            atomic_write_json(design_path(study), state)
            write_plan(study, runs, overrides, design=state)
            print(f"adaptive design: {len(state['rounds'])} rounds, stopped: {state['stopped']}")
            print(f"next: python -m pipeline.fit {' '.join(overrides)}")
            return 0
        state = {**state, "stopped": None, "rounds": [*state["rounds"], {
            "round": len(state["rounds"]) + 1, "fit": result["fit"], "rule": result.get("rule"),
            "expected_width_after": result.get("expected_width_after"),
            "picks": [{k: p.get(k) for k in ("key", "n", "d", "flops", "budget", "kind", "reason")}
                      for p in result["picks"]]}]}
        width = result["fit"].get("width")
        print(f"round {len(state['rounds'])}: " + (f"{result['fit']['width_of']} {width:.3g}x wide; " if width else "")
              + f"{len(result['picks'])} runs chosen", flush=True)
        for reason in dict.fromkeys(p["reason"] for p in result["picks"]):
            print(f"  {reason}")
        atomic_write_json(design_path(study), state)   # before launching: a relaunch plans the same runs
