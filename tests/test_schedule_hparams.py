"""LR schedules (Chinchilla cosine, WSD with 1-sqrt cooldown) and the cited hyperparameter rules."""

from __future__ import annotations

import math

import pytest

from pipeline.plan.hparams import batch_tokens_for_compute, lr_for_compute, resolve_hyperparameters
from pipeline.plan.schedule import lr_multiplier


def _executed(kw) -> list[float]:
    """The multiplier of every step a run of kw["total_steps"] really executes (0 .. total - 1)."""
    return [lr_multiplier(step, **kw) for step in range(kw["total_steps"])]


@pytest.mark.parametrize("total, warmup", [(100, 10), (37, 0), (12, 11), (1000, 1)])
def test_cosine_over_every_executed_step_ends_exactly_at_the_minimum(total, warmup):
    kw = dict(schedule="cosine", total_steps=total, warmup_steps=warmup, min_lr_ratio=0.1)
    lrs = _executed(kw)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-12)       # the last step that runs is at the minimum
    assert min(lrs[warmup:]) == pytest.approx(0.1, abs=1e-12)
    if warmup:
        assert lrs[warmup - 1] == pytest.approx(1.0)         # warmup ends at the peak ...
        assert lrs[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    decay = lrs[warmup:]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))  # ... then strictly down to the minimum
    assert all(0.1 - 1e-12 <= v <= 1.0 for v in decay)


def test_cosine_midpoint_of_the_executed_decay():
    kw = dict(schedule="cosine", total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(59, **kw) == pytest.approx(0.55)  # end of step 59 = half of the 100 decay steps


@pytest.mark.parametrize("total, warmup, cooldown, floor", [(100, 10, 20, 0.0), (57, 3, 11, 0.1), (30, 0, 1, 0.05)])
def test_wsd_over_every_executed_step_is_flat_then_one_minus_sqrt_to_the_minimum(total, warmup, cooldown, floor):
    kw = dict(schedule="wsd", total_steps=total, warmup_steps=warmup, min_lr_ratio=floor, cooldown_steps=cooldown)
    lrs = _executed(kw)
    start = total - cooldown
    assert lrs[warmup:start] == [1.0] * (start - warmup)   # the stable phase
    expected = [floor + (1 - floor) * (1 - math.sqrt((s + 1 - start) / cooldown)) for s in range(start, total)]
    assert lrs[start:] == pytest.approx(expected)          # cooldown_steps decaying steps ...
    assert lrs[-1] == pytest.approx(floor, abs=1e-12)       # ... the last one at the minimum
    assert lrs[start] < 1.0


def test_wsd_branch_start_reaches_the_minimum_at_the_last_step():
    kw = dict(schedule="wsd", total_steps=50, warmup_steps=5, min_lr_ratio=0.1, cooldown_steps=0, decay_start_step=40)
    lrs = _executed(kw)
    assert lrs[39] == 1.0 and lrs[40] < 1.0 and lrs[-1] == pytest.approx(0.1)


def test_deepseek_rule_values():
    # DeepSeek LLM 2024 eq. 1 at C = 1e20: lr = 0.3118 * 1e20^-0.125, B = 0.2920 * 1e20^0.3271
    assert lr_for_compute(1e20) == pytest.approx(0.3118 * 1e20**-0.125)
    assert batch_tokens_for_compute(1e20, 2048) == round(0.2920 * 1e20**0.3271 / 2048) * 2048


def test_overrides_win_and_are_labelled():
    hp = resolve_hyperparameters(flops=1e12, n_params=50_000, run_tokens=3_000_000, seq_len=128, lr=1e-3)
    assert hp.lr == 1e-3 and hp.lr_source == "override"
    assert hp.batch_tokens % 128 == 0 and "Step Law" in hp.batch_source   # the default rule fills the rest
    assert hp.warmup_tokens == 50_000  # Porian et al. 2024: N tokens
    assert hp.beta2 == 0.999           # small batch
