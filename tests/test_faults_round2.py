"""Faults of issue 18's adversarial pass (docs/reliability.md): each test injects the fault and asserts what
was KEPT, not only that something failed.

#3 a finished run is never re-entered; #5 W&B unreachable or hanging is bounded and remembered across a
sweep; #6/#9 runs tables: devices, FIFOs, huge files, BOMs; #8 report.md escapes input; #10 one bad file
never blocks everything; #11 unwritable or full results folders, atomic figures, file modes; and the
friction a new user hit (budget forms, stale plots, jittered FLOPs).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import stat
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.load import load_config
from pipeline.config.schema import Study, TrackingConfig, WandbMode
from pipeline.errors import UserError
from pipeline.fit.sources import MAX_TABLE_ROWS, load_table_file
from pipeline.records import load_record, write_record

STEPS = 20
RUN = ["model.size=23k", f"train.tokens={STEPS * 1024}", "train.batch_tokens=1024", "train.threads=1",
       "train.log_interval_steps=1", "train.evals_per_run=2", "train.checkpoint_interval_s=0", "train.progress=false"]


def study(corpus_overrides, tmp_path, *extra) -> Study:
    return load_config("study", Study, [*corpus_overrides, *RUN, f"results_dir={tmp_path / 'results'}",
                                        "sweep_name=s", "sweep.sizes=[23k,50k]", "sweep.design=grid",
                                        f"sweep.tokens=[{STEPS * 1024}]", *extra])


# --- #3 a finished run is never re-entered -----------------------------------------------------------
def test_a_second_sweep_never_reenters_a_run_the_first_finished(corpus_overrides, tmp_path, capsys):
    """Two sweeps of one study at once: B plans while A trains; when B reaches the run, A has finished it."""
    from pipeline.plan.design import plan_sweep
    from pipeline.sweep.dispatch import pending_runs, run_dir_of
    from pipeline.sweep.launchers import launch_local

    job = study(corpus_overrides, tmp_path)
    runs = plan_sweep(job, 512)[:1]
    todo_b, _ = pending_runs(job, runs)  # sweep B's plan: the run is still to do
    assert todo_b == runs
    launch_local(job, runs)  # sweep A trains it to the end
    record_path = run_dir_of(job, runs[0]) / "run.json"
    before = (record_path.read_bytes(), record_path.stat().st_mtime_ns)
    ckpts = sorted(p.name for p in (record_path.parent / "checkpoints").iterdir())
    capsys.readouterr()
    launch_local(job, todo_b)  # sweep B, with its stale list
    assert "already ok (finished by another worker), skipped" in capsys.readouterr().out
    assert (record_path.read_bytes(), record_path.stat().st_mtime_ns) == before  # not overwritten
    assert sorted(p.name for p in (record_path.parent / "checkpoints").iterdir()) == ckpts
    assert not (record_path.parent / ".lock").exists()
    # #11: the records are as readable as config.json beside them (not mkstemp's 0600)
    modes = {name: stat.S_IMODE((record_path.parent / name).stat().st_mode)
             for name in ("run.json", "eval.jsonl", "train.jsonl", "config.json")}
    assert len(set(modes.values())) == 1 and modes["run.json"] & 0o044 == 0o044, modes


def test_the_train_command_and_a_late_array_task_do_not_reenter_a_finished_run(corpus_overrides, tmp_path, capsys):
    from pipeline.sweep.slurm_task import run_task
    from pipeline.train.__main__ import main

    overrides = [*corpus_overrides, *RUN, f"run_dir={tmp_path / 'run'}"]
    assert main(overrides, {}) == 0
    record = tmp_path / "run" / "run.json"
    before = (record.read_bytes(), record.stat().st_mtime_ns)
    capsys.readouterr()
    assert main(overrides, {}) == 0
    assert "already ok, nothing to do" in capsys.readouterr().out
    job = load_config("study", Study, overrides)
    from pipeline.plan.runspec import resolve_run

    spec = resolve_run(job, 512)
    submission = tmp_path / "submission.json"
    from pipeline.config.load import as_dict

    submission.write_text(json.dumps({"cwd": os.getcwd(), "runs": {spec.run_id: {
        "config": as_dict(job), "vocab_size": 512, "overrides": []}}}))
    assert run_task(spec.run_id, submission) == {"run_id": spec.run_id, "status": "ok", "skipped": True}
    assert (record.read_bytes(), record.stat().st_mtime_ns) == before


# --- #5 W&B unreachable: bounded, offline, remembered --------------------------------------------------
class FakeRun:
    def __init__(self):
        self.logs, self.summary, self.finished = 0, {}, False

    def log(self, metrics, step):
        self.logs += 1

    def finish(self, exit_code=0):
        self.finished = True


@pytest.fixture
def unreachable_wandb(monkeypatch):
    """A wandb module whose online init hangs (an unreachable server) and whose offline init works."""
    release = threading.Event()
    calls = {"online": 0, "offline": 0}

    def init(mode, **_kwargs):
        calls[mode] += 1
        if mode == "online":
            release.wait(60)  # never answers (until the test ends)
            raise ConnectionError("unreachable")
        return FakeRun()

    module = types.ModuleType("wandb")
    module.init, module.Settings = init, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield calls
    release.set()


def test_unreachable_wandb_costs_one_short_timeout_per_sweep_then_offline(unreachable_wandb, tmp_path):
    from pipeline.train.tracking import Tracker

    cfg = TrackingConfig(mode=WandbMode.online, init_timeout_s=0.5)
    started = time.monotonic()
    first = Tracker(cfg, run_id="r1", attempt=0, group="s", config={}, wandb_dir=str(tmp_path / "wandb"))
    first_s = time.monotonic() - started
    second = Tracker(cfg, run_id="r2", attempt=0, group="s", config={}, wandb_dir=str(tmp_path / "wandb"))
    assert 0.5 <= first_s < 10  # bounded by tracking.init_timeout_s, not wandb's 60 s
    assert first.mode == second.mode == "offline" and first.active and second.active  # data kept for `wandb sync`
    assert first.report()["errors"][0] == "wandb.init failed (WandbTimeout: no answer within 0.5 s)"
    assert unreachable_wandb == {"online": 1, "offline": 2}  # the second run never tried online
    assert "earlier in this sweep" in second.report()["errors"][0]
    other = Tracker(cfg, run_id="r3", attempt=0, group="other_sweep", config={}, wandb_dir=str(tmp_path / "wandb"))
    assert unreachable_wandb["online"] == 2 and other.mode == "offline"  # the marker is per sweep


def test_a_hanging_log_and_finish_are_abandoned_after_their_bounds(monkeypatch, tmp_path):
    from pipeline.train import tracking

    release = threading.Event()
    run = FakeRun()
    run.log = lambda metrics, step: release.wait(60) if step >= 3 else None
    run.finish = lambda exit_code=0: release.wait(60)
    module = types.ModuleType("wandb")
    module.init, module.Settings = (lambda **_kwargs: run), (lambda **kwargs: kwargs)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(tracking, "LOG_TIMEOUT_S", 0.2)
    try:
        tracker = tracking.Tracker(TrackingConfig(mode=WandbMode.offline, finish_timeout_s=0.3), run_id="r",
                                   attempt=0, group="s", config={}, wandb_dir=str(tmp_path))
        started = time.monotonic()
        for step in range(1, 11):
            tracker.log({"loss": 1.0}, step=step)
        tracker.finish()
        assert time.monotonic() - started < 5  # one 0.2 s bound, then no more calls; finish bounded by 0.3 s
        report = tracker.report()
        assert report["dropped_logs"] == 8  # steps 3..10
        assert report["errors"][0].startswith("wandb.log timed out at step 3 (no answer within 0.2 s)")
        assert tracking.Tracker.finish  # finish returned although wandb.finish never did
    finally:
        release.set()


def test_a_local_sweep_with_wandb_unreachable_trains_both_runs_paying_one_timeout(corpus_overrides, tmp_path,
                                                                                    unreachable_wandb):
    from pipeline.plan.design import plan_sweep
    from pipeline.sweep.launchers import launch_local

    job = study(corpus_overrides, tmp_path, "tracking.mode=online", "tracking.init_timeout_s=1")
    runs = plan_sweep(job, 512)
    launch_local(job, runs)
    records = [load_record(tmp_path / "results" / "s" / "runs" / r.run_id) for r in runs]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert [r["tracking"]["mode"] for r in records] == ["offline", "offline"]
    assert unreachable_wandb["online"] == 1  # remembered across the runs of the sweep


# --- #6 / #9 runs tables ---------------------------------------------------------------------------------
def test_runs_tables_that_are_not_regular_small_files_are_refused_at_once(tmp_path):
    fifo = tmp_path / "runs.csv"
    os.mkfifo(fifo)  # opening it would block for ever
    link = tmp_path / "z.jsonl"
    link.symlink_to("/dev/zero")  # read whole, it filled 23 GB before
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.truncate(300 * 2**20)  # sparse: 300 MiB that take no space
    for path, fragment in ((fifo, "is not a regular file"), (link, "is not a regular file"),
                           (huge, "is 300 MiB, above the 256 MiB limit")):
        with pytest.raises(UserError, match=fragment):
            load_table_file(path)


def test_a_table_of_millions_of_rows_is_refused_after_its_row_limit_and_one_at_the_limit_loads(tmp_path):
    rows = [(f"{n:g}", f"{20 * n:g}", f"{2 + 100 / n ** 0.3:.5f}") for n in np.geomspace(1e6, 1e9, MAX_TABLE_ROWS)]
    ok = tmp_path / "ok.csv"
    with open(ok, "w", newline="") as f:
        csv.writer(f).writerows([("params", "tokens", "loss"), *rows])
    assert len(load_table_file(ok)) == MAX_TABLE_ROWS
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:  # 2.7M rows, as in the report: only the first 5,001 are ever read
        line = '{"params": 1e6, "tokens": 2e7, "loss": 3.0}\n'
        f.write(line * 2_700_000)
    with pytest.raises(UserError, match=f"has more than {MAX_TABLE_ROWS:,} rows: give one row per finished run"):
        load_table_file(big)


def test_a_spreadsheet_csv_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("params,tokens,loss\r\n1e6,2e7,3.2\r\n2e6,4e7,3.0\r\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    table = load_table_file(path)
    assert list(table.n) == [1e6, 2e6] and list(table.loss) == [3.2, 3.0]
    missing = tmp_path / "missing.csv"
    missing.write_text("params,tokens,final loss\n1e6,2e7,3.2\n", encoding="utf-8-sig")
    with pytest.raises(UserError) as err:
        load_table_file(missing)
    assert "(found: params, tokens, final loss)" in str(err.value)
    assert "columns.loss=<your column>" in str(err.value)  # a key the command line takes


# --- #8 report.md escapes what came from input -----------------------------------------------------------
def test_the_report_escapes_run_ids_statuses_and_warnings_from_input():
    from pipeline.decide.report import _fit_section, _warnings_section

    hostile = '<img src=x onerror=alert(1)><script>alert(2)</script>[click](javascript:alert(3)) ![p](http://evil/p.png) |cell'
    fit = {"excluded": [{"run_id": hostile, "reason": f"status {hostile}"}],
           "approaches": {"isoflop": {"note": hostile}}, "warnings": [f"run {hostile}\nsecond line"],
           "outliers": {"dropped": [{"run_id": hostile, "loss": 3.0, "z": -9.0}],
                        "below_fit": [{"run_id": hostile, "loss": 2.0, "z": 6.0}]}}
    text = "\n".join(_fit_section(fit) + _warnings_section({"warnings": []}, fit))
    for raw in ("<img", "<script", "[click](javascript:", "![p](http://", " |cell"):  # tags, link, image, cell
        assert raw not in text, raw
    assert "&lt;script>" in text and "\\[click\\]" in text and "\\|cell" in text
    assert "dropped" in text and "Far below the law, kept" in text    # the outlier lines name the runs, escaped
    assert "second line" in text and "\nsecond line" not in text  # a warning stays one list item


# --- #10 one bad file never blocks everything -----------------------------------------------------------
def test_a_corrupt_attempts_json_is_named_set_aside_and_the_sweep_goes_on(corpus_overrides, tmp_path, capsys):
    from pipeline.plan.design import plan_sweep
    from pipeline.sweep.dispatch import attempts_path, launch, load_attempts, pending_runs

    job = study(corpus_overrides, tmp_path)
    runs = plan_sweep(job, 512)[:1]
    path = attempts_path(job)
    path.parent.mkdir(parents=True)
    path.write_text('{"n23k-d20k-abc": 1, ')  # torn mid-write
    todo, states = pending_runs(job, runs)  # what the dry run does: reads, warns, writes nothing
    assert todo == runs and path.read_text() == '{"n23k-d20k-abc": 1, '
    assert f"warning: {path} is unreadable" in capsys.readouterr().err
    launch(job, runs, [])
    aside = list(path.parent.glob("attempts.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"n23k-d20k-abc": 1, '  # kept for a person
    assert load_attempts(job) == {runs[0].run_id: 1}
    assert load_record(tmp_path / "results" / "s" / "runs" / runs[0].run_id)["status"] == "ok"


def _record(run_id: str, n: int, budget: float) -> dict:
    tokens = int(budget / (6 * n))
    loss = 1.8172 + 482.01 / n**0.3478 + 2085.43 / tokens**0.3658
    return {"run_id": run_id, "status": "ok", "final_val_loss": loss, "convention": "total", "tokens": tokens,
            "params": {"total": n, "non_embedding": n // 2, "embedding": n // 4, "head": n - n // 2 - n // 4},
            "flops": {"6n": 6 * n * tokens, "exact": 6 * n * tokens}, "shape": {"n_layer": 1},
            "target": {"budget_flops": budget}}


def synthetic_sweep(root: Path) -> Path:
    for i, (budget, n) in enumerate((b, n) for b in (1e12, 3e12, 1e13) for n in (30_000, 60_000, 120_000, 240_000)):
        run_dir = root / "runs" / f"r{i}"
        write_record(run_dir, _record(f"r{i}", n, budget))
        rec = _record(f"r{i}", n, budget)
        curve = [{"step": s, "tokens": rec["tokens"] * s / 4, "flops_exact": rec["flops"]["exact"] * s / 4,
                  "flops_6n": rec["flops"]["6n"] * s / 4, "val_loss": rec["final_val_loss"] + 0.1 * (4 - s)}
                 for s in (1, 2, 3, 4)]
        (run_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    return root


def test_one_bad_line_in_one_eval_jsonl_excludes_that_run_and_the_fit_goes_on(tmp_path):
    from pipeline.fit.fit_all import fit_all
    from pipeline.fit.sources import load_runs

    sweep = synthetic_sweep(tmp_path / "s")
    bad = sweep / "runs" / "r5" / "eval.jsonl"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    table = load_runs(sweep)
    assert len(table) == 11 and "r5" not in table.run_id
    (reason,) = [e["reason"] for e in table.excluded if e["run_id"] == "r5"]
    assert reason.startswith(f"unreadable evaluation curve: {bad}:2 is not valid JSON")
    result = fit_all(table, 1e15, bootstrap=0, outliers="none")
    assert result["n_runs"] == 11 and any(e["run_id"] == "r5" for e in result["excluded"])


# --- #11 unwritable or full results folders ---------------------------------------------------------------
def _fit(args: list[str], monkeypatch, capsys) -> tuple[int, list[str]]:
    from pipeline.cli import run_main
    from pipeline.fit import __main__ as fit_main

    monkeypatch.setattr(sys, "argv", ["pipeline.fit", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(fit_main.main, fit_main.USAGE)
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def test_an_unwritable_fit_folder_is_one_line_with_the_path_before_the_fit(tmp_path, monkeypatch, capsys):
    import pipeline.fit.__main__ as fit_main

    sweep = synthetic_sweep(tmp_path / "s")
    blocker = tmp_path / "a-file"  # as root, chmod does not stop writes; a path under a file always fails
    blocker.write_text("x")
    monkeypatch.setattr(fit_main, "fit_all", lambda *a, **k: pytest.fail("the fit ran into an unwritable folder"))
    code, lines = _fit([f"runs={sweep}", "budget.flops=1e15", f"out_dir={blocker / 'fit'}"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == f"error: cannot write {blocker / 'fit'} ({blocker} is not a directory): choose a writable " \
                       "out_dir (or results_dir)"


def test_a_full_disk_during_the_fit_leaves_no_empty_figure_and_names_the_file(tmp_path, monkeypatch, capsys):
    sweep = synthetic_sweep(tmp_path / "s")
    out = tmp_path / "fit"
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if str(dst).endswith("frontier.png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    code, lines = _fit([f"runs={sweep}", "budget.flops=1e15", f"out_dir={out}", "bootstrap=0"], monkeypatch, capsys)
    assert code == 2 and lines == [f"error: cannot write {out / 'frontier.png'} (No space left on device): free space "
                                   "there or choose a writable out_dir (or results_dir)"]
    assert not (out / "frontier.png").exists() and not list(out.glob(".*.tmp"))  # no 0-byte or torn PNG
    assert all(p.stat().st_size > 0 for p in out.glob("*.png"))


def test_an_unwritable_sweep_folder_is_one_line_with_the_path(corpus_overrides, tmp_path, monkeypatch, capsys):
    from pipeline.cli import run_main
    from pipeline.sweep import __main__ as sweep_main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setattr(sys, "argv", ["pipeline.sweep", *corpus_overrides, *RUN, f"results_dir={blocker}",
                                      "sweep_name=s", "sweep.design=grid", "sweep.sizes=[23k]",
                                      f"sweep.tokens=[{STEPS * 1024}]"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(sweep_main.main, sweep_main.USAGE)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot write {blocker}/s") and "choose a writable results_dir" in lines[0]


# --- friction ---------------------------------------------------------------------------------------------
def test_a_hardware_budget_on_the_command_line_replaces_the_presets_flops_and_vice_versa():
    hw = load_config("study", Study, ["experiment=cpu_tiny", "budget.gpu=h100_sxm", "budget.gpus=32", "budget.days=14"])
    assert hw.budget.flops is None and hw.budget.days == 14  # cpu_tiny's budget.flops=1e15 is dropped
    flops = load_config("study", Study, ["experiment=h100_pilot", "budget.flops=1e22"])
    assert flops.budget.days is None and flops.budget.gpus == 32  # its GPUs stay for the wall-clock estimate
    from pipeline.decide.budget import resolve_budget

    assert resolve_budget(hw.budget)["source"] == "hardware" and resolve_budget(flops.budget)["flops"] == 1e22


def test_a_second_fit_into_the_same_folder_removes_the_previous_fits_figures(tmp_path, monkeypatch, capsys):
    sweep = synthetic_sweep(tmp_path / "s")
    out = tmp_path / "fit"
    mine = out / "notes.png"  # not the fit's: kept
    args = [f"runs={sweep}", "budget.flops=1e15", f"out_dir={out}", "bootstrap=0"]
    assert _fit([*args, "inference.tokens=1e14"], monkeypatch, capsys)[0] == 0
    assert (out / "inference_aware.png").exists()
    mine.write_bytes(b"mine")
    stale_metric = out / "metric_old_task_acc.png"  # a per-metric plot of a metric this fit no longer has
    stale_metric.write_bytes(b"old")
    assert _fit(args, monkeypatch, capsys)[0] == 0
    assert not (out / "inference_aware.png").exists() and mine.read_bytes() == b"mine"
    assert not stale_metric.exists()
    assert "inference_aware.png" not in (out / "report.md").read_text()


def test_jittered_flops_without_a_budget_column_are_grouped_within_the_stated_tolerance(tmp_path):
    from pipeline.fit.fit_all import fit_all

    rng = np.random.default_rng(1)
    lines = ["params,flops,loss"]
    for budget in (1e18, 3e18, 1e19):
        for n in np.geomspace(3e7, 1e9, 6) * np.sqrt(budget / 1e18):
            c = budget * (1 + rng.uniform(-0.04, 0.04))  # as real logs: a few percent off the budget
            lines.append(f"{n:.4g},{c:.6g},{1.82 + 482 / n**0.348 + 2085 / (c / (6 * n))**0.366:.4f}")
    path = tmp_path / "jitter.csv"
    path.write_text("\n".join(lines) + "\n")
    table = load_table_file(path)
    assert np.unique(table.budget_groups()).size == 3
    iso = fit_all(table, 1e22, bootstrap=0, outliers="none")["approaches"]["isoflop"]
    assert "error" not in iso and iso["n_budgets_used"] == 3
    assert iso["grouping"] == ("18 runs without a planned budget were grouped into 3 IsoFLOP budgets by their FLOPs "
                               "(given): runs within 5% of each other share a budget")
