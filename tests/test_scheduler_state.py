"""The dry run's scheduler column (pipeline/sweep/scheduler_state.py) from squeue/sacct rows: array task i
is the i-th run of the submission its comment names; the newest job of a run wins. The same against a
real cluster: tests/test_slurm_cluster.py (a cancelled task shows CANCELLED)."""

from __future__ import annotations

import json

from pipeline.sweep import scheduler_state
from pipeline.sweep.scheduler_state import submission_tag, task_indices, with_scheduler_states


def test_task_ids_as_slurm_prints_them():
    assert task_indices("3") == [3]
    assert task_indices("[0-3,5%2]") == [0, 1, 2, 3, 5]
    assert task_indices("0-1%8") == [0, 1]
    assert task_indices("N/A") == [0]  # a single run is submitted as a plain job


def test_each_run_shows_its_newest_jobs_state(tmp_path, monkeypatch):
    sweep = tmp_path / "cpu_tiny"
    (sweep / "slurm").mkdir(parents=True)
    first, again = sweep / "slurm" / "submission-aaaa.json", sweep / "slurm" / "submission-bbbb.json"
    first.write_text(json.dumps({"runs": {"a": {}, "b": {}, "c": {}}}))
    again.write_text(json.dumps({"runs": {"b": {}}}))  # the relaunch after b was cancelled
    queue = [["11", "10", "0", "COMPLETED", submission_tag(first), "0"],
             ["10", "10", "1", "CANCELLED", submission_tag(first), "0"],
             ["20", "20", "N/A", "PENDING", submission_tag(again), "1"],   # requeued once, waiting to restart
             ["30", "30", "[2]", "PENDING", "someone else", "0"]]
    monkeypatch.setattr(scheduler_state, "queue_rows", lambda fields: queue)
    monkeypatch.setattr(scheduler_state, "accounting_rows",
                        lambda name: [["12", "10", "2", "FAILED", submission_tag(first), ""]])
    states = with_scheduler_states(sweep, {"a": "done", "b": "interrupted", "c": "failed", "d": "missing"})
    assert states == {"a": "done; slurm COMPLETED (job 10_0)", "b": "interrupted; slurm PENDING (job 20, requeued 1x)",
                      "c": "failed; slurm FAILED (job 10_2)", "d": "missing"}
