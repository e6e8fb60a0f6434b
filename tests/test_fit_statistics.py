"""The fit's statistics (issue 25) and its refusals to answer wrongly by default (issue 26, the fit's part).

Fold-level selection, a failed backtest never winning, a pinned law never replaced, failed bootstrap draws
dropped and counted, the loss interval at the point optimum, and the batched refits matching grid fits.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_fit_synthetic import TRUE_LAW, isoflop_design, table_from_design

from pipeline.errors import UserError
from pipeline.fit import refits
from pipeline.fit.bootstrap import bootstrap_law
from pipeline.fit.candidates import candidate_forms, fit_candidate, overtrain_form
from pipeline.fit.fit_all import fit_all
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.parametric import derived_quantities
from pipeline.fit.refits import TableFits, law_rows
from pipeline.fit.selection import backtest_folds, choose, fold_test

TARGET = 1e21


@pytest.fixture(scope="module")
def table():
    return table_from_design(isoflop_design(noise=0.005, seed=0))


def score_row(candidate: str, fold_errors: list[np.ndarray], rule: str = "default") -> dict:
    """A selection row as select_law builds it, from each fold's held-out relative errors."""
    return {"candidate": candidate, "outliers": rule, "score": float(np.mean([e.mean() for e in fold_errors])),
            "_fold_errors": [float(e.mean()) for e in fold_errors], "_errors": np.concatenate(fold_errors)}


def test_fold_level_test_declines_a_switch_the_pooled_test_would_make():
    rng = np.random.default_rng(0)
    base = [0.010 + 0.001 * rng.standard_normal(12), 0.012 + 0.001 * rng.standard_normal(12)]
    # alpha = beta predicts fold 1 clearly better and fold 2 barely: 24 runs, but only 2 refits
    other = [base[0] - 0.004 + 0.0003 * rng.standard_normal(12), base[1] - 0.0003 + 0.0003 * rng.standard_normal(12)]
    incumbent, challenger = score_row("chinchilla", base), score_row("overtrain", other)
    test = fold_test(challenger, incumbent)
    assert test["pooled_z"] < -2.0                      # runs pooled as if independent: "significant"
    assert -2.0 < test["fold_z"] < 0 and test["better_in_every_fold"] and not test["beats"]
    assert choose([incumbent, challenger])["candidate"] == "chinchilla"


def test_fold_level_test_switches_when_every_fold_agrees_beyond_the_noise():
    base = [np.full(10, e) for e in (0.010, 0.012, 0.011)]
    other = [b - d for b, d in zip(base, (0.0040, 0.0041, 0.0039), strict=True)]
    incumbent, challenger = score_row("chinchilla", base), score_row("overtrain", other)
    assert fold_test(challenger, incumbent)["fold_z"] < -2.0
    assert choose([incumbent, challenger])["candidate"] == "overtrain"


def test_one_fold_is_one_refit_and_never_switches():
    incumbent = score_row("chinchilla", [np.full(20, 0.02)])
    challenger = score_row("overtrain", [np.full(20, 0.005)])        # far better, but on one refit
    assert fold_test(challenger, incumbent)["fold_z"] is None
    assert choose([incumbent, challenger])["candidate"] == "chinchilla"


def test_a_row_whose_backtest_failed_never_wins_by_default():
    failed = {"candidate": "chinchilla", "outliers": "default", "score": None, "_fold_errors": [], "_errors": []}
    scored = score_row("overtrain", [np.full(5, 0.01), np.full(5, 0.01)])
    assert choose([failed, scored]) is failed


def test_fit_says_when_the_chosen_laws_backtest_failed(table, monkeypatch):
    """The Chinchilla form's refits on the folds fail (as a 1e308 row made them 'ABNORMAL'): the alpha = beta
    form, the only one scored, must not win by default, and the result must say the backtest failed."""
    finish = refits.finish

    def fails_on_folds(form, objective, theta, fun, origins, n, d, *args, **kwargs):
        if form.name == "chinchilla" and n.size < len(table):
            raise refits.UserError("candidate chinchilla did not converge (ABNORMAL)")
        return finish(form, objective, theta, fun, origins, n, d, *args, **kwargs)

    monkeypatch.setattr(refits, "finish", fails_on_folds)
    result = fit_all(table, TARGET, bootstrap=0, outliers="none")
    assert result["selection"]["chosen"]["candidate"] == "chinchilla" and result["headline"] == "law chinchilla"
    assert "backtest failed" in result["backtest"]["error"]
    assert any("backtest of law chinchilla failed" in w and "no other law" in w for w in result["warnings"])


def test_a_gross_row_leaves_the_truth_inside_the_interval(table):
    loss = table.loss.copy()
    loss[3] = 1e308                                                   # one absurd loss: the rule drops it
    result = fit_all(replace(table, loss=loss), TARGET, bootstrap=100)
    lo, hi = result["intervals"]["n_opt"]
    assert lo <= TRUE_LAW.optimal_allocation(TARGET)[0] <= hi
    assert "error" not in result["backtest"] and result["outliers"]["dropped"]


def test_a_pinned_law_that_cannot_be_fitted_is_refused_not_replaced(table, monkeypatch):
    # fixed_E above every loss never reaches a fit: refused with what to change (pipeline/fit/identifiability.py)
    with pytest.raises(UserError, match=r"law_fit.fixed_E=1e\+308 is not below the lowest pilot loss .* unset it"):
        fit_all(table, TARGET, bootstrap=0, candidate="fixed_E", fixed_E=1e308)
    # a valid pin whose refit on the kept runs fails anyway (injected here) is refused too, never replaced
    real = TableFits.fit

    def failing(self, form, mask=None):
        if form.name.startswith("fixed_E"):   # the form is named with its E, e.g. fixed_E=1.75
            raise UserError("law fit did not converge (ABNORMAL)")
        return real(self, form, mask)

    monkeypatch.setattr(TableFits, "fit", failing)
    with pytest.raises(UserError, match=r"law_fit.candidate=fixed_E: the pinned law could not be fitted .* unset"):
        fit_all(table, TARGET, bootstrap=0, candidate="fixed_E", fixed_E=0.5 * float(table.loss.min()))


