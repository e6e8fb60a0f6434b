"""The LR probe: its plan (sizes x LRs, FLOPs, share of the pilots) and its fit (best LR per size, power law)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config.schema import Design, Study, SweepConfig
from pipeline.errors import UserError
from pipeline.fit.lr_law import fit_lr_law, fit_parabola, miss_cost
from pipeline.plan.design import plan_sweep
from pipeline.plan.hparams import RULES
from pipeline.plan.lr_probe import probe_cost_line

VOCAB = 512


def probe_study(**sweep) -> Study:
    sweep = {"design": Design.lr_probe, "budgets_flops": [5e11, 1e12, 2e12], "sizes_per_budget": 5, **sweep}
    return replace(Study(), sweep=SweepConfig(**sweep))


def test_probe_plan_is_sizes_times_lrs_within_its_share():
    study = probe_study()
    runs = plan_sweep(study, VOCAB)
    main = plan_sweep(replace(study, sweep=replace(study.sweep, design=Design.isoflop)), VOCAB)
    main_flops = sum(r.spec.flops["exact"] for r in main)
    shapes = {r.spec.shape for r in runs}
    assert len(runs) == 15 and len(shapes) == 3                      # 3 sizes x 5 LRs
    sizes = sorted(r.spec.n_params for r in runs)
    assert sizes[0] <= 1.35 * min(r.spec.n_params for r in main)       # spanning the design's range
    assert sizes[-1] >= max(r.spec.n_params for r in main) / 1.35
    for shape in shapes:
        mine = sorted((r for r in runs if r.spec.shape == shape), key=lambda r: r.spec.hparams.lr)
        factors = [r.probe["factor"] for r in mine]
        assert factors == [0.25, 0.5, 1.0, 2.0, 4.0]
        base = mine[2].spec.hparams.lr
        assert [r.spec.hparams.lr / base for r in mine] == pytest.approx(factors, rel=1e-5)
        assert len({r.spec.tokens for r in mine}) == 1
    spent = sum(r.spec.flops["exact"] for r in runs)
    assert runs[0].probe["spent_flops"] == pytest.approx(spent)
    assert runs[0].probe["share"] == pytest.approx(spent / main_flops)
    assert 0.15 < spent / main_flops <= 0.25                            # the default bound, nearly used


def test_a_second_horizon_probes_the_smallest_size_longer_within_the_same_share():
    runs = plan_sweep(probe_study(lr_probe_long_factor=4), VOCAB)
    main = plan_sweep(probe_study(design=Design.isoflop), VOCAB)
    main_flops = sum(r.spec.flops["exact"] for r in main)
    assert len(runs) == 20                                            # 3 sizes x 5 LRs + the smallest again x 5
    smallest = min((r.spec for r in runs), key=lambda s: s.n_params).shape
    horizons = sorted({r.spec.tokens for r in runs if r.spec.shape == smallest})
    others = {r.spec.tokens for r in runs if r.spec.shape != smallest}
    assert len(horizons) == 2 and others == {horizons[0]}
    assert horizons[1] / horizons[0] == pytest.approx(4, rel=0.02)
    assert 0.15 < sum(r.spec.flops["exact"] for r in runs) / main_flops <= 0.25
    assert "the smallest size also 4x that" in probe_cost_line(runs[0].probe)
    with pytest.raises(UserError, match="lr_probe_long_factor"):
        plan_sweep(probe_study(lr_probe_long_factor=0.5), VOCAB)


def test_probe_over_its_share_is_refused_before_any_compute():
    with pytest.raises(UserError) as info:
        plan_sweep(probe_study(lr_probe_tokens=3_000_000), VOCAB)
    assert "lr_probe_max_share" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="cooldown_reuse=false"):
        plan_sweep(probe_study(cooldown_reuse=True), VOCAB)
    with pytest.raises(UserError, match="at least 4 distinct"):
        plan_sweep(probe_study(lr_probe_factors=[0.5, 1, 2]), VOCAB)


def synthetic_curve(lr_opt: float, k: float = 0.04, floor: float = 3.0, skew: float = 0.0, noise: float = 0.0,
                    factors=(0.25, 0.5, 1, 2, 4), centre: float | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    centre = centre or lr_opt
    lrs = [centre * f for f in factors]
    x = np.log(np.array(lrs) / lr_opt)
    losses = floor + k * x**2 + skew * x**3 + noise * rng.standard_normal(len(x))
    return lrs, list(losses)


@pytest.mark.parametrize("offset, skew, noise", [(1.0, 0.0, 0.0), (1.4, 0.0, 0.002), (0.7, 0.003, 0.002), (1.3, -0.003, 0.0)])
def test_fitted_optimum_of_a_synthetic_curve_within_ten_percent(offset, skew, noise):
    lrs, losses = synthetic_curve(0.01, skew=skew, noise=noise, centre=0.01 * offset)
    fit = fit_parabola(lrs, losses)
    assert fit["resolved"]
    assert fit["lr_opt"] == pytest.approx(0.01, rel=0.10)
    assert miss_cost(fit["curvature"]) == pytest.approx(0.04 * math.log(2) ** 2 / 3.0, rel=0.35)


def test_a_minimum_at_the_edge_is_not_resolved():
    lrs, losses = synthetic_curve(0.01, centre=0.001)   # every probed LR below the optimum
    assert not fit_parabola(lrs, losses)["resolved"]


def probe_curves_of(points, d_exponent: float) -> list[dict]:
    """Synthetic probe curves at (N non-embedding, D) points whose best LR is 0.3 N^-0.35 D^d_exponent."""
    curves = []
    for n, d in points:
        best = 0.3 * n**-0.35 * d**d_exponent
        lrs, losses = synthetic_curve(best, centre=best * 1.3)
        curves.append({"shape": {"n": n}, "tokens": d, "params": {"total": 2 * n, "non_embedding": n},
                       "flops": 6 * 2 * n * d, "rule": RULES["steplaw2025"].to_dict(),
                       "points": [{"lr": lr, "loss": loss, "status": "ok"} for lr, loss in zip(lrs, losses, strict=True)]})
    return curves


def test_power_law_through_the_optima_is_recovered():
    law = fit_lr_law(probe_curves_of([(2e4, 5e5), (6e4, 5e5), (2e5, 5e5)], 0.307), "synthetic")
    assert law["rule"]["lr_law"]["exp_n"] == pytest.approx(-0.35, abs=0.03)
    assert law["rule"]["lr_law"]["exp_d"] == 0.307 and "held at" in law["d_exponent"]
    assert law["rule"]["data_range"]["N"] == [2e4, 2e5]
    assert all(s["resolved"] for s in law["sizes"])


def test_a_second_horizon_measures_the_d_exponent():
    # the smallest size also at 4x the tokens, as sweep.lr_probe_long_factor=4 plans it
    law = fit_lr_law(probe_curves_of([(2e4, 5e5), (6e4, 5e5), (2e5, 5e5), (2e4, 2e6)], 0.12), "synthetic")
    assert law["d_exponent"] == "fitted"
    assert law["rule"]["lr_law"]["exp_d"] == pytest.approx(0.12, abs=0.03)
    assert law["rule"]["lr_law"]["exp_n"] == pytest.approx(-0.35, abs=0.03)
    assert law["rule"]["data_range"]["D"] == [5e5, 2e6]


def _setup(rule, lrs_by_n: dict) -> dict:
    runs = []
    for (n, budget), lr in lrs_by_n.items():
        runs.append({"lr": lr, "tokens": budget / (8 * n), "flops": budget, "n_total": 1.3 * n, "n_non_embedding": n,
                     "budget": budget})
    return {"hparam_rule": rule.to_dict(), "lr_runs": runs}


def test_the_verdict_knows_when_the_pilots_lr_distorts_the_law():
    from pipeline.fit.lr_check import hparam_check
    from pipeline.plan.lr_rules import HparamRule, PowerLaw, Scale

    rule = HparamRule(name="probe", citation="LR probe", lr_law=PowerLaw(0.002, exp_n=-0.2, exp_d=0.3),
                      batch_law=PowerLaw(0.58, exp_d=0.571), data_range={"N": (1e4, 3e5), "D": (2e5, 2e5)},
                      lr_curvature=0.05, lr_residual_sd=0.05)

    def rule_lr(n, budget):
        return rule.lr(Scale(flops=budget, n_params=1.3 * n, n_params_non_embedding=n, run_tokens=budget / (8 * n)))

    grid = [(n, b) for b in (5e11, 1e12) for n in (3e4, 6e4, 1.2e5)]
    tuned = hparam_check(_setup(rule, {k: rule_lr(*k) for k in grid}), sd_log=0.01)
    assert tuned["distorts"] is False and tuned["max_penalty"] == pytest.approx(0.05 * 0.05**2)
    # one size per budget 3x too high: 0.05 ln(3)^2 = 6% of the loss, far above a 1% noise, and unequal in the budget
    skewed = hparam_check(_setup(rule, {k: rule_lr(*k) * (3 if k[0] == 6e4 else 1) for k in grid}), sd_log=0.01)
    assert skewed["distorts"] is True and "unequally tuned" in skewed["warning"]
    assert skewed["budget_spread"] == pytest.approx(0.05 * math.log(3) ** 2, rel=1e-6)
    # a published rule far beyond its data, with no probe: the distortion is unknown and said so
    unprobed = hparam_check(_setup(RULES["steplaw2025"], {k: 0.01 for k in grid}), sd_log=0.01)
    assert unprobed["distorts"] == "unknown" and "sweep.design=lr_probe" in unprobed["warning"]
    from pipeline.fit.checks import verdict
    base = {"intervals": {"n_opt": [1e5, 1.1e5]}, "agreement": {"max_over_min": 1.05}, "minima": []}
    assert "hyperparameters" not in verdict({**base, "hparams": tuned})
    assert "hyperparameters distort the law" in verdict({**base, "hparams": skewed})
    assert "may distort the law" in verdict({**base, "hparams": unprobed})
