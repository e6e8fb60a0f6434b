"""The decision: from a scaling law and a budget to a concrete, launchable full run.

    law + budget + ONE FLOP count (pipeline.decide.allocation: the exact count of the pilots' family, or for
         a published law / imported runs the full run's PaLM count, the one its launch is timed with; stated with why)
                 -> N_opt = argmin L(N, C / F(N)) (numeric; Chinchilla eq. 4's closed form under 6 N D)
                 -> the launched shape near N_opt (pipeline.decide.allocation.pick_shape), counted exactly
                 -> D = C / F(shape) in whole batches; predicted loss = L(N_shape, D)
                 -> hyperparameters by the same rule the pilots used (pipeline.plan.hparams)
                 -> wall-clock, GPU-days, memory and parallelism (pipeline.decide.budget, pipeline.plan.memory)
                 -> epochs over the unique data, trade-offs and the published laws' answers under the same count

`n_opt` is the law's optimum; `d_opt` and `predicted_loss` are the launched run's tokens and its loss, so the
headline, recommendation.json, the report and full_run.yaml state the same N, D and loss. Works the same for
a fitted law (bootstrap samples -> intervals, each sample allocated by the same procedure) and a published
one (none). pipeline/decide/full_run.py builds the launched run and writes `full_run.yaml`.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.decide import tradeoffs
from pipeline.decide.allocation import (
    FlopCount,
    optimal_allocation,
    pick_shape,
    six_nd_count,
)
from pipeline.decide.allocation import sample_intervals as allocation_intervals
from pipeline.decide.full_run import (  # noqa: F401 -- re-exported: report.py and callers import them from here
    differences,
    full_run_count,
    full_run_schedule,
    launched_run,
    schedule_text,
)
from pipeline.decide.full_run_yaml import write_full_run_config  # noqa: F401 -- re-exported for callers
from pipeline.decide.launch_config import launch_plan
from pipeline.errors import UserError
from pipeline.fit.checks import EXTRAPOLATION_WARN_FACTOR
from pipeline.fit.intervals import percentile_interval
from pipeline.fit.laws import PUBLISHED_LAWS, KaplanFrontier, ParametricLaw
from pipeline.plan.hardware import DEFAULT_MFU, REFERENCE_GPU, reference_gpu_days
from pipeline.plan.memory import memory_check
from pipeline.records import jsonable

PUBLISHED_NAMES = (*PUBLISHED_LAWS, "kaplan")
EPOCHS_WARN = 4.0     # Muennighoff et al. 2023: up to ~4 epochs of repeated data are nearly as good as unique


def laws_from_samples(law_samples, convention: str = "total") -> tuple[list[ParametricLaw], int]:
    """ParametricLaw objects from [n, 5] rows of (E, A, B, alpha, beta); invalid rows dropped and counted."""
    samples = np.asarray(law_samples, dtype=float)
    if samples.ndim != 2 or samples.shape[1] != 5:
        raise UserError(f"law_samples has shape {samples.shape}: pass an [n, 5] array of (E, A, B, alpha, beta)")
    e, a_coef, b_coef, alpha, beta = samples.T
    valid = np.all(np.isfinite(samples), axis=1) & (a_coef > 0) & (b_coef > 0) & (alpha > 0) & (beta > 0)
    laws = [ParametricLaw(*map(float, row), name="sample", convention=convention) for row in samples[valid]]
    return laws, int((~valid).sum())


def sample_intervals(law_samples, budget_flops: float, count: FlopCount | None = None) -> dict | None:
    """5-95 percentile intervals of N_opt, D_opt, tokens/param and the loss over law samples, each sample
    allocated under `count` exactly as the point estimate (pipeline.decide.allocation). `law_samples`:
    [n, 5] rows of (E, A, B, alpha, beta), e.g. bootstrap refits; invalid rows are dropped and counted."""
    if law_samples is None:
        return None
    count = count or six_nd_count("no count given: C = 6 N D")
    laws, dropped = laws_from_samples(law_samples, count.convention)
    return allocation_intervals(laws, budget_flops, count, dropped_before=dropped)


def launched_loss_interval(law_samples, n: float, d: float) -> dict:
    """The predicted loss's interval at the launched run's (N, D): each sample law's loss there (the headline's
    loss is L(N_run, D_run), so its interval is too, not each sample's loss at its own optimum)."""
    laws, _ = laws_from_samples(law_samples)
    with np.errstate(over="ignore", divide="ignore"):
        losses = [float(sample.loss(n, d)) for sample in laws]
    return {"predicted_loss": percentile_interval(losses),
            "predicted_loss_at": "the launched run's (N, D): each sample law's loss there"}


