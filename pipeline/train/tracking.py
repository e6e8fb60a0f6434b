"""Weights & Biases, never on the critical path.

The run's own files (pipeline.records) are the source of truth; W&B mirrors them. Any failure of
W&B -- no account, no network, a crash mid-run -- is caught, recorded in the run's record under
`tracking`, and training carries on with identical local results (docs/reliability.md; "W&B never on the
critical path").

Mode: `WANDB_MODE` in the environment wins (so `WANDB_MODE=disabled` is honoured everywhere); else
`tracking.mode`; `auto` means online when an API key is configured and offline otherwise.
Offline mode ignores `resume`, and syncing two offline segments with one id overwrites the first,
so each attempt (first launch, each resume) gets its own W&B id `<run_id>-a<attempt>`, grouped by
the sweep and named after the run id.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from pipeline.config.load import wandb_key_present
from pipeline.config.schema import TrackingConfig, WandbMode


def resolve_mode(cfg: TrackingConfig) -> str:
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    mode = cfg.mode.value if isinstance(cfg.mode, WandbMode) else str(cfg.mode)
    if mode == "auto":
        return "online" if wandb_key_present() else "offline"
    return mode


class Tracker:
    """A thin, failure-proof W&B run: `log` and `finish` never raise."""

    def __init__(self, cfg: TrackingConfig, *, run_id: str, attempt: int, group: str, config: dict,
                 wandb_dir: str, jitter_s: float = 0.0, main_process: bool = True):
        # One W&B run per training run: on the main process only; the other ranks of a run log nothing.
        self.mode = resolve_mode(cfg) if main_process else "disabled"
        self.errors: list[str] = []
        self.dropped_logs = 0
        self._run = None
        self._finish_timeout_s = cfg.finish_timeout_s
        if self.mode == "disabled":
            return
        if jitter_s > 0:  # many array tasks starting at once hit W&B's rate limits
            time.sleep(random.uniform(0, jitter_s))
        # W&B's own banners and run summaries would drown the sweep's progress lines.
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            os.makedirs(wandb_dir, exist_ok=True)
            self._run = wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group or group, name=run_id,
                id=f"{run_id}-a{attempt}", job_type="pilot", tags=list(cfg.tags), config=config,
                dir=wandb_dir, mode=self.mode, reinit="finish_previous",
                settings=wandb.Settings(init_timeout=60, console="off", x_disable_stats=True),
            )
        except Exception as err:  # noqa: BLE001 - W&B must never stop training
            self.errors.append(f"wandb.init failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
            self._run = None

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self._run is None:
            return
        try:
            self._run.log(metrics, step=step)
        except Exception as err:  # noqa: BLE001
            self.dropped_logs += 1
            if len(self.errors) < 5:
                self.errors.append(f"wandb.log failed at step {step} ({type(err).__name__})")

    def summary(self, values: dict[str, Any]) -> None:
        if self._run is None:
            return
        try:
            self._run.summary.update(values)
        except Exception as err:  # noqa: BLE001
            self.errors.append(f"wandb summary failed ({type(err).__name__})")

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001
            self.errors.append(f"wandb.finish failed ({type(err).__name__})")
        self._run = None

    def report(self) -> dict:
        return {"mode": self.mode, "active": self._run is not None or not self.errors,
                "errors": self.errors, "dropped_logs": self.dropped_logs}
