"""Checks around the fit: outlier rule, backtest, agreement of the approaches, convention sensitivity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_fit_synthetic import TRUE_LAW, isoflop_design, table_from_design

from pipeline.errors import UserError
from pipeline.fit.checks import (
    BACKTEST_WARN_REL_ERROR,
    apply_outlier_rule,
    approach_agreement,
    convention_sensitivity,
)
from pipeline.fit.fit_all import fit_all
from pipeline.fit.selection import chosen_backtest, select_law


@pytest.fixture(scope="module")
def table():
    return table_from_design(isoflop_design(noise=0.003, seed=3))


def test_outlier_rule_drops_a_planted_bad_run_and_none_keeps_all(table):
    bad = table.loss.copy()
    bad[9] *= 1.25                                      # e.g. a run whose LR was wrong
    spoiled = replace(table, loss=bad)
    clean, report = apply_outlier_rule(spoiled, "default")
    assert [d["run_id"] for d in report["dropped"]] == [table.run_id[9]] and report["dropped"][0]["z"] < -5
    assert len(clean) == len(table) - 1 and clean.excluded[-1]["reason"].startswith("outlier")
    kept, report_none = apply_outlier_rule(spoiled, "none")
    assert len(kept) == len(table) and report_none["dropped"] == [] and "none" in report_none["rule"]


@pytest.fixture(scope="module")
def run_below_the_law(table):
    good = table.loss.copy()
    good[9] *= 0.8                                      # better than the law allows: a leak or a misfit, not a failure
    return replace(table, loss=good)


def test_outlier_rule_keeps_and_lists_a_run_far_below_the_law(table, run_below_the_law):
    clean, report = apply_outlier_rule(run_below_the_law, "default")
    assert len(clean) == len(table) and report["dropped"] == []
    assert [d["run_id"] for d in report["below_fit"]] == [table.run_id[9]] and report["below_fit"][0]["z"] > 5


def test_a_run_far_below_the_law_is_fitted_and_warned_about(table, run_below_the_law):
    result = fit_all(run_below_the_law, 1e21, bootstrap=0, outliers="default")
    assert result["n_runs"] == len(table) and result["outliers"]["below_fit"][0]["run_id"] == table.run_id[9]
    assert any("1 runs lie more than 5 robust sd below the law" in w for w in result["warnings"])


def test_outlier_rule_leaves_clean_runs_alone_and_rejects_unknown_rules(table):
    _, report = apply_outlier_rule(table, "default")
    assert report["dropped"] == [] and report["below_fit"] == [] and "MAD" in report["rule"]
    with pytest.raises(UserError, match="outliers='iqr' is not a rule: use one of default, none"):
        apply_outlier_rule(table, "iqr")
    few = table.subset(np.arange(len(table)) < 6)
    assert "not applied: 6 runs" in apply_outlier_rule(few, "default")[1]["note"]


def test_backtest_predicts_the_held_out_top_budget(table):
    result = chosen_backtest(select_law(table, 1e21))     # the one backtest: the law selection's
    assert result["held_out"].startswith("budget 1e+19") and result["n_held_out"] == 7
    assert result["mean_rel_error"] < 0.005 and "warning" not in result and "error" not in result


def test_backtest_warns_when_the_top_budget_breaks_the_law(table):
    loss = table.loss.copy()
    loss[table.budget_flops == 1e19] *= 1.08            # the largest runs do worse than the law says
    result = chosen_backtest(select_law(replace(table, loss=loss), 1e21))
    assert result["mean_rel_error"] > BACKTEST_WARN_REL_ERROR and "misses them by" in result["warning"]


def test_backtest_without_budgets_holds_out_the_top_fifth_by_flops(table):
    no_plan = replace(table, budget_flops=np.full(len(table), np.nan),
                      flops={"exact": table.c * np.exp(np.linspace(-1, 1, len(table)))})
    result = chosen_backtest(select_law(no_plan, 1e21))
    assert result["held_out"] == f"runs {len(table) - 6}-{len(table)} of {len(table)} by compute"
    assert result["n_held_out"] == 7


def test_agreement_warns_only_when_intervals_do_not_overlap():
    close = approach_agreement({"parametric": {"n_opt": 1.0e9, "intervals": {"n_opt": [0.9e9, 1.1e9]}},
                                "isoflop": {"n_opt": 1.05e9, "intervals": {"n_opt": [0.95e9, 1.3e9]}},
                                "envelope": {"error": "no curves"}})
    assert "warning" not in close and close["max_over_min"] == pytest.approx(1.05)
    far = approach_agreement({"parametric": {"n_opt": 1.0e9, "intervals": {"n_opt": [0.9e9, 1.1e9]}},
                              "envelope": {"n_opt": 3.0e9}})
    assert "parametric vs envelope" in far["warning"] and "3x apart" in far["warning"]
    assert "nothing to compare" in approach_agreement({"parametric": {"n_opt": 1e9}})["note"]


def test_an_imprecise_approach_inside_its_interval_does_not_set_the_verdict():
    """Approach 2 on two profiles (the adaptive demo): its point 5.7x from the law's, but its interval 1000x wide
    and overlapping the law's. The spread is no conflict, so the verdict reads the law's interval and names the
    approach as too wide to check it; the same points without intervals still count as a spread."""
    from pipeline.fit.checks import verdict

    approaches = {"parametric": {"n_opt": 7.5e5, "intervals": {"n_opt": [2.7e5, 1.8e6]}},
                  "isoflop": {"n_opt": 1.3e5, "intervals": {"n_opt": [3.3e3, 3.3e6]}}}
    agreement = approach_agreement(approaches)
    assert agreement["consistent"] and "warning" not in agreement
    assert agreement["too_wide_to_check"]["isoflop"] == pytest.approx(1000, rel=0.01)
    line = verdict({"intervals": {"n_opt": [2.7e5, 1.8e6]}, "agreement": agreement, "minima": []})
    assert "within 2.6x" in line and "within their intervals" in line and "Approach 2's interval" in line
    points = approach_agreement({k: {"n_opt": v["n_opt"]} for k, v in approaches.items()})
    assert not points["consistent"]
    assert "within 5.8x" in verdict({"intervals": {"n_opt": [2.7e5, 1.8e6]}, "agreement": points, "minima": []})


def test_sensitivity_refits_every_convention(table):
    result = convention_sensitivity(table, 1e21, known={"total": {"parametric_a": 0.5}})
    assert result["total"] == {"parametric_a": 0.5}                 # given, not refitted
    ne = result["non_embedding"]
    # N_ne = 0.8 N: the exponents cannot move, N_opt scales by 0.8
    assert ne["parametric_a"] == pytest.approx(TRUE_LAW.a, abs=0.02)
    assert ne["isoflop_a"] == pytest.approx(TRUE_LAW.a, abs=0.03)


def test_a_form_that_backtests_as_well_and_lands_outside_the_interval_widens_the_verdict():
    """The adaptive demo: alpha = beta chosen (better backtest), its interval x/1.1 because the form pins the
    allocation exponent, while the free form that also passed its backtest puts N_opt 4x lower. The forms' spread
    is the verdict's factor; a form inside the chosen interval, or one whose backtest failed, does not count."""
    from pipeline.fit.checks import form_spread, verdict

    rows = [{"candidate": "overtrain", "chosen": True, "n_opt": 3.1e6, "intervals": {"n_opt": [2.74e6, 3.34e6]},
             "backtest_error": 0.021},
            {"candidate": "chinchilla", "chosen": False, "n_opt": 7.5e5, "backtest_error": 0.030}]
    result = {"intervals": {"n_opt": [2.74e6, 3.34e6]}, "selection": {"candidates": rows}, "minima": []}
    spread = form_spread(result)
    assert spread["factor"] == pytest.approx(3.1e6 / 7.5e5) and "chinchilla 7.5e+05" in spread["names"]
    assert spread["span"] == [2.74e6, 3.34e6]   # the free form has no interval here: only the chosen one spans
    rows[1]["intervals"] = {"n_opt": [2.7e5, 1.8e6]}
    assert form_spread(result)["span"] == [2.7e5, 3.34e6]
    line = verdict(result)
    assert "cannot separate sizes within 4.1x" in line and "law forms 4.13x apart" in line
    rows[1]["backtest_error"] = None                                    # its backtest failed: no evidence
    assert form_spread(result) is None and "size the run from them" in verdict(result)
    rows[1].update(backtest_error=0.03, n_opt=3.0e6)                    # inside the interval: no conflict
    assert form_spread(result) is None


def test_agreement_with_an_approach_too_wide_to_check_is_not_a_basis_for_sizing():
    from pipeline.fit.checks import verdict

    approaches = {"parametric": {"n_opt": 3.1e6, "intervals": {"n_opt": [2.9e6, 3.3e6]}},
                  "isoflop": {"n_opt": 1.3e5, "intervals": {"n_opt": [3.3e3, 3.3e6]}}}
    line = verdict({"intervals": {"n_opt": [2.9e6, 3.3e6]}, "agreement": approach_agreement(approaches), "minima": []})
    assert "not yet a basis for sizing the run" in line and "sweep.min_profiles=3" in line
