"""Approach 3: the objective, the fit on Chinchilla's own points (Besiroglu et al. 2024), its bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_fit_synthetic import TRUE_LAW, isoflop_design, table_from_design

from pipeline.errors import UserError
from pipeline.fit.bootstrap import bootstrap_law
from pipeline.fit.checks import apply_outlier_rule
from pipeline.fit.fit_all import fit_all
from pipeline.fit.lbfgs import minimize_batched
from pipeline.fit.parametric import (
    FitError,
    HuberLogObjective,
    check_constants,
    chinchilla_grid,
    fit_parametric,
)
from pipeline.fit.sources import load_table_file

CHINCHILLA_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chinchilla_fig4_epoch.csv"
needs_chinchilla = pytest.mark.skipif(not CHINCHILLA_CSV.exists(), reason="../shared/data is absent (fresh clone)")
# Epoch's notebook with Chinchilla's procedure (data README); standard errors from Besiroglu et al. Table 1.
EPOCH_FIT = {"E": 1.8172, "A": 477.8, "B": 2143.9, "alpha": 0.3473, "beta": 0.3672}
EPOCH_SE = {"E": 0.03, "A": 124.58, "B": 1293.23, "alpha": 0.02, "beta": 0.02}
EPOCH_BUDGET_FLOPS, EPOCH_N_OPT = 5.76e23, 7.3e10


def chinchilla_table():
    return load_table_file(CHINCHILLA_CSV, columns={"Model Size": "params", "Training FLOP": "flops"})


@pytest.fixture(scope="module")
def chinchilla_result():
    table = chinchilla_table()
    highest = np.argsort(np.argsort(-table.loss)) < 5
    table = table.subset(~highest, reason="one of the 5 highest losses (dropped by Besiroglu et al. 2024)")
    return table, fit_all(table, EPOCH_BUDGET_FLOPS, bootstrap=1000, outliers="none", seed=0)


def test_gradient_is_exact():
    rows = isoflop_design(noise=0.01)
    n, d, loss = (np.array([r[k] for r in rows]) for k in ("n", "tokens", "loss"))
    weights = np.random.default_rng(0).integers(0, 3, size=(2, len(n))).astype(float)
    objective = HuberLogObjective(n, d, loss, weights=weights)
    theta = np.array([[6.0, 7.0, 0.5, 0.35, 0.3], [5.5, 7.2, 0.4, 0.4, 0.25]])
    f, g = objective(theta, np.arange(2))
    step = 1e-6
    for j in range(5):
        bump = np.zeros(5)
        bump[j] = step
        numeric = (objective(theta + bump, np.arange(2))[0] - objective(theta - bump, np.arange(2))[0]) / (2 * step)
        np.testing.assert_allclose(g[:, j], numeric, rtol=1e-5, atol=1e-12)


def test_the_grid_is_chinchillas_4500_starts():
    grid = chinchilla_grid()
    assert grid.shape == (4500, 5)
    assert sorted(set(grid[:, 0])) == [0, 5, 10, 15, 20, 25] and sorted(set(grid[:, 2])) == [-1, -0.5, 0, 0.5, 1]
    assert sorted(set(grid[:, 3])) == [0, 0.5, 1, 1.5, 2] == sorted(set(grid[:, 4]))


def test_batched_lbfgs_minimises_independent_quadratics():
    scales = np.array([1.0, 10.0, 100.0])

    def objective(theta, rows):
        s = scales[rows][:, None]
        return 0.5 * s[:, 0] * ((theta - rows[:, None]) ** 2).sum(1), s * (theta - rows[:, None])

    res = minimize_batched(objective, np.zeros((3, 2)) + 5.0)
    np.testing.assert_allclose(res.theta, [[0, 0], [1, 1], [2, 2]], atol=1e-8)
    assert res.converged.all()


def test_batched_lbfgs_gives_each_problem_what_it_gets_alone():
    """The running problems' state is compacted as problems stop (pipeline/fit/lbfgs.py): every problem must still
    follow its own path to the bit, whatever stops around it (Rosenbrock from starts that need 0 to ~40 iterations,
    one at the optimum, one with a non-finite start)."""
    def rosenbrock(theta, rows):
        x, y = theta[:, 0], theta[:, 1]
        f = (1 - x) ** 2 + 100 * (y - x * x) ** 2
        return f, np.column_stack([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])

    starts = np.array([[-1.2, 1.0], [1.0, 1.0], [0.5, 0.2], [np.nan, 0.0], [2.0, 3.0], [0.9, 0.8], [-0.5, 2.5]])
    together = minimize_batched(rosenbrock, starts, max_iter=300)
    assert together.n_iter.min() == 0 and together.n_iter.max() > 20 and together.converged.sum() >= 5
    for i, start in enumerate(starts):
        alone = minimize_batched(rosenbrock, start[None, :], max_iter=300)
        for field in ("theta", "fun", "grad", "n_iter", "converged", "stalled"):
            np.testing.assert_array_equal(getattr(together, field)[i], getattr(alone, field)[0], err_msg=field)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_objective_is_the_same_to_the_bit_in_any_pass_size_and_any_batch(monkeypatch, dtype):
    """Passes of PASS_ELEMENTS values in reused workspaces (pipeline/fit/objective.py) give the values and gradients of
    short passes, bit for bit, and a problem's do not depend on the problems beside it (no gemv): the screening ranks
    the same starts and the fit lands on the same optimum in one batch, two halves (pipeline/fit/worker.py) or alone."""
    from pipeline.fit import objective as module

    rows = isoflop_design(noise=0.01)
    n, d, loss = (np.array([r[k] for r in rows]) for k in ("n", "tokens", "loss"))
    rng = np.random.default_rng(0)
    theta = chinchilla_grid()[rng.choice(4500, 1001, replace=False)] + rng.normal(0, 0.3, (1001, 5))
    weights = rng.integers(0, 3, size=(1001, len(n))).astype(float)
    losses = loss * np.exp(rng.normal(0, 0.01, (1001, len(n))))
    problems = [HuberLogObjective(n, d, loss, dtype=dtype), HuberLogObjective(n, d, loss, weights=weights, dtype=dtype),
                HuberLogObjective(n, d, losses, dtype=dtype)]
    wide = [objective(theta, np.arange(1001)) for objective in problems]
    for objective, (f, g) in zip(problems, wide, strict=True):
        for rows in (np.arange(3, 1001), np.arange(500, 1001), np.array([7]), np.array([1000, 2, 999])):
            f_rows, g_rows = objective(theta[rows], rows)
            np.testing.assert_array_equal(f[rows], f_rows)
            np.testing.assert_array_equal(g[rows], g_rows)
    monkeypatch.setattr(module, "PASS_ELEMENTS", 1000)     # 28 problems a pass
    for objective, (f, g) in zip(problems, wide, strict=True):
        f_short, g_short = objective(theta, np.arange(1001))
        np.testing.assert_array_equal(f, f_short)
        np.testing.assert_array_equal(g, g_short)


@needs_chinchilla
def test_chinchilla_points_give_epochs_law_at_an_objective_no_higher(chinchilla_result):
    table, result = chinchilla_result
    law = result["law"]
    assert law["n_points"] == 240 and law["converged"] and law["moved"]
    for key in ("E", "alpha", "beta"):
        assert law[key] == pytest.approx(EPOCH_FIT[key], rel=0.01)
    for key in ("A", "B"):
        assert law[key] == pytest.approx(EPOCH_FIT[key], rel=0.05)
    theirs = np.array([np.log(EPOCH_FIT["A"]), np.log(EPOCH_FIT["B"]), np.log(EPOCH_FIT["E"]),
                       EPOCH_FIT["alpha"], EPOCH_FIT["beta"]])
    their_objective = HuberLogObjective(table.n, table.tokens, table.loss).single(theirs)[0]
    assert law["objective"] <= their_objective
    assert result["headline"] == "law chinchilla" and result["n_opt"] == pytest.approx(EPOCH_N_OPT, rel=0.03)
    assert 15 < result["tokens_per_param"] < 22                        # "about 20 tokens per parameter"


@needs_chinchilla
def test_chinchilla_run_bootstrap_errors_are_the_size_of_epochs(chinchilla_result):
    table, result = chinchilla_result     # Epoch resampled runs: compare the run bootstrap with theirs
    fit = fit_parametric(table.n, table.tokens, table.loss)
    boot = bootstrap_law(fit, table.n, table.tokens, table.loss, EPOCH_BUDGET_FLOPS, 1000, seed=0)
    assert boot["n_resamples"] == 1000 and boot["n_used"] >= 990
    for key, theirs in EPOCH_SE.items():
        assert theirs / 2 <= boot["standard_errors"][key] <= theirs * 2, key
    lo, hi = result["intervals"]["n_opt"]
    assert lo < result["n_opt"] < hi and len(boot["samples"]) == boot["n_used"]


@needs_chinchilla
def test_default_outlier_rule_drops_the_gross_chinchilla_outliers():
    table = chinchilla_table()
    clean, report = apply_outlier_rule(table, "default")
    highest = set(np.array(table.run_id)[np.argsort(-table.loss)[:5]])
    dropped = {d["run_id"] for d in report["dropped"]}
    assert len(highest & dropped) >= 4 and len(dropped) <= 6
    fit = fit_parametric(clean.n, clean.tokens, clean.loss)
    assert fit.law().optimal_allocation(EPOCH_BUDGET_FLOPS)[0] == pytest.approx(EPOCH_N_OPT, rel=0.05)


def test_known_law_is_recovered_within_its_bootstrap_interval():
    table = table_from_design(isoflop_design(noise=0.003, seed=1))
    fit = fit_parametric(table.n, table.tokens, table.loss)
    boot = bootstrap_law(fit, table.n, table.tokens, table.loss, 1e21, n_resamples=200, seed=0)
    truth = {"alpha": TRUE_LAW.alpha, "beta": TRUE_LAW.beta, "a": TRUE_LAW.a,
             "n_opt": TRUE_LAW.optimal_allocation(1e21)[0]}
    for key, value in truth.items():
        lo, hi = boot["intervals"][key]
        assert lo <= value <= hi, key
    assert boot["samples"].shape == (boot["n_used"], 5)


def test_a_fit_that_never_leaves_its_start_is_an_error():
    table = table_from_design(isoflop_design(noise=0.003))
    fit = fit_parametric(table.n, table.tokens, table.loss)
    with pytest.raises(FitError, match="did not move from its start"):
        fit_parametric(table.n, table.tokens, table.loss, starts=fit.theta[None, :])


def test_too_few_or_bad_points_are_user_errors():
    with pytest.raises(UserError, match="at least 5 runs"):
        fit_parametric([1e6, 2e6], [1e8, 1e8], [3.0, 2.9])
    with pytest.raises(UserError, match="positive finite"):
        fit_parametric([1e6] * 5, [1e8] * 5, [3.0, 2.9, np.nan, 2.8, 2.7])


def test_constants_out_of_float_range_are_a_failed_fit_not_a_law():
    check_constants("fit", np.log(1.7), np.log(400.0), np.log(1200.0))        # a real law passes
    for logs in ((0.5, 800.0, 7.0), (-800.0, 6.0, 7.0), (0.5, float("nan"), 7.0)):
        with pytest.raises(FitError, match="out of floating-point range"):
            check_constants("fit", *logs)