def _compute_time(budget: dict) -> dict:
    if budget.get("gpu_days") is not None:
        return {"gpu": budget.get("gpu"), "gpus": budget["gpus"], "mfu": budget["mfu"], "mfu_source": budget.get("mfu_source"),
                "wall_clock_days": budget["days"], "gpu_days": budget["gpu_days"], "cost_usd": budget.get("cost_usd"),
                "basis": "budget FLOPs / (gpus x peak x MFU)"}
    mfu = budget.get("mfu") or DEFAULT_MFU
    return {"gpu": REFERENCE_GPU, "gpus": None, "mfu": mfu, "wall_clock_days": None,
            "gpu_days": reference_gpu_days(budget["flops"], mfu), "cost_usd": None,
            "basis": f"no hardware given: GPU-days on the reference {REFERENCE_GPU} at MFU {mfu:.2f}"}


def _pilot_section(pilot: dict | None, budget_flops: float, warnings: list[str]) -> dict | None:
    if not pilot:
        return None
    total = pilot.get("total_flops")
    largest = pilot.get("max_run_flops") or pilot.get("max_budget_flops")
    out = {"n_runs": pilot.get("n_runs"), "total_flops": total,
           "share_of_budget": total / budget_flops if total else None,
           "extrapolation_factor": budget_flops / largest if largest else None}
    if out["extrapolation_factor"] and out["extrapolation_factor"] > EXTRAPOLATION_WARN_FACTOR:
        warnings.append(f"the budget is {out['extrapolation_factor']:.0f}x the largest pilot budget: "
                        "extrapolation that far is fragile, intervals understate the error")
    return out


def _tradeoff_sections(law, budget_flops, inference_tokens, unique_tokens, warnings, count) -> dict:
    if not isinstance(law, ParametricLaw):
        warnings.append(f"law {law.name} is a compute frontier without L(N, D): no predicted loss, deviation, "
                        "inference-aware or data-constrained analysis")
        return {"deviation": None, "inference_aware": None, "data_constrained": None}
    out = {"deviation": tradeoffs.deviation_penalty(law, budget_flops, count=count),
           "inference_aware": (tradeoffs.inference_aware(law, budget_flops, inference_tokens, count=count)
                               if inference_tokens is not None else None),
           "data_constrained": None}
    if unique_tokens is not None:
        # a side analysis, on whenever the unique tokens are known (often from the corpus, not asked for): a law
        # whose optimum never needs that much data (no budget's D_opt reaches it) loses this section, not the answer
        try:
            out["data_constrained"] = tradeoffs.data_constrained(law, budget_flops, unique_tokens, count=count)
        except UserError as err:
            warnings.append(f"no data-constrained plan: {err}")
    return out


def _data_section(tokens: int, unique_tokens: float | None, source: str | None, warnings: list[str]) -> dict:
    """Epochs of the launched run over the corpus's unique tokens (declared, or known after preparation)."""
    if unique_tokens is None:
        return {"unique_tokens": None, "source": "unknown: set data.unique_tokens, or fit a sweep's records",
                "epochs": None, "repeats": None}
    epochs = tokens / unique_tokens
    if epochs > EPOCHS_WARN:
        warnings.append(f"the full run needs {epochs:.1f} epochs of its {unique_tokens:.3g} unique tokens "
                        f"({source or 'declared'}); "
                        f"beyond ~{EPOCHS_WARN:g} epochs repeated tokens lose value (Muennighoff et al. 2023): see the "
                        "data-constrained plan, or add data")
    return {"unique_tokens": float(unique_tokens), "source": source or "declared", "epochs": epochs,
            "repeats": epochs > 1}


def _check_positive(key: str, value, allow_zero: bool) -> None:
    if value is None:
        return
    bad = (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
           or value < 0 or (value == 0 and not allow_zero))
    if bad:
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{key}={value!r} must be a number {bound} (tokens): fix it or leave it unset")


