"""The run's lease: one worker trains a run at a time, and a dead worker's lease is taken over at once.

`claim(run_dir)` writes `run_dir/.lock`, a lease naming its holder: the SLURM job (job id, array job and
task, restart count) when it runs in one, and always the host, pid (with the process's start time, so
a reused pid is not mistaken for the holder) and thread.

Atomic: every claim, takeover and release is decided under an exclusive `flock` on
`run_dir/.lock.guard` (the kernel drops it if the process dies; Linux's NFS client maps it to a lock
the server holds), and a lease is written to a temporary file and renamed into place, so a reader --
the sweep's status, which takes no lock -- never sees a half-written one.

Whether the holder still lives -- asked of whoever knows:
  * a SLURM job's lease: the scheduler (`squeue`, pipeline/train/scheduler.py). The job is live while
    it runs (RUNNING, COMPLETING, SUSPENDED, ...); once it is pending again, finished, failed, cancelled
    or forgotten, its lease is stale. The same job with a lower restart count is the caller's own
    previous life (SLURM requeued it after a preemption, `scontrol requeue` or a node failure, possibly
    onto another node): the requeued task takes its run over.
  * a local process: on its own host, whether the pid runs (and started when the lease says).
  * otherwise (another host, or the scheduler cannot be asked): the last heartbeat, refreshed at every
    checkpoint, younger than `stale_after_s`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from pipeline.records import finished_record
from pipeline.train.scheduler import job_state

LEASE = ".lock"
GUARD = ".lock.guard"
# SLURM states in which the job's processes may still run (squeue(1), JOB STATE CODES).
LIVE_JOB_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "RESIZING",
                   "STAGE_OUT"}
SLURM_KEYS = ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id", "slurm_restart_count")


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _pid_alive(pid: int, started: str | None) -> bool:
    if Path("/proc/self/stat").exists():
        now = _start_time(pid)
        return now is not None and (started is None or now == started)
    try:  # no /proc (macOS): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_worker() -> dict:
    """Who is claiming: host, pid, process start time, thread, and the SLURM job if any."""
    env = os.environ
    slurm = {"slurm_job_id": env.get("SLURM_JOB_ID"), "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
             "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
             "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT") or 0) if env.get("SLURM_JOB_ID") else None}
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
            "thread": threading.get_ident(), **slurm}


def is_mine(lease: dict, me: dict | None = None) -> bool:
    me = me or this_worker()
    return all(lease.get(k) == me[k] for k in ("host", "pid", "pid_start", "thread", "slurm_job_id",
                                                  "slurm_restart_count"))


def slurm_job(lease: dict) -> str | None:
    """The lease's job as squeue, scancel and scontrol name it: "800_12" for an array task (its bare job id
    can equal the array's own, which names every task of the array), else the job id; None off SLURM."""
    if lease.get("slurm_array_job_id") and lease.get("slurm_array_task_id") is not None:
        return f"{lease['slurm_array_job_id']}_{lease['slurm_array_task_id']}"
    return lease.get("slurm_job_id")


def describe(lease: dict | None) -> str:
    """A lease in words, e.g. "SLURM job 800_12, restart 1, pid 4242 on node-07"."""
    if not lease:
        return "nobody"
    where = f"pid {lease.get('pid')} on {lease.get('host')}"
    job = slurm_job(lease)
    return f"SLURM job {job}, restart {lease.get('slurm_restart_count') or 0}, {where}" if job else where


def read_lease(run_dir: Path) -> dict | None:
    try:
        lease = json.loads((Path(run_dir) / LEASE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return lease if isinstance(lease, dict) else None


def holder_alive(lease: dict, me: dict | None = None, stale_after_s: float = 6 * 3600) -> bool:
    """Whether the lease's holder may still be training (the module doc lists who is asked)."""
    me = me or this_worker()
    job = lease.get("slurm_job_id")
    if job and job == me["slurm_job_id"]:
        if int(lease.get("slurm_restart_count") or 0) < me["slurm_restart_count"]:
            return False  # this task's own previous life: SLURM requeued it, so it has ended
        if lease.get("host") == me["host"]:
            return _pid_alive(int(lease.get("pid", -1)), lease.get("pid_start"))
        return True  # the same job, another node: a sibling task of one allocation
    if job:
        state = job_state(slurm_job(lease))
        if state is not None:
            return state in LIVE_JOB_STATES
    elif lease.get("host") == me["host"]:
        return _pid_alive(int(lease.get("pid", -1)), lease.get("pid_start"))
    return time.time() - float(lease.get("time", 0)) < stale_after_s


def lock_holder(run_dir: Path, stale_after_s: float = 6 * 3600) -> dict | None:
    """The live holder's lease, or None if the run is not leased or its holder is gone."""
    lease = read_lease(run_dir)
    return lease if lease is not None and holder_alive(lease, stale_after_s=stale_after_s) else None


@contextlib.contextmanager
def _guard(run_dir: Path):
    """Exclusive for every claimer of this run: threads (each opens its own file) and processes alike."""
    with open(Path(run_dir) / GUARD, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_lease(run_dir: Path, lease: dict) -> None:
    tmp = Path(run_dir) / f"{LEASE}.{lease['pid']}.{lease['thread']}.tmp"
    tmp.write_text(json.dumps(lease))
    os.replace(tmp, Path(run_dir) / LEASE)


def claim(run_dir: Path, stale_after_s: float = 6 * 3600) -> bool:
    """Take the run's lease: True if it is ours now (or was already), False if a live worker holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    me = this_worker()
    with _guard(run_dir):
        lease = read_lease(run_dir)
        if lease is not None and not is_mine(lease, me) and holder_alive(lease, me, stale_after_s):
            return False
        _write_lease(run_dir, {**me, "time": time.time(),
                               **({"took_over": describe(lease)} if lease and not is_mine(lease, me) else {})})
    return True


def claim_unfinished(run_dir: Path, run_id: str | None = None) -> tuple[str, dict | None]:
    """Claim a run for training unless it is finished: ("claimed", None), ("held", the holder's lease)
    when another live worker has it, or ("finished", its record) -- then the lease is released again.

    The record is read under the lease, after the claim: a run that another worker finished between our
    planning and our claim (two sweeps of one study at once) is seen as finished, because a worker
    writes the final record before it releases the lease.
    """
    if not claim(run_dir):
        return "held", read_lease(run_dir)
    record = finished_record(run_dir, run_id)
    if record is not None:
        release(run_dir)
        return "finished", record
    return "claimed", None


def release(run_dir: Path) -> None:
    """Give the lease back if it is ours (a taken-over lease belongs to its new holder)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    with _guard(run_dir):
        lease = read_lease(run_dir)
        if lease is not None and is_mine(lease):
            (run_dir / LEASE).unlink(missing_ok=True)


def heartbeat(run_dir: Path) -> None:
    """Refresh the lease's time (called at every checkpoint): a live run on a host nobody can ask about
    never looks stale."""
    run_dir = Path(run_dir)
    with _guard(run_dir):
        lease = read_lease(run_dir)
        if lease is not None and is_mine(lease):
            _write_lease(run_dir, {**lease, "time": time.time()})
