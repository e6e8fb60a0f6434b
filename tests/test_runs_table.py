"""The runs table: sweep records, CSV/JSONL files and W&B runs -> one validated table; bad input -> one line."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.fit.sources import load_runs, load_table_file, load_wandb, table_from_wandb_runs
from pipeline.fit.table import RunsTable, load_results_dir
from pipeline.records import append_jsonl, write_record


def record(run_id: str, n: int = 1000, tokens: int = 20_000, loss: float | None = 3.0, status: str = "ok",
           budget: float | None = None, **extra) -> dict:
    return {"run_id": run_id, "status": status, "final_val_loss": loss, "convention": "total", "tokens": tokens,
            "params": {"total": n, "non_embedding": n // 2, "embedding": n // 4, "head": n // 4},
            "flops": {"6n": 6.0 * n * tokens, "exact": 6.6 * n * tokens}, "shape": {"vocab_size": 256, "seq_len": 64},
            "target": {"budget_flops": budget}, **extra}


@pytest.fixture
def sweep_dir(tmp_path):
    runs = tmp_path / "sweep" / "runs"
    write_record(runs / "a", record("a", n=1000, budget=1.32e8, mfu=0.3))
    write_record(runs / "b", record("b", n=2000, tokens=10_000, loss=2.9, budget=1.32e8, mfu=0.5))
    write_record(runs / "c", record("c", status="diverged", loss=None, error="loss is NaN at step 40"))
    write_record(runs / "d", record("d", status="failed", loss=None))
    (runs / "e").mkdir(parents=True)
    (runs / "e" / "run.json").write_text('{"schema_version": 1, "run_id": "e", "sta')      # killed mid-write
    for step, tokens, loss in ((1, 5000, 4.0), (2, 20_000, 3.0)):
        append_jsonl(runs / "a" / "eval.jsonl", {"step": step, "tokens": tokens, "flops_exact": 6.6e3 * tokens,
                                                 "flops_6n": 6e3 * tokens, "val_loss": loss})
    return tmp_path


def test_records_give_finished_runs_and_list_every_exclusion_with_its_reason(sweep_dir):
    table = load_results_dir(sweep_dir)
    assert table.run_id == ("a", "b") and table.convention == "total" and table.flop_method == "exact"
    np.testing.assert_array_equal(table.n, [1000, 2000])
    np.testing.assert_array_equal(table.c, [6.6 * 1000 * 20_000, 6.6 * 2000 * 10_000])
    np.testing.assert_array_equal(table.params["non_embedding"], [500, 1000])
    reasons = {e["run_id"]: e["reason"] for e in table.excluded}
    assert reasons["c"] == "status diverged (loss is NaN at step 40)" and reasons["d"] == "status failed"
    assert "not valid JSON" in reasons["e"]
    assert table.curves[0]["val_loss"].tolist() == [4.0, 3.0] and table.curves[1] is None
    assert (table.vocab_size, table.seq_len) == (256, 64)
    summary = table.pilot_summary()
    assert summary["n_runs"] == 2 and summary["n_excluded"] == 3 and summary["mfu"] == pytest.approx(0.4)
    assert summary["total_flops"] == pytest.approx(6.6 * 4e7) and summary["max_budget_flops"] == 1.32e8


def test_convention_and_flop_method_select_n_and_c(sweep_dir):
    table = load_runs(sweep_dir, convention="non_embedding", flop_method="6n")
    np.testing.assert_array_equal(table.n, [500, 1000])
    np.testing.assert_array_equal(table.c, [1.2e8, 1.2e8])
    with pytest.raises(UserError, match="convention 'nonembedding' is not in"):
        load_runs(sweep_dir, convention="nonembedding")


def test_no_finished_run_is_a_one_line_error(tmp_path):
    write_record(tmp_path / "r", record("r", status="failed", loss=None))
    with pytest.raises(UserError, match=r"no finished runs in .*1 excluded \(first: r: status failed\)"):
        load_results_dir(tmp_path)


def test_a_record_with_zero_parameters_is_excluded_not_fitted(tmp_path):
    write_record(tmp_path / "good", record("good"))
    write_record(tmp_path / "zero", record("zero", n=0))
    table = load_results_dir(tmp_path)
    assert table.run_id == ("good",) and "params.total=0" in table.excluded[0]["reason"]


def test_csv_with_optional_columns_and_a_failed_row(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("run_id,params,tokens,loss,flops,status,budget_flops\n"
                    "r1,1e6,2e7,3.1,1.3e14,ok,1.3e14\n"
                    "r2,2e6,1e7,3.0,1.3e14,ok,\n"
                    "r3,4e6,5e6,,1.3e14,failed,\n")
    table = load_table_file(path)
    assert table.run_id == ("r1", "r2") and table.flop_method == "given"
    np.testing.assert_array_equal(table.c, [1.3e14, 1.3e14])
    np.testing.assert_allclose(table.flops["6n"], [1.2e14, 1.2e14])
    assert table.excluded == ({"run_id": "r3", "reason": "status failed"},)
    assert table.budget_flops[0] == 1.3e14 and np.isnan(table.budget_flops[1])
    np.testing.assert_array_equal(table.budget_groups(), [1.3e14, 1.3e14])   # r2 joins the planned budget


def test_csv_without_flops_uses_6nd_and_without_tokens_derives_d(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("params,tokens,loss\n1e6,2e7,3.1\n")
    table = load_table_file(plain)
    assert table.flop_method == "6n" and table.c[0] == pytest.approx(1.2e14)
    chinchilla_like = tmp_path / "fig4.csv"
    chinchilla_like.write_text("x,Model Size,Training FLOP,loss\n0,1e9,6e19,2.5\n")
    table = load_table_file(chinchilla_like, columns={"Model Size": "params", "Training FLOP": "flops"})
    assert table.tokens[0] == pytest.approx(1e10) and table.n[0] == 1e9


def test_jsonl_table_and_extra_conventions(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"params": 1e6, "params_non_embedding": 4e5, "tokens": 2e7, "loss": 3.1}) + "\n\n"
                    + json.dumps({"params": 2e6, "params_non_embedding": 9e5, "tokens": 1e7, "loss": 3.0}) + "\n")
    table = load_runs(path)
    assert table.run_id == ("line1", "line3")
    np.testing.assert_array_equal(table.with_convention("non_embedding").n, [4e5, 9e5])


@pytest.mark.parametrize("text, fragment", [
    ("params,tokens,loss\n", "has no rows"),
    ("params,tokens,lost\n1e6,2e7,3.1\n", "missing column 'loss' (found: params, tokens, lost)"),
    ("params,loss\n1e6,3.1\n", "missing column 'tokens'"),
    ("params,tokens,loss\n1e6,2e7,3.1\n1e6,-5,3.0\n", "line 3: tokens=-5 must be a positive finite number"),
    ("params,tokens,loss\nabc,2e7,3.1\n", "line 2: params='abc' is not a number"),
    ("params,tokens,loss\n1e6,2e7,nan\n", "line 2: loss is NaN"),
    ("params,tokens,loss\n1e6,2e7,\n", "line 2: loss is empty"),
    ("params,tokens,loss,status\n1e6,2e7,3,failed\n", "no row has status ok"),
])
def test_bad_csv_gives_one_line_error_naming_the_problem(tmp_path, text, fragment):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_table_file(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_table_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_runs(tmp_path / "missing.csv")
    (tmp_path / "runs.txt").write_text("x")
    with pytest.raises(UserError, match="use .csv or .jsonl"):
        load_runs(tmp_path / "runs.txt")
    (tmp_path / "bad.jsonl").write_text('{"params": 1}\n{oops\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_runs(tmp_path / "bad.jsonl")


def test_budgets_without_a_plan_cluster_by_flops_within_5_percent():
    c = np.array([1.00e18, 1.03e18, 0.98e18, 3.0e18, 3.1e18, 1.2e19])
    table = RunsTable(run_id=tuple("abcdef"), params={"total": np.ones(6)}, tokens=np.ones(6), loss=np.ones(6),
                      flops={"exact": c}, budget_flops=np.full(6, np.nan))
    groups = table.budget_groups()
    assert len(np.unique(groups)) == 3
    assert groups[0] == groups[1] == groups[2] == pytest.approx(np.exp(np.log(c[:3]).mean()))
    assert groups[3] == groups[4] != groups[5]


def test_subset_records_the_reason_and_keeps_columns_aligned():
    table = RunsTable(run_id=("a", "b", "c"), params={"total": np.array([1.0, 2.0, 3.0])}, tokens=np.ones(3),
                      loss=np.array([3.0, 2.0, 1.0]), flops={"exact": np.ones(3)}, budget_flops=np.full(3, np.nan))
    kept = table.subset(np.array([True, False, True]), reason="outlier")
    assert kept.run_id == ("a", "c") and kept.loss.tolist() == [3.0, 1.0] and kept.n.tolist() == [1.0, 3.0]
    assert kept.excluded == ({"run_id": "b", "reason": "outlier"},)


def wandb_run(name, state="finished", summary=None, config=None):
    return types.SimpleNamespace(name=name, id=name + "-id", state=state, summary=summary or {}, config=config or {})


def test_wandb_runs_convert_from_flat_or_nested_keys_without_a_server():
    runs = [
        wandb_run("flat", summary={"final_val_loss": 3.0, "params/total": 1000, "params/non_embedding": 500,
                                   "tokens": 20_000, "flops/exact": 1.3e8, "flops/6n": 1.2e8}),
        wandb_run("nested", summary={"final_val_loss": 2.9, "status": "ok"},
                  config={"params": {"total": 2000, "non_embedding": 1000}, "tokens": 10_000,
                          "flops": {"exact": 1.3e8, "6n": 1.2e8}, "budget_flops": 1.3e8}),
        wandb_run("crashed", state="crashed", summary={"final_val_loss": 9.0}),
        wandb_run("no-loss", summary={"params/total": 10, "tokens": 10, "flops/exact": 600}),
    ]
    table = table_from_wandb_runs(runs)
    assert table.run_id == ("flat", "nested") and table.n.tolist() == [1000, 2000]
    assert table.c.tolist() == [1.3e8, 1.3e8] and table.budget_flops[1] == 1.3e8 and np.isnan(table.budget_flops[0])
    reasons = {e["run_id"]: e["reason"] for e in table.excluded}
    assert reasons["crashed"] == "status failed" and "final_val_loss=None" in reasons["no-loss"]
    assert not table.has_curves


def test_wandb_without_access_is_a_one_line_error(monkeypatch):
    class NoAccessApi:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login() first")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=NoAccessApi))
    with pytest.raises(UserError) as err:
        load_runs("wandb:me/pilots")
    message = str(err.value)
    assert "cannot read W&B project 'me/pilots' (RuntimeError)" in message and "wandb login" in message
    assert "\n" not in message


def test_wandb_project_read_through_the_api(monkeypatch):
    runs = [wandb_run("r", summary={"final_val_loss": 3.0, "params/total": 1000, "tokens": 20_000,
                                    "flops/exact": 1.3e8})]
    api = types.SimpleNamespace(runs=lambda path: runs if path == "me/pilots" else [])
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=lambda timeout: api))
    table = load_wandb("me/pilots")
    assert table.run_id == ("r",) and table.source == "wandb:me/pilots"
    with pytest.raises(UserError, match="has no runs"):
        load_wandb("me/empty")


def _hparams(schedule: str, min_lr_ratio: float = 0.1, cooldown_steps: int = 0) -> dict:
    return {"hparams": {"schedule": schedule, "min_lr_ratio": min_lr_ratio, "cooldown_steps": cooldown_steps},
            "steps": 100}


def test_the_pilots_schedule_is_carried_and_a_mix_of_schedules_is_refused(tmp_path):
    runs = tmp_path / "runs"
    write_record(runs / "a", record("a", **_hparams("wsd", 0.1, 20)))
    write_record(runs / "b", record("b", n=2000, **_hparams("wsd", 0.1, 20)))
    write_record(runs / "t", record("t", role="trunk", **_hparams("constant")))  # excluded, so it cannot mix
    assert load_results_dir(tmp_path).schedule == {"name": "wsd", "min_lr_ratio": 0.1, "cooldown_fraction": 0.2}
    write_record(runs / "c", record("c", n=3000, **_hparams("cosine")))
    with pytest.raises(UserError) as err:
        load_results_dir(tmp_path)
    message = str(err.value)
    assert "mix LR schedules" in message and "2 runs wsd to 0.1 of peak, cooldown 20%" in message
    assert "1 runs cosine to 0.1" in message and "\n" not in message
