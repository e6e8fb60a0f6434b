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
better beyond the backtest's own noise: its mean error is lower by more than SIGNIFICANCE_Z paired
standard errors (the same held-out runs score every row). The backtest looks one budget ahead while
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
from pipeline.fit.candidates import CANDIDATE_NAMES, Form, candidate_forms, fit_candidate
from pipeline.fit.checks import OUTLIER_MIN_RUNS, apply_outlier_rule
from pipeline.fit.table import RunsTable

ROLLING_FOLDS = 3
HOLDOUT_SHARE = 0.2
MIN_FIT_RUNS = OUTLIER_MIN_RUNS // 2 + 1    # a 5-parameter law needs more runs than parameters
RULES = ("default", "none")
INCUMBENT = ("chinchilla", "default")
SIGNIFICANCE_Z = 2.0


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


def _fold_errors(table: RunsTable, fold: dict, forms: list[Form], rule: str) -> dict[str, dict]:
    train = table.subset(fold["fit"])
    if rule != "none":
        train, _ = apply_outlier_rule(train, rule)
    held_n, held_d, held_loss = table.n[fold["held"]], table.tokens[fold["held"]], table.loss[fold["held"]]
    decades = float(np.log10(np.max(table.c[fold["held"]]) / np.max(train.c)))
    out = {}
    for form in forms:
        try:
            law = fit_candidate(form, train.n, train.tokens, train.loss, table.convention).law()
        except UserError as err:
            out[form.name] = {"error": str(err)}
            continue
        rel = np.abs(law.loss(held_n, held_d) / held_loss - 1)
        out[form.name] = {"mean_rel_error": float(rel.mean()), "max_rel_error": float(rel.max()),
                          "decades": decades, "n_fitted": len(train), "rel_errors": rel.tolist()}
    return out


def _expected_error(per_fold: list[dict], target_decades: float) -> float | None:
    pairs = [(f["decades"], f["mean_rel_error"]) for f in per_fold if "mean_rel_error" in f and f["decades"] > 0]
    if not pairs:
        return None
    x, y = np.array(pairs).T
    return float((x @ y) / (x @ x) * max(target_decades, 0.0))


def choose(rows: list[dict], pinned_candidate: str | None = None, pinned_rule: str | None = None) -> dict | None:
    """The chosen row (see the module doc): the incumbent unless a row beats it beyond the noise."""
    usable = [r for r in rows if r.get("score") is not None
              and (pinned_candidate is None or r["candidate"] == pinned_candidate
                   or r["candidate"].startswith(f"{pinned_candidate}="))
              and (pinned_rule is None or r["outliers"] == pinned_rule)]
    if not usable:
        return None
    incumbent = next((r for r in usable if (r["candidate"], r["outliers"]) == INCUMBENT), None)
    if incumbent is None:
        incumbent = next((r for r in usable if r["candidate"] == INCUMBENT[0]), None) or min(usable, key=lambda r: r["score"])
    better = []
    for row in usable:
        diff = np.asarray(row["_errors"]) - np.asarray(incumbent["_errors"])
        if diff.size > 1 and diff.mean() < -SIGNIFICANCE_Z * diff.std(ddof=1) / np.sqrt(diff.size):
            better.append(row)
    return min(better, key=lambda r: r["score"]) if better else incumbent


def select_law(table: RunsTable, target_flops: float, fixed_E: float | None = None,
               candidate: str | None = None, outliers: str | None = None) -> dict:
    """Backtest every candidate under the outlier rule on and off; choose one (see the module doc).

    `candidate` pins a form (one of CANDIDATE_NAMES), `outliers` pins the rule ("default" or "none");
    None lets the backtest choose. Returns {"folds", "rows", "chosen": {candidate, outliers}, ...}.
    """
    if candidate is not None and candidate not in CANDIDATE_NAMES:
        raise UserError(f"law_fit.candidate={candidate!r}: use one of {', '.join(CANDIDATE_NAMES)} or leave it unset")
    if candidate == "fixed_E" and fixed_E is None:
        raise UserError("law_fit.candidate=fixed_E needs law_fit.fixed_E=<E in nats>")
    forms = candidate_forms(fixed_E)
    folds = backtest_folds(table)
    rules = RULES if outliers is None else (outliers,)
    target_decades = float(np.log10(target_flops / np.max(table.c)))
    per_rule = {rule: [_fold_errors(table, fold, forms, rule) for fold in folds] for rule in rules}
    rows = []
    for rule in rules:
        for form in forms:
            errs = [fold_out[form.name] for fold_out in per_rule[rule]]
            ok = [e for e in errs if "mean_rel_error" in e]
            pooled = np.concatenate([e["rel_errors"] for e in ok]) if ok else np.empty(0)
            rows.append({
                "candidate": form.name, "outliers": rule, "n_free": form.n_free, "source": form.source,
                "score": float(np.mean([e["mean_rel_error"] for e in ok])) if ok and len(ok) == len(errs) else None,
                "score_se": float(pooled.std(ddof=1) / np.sqrt(pooled.size)) if pooled.size > 1 else 0.0,
                "_errors": pooled if len(ok) == len(errs) else np.empty(0),
                "top_budget_error": errs[0].get("mean_rel_error") if errs else None,
                "folds": [{"label": f["label"], **{k: v for k, v in e.items() if k != "rel_errors"}}
                          for f, e in zip(folds, errs, strict=True)],
                "expected_error_at_target": _expected_error(ok, target_decades) if ok else None,
            })
    chosen = choose(rows, candidate, outliers)
    for row in rows:
        del row["_errors"]
    out = {"folds": [{"label": f["label"], "n_fit": int(f["fit"].sum()), "n_held": int(f["held"].sum())}
                     for f in folds],
           "rows": rows, "target_decades": target_decades, "rule": f"{INCUMBENT[0]} with the outlier rule {INCUMBENT[1]} unless a row beats it by > {SIGNIFICANCE_Z:g} paired SE",
           "score": "mean over folds of mean |predicted/observed - 1| of the held-out runs",
           "pinned": {"candidate": candidate, "outliers": outliers}}
    if not folds:
        out["note"] = f"too few runs to hold any out ({len(table)}): no backtest, the Chinchilla form is used"
    if chosen is not None:
        out["chosen"] = {"candidate": chosen["candidate"], "outliers": chosen["outliers"]}
    return out