def test_a_pinned_law_that_fits_is_the_headline(table):
    result = fit_all(table, TARGET, bootstrap=0, candidate="overtrain")
    assert result["headline"] == "law overtrain" and result["law"]["alpha"] == result["law"]["beta"]


@pytest.mark.parametrize("layout", ["every run at one N", "2 x 2 grid"])
def test_failed_bootstrap_draws_are_dropped_and_counted_never_fatal(table, layout):
    if layout == "every run at one N":
        odd = replace(table, params={k: np.full(len(table), v[0]) for k, v in table.params.items()})
    else:
        n, d = np.repeat([2e7, 8e7], 2), np.tile([4e8, 3.2e9], 2)
        odd = replace(table.subset(np.arange(len(table)) < 4), params={"total": n}, tokens=d,
                      loss=TRUE_LAW.loss(n, d), flops={"exact": 6 * n * d}, budget_flops=np.full(4, np.nan))
    try:
        result = fit_all(odd, TARGET, bootstrap=50)
    except UserError as err:                 # a one-line refusal is an answer too; a crash in a draw is not
        assert "A=0.0" not in str(err) and "\n" not in str(err)
        return
    boot = result["bootstrap"]
    if boot:
        assert boot["n_used"] + boot["n_dropped"] == 50 and len(boot["samples"]) == boot["n_used"]


def test_law_rows_refuses_A_or_B_at_zero_or_infinity_and_keeps_E_at_zero():
    theta = np.array([[np.log(400), np.log(1200), np.log(1.7), 0.3, 0.3],     # a law
                      [-800.0, np.log(1200), np.log(1.7), 0.3, 0.3],          # A = exp(-800) = 0.0
                      [np.log(400), 800.0, np.log(1.7), 0.3, 0.3],            # B = inf
                      [np.log(400), np.log(1200), np.log(1.7), -0.1, 0.3],    # alpha <= 0
                      [np.log(400), np.log(1200), -800.0, 0.3, 0.3]])         # E = 0: no floor, still a law
    params, ok = law_rows(theta)
    assert ok.tolist() == [True, False, False, False, True] and params[0] == pytest.approx([1.7, 400, 1200, 0.3, 0.3])
    assert params[4][0] == 0.0


def test_loss_interval_is_at_the_point_optimum_not_each_draws_own(table):
    fit = fit_candidate(candidate_forms()[0], table.n, table.tokens, table.loss)
    boot = bootstrap_law(fit, table.n, table.tokens, table.loss, TARGET, 200, seed=0, sd_log=0.005)
    n_opt, d_opt = fit.law().optimal_allocation(TARGET)
    at_point = [ParametricLaw(*row).loss(n_opt, d_opt) for row in boot["samples"]]
    assert boot["intervals"]["predicted_loss"] == pytest.approx(np.percentile(at_point, [5, 95]))
    lo, hi = boot["intervals"]["predicted_loss"]
    assert lo < fit.law().loss(n_opt, d_opt) < hi and boot["n_used"] + boot["n_dropped"] == 200


def test_batched_subset_refits_match_grid_fits_on_the_subset(table):
    """A backtest fold refitted from the whole table's basins reaches the objective of a fresh grid fit."""
    fits = TableFits(table)
    for form in (candidate_forms()[0], overtrain_form()):
        for fold in backtest_folds(table):
            warm = fits.fit(form, fold["fit"])
            grid = fit_candidate(form, table.n[fold["fit"]], table.tokens[fold["fit"]], table.loss[fold["fit"]])
            assert warm.objective <= grid.objective * (1 + 1e-9) + 1e-15
            np.testing.assert_allclose(warm.law().optimal_allocation(TARGET), grid.law().optimal_allocation(TARGET),
                                       rtol=1e-4)


def test_a_draw_whose_optimum_is_at_zero_or_infinity_is_no_exception():
    """G = (alpha A / (beta B))^(1/(alpha+beta)) can underflow for a wild draw: N_opt 0, D_opt inf. That draw is
    dropped by the bootstrap (counted), and computing it must not raise (it ended a 30-study calibration run)."""
    with np.errstate(all="ignore"):
        q = derived_quantities(np.array([[1.7, 1e-300, 1e300, 0.01, 0.01], [1.7, 400, 1200, 0.3, 0.3]]), TARGET)
    assert q["n_opt"][0] == 0.0 and np.isinf(q["d_opt"][0]) and np.isfinite(q["n_opt"][1])


def test_a_tight_answer_whose_backtest_failed_is_not_a_basis_for_sizing_the_run():
    """Issue 26: the verdict says 'size the run' only when the answer is checked, not merely narrow."""
    from pipeline.fit.checks import verdict

    tight = {"intervals": {"n_opt": [0.98e9, 1.02e9]}, "agreement": {"max_over_min": 1.01}, "minima": []}
    assert verdict(tight).endswith("size the run from them")
    failed = {**tight, "selection": {"chosen": {"candidate": "chinchilla", "backtest_failed": "did not converge"}}}
    text = verdict(failed)
    assert "backtest failed" in text and "size the run from them" not in text and "add budgets" in text
