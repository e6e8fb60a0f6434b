"""Approach 1: the lower envelope of the training curves."""

from __future__ import annotations

import numpy as np
import pytest
from test_fit_synthetic import TRUE_LAW, isoflop_design, table_from_design, write_sweep

from pipeline.fit.envelope import envelope_points, fit_envelope
from pipeline.fit.table import load_results_dir


@pytest.fixture(scope="module")
def sweep_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("envelope")
    write_sweep(root, isoflop_design(noise=0.0, sizes=7, ratio=1.4), n_evals=24)
    return load_results_dir(root)


def test_envelope_of_ideal_curves_recovers_the_exponent(sweep_table):
    result = fit_envelope(sweep_table, 1e21)
    # winners are discrete sizes 1.4x apart: a step frontier around the true a = beta/(alpha+beta)
    assert result["a"] == pytest.approx(TRUE_LAW.a, abs=0.04)
    assert result["b"] == pytest.approx(TRUE_LAW.b, abs=0.04)
    assert result["n_bins"] >= 2 * result["bins_per_decade"] and result["n_bins_won_at_edges"] > 0
    log_n, log_c = np.log(result["frontier"]["n"]), np.log(result["frontier"]["flops"])
    assert np.corrcoef(log_c, log_n)[0, 1] > 0.97                   # bigger compute -> bigger model
    truth = TRUE_LAW.optimal_allocation(1e21 / 1.1)[0]             # exact FLOPs here are 1.1 x 6ND
    assert result["n_opt"] == pytest.approx(truth, rel=0.35)


def test_noise_bootstrap_gives_an_interval_holding_the_truth(sweep_table):
    result = fit_envelope(sweep_table, 1e21, bootstrap=200, seed=0, noise_sd_log=0.005)
    boot = result["bootstrap"]
    assert boot["n_used"] >= 190 and boot["n_used"] + boot["n_failed"] == 200
    lo, hi = result["intervals"]["a"]
    assert lo <= TRUE_LAW.a <= hi and lo <= result["a"] <= hi
    lo, hi = result["intervals"]["n_opt"]
    assert lo <= TRUE_LAW.optimal_allocation(1e21 / 1.1)[0] <= hi


def test_each_bin_winner_is_the_lowest_loss_in_its_bin(sweep_table):
    pts = envelope_points(sweep_table)
    result = fit_envelope(sweep_table, 1e21)
    for flops, loss in zip(result["frontier"]["flops"], result["frontier"]["loss"], strict=True):
        nearby = np.abs(np.log10(pts["flops"] / flops)) < 1e-9
        assert loss == pts["loss"][nearby].min()


def test_tables_without_curves_or_with_too_few_bins_give_an_error_string(tmp_path):
    no_curves = fit_envelope(table_from_design(isoflop_design()), 1e21)
    assert "no training curves" in no_curves["error"]
    write_sweep(tmp_path, isoflop_design(budgets=(1e17,), sizes=3, ratio=1.01), n_evals=1)
    few = fit_envelope(load_results_dir(tmp_path), 1e21)
    assert "Approach 1 needs 3+ bins" in few["error"]


def test_wsd_pilots_use_each_runs_end_point_only(sweep_table):
    from dataclasses import replace

    wsd = replace(sweep_table, schedule={"name": "wsd", "min_lr_ratio": 0.1, "cooldown_fraction": 0.2})
    pts = envelope_points(wsd)
    # one point per run: its final loss at its full compute, never a mid-cooldown evaluation
    np.testing.assert_array_equal(pts["loss"], wsd.loss)
    np.testing.assert_array_equal(pts["flops"], wsd.c)
    result = fit_envelope(wsd, 1e21)
    assert result["points"] == "each run's final loss (wsd pilots)"
    # IsoFLOP end points of ideal runs: the winners' exponent is the law's, as from the full curves
    assert result["a"] == pytest.approx(TRUE_LAW.a, abs=0.06)
    assert len(envelope_points(sweep_table)["loss"]) > len(wsd)


def test_without_a_noise_estimate_there_is_no_interval_and_it_says_why(sweep_table):
    result = fit_envelope(sweep_table, 1e21, bootstrap=50, seed=0)
    assert result["intervals"] == {} and "no noise estimate" in result["bootstrap"]["note"]
