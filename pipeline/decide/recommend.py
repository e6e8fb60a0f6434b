"""The decision: from a scaling law and a budget to a concrete, launchable full run.

    law + budget -> (N_opt, D_opt) by Chinchilla's closed form (pipeline.fit.laws)
                 -> a real shape from the family's sizing rule (models.sizing), its exact counts
                 -> D recomputed as budget / exact training FLOPs per token of THAT shape
                 -> hyperparameters by the same rule the pilots used (pipeline.plan.hparams)
                 -> wall-clock, GPU-days, memory and parallelism (pipeline.decide.budget, pipeline.decide.memory)
                 -> trade-offs and the published laws' answers (pipeline.decide.tradeoffs)

Works the same for a fitted law (with bootstrap samples -> intervals) and a published one (none).
`write_full_run_config` turns the result into a Hydra experiment file for `python -m pipeline.train`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from models.accounting import count_params, training_flops_per_token
from models.shape import ModelShape
from models.sizing import SizingError, shape_for_params
from pipeline.decide import tradeoffs
from pipeline.decide.launch_config import launch_train_keys, write_launch_files
from pipeline.decide.memory import memory_check
from pipeline.errors import UserError
from pipeline.fit.checks import EXTRAPOLATION_WARN_FACTOR
from pipeline.fit.intervals import INTERVAL_PERCENTILES, percentile_interval
from pipeline.fit.laws import PUBLISHED_LAWS, KaplanFrontier, ParametricLaw
from pipeline.plan.hardware import DEFAULT_MFU, REFERENCE_GPU, reference_gpu_days
from pipeline.plan.hparams import resolve_hyperparameters
from pipeline.records import jsonable

PUBLISHED_NAMES = (*PUBLISHED_LAWS, "kaplan")
MIN_LR_RATIO = 0.1                # cosine to 10% of peak (Chinchilla sec. 4 / App. B), as the pilots


def sample_intervals(law_samples, budget_flops: float) -> dict | None:
    """5-95 percentile intervals of N_opt, D_opt, tokens/param and the predicted loss over law samples.

    `law_samples`: array [n, 5] of (E, A, B, alpha, beta), e.g. bootstrap refits over runs. Samples
    with a non-positive or non-finite A, B, alpha or beta are dropped and counted.
    """
    if law_samples is None:
        return None
    samples = np.asarray(law_samples, dtype=float)
    if samples.ndim != 2 or samples.shape[1] != 5:
        raise UserError(f"law_samples has shape {samples.shape}: pass an [n, 5] array of (E, A, B, alpha, beta)")
    e, a_coef, b_coef, alpha, beta = samples.T
    valid = np.all(np.isfinite(samples), axis=1) & (a_coef > 0) & (b_coef > 0) & (alpha > 0) & (beta > 0)
    if valid.sum() < 2:
        return None
    e, a_coef, b_coef, alpha, beta = (x[valid] for x in (e, a_coef, b_coef, alpha, beta))
    # Chinchilla eq. 4 / App. D.2, vectorised over samples (same closed form as ParametricLaw).
    g = (alpha * a_coef / (beta * b_coef)) ** (1.0 / (alpha + beta))
    c = budget_flops / tradeoffs.K
    n_opt = g * c ** (beta / (alpha + beta))
    d_opt = c / n_opt
    loss = e + a_coef / n_opt**alpha + b_coef / d_opt**beta
    band = percentile_interval
    lo, hi = INTERVAL_PERCENTILES
    return {"method": f"percentile {lo:g}-{hi:g} over {int(valid.sum())} law samples",
            "dropped_samples": int((~valid).sum()),
            "n_opt": band(n_opt), "d_opt": band(d_opt), "tokens_per_param": band(d_opt / n_opt),
            "predicted_loss": band(loss)}


def full_run_schedule(pilot_schedule: dict | None) -> dict:
    """The pilots' LR schedule, which the full run must share: the law's loss level is the pilots'
    schedule's (a WSD cooldown ends below a cosine cycle, docs/cooldown_reuse.md). Without it (runs
    from a file or W&B, a published law): one cosine cycle to 10% (Chinchilla sec. 4 / App. B)."""
    if pilot_schedule and pilot_schedule.get("name") in ("cosine", "wsd"):
        return {"name": pilot_schedule["name"], "min_lr_ratio": float(pilot_schedule["min_lr_ratio"]),
                "cooldown_fraction": pilot_schedule.get("cooldown_fraction"), "source": "the pilots' schedule"}
    why = (f"the pilots' {pilot_schedule['name']} schedule never decays" if pilot_schedule
           else "the pilots' schedule is not known")
    return {"name": "cosine", "min_lr_ratio": MIN_LR_RATIO, "cooldown_fraction": None,
            "source": f"Chinchilla default ({why})"}


def schedule_text(schedule: dict) -> str:
    if schedule["name"] == "wsd":
        return (f"warmup-stable-decay, (1 - sqrt) cooldown over the last {schedule['cooldown_fraction']:.0%} "
                f"to {schedule['min_lr_ratio']:.0%} of peak (Hägele et al. 2024)")
    return f"one cosine cycle over exactly train.tokens to {schedule['min_lr_ratio']:.0%} of peak (Chinchilla)"


def concrete_model(n_target: float, budget_flops: float, *, vocab_size: int, seq_len: int,
                   convention: str, schedule: dict | None = None) -> tuple[ModelShape, dict]:
    """The family's shape for N_opt, its exact counts, its token count and its hyperparameters.

    Mirrors pipeline.plan.runspec for a horizon given as FLOPs, so the full run uses the pilots' rules
    (and their LR schedule, `full_run_schedule`).
    """
    try:
        shape = shape_for_params(float(n_target), vocab_size, seq_len, convention=convention)
    except SizingError as err:
        raise UserError(f"cannot size the recommended model: {err}") from err
    params = count_params(shape)
    fpt = {m: training_flops_per_token(shape, seq_len, method=m) for m in ("exact", "6n")}
    target_tokens = budget_flops / fpt["exact"]
    hp = resolve_hyperparameters(flops=target_tokens * fpt["exact"], n_params=params[convention],
                                 run_tokens=int(target_tokens), seq_len=seq_len)
    steps = max(1, round(target_tokens / hp.batch_tokens))  # whole steps, as the pilots round
    tokens = steps * hp.batch_tokens
    return shape, {
        "shape": shape.to_dict(), "describe": shape.describe(), "params": params, "convention": convention,
        "flops_per_token": fpt, "flop_convention": "exact: Chinchilla App. F (attention included), x3 for training",
        "tokens": tokens, "tokens_rule": "budget / exact training FLOPs per token of this shape, whole batches",
        "tokens_per_param": tokens / params[convention], "flops_exact": tokens * fpt["exact"],
        "flops_6n": tokens * fpt["6n"], "lr": hp.lr, "batch_tokens": hp.batch_tokens,
        "warmup_tokens": hp.warmup_tokens, "warmup_steps": math.ceil(hp.warmup_tokens / hp.batch_tokens),
        "beta2": hp.beta2, "steps": steps, "schedule": full_run_schedule(schedule),
        "hparam_sources": {k: v for k, v in hp.to_dict().items() if k.endswith("_source")},
    }


def _compute_time(budget: dict) -> dict:
    if budget.get("gpu_days") is not None:
        return {"gpu": budget.get("gpu"), "gpus": budget["gpus"], "mfu": budget["mfu"],
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


def _tradeoff_sections(law, budget_flops, inference_tokens, unique_tokens, warnings) -> dict:
    if not isinstance(law, ParametricLaw):
        warnings.append(f"law {law.name} is a compute frontier without L(N, D): no predicted loss, deviation, "
                        "inference-aware or data-constrained analysis")
        return {"deviation": None, "inference_aware": None, "data_constrained": None}
    out = {"deviation": tradeoffs.deviation_penalty(law, budget_flops),
           "inference_aware": (tradeoffs.inference_aware(law, budget_flops, inference_tokens)
                               if inference_tokens is not None else None),
           "data_constrained": (tradeoffs.data_constrained(law, budget_flops, unique_tokens)
                                if unique_tokens is not None else None)}
    dc = out["data_constrained"]
    if dc and dc["epochs"] > 4:
        warnings.append(f"the compute-optimal plan needs {dc['epochs']:.1f} epochs of the unique data; beyond ~4 epochs "
                        "repeated tokens lose value (Muennighoff et al. 2023): see the data-constrained plan")
    return out


def _check_positive(key: str, value, allow_zero: bool) -> None:
    if value is None:
        return
    bad = (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
           or value < 0 or (value == 0 and not allow_zero))
    if bad:
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{key}={value!r} must be a number {bound} (tokens): fix it or leave it unset")


def recommend(law: ParametricLaw | KaplanFrontier, budget: dict, *, law_samples=None, vocab_size: int,
              seq_len: int, pilot: dict | None = None, inference_tokens: float | None = None,
              unique_tokens: float | None = None, convention: str | None = None,
              gpu_memory_gb: float | None = None, micro_batch_sequences: int = 1,
              pilot_schedule: dict | None = None) -> dict:
    """The full recommendation as a JSON-able dict (see the module doc for the steps).

    `budget` is `pipeline.decide.budget.resolve_budget`'s dict. `pilot` (optional): {"n_runs", "total_flops",
    "max_run_flops"}. `convention` defaults to the law's (Kaplan's is non-embedding).
    """
    budget_flops = float(budget["flops"])
    _check_positive("inference.tokens", inference_tokens, allow_zero=True)
    _check_positive("data.unique_tokens", unique_tokens, allow_zero=False)
    warnings: list[str] = []
    convention = convention or law.convention
    if convention != law.convention:
        warnings.append(f"the law counts {law.convention} parameters but the model is sized by {convention} ones")
    n_opt, d_opt = (float(v) for v in law.optimal_allocation(budget_flops))
    parametric = isinstance(law, ParametricLaw)
    predicted = float(law.loss(n_opt, d_opt)) if parametric else None

    intervals = sample_intervals(law_samples, budget_flops) if parametric else None
    if intervals is None:
        why = ("a published law is a point estimate" if law.name in PUBLISHED_NAMES
               else "no bootstrap samples: fit with bootstrap > 0 for intervals")
        warnings.append(f"no intervals for law {law.name}: {why}")

    shape, model = concrete_model(n_opt, budget_flops, vocab_size=vocab_size, seq_len=seq_len, convention=convention,
                                  schedule=pilot_schedule)
    size_error = model["params"][convention] / n_opt - 1
    if abs(size_error) > 0.05:
        warnings.append(f"the nearest shape has {size_error:+.0%} parameters vs N_opt; D was recomputed for it")
    model["compute"] = _compute_time(budget)
    model["memory"] = memory_check(
        shape, seq_len=seq_len, micro_batch_sequences=micro_batch_sequences,
        gpu_memory_gb=gpu_memory_gb or budget.get("gpu_memory_gb") or 80.0, n_gpus=budget.get("gpus"))
    memory = model["memory"]
    if memory["parallelism"] == "does_not_fit":
        warnings.append(f"memory: {memory['summary']}")
    if memory["tensor_parallel"] > 1 and model["shape"]["n_heads"] % memory["tensor_parallel"]:
        warnings.append(f"tensor parallelism {memory['tensor_parallel']} needs n_heads divisible by it; the shape has "
                        f"{model['shape']['n_heads']} heads: pick a neighbouring width")

    result = {
        "law": law.to_dict(), "budget": budget, "convention": convention,
        "n_opt": n_opt, "d_opt": d_opt, "tokens_per_param": d_opt / n_opt, "predicted_loss": predicted,
        "allocation_rule": f"law {law.name}, Chinchilla eq. 4 closed form with C = 6 N D"
                           if parametric else law.source,
        "intervals": intervals, "model": model,
        **_tradeoff_sections(law, budget_flops, inference_tokens, unique_tokens, warnings),
        "published": tradeoffs.published_comparison(budget_flops),
        "pilot": _pilot_section(pilot, budget_flops, warnings),
        "warnings": warnings,
    }
    return jsonable(result)


# --- the launchable config -------------------------------------------------------------------------------
def _yaml_float(value: float) -> str:
    """A float YAML 1.1 loaders (PyYAML) read as a float: they need a dot before the exponent."""
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _section_lines(section: str, mine: list[tuple[str, str, str]], extra: dict | None) -> list[str]:
    """`section:` with our keys (value, comment) then any keys from the pilots' overrides we do not set."""
    lines = [f"{section}:"]
    width = max(len(f"  {key}: {value}") for key, value, _ in mine)
    for key, value, comment in mine:
        text = f"  {key}: {value}"
        lines.append(f"{text:<{width}}  # {comment}" if comment else text)
    ours = {key for key, _, _ in mine}
    rest = {k: v for k, v in (extra or {}).items() if k not in ours}
    if rest:
        lines.append("  # from the pilots' configuration:")
        dumped = yaml.safe_dump(rest, default_flow_style=False, sort_keys=False).rstrip().splitlines()
        lines.extend(f"  {line}" for line in dumped)
    return lines


