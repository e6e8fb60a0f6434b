"""The process's preemption flag: SIGTERM / SIGUSR1 set it, the training loop acts on it.

Installed once per process, as early as possible (`python -m pipeline.train` does it before it
imports torch, the local sweep before its first run), so a signal that lands during start-up is
never fatal (it used to kill the run with 138/143, sometimes before its record existed; issue 18, #4):

- by default a signal only sets the flag. The loop checks it at its start and at every step
  boundary (agreed across ranks, pipeline/train/distributed.py): it saves a checkpoint when it has
  trained anything new, records the run `preempted` and exits 75 (EX_TEMPFAIL, "try again later");
- inside `interruptible()` -- the slow start-up calls that may take minutes or hang (preparing the
  corpus, connecting to W&B) -- the first signal also raises `Preempted` at once, so the process
  does not sit out SLURM's grace period in a call that cannot checkpoint anything.

This module imports nothing heavy on purpose.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):  # noqa: N818 - what happened, not an error: the run exits 75 and is relaunched
    """A stop signal arrived during an interruptible start-up call (nothing was trained)."""

    def __init__(self, signal_name: str):
        super().__init__(f"received {signal_name} during start-up")
        self.signal_name = signal_name


class StopFlag:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict | None = None
        self._raise = False
        self._owner_pid: int | None = None

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
        self._owner_pid = os.getpid()
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
        if os.getpid() != self._owner_pid:
            # A child forked from this process (datasets' reader pool) inherits the handler, but the flag is
            # the parent's: the child must die on SIGTERM as usual. Pool.terminate() stops its workers with
            # SIGTERM and then waits for them, so a worker that only set a flag hung the parent for good.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signal_name is not None:  # the first signal names the stop; repeats (SLURM sends several) change nothing
            return
        self.signal_name = signal.Signals(signum).name
        if self._raise:
            self._raise = False
            raise Preempted(self.signal_name)

    @contextmanager
    def interruptible(self):
        """Within this block the first stop signal raises `Preempted` (the flag is set too)."""
        if self.requested:
            raise Preempted(self.signal_name)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


# One per process: a signal is for the whole process, whichever run it is training.
STOP = StopFlag()
