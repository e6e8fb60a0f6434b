"""The adaptive design's runs, planned one at a time (pure, like the rest of plan/).

The seed budgets are planned by pipeline.plan.design.plan_sweep; the rounds' runs come from the fit
(pipeline/decide/next_runs.py chooses an (N, C), pipeline/sweep/adaptive.py records it) and are turned
into runs here, with the same sizing, snapping and FLOP accounting as every IsoFLOP run.
"""

from __future__ import annotations

from pipeline.config.schema import Study
from pipeline.plan.design import AUTO_SIZE_TOLERANCE, PlannedRun, _run, pilot_budgets, sizes_for_budget


def static_pilot_flops(study: Study) -> float:
    """What the static IsoFLOP plan of every budget would spend (6 N D at the planned sizes): the adaptive
    design's pilot compute when neither sweep.pilot_flops nor sweep.pilot_share is given."""
    sweep = study.sweep
    budgets = pilot_budgets(sweep, study.budget.flops, sweep.sizes_per_budget)
    return float(sum(budgets)) * sweep.sizes_per_budget


def static_round(study: Study, rounds_done: int) -> list[dict]:
    """The runs the static IsoFLOP plan would add next (its next budget after the seed budgets and the
    static rounds already added), as the adaptive design's picks: the fallback while no law can be fitted."""
    sweep = study.sweep
    budgets = pilot_budgets(sweep, study.budget.flops, sweep.sizes_per_budget)
    index = sweep.seed_budgets + rounds_done
    if index >= len(budgets):
        return []
    return [{"size": float(size), "budget": budgets[index], "seed_offset": 0}
            for size in sizes_for_budget(sweep, budgets[index])]


def run_at(study: Study, vocab_size: int, world_size: int, size: float, budget: float, seed_offset: int = 0) -> PlannedRun:
    """One IsoFLOP run of about `size` parameters (snapped to the nearest shape) at `budget` FLOPs, with
    train.seed + `seed_offset`: how the adaptive design's chosen (N, C) become runs."""
    train_over = {"flops": budget, **({"seed": study.train.seed + seed_offset} if seed_offset else {})}
    return _run(study, vocab_size, world_size, {"size": f"{size:.4g}", "size_tolerance": AUTO_SIZE_TOLERANCE},
                train_over, budget)