def write_full_run_config(recommendation: dict, out_dir, base_overrides: dict | None = None) -> Path:
    """Write <out_dir>/experiment/full_run.yaml, a Hydra experiment for `python -m pipeline.train`.

    Launch: python -m pipeline.train --config-dir <out_dir> experiment=full_run
    `base_overrides` carries the pilots' sections to keep (e.g. {"data": {...}}); our model/train keys win.
    """
    base = dict(base_overrides or {})
    model, budget = recommendation["model"], recommendation["budget"]
    shape, hp_src = model["shape"], model["hparam_sources"]
    convention = model["convention"]
    memory = model.get("memory") or {}
    sched = model["schedule"]
    header = [
        "# @package _global_",
        f"# Full run recommended by `python -m pipeline.fit` for {budget['flops']:.3g} FLOPs ({budget['conversion']}).",
        f"# Law {recommendation['law'].get('name')}: N_opt = {recommendation['n_opt']:.3g} {convention} parameters, "
        f"D_opt = {recommendation['d_opt']:.3g} tokens.",
        f"# Memory: {memory.get('summary', 'not checked')}.",
        "# Launch: python -m pipeline.train --config-dir <this fit directory> experiment=full_run",
        "sweep_name: full_run",
        f"budget_flops: {_yaml_float(budget['flops'])}",
    ]
    sizing = f"sizing rule (models/sizing.py) for N_opt {recommendation['n_opt']:.3g}"
    model_keys = [
        ("n_layer", str(shape["n_layer"]), sizing),
        ("d_model", str(shape["d_model"]), f"{model['params'][convention]:,} {convention} parameters exactly"),
        ("n_heads", str(shape["n_heads"]), "head_dim 64 from d_model 256 up"),
        ("d_ff", str(shape["d_ff"]), "SwiGLU, 8/3 d_model rounded to the width grid"),
        ("seq_len", str(shape["seq_len"]), "as the pilots"),
        ("tie_embeddings", str(shape["tie_embeddings"]).lower(), ""),
        ("convention", convention, "the parameter count the law uses"),
    ]
    train_keys = [
        ("tokens", str(model["tokens"]), model["tokens_rule"]),
        ("lr", _yaml_float(model["lr"]), hp_src["lr_source"]),
        ("batch_tokens", str(model["batch_tokens"]), hp_src["batch_source"]),
        ("warmup_tokens", str(model["warmup_tokens"]), hp_src["warmup_source"]),
        ("beta2", _yaml_float(model["beta2"]), hp_src["beta2_source"]),
        ("schedule", sched["name"], f"{schedule_text(sched)}; {sched['source']}"),
        ("min_lr_ratio", _yaml_float(sched["min_lr_ratio"]), "as the schedule above"),
        *([("cooldown_fraction", _yaml_float(sched["cooldown_fraction"]), "as the pilots' cooldowns")]
          if sched["name"] == "wsd" else []),
        ("precision", "bf16", "bf16 autocast; fp32 master weights and AdamW moments"),
        *launch_train_keys(recommendation),
    ]
    lines = header + _section_lines("model", model_keys, base.pop("model", None))
    lines += _section_lines("train", train_keys, base.pop("train", None))
    for key in ("sweep_name", "budget_flops"):
        base.pop(key, None)
    if base:
        lines.append("# from the pilots' configuration:")
        lines.extend(yaml.safe_dump(base, default_flow_style=False, sort_keys=False).rstrip().splitlines())
    path = Path(out_dir) / "experiment" / "full_run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    write_launch_files(recommendation, out_dir)
    return path
