"""The LR/batch rules (pipeline/plan/hparams.py, lr_rules.py): values at known points, selection, records."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.errors import UserError
from pipeline.plan.hparams import DEFAULT_RULE, RULES, resolve_hyperparameters
from pipeline.plan.lr_rules import HparamRule, PowerLaw, Scale, load_rule


def test_steplaw_values_at_known_points():
    # Li et al. 2025 (Step Law): lr = 1.79 N^-0.713 D^0.307, batch = 0.58 D^0.571 tokens, N non-embedding.
    hp = resolve_hyperparameters(flops=6e20, n_params=1.1e9, n_params_non_embedding=1e9, run_tokens=10**11,
                                 seq_len=2048, rule="steplaw2025")
    assert hp.lr == pytest.approx(1.79 * 1e9**-0.713 * 1e11**0.307)   # 1.63e-3
    assert hp.lr == pytest.approx(1.6325e-3, rel=1e-3)
    assert hp.batch_tokens == round(0.58 * 1e11**0.571 / 2048) * 2048  # 3.0M tokens
    assert hp.rule == "steplaw2025" and hp.extrapolation_decades == 0.0
    assert "non-embedding" in hp.lr_source and "Step Law" in hp.batch_source


def test_deepseek_values_and_the_default():
    hp = resolve_hyperparameters(flops=1e20, n_params=1e9, run_tokens=10**10, seq_len=2048, rule="deepseek2024")
    assert hp.lr == pytest.approx(0.3118 * 1e20**-0.125)
    assert hp.rule == "deepseek2024" and hp.extrapolation_decades == pytest.approx(math.log10(1e20 / 2e19), abs=0.01)
    assert DEFAULT_RULE == "steplaw2025" and set(RULES) == {"steplaw2025", "deepseek2024"}


def test_old_call_still_works_and_says_which_n_it_used():
    # i23a's full-run call: flops, n_params (total), run_tokens, seq_len only.
    hp = resolve_hyperparameters(flops=1e12, n_params=100_000, run_tokens=2_000_000, seq_len=128)
    assert hp.lr == pytest.approx(1.79 * 1e5**-0.713 * 2e6**0.307)
    assert "N total: the non-embedding count was not given" in hp.lr_source
    # 3.3 decades below Step Law's smallest N (2.1e8) and D (4e9): recorded with the run
    assert hp.extrapolation_decades == pytest.approx(math.log10(2.1e8 / 1e5), abs=0.01)
    assert hp.to_dict()["rule_law"]["name"] == "steplaw2025"


def test_calibrated_rule_from_a_file(tmp_path):
    rule = HparamRule(name="probe", citation="LR probe probe", lr_law=PowerLaw(0.5, exp_n=-0.4, exp_d=0.307),
                      batch_law=PowerLaw(0.58, exp_d=0.571), data_range={"N": (1e4, 2e5), "D": (2e5, 2e5)},
                      lr_curvature=0.02)
    path = tmp_path / "lr_law.json"
    path.write_text(json.dumps({"rule": rule.to_dict()}))
    loaded = load_rule(str(path))
    assert loaded == rule
    scale = Scale(flops=1e12, n_params=8e4, n_params_non_embedding=5e4, run_tokens=2e6)
    assert loaded.lr(scale) == pytest.approx(0.5 * 5e4**-0.4 * 2e6**0.307)
    assert loaded.decades_beyond(scale) == pytest.approx(1.0)       # D 2e6 vs the probe's 2e5
    assert loaded.lr_loss_cost(2.0) == pytest.approx(0.02 * math.log(2) ** 2)


@pytest.mark.parametrize("rule, text", [("adam2020", "unknown"), ("/nonexistent/lr_law.json", "no such file")])
def test_bad_rules_are_one_line_errors(rule, text):
    with pytest.raises(UserError) as info:
        load_rule(rule)
    assert text in str(info.value) and "\n" not in str(info.value)
