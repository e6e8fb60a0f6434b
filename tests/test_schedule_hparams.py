"""LR schedules (Chinchilla cosine, WSD with 1-sqrt cooldown) and the cited hyperparameter rules."""

from __future__ import annotations

import math

import pytest

from pipeline.plan.hparams import batch_tokens_for_compute, lr_for_compute, resolve_hyperparameters
from pipeline.plan.schedule import lr_multiplier


def test_cosine_warms_up_then_decays_to_ten_percent_exactly_at_the_end():
    kw = dict(schedule="cosine", total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, **kw) == pytest.approx(1.0)
    assert lr_multiplier(10, **kw) == pytest.approx(1.0)
    assert lr_multiplier(55, **kw) == pytest.approx(0.55)  # half-way through the cosine: (1 + 0.1) / 2
    assert lr_multiplier(100, **kw) == pytest.approx(0.1)


def test_wsd_is_flat_then_one_minus_sqrt():
    kw = dict(schedule="wsd", total_steps=100, warmup_steps=10, min_lr_ratio=0.0, cooldown_steps=20)
    assert lr_multiplier(50, **kw) == 1.0
    assert lr_multiplier(79, **kw) == 1.0
    assert lr_multiplier(85, **kw) == pytest.approx(1 - math.sqrt(5 / 20))
    assert lr_multiplier(100, **kw) == pytest.approx(0.0)


def test_deepseek_rule_values():
    # DeepSeek LLM 2024 eq. 1 at C = 1e20: lr = 0.3118 * 1e20^-0.125, B = 0.2920 * 1e20^0.3271
    assert lr_for_compute(1e20) == pytest.approx(0.3118 * 1e20**-0.125)
    assert batch_tokens_for_compute(1e20, 2048) == round(0.2920 * 1e20**0.3271 / 2048) * 2048


def test_overrides_win_and_are_labelled():
    hp = resolve_hyperparameters(flops=1e12, n_params=50_000, run_tokens=3_000_000, seq_len=128, lr=1e-3)
    assert hp.lr == 1e-3 and hp.lr_source == "override"
    assert hp.batch_tokens % 128 == 0 and "DeepSeek" in hp.batch_source
    assert hp.warmup_tokens == 50_000  # Porian et al. 2024: N tokens
    assert hp.beta2 == 0.999           # small batch
