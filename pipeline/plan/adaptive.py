"""The adaptive design's runs, planned one at a time (pure, like the rest of plan/).

The seed budgets are planned by pipeline.plan.design.plan_sweep; the rounds' runs come from the fit
(pipeline/decide/next_runs.py chooses an (N, C), pipeline/sweep/adaptive.py records it) and are turned
into runs here, with the same sizing, snapping and FLOP accounting as every IsoFLOP run.
"""

from __future__ import annotations

from pipeline.config.schema import Study
from pipeline.data.tasks import task_name
from pipeline.errors import UserError
from pipeline.plan.design import AUTO_SIZE_TOLERANCE, PlannedRun, _run, pilot_budgets, sizes_for_budget


def recorded_targets(study: Study) -> list[str]:
    """The `target=` values the pilots will record (docs/downstream.md): the loss, each named validation
    set's loss, and each task's bits per byte and accuracies."""
    names = ["loss", *(f"{str(spec).partition('=')[0].strip()}_loss" for spec in study.eval.val_sets)]
    for task in map(task_name, study.eval.tasks):
        names += [f"{task}:bpb", f"{task}:acc", f"{task}:acc_norm", f"{task}:accuracy",
                  f"{task}_bpb", f"{task}_acc", f"{task}_acc_norm"]
    return names


def check_design_target(study: Study) -> None:
    """Before any run: the adaptive design chooses its rounds by `target=`, so the pilots must record it."""
    target = str(study.target).strip()
    if target not in recorded_targets(study):
        shown = ", ".join(n for n in recorded_targets(study) if not n.endswith((":accuracy", "_bpb", "_acc", "_acc_norm")))
        raise UserError(f"target={target}: the adaptive design chooses its runs by it, but the pilots record only "
                        f"{shown}: add the task to eval.tasks (or the set to eval.val_sets), or use target=loss")


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
