"""Claim a run so that two workers never train the same run at once.

`claim(run_dir)` creates `run_dir/.lock` with O_CREAT|O_EXCL (atomic on POSIX filesystems, NFS v3+
included) holding pid, host and SLURM job id; the training loop refreshes its time at every
checkpoint (`heartbeat`). A lock is stale -- and taken over -- when its process is gone (same host)
or its last heartbeat is older than `stale_after_s` (another host that died). docs/reliability.md:
a duplicate array task must not train the same key twice.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from pipeline.records import finished_record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(run_dir: Path, stale_after_s: float = 6 * 3600) -> dict | None:
    """The live holder of the run's lock, or None if unlocked or stale."""
    path = Path(run_dir) / ".lock"
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if info.get("host") == socket.gethostname():
        return info if _alive(int(info.get("pid", -1))) else None
    return info if time.time() - float(info.get("time", 0)) < stale_after_s else None


def claim(run_dir: Path, stale_after_s: float = 6 * 3600) -> bool:
    """Take the run's lock; False if another live worker holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(run_dir, stale_after_s)
            if holder is not None:  # ours already (a sweep claimed it for this process) or another live worker
                return holder.get("pid") == info["pid"] and holder.get("host") == info["host"]
            path.unlink(missing_ok=True)  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True
    return False


def claim_unfinished(run_dir: Path, run_id: str | None = None) -> tuple[str, dict | None]:
    """Claim a run for training unless it is finished: ("claimed", None), ("held", None) when another
    live worker has it, or ("finished", its record) -- then the lock is released again.

    The record is read under the lock, after the claim: a run that another worker finished between our
    planning and our claim (two sweeps of one study at once) is seen as finished, because a worker
    writes the final record before it releases the lock.
    """
    if not claim(run_dir):
        return "held", None
    record = finished_record(run_dir, run_id)
    if record is not None:
        release(run_dir)
        return "finished", record
    return "claimed", None


def release(run_dir: Path) -> None:
    path = Path(run_dir) / ".lock"
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (FileNotFoundError, json.JSONDecodeError):
        pass


def heartbeat(run_dir: Path) -> None:
    """Refresh the lock's time (called at every checkpoint) so a live run on another host never looks stale."""
    path = Path(run_dir) / ".lock"
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        info["time"] = time.time()
        tmp = path.with_name(f".lock.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)
