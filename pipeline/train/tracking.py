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

Every W&B call is bounded (docs/reliability.md): it runs on a daemon thread and is abandoned after
`tracking.init_timeout_s` (init), LOG_TIMEOUT_S (log, summary) or `tracking.finish_timeout_s` (finish).
An unreachable server cost 60 s per run before (wandb's own init timeout). When an online init fails
or times out, the run switches to offline mode (its data is kept locally for `wandb sync`) and leaves
a marker `<wandb dir>/.offline-<sweep>.json`, so the other runs of the sweep -- in this process, in
node subprocesses or in SLURM tasks -- start offline at once instead of each paying the timeout. The
marker expires after OFFLINE_MARKER_TTL_S, when online mode is tried again.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.config.load import wandb_key_present
from pipeline.config.schema import TrackingConfig, WandbMode

LOG_TIMEOUT_S = 5.0           # log and summary only queue data in wandb's own process: seconds means it is stuck
OFFLINE_MARKER_TTL_S = 3600.0  # a sweep's runs stay offline this long after W&B was unreachable


class WandbTimeout(Exception):
    """A W&B call that did not return within its bound (abandoned on its daemon thread)."""


def bounded(call, timeout_s: float):
    """`call()` on a daemon thread, waited for at most `timeout_s`: its result, its exception, or
    WandbTimeout. An abandoned call never blocks the process's exit (daemon thread)."""
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err

    thread = threading.Thread(target=target, name="wandb-call", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WandbTimeout(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def offline_marker(wandb_dir: str | os.PathLike, group: str) -> Path:
    return Path(wandb_dir) / f".offline-{re.sub(r'[^A-Za-z0-9._-]', '_', group)}.json"


def offline_reason(marker: Path) -> str | None:
    """Why this sweep's runs are offline, if a fresh marker says so."""
    try:
        info = json.loads(marker.read_text())
        if time.time() - float(info["time"]) < OFFLINE_MARKER_TTL_S:
            return str(info.get("reason", "W&B unreachable"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def mark_offline(marker: Path, reason: str) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"time": time.time(), "reason": reason, "pid": os.getpid()}))
        os.replace(tmp, marker)
    except OSError:
        pass  # W&B is never on the critical path: without the marker the next run pays the timeout again


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
        self._stuck = False  # a call timed out: the rest are skipped (and counted), never queued behind it
        if self.mode == "disabled":
            return
        if jitter_s > 0:  # many array tasks starting at once hit W&B's rate limits
            time.sleep(random.uniform(0, jitter_s))
        # W&B's own banners and run summaries would drown the sweep's progress lines.
        os.environ.setdefault("WANDB_SILENT", "true")
        self._marker = offline_marker(wandb_dir, cfg.group or group)
        if self.mode == "online":
            reason = offline_reason(self._marker)
            if reason:
                self.mode = "offline"
                self.errors.append(f"offline: {reason} earlier in this sweep ({self._marker.name})")
        try:
            import wandb
        except Exception as err:  # noqa: BLE001
            self.errors.append(f"wandb.init failed ({_first_line(err)})")
            return
        try:
            os.makedirs(wandb_dir, exist_ok=True)
        except OSError as err:
            self.errors.append(f"wandb.init failed ({_first_line(err)})")
            return

        def init(mode: str, suffix: str = ""):
            return wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group or group, name=run_id,
                id=f"{run_id}-a{attempt}{suffix}", job_type="pilot", tags=list(cfg.tags), config=config,
                dir=wandb_dir, mode=mode, reinit="finish_previous",
                settings=wandb.Settings(init_timeout=cfg.init_timeout_s, console="off", x_disable_stats=True),
            )

        try:
            self._run = bounded(lambda: init(self.mode), cfg.init_timeout_s)
        except Exception as err:  # noqa: BLE001 - W&B must never stop training
            self.errors.append(f"wandb.init failed ({_first_line(err)})")
            if self.mode != "online":
                return
            # Unreachable: keep this run's data offline, and tell the sweep's other runs not to wait.
            mark_offline(self._marker, f"wandb.init online failed ({_first_line(err)})")
            self.mode = "offline"
            self.errors.append(f"offline for the rest of sweep {cfg.group or group} ({self._marker}); "
                               f"`wandb sync {wandb_dir}` uploads it later")
            try:
                # its own id: the abandoned online init may still hold `<run_id>-a<attempt>` in wandb's service
                self._run = bounded(lambda: init("offline", "-offline"), cfg.init_timeout_s)
            except Exception as err2:  # noqa: BLE001
                self.errors.append(f"wandb.init offline failed ({_first_line(err2)})")
                self._run = None

    def _call(self, what: str, call, timeout_s: float, where: str = "") -> bool:
        """Run one W&B call within its bound; False (and the error noted) when it failed or timed out."""
        if self._stuck:
            return False
        try:
            bounded(call, timeout_s)
            return True
        except WandbTimeout as err:
            self._stuck = True
            self.errors.append(f"{what} timed out{where} ({err}); no more W&B calls in this run")
            if self.mode == "online":
                mark_offline(self._marker, f"{what} timed out")
        except Exception as err:  # noqa: BLE001
            if len(self.errors) < 5 or what != "wandb.log":
                self.errors.append(f"{what} failed{where} ({type(err).__name__})")
        return False

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self._run is None:
            return
        run = self._run
        if not self._call("wandb.log", lambda: run.log(metrics, step=step), LOG_TIMEOUT_S, f" at step {step}"):
            self.dropped_logs += 1

    def summary(self, values: dict[str, Any]) -> None:
        if self._run is None:
            return
        run = self._run
        self._call("wandb summary", lambda: run.summary.update(values), LOG_TIMEOUT_S)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        run = self._run
        self._call("wandb.finish", lambda: run.finish(exit_code=exit_code), self._finish_timeout_s)
        self._run = None

    def report(self) -> dict:
        return {"mode": self.mode, "active": self._run is not None or not self.errors,
                "errors": self.errors, "dropped_logs": self.dropped_logs}
