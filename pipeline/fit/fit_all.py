"""Everything the fit stage computes, in one call: `fit_all(table, budget_flops, ...)`.

Order: outlier rule -> Approach 3 (parametric, Chinchilla sec. 3.3) with its bootstrap ->
Approach 2 (IsoFLOP, sec. 3.2) -> Approach 1 (envelope, sec. 3.1) -> backtest, agreement of the
approaches, sensitivity to the parameter convention. The headline (N_opt, D_opt, loss) comes from
Approach 3, whose closed-form allocation uses C = 6 N D (Chinchilla eq. 4); when Approach 3 cannot
run it falls back to Approach 2 and says so. `bootstrap` resamples are drawn for every approach
(runs for 3 and 1, runs within budgets for 2); all intervals are percentile 5-95%. The result is a
JSON-able dict; the Approach-3 samples of (E, A, B, alpha, beta) travel inside it as lists
(`bootstrap_samples(result)` gives the array, `law_from_fit(result)` the law and the array).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.checks import apply_outlier_rule, approach_agreement, backtest, convention_sensitivity
from pipeline.fit.envelope import fit_envelope
from pipeline.fit.isoflop import fit_isoflop
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.parametric import HUBER_DELTA, bootstrap_parametric, derived_quantities, fit_parametric
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
    fitted = ParametricLaw(law["E"], law["A"], law["B"], law["alpha"], law["beta"], name="fit",
                           convention=result["convention"],
                           source=f"Approach 3 fit to {result['n_runs']} runs ({result['source']})")
    samples = bootstrap_samples(result)
    return fitted, samples if samples.size else None


def _parametric(table: RunsTable, budget_flops: float, bootstrap: int, seed: int, warnings: list) -> tuple:
    """(approach entry, law dict, bootstrap dict or None)."""
    try:
        fit = fit_parametric(table.n, table.tokens, table.loss)
    except UserError as err:
        warnings.append(f"Approach 3 (parametric) failed: {err}")
        return {"error": str(err)}, None, None
    params = np.array([[fit.E, fit.A, fit.B, fit.alpha, fit.beta]])
    point = {k: float(v[0]) for k, v in derived_quantities(params, budget_flops).items()}
    entry = {"a": point["a"], "b": point["b"], **{k: point[k] for k in HEADLINE_KEYS},
             "allocation_rule": "C = 6 N D (Chinchilla eq. 4)"}
    law = {**fit.to_dict(), "convention": table.convention, "huber_delta": HUBER_DELTA,
           "objective_form": "sum of Huber(LSE(a - alpha ln N, b - beta ln D, e) - ln L)"}
    boot = None
    if bootstrap > 0:
        boot = bootstrap_parametric(table.n, table.tokens, table.loss, fit, budget_flops, bootstrap, seed)
        entry["intervals"] = boot["intervals"]
        entry["standard_errors"] = boot["standard_errors"]
        if boot["n_dropped"] > BOOTSTRAP_DROP_WARN_SHARE * bootstrap:
            warnings.append(f"Approach 3 bootstrap: {boot['n_dropped']} of {bootstrap} resamples gave no valid "
                            "fit: the intervals understate the uncertainty")
    return entry, law, boot


def _isoflop(table: RunsTable, budget_flops: float, bootstrap: int, seed: int, warnings: list) -> dict:
    try:
        iso = fit_isoflop(table, budget_flops, bootstrap=bootstrap, seed=seed)
    except UserError as err:
        return {"error": str(err)}
    grouping = table.grouping_note()  # FLOPs that jitter within a budget (real logs) are grouped: say how
    if grouping:
        iso["grouping"] = grouping
        iso.setdefault("note", grouping)
    left_out = [p for p in iso.get("budgets", []) if not p["bracketed"]]
    if left_out:
        first = left_out[0]
        warnings.append(f"Approach 2 left out {len(left_out)} of {len(iso['budgets'])} budgets without a bracketed "
                        f"minimum (e.g. {first['budget_flops']:.3g} FLOPs: {first['reason']}; see "
                        "approaches.isoflop.budgets)")
    return iso


def fit_all(table: RunsTable, budget_flops: float, bootstrap: int = 1000, outliers: str = "default",
            seed: int = 0, convention: str = "total") -> dict:
    """Fit all three approaches and the checks; see the module docstring for the result's layout."""
    if not (isinstance(budget_flops, (int, float)) and math.isfinite(budget_flops) and budget_flops > 0):
        raise UserError(f"budget_flops={budget_flops!r} must be a positive number of FLOPs: set budget.flops")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0 or bootstrap == 1:
        raise UserError(f"fit.bootstrap={bootstrap!r} must be 0 (skip) or an integer >= 2")
    bootstrap = int(bootstrap)
    if convention not in table.params:
        raise UserError(f"convention '{convention}' is not in the runs table: use one of {', '.join(table.params)}")
    table = table.with_convention(convention)
    clean, outlier_report = apply_outlier_rule(table, outliers)
    warnings: list[str] = []
    if table.excluded:
        warnings.append(f"{len(table.excluded)} runs excluded before fitting (see excluded)")
    if outlier_report["dropped"]:
        warnings.append(f"outlier rule dropped {len(outlier_report['dropped'])} runs (see outliers)")

    parametric, law, boot = _parametric(clean, budget_flops, bootstrap, seed, warnings)
    isoflop = _isoflop(clean, budget_flops, bootstrap, seed, warnings)
    envelope = fit_envelope(clean, budget_flops, bootstrap=bootstrap, seed=seed)
    approaches = {"envelope": envelope, "isoflop": isoflop, "parametric": parametric}

    if "error" not in parametric:
        headline, source = parametric, "parametric"
    elif "error" not in isoflop:
        headline, source = {**isoflop, "predicted_loss": None}, "isoflop"
    else:
        raise UserError(f"no approach could fit the runs: parametric: {parametric['error']}; "
                        f"isoflop: {isoflop['error']}")
    extrapolation = budget_flops / float(np.max(clean.c))

    checks_backtest = backtest(clean)
    agreement = approach_agreement(approaches)
    known = {}
    if law is not None and "error" not in isoflop:
        known[convention] = {"parametric_a": parametric["a"], "parametric_n_opt": parametric["n_opt"],
                             "isoflop_a": isoflop["a"], "isoflop_n_opt": isoflop["n_opt"]}
    sensitivity = convention_sensitivity(clean, budget_flops, known)
    for check in (checks_backtest, agreement):
        if check.get("warning"):
            warnings.append(check["warning"])

    result = {
        "budget_flops": float(budget_flops), "headline": source,
        **{k: headline.get(k) for k in HEADLINE_KEYS},
        "intervals": headline.get("intervals", {}),
        "law": law, "approaches": approaches,
        "excluded": list(clean.excluded), "n_runs": len(clean), "source": table.source,
        "convention": convention, "flop_method": table.flop_method,
        "outliers": outlier_report, "extrapolation_factor": extrapolation,
        "backtest": checks_backtest, "agreement": agreement, "sensitivity": sensitivity,
        "bootstrap": boot,              # with "samples": (n_used, 5) rows of SAMPLE_COLUMNS
        "warnings": warnings,
    }
    return jsonable(result)
