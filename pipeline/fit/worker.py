"""Worker processes beside the fit command: half of each large batched L-BFGS, and every figure.

Why: on Chinchilla's 240 points `python -m pipeline.fit` spent ~2.2-3 s on one core of an idle 2-core machine:
imports ~0.5 s (matplotlib's ~0.3 of them), the config 0.2 s, the law selection's fits 0.9-1.1 s, five figures
0.7-0.8 s, the decision and report 0.2 s (docs/fit_benchmark.md). A second core can take matplotlib and the figures
off that path and run half of every large fit batch. So the command forks its workers when it starts (PROCESSES;
they inherit every module imported so far): a fit worker, ready at once, takes half of each large batched L-BFGS
(pipeline/fit/lbfgs.py); two figure workers import matplotlib at low priority while the command fits, and draw once
it has decided. A job names its function as "module:function", so the command never imports what only the workers
need (matplotlib: tests/test_fit_worker.py checks it).

Only the fit command starts them (its `__main__` block): a library call, a test or a sweep round finds none and runs
every job in its own process (`RunHere`, the same functions). None either where fork is missing or only one core is
ours, or with PIPELINE_FIT_WORKER=0. A worker that dies (killed, out of memory) costs time, never the answer: its
pending jobs run in the parent.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import queue
import signal
from collections.abc import Iterator
from multiprocessing import connection

# Imported by the worker before its first job: what the figures need (matplotlib is ~0.3 s of the command's imports).
FIGURE_MODULES = ("pipeline.fit.plots", "pipeline.decide.report_figures", "pipeline.decide.target_figures")
# The figure workers run at this niceness (Linux: ~1.5% of a core against a normal process): their imports of
# matplotlib then use only the CPU the command and the fit worker leave, which the fit's serial refits do; when the
# command has decided and only waits, they get the cores (the three fit figures are 0.15-0.22 s each).
FIGURE_NICENESS = 19
# (role, modules imported before the first job, niceness) of each worker: one takes half of each large fit batch
# while the command runs the other half; two draw the figures, two at a time, once the command has decided.
PROCESSES = (("fit", (), 0), ("figures", FIGURE_MODULES, FIGURE_NICENESS), ("figures", FIGURE_MODULES, FIGURE_NICENESS))
# How long a result may take before the parent checks the worker is still alive (then keeps waiting), and an idle
# worker waits before it checks its parent is.
POLL_SECONDS = 1.0

_active: Worker | None = None


def call(target: str, args: tuple = (), kwargs: dict | None = None):
    """Run the function named "package.module:function" with these arguments."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(*args, **(kwargs or {}))


def _serve(jobs, results, warm: tuple[str, ...], parent: int, niceness: int) -> None:
    """The worker's loop: warm imports, then each job in order; its value or its exception goes back on `results` (a
    pipe: sent whole or, when it cannot be, not at all). It ends on the parent's stop (None) or when the parent is
    gone (killed: no one would read its results)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's: it stops the worker
    os.nice(niceness)
    for name in warm:
        with contextlib.suppress(Exception):         # a module that fails to import fails its job, with its error
            importlib.import_module(name)
    while True:
        try:
            job = jobs.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if job is None:
            return
        ticket, target, args, kwargs = job
        try:
            outcome = (True, call(target, args, kwargs))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent, which raises it
            outcome = (False, err)
        try:
            results.send((ticket, *outcome))
        except Exception as err:  # noqa: BLE001 - a value or exception that cannot travel goes back as text
            results.send((ticket, False, RuntimeError(f"{target}: {type(outcome[1]).__name__} could not be sent "
                                                      f"back ({err}): {outcome[1]}")))


def _unwrap(ok: bool, value):
    """A job's value, or its exception raised here."""
    if not ok:
        raise value
    return value


