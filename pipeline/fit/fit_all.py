"""Everything the fit stage computes, in one call: `fit_all(table, budget_flops, ...)`.

Order: outlier rule -> Approach 3 (parametric, Chinchilla sec. 3.3) with its bootstrap ->
Approach 2 (IsoFLOP, sec. 3.2) -> Approach 1 (envelope, sec. 3.1) -> backtest, agreement of the
approaches, sensitivity to the parameter convention. The headline (N_opt, D_opt, loss) comes from
the chosen law (Approach 3's form unless the selection chose another); when no law can be fitted it
falls back to Approach 2 and says so. One FLOP count runs through the approaches' table: Approaches
1 and 2 read the runs' own FLOPs (the table's flop method), so the law's allocation (N_opt =
argmin L(N, C / F(N)), for the point, every bootstrap draw and every candidate) uses the same count:
`flops_per_token` when the caller gives one (the CLI passes the decision's count), else the runs' C / D
per size interpolated in log N; when every run costs 6 N D that is Chinchilla eq. 4's closed form.
The law's bootstrap is parametric (pipeline/fit/bootstrap.py); Approach 2 redraws within budgets;
all intervals are percentile 5-95%. The result is a
JSON-able dict; the Approach-3 samples of (E, A, B, alpha, beta) travel inside it as lists
(`bootstrap_samples(result)` gives the array, `law_from_fit(result)` the law and the array).

Law selection (pipeline/fit/selection.py, docs/calibration.md): before the approaches, every law
candidate (pipeline/fit/candidates.py) is backtested with the outlier rule on and off; `outliers=auto`
takes the rule of the best-predicting row, and the headline law, `law` and `bootstrap` are the chosen
candidate's (refitted on all kept runs, with a parametric bootstrap from the noise model,
pipeline/fit/noise.py). `approaches.parametric` stays Approach 3 with the Chinchilla form.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.bootstrap import bootstrap_law
from pipeline.fit.candidates import candidate_forms, chinchilla_form
from pipeline.fit.checks import (
    OUTLIER_MAD_K,
    OUTLIER_RULES,
    approach_agreement,
    convention_sensitivity,
    form_spread,
    outlier_keep,
    verdict,
)
from pipeline.fit.envelope import fit_envelope
from pipeline.fit.identifiability import require_identifiable
from pipeline.fit.isoflop import fit_isoflop, grid_bias
from pipeline.fit.laws import TRAIN_FLOPS_PER_PARAM_TOKEN, ParametricLaw, optimum_on_line
from pipeline.fit.lr_check import hparam_check
from pipeline.fit.noise import (
    ZIGZAG_Z,
    implausible_noise_warning,
    minimum_resolution,
    noise_model,
    profile_zigzags,
)
from pipeline.fit.parametric import HUBER_DELTA, derived_quantities
from pipeline.fit.refits import TableFits
from pipeline.fit.selection import chosen_backtest, select_law
from pipeline.fit.table import RunsTable
from pipeline.records import jsonable

# Extrapolating the law more than 4 orders of magnitude past the largest pilot run warns: Chinchilla
# itself extrapolated ~2.3 orders (3e21 -> 5.76e23 FLOPs).
BOOTSTRAP_DROP_WARN_SHARE = 0.05
HEADLINE_KEYS = ("n_opt", "d_opt", "tokens_per_param", "predicted_loss")


def bootstrap_samples(result: dict) -> np.ndarray:
    """The Approach-3 bootstrap samples, shape (n_used, 5), columns result["bootstrap"]["sample_columns"]."""
    boot = result.get("bootstrap") or {}
    return np.asarray(boot.get("samples") or np.empty((0, 5)), dtype=float).reshape(-1, 5)


def law_from_fit(result: dict) -> tuple[ParametricLaw, np.ndarray | None]:
    """The fitted law and its bootstrap samples (None without a bootstrap), for the recommendation."""
    law = result.get("law")
    if not law:
        iso = result["approaches"]["isoflop"]
        hint = (f"; Approach 2 alone gives N_opt {iso['n_opt']:.3g}, D_opt {iso['d_opt']:.3g}"
                if "n_opt" in iso else "")
        why = result["approaches"]["parametric"].get("error")
        raise UserError(f"Approach 3 could not fit the runs ({why}){hint}: "
                        "the recommendation needs the parametric law: add runs, or pass law=epoch")
    fitted = ParametricLaw(law["E"], law["A"], law["B"], law["alpha"], law["beta"], name=law.get("candidate", "fit"),
                           convention=result["convention"],
                           source=f"Approach 3 fit to {result['n_runs']} runs ({result['source']})")
    samples = bootstrap_samples(result)
    return fitted, samples if samples.size else None


def runs_flops_per_token(table: RunsTable):
    """The count Approaches 1 and 2 use, as F(N) for the law's allocation: the runs' FLOPs per token C_i / D_i,
    as rho = F / N averaged per size and interpolated in log N (flat beyond the pilots' sizes). None when every
    run costs 6 N D (within 1e-6): then Chinchilla eq. 4's closed form is that count exactly."""
    rho = table.c / (table.tokens * table.n)
    if np.allclose(rho, TRAIN_FLOPS_PER_PARAM_TOKEN, rtol=1e-6, atol=0):
        return None
    log_n, where = np.unique(np.log(table.n), return_inverse=True)
    rho_at = np.bincount(where, weights=rho) / np.bincount(where)
    return lambda n: np.asarray(n, dtype=float) * np.interp(np.log(np.asarray(n, dtype=float)), log_n, rho_at)


def _allocation_rule(fpt) -> str:
    return ("C = 6 N D (Chinchilla eq. 4)" if fpt is None else
            "N_opt = argmin L(N, C / F(N)) under the FLOP count of Approaches 1 and 2 (module doc of fit_all)")


def _parametric(fits: TableFits, keep: np.ndarray, table: RunsTable, budget_flops: float, fpt,
                warnings: list) -> tuple:
    """(Approach 3's entry, its law dict or None): the Chinchilla form on the kept runs."""
    try:
        fit = fits.fit(chinchilla_form(), keep)
    except UserError as err:
        warnings.append(f"Approach 3 (parametric) failed: {err}")
        return {"error": str(err)}, None
    law = fit.law()
    point = {k: float(v[0]) for k, v in derived_quantities(
        np.array([[law.E, law.A, law.B, law.alpha, law.beta]]), budget_flops, fpt).items()}
    entry = {"a": point["a"], "b": point["b"], **{k: point[k] for k in HEADLINE_KEYS},
             "allocation_rule": _allocation_rule(fpt)}
    law_dict = {**fit.to_dict(), "convention": table.convention, "huber_delta": HUBER_DELTA,
                "objective_form": "sum of Huber(LSE(a - alpha ln N, b - beta ln D, e) - ln L)"}
    return entry, law_dict


def _isoflop(table: RunsTable, budget_flops: float, bootstrap: int, seed: int, warnings: list,
            sd_log: float | None = None) -> dict:
    try:
        iso = fit_isoflop(table, budget_flops, bootstrap=bootstrap, seed=seed, noise_sd_log=sd_log)
    except UserError as err:
        return {"error": str(err)}
    grouping = table.grouping_note()  # FLOPs that jitter within a budget (real logs) are grouped: say how
    if grouping:
        iso["grouping"] = grouping
        iso.setdefault("note", grouping)
    if (iso.get("bootstrap") or {}).get("warning"):
        warnings.append(iso["bootstrap"]["warning"])
    left_out = [p for p in iso.get("budgets", []) if not p["bracketed"]]
    if left_out:
        first = left_out[0]
        warnings.append(f"Approach 2 left out {len(left_out)} of {len(iso['budgets'])} budgets without a bracketed "
                        f"minimum (e.g. {first['budget_flops']:.3g} FLOPs: {first['reason']}; see "
                        "approaches.isoflop.budgets)")
    return iso


def _candidates(fits: TableFits, keep: np.ndarray, clean: RunsTable, budget_flops: float, fpt, selection: dict,
                fixed_E, pinned: str | None, bootstrap: int, seed: int, sd_log: float | None,
                warnings: list) -> tuple[dict | None, dict | None, list]:
    """Every candidate refitted on the kept runs (N_opt, loss, intervals); (chosen law, its bootstrap, rows).

    A pinned candidate (`law_fit.candidate`) that cannot be fitted to the kept runs is refused, never
    replaced by another law."""
    chosen = (selection.get("chosen") or {}).get("candidate", "chinchilla")
    rule = (selection.get("chosen") or {}).get("outliers")
    scores = {r["candidate"]: r for r in selection["rows"] if r["outliers"] == rule} if rule else {}
    rows, law, boot = [], None, None
    for form in candidate_forms(fixed_E):
        row = {"candidate": form.name, "n_free": form.n_free, "chosen": form.name == chosen,
               "backtest_error": (scores.get(form.name) or {}).get("score"),
               "top_budget_error": (scores.get(form.name) or {}).get("top_budget_error"),
               "expected_error_at_target": (scores.get(form.name) or {}).get("expected_error_at_target")}
        try:
            fit = fits.fit(form, keep)
        except UserError as err:
            rows.append({**row, "error": str(err)})
            if form.name == chosen and pinned is not None:
                raise UserError(f"law_fit.candidate={pinned}: the pinned law could not be fitted to the {len(clean)} "
                                f"runs ({err}): unset law_fit.candidate to let the backtest choose") from err
            if form.name == chosen:
                warnings.append(f"the chosen law {chosen} could not be refitted on all runs ({err})")
            continue
        fitted = fit.law()
        n_opt, d_opt = optimum_on_line(fitted, budget_flops, fpt)
        row.update(n_opt=float(n_opt), predicted_loss=float(fitted.loss(n_opt, d_opt)), law=fitted.to_dict())
        if bootstrap > 0:
            b = bootstrap_law(fit, clean.n, clean.tokens, clean.loss, budget_flops, bootstrap, seed, sd_log,
                              flops_per_token=fpt)
            row.update(intervals={k: b["intervals"].get(k) for k in ("n_opt", "predicted_loss")},
                       n_failed=b["n_failed"])
            if form.name == chosen:
                boot = b
                if b["n_failed"] > BOOTSTRAP_DROP_WARN_SHARE * bootstrap:
                    warnings.append(f"law {chosen} bootstrap: {b['n_failed']} of {bootstrap} resamples gave no valid "
                                    "fit (dropped and counted): the intervals understate the uncertainty")
        if form.name == chosen:
            law = {**fit.to_dict(), "convention": clean.convention, "huber_delta": HUBER_DELTA}
        rows.append(row)
    return law, boot, rows


def fit_all(table: RunsTable, budget_flops: float, bootstrap: int = 1000, outliers: str = "auto",
            seed: int = 0, convention: str = "total", fixed_E: float | None = None,
            candidate: str | None = None, flops_per_token=None) -> dict:
    """Fit all three approaches and the checks; see the module docstring for the result's layout.

    `outliers`: "auto" (the backtest chooses the rule on or off), "default" (the one-sided Hampel rule on) or
    "none"; `candidate` pins a law form, `fixed_E` adds the fixed-E candidate (pipeline/fit/candidates.py).
    """
    if not (isinstance(budget_flops, (int, float)) and math.isfinite(budget_flops) and budget_flops > 0):
        raise UserError(f"budget_flops={budget_flops!r} must be a positive number of FLOPs: set budget.flops")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0 or bootstrap == 1:
        raise UserError(f"fit.bootstrap={bootstrap!r} must be 0 (skip) or an integer >= 2")
    bootstrap = int(bootstrap)
    if convention not in table.params:
        raise UserError(f"convention '{convention}' is not in the runs table: use one of {', '.join(table.params)}")
    table = table.with_convention(convention)
    identified = require_identifiable(table, fixed_E)  # before any fit: can these runs tell the law at all?
    if outliers != "auto" and outliers not in OUTLIER_RULES:
        raise UserError(f"outliers='{outliers}' is not a rule: use auto, {', '.join(OUTLIER_RULES)}")
    fits = TableFits(table)            # every law fit below shares one grid search per form (refits.py)
    selection = select_law(table, budget_flops, fixed_E=fixed_E, candidate=candidate,
                           outliers=None if outliers == "auto" else outliers, fits=fits)
    rule = (selection.get("chosen") or {}).get("outliers") or ("default" if outliers == "auto" else outliers)

    def first_fit():
        return fits.fit(chinchilla_form()).law()

    keep, outlier_report = outlier_keep(table, rule, first_fit)
    clean = table if keep.all() else table.subset(keep, reason="outlier (see outliers.rule)")
    outlier_report["setting"] = outliers
    if rule == "none":   # say which runs the rule would have dropped, and which lie far below the law
        would = outlier_keep(table, "default", first_fit)[1]
        outlier_report.update(would_drop=would["dropped"], below_fit=would["below_fit"])
    warnings: list[str] = []
    failed_backtest = (selection.get("chosen") or {}).get("backtest_failed")
    if failed_backtest:
        warnings.append(f"the backtest of law {selection['chosen']['candidate']} failed ({failed_backtest}): its "
                        "extrapolation is unchecked, and no other law was chosen in its place by default")
    if table.excluded:
        warnings.append(f"{len(table.excluded)} runs excluded before fitting (see excluded)")
    copies = sum("duplicate_of" in e for e in table.excluded)   # RunsTable.without_duplicates
    if copies:
        warnings.append(f"{copies} rows are exact duplicates of other rows (same N, D, FLOPs and loss): each counted "
                        "once (keep_duplicates=true fits every copy)")
    if outlier_report["dropped"]:
        warnings.append(f"outlier rule dropped {len(outlier_report['dropped'])} runs (see outliers)")
    below = outlier_report.get("below_fit") or []
    if below:
        warnings.append(f"{len(below)} runs lie more than {OUTLIER_MAD_K:g} robust sd below the law (lower loss than "
                        "their size and tokens predict): kept; check their evaluation data for overlap with the "
                        "training data, or the law's form there (outliers.below_fit)")

    fpt = flops_per_token or runs_flops_per_token(clean)
    parametric, law = _parametric(fits, keep, clean, budget_flops, fpt, warnings)
    law3 = ParametricLaw(*(law[k] for k in ("E", "A", "B", "alpha", "beta"))) if law else None
    noise = noise_model(clean, law3)
    sd_log = noise["sd_log"] if noise else None
    if implausible := implausible_noise_warning(noise):
        warnings.append(implausible)
    chosen_law, chosen_boot, candidate_rows = _candidates(fits, keep, clean, budget_flops, fpt, selection, fixed_E,
                                                          candidate, bootstrap, seed, sd_log, warnings)
    fit3 = next((r for r in candidate_rows if r["candidate"] == "chinchilla" and "intervals" in r), None)
    if law is not None and fit3 is not None:   # Approach 3 = the chinchilla candidate, same bootstrap
        parametric["intervals"] = (chosen_boot["intervals"] if chosen_law and chosen_law["candidate"] == "chinchilla"
                                   and chosen_boot else fit3["intervals"])
    if chosen_law is not None:
        if chosen_law["candidate"] == "chinchilla" and law is not None:   # the same fit: keep Approach 3's details
            chosen_law = {**law, "candidate": "chinchilla", "source": chosen_law["source"]}
        law = chosen_law
        point = {k: float(v[0]) for k, v in derived_quantities(
            np.array([[law[k] for k in ("E", "A", "B", "alpha", "beta")]]), budget_flops, fpt).items()}
        headline_law = {**{k: point[k] for k in HEADLINE_KEYS}, "a": point["a"], "b": point["b"],
                        "intervals": (chosen_boot or {}).get("intervals", {})}
    else:
        headline_law = None
    boot = chosen_boot if chosen_law is not None else None
    isoflop = _isoflop(clean, budget_flops, bootstrap, seed, warnings, sd_log)
    if law3 is not None and isoflop.get("budgets"):   # Approach 2's own bias on this grid, under the fitted law
        warnings += grid_bias(clean, isoflop["budgets"], law3)[1]
    # Approach 1's noise bootstrap is not calibrated (docs/calibration.md): a point cross-check only.
    envelope = fit_envelope(clean, budget_flops, bootstrap=0, seed=seed)
    approaches = {"envelope": envelope, "isoflop": isoflop, "parametric": parametric}

    if headline_law is not None:
        headline, source = headline_law, f"law {law['candidate']}"
    elif "error" not in parametric:
        headline, source = parametric, "parametric"
    elif "error" not in isoflop:
        headline, source = {**isoflop, "predicted_loss": None}, "isoflop"
    else:
        raise UserError(f"no approach could fit the runs: parametric: {parametric['error']}; "
                        f"isoflop: {isoflop['error']}")
    extrapolation = budget_flops / float(np.max(clean.c))

    checks_backtest = chosen_backtest(selection)
    agreement = approach_agreement({k: v for k, v in approaches.items() if k != "envelope"})
    resolution = minimum_resolution(isoflop.get("budgets", []), sd_log)
    unresolved = [r for r in resolution if not r["resolved"]]
    if unresolved and sd_log is not None:
        warnings.append(f"{len(unresolved)} of {len(resolution)} IsoFLOP minima are not resolved beyond the noise "
                        f"(sd of log loss {sd_log:.3g}, {noise['source'] if noise else 'none'}): the lowest loss does "
                        "not beat its neighbours by 2 noise sd; train those sizes with more seeds (sweep.seeds)")
    zigzags = profile_zigzags(clean, noise)
    if zigzags and zigzags["flagged"]:
        w = zigzags["largest"]
        warnings.append(f"loss against N zigzags within a budget: {len(zigzags['flagged'])} interior sizes sit above (or "
                        f"dip below) both neighbours by more than {ZIGZAG_Z:g} noise sd (largest: a {w['kind']} of "
                        f"{w['gap_log']:.1%} at N {w['n']:.3g}, {w['budget_flops']:.2g} FLOPs, {w['z']:.1f} sd of "
                        f"{zigzags['sd_log']:.3g}); a law fitted through them measures the shape rule or the seed, not "
                        "the scale: train those sizes with more seeds (sweep.seeds)")
    known = {}
    if law is not None and "error" not in isoflop:
        known[convention] = {"parametric_a": parametric["a"], "parametric_n_opt": parametric["n_opt"],
                             "isoflop_a": isoflop["a"], "isoflop_n_opt": isoflop["n_opt"]}
    sensitivity = convention_sensitivity(clean, budget_flops, known)
    hparams = hparam_check(table.setup, sd_log)   # do the pilots' LRs distort the law? (pipeline/fit/lr_check.py)
    for check in (checks_backtest, agreement, hparams or {}):
        if check.get("warning"):
            warnings.append(check["warning"])

    result = {
        "budget_flops": float(budget_flops), "headline": source,
        **{k: headline.get(k) for k in HEADLINE_KEYS},
        "intervals": headline.get("intervals", {}),
        "law": law, "approaches": approaches,
        "excluded": list(clean.excluded), "n_runs": len(clean), "source": table.source,
        "convention": convention, "flop_method": table.flop_method, "allocation_rule": _allocation_rule(fpt),
        "outliers": outlier_report, "extrapolation_factor": extrapolation,
        "backtest": checks_backtest, "agreement": agreement, "sensitivity": sensitivity,
        "bootstrap": boot,              # with "samples": (n_used, 5) rows of SAMPLE_COLUMNS
        "selection": {**selection, "candidates": candidate_rows}, "noise": noise, "minima": resolution, "zigzags": zigzags,
        "identifiability": identified, "bootstrap_requested": bootstrap, "hparams": hparams, "warnings": warnings,
    }
    if identified.get("note"):
        warnings.append(identified["note"])
    forms = form_spread(result)
    if forms:   # the chosen form's interval alone would claim more than the forms agree on (checks.form_spread)
        result["intervals"] = {**result["intervals"], "n_opt_across_forms": forms["span"]}
    result["verdict"] = verdict(result)
    return jsonable(result)
