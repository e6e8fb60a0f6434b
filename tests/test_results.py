"""Run records: atomic writes, schema and version checks, torn JSONL lines, run locks."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.records import (
    RUN_SCHEMA_VERSION,
    RecordError,
    atomic_write_json,
    load_record,
    load_records,
    read_jsonl,
    truncate_jsonl_after_step,
    write_record,
)
from pipeline.train.lock import claim, lock_holder, release


def minimal_record(**changes) -> dict:
    record = {"run_id": "r1", "status": "ok", "final_val_loss": 3.2, "convention": "total", "tokens": 1000,
              "params": {"total": 10, "non_embedding": 4, "embedding": 3, "head": 3},
              "flops": {"6n": 6e4, "exact": 6.5e4}, "shape": {"n_layer": 1}}
    record.update(changes)
    return record


def test_write_then_load_round_trips_with_version(tmp_path):
    write_record(tmp_path, minimal_record())
    record = load_record(tmp_path)
    assert record["schema_version"] == RUN_SCHEMA_VERSION and record["final_val_loss"] == 3.2
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("change, fragment", [
    ({"schema_version": 99}, "schema_version=99"),
    ({"status": "great"}, "status 'great'"),
    ({"final_val_loss": float("nan")}, "final_val_loss"),
    ({"params": {"total": -1, "non_embedding": 1, "embedding": 1, "head": 1}}, "params.total"),
    ({"tokens": "many"}, "'tokens' should be int"),
])
def test_bad_records_are_rejected_not_misread(tmp_path, change, fragment):
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": RUN_SCHEMA_VERSION, **minimal_record(**change)}))
    with pytest.raises(RecordError) as err:
        load_record(tmp_path)
    assert fragment in str(err.value)


def test_a_truncated_record_is_reported_and_skipped_by_the_collector(tmp_path):
    good, bad = tmp_path / "a", tmp_path / "b"
    write_record(good, minimal_record())
    bad.mkdir()
    (bad / "run.json").write_text('{"schema_version": 1, "run_id": "x", "sta')
    records, rejected = load_records(tmp_path)
    assert [r["run_id"] for r in records] == ["r1"]
    assert rejected[0]["path"] == str(bad) and "not valid JSON" in rejected[0]["reason"]


def test_atomic_write_never_leaves_a_prefix(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"v": 1})

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert not list(tmp_path.glob("*.tmp"))


def test_jsonl_torn_last_line_dropped_and_truncation_keeps_one_row_per_step(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    truncate_jsonl_after_step(path, 2)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_lock_is_exclusive_and_stale_locks_are_recovered(tmp_path):
    assert claim(tmp_path)
    assert claim(tmp_path)  # the same process may re-claim its own run
    assert lock_holder(tmp_path)["pid"] == os.getpid()
    release(tmp_path)
    assert lock_holder(tmp_path) is None
    # a lock left by a dead process on this host is stale
    (tmp_path / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "time": 0}))
    assert lock_holder(tmp_path) is None and claim(tmp_path)
