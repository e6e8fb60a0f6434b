"""The adaptive design's rounds and the fit's `next=K` proposal, on top of the chooser (next_runs.py).

* `fit_ensemble` -- the light fit a round needs: Approach 3's Chinchilla form, the noise model and a
  small parametric bootstrap (the chooser's ensemble).
* `adaptive_round` -- one round of `sweep.design=adaptive` (pipeline/sweep/adaptive.py runs the rounds):
  fit the runs so far, stop (and say why) or choose the next runs.
* `propose_next` -- `python -m pipeline.fit ... next=K`: the K runs to train next for any runs table,
  imported ones included, from the fit's own bootstrap ensemble.
"""

from __future__ import annotations

import numpy as np

from pipeline.decide.next_runs import (
    MIN_ENSEMBLE,
    choose_next,
    describe_pick,
    isoflop_candidates,
    stop_reason,
)
from pipeline.errors import UserError
from pipeline.fit.bootstrap import bootstrap_law
from pipeline.fit.candidates import chinchilla_form, fit_candidate
from pipeline.fit.noise import noise_model


def fit_ensemble(table, target_flops: float, bootstrap: int = 40, seed: int = 0) -> dict:
    """A light fit for the rounds of a design: Approach 3's Chinchilla form (pipeline/fit/candidates.py),
    the noise model (pipeline/fit/noise.py) and its parametric bootstrap of `bootstrap` resamples.

    {"law", "samples" (E, A, B, alpha, beta rows), "sd_log", "n_opt", "interval" (5-95% of N_opt)}."""
    fit = fit_candidate(chinchilla_form(), table.n, table.tokens, table.loss, table.convention)
    law = fit.law()
    noise = noise_model(table, law)
    if not noise:
        raise UserError(f"{len(table)} runs leave no degrees of freedom to measure the noise: add runs or seeds")
    boot = bootstrap_law(fit, table.n, table.tokens, table.loss, target_flops, bootstrap, seed, sd_log=noise["sd_log"])
    return {"law": law, "samples": boot["samples"], "sd_log": noise["sd_log"], "noise_source": noise["source"],
            "n_opt": float(law.optimal_allocation(target_flops)[0]), "interval": boot["intervals"].get("n_opt"),
            "n_failed": boot["n_failed"]}


def adaptive_round(table, target_flops: float, *, pilot_flops: float, stop_width: float | None, rounds_done: int,
                   max_rounds: int, round_runs: int, bootstrap: int, seed: int, size_ratio: float = 2.0,
                   budget_ratio: float = 3.0, min_budget: float | None = None, realize=None) -> dict:
    """One round of the adaptive design on the runs so far: fit, then stop (with why) or choose the next runs.

    `realize(candidates) -> (candidates, keys)` turns ideal (N, C) candidates into runs that can really be
    trained (the sweep snaps sizes to model shapes and prices them with the exact FLOP count) and names each
    (`key`: whatever the caller needs to plan it); without it the ideal ones are chosen among (simulations).
    Returns {"fit": {n_opt, interval, width, sd_log, runs, spent_flops}, "stop": reason or None,
    "picks": [... with "reason" and "key"], "expected_width_after"}.
    """
    spent = float(np.sum(table.c))
    try:
        fit = fit_ensemble(table, target_flops, bootstrap, seed)
    except UserError as err:   # too early for a law: the caller falls back to its static plan
        return {"fit": {"runs": len(table), "spent_flops": spent, "error": str(err)}, "picks": [], "stop": None,
                "fit_error": f"the law could not be fitted to the {len(table)} runs so far ({err})"}
    lo, hi = fit["interval"] or (np.nan, np.nan)
    width = float(hi / lo) if lo > 0 else np.inf
    summary = {"n_opt": fit["n_opt"], "interval": [float(lo), float(hi)], "width": width, "sd_log": fit["sd_log"],
               "noise_source": fit["noise_source"], "runs": len(table), "spent_flops": spent,
               "target_flops": float(target_flops)}
    left = pilot_flops - spent
    cands = isoflop_candidates(fit["law"], table.n, table.tokens, table.budget_groups(), size_ratio=size_ratio,
                               budget_ratio=budget_ratio, max_run_flops=max(left, 0.0), min_budget=min_budget)
    keys = [None] * len(cands)
    if realize is not None and len(cands):
        cands, keys = realize(cands)
        keep = np.flatnonzero(cands.flops <= left)
        cands, keys = cands.subset(keep), [keys[i] for i in keep]
    cheapest = float(cands.flops.min()) if len(cands) else np.inf
    reason = stop_reason(width, stop_width, spent, pilot_flops, cheapest, rounds_done, max_rounds)
    if reason:
        return {"fit": summary, "stop": reason, "picks": []}
    choice = choose_next(fit["samples"], fit["sd_log"], cands, target_flops, max_runs=round_runs, flops_left=left)
    if not choice["picks"]:
        return {"fit": summary, "stop": choice["stopped"], "picks": []}
    picks = [{**p, "reason": describe_pick(p), "key": keys[p["index"]]} for p in choice["picks"]]
    return {"fit": summary, "stop": None, "picks": picks, "expected_width_after": choice["expected_width_after"],
            "rule": choice["rule"]}


