"""The adaptive design's rounds and the fit's `next=K` proposal, on top of the chooser (next_runs.py).

* `fit_ensemble` -- the light fit a round needs: Approach 3's Chinchilla form, the noise model and a
  small parametric bootstrap (the chooser's ensemble); `decision_ensemble` the same for the quantity the
  user bets on: the loss's N_opt, or with `target=` the target's recommended N from the target's own fit
  and bootstrap (pipeline/fit/targets.py: fit_metric).
* `across_forms` -- the rounds read the law forms' disagreement as the final fit does: when the alpha = beta
  form puts N_opt outside the Chinchilla form's interval, the round's width is the span of both forms'
  90% intervals (what the fit's range line leads with, pipeline/fit/checks.py: form_spread) and the
  chooser's ensemble is both forms' draws in equal numbers, so it picks the runs that tell the forms apart
  (their predictions differ there, and that difference moves N_opt; Box & Hill 1967 on designs that
  discriminate between models). Without it a design could stop "within sweep.stop_width" on one form
  while the fit afterwards reports the forms several times apart (the CPU demo did: 5.05x, then 12.2x).
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
    decision_quantity,
    describe_pick,
    isoflop_candidates,
    log_n_opt,
    profile_rule,
    stop_reason,
)
from pipeline.errors import UserError
from pipeline.fit.bootstrap import bootstrap_law
from pipeline.fit.candidates import chinchilla_form, fit_candidate, overtrain_form
from pipeline.fit.intervals import percentile_interval
from pipeline.fit.noise import noise_model
from pipeline.fit.targets import MetricModel, fit_metric, parse_target


def fit_ensemble(table, target_flops: float, bootstrap: int = 40, seed: int = 0, forms: bool = False) -> dict:
    """A light fit for the rounds of a design: Approach 3's Chinchilla form (pipeline/fit/candidates.py),
    the noise model (pipeline/fit/noise.py) and its parametric bootstrap of `bootstrap` resamples; with `forms`,
    widened to the law forms' disagreement as a sweep's round reads it (across_forms).

    {"law", "samples" (E, A, B, alpha, beta rows), "sd_log", "n_opt", "interval" (5-95% of N_opt)}."""
    fit = fit_candidate(chinchilla_form(), table.n, table.tokens, table.loss, table.convention)
    law = fit.law()
    noise = noise_model(table, law)
    if not noise:
        raise UserError(f"{len(table)} runs leave no degrees of freedom to measure the noise: add runs or seeds")
    boot = bootstrap_law(fit, table.n, table.tokens, table.loss, target_flops, bootstrap, seed, sd_log=noise["sd_log"])
    out = {"law": law, "samples": boot["samples"], "sd_log": noise["sd_log"], "noise_source": noise["source"],
           "n_opt": float(law.optimal_allocation(target_flops)[0]), "interval": boot["intervals"].get("n_opt"),
           "n_failed": boot["n_failed"]}
    return across_forms(out, table, target_flops, bootstrap, seed) if forms else out


def across_forms(ensemble: dict, table, target_flops: float, bootstrap: int, seed: int) -> dict:
    """`fit_ensemble`'s result, widened to the law forms' disagreement when there is one (module doc).

    The alpha = beta form (pipeline/fit/candidates.py: overtrain) is fitted and bootstrapped with the same noise
    sd and seed; when its N_opt lies outside the Chinchilla form's 90% interval, "interval" becomes the span of
    both intervals ("span_width" its high/low, the width the chooser scales from), "samples" both forms' draws
    (equal numbers, so neither form outweighs the other by how many draws converged) and "forms" names each
    form's N_opt and interval. A form that cannot be fitted (too few runs, no optimum) leaves the ensemble as it
    is: the final fit would not count it either."""
    interval = ensemble.get("interval")
    if not interval:
        return ensemble
    try:
        other = fit_candidate(overtrain_form(), table.n, table.tokens, table.loss, table.convention)
        boot = bootstrap_law(other, table.n, table.tokens, table.loss, target_flops, bootstrap, seed,
                             sd_log=ensemble["sd_log"])
    except UserError:
        return ensemble
    n_opt, other_interval = float(other.law().optimal_allocation(target_flops)[0]), boot["intervals"].get("n_opt")
    if not other_interval or interval[0] <= n_opt <= interval[1]:
        return ensemble
    m = min(len(ensemble["samples"]), len(boot["samples"]))
    forms = {"chinchilla": {"n_opt": ensemble["n_opt"], "interval": [float(v) for v in interval]},
             "overtrain": {"n_opt": n_opt, "interval": [float(v) for v in other_interval]}}
    lo, hi = min(interval[0], other_interval[0]), max(interval[1], other_interval[1])
    return {**ensemble, "samples": np.vstack([ensemble["samples"][:m], boot["samples"][:m]]), "forms": forms,
            "interval": [lo, hi], "span_width": float(hi / lo)}


def target_ensemble(model: MetricModel, target_flops: float) -> dict:
    """The chooser's inputs from a target's fitted model: its law, its bootstrap rows (the draws its intervals
    come from), its noise sd, and the recommended N with its 90% interval (next_runs.decision_quantity)."""
    samples, sd_log = model.law_samples, (model.bootstrap or {}).get("sd_log")
    if samples is None or len(samples) < MIN_ENSEMBLE or not sd_log:
        raise UserError(f"target {model.name}: choosing runs needs its bootstrap (at least {MIN_ENSEMBLE} draws) and a "
                        "noise estimate (7+ runs or repeated seeds); raise bootstrap or add runs")
    n_opt = np.exp(log_n_opt(samples, target_flops))
    return {"law": model.law, "samples": samples, "sd_log": float(sd_log), "noise_source": model.bootstrap["unit"],
            "n_opt": float(model.law.optimal_allocation(target_flops)[0]),
            "interval": percentile_interval(n_opt[np.isfinite(n_opt)]),
            "quantity": decision_quantity(target_flops, model.name, model.higher_is_better)}


def decision_ensemble(table, target_flops: float, bootstrap: int, seed: int, target: str = "loss",
                      outliers: str = "default") -> dict:
    """`fit_ensemble` for the loss; for `target=<metric>` the target's own fit and parametric bootstrap
    (fit_metric, with the fit's outlier rule), as `target_ensemble` reads them."""
    chosen = parse_target(target, table)
    if chosen.kind == "loss":
        return {**fit_ensemble(table, target_flops, bootstrap, seed, forms=True),
                "quantity": decision_quantity(target_flops)}
    return target_ensemble(fit_metric(table, chosen, bootstrap=bootstrap, seed=seed, outliers=outliers), target_flops)


def width_of(label: str, forms: dict | None) -> str:
    """What a round's width measures, as the round's lines print it."""
    if not forms:
        return f"{label}'s 90% interval"
    each = ", ".join(f"{name} {f['n_opt']:.3g} [{f['interval'][0]:.3g}, {f['interval'][1]:.3g}]" for name, f in forms.items())
    return f"{label}'s range across the law forms' 90% intervals ({each})"


def adaptive_round(table, target_flops: float, *, pilot_flops: float, stop_width: float | None, rounds_done: int,
                   max_rounds: int, round_runs: int, bootstrap: int, seed: int, size_ratio: float = 2.0,
                   budget_ratio: float = 3.0, min_budget: float | None = None, realize=None, target: str = "loss",
                   outliers: str = "default", min_profiles: int = 0) -> dict:
    """One round of the adaptive design on the runs so far: fit, then stop (with why) or choose the next runs.

    `realize(candidates) -> (candidates, keys)` turns ideal (N, C) candidates into runs that can really be
    trained (the sweep snaps sizes to model shapes and prices them with the exact FLOP count) and names each
    (`key`: whatever the caller needs to plan it); without it the ideal ones are chosen among (simulations).
    `target` (a metric, `target=`) makes the quantity its recommended N (decision_ensemble). While fewer than
    `min_profiles` budgets have a profile, the round starts with a new budget's (next_runs.profiled_budgets).
    Returns {"fit": {n_opt, interval, width, quantity, label, sd_log, runs, spent_flops}, "stop": reason or None,
    "picks": [... with "reason" and "key"], "expected_width_after"}.
    """
    spent = float(np.sum(table.c))
    try:
        fit = decision_ensemble(table, target_flops, bootstrap, seed, target, outliers)
    except UserError as err:   # too early for a law: the caller falls back to its static plan
        return {"fit": {"runs": len(table), "spent_flops": spent, "error": str(err)}, "picks": [], "stop": None,
                "fit_error": f"the law could not be fitted to the {len(table)} runs so far ({err})"}
    lo, hi = fit["interval"] or (np.nan, np.nan)
    width = float(hi / lo) if lo > 0 else np.inf
    label, quantity = fit["quantity"]
    summary = {"n_opt": fit["n_opt"], "interval": [float(lo), float(hi)], "width": width, "quantity": quantity,
               "label": label, "width_of": width_of(label, fit.get("forms")), "sd_log": fit["sd_log"],
               "noise_source": fit["noise_source"], "runs": len(table), "spent_flops": spent,
               "target_flops": float(target_flops), **({"forms": fit["forms"]} if fit.get("forms") else {})}
    left = pilot_flops - spent
    cands = isoflop_candidates(fit["law"], table.n, table.tokens, table.budget_groups(), size_ratio=size_ratio,
                               budget_ratio=budget_ratio, max_run_flops=max(left, 0.0), min_budget=min_budget,
                               profiles=min_profiles > 0)
    keys = [None] * len(cands)
    if realize is not None and len(cands):
        cands, keys = realize(cands)
        keep = np.flatnonzero(cands.flops <= left)
        cands, keys = cands.subset(keep), [keys[i] for i in keep]
    cheapest = float(cands.flops.min()) if len(cands) else np.inf
    reason = stop_reason(width, stop_width, spent, pilot_flops, cheapest, rounds_done, max_rounds, summary["width_of"])
    if reason:
        return {"fit": summary, "stop": reason, "picks": []}
    first = profile_rule(table.n, table.budget_groups(), min_profiles)
    choice = choose_next(fit["samples"], fit["sd_log"], cands, target_flops, max_runs=round_runs, flops_left=left,
                         quantity=fit["quantity"], profile_first=first, width_now=fit.get("span_width"))
    if not choice["picks"]:
        return {"fit": summary, "stop": choice["stopped"], "picks": []}
    picks = [{**p, "reason": describe_pick(p, label, bool(fit.get("forms"))), "key": keys[p["index"]]}
             for p in choice["picks"]]
    return {"fit": summary, "stop": None, "picks": picks, "expected_width_after": choice["expected_width_after"],
            "rule": choice["rule"]}


def propose_next(table, target_flops: float, k: int, law=None, samples=None, sd_log: float | None = None,
                 bootstrap: int = 100, seed: int = 0, size_ratio: float = 2.0, target: MetricModel | None = None,
                 forms_apart: bool = False) -> dict:
    """The `k` runs that shrink log N_opt's 90% interval at `target_flops` most per FLOP, with the expected
    width after them. `law`, `samples` and `sd_log` are the fit's own (pipeline.fit.fit_all: the chosen law,
    its bootstrap rows and the noise model); without enough samples the light fit above supplies them.
    With `target` (the fitted model of `target=`) the quantity is the target's recommended N, from the
    target's law, bootstrap rows and noise (target_ensemble), candidates centred on its optimum. `forms_apart` (the
    fit reports the law forms apart, pipeline/fit/checks.py: form_spread): the ensemble a sweep's round would use,
    both forms' draws (across_forms), so the proposal aims at the range the fit leads with."""
    if not (isinstance(k, int) and k >= 1):
        raise UserError(f"next={k!r} must be a positive number of runs to propose")
    source = f"the bootstrap of {target.name}'s fit" if target is not None else "the fit's bootstrap"
    fit: dict = {}
    if target is not None:
        if target.law_samples is None or len(target.law_samples) < MIN_ENSEMBLE:
            target = fit_metric(table, target.target, bootstrap=bootstrap, seed=seed)
            source = f"a {bootstrap}-resample parametric bootstrap of {target.name}'s law (the fit had none)"
        fit = target_ensemble(target, target_flops)
        law, samples, sd_log = fit["law"], fit["samples"], fit["sd_log"]
    elif forms_apart or law is None or samples is None or len(samples) < MIN_ENSEMBLE or not sd_log:
        fit = fit_ensemble(table, target_flops, bootstrap, seed, forms=forms_apart)
        law, samples, sd_log = fit["law"], fit["samples"], fit["sd_log"]
        if fit.get("forms"):
            source = (f"{bootstrap}-resample parametric bootstraps of the Chinchilla and alpha = beta forms, their "
                      "draws pooled as a sweep's round pools them (the fit reports the forms apart)")
        elif forms_apart:
            source = (f"a {bootstrap}-resample parametric bootstrap of the Chinchilla form (the fit reports the law "
                      "forms apart; this light fit does not)")
        else:
            source = f"a {bootstrap}-resample parametric bootstrap of the Chinchilla form (the fit had none)"
    quantity = decision_quantity(target_flops, *((target.name, target.higher_is_better) if target else ()))
    cands = isoflop_candidates(law, table.n, table.tokens, table.budget_groups(), size_ratio=size_ratio)
    choice = choose_next(samples, sd_log, cands, target_flops, max_runs=k, quantity=quantity,
                         width_now=fit.get("span_width"))
    for pick in choice["picks"]:
        pick["reason"] = describe_pick(pick, quantity[0], bool(fit.get("forms")))
    return {**choice, "ensemble_source": source, "width_of": width_of(quantity[0], fit.get("forms"))}


def design_summary(design: dict) -> str:
    """The verdict's clause: how many rounds the adaptive design ran and why it stopped."""
    n = len(design.get("rounds") or [])
    return f"adaptive design: {n} round{'s' if n != 1 else ''} after the seed budgets, stopped: " + (
        design.get("stopped") or "not yet (relaunch the sweep to continue it)")


def round_width_of(fit: dict) -> str:
    """A recorded round's `width_of` (plan.json files written before it existed: the label's 90% interval)."""
    return fit.get("width_of") or width_of(fit.get("label", "N_opt"), None)


def design_section(design: dict | None) -> list[str]:
    """The report's section on the adaptive design: each round's fit and why each run was added."""
    if not design:
        return []
    lines = ["## Adaptive design", "", design_summary(design) + ".", ""]
    quantity = next((r["fit"]["quantity"] for r in design.get("rounds") or [] if (r.get("fit") or {}).get("quantity")),
                    None)
    if quantity:
        lines += [f"Runs chosen by the expected shrinkage of the 90% interval of {quantity}, per FLOP.", ""]
    for r in design.get("rounds") or []:
        fit = r.get("fit") or {}
        width = (f"{round_width_of(fit)} {fit['width']:.3g}x wide on {fit['runs']} runs; "
                 if fit.get("width") else "")
        lines.append(f"- round {r['round']}: {width}added {len(r['picks'])} runs"
                     + (f", expected {r['expected_width_after']:.3g}x after them" if r.get("expected_width_after") else ""))
        lines += [f"  - {reason}" for reason in dict.fromkeys(p["reason"] for p in r["picks"])]
    final = design.get("final_fit") or {}
    if final.get("width"):
        lines.append(f"- at the stop: {round_width_of(final)} {final['width']:.3g}x wide on "
                     f"{final['runs']} runs, {final['spent_flops']:.3g} pilot FLOPs (the light fit between rounds; the fit above is the product's)")
    return [*lines, ""]
