"""The LR probe design (`sweep.design=lr_probe`): calibrate the LR rule where no published sweep reaches.

The published rules (pipeline/plan/lr_rules.py) were fitted on models of 1e8-1e9 parameters; CPU pilots
sit 3-4 decades below and GPU pilots often a decade or more. The probe trains a few sizes spanning the
pilots' range (the isoflop design this config would run) at several multiples of the current rule's LR
(`sweep.lr_probe_factors`, default 1/4x..4x, 2x apart). pipeline/fit/lr_law.py then fits a parabola in
ln LR per size (its vertex: the best LR; its curvature: what a 2x miss costs) and a power law
lr_opt = a N^b D^c through the vertices, written as an `lr_law.json` that `train.hparam_rule` accepts.

Cost, stated and bounded: every probe run trains the same token count D_probe (`sweep.lr_probe_tokens`,
or the most the share allows), so the probe spends  n_factors * D_probe * sum over sizes of F(size)
exact FLOPs, refused above `sweep.lr_probe_max_share` (default 25%) of the isoflop design's FLOPs.
With one D for all sizes the D exponent cannot be separated from N's; the fit then keeps the base
rule's D exponent and says so (docs/hparams.md). `sweep.lr_probe_long_factor` = k adds a second
horizon: the smallest size (the cheapest per token) also trains k x D_probe tokens at every factor, so
the fit measures the D exponent; D_probe then shrinks so that both horizons fit the share.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pipeline.errors import UserError

MIN_FACTORS = 4          # a parabola with a resolved vertex needs points on both sides of it
MIN_SIZES = 3            # a power law in N through per-size optima needs at least three sizes


def probe_sizes(sweep, main_params: list[int]) -> list[str]:
    """Explicit sizes, or lr_probe_n_sizes geometric between the isoflop design's smallest and largest."""
    if sweep.lr_probe_sizes:
        return [str(s) for s in sweep.lr_probe_sizes]
    lo, hi, k = min(main_params), max(main_params), sweep.lr_probe_n_sizes
    if k < MIN_SIZES:
        raise UserError(f"sweep.lr_probe_n_sizes={k}: the LR law needs at least {MIN_SIZES} probed sizes")
    return [f"{lo * (hi / lo) ** (i / (k - 1)):.4g}" for i in range(k)]


def _check_factors(factors: list[float]) -> list[float]:
    factors = sorted(float(f) for f in factors)
    if len(factors) < MIN_FACTORS or len(set(factors)) != len(factors) or factors[0] <= 0:
        raise UserError(f"sweep.lr_probe_factors={factors}: list at least {MIN_FACTORS} distinct positive multiples "
                        "of the rule's LR, e.g. [0.25,0.5,1,2,4]")
    return factors


def plan_probe(sweep, main_flops: float, main_params: list[int], make_run: Callable) -> list:
    """The probe's runs. make_run(size, train_over) -> PlannedRun (the planner's own resolution).

    Sizes are targets snapped to the family (the planner's auto-size tolerance); two sizes that snap to
    one shape are an error, as in the isoflop design.
    """
    factors = _check_factors(sweep.lr_probe_factors)
    share = sweep.lr_probe_max_share
    if not 0 < share <= 1:
        raise UserError(f"sweep.lr_probe_max_share={share} must be in (0, 1]: it is a share of the isoflop design")
    sizes = probe_sizes(sweep, main_params)
    # FLOPs per token of each size (independent of the horizon): resolve once at a nominal horizon.
    per_token = {}
    for size in sizes:
        run = make_run(size, {"tokens": 10**6})
        if any(run.spec.shape == make_run(s, {"tokens": 10**6}).spec.shape for s in per_token):
            raise UserError(f"LR probe sizes {sizes} give the same model twice: space sweep.lr_probe_sizes further apart")
        per_token[size] = run.spec.flops_per_token["exact"]
    long_factor = sweep.lr_probe_long_factor
    if long_factor is not None and not long_factor > 1:
        raise UserError(f"sweep.lr_probe_long_factor={long_factor}: the second horizon must be longer than the probe's "
                        "tokens, e.g. 4 (or null for one horizon)")
    smallest = min(sizes, key=per_token.get)
    horizons = [(size, 1.0) for size in sizes] + ([(smallest, float(long_factor))] if long_factor else [])
    if sweep.lr_probe_tokens is not None:
        tokens = int(sweep.lr_probe_tokens)
    else:   # the most tokens the share allows, with room for step rounding
        tokens = int(share * main_flops / (len(factors) * sum(per_token[s] * k for s, k in horizons)) * 0.97)
    runs = []
    for size, k in horizons:
        horizon = int(tokens * k)
        base = make_run(size, {"tokens": horizon})
        for factor in factors:
            train_over = {"tokens": horizon, "lr": float(f"{base.spec.hparams.lr * factor:.6g}")}
            run = make_run(size, train_over)
            runs.append((run, factor))
    spent = sum(r.spec.flops["exact"] for r, _ in runs)
    if spent > share * main_flops:
        raise UserError(f"the LR probe costs {spent:.3g} FLOPs, {spent / main_flops:.0%} of the isoflop design's "
                        f"{main_flops:.3g} (sweep.lr_probe_max_share={share}): lower sweep.lr_probe_tokens "
                        f"(now {tokens:,}), probe fewer sizes or factors, or raise the share")
    return [(run, {"factor": factor, "base_lr": run.spec.hparams.lr / factor, "tokens": run.spec.tokens,
                   "probe_tokens": tokens, "long_factor": long_factor,
                   "spent_flops": spent, "main_flops": main_flops, "share": spent / main_flops})
            for run, factor in runs]


def probe_cost_line(probe: dict) -> str:
    return (f"LR probe: {probe['spent_flops']:.3g} FLOPs = {probe['share']:.1%} of the isoflop design's "
            f"{probe['main_flops']:.3g} (bound: sweep.lr_probe_max_share), {probe['probe_tokens']:,} tokens per run"
            + (f", the smallest size also {probe['long_factor']:g}x that (the LR's D exponent)"
               if probe.get("long_factor") else "") + "; "
            "fit it with python -m pipeline.fit.lr_law <sweep results dir>")


def log_spacing(factors: list[float]) -> float:
    """The probe grid's spacing in ln LR (for the fit's resolution statement)."""
    logs = sorted(math.log(f) for f in factors)
    return min(b - a for a, b in zip(logs, logs[1:], strict=False))
