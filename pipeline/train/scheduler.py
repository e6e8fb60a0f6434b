"""What the SLURM scheduler says about jobs: the run lease asks whether its holder still runs, and the
sweep's status shows each run's job state next to its record's.

`squeue` answers for every job the controller still remembers (MinJobAge, 300 s by default, after it
ended); `sacct` answers for older ones on clusters with accounting (slurmdbd). Neither is needed
off a cluster: without `squeue` on PATH every answer is None ("cannot ask"), and callers fall back to
what they know locally.
"""

from __future__ import annotations

import shutil
import subprocess

QUEUE_FIELDS = ["JobID", "ArrayJobID", "ArrayTaskID", "State", "Comment", "RestartCnt"]
NOT_IN_QUEUE = "NOT_IN_QUEUE"   # the controller answered and does not know the job (it ended long ago)
TIMEOUT_S = 15


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (subprocess.TimeoutExpired, OSError):
        return None


def job_state(job_id: str) -> str | None:
    """The job's state (RUNNING, PENDING, CANCELLED, ...), NOT_IN_QUEUE, or None when nobody can be asked."""
    done = _run(["squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T"])
    if done is None:
        return None
    if done.returncode != 0:
        # "Invalid job id specified": the controller no longer knows it. Anything else (controller
        # down, a timeout): we cannot tell, and must not call a live job dead.
        return NOT_IN_QUEUE if "Invalid job id" in done.stderr else None
    states = done.stdout.split()
    return states[0] if states else NOT_IN_QUEUE


def queue_rows(fields: list[str], *args: str) -> list[list[str]] | None:
    """`squeue --states=all --Format` rows of these fields (e.g. ["JobID", "State", "RestartCnt"]), or None
    when squeue cannot be asked. A `|` after each field's name makes squeue print it unpadded, `|`-separated."""
    done = _run(["squeue", "-h", "--states=all", "-O", ",".join(f"{f}:|" for f in fields), *args])
    if done is None or done.returncode != 0:
        return None
    return [line.split("|")[:len(fields)] for line in done.stdout.splitlines() if line.strip()]


def accounting_rows(job_name: str, days: int = 30) -> list[list[str]] | None:
    """Rows like `queue_rows(QUEUE_FIELDS)` -- job id, array job id, task, state, comment, restarts ("":
    sacct does not count them) -- from `sacct` for the jobs named `job_name`, or None without accounting."""
    done = _run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,JobID,State,Comment", f"--name={job_name}",
                 f"--starttime=now-{days}days"])
    if done is None or done.returncode != 0:
        return None
    rows = []
    for line in done.stdout.splitlines():
        raw, job, state, comment = (line.split("|") + ["", "", "", ""])[:4]
        array_id, _, task = job.partition("_")
        if raw.isdigit():  # not a job step
            rows.append([raw, array_id, task or "N/A", state, comment, ""])
    return rows
