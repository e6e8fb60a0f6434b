"""Terminal progress for one run: which run, step, loss, tokens/s, ETA (tqdm when on)."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, *, label: str, total_steps: int, start_step: int, batch_tokens: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=label, unit="step", file=sys.stderr,
                             dynamic_ncols=True, mininterval=1.0, leave=True)
        self._last = start_step
        self._batch_tokens = batch_tokens

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._last)
        self._last = step
        self._bar.set_postfix_str(f"loss {loss:.3f} | {tokens_per_s / 1e3:.0f}k tok/s", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