def propose_next(table, target_flops: float, k: int, law=None, samples=None, sd_log: float | None = None,
                 bootstrap: int = 100, seed: int = 0, size_ratio: float = 2.0) -> dict:
    """The `k` runs that shrink log N_opt's 90% interval at `target_flops` most per FLOP, with the expected
    width after them. `law`, `samples` and `sd_log` are the fit's own (pipeline.fit.fit_all: the chosen law,
    its bootstrap rows and the noise model); without enough samples the light fit above supplies them."""
    if not (isinstance(k, int) and k >= 1):
        raise UserError(f"next={k!r} must be a positive number of runs to propose")
    source = "the fit's bootstrap"
    if law is None or samples is None or len(samples) < MIN_ENSEMBLE or not sd_log:
        fit = fit_ensemble(table, target_flops, bootstrap, seed)
        law, samples, sd_log = fit["law"], fit["samples"], fit["sd_log"]
        source = f"a {bootstrap}-resample parametric bootstrap of the Chinchilla form (the fit had none)"
    cands = isoflop_candidates(law, table.n, table.tokens, table.budget_groups(), size_ratio=size_ratio)
    choice = choose_next(samples, sd_log, cands, target_flops, max_runs=k)
    for pick in choice["picks"]:
        pick["reason"] = describe_pick(pick)
    return {**choice, "ensemble_source": source}


def design_summary(design: dict) -> str:
    """The verdict's clause: how many rounds the adaptive design ran and why it stopped."""
    n = len(design.get("rounds") or [])
    return f"adaptive design: {n} round{'s' if n != 1 else ''} after the seed budgets, stopped: " + (
        design.get("stopped") or "not yet (relaunch the sweep to continue it)")


def design_section(design: dict | None) -> list[str]:
    """The report's section on the adaptive design: each round's fit and why each run was added."""
    if not design:
        return []
    lines = ["## Adaptive design", "", design_summary(design) + ".", ""]
    for r in design.get("rounds") or []:
        fit = r.get("fit") or {}
        width = f"N_opt's 90% interval {fit['width']:.3g}x wide on {fit['runs']} runs; " if fit.get("width") else ""
        lines.append(f"- round {r['round']}: {width}added {len(r['picks'])} runs"
                     + (f", expected {r['expected_width_after']:.3g}x after them" if r.get("expected_width_after") else ""))
        lines += [f"  - {reason}" for reason in dict.fromkeys(p["reason"] for p in r["picks"])]
    final = design.get("final_fit") or {}
    if final.get("width"):
        lines.append(f"- at the stop: N_opt's 90% interval {final['width']:.3g}x wide on {final['runs']} runs, "
                     f"{final['spent_flops']:.3g} pilot FLOPs (the light fit between rounds; the fit above is the product's)")
    return [*lines, ""]
