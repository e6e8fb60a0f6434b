"""Trade-offs around the compute-optimal plan (pipeline.decide.tradeoffs), checked against published figures."""

from __future__ import annotations

import math

import pytest

from pipeline.decide.tradeoffs import (
    R_STAR_DATA,
    data_constrained,
    deviation_penalty,
    effective_count,
    inference_aware,
    published_comparison,
    tokens_for_loss,
)
from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw, published_law

EPOCH = published_law("epoch")
H100_TWO_WEEKS_FLOPS = 32 * 989e12 * 0.40 * 14 * 86_400


def budget_for_n_opt(law: ParametricLaw, n_opt: float) -> float:
    """Invert N_opt = G (C/6)^a (Chinchilla eq. 4)."""
    return 6 * (n_opt / law.G) ** (1 / law.a)


def test_deviation_penalty_is_zero_at_optimum_and_grows_both_ways():
    dev = deviation_penalty(EPOCH, H100_TWO_WEEKS_FLOPS)
    by_factor = {round(r["factor"], 3): r for r in dev["rows"]}
    assert [round(r["factor"], 3) for r in dev["rows"]] == [0.25, 0.5, 0.667, 1.0, 1.5, 2.0, 4.0]
    assert by_factor[1.0]["delta_loss"] == pytest.approx(0.0, abs=1e-12)
    assert by_factor[1.0]["compute_to_match"] == pytest.approx(1.0, rel=1e-9)
    # Under the Epoch law at 1.53e22: half the size costs 0.0092 nats, twice the size 0.0093,
    # and a 4x smaller model needs 4.5x the compute to reach the optimum's loss.
    assert by_factor[0.5]["delta_loss"] == pytest.approx(0.00918, abs=2e-5)
    assert by_factor[2.0]["delta_loss"] == pytest.approx(0.00926, abs=2e-5)
    assert by_factor[0.25]["compute_to_match"] == pytest.approx(4.47, abs=0.02)
    assert min(dev["curve"]["delta_loss"]) >= -1e-12


def test_sardana_frankle_13b_with_2t_inference_tokens_lands_near_7b():
    law = published_law("chinchilla_unrounded")
    budget = budget_for_n_opt(law, 13e9)
    result = inference_aware(law, budget, 2e12)
    assert result["compute_optimal_n"] == pytest.approx(13e9, rel=1e-9)
    assert 6.5e9 < result["n_opt"] < 7.5e9          # Sardana & Frankle 2023: ~7B
    assert result["saving_fraction"] == pytest.approx(0.163, abs=0.01)  # they report ~17%
    assert result["tokens_per_param"] > 100
    # same loss as the compute-optimal model: the point lies on the iso-loss curve
    assert float(law.loss(result["n_opt"], result["d_opt"])) == pytest.approx(result["target_loss"], abs=1e-9)


def test_inference_aware_without_traffic_is_compute_optimal_and_rejects_negative():
    zero = inference_aware(EPOCH, 1e22, 0.0)
    assert zero["n_opt"] == pytest.approx(zero["compute_optimal_n"]) and zero["saving_fraction"] == pytest.approx(0)
    with pytest.raises(UserError, match="inference.tokens"):
        inference_aware(EPOCH, 1e22, -1.0)


def test_tokens_for_loss_is_infinite_where_the_model_is_too_small():
    target = float(EPOCH.loss(1e9, 2e10))
    assert float(tokens_for_loss(EPOCH, 1e9, target)) == pytest.approx(2e10, rel=1e-9)
    assert math.isinf(float(tokens_for_loss(EPOCH, 1e3, target)))


def test_effective_data_follows_muennighoff():
    assert effective_count(1e9, 5e8, R_STAR_DATA) == 5e8                 # a partial epoch counts in full
    assert effective_count(1e9, 1e9, R_STAR_DATA) == 1e9
    # 4 epochs: R = 3 -> U (1 + 15.39 (1 - e^(-3/15.39))) = 3.73 U, near-unique (paper: ~4 epochs are fine)
    assert effective_count(1e9, 4e9, R_STAR_DATA) == pytest.approx(3.727e9, rel=1e-3)
    # the limit is U (1 + R*) whatever the repetition
    assert effective_count(1e9, 1e15, R_STAR_DATA) == pytest.approx(1e9 * (1 + R_STAR_DATA), rel=1e-6)


def test_data_constrained_plan_repeats_and_shrinks_the_model():
    dc = data_constrained(EPOCH, H100_TWO_WEEKS_FLOPS, 5e10)
    assert dc["epochs"] == pytest.approx(4.53, abs=0.01)
    assert dc["loss_with_repetition"] > dc["loss_unconstrained"]
    assert dc["adjusted_loss"] <= dc["loss_with_repetition"] + 1e-12
    assert dc["n_opt"] < 11.25e9 and dc["adjusted_epochs"] > dc["epochs"]   # R*_N < R*_D: repeat data, not width
    plenty = data_constrained(EPOCH, H100_TWO_WEEKS_FLOPS, 1e13)
    assert plenty["n_opt"] == pytest.approx(11.25e9, rel=1e-3)
    assert plenty["adjusted_loss"] == pytest.approx(plenty["loss_unconstrained"], abs=1e-12)
    with pytest.raises(UserError, match="unique_tokens"):
        data_constrained(EPOCH, 1e22, 0)


def test_published_comparison_at_1e23():
    rows = {r["name"]: r for r in published_comparison(1e23)}
    assert rows["epoch"]["n_params"] == pytest.approx(2.94e10, rel=0.01)
    assert rows["20_tokens_per_param"]["n_params"] == pytest.approx(2.89e10, rel=0.01)
    assert rows["20_tokens_per_param"]["tokens"] == pytest.approx(5.77e11, rel=0.01)
    assert rows["kaplan"]["convention"] == "non_embedding" and rows["kaplan"]["n_params"] > 1e11
    assert rows["kaplan"]["predicted_loss"] is None and rows["epoch"]["predicted_loss"] > 1.8
