"""fit_all end to end on a synthetic sweep from a known law: headline, intervals, checks, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_fit_synthetic import (
    EXACT_OVER_6N,
    TRUE_LAW,
    isoflop_design,
    profile_optimum,
    table_from_design,
    write_sweep,
)

from pipeline.errors import UserError
from pipeline.fit import checks, refits
from pipeline.fit.fit_all import bootstrap_samples, fit_all, law_from_fit
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.parametric import FitError
from pipeline.fit.plots import plot_fit
from pipeline.fit.table import load_results_dir

TARGET_FLOPS = 1e21


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_sweep(root, isoflop_design(noise=0.003, seed=4, sizes=6, ratio=1.5))
    table = load_results_dir(root)
    return table, fit_all(table, TARGET_FLOPS, bootstrap=400, seed=0)


def test_result_is_strict_json_with_the_documented_keys(sweep):
    _, result = sweep
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["headline"] == "law chinchilla"
    for key in ("budget_flops", "n_opt", "d_opt", "tokens_per_param", "predicted_loss", "intervals", "law",
                "approaches", "excluded", "convention", "flop_method", "outliers", "backtest", "sensitivity",
                "agreement", "warnings", "bootstrap", "selection", "noise", "minima", "verdict"):
        assert key in result, key
    assert result["convention"] == "total" and result["flop_method"] == "exact" and result["n_runs"] == 30
    assert set(result["intervals"]) >= {"n_opt", "d_opt", "tokens_per_param", "predicted_loss", "E", "A", "B",
                                        "alpha", "beta", "a", "b"}


def test_known_law_is_recovered_within_the_reported_intervals(sweep):
    _, result = sweep
    truth = {"alpha": TRUE_LAW.alpha, "beta": TRUE_LAW.beta, "a": TRUE_LAW.a,
             "n_opt": profile_optimum(TARGET_FLOPS)}          # under the runs' count, C = 1.1 x 6 N D
    for key, value in truth.items():
        lo, hi = result["intervals"][key]
        assert lo <= value <= hi, key
    # one FLOP count across the approaches: the law's optimum is on the runs' own budget line, as Approach 2's
    assert result["d_opt"] == pytest.approx(TARGET_FLOPS / (EXACT_OVER_6N * 6 * result["n_opt"]))
    assert result["approaches"]["parametric"]["d_opt"] == pytest.approx(
        TARGET_FLOPS / (EXACT_OVER_6N * 6 * result["approaches"]["parametric"]["n_opt"]))
    iso = result["approaches"]["isoflop"]
    lo, hi = iso["intervals"]["n_opt"]
    assert lo <= profile_optimum(TARGET_FLOPS) <= hi and iso["n_budgets_used"] == 5
    assert abs(result["approaches"]["envelope"]["a"] - TRUE_LAW.a) < 0.06
    assert "warning" not in result["agreement"] and "warning" not in result["backtest"]
    assert set(result["sensitivity"]) == {"total", "non_embedding"}


def test_law_from_fit_gives_the_law_and_its_samples(sweep):
    _, result = sweep
    law, samples = law_from_fit(result)
    assert isinstance(law, ParametricLaw) and law.alpha == result["law"]["alpha"] and law.convention == "total"
    assert samples.shape == (result["bootstrap"]["n_used"], 5)
    np.testing.assert_array_equal(samples, bootstrap_samples(result))
    assert law.optimal_allocation(TARGET_FLOPS / EXACT_OVER_6N)[0] == pytest.approx(result["n_opt"], rel=1e-5)


def test_plots_are_written(sweep, tmp_path):
    table, result = sweep
    paths = plot_fit(result, table, tmp_path / "plots")
    assert [p.name for p in paths] == ["isoflop_profiles.png", "frontier.png", "parametric_fit.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_fixed_margins_make_room_for_a_legend_outside_the_axes():
    """Figures set their margins once (set_margins, no tight_layout pass): the legend right of the axes must end
    inside the figure, and a label longer than the figure must not break the layout."""
    from matplotlib.figure import Figure

    from pipeline.fit.plots import _legend_outside, set_margins

    for label, fits in (("recommended N = 7.2e+10", True), ("x" * 300, False)):
        fig = Figure(figsize=(8.5, 4.5))
        ax = fig.add_subplot()
        ax.plot([1, 2], [1, 2], label=label)
        set_margins(fig, left=0.8, bottom=0.6, top=0.35, right=0.25, legend=_legend_outside(ax, 1))
        assert 0.5 <= fig.subplotpars.right < 1
        right_edge = ax.get_legend().get_window_extent().x1
        assert (right_edge <= fig.bbox.width) == fits


def test_many_budgets_get_a_colour_bar_instead_of_a_legend_entry_each():
    """Chinchilla's 58 budgets made a 3-column legend nobody could read; past LEGEND_MAX_BUDGETS a colour bar of C."""
    from pipeline.fit.plots import LEGEND_MAX_BUDGETS, isoflop_figure

    few = table_from_design(isoflop_design(noise=0.003, budgets=(1e17, 1e18, 1e19)))
    fig = isoflop_figure(fit_all(few, TARGET_FLOPS, bootstrap=0), few)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_legend().get_texts()) == 3
    budgets = tuple(np.geomspace(1e17, 1e19, LEGEND_MAX_BUDGETS + 1))
    many = table_from_design(isoflop_design(noise=0.003, budgets=budgets))
    fig = isoflop_figure(fit_all(many, TARGET_FLOPS, bootstrap=0), many)
    assert len(fig.axes) == 2 and f"{len(budgets)} budgets" in fig.axes[1].get_ylabel()
    assert fig.axes[0].get_legend() is None or len(fig.axes[0].get_legend().get_texts()) <= 1   # outliers only


