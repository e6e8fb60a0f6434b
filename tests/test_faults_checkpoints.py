"""Issue 18's checkpoint and signal defects (#1, #2, #4, #7), each injected on a real tiny run.

Same run as tests/test_faults.py: 23k parameters, 40 steps of 1,024 tokens, a checkpoint every step.
Each test asserts what was kept and what the user was told, not only that something failed.
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
from pathlib import Path

import pytest
from fault_runs import FAULT_RUN, STEPS, fault_job  # tests/fault_runs.py: the shared fault run

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.errors import UserError
from pipeline.records import load_record, read_jsonl
from pipeline.train import checkpoint as ckpt
from pipeline.train.checkpoint import list_checkpoints
from pipeline.train.run import execute

REPO = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def halfway(corpus_overrides, tmp_path_factory) -> Path:
    """A run stopped after step 20 (its newest checkpoints 19 and 20), built once and copied by each test."""
    run_dir = tmp_path_factory.mktemp("halfway") / "run"
    first = _preempted_at_20(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    assert first["status"] == "preempted" and first["steps_done"] == 20
    return Path(first["run_dir"])


def _preempted_at_20(job: Study) -> dict:
    from pipeline.train.tracking import Tracker

    original = Tracker.log

    def log_then_signal(self, metrics, step):
        original(self, metrics, step=step)
        if step == 19 and "train/loss" in metrics:  # agreed at the next step boundary: stops after step 20
            signal.raise_signal(signal.SIGTERM)

    Tracker.log = log_then_signal
    try:
        return execute(job)
    finally:
        Tracker.log = original


def copy_run(halfway: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(halfway, run_dir)
    return run_dir


# --- #1: pruning by readability, never the newest readable; loud when progress is discarded ------------------
def test_unreadable_checkpoints_with_higher_steps_never_push_out_the_new_ones(corpus_overrides, tmp_path, halfway,
                                                                           reference, capfd):
    run_dir = copy_run(halfway, tmp_path)
    ckpts = run_dir / "checkpoints"
    complete = (ckpts / "ckpt-000000020.pt").read_bytes()
    (ckpts / "ckpt-000000900.pt").write_bytes(complete[: len(complete) // 2])  # torn, under a final name
    (ckpts / "ckpt-000000901.pt").write_bytes(b"\x00garbage" * 100)
    record = execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    assert record["status"] == "ok" and record["resumed_from_step"] == 20
    assert record["final_val_loss"] == reference["final_val_loss"]
    # Name order said 900 and 901 were "the newest two": every new checkpoint used to be deleted at once.
    assert [p.name for p in list_checkpoints(ckpts)] == ["ckpt-000000039.pt", "ckpt-000000040.pt"]
    err = capfd.readouterr().err
    assert "unreadable checkpoints ckpt-000000901.pt, ckpt-000000900.pt" in err and "resuming from step 20" in err
    assert "deleting unreadable checkpoint" in err
    assert record["warnings"] == ["unreadable checkpoints ckpt-000000901.pt, ckpt-000000900.pt skipped: resumed "
                                  "from step 20, the steps after it were trained again"]


def test_no_readable_checkpoint_restarts_loudly_and_the_record_says_so(corpus_overrides, tmp_path, halfway,
                                                                       reference, capfd):
    run_dir = copy_run(halfway, tmp_path)
    for path in list_checkpoints(run_dir / "checkpoints"):
        path.write_bytes(path.read_bytes()[:100])  # every checkpoint torn
    record = execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    assert record["status"] == "ok" and record["resumed_from_step"] is None
    assert record["final_val_loss"] == reference["final_val_loss"]  # trained again from step 0, same result
    assert "restarts from step 0 and all its earlier progress is discarded" in capfd.readouterr().err
    assert record["warnings"][0].startswith("no readable checkpoint (ckpt-000000019.pt, ckpt-000000020.pt)")
    assert load_record(run_dir)["warnings"] == record["warnings"]


def test_pruning_keeps_the_newest_readable_checkpoint_and_protected_steps(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(ckpt_dir, step, {"step": step}, keep=5)
    (ckpt_dir / "ckpt-000000050.pt").write_bytes(b"not a checkpoint")
    ckpt.save_checkpoint(ckpt_dir, 4, {"step": 4}, keep=2, protect=frozenset({1}))
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["ckpt-000000001.pt", "ckpt-000000003.pt",
                                                            "ckpt-000000004.pt"]
    with pytest.raises(ValueError, match="keep=0 must be >= 1"):
        ckpt.save_checkpoint(ckpt_dir, 5, {"step": 5}, keep=0)
    assert ckpt.newest_readable(ckpt_dir).name == "ckpt-000000004.pt"


# --- #2: disk full while a checkpoint is written ---------------------------------------------------------------
def disk_fills_during_checkpoint(monkeypatch, at_step: int) -> None:
    """torch.save writes part of checkpoint `at_step`, then the disk is full (ENOSPC) -- a torn .tmp is left behind."""
    real_save = ckpt.torch.save

    def save(state, f, *args, **kwargs):
        if state.get("step") == at_step:
            f.write(b"\x00" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(state, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)


@pytest.mark.parametrize("at_step, newest", [(10, "ckpt-000000009.pt"), (1, None)])
def test_disk_full_at_checkpoint_removes_the_temporary_and_tells_the_truth(corpus_overrides, tmp_path, monkeypatch,
                                                                          at_step, newest):
    run_dir = tmp_path / "run"
    disk_fills_during_checkpoint(monkeypatch, at_step)
    with pytest.raises(UserError) as err:
        execute(fault_job(corpus_overrides, f"run_dir={run_dir}"))
    monkeypatch.undo()
    message = str(err.value)
    assert not list(run_dir.rglob("*.tmp"))  # the torn temporary no longer holds the last free space
    assert f"cannot write a checkpoint of step {at_step}" in message and "No space left on device" in message
    kept = [p.name for p in list_checkpoints(run_dir / "checkpoints")]
    if newest:
        assert f"the newest checkpoint is {newest}, a relaunch resumes from it" in message and kept[-1] == newest
    else:
        assert "no checkpoint exists, a relaunch starts from step 0" in message and kept == []
    record = load_record(run_dir)
    assert record["status"] == "failed" and record["error"] == f"UserError: {message}"
    assert record["steps_done"] is None and record["final_val_loss"] is None


# --- #4: a stop signal during start-up -------------------------------------------------------------------------
SLOW_WANDB = '''
import time
def init(**kwargs):
    time.sleep(60)  # an unreachable server: the real client waits up to its init_timeout
class Settings:
    def __init__(self, **kwargs):
        pass
'''


def test_sigterm_while_wandb_starts_exits_75_with_a_preempted_record(corpus_overrides, tmp_path, reference):
    fake = tmp_path / "fake_wandb" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(SLOW_WANDB)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)])}
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", "pipeline.train", *corpus_overrides, *FAULT_RUN, f"run_dir={run_dir}",
           "tracking.mode=offline", f"tracking.dir={tmp_path / 'wandb'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "run.json").exists():  # the record is written before W&B is contacted
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(0.5)  # inside the slow wandb.init now
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    assert time.monotonic() - sent < 20  # did not sit out W&B's 60 s
    record = load_record(run_dir)
    assert record["status"] == "preempted" and record["error"] == "received SIGTERM during start-up"
    assert record["steps_done"] == 0 and not list_checkpoints(run_dir / "checkpoints")
    resumed = execute(fault_job(corpus_overrides, f"run_dir={run_dir}", "tracking.mode=disabled"))
    assert resumed["status"] == "ok" and resumed["final_val_loss"] == reference["final_val_loss"]


def test_a_sigtermed_local_sweep_exits_75_and_charges_no_attempt_to_runs_it_never_started(corpus_overrides,
                                                                                           tmp_path):
    command = [sys.executable, "-m", "pipeline.sweep", "experiment=cpu_tiny", *corpus_overrides, *FAULT_RUN,
               "sweep.design=grid", "sweep.sizes=[23k,46k]", f"sweep.tokens=[{STEPS * 1024}]",
               "sweep.tokens_per_param=[]", f"results_dir={tmp_path}", "tracking.mode=disabled"]
    runs = tmp_path / "cpu_tiny" / "runs"
    sweep = subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("*/checkpoints/ckpt-*.pt")) if runs.exists() else True:
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.stderr.read()
            time.sleep(0.02)
        sweep.send_signal(signal.SIGTERM)
        out, err = sweep.communicate(timeout=60)
    finally:
        sweep.kill()
    assert sweep.returncode == 75, out + err
    started = [d.name for d in runs.iterdir()]
    assert len(started) == 1 and load_record(runs / started[0])["status"] == "preempted"
    assert "1 runs not started" in out or "relaunch the sweep to resume" in out
    assert json.loads((tmp_path / "cpu_tiny" / "attempts.json").read_text()) == {started[0]: 1}

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    attempts = json.loads((tmp_path / "cpu_tiny" / "attempts.json").read_text())
    assert attempts[started[0]] == 2 and sorted(attempts.values()) == [1, 2]
    for run in runs.iterdir():
        assert load_record(run)["status"] == "ok"
        assert [r["step"] for r in read_jsonl(run / "train.jsonl")] == list(range(1, STEPS + 1))


# --- #7: keep_checkpoints -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "0"])
def test_keep_checkpoints_below_one_is_refused_before_anything_runs(value):
    with pytest.raises(UserError) as err:
        load_config("study", Study, [f"train.keep_checkpoints={value}"])
    assert str(err.value).startswith(f"train.keep_checkpoints={value} must be >= 1")


def test_keep_checkpoints_one_keeps_the_final_checkpoint_and_a_relaunch_needs_no_training(corpus_overrides, tmp_path,
                                                                                         reference):
    run_dir = tmp_path / "run"
    record = execute(fault_job(corpus_overrides, f"run_dir={run_dir}", "train.keep_checkpoints=1"))
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [f"ckpt-{STEPS:09d}.pt"]
    assert record["final_val_loss"] == reference["final_val_loss"]
    # A relaunch of the finished run never re-enters it: the record and the checkpoint stay as they are.
    before = (run_dir / "run.json").stat().st_mtime_ns
    again = execute(fault_job(corpus_overrides, f"run_dir={run_dir}", "train.keep_checkpoints=1"))
    assert again["already_finished"] and again["final_val_loss"] == record["final_val_loss"]
    assert (run_dir / "run.json").stat().st_mtime_ns == before
    # Without its record (lost), the relaunch resumes from the one kept checkpoint and trains nothing.
    (run_dir / "run.json").unlink()
    resumed = execute(fault_job(corpus_overrides, f"run_dir={run_dir}", "train.keep_checkpoints=1"))
    assert resumed["resumed_from_step"] == STEPS and resumed["final_val_loss"] == record["final_val_loss"]
