"""Choose the law by how well it predicts, not by how well it fits.

For each candidate form (pipeline/fit/candidates.py) and for the outlier rule on and off, refit
without the largest-compute runs and score how well the refit predicts them (Li et al. 2025,
"(Mis)fitting scaling laws", recommend judging a law by its extrapolation, not its in-sample fit):

* folds -- IsoFLOP budgets: leave the top budget out (fit on every smaller budget, predict it), and,
  rolling, the next budgets down while 2+ budgets remain to fit (up to ROLLING_FOLDS folds: fit on
  budgets < k, predict budget k; the rolling-origin evaluation of forecasting, Tashman 2000).
  Without 3+ budgets of 3+ runs each (a grid, runs from a file): the top HOLDOUT_SHARE of runs by
  compute, then the next share down, fitting on everything below.
* the outlier rule is applied to each fold's fitted runs only (the held-out runs are never seen);
  both arms are scored on the same held-out runs, so dropping runs cannot flatter its own score.
* score -- mean over folds of the mean |predicted / observed - 1| of the held-out final losses.

The choice: the incumbent -- the Chinchilla form with free E and the outlier rule on (the rule
predicted better on the public points we have, docs/calibration.md) -- unless another row predicts
better beyond the backtest's own noise. The unit of that test is the fold, not the run: the runs of
one fold share one refit, so their errors are not independent (pooling them as if they were made a
test on one refit look like one on 20 runs: a synthetic case switched to alpha = beta at pooled
z = -2.44 where the folds gave z = -0.94). A row replaces the incumbent only when it predicts better
in every fold, with MIN_FOLDS_TO_SWITCH+ folds, and the mean of its per-fold differences is more than
SIGNIFICANCE_Z standard errors (across folds) below zero (`fold_test`; the pooled z is reported
beside it). With fewer folds (3 budgets give one) the incumbent stays. A row whose backtest failed
(a fold's refit did not converge) has no score and never wins; when the incumbent's own backtest
failed it stays chosen, marked `backtest_failed`, and the fit stage says so instead of letting the
only scored form win by default. The backtest looks one budget ahead while
the target is 2-3 decades away: a constrained form (alpha = beta) that predicts one budget ahead as
well as the free form can still be biased at the target (a synthetic study from alpha 0.34, beta
0.30 picked alpha = beta on a 0.05-point lower error, inside the noise, and missed N_opt by 27%),
so a tie keeps the most general form, whose bootstrap interval shows its variance honestly. A user can pin a candidate
(`law_fit.candidate`) or the rule (`outliers=default|none`); the table still shows every score.

The expected error of the predicted loss at the target budget: each fold gives (decades of
extrapolation past the fitted runs' largest compute, error); a line through the origin in those
(error per decade, least squares) times the target's decades past the largest pilot. It is a
linear-in-log-compute reading of the backtest, stated as such.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.candidates import CANDIDATE_NAMES, Form, candidate_forms, chinchilla_form
from pipeline.fit.checks import BACKTEST_WARN_REL_ERROR, OUTLIER_MIN_RUNS, outlier_keep
from pipeline.fit.refits import TableFits
from pipeline.fit.table import RunsTable

ROLLING_FOLDS = 3
HOLDOUT_SHARE = 0.2
MIN_FIT_RUNS = OUTLIER_MIN_RUNS // 2 + 1    # a 5-parameter law needs more runs than parameters
RULES = ("default", "none")
INCUMBENT = ("chinchilla", "default")
SIGNIFICANCE_Z = 2.0
MIN_FOLDS_TO_SWITCH = 2     # one fold is one refit: no spread between refits to test a difference against


def backtest_folds(table: RunsTable) -> list[dict]:
    """[{label, fit (mask), held (mask)}], the top-compute fold first."""
    groups = table.budget_groups()
    budgets, per_budget = np.unique(groups, return_counts=True)
    folds = []
    if budgets.size >= 3 and per_budget.min() >= 3:
        for k in range(budgets.size - 1, max(1, budgets.size - 1 - ROLLING_FOLDS), -1):
            fit, held = groups < budgets[k], groups == budgets[k]
            if fit.sum() >= MIN_FIT_RUNS:
                folds.append({"label": f"budget {budgets[k]:.3g}", "fit": fit, "held": held})
        return folds
    order = np.argsort(table.c, kind="stable")
    share = max(1, int(round(HOLDOUT_SHARE * len(table))))
    for k in range(ROLLING_FOLDS):
        hi = len(table) - k * share
        lo = hi - share
        if lo < MIN_FIT_RUNS:
            break
        held = np.zeros(len(table), dtype=bool)
        held[order[lo:hi]] = True
        fit = np.zeros(len(table), dtype=bool)
        fit[order[:lo]] = True
        folds.append({"label": f"runs {lo + 1}-{hi} of {len(table)} by compute", "fit": fit, "held": held})
    return folds


def fitted_masks(table: RunsTable, folds: list[dict], rule: str, fits: TableFits) -> list[np.ndarray]:
    """Per fold, the runs a candidate is fitted on under `rule`: the fold's runs, less the outliers the rule
    finds among them (its first fit on the fold's runs only: the held-out runs are never seen)."""
    if rule == "none":
        return [f["fit"] for f in folds]
    chinchilla = chinchilla_form()
    first = fits.fits(chinchilla, [f["fit"] for f in folds])          # the rule's first fits, one batch
    masks = []
    for fold, fit in zip(folds, first, strict=True):
        def first_law(fit=fit):
            if isinstance(fit, UserError):
                raise fit
            return fit.law()
        keep, _ = outlier_keep(table.subset(fold["fit"]), rule, first_fit=first_law)
        mask = fold["fit"].copy()
        mask[fold["fit"]] = keep
        masks.append(mask)
    return masks


def _held_errors(table: RunsTable, fold: dict, mask: np.ndarray, fit) -> dict:
    if isinstance(fit, UserError):
        return {"error": str(fit)}
    held = fold["held"]
    rel = np.abs(fit.law().loss(table.n[held], table.tokens[held]) / table.loss[held] - 1)
    return {"mean_rel_error": float(rel.mean()), "max_rel_error": float(rel.max()),
            "decades": float(np.log10(np.max(table.c[held]) / np.max(table.c[mask]))),
            "n_fitted": int(mask.sum()), "rel_errors": rel.tolist()}


def _expected_error(per_fold: list[dict], target_decades: float) -> float | None:
    pairs = [(f["decades"], f["mean_rel_error"]) for f in per_fold if "mean_rel_error" in f and f["decades"] > 0]
    if not pairs:
        return None
    x, y = np.array(pairs).T
    return float((x @ y) / (x @ x) * max(target_decades, 0.0))


def fold_test(row: dict, incumbent: dict) -> dict:
    """Does `row` predict better than `incumbent` beyond the backtest's noise? (module doc)

    fold_z: mean over folds of the difference of the folds' mean errors over its standard error across folds
    (each fold is one refit: the independent unit); pooled_z: the same on every held-out run pooled, for
    comparison only (runs of one fold share one refit, so it overstates the evidence).
    """
    diff = np.array(row["_fold_errors"]) - np.array(incumbent["_fold_errors"])
    pooled = np.asarray(row["_errors"]) - np.asarray(incumbent["_errors"])
    out = {"n_folds": int(diff.size), "better_in_every_fold": bool(diff.size and np.all(diff < 0)),
           "fold_z": None, "pooled_z": None}
    if diff.size >= 2:
        sd = diff.std(ddof=1)
        out["fold_z"] = float(diff.mean() / (sd / np.sqrt(diff.size))) if sd > 0 else (
            -np.inf if np.all(diff < 0) else 0.0)
    if pooled.size >= 2 and pooled.std(ddof=1) > 0:
        out["pooled_z"] = float(pooled.mean() / (pooled.std(ddof=1) / np.sqrt(pooled.size)))
    out["beats"] = bool(diff.size >= MIN_FOLDS_TO_SWITCH and out["better_in_every_fold"]
                        and out["fold_z"] is not None and out["fold_z"] < -SIGNIFICANCE_Z)
    return out


def _pinned(row: dict, candidate: str | None, rule: str | None) -> bool:
    return ((candidate is None or row["candidate"] == candidate or row["candidate"].startswith(f"{candidate}="))
            and (rule is None or row["outliers"] == rule))


def choose(rows: list[dict], pinned_candidate: str | None = None, pinned_rule: str | None = None) -> dict | None:
    """The chosen row (module doc): the incumbent, unless a scored row beats it on the fold-level test.

    A row that failed its backtest (no score) never wins; when the incumbent itself failed, it stays chosen
    and is marked `backtest_failed` (no other form wins by default, fit_all warns)."""
    allowed = [r for r in rows if _pinned(r, pinned_candidate, pinned_rule)]
    want = (pinned_candidate or INCUMBENT[0], pinned_rule or INCUMBENT[1])
    incumbent = next((r for r in allowed if _pinned(r, *want)), None)
    if incumbent is None:
        return None
    if incumbent["score"] is None:
        return incumbent
    better = []
    for row in allowed:
        if row is incumbent or row["score"] is None:
            continue
        row["versus_incumbent"] = fold_test(row, incumbent)
        if row["versus_incumbent"]["beats"]:
            better.append(row)
    return min(better, key=lambda r: r["score"]) if better else incumbent


def select_law(table: RunsTable, target_flops: float, fixed_E: float | None = None,
               candidate: str | None = None, outliers: str | None = None, fits: TableFits | None = None) -> dict:
    """Backtest every candidate under the outlier rule on and off; choose one (see the module doc).

    `candidate` pins a form (one of CANDIDATE_NAMES), `outliers` pins the rule ("default" or "none");
    None lets the backtest choose. `fits` shares the table's fits with the caller (pipeline/fit/refits.py).
    Returns {"folds", "rows", "chosen": {candidate, outliers[, backtest_failed]}, ...}.
    """
    if candidate is not None and candidate not in CANDIDATE_NAMES:
        raise UserError(f"law_fit.candidate={candidate!r}: use one of {', '.join(CANDIDATE_NAMES)} or leave it unset")
    if candidate == "fixed_E" and fixed_E is None:
        raise UserError("law_fit.candidate=fixed_E needs law_fit.fixed_E=<E in nats>")
    forms: list[Form] = candidate_forms(fixed_E)
    fits = fits or TableFits(table)
    folds = backtest_folds(table)
    rules = RULES if outliers is None else (outliers,)
    target_decades = float(np.log10(target_flops / np.max(table.c)))
    masks = {rule: fitted_masks(table, folds, rule, fits) for rule in rules}
    rows = []
    for form in forms:
        fitted = fits.fits(form, [m for rule in rules for m in masks[rule]])    # every fold and rule, one batch
        for r, rule in enumerate(rules):
            errs = [_held_errors(table, fold, mask, fit) for fold, mask, fit in
                    zip(folds, masks[rule], fitted[r * len(folds):(r + 1) * len(folds)], strict=True)]
            ok = [e for e in errs if "mean_rel_error" in e]
            complete = bool(ok) and len(ok) == len(errs)
            rows.append({
                "candidate": form.name, "outliers": rule, "n_free": form.n_free, "source": form.source,
                "score": float(np.mean([e["mean_rel_error"] for e in ok])) if complete else None,
                "_fold_errors": [e["mean_rel_error"] for e in ok] if complete else [],
                "_errors": np.concatenate([e["rel_errors"] for e in ok]) if complete else np.empty(0),
                "top_budget_error": errs[0].get("mean_rel_error") if errs else None,
                "folds": [{"label": f["label"], **{k: v for k, v in e.items() if k != "rel_errors"}}
                          for f, e in zip(folds, errs, strict=True)],
                "expected_error_at_target": _expected_error(ok, target_decades) if ok else None,
            })
    chosen = choose(rows, candidate, outliers)
    for row in rows:
        del row["_errors"], row["_fold_errors"]
    out = {"folds": [{"label": f["label"], "n_fit": int(f["fit"].sum()), "n_held": int(f["held"].sum())}
                     for f in folds],
           "rows": rows, "target_decades": target_decades,
           "rule": (f"{INCUMBENT[0]} with the outlier rule {INCUMBENT[1]} unless a row predicts better in every one of "
                    f"{MIN_FOLDS_TO_SWITCH}+ folds with fold-level z < -{SIGNIFICANCE_Z:g}; a row whose backtest "
                    "failed never wins"),
           "score": "mean over folds of mean |predicted/observed - 1| of the held-out runs",
           "pinned": {"candidate": candidate, "outliers": outliers}}
    if not folds:
        out["note"] = f"too few runs to hold any out ({len(table)}): no backtest, the Chinchilla form is used"
    if chosen is not None:
        out["chosen"] = {"candidate": chosen["candidate"], "outliers": chosen["outliers"]}
        if chosen["score"] is None and folds:
            why = next((f["error"] for f in chosen["folds"] if "error" in f), "no fold scored")
            out["chosen"]["backtest_failed"] = why
    return out


def chosen_backtest(selection: dict) -> dict:
    """The one backtest (pipeline/fit/selection.py) of the chosen candidate: held-out errors, and the expected
    error of the loss at the target; `error` when there is none or it failed."""
    chosen = selection.get("chosen")
    if not chosen or not selection["folds"]:
        return {"error": selection.get("note") or "no candidate law could be backtested"}
    row = next(r for r in selection["rows"] if r["candidate"] == chosen["candidate"]
               and r["outliers"] == chosen["outliers"])
    top = row["folds"][0] if row["folds"] else {}
    out = {"candidate": chosen["candidate"], "outliers": chosen["outliers"], "held_out": top.get("label"),
           "n_held_out": selection["folds"][0]["n_held"], "n_fitted": top.get("n_fitted"),
           "mean_rel_error": row["top_budget_error"], "max_rel_error": top.get("max_rel_error"),
           "rolling_mean_rel_error": row["score"],
           "folds": row["folds"], "expected_error_at_target": row["expected_error_at_target"],
           "target_decades": selection["target_decades"], "warn_threshold_rel_error": BACKTEST_WARN_REL_ERROR}
    if chosen.get("backtest_failed"):
        out["error"] = f"backtest failed: {chosen['backtest_failed']}"
        out["warning"] = (f"backtest of law {chosen['candidate']} failed ({chosen['backtest_failed']}): the prediction "
                          "at the target is unchecked")
        return out
    expected = row["expected_error_at_target"]
    if row["top_budget_error"] is not None and (row["top_budget_error"] > BACKTEST_WARN_REL_ERROR or
                                                (expected is not None and expected > BACKTEST_WARN_REL_ERROR)):
        out["warning"] = (f"backtest of law {chosen['candidate']}: refitted without the {top.get('label')}, it misses "
                          f"them by {row['top_budget_error']:.1%}; extrapolated {selection['target_decades']:.1f} "
                          "decades to the target, expect the predicted loss to be off by about "
                          + (f"{expected:.1%}" if expected is not None else "as much or more"))
    return out
