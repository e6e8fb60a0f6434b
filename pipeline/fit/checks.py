"""Checks around the fit: the outlier rule, approach agreement, accounting sensitivity (the backtest is the
law selection's, pipeline/fit/selection.py).

Every check returns plain data for the report, with a `warning` string when a person should look.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.isoflop import fit_isoflop
from pipeline.fit.parametric import fit_parametric
from pipeline.fit.table import RunsTable

# Outlier rule "default": one Approach-3 fit on all runs, then drop runs whose loss lies ABOVE the
# fit by more than OUTLIER_MAD_K robust standard deviations (1.4826 * MAD) of the log-space residuals
# from their median (Hampel's identifier, Hampel 1974; Leys et al. 2013 recommend the MAD over the
# SD). k = 5 rather than the usual 3 because pilot residuals are few and heavy-tailed: under Gaussian
# noise 5 sigma rarely fires -- once the scale is corrected for the fit: the Huber fit with a small
# delta is nearly least-absolute-deviations, whose residuals crowd near zero (it passes close to about
# as many runs as the law has parameters), so the MAD of 20 pilots' residuals came out ~0.67 of the
# true noise sd. Uncorrected, the rule dropped or flagged 31 healthy runs in 150 simulated 20-run
# studies (Gaussian noise); the finite-sample factor (1 + p / (n - p)), p = LAW_PARAMS, of Rousseeuw &
# Leroy 1987 (the LMS scale) brings that to 16 (7 dropped, 9 kept as below-fit); the MAD of 20
# residuals stays noisy, so about 1 simulated study in 20 still loses a healthy run.
# One-sided because the rule is there for failed runs, and failures only raise a loss (a divergence
# or loss spike, a wrong learning rate, a broken data shard). A run far BELOW the law did better than
# its size and tokens allow under the law's form: either the form misfits it -- a healthy run the
# rule must not drop -- or its evaluation leaks (validation text in the training data). Such runs are
# kept and listed (`below_fit`) with a warning, so a person looks at them. Besiroglu et al. 2024
# likewise removed only Chinchilla's highest-loss points. On Chinchilla's 245 points the rule drops 4
# of the 5 highest-loss points Epoch dropped by hand and lists one run (loss 2.08) 6 robust sd below
# the fit. The two-sided version dropped that run too; refits then preferred the alpha = beta form
# and moved N_opt(5.76e23) 14% (docs/calibration.md, section 2). The Huber loss already downweights
# outliers in the fit itself; the rule removes the gross ones from every approach.
OUTLIER_RULES = ("default", "none")
OUTLIER_MAD_K = 5.0
LAW_PARAMS = 5               # E, A, B, alpha, beta of the first fit: the MAD's finite-sample correction
# A target budget more than this many times the largest pilot run's FLOPs is flagged (the decision
# warns; pipeline/decide/recommend.py): Chinchilla's own fits extrapolate ~10^3 beyond their largest runs.
EXTRAPOLATION_WARN_FACTOR = 1e3
OUTLIER_MIN_RUNS = 10        # with fewer runs than 2x the law's 5 parameters, residuals mean little
# Floor of the robust scale: 0.5% in log-loss, so only residuals above 5 x 0.5% = 2.5% can be
# flagged. Seed-to-seed noise is ~0.3-1% (0.011-0.03 nats measured for
# 2M-token CPU runs, up to 0.1 at 0.5M tokens, docs/cooldown_reuse.md) and at CPU scale the
# scatter between shapes of one size is ~1-2%: with 10-20 pilots and 5 law parameters a near-exact
# fit makes the MAD tiny, and a 1e-3 floor dropped 3 of 10 healthy demo runs.
MAD_FLOOR = 5e-3

# Backtest (pipeline/fit/selection.py): mean |relative error| on held-out largest-compute runs above 2% warns.
# Chinchilla's own points, fitted without their top 10-20% of compute, predict those at ~1.0% mean relative error.
BACKTEST_WARN_REL_ERROR = 0.02


def outlier_keep(table: RunsTable, rule: str = "default", first_fit=None) -> tuple[np.ndarray, dict]:
    """(mask of the runs kept, {"rule", "dropped": [...], "below_fit": [...], "note"?}).

    Each entry is {run_id, loss, residual, z}: residual = log(law) - log(loss), z its robust score;
    `dropped` are the runs far above the law (z < -OUTLIER_MAD_K), `below_fit` the runs far below it,
    which are kept (see the comment on OUTLIER_MAD_K). `first_fit`: a callable giving the first fit's
    ParametricLaw (or raising UserError), when the caller has it (pipeline/fit/refits.py); else it is fitted.
    """
    if rule not in OUTLIER_RULES:
        raise UserError(f"outliers='{rule}' is not a rule: use one of {', '.join(OUTLIER_RULES)}")
    keep = np.ones(len(table), dtype=bool)
    if rule == "none":
        return keep, {"rule": "none (every finished run is fitted)", "dropped": [], "below_fit": []}
    description = (f"drop runs whose loss lies above a first Approach-3 fit by more than {OUTLIER_MAD_K:g} x "
                   f"1.4826 x (1 + {LAW_PARAMS}/(n - {LAW_PARAMS})) MAD of the log-loss residuals (one-sided "
                   "Hampel identifier: failures raise a loss)")
    if len(table) < OUTLIER_MIN_RUNS:
        return keep, {"rule": description, "dropped": [], "below_fit": [],
                      "note": f"not applied: {len(table)} runs < {OUTLIER_MIN_RUNS}"}
    try:
        law = first_fit() if first_fit is not None else fit_parametric(table.n, table.tokens, table.loss).law()
    except UserError as err:
        return keep, {"rule": description, "dropped": [], "below_fit": [],
                      "note": f"not applied: first fit failed ({err})"}
    resid = np.log(law.loss(table.n, table.tokens)) - np.log(table.loss)
    median = np.median(resid)
    scale = max(1.4826 * (1 + LAW_PARAMS / (len(table) - LAW_PARAMS)) * np.median(np.abs(resid - median)), MAD_FLOOR)
    z = (resid - median) / scale

    def entries(mask: np.ndarray) -> list[dict]:
        return [{"run_id": table.run_id[i], "loss": float(table.loss[i]), "residual": float(resid[i]),
                 "z": float(z[i])} for i in np.flatnonzero(mask)]

    out = z < -OUTLIER_MAD_K
    return ~out, {"rule": description, "dropped": entries(out), "below_fit": entries(z > OUTLIER_MAD_K)}


def apply_outlier_rule(table: RunsTable, rule: str = "default", first_fit=None) -> tuple[RunsTable, dict]:
    """(table without outliers, report): `outlier_keep` applied."""
    keep, report = outlier_keep(table, rule, first_fit)
    return (table if keep.all() else table.subset(keep, reason="outlier (see outliers.rule)")), report


# An approach whose N_opt interval (high/low) is this many times wider than the law's says little about it.
WIDE_TO_CHECK = 10.0


def approach_agreement(approaches: dict) -> dict:
    """Compare N_opt at the target budget across approaches; warn when intervals do not overlap.

    An approach without an interval contributes its point estimate as a zero-width interval; two of those are not
    compared (without a bootstrap `consistent` is None). `consistent`: every judged pair's intervals overlap;
    `too_wide_to_check`:
    approaches whose interval is WIDE_TO_CHECK times the parametric law's or wider (e.g. Approach 2 on two
    profiles), named so the verdict can say they do not corroborate the law.
    """
    spans = {}
    for name, result in approaches.items():
        if "n_opt" not in result:
            continue
        lo, hi = (result.get("intervals") or {}).get("n_opt", [result["n_opt"], result["n_opt"]])
        spans[name] = (float(lo), float(hi), float(result["n_opt"]))
    out = {"n_opt": {k: v[2] for k, v in spans.items()},
           "n_opt_intervals": {k: [v[0], v[1]] for k, v in spans.items()}}
    if len(spans) < 2:
        return {**out, "note": "fewer than 2 approaches gave N_opt: nothing to compare"}
    points = [v[2] for v in spans.values()]
    out["max_over_min"] = max(points) / min(points)
    # a pair is judged when at least one side has an interval: two bare points cannot clash or agree
    pairs = [(a, sa, b, sb) for i, (a, sa) in enumerate(spans.items()) for b, sb in list(spans.items())[i + 1:]
             if sa[0] < sa[1] or sb[0] < sb[1]]
    clashes = [f"{a} vs {b}" for a, sa, b, sb in pairs if sa[1] < sb[0] or sb[1] < sa[0]]
    out["consistent"] = (not clashes) if pairs else None   # the verdict ignores the spread only when True
    widths = {k: v[1] / v[0] for k, v in spans.items() if v[0] > 0 and v[1] > v[0]}
    if "parametric" in widths:           # an approach far less precise than the law cannot corroborate it
        out["too_wide_to_check"] = {k: w for k, w in widths.items()
                                    if k != "parametric" and w > WIDE_TO_CHECK * widths["parametric"]}
    if clashes:
        out["warning"] = (f"approaches disagree on N_opt beyond their intervals ({', '.join(clashes)}; "
                          f"{out['max_over_min']:.3g}x apart): trust the answer less, add budgets or runs")
    return out


def convention_sensitivity(table: RunsTable, budget_flops: float, known: dict | None = None) -> dict:
    """Refit Approaches 3 and 2 under each parameter convention the table has (at small scale the
    choice of N moves the exponent a noticeably at small scale). `known` holds entries already
    computed, by convention (the main fit's), so they are not fitted twice."""
    out = dict(known or {})
    for convention in ("total", "non_embedding"):
        if convention not in table.params or convention in out:
            continue
        t = table.with_convention(convention)
        entry: dict = {}
        try:
            fit = fit_parametric(t.n, t.tokens, t.loss)
            law = fit.law(convention)
            entry["parametric_a"] = law.a
            entry["parametric_n_opt"] = float(law.optimal_allocation(budget_flops)[0])
        except UserError as err:
            entry["parametric_error"] = str(err)
        try:
            iso = fit_isoflop(t, budget_flops, bootstrap=0)
            if "error" in iso:
                entry["isoflop_error"] = iso["error"]
            else:
                entry["isoflop_a"], entry["isoflop_n_opt"] = iso["a"], iso["n_opt"]
        except UserError as err:
            entry["isoflop_error"] = str(err)
        out[convention] = entry
    return out


# The verdict's thresholds: the factor within which the pilots pin N_opt (the larger of the chosen
# law's interval half-width, sqrt(high/low), and the approaches' max/min spread).
AGREE_FACTOR = 1.2
USABLE_FACTOR = 2.0
APPROACH_NAMES = {"envelope": "Approach 1", "isoflop": "Approach 2", "parametric": "Approach 3"}


def form_spread(result: dict) -> dict | None:
    """The law forms' disagreement on N_opt, when a form that passed its backtest puts N_opt outside the chosen
    form's interval: the form then decides the answer more than the noise does (Li et al. 2025, arXiv:2502.18969),
    and the chosen form's own interval cannot show it (a constrained form, alpha = beta, pins the allocation
    exponent, so its interval is narrow by construction). None when no such form exists.

    Returns {"factor": max/min of N_opt over the chosen form and those outside its interval, "names": them as
    text, "forms": every form with an N_opt interval that is chosen or passed its backtest, "span": [lo, hi]
    across those forms' intervals} (the range line prints the forms and the span; recommendation.json keeps
    the span as intervals.n_opt_across_forms)."""
    rows = (result.get("selection") or {}).get("candidates") or []
    chosen = next((r for r in rows if r.get("chosen") and r.get("n_opt")), None)
    interval = ((chosen or {}).get("intervals") or {}).get("n_opt")
    if not interval:
        return None
    outside = [r for r in rows if not r.get("chosen") and r.get("n_opt") and r.get("backtest_error") is not None
               and not interval[0] <= r["n_opt"] <= interval[1]]
    if not outside:
        return None
    points = [chosen["n_opt"], *(r["n_opt"] for r in outside)]
    forms = [r for r in rows if r.get("n_opt") and (r.get("intervals") or {}).get("n_opt")
             and (r.get("chosen") or r.get("backtest_error") is not None)]
    return {"factor": max(points) / min(points),
            "names": ", ".join(f"{r['candidate']} {r['n_opt']:.3g}" for r in (chosen, *outside)),
            "forms": forms,
            "span": [min(r["intervals"]["n_opt"][0] for r in forms), max(r["intervals"]["n_opt"][1] for r in forms)]}


def verdict(result: dict) -> str:
    """One line a person can act on, from the chosen law's N_opt interval and the approaches' spread."""
    interval = (result.get("intervals") or {}).get("n_opt")
    agreement = result.get("agreement") or {}
    # The approaches' spread measures the pilots' precision only when it exceeds their intervals: points
    # that differ inside overlapping intervals show an imprecise approach, not a conflict (the law's own
    # interval already states the precision). Without intervals every difference counts.
    spread = agreement.get("max_over_min")
    within_intervals = bool(spread) and bool(interval) and agreement.get("consistent") is True
    unresolved = sum(not m["resolved"] for m in result.get("minima") or [])
    forms = form_spread(result)
    factors = [f for f in ((interval[1] / interval[0]) ** 0.5 if interval else None,
                           None if within_intervals else spread, forms["factor"] if forms else None) if f]
    unchecked = agreement.get("too_wide_to_check") or {}   # no other approach precise enough to check the law
    identified = result.get("identifiability") or {}
    if identified and not identified.get("sufficient", True):   # pipeline/fit/identifiability.py
        return f"the table cannot decide N_opt: {identified.get('note')}; add runs before sizing a run from them"
    if not factors:
        asked = result.get("bootstrap_requested")
        fix = ("fit with bootstrap > 0" if not asked else
               f"the bootstrap gave no interval from its {asked} resamples (see warnings): add runs or budgets")
        return f"no interval and a single approach: the pilots' precision is unknown; {fix}"
    factor = max(factors)
    why = []
    if interval:
        why.append(f"N_opt interval x/{(interval[1] / interval[0]) ** 0.5:.2g}")
    if forms:
        why.append(f"law forms {forms['factor']:.3g}x apart ({forms['names']})")
    if spread and within_intervals:
        why.append(f"approaches {spread:.3g}x apart, within their intervals"
                   + "".join(f"; {APPROACH_NAMES.get(k, k)}'s interval is {w:.3g}x wide, too wide to check the law"
                             for k, w in unchecked.items()))
    elif spread:
        why.append(f"approaches {spread:.3g}x apart")
    if unresolved:
        why.append(f"{unresolved} IsoFLOP minima not resolved beyond the noise")
    detail = "; ".join(why)
    tuning = (result.get("hparams") or {}).get("distorts")
    if tuning:   # pipeline/fit/lr_check.py: the LRs' penalty exceeds the noise, or is not measured
        detail += ("; hyperparameters distort the law (LR off the probe's optimum by more than the noise)" if tuning is True
                   else "; hyperparameters may distort the law (LR rule extrapolated, not probed)")
    failed = ((result.get("selection") or {}).get("chosen") or {}).get("backtest_failed")
    if failed:   # pipeline/fit/selection.py: kept as the incumbent, but nothing checked its extrapolation
        detail += "; the chosen law's backtest failed, so its extrapolation is unchecked"
    if factor <= AGREE_FACTOR and (failed or tuning is True or unchecked):   # tight, but not shown to be right
        return (f"pilots agree within {factor - 1:.0%} on N_opt ({detail}): not yet a basis for sizing the run; "
                + ("add budgets so the law can be backtested" if failed else "train the pilots at the probed LR"
                   if tuning is True else "no other approach can check the law: give Approach 2 profiles at three "
                   "budgets (sweep.min_profiles=3)"))
    if factor <= AGREE_FACTOR:
        return f"pilots agree within {factor - 1:.0%} on N_opt ({detail}): size the run from them"
    if factor <= USABLE_FACTOR:
        return (f"pilots pin N_opt within {factor:.2g}x ({detail}): usable, the loss penalty of that error is in "
                "the deviation table")
    return (f"pilots cannot separate sizes within {factor:.2g}x ({detail}): run more budgets or seeds "
            "before betting the budget on this size")
