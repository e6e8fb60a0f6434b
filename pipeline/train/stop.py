"""The process's preemption flag: SIGTERM / SIGUSR1 set it, the training loop acts on it.

Installed once per process, as early as possible (`python -m pipeline.train` does it before it
imports torch, the local sweep before its first run), so a signal that lands during start-up --
while the corpus is prepared, accelerate initialises or W&B connects -- is remembered instead of
killing the process with 138/143. The loop checks the flag at every step boundary (agreed across
ranks, pipeline/train/distributed.py) and at its start: it saves a checkpoint when it has trained
anything new, records the run `preempted` and exits 75 (EX_TEMPFAIL, "try again later").

This module imports nothing heavy on purpose.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict | None = None

    @property
    def installed(self) -> bool:
        return self._previous is not None

    def install(self) -> bool:
        """Catch the stop signals; True if this call installed them (so its caller uninstalls them).

        Only the main thread may set handlers: elsewhere (inside some launchers) signals are left alone.
        """
        if self.installed or threading.current_thread() is not threading.main_thread():
            return False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return True

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers (an in-process caller, e.g. a test, must die on SIGTERM)."""
        for sig, handler in (self._previous or {}).items():
            signal.signal(sig, handler)
        self._previous = None

    def clear(self) -> None:
        """The run acted on the signal (checkpoint saved, record `preempted`)."""
        self.signal_name = None

    def _handle(self, signum, _frame) -> None:
        if self.signal_name is None:  # the first signal names the stop; repeats (SLURM sends several) change nothing
            self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


# One per process: a signal is for the whole process, whichever run it is training.
STOP = StopFlag()
