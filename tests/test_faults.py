"""Fault injection: what survives a kill, a torn file, a changed config, a concurrent writer, a dead W&B,
a full disk, a diverging run.

Each test asserts what was KEPT (records, checkpoints, the final loss), not only that something
failed. docs/reliability.md is the table of these cases. SIGKILL and SIGTERM during training are
proven in tests/test_train.py and not repeated here.

Every run is the same 23k-parameter model for 40 steps of 1,024 tokens, checkpointing at every step
(so a fault can land between any two checkpoints); one run takes ~1.5 s on one thread.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from fault_runs import FAULT_RUN, STEPS, fault_job  # tests/fault_runs.py: the shared fault run

from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.records import load_record, load_records, read_jsonl, write_record
from pipeline.train.checkpoint import list_checkpoints, load_latest_checkpoint
from pipeline.train.run import execute

REPO = Path(__file__).resolve().parents[1]
def preempt_at(monkeypatch, at_step: int) -> None:
    """Deliver a real SIGTERM to this process right after `at_step` is logged (a deterministic preemption).

    The ranks agree on a stop in the step's all-reduce, which precedes the log: the run stops after the next step.
    """
    from pipeline.train.tracking import Tracker

    original = Tracker.log

    def log_then_signal(self, metrics, step):
        original(self, metrics, step=step)
        if step == at_step and "train/loss" in metrics:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Tracker, "log", log_then_signal)


# --- SIGKILL during a checkpoint write ---------------------------------------------------------------
def test_torn_checkpoints_are_never_loaded_and_the_resume_matches(corpus_overrides, tmp_path, reference, monkeypatch):
    run_dir = tmp_path / "run"
    preempt_at(monkeypatch, 19)  # stops after step 20
    first = execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    monkeypatch.undo()
    assert first["status"] == "preempted" and first["steps_done"] == 20
    ckpts = run_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["ckpt-000000019.pt", "ckpt-000000020.pt"]
    complete = (ckpts / "ckpt-000000020.pt").read_bytes()
    # What a kill mid-save leaves: a temporary (atomic writer), and torn files under final names
    # (what a plain, non-atomic writer would leave) as the two newest checkpoints.
    (ckpts / "ckpt-000000021.pt.tmp").write_bytes(complete[: len(complete) // 2])
    (ckpts / "ckpt-000000021.pt").write_bytes(complete[: len(complete) // 2])
    (ckpts / "ckpt-000000022.pt").write_bytes(b"\x00garbage" * 100)

    latest = load_latest_checkpoint(ckpts, run_id=first["run_id"], data_fingerprint=first["data"]["fingerprint"])
    assert latest["step"] == 20 and latest["_path"].endswith("ckpt-000000020.pt")
    assert not list(ckpts.glob("*.tmp"))  # stale temporaries are deleted at start-up

    resumed = execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    assert resumed["status"] == "ok" and resumed["resumed_from_step"] == 20
    assert resumed["final_val_loss"] == reference["final_val_loss"]  # bitwise: the torn files were never read
    assert [r["step"] for r in read_jsonl(run_dir / "train.jsonl")] == list(range(1, STEPS + 1))
    assert [p.name for p in list_checkpoints(ckpts)] == ["ckpt-000000039.pt", "ckpt-000000040.pt"]


# --- SIGKILL during the record write -----------------------------------------------------------------
def test_torn_record_is_reported_and_a_relaunch_rewrites_it_without_retraining(tmp_path, reference, corpus_overrides):
    run_dir = tmp_path / "sweep" / "runs" / "run"
    shutil.copytree(reference["run_dir"], run_dir)
    text = (run_dir / "run.json").read_text()
    (run_dir / ".run.json.k1ll3d.tmp").write_text(text[:200])  # killed inside atomic_write_text
    records, rejected = load_records(tmp_path / "sweep")
    assert [r["run_id"] for r in records] == [reference["run_id"]] and rejected == []

    (run_dir / "run.json").write_text(text[: len(text) // 2])  # a non-atomic writer killed half-way
    records, rejected = load_records(tmp_path / "sweep")
    assert records == [] and rejected[0]["path"] == str(run_dir) and "not valid JSON" in rejected[0]["reason"]

    rewritten = execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    assert rewritten["status"] == "ok" and rewritten["resumed_from_step"] == STEPS  # no step trained again
    assert rewritten["final_val_loss"] == reference["final_val_loss"]
    records, rejected = load_records(tmp_path / "sweep")
    assert [r["final_val_loss"] for r in records] == [reference["final_val_loss"]] and rejected == []
    assert [r["step"] for r in read_jsonl(run_dir / "train.jsonl")] == list(range(1, STEPS + 1))


# --- a relaunch with a changed config into the same run_dir --------------------------------------------
def test_a_changed_config_refuses_the_old_checkpoints(tmp_path, reference, corpus_overrides):
    run_dir = tmp_path / "run"
    shutil.copytree(reference["run_dir"], run_dir)
    with pytest.raises(UserError, match=f"holds run {reference['run_id']} \\(ok\\), not .*: the config changed"):
        execute(fault_job(corpus_overrides, f"run_dir={run_dir}", "train.lr=0.01"))
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [f"ckpt-{s:09d}.pt" for s in (39, 40)]


def test_a_changed_config_keeps_the_finished_record(tmp_path, reference, corpus_overrides):
    run_dir = tmp_path / "run"
    shutil.copytree(reference["run_dir"], run_dir)
    with pytest.raises(UserError):
        execute(fault_job(corpus_overrides, f"run_dir={run_dir}", "train.lr=0.01"))
    kept = load_record(run_dir)
    assert (kept["run_id"], kept["status"]) == (reference["run_id"], "ok")


# --- several runs of one sweep writing to one results directory at once ------------------------------
def test_concurrent_runs_of_one_sweep_keep_every_file_intact(corpus_overrides, tmp_path):
    sizes = ("23k", "46k", "70k")
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.train", *corpus_overrides, *FAULT_RUN,
                               f"model.size={size}", "train.tokens=20480", f"results_dir={tmp_path}", "sweep_name=s"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for size in sizes]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    records, rejected = load_records(tmp_path / "s")
    assert rejected == [] and len({r["run_id"] for r in records}) == 3
    assert sorted(r["params"]["total"] for r in records) == [23120, 38520, 80840]  # the family chain's nearest shapes
    for record in records:
        assert record["status"] == "ok" and record["steps_done"] == 20
        lines = (Path(record["_dir"]) / "eval.jsonl").read_text().splitlines()
        evals = [json.loads(line) for line in lines]  # every line whole: no interleaved writes
        assert [r["step"] for r in evals] == [10, 20] and evals[-1]["val_loss"] == record["final_val_loss"]
        assert [r["step"] for r in read_jsonl(Path(record["_dir"]) / "train.jsonl")] == list(range(1, 21))
    assert not list(tmp_path.rglob("*.tmp"))


# --- a sweep killed mid-way and relaunched -----------------------------------------------------------
def _sweep_command(corpus_overrides, results_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.sweep", "experiment=cpu_tiny", *corpus_overrides, *FAULT_RUN,
            "sweep.design=grid", "sweep.sizes=[23k,46k]", f"sweep.tokens=[{STEPS * 1024}]",
            "sweep.tokens_per_param=[]", f"results_dir={results_dir}"]


def _killable_moment(runs: Path) -> tuple[Path, Path] | None:
    """(the finished run, the run in progress) once one run says ok and another has a checkpoint."""
    done = [p.parent for p in runs.glob("*/run.json") if json.loads(p.read_text())["status"] == "ok"]
    started = [d for d in runs.glob("*") if d not in done and list((d / "checkpoints").glob("ckpt-*.pt"))]
    return (done[0], started[0]) if done and started else None


def test_a_killed_sweep_relaunched_counts_every_run_once(corpus_overrides, tmp_path):
    runs = tmp_path / "cpu_tiny" / "runs"
    sweep = subprocess.Popen(_sweep_command(corpus_overrides, tmp_path), cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, moment = time.monotonic() + 120, None
    while moment is None and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.01)
        moment = _killable_moment(runs) if runs.exists() else None
    sweep.kill()
    _, err = sweep.communicate()
    assert moment is not None, f"the sweep never reached its second run: {err}"
    finished, interrupted = moment
    before = ((finished / "run.json").read_text(), (finished / "run.json").stat().st_mtime_ns)

    relaunch = subprocess.run(_sweep_command(corpus_overrides, tmp_path), cwd=REPO, capture_output=True,
                              text=True, timeout=180)
    assert relaunch.returncode == 0, relaunch.stderr
    after = ((finished / "run.json").read_text(), (finished / "run.json").stat().st_mtime_ns)
    assert after == before  # the finished run was skipped, not trained again
    records, rejected = load_records(tmp_path / "cpu_tiny")
    plan = json.loads((tmp_path / "cpu_tiny" / "plan.json").read_text())
    assert rejected == [] and sorted(r["run_id"] for r in records) == sorted(r["run_id"] for r in plan["runs"])
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert load_record(interrupted)["resumed_from_step"] > 0
    for record in records:
        assert [r["step"] for r in read_jsonl(Path(record["_dir"]) / "train.jsonl")] == list(range(1, STEPS + 1))
    attempts = json.loads((tmp_path / "cpu_tiny" / "attempts.json").read_text())
    assert attempts == {finished.name: 1, interrupted.name: 2}
    assert not list(runs.glob("*/.lock"))  # every claim released


# --- W&B unreachable or failing mid-run --------------------------------------------------------------
class FakeWandbRun:
    """A W&B run whose `log` fails after `fail_after` calls (a network that drops mid-run)."""

    def __init__(self, fail_after: int):
        self.fail_after, self.log_calls, self.summary, self.exit_code = fail_after, 0, {}, None

    def log(self, metrics, step):
        self.log_calls += 1
        if self.log_calls > self.fail_after:
            raise ConnectionError("Network is unreachable")

    def finish(self, exit_code=0):
        self.exit_code = exit_code


def fake_wandb(monkeypatch, init) -> None:
    """Replace the wandb module pipeline.train.tracking imports (no real W&B, no network)."""
    module = types.ModuleType("wandb")
    module.init, module.Settings = init, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def _tracked_job(corpus_overrides, tmp_path, *extra) -> Study:
    return fault_job(corpus_overrides, f"run_dir={tmp_path / 'run'}", "tracking.mode=offline",
                     f"tracking.dir={tmp_path / 'wandb'}", *extra)


def test_wandb_init_failing_leaves_training_and_the_record_untouched(corpus_overrides, tmp_path, reference,
                                                                     monkeypatch):
    def unreachable(**_kwargs):
        raise ConnectionError("Max retries exceeded with url: https://api.wandb.ai")

    fake_wandb(monkeypatch, unreachable)
    record = execute(_tracked_job(corpus_overrides, tmp_path))
    assert record["status"] == "ok" and record["final_val_loss"] == reference["final_val_loss"]
    assert record["tracking"]["mode"] == "offline" and record["tracking"]["dropped_logs"] == 0
    assert record["tracking"]["errors"] == ["wandb.init failed (ConnectionError: Max retries exceeded with url: "
                                            "https://api.wandb.ai)"]
    assert load_record(tmp_path / "run")["tracking"] == record["tracking"]


def test_wandb_failing_mid_run_drops_logs_and_reports_the_gap(corpus_overrides, tmp_path, reference, monkeypatch):
    run = FakeWandbRun(fail_after=5)
    fake_wandb(monkeypatch, lambda **_kwargs: run)
    record = execute(_tracked_job(corpus_overrides, tmp_path))
    assert record["status"] == "ok" and record["final_val_loss"] == reference["final_val_loss"]
    assert run.log_calls == STEPS + 2  # a train row per step plus 2 evaluations
    assert record["tracking"]["dropped_logs"] == STEPS + 2 - 5
    assert record["tracking"]["errors"][0] == "wandb.log failed at step 6 (ConnectionError)"
    assert run.exit_code == 0 and run.summary["final_val_loss"] == reference["final_val_loss"]


# --- disk errors on write ----------------------------------------------------------------------------
def test_an_unwritable_results_dir_is_a_one_line_error(corpus_overrides, tmp_path):
    # Tests may run as root, where chmod 0o555 does not stop writes: a path under a FILE always fails.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    with pytest.raises(UserError) as err:
        execute(fault_job(corpus_overrides, f"results_dir={blocker / 'results'}"))
    message = str(err.value)
    assert "\n" not in message and "cannot write to" in message and "Not a directory" in message
    assert "choose a writable results_dir" in message


def fail_os_replace(monkeypatch, code: int, when) -> None:
    """os.replace fails with errno `code` when `when(destination)` holds (a full or read-only disk)."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if when(Path(dst)):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