def test_headline_falls_back_to_isoflop_when_the_parametric_fit_fails(monkeypatch):
    def broken(*_args, **_kwargs):
        raise FitError("parametric fit did not converge (test)")

    monkeypatch.setattr(refits, "finish", broken)                 # every law fit, Approach 3 and the candidates
    monkeypatch.setattr(checks, "fit_parametric", broken)          # the convention-sensitivity refits too
    table = table_from_design(isoflop_design(noise=0.003))
    result = fit_all(table, TARGET_FLOPS, bootstrap=0, outliers="none")
    assert result["headline"] == "isoflop" and result["law"] is None and result["predicted_loss"] is None
    assert result["n_opt"] == result["approaches"]["isoflop"]["n_opt"]
    assert any("Approach 3 (parametric) failed" in w for w in result["warnings"])
    with pytest.raises(UserError, match="Approach 3 could not fit the runs .*Approach 2 alone gives N_opt"):
        law_from_fit(result)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"budget_flops": -1.0}, "budget_flops=-1.0 must be a positive number"),
    ({"bootstrap": 1}, "fit.bootstrap=1 must be 0"),
    ({"outliers": "strict"}, "outliers='strict' is not a rule"),
    ({"convention": "embedding"}, "convention 'embedding' is not in the runs table"),
])
def test_bad_arguments_are_one_line_user_errors(kwargs, fragment):
    table = table_from_design(isoflop_design())
    with pytest.raises(UserError) as err:
        fit_all(table, **{"budget_flops": TARGET_FLOPS, "bootstrap": 0, **kwargs})
    assert fragment in str(err.value)


def test_losses_too_close_to_their_law_are_said_to_give_intervals_of_near_certainty():
    # the law's exact losses (a table of predictions, or smoothed ones): the parametric bootstrap redraws them with
    # the ~0 sd they show, so the intervals collapse; the fit must say so instead of presenting them plainly
    exact = fit_all(table_from_design(isoflop_design(noise=0.0)), TARGET_FLOPS, bootstrap=20, seed=0)
    said = [w for w in exact["warnings"] if w.startswith("the noise measured on these runs is sd")]
    assert exact["noise"]["sd_log"] < 5e-4 and len(said) == 1 and "read as near certainty" in said[0]
    noisy = fit_all(table_from_design(isoflop_design(noise=0.003)), TARGET_FLOPS, bootstrap=0, seed=0)
    assert not any(w.startswith("the noise measured on these runs is sd") for w in noisy["warnings"])