class Worker:
    """Forked processes, each running its named jobs in order (module doc); `submit` gives a job to the process of
    its role with the fewest pending and returns a ticket, `result` the job's value."""

    def __init__(self, processes: tuple[tuple[str, tuple[str, ...], int], ...] = PROCESSES):
        context = multiprocessing.get_context("fork")
        # Jobs on queues (a put never blocks this process), results on pipes (the worker's send fails whole, never
        # half; this process waits on all of them at once).
        self._roles = [role for role, _, _ in processes]
        self._jobs = [context.Queue() for _ in processes]
        pipes = [context.Pipe(duplex=False) for _ in processes]
        self._results = [read for read, _ in pipes]
        self._processes = [
            context.Process(target=_serve, args=(jobs, write, warm, os.getpid(), niceness), daemon=True,
                            name=f"pipeline-fit-{role}-{i}")
            for i, (jobs, (_, write), (role, warm, niceness)) in enumerate(zip(self._jobs, pipes, processes, strict=True))]
        for process in self._processes:
            process.start()
        for _, write in pipes:
            write.close()        # the workers' ends: only they write
        self._pending: dict[int, tuple] = {}        # ticket -> (process, the job): rerun here if that process is lost
        self._done: dict[int, tuple[bool, object]] = {}
        self._next = 0

    def submit(self, role: str, target: str, *args, **kwargs) -> int:
        ticket, self._next = self._next, self._next + 1
        load = {i: sum(1 for p, _ in self._pending.values() if p == i)
                for i, mine in enumerate(self._roles) if mine == role}
        process = min(load, key=load.get)
        self._pending[ticket] = (process, (target, args, kwargs))
        self._jobs[process].put((ticket, target, args, kwargs))
        return ticket

    def result(self, ticket: int):
        """The job's value, or its exception raised here; the job runs here if its process is gone."""
        process, job = self._pending[ticket]
        while ticket not in self._done and self._processes[process].is_alive():
            for conn in connection.wait(self._results, timeout=POLL_SECONDS):
                try:
                    got, ok, value = conn.recv()
                except (EOFError, OSError):     # that worker is gone: its jobs run here
                    self._results.remove(conn)
                    continue
                self._done[got] = (ok, value)
        del self._pending[ticket]
        return _unwrap(*self._done.pop(ticket)) if ticket in self._done else call(*job)

    def close(self) -> None:
        """Stop the processes: at once when nothing is pending; after their jobs (a figure half written) otherwise."""
        for i, (jobs, process) in enumerate(zip(self._jobs, self._processes, strict=True)):
            if process.is_alive() and any(p == i for p, _ in self._pending.values()):
                jobs.put(None)
                process.join(timeout=30)
            if process.is_alive():
                process.terminate()
            process.join()
        for jobs in self._jobs:
            jobs.close()
            jobs.cancel_join_thread()   # nothing left to deliver; never block the exit on a queue's feeder thread
        for conn in self._results:
            conn.close()


class RunHere:
    """The same interface without worker processes: each job runs when submitted."""

    def __init__(self):
        self._done: dict[int, tuple[bool, object]] = {}
        self._next = 0

    def submit(self, role: str, target: str, *args, **kwargs) -> int:
        ticket, self._next = self._next, self._next + 1
        try:
            self._done[ticket] = (True, call(target, args, kwargs))
        except Exception as err:  # noqa: BLE001 - raised by `result`, where the worker's would be
            self._done[ticket] = (False, err)
        return ticket

    def result(self, ticket: int):
        return _unwrap(*self._done.pop(ticket))


def _cores() -> int:
    if os.environ.get("PIPELINE_FIT_WORKER", "1") == "0" or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def started(processes: tuple[tuple[str, tuple[str, ...], int], ...] = PROCESSES) -> Iterator[Worker | None]:
    """Worker processes for the duration of the block (None where they cannot help: module doc), found by `active()`."""
    global _active
    worker = Worker(processes) if _cores() >= 2 else None
    _active = worker
    try:
        yield worker
    finally:
        _active = None
        if worker is not None:
            worker.close()


def active() -> Worker | None:
    """The worker the fit command started, in its own process; None anywhere else (its worker included)."""
    return _active


def runner() -> Worker | RunHere:
    """Where jobs go: the worker when there is one, else this process."""
    return _active or RunHere()


def run(target: str, *args, **kwargs):
    """One figure job, waited for: in a worker when there is one (matplotlib stays out of this process)."""
    jobs = runner()
    return jobs.result(jobs.submit("figures", target, *args, **kwargs))
