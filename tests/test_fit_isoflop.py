"""Approach 2: IsoFLOP parabolas, the power laws, an off-centre grid, unbracketed and single budgets."""

from __future__ import annotations

import numpy as np
import pytest
from test_fit_synthetic import EXACT_OVER_6N, TRUE_LAW, isoflop_design, profile_optimum, table_from_design

from pipeline.errors import UserError
from pipeline.fit.isoflop import fit_isoflop, profile_budget


@pytest.mark.parametrize("shift", [0.0, 1.7, -1.7, 2.4])
def test_off_centre_grid_still_finds_the_optimum(shift):
    """7 sizes 1.8x apart, shifted so the minimum sits 1-2 sizes from an edge, noise-free."""
    rows = isoflop_design(budgets=(1e18,), sizes=7, ratio=1.8, shift=shift, noise=0.0)
    log_n, loss = np.log([r["n"] for r in rows]), np.array([r["loss"] for r in rows])
    prof = profile_budget(log_n, loss)
    truth = profile_optimum(1e18)
    assert prof["bracketed"] and np.exp(prof["log_n_opt"]) == pytest.approx(truth, rel=0.01)
    if abs(shift) > 2:
        # a parabola through every point is pulled towards the long side: the bias the window avoids
        c2, c1, _ = np.polyfit(log_n, loss, 2)
        assert abs(np.exp(-c1 / (2 * c2)) / truth - 1) > 0.03


def test_known_law_gives_its_exponents_and_optimum_within_the_bootstrap_interval():
    table = table_from_design(isoflop_design(noise=0.003, seed=2))
    result = fit_isoflop(table, 1e21, bootstrap=300, seed=0)
    assert result["n_budgets_used"] == 5 and result["a"] == pytest.approx(TRUE_LAW.a, abs=0.02)
    assert result["a"] + result["b"] == pytest.approx(1.0, abs=1e-9)      # C = F(N) D with F linear in N
    truth_n_opt = profile_optimum(1e21)
    for key, value in (("a", TRUE_LAW.a), ("n_opt", truth_n_opt)):
        lo, hi = result["intervals"][key]
        assert lo <= value <= hi, key
    # D_opt = C / F(N_opt) with the runs' exact FLOPs per token (1.1 x 6N here), not C / 6N
    assert result["d_opt"] == pytest.approx(1e21 / (EXACT_OVER_6N * 6 * result["n_opt"]), rel=1e-6)


def test_d_opt_under_6n_accounting_is_c_over_6n():
    table = table_from_design(isoflop_design(noise=0.0), flop_method="6n")
    result = fit_isoflop(table, 1e21, bootstrap=0)
    assert "intervals" not in result
    for prof in result["budgets"]:
        assert prof["d_opt"] == pytest.approx(prof["budget_flops"] / (6 * prof["n_opt"]), rel=1e-9)


def test_unbracketed_budgets_are_reported_and_left_out():
    rows = isoflop_design(budgets=(1e17, 1e18, 1e19), sizes=5, noise=0.0)
    # keep only the top budget's smaller sizes: its lowest loss is then its largest model
    n_star = TRUE_LAW.optimal_allocation(1e19)[0]
    rows = [r for r in rows if not (r["budget"] == 1e19 and r["n"] > 1.01 * n_star)]
    result = fit_isoflop(table_from_design(rows), 1e21, bootstrap=0)
    by_budget = {p["planned_budget_flops"]: p for p in result["budgets"]}
    assert not by_budget[1e19]["bracketed"] and "lowest loss at the largest size" in by_budget[1e19]["reason"]
    assert result["n_budgets_used"] == 2 and by_budget[1e17]["bracketed"] and by_budget[1e18]["bracketed"]


def test_fewer_than_two_bracketed_budgets_give_an_error_string():
    n_star = TRUE_LAW.optimal_allocation(1e17)[0]
    rows = [r for r in isoflop_design(budgets=(1e17, 1e18), sizes=5, noise=0.0)
            if r["budget"] == 1e18 or r["n"] < 0.9 * n_star]
    result = fit_isoflop(table_from_design(rows), 1e21)
    assert "fewer than 2 budgets have a bracketed minimum" in result["error"] and "n_opt" not in result
    assert "only 2 model sizes" in result["error"]


def test_one_budget_is_a_one_line_user_error():
    table = table_from_design(isoflop_design(budgets=(1e18,)))
    with pytest.raises(UserError, match="all 7 runs share one compute budget: Approach 2 needs runs at 2 or more"):
        fit_isoflop(table, 1e21)


def test_too_few_sizes_or_a_concave_window_are_not_bracketed():
    assert "only 2 model sizes" in profile_budget(np.log([1e6, 2e6]), np.array([3.0, 2.9]))["reason"]
    sizes = np.log([1e6, 2e6, 4e6, 8e6, 16e6])
    concave = profile_budget(sizes, np.array([2.0, 2.5, 1.9, 2.5, 2.0]))
    assert not concave["bracketed"] and "not convex" in concave["reason"]
    exact = profile_budget(np.log([1e6, 2e6, 4e6]), np.array([3.0, 1.0, 3.0]))
    assert exact["bracketed"] and np.exp(exact["log_n_opt"]) == pytest.approx(2e6)
