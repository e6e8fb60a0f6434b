"""Learning-rate schedules as pure functions of the optimizer step.

Because the multiplier depends on the step alone, resuming needs only the step counter -- there
is no scheduler object whose state could be forgotten (docs/reliability.md: a missing scheduler state
shows only two steps after resume).

* cosine  -- Hoffmann et al. 2022 (Chinchilla), sec. 3.1 and App. B: linear warmup, then one cosine
             cycle over *exactly* the run's steps, decaying to `min_lr_ratio` (10%) of the peak.
             A cycle longer than the run biases the loss upwards (their Fig. A1).
* wsd      -- warmup-stable-decay, Hägele et al. 2024 ("Scaling laws and compute-optimal training
             beyond fixed training durations"), sec. 3: constant LR, then a cooldown over the last
             `cooldown_steps` shaped (1 - sqrt(progress)), which they found best, to `min_lr_ratio`.
* constant -- warmup then constant (debugging).

Which step reaches the minimum. A run of `total_steps` executes steps 0 .. total_steps - 1, so a
schedule whose progress is (step - start) / (total_steps - start) never reaches its end: the last
step would train at a learning rate above `min_lr_ratio` (by 1 - cos(pi / span) of the range). As
torchtitan's "virtual last step", each step's multiplier is the schedule evaluated at the END of the
step, progress = (step + 1 - start) / (total_steps - start): the decay's first step is already below
the peak (the last warmup step sits at it), and the last executed step, total_steps - 1, is exactly
at `min_lr_ratio`. A cooldown of `cooldown_steps` therefore takes that many decaying steps.
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, *, schedule: str, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float, cooldown_steps: int = 0, decay_start_step: int | None = None) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based) of a run of `total_steps`.

    `decay_start_step` (wsd only) lets a cooldown branch start from a checkpoint of a longer
    stable phase: the decay runs from `decay_start_step` to `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step + 1 - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        start = total_steps - cooldown_steps if decay_start_step is None else decay_start_step
        if step < start:
            return 1.0
        progress = min(1.0, (step + 1 - start) / max(1, total_steps - start))
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - math.sqrt(progress))
    raise ValueError(f"unknown schedule {schedule!r}")
