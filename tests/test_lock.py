"""The run lease (pipeline/train/lock.py): concurrent claimers never both win, a dead holder's lease is
taken over at once, a requeued SLURM task takes over its own run, and a held run names its holder in
words. The same lease against a real scheduler: tests/test_slurm_cluster.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipeline.train import lock
from pipeline.train.lock import claim, claim_unfinished, describe, heartbeat, lock_holder, read_lease, release

CLAIMERS = 6


def stale_lease(run_dir, **fields) -> None:
    """A lease whose holder died: a pid that cannot exist on this host."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345, "time": 0,
                                               **fields}))


def _claim_in_thread(run_dir, barrier, wins) -> None:
    barrier.wait()
    won = claim(run_dir)
    wins.append(won)
    barrier.wait()  # the winner stays alive (and holding) until every claimer has tried


@pytest.mark.lock
@pytest.mark.parametrize("start", ["free", "stale"])
def test_concurrent_threads_never_both_win(tmp_path, start):
    run_dir = tmp_path / "run"
    if start == "stale":
        stale_lease(run_dir)
    barrier, wins = threading.Barrier(CLAIMERS), []
    threads = [threading.Thread(target=_claim_in_thread, args=(run_dir, barrier, wins)) for _ in range(CLAIMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(wins) == [False] * (CLAIMERS - 1) + [True]


def _claim_in_process(run_dir, barrier, results) -> None:
    barrier.wait()
    results.put(claim(run_dir))
    barrier.wait()


@pytest.mark.lock
@pytest.mark.parametrize("start", ["free", "stale"])
def test_concurrent_processes_never_both_win(tmp_path, start):
    run_dir = tmp_path / "run"
    if start == "stale":
        stale_lease(run_dir)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(CLAIMERS), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(run_dir, barrier, results)) for _ in range(CLAIMERS)]
    for p in procs:
        p.start()
    wins = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sorted(wins) == [False] * (CLAIMERS - 1) + [True]
    assert not (run_dir / ".lock").exists() or lock_holder(run_dir) is None  # the winner has exited


def test_a_dead_or_reused_pid_is_stale_and_a_live_one_holds(tmp_path):
    run_dir = tmp_path / "run"
    stale_lease(run_dir)
    assert lock_holder(run_dir) is None and claim(run_dir)
    assert read_lease(run_dir)["took_over"].startswith("pid 4206649 on")
    heartbeat(run_dir)
    release(run_dir)
    assert read_lease(run_dir) is None
    # Our own pid, but the lease says the process started at another time: a reused pid, not the holder.
    stale_lease(run_dir, pid=os.getpid(), pid_start="1", thread=0)
    assert lock_holder(run_dir) is None
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale_lease(run_dir, pid=holder.pid, pid_start=lock._start_time(holder.pid))
        assert not claim(run_dir)
        state, lease = claim_unfinished(run_dir)
        assert state == "held" and describe(lease) == f"pid {holder.pid} on {socket.gethostname()}"
    finally:
        holder.kill()
        holder.wait()
    assert claim(run_dir)


def test_a_requeued_slurm_task_takes_over_its_own_run_from_another_node(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # The lease its first life wrote on another node, killed there; the scheduler cannot be asked here.
    asked = []
    monkeypatch.setattr(lock, "job_state", lambda job_id: asked.append(job_id))  # None: cannot ask
    stale_lease(run_dir, host="node-07", pid=4242, time=time.time(), slurm_job_id="812", slurm_array_job_id="800",
                slurm_array_task_id="12", slurm_restart_count=0)
    monkeypatch.setenv("SLURM_JOB_ID", "999")
    assert not claim(run_dir)  # another job, seen 0 s ago and the scheduler silent: live by its heartbeat
    assert asked == ["800_12"]  # an array task is asked for by its array name (its bare id may name the array)
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert claim(run_dir)  # the same job, restarted: its own previous life
    lease = read_lease(run_dir)
    assert lease["slurm_restart_count"] == 1 and lease["took_over"] == (
        "SLURM job 800_12, restart 0, pid 4242 on node-07")


@pytest.mark.parametrize("state, live", [("RUNNING", True), ("COMPLETING", True), ("PENDING", False),
                                         ("CANCELLED", False), ("FAILED", False), ("NOT_IN_QUEUE", False)])
def test_another_jobs_lease_lives_as_long_as_the_scheduler_says_it_runs(tmp_path, monkeypatch, state, live):
    run_dir = tmp_path / "run"
    asked = []
    monkeypatch.setattr(lock, "job_state", lambda job_id: asked.append(job_id) or state)
    stale_lease(run_dir, host="node-07", time=time.time(), slurm_job_id="812", slurm_restart_count=0)
    assert claim(run_dir) is not live and asked == ["812"]  # no array: the job id names it