# The first record ("running") lands; the final one does not: the disk turned read-only mid-run.
FINAL_RECORD = (errno.EROFS, lambda dst: dst.name == "run.json" and dst.exists())
CHECKPOINTS = (errno.ENOSPC, lambda dst: dst.suffix == ".pt")


def test_a_failed_record_write_is_a_one_line_error_and_keeps_the_trained_weights(corpus_overrides, tmp_path,
                                                                                   reference, monkeypatch):
    run_dir = tmp_path / "run"
    fail_os_replace(monkeypatch, *FINAL_RECORD)
    with pytest.raises(UserError) as err:
        execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    monkeypatch.undo()
    message = str(err.value)
    assert "\n" not in message and "cannot write the record" in message and "Read-only file system" in message
    assert load_record(run_dir)["status"] == "running"  # the earlier record is intact, not a prefix
    assert not list(run_dir.glob("*.tmp"))
    assert (run_dir / "checkpoints" / f"ckpt-{STEPS:09d}.pt").exists()
    rewritten = execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))  # the disk is back
    assert rewritten["resumed_from_step"] == STEPS and rewritten["final_val_loss"] == reference["final_val_loss"]


def test_a_failed_record_write_marks_the_wandb_run_failed(corpus_overrides, tmp_path, monkeypatch):
    run = FakeWandbRun(fail_after=10**6)
    fake_wandb(monkeypatch, lambda **_kwargs: run)
    fail_os_replace(monkeypatch, *FINAL_RECORD)
    with pytest.raises(UserError):
        execute(_tracked_job(corpus_overrides, tmp_path, "train.tokens=10240"))
    assert run.exit_code == 1 and run.summary.get("status") == "failed"