def recommend(law: ParametricLaw | KaplanFrontier, budget: dict, *, law_samples=None, vocab_size: int | None = None,
              seq_len: int | None = None, target: dict | None = None, count: FlopCount | None = None,
              pilot: dict | None = None, pilot_setup: dict | None = None, inference_tokens: float | None = None,
              unique_tokens: float | None = None, unique_tokens_source: str | None = None,
              convention: str | None = None, gpu_memory_gb: float | None = None, micro_batch_sequences: int = 1,
              pilot_schedule: dict | None = None) -> dict:
    """The full recommendation as a JSON-able dict (see the module doc for the steps).

    `budget` is `pipeline.decide.budget.resolve_budget`'s dict. `target`: what the full run trains on
    (pipeline.decide.full_run.target_from_pilots / target_from_preset); without it, `vocab_size` and `seq_len`.
    `count`: the FLOP count (pipeline.decide.allocation); without it the full run's PaLM count, labelled. `pilot` (optional):
    {"n_runs", "total_flops", "max_run_flops"}; `pilot_setup`: the pilots' precision and device, for the list
    of differences. `convention` defaults to the law's (Kaplan's is non-embedding).
    """
    budget_flops = float(budget["flops"])
    _check_positive("inference.tokens", inference_tokens, allow_zero=True)
    _check_positive("data.unique_tokens", unique_tokens, allow_zero=False)
    warnings: list[str] = []
    convention = convention or law.convention
    if convention != law.convention:
        warnings.append(f"the law counts {law.convention} parameters but the model is sized by {convention} ones")
    if target is None:
        if vocab_size is None or seq_len is None:
            raise UserError("recommend() needs the full run's target, or vocab_size and seq_len")
        target = {"tokenizer": None, "vocab_size": int(vocab_size), "seq_len": int(seq_len), "precision": "bf16",
                  "data": None, "source": "vocabulary and sequence length as given"}
    parametric = isinstance(law, ParametricLaw)
    if count is None:   # the count the launch is timed with (pipeline/decide/full_run.py: full_run_count)
        count = full_run_count(target, convention, law=law.name if law.name in PUBLISHED_NAMES else None,
                               frontier=not parametric)
    if parametric:
        optimum = optimal_allocation(law, budget_flops, count)
        n_opt = optimum.n
    else:
        n_law, _ = (float(v) for v in law.optimal_allocation(budget_flops))
        n_opt, optimum = n_law, None

    intervals = sample_intervals(law_samples, budget_flops, count) if parametric and law_samples is not None else None
    if intervals is None:
        # a fitted law may carry a published law's name (the "chinchilla" form): only a law without pilots is one
        why = ("a published law is a point estimate" if law.name in PUBLISHED_NAMES and pilot is None
               else "no bootstrap samples: fit with bootstrap > 0 for intervals")
        warnings.append(f"no intervals for law {law.name}: {why}")

    tied = bool((target.get("architecture") or {}).get("tie_embeddings", False))
    shape = pick_shape(law, budget_flops, n_opt, count, vocab_size=target["vocab_size"], seq_len=target["seq_len"],
                       tie_embeddings=tied)
    gpu_memory_gb = gpu_memory_gb or budget.get("gpu_memory_gb") or 80.0
    memory = memory_check(shape, seq_len=target["seq_len"], micro_batch_sequences=micro_batch_sequences,
                          gpu_memory_gb=gpu_memory_gb, n_gpus=budget.get("gpus"))
    world = launch_plan(memory, budget.get("gpus"))["processes"]  # the budget's GPUs, else the fewest that fit
    model = launched_run(shape, budget_flops, count, convention=convention, schedule=pilot_schedule,
                         world_size=world, gpu_memory_gb=gpu_memory_gb,
                         hparam_rule=(pilot_setup or {}).get("hparam_rule"))
    n_run, d_run = model["params"][convention], model["tokens"]
    size_error = n_run / n_opt - 1
    if abs(size_error) > 0.05:
        warnings.append(f"the nearest shape has {size_error:+.0%} parameters vs N_opt; D was recomputed for it")
    predicted = float(law.loss(n_run, d_run)) if parametric else None
    if intervals is not None:
        intervals.update(launched_loss_interval(law_samples, n_run, d_run))
    model["compute"] = _compute_time(budget)
    model["memory"] = memory
    for problem in model["launch"]["problems"]:
        warnings.append(f"launch: {problem}")
    if memory["parallelism"] == "does_not_fit":
        warnings.append(f"memory: {memory['summary']}")
    if memory["tensor_parallel"] > 1 and model["shape"]["n_heads"] % memory["tensor_parallel"]:
        warnings.append(f"tensor parallelism {memory['tensor_parallel']} needs n_heads divisible by it; the shape has "
                        f"{model['shape']['n_heads']} heads: pick a neighbouring width")
    rule = (f"law {law.name}: N_opt = argmin L(N, C / F(N)) under the {count.name} count ({count.formula}); "
            "the launched shape is the grid's best near it, D = C / F(shape) in whole batches"
            if parametric else f"{law.source}; D = C / F(shape) under the {count.name} count")

    result = {
        "law": law.to_dict(), "budget": budget, "convention": convention,
        "count": count.describe(), "target": target,
        "n_opt": n_opt, "d_opt": d_run, "tokens_per_param": d_run / n_run, "predicted_loss": predicted,
        "law_optimum": ({"n": optimum.n, "d": optimum.d, "loss": optimum.loss,
                         "tokens_per_param": optimum.tokens_per_param} if optimum else None),
        "allocation_rule": rule, "intervals": intervals, "model": model,
        "differences": differences(pilot_setup, model, target),
        "data": _data_section(d_run, unique_tokens, unique_tokens_source, warnings),
        **_tradeoff_sections(law, budget_flops, inference_tokens, unique_tokens, warnings, count),
        "published": tradeoffs.published_comparison(budget_flops),
        "pilot": _pilot_section(pilot, budget_flops, warnings),
        "warnings": warnings,
    }
    return jsonable(result)