def test_a_full_disk_at_checkpoint_time_marks_the_run_failed_with_the_reason(corpus_overrides, tmp_path,
                                                                             monkeypatch):
    fail_os_replace(monkeypatch, *CHECKPOINTS)
    with pytest.raises(UserError):
        execute(fault_job(corpus_overrides, f"run_dir={tmp_path / 'run'}"))
    monkeypatch.undo()
    record = load_record(tmp_path / "run")
    assert record["status"] == "failed" and record["final_val_loss"] is None
    assert record["error"].startswith("UserError: cannot write a checkpoint") and "No space left on device" in record["error"]


def test_a_full_disk_at_checkpoint_time_is_a_user_error(corpus_overrides, tmp_path, monkeypatch):
    fail_os_replace(monkeypatch, *CHECKPOINTS)
    with pytest.raises(UserError) as err:
        execute(fault_job(corpus_overrides, f"run_dir={tmp_path / 'run'}", "train.tokens=10240"))
    assert "No space left on device" in str(err.value) and "checkpoints" in str(err.value)


# --- a diverging run is recorded and excluded from the fit -------------------------------------------
def _synthetic_record(run_id: str, n: int, budget_flops: float) -> dict:
    tokens = int(budget_flops / (6 * n))
    loss = 1.8172 + 482.01 / n**0.3478 + 2085.43 / tokens**0.3658  # Besiroglu et al. 2024's refit of Chinchilla
    return {"run_id": run_id, "status": "ok", "final_val_loss": loss, "convention": "total", "tokens": tokens,
            "params": {"total": n, "non_embedding": n // 2, "embedding": n // 4, "head": n - n // 2 - n // 4},
            "flops": {"6n": 6 * n * tokens, "exact": 6 * n * tokens}, "shape": {"n_layer": 1},
            "target": {"budget_flops": budget_flops}}


def test_a_diverged_run_is_excluded_from_the_fit_with_its_reason(corpus_overrides, tmp_path):
    from pipeline.decide.report import _fit_section
    from pipeline.fit.fit_all import fit_all
    from pipeline.fit.sources import load_runs

    sweep = tmp_path / "s"
    for i, (budget, n) in enumerate((b, n) for b in (1e12, 3e12, 1e13) for n in (30_000, 60_000, 120_000, 240_000)):
        write_record(sweep / "runs" / f"ok{i}", _synthetic_record(f"ok{i}", n, budget))
    diverged = execute(fault_job(corpus_overrides, f"run_dir={sweep / 'runs' / 'diverged'}", "train.lr=50.0",
                                 "train.warmup_tokens=0", "train.tokens=10240"))
    assert diverged["status"] == "diverged"

    table = load_runs(sweep)
    assert len(table) == 12 and diverged["run_id"] not in table.run_id
    reason = f"status diverged ({diverged['error']})"
    assert list(table.excluded) == [{"run_id": diverged["run_id"], "reason": reason}]
    result = fit_all(table, budget_flops=1e15, bootstrap=0)
    assert result["n_runs"] == 12 and result["excluded"] == [{"run_id": diverged["run_id"], "reason": reason}]
    assert "1 runs excluded before fitting (see excluded)" in result["warnings"]
    assert f"- {diverged['run_id']}: {reason}" in _fit_section(result)
