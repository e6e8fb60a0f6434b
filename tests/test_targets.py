"""Target metrics: step 2 recovered from generated data, intervals chained through both steps, the
decision's optimum and cap against closed forms, and the bad-input lines (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.decide.predict import loss_model, optimum_on_budget, target_sections
from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.sources import load_runs
from pipeline.fit.table import RunsTable, load_results_dir
from pipeline.fit.targets import Sigmoid, Target, fit_metric, fit_sigmoid, parse_target
from pipeline.records import append_jsonl, write_record
from tests.test_runs_table import record

REPO = Path(__file__).resolve().parents[1]
LADDER = REPO.parent / "shared" / "data" / "olmo_ladder"
TRUE_LAW = ParametricLaw(0.6, 60.0, 40.0, 0.32, 0.25)
TRUE_SIGMOID = Sigmoid(chance=0.25, top=0.92, k=9.0, b0=0.95)


def synthetic_table(seed: int = 0, noise_bpb: float = 0.004, noise_acc: float = 0.006) -> RunsTable:
    """20 runs (5 sizes x 4 token multipliers) whose task bpb follows TRUE_LAW and accuracy TRUE_SIGMOID."""
    rng = np.random.default_rng(seed)
    n = np.repeat([2e8, 4e8, 8e8, 1.6e9, 3.2e9], 4)
    d = n * np.tile([10.0, 20.0, 50.0, 100.0], 5)
    bpb = TRUE_LAW.loss(n, d) * np.exp(rng.normal(0, noise_bpb, n.size))
    acc = TRUE_SIGMOID(bpb) + rng.normal(0, noise_acc, n.size)
    loss = 1.8 + 400 / n**0.34 + 400 / d**0.28
    return RunsTable(run_id=tuple(f"r{i}" for i in range(n.size)), params={"total": n}, tokens=d, loss=loss,
                     flops={"6n": 6 * n * d}, budget_flops=np.full(n.size, np.nan), flop_method="6n",
                     metrics={"task_bpb": bpb, "task_acc": acc}, tasks={"task": {"chance": 0.25}}, source="synthetic")


def test_step2_recovers_a_known_sigmoid():
    rng = np.random.default_rng(1)
    bpb = rng.uniform(0.6, 1.4, 300)
    acc = TRUE_SIGMOID(bpb) + rng.normal(0, 0.005, bpb.size)
    fit = fit_sigmoid(bpb, acc, chance=0.25)
    assert fit.chance == 0.25  # the floor is the chance level, not fitted
    assert fit.top == pytest.approx(TRUE_SIGMOID.top, abs=0.02)
    assert fit.k == pytest.approx(TRUE_SIGMOID.k, rel=0.1)
    assert fit.b0 == pytest.approx(TRUE_SIGMOID.b0, abs=0.01)


def test_two_step_intervals_are_chained_pairs_and_cover_the_truth():
    table = synthetic_table()
    target = parse_target("task:acc", table)
    model = fit_metric(table, target, bootstrap=60, seed=0, outliers="none")
    n, d = 1.28e10, 2.6e11                           # 4x the largest run's N: an extrapolation
    truth = float(TRUE_SIGMOID(TRUE_LAW.loss(n, d)))
    assert model.value(n, d) == pytest.approx(truth, abs=0.02)
    # Every sample is the pair (law_r, sigmoid_r) of one resample, in that order.
    assert len(model.law_samples) == len(model.sigmoid_samples) >= 50
    e, a, b, alpha, beta = model.law_samples[7]
    assert model.samples(n, d)[7] == pytest.approx(model.sigmoid_samples[7](e + a / n**alpha + b / d**beta))
    lo, hi = model.interval(n, d)
    assert lo <= truth <= hi
    # Chaining carries step 1's spread: wider than step 2's alone at the point-estimate bpb.
    step2_only = np.percentile([s(model.law.loss(n, d)) for s in model.sigmoid_samples], [5, 95])
    assert hi - lo > step2_only[1] - step2_only[0]
    # The loss's parametric bootstrap, with its draws accounted for: used + dropped = drawn.
    boot = model.summary()["bootstrap"]
    assert boot["unit"].startswith("parametric") and "sigmoid" in boot["step2_unit"]
    assert boot["used"] + boot["dropped"] == boot["draws"] == 60 and boot["used"] == len(model.law_samples)


def test_metric_target_fits_its_own_law():
    table = synthetic_table(noise_bpb=0.0)
    model = fit_metric(table, parse_target("task:bpb", table), bootstrap=0, outliers="none")
    assert model.sigmoid is None and model.law_samples is None
    assert model.value(1e10, 2e11) == pytest.approx(float(TRUE_LAW.loss(1e10, 2e11)), rel=1e-3)


def test_targets_parse_and_bad_targets_say_what_exists():
    table = synthetic_table()
    assert parse_target("task_acc", table).kind == "accuracy"
    assert parse_target("task:accuracy", table).name == "task:acc"
    assert parse_target("loss", table).kind == "loss"
    with pytest.raises(UserError, match=r"unknown target 'hellaswag:acc'.*task:acc") as err:
        parse_target("hellaswag:acc", table)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a task metric"):
        parse_target("task:f1", table)


def test_a_metric_missing_from_some_runs_is_named():
    table = synthetic_table()
    bpb = table.metrics["task_bpb"].copy()
    bpb[[3, 11]] = np.nan
    broken = replace(table, metrics={**table.metrics, "task_bpb": bpb})
    with pytest.raises(UserError, match=r"task_bpb is missing .* 2 of 20 runs \(r3, r11\)"):
        fit_metric(broken, Target("task_bpb", "metric", "task_bpb"), bootstrap=0)


def test_optimum_on_the_budget_line_is_chinchillas_closed_form_and_the_cap_costs():
    law = ParametricLaw(1.69, 406.4, 410.7, 0.34, 0.28)
    loss = loss_model(law, None)
    n_opt, d_opt = law.optimal_allocation(1e23)
    best = optimum_on_budget(loss, 1e23, n_center=1e9)
    assert best["params"] == pytest.approx(float(n_opt), rel=1e-4)
    assert best["tokens"] == pytest.approx(float(d_opt), rel=1e-4)
    capped = optimum_on_budget(loss, 1e23, n_center=1e9, n_max=n_opt / 4)
    assert capped["capped"] and capped["params"] == pytest.approx(n_opt / 4, rel=1e-6)
    assert capped["tokens"] == pytest.approx(1e23 / (6 * n_opt / 4), rel=1e-6)
    out = target_sections(loss=loss, target=loss, models={}, budget_flops=1e23, recommended=(n_opt, d_opt),
                          loss_optimum=(n_opt, d_opt), max_params=n_opt / 4, predict_pairs=[(7e9, 4e12)])
    assert out["serving"]["binding"] and out["serving"]["loss"]["cost"] > 0
    assert out["predictions"] == [{"params": 7e9, "tokens": 4e12, "target": "loss",
                                   "value": pytest.approx(float(law.loss(7e9, 4e12))), "interval": None}]


def test_a_binding_cap_costs_accuracy_as_a_positive_number():
    table = synthetic_table()
    model = fit_metric(table, parse_target("task:acc", table), bootstrap=0, outliers="none")
    n_bpb, d_bpb = (float(v) for v in model.law.optimal_allocation(1e22))
    out = target_sections(loss=model, target=model, models={}, budget_flops=1e22, recommended=(n_bpb, d_bpb),
                          loss_optimum=(n_bpb, d_bpb), max_params=n_bpb / 10)
    capped = out["serving"]["target"]
    assert capped["params"] == pytest.approx(n_bpb / 10) and capped["cost"] > 0
    assert capped["cost"] == pytest.approx(out["target_metric"]["optimum"]["value"] - capped["value"])


def test_accuracy_optimum_matches_the_bpb_laws_optimum():
    """The sigmoid falls monotonically in bpb, so maximising accuracy = minimising the task's bpb."""
    table = synthetic_table()
    model = fit_metric(table, parse_target("task:acc", table), bootstrap=0, outliers="none")
    n_bpb, _ = model.law.optimal_allocation(1e22)
    best = optimum_on_budget(model, 1e22, n_center=1e9)
    assert best["params"] == pytest.approx(float(n_bpb), rel=1e-3)


def test_runs_file_columns_metrics_and_the_mapping_hint(tmp_path):
    path = tmp_path / "runs.csv"
    rows = ["N,D,c4,size,hs_bpb,hs_acc"] + [f"{n},{20 * n},{2 + 1e3 / n ** 0.3},s{i},{1.0 - i / 20},{0.3 + i / 50}"
                                             for i, n in enumerate([1e8, 2e8, 4e8, 8e8, 1.6e9, 3.2e9])]
    path.write_text("\n".join(rows) + "\n")
    table = load_runs(path, columns={"N": "params", "D": "tokens", "c4": "loss"})
    assert sorted(table.metrics) == ["hs_acc", "hs_bpb"]      # the text column `size` is not a metric
    assert parse_target("hs:acc", table).accuracy == "hs_acc"
    with pytest.raises(UserError, match=r"columns\.params=<your column>"):
        load_runs(path)
    with pytest.raises(UserError, match="columns.loss=c5: .* has no column c5"):
        load_runs(path, columns={"N": "params", "D": "tokens", "c5": "loss"})


def test_per_step_files_import_with_their_checkpoints(tmp_path):
    for size, n in (("a", 1e8), ("b", 2e8), ("c", 4e8)):
        lines = ["_step,throughput/total_tokens,eval/c4_en-validation/CrossEntropyLoss,"
                 "eval/downstream_bpb/hellaswag_val_rc_5shot_bpb,eval/downstream/hellaswag_val_rc_5shot_len_norm,params"]
        lines += [f"{s},{s * 1e6},{4 - s / 100},{1.2 - s / 200},{0.25 + s / 400},{n}" for s in (10, 20, 30)]
        (tmp_path / f"{size}.csv").write_text("\n".join(lines) + "\n")
    table = load_runs(tmp_path, columns={"c4_en_loss": "loss"})
    assert table.run_id == ("a", "b", "c") and list(table.tokens) == [3e7] * 3
    assert table.metrics["hellaswag_acc"] == pytest.approx([0.325] * 3)
    tokens, values = table.metric_points[0]["hellaswag_bpb"]
    assert list(tokens) == [1e7, 2e7, 3e7] and values == pytest.approx([1.15, 1.1, 1.05])


@pytest.mark.slow
@pytest.mark.skipif(not (LADDER / "ladder_final.csv").exists(), reason="OLMo ladder data not present")
def test_ladder_command_predicts_hellaswag_accuracy(tmp_path):
    """The issue's command on the public OLMo ladder table (Bhagia et al. 2024): as written (no budget:
    predictions only), then with a budget (the full recommendation, its target section and plots)."""
    cmd = [sys.executable, "-m", "pipeline.fit", f"runs={LADDER / 'ladder_final.csv'}", "columns.params=N",
           "columns.loss=c4_loss", "target=hellaswag:acc", "predict.params=[3.17e9]", "predict.tokens=[6.3e11]"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*cmd, f"out_dir={tmp_path / 'exact'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "hellaswag:acc at N 3.17e+09, D 6.3e+11: 0.7" in proc.stdout
    proc = subprocess.run([*cmd, "bootstrap=30", "budget.flops=1e23", f"out_dir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "recommendation.json").read_text())
    assert rec["target_metric"]["optimum"]["value"] > rec["predictions"][0]["value"]   # 1e23 FLOPs beats 3B on 630B
    (pred,) = rec["predictions"]
    assert pred["target"] == "hellaswag:acc" and pred["params"] == 3.17e9
    # 3B-10xC reached 0.7311 (ladder_final.csv); the two-step prediction from all 30 runs lands close.
    assert pred["value"] == pytest.approx(0.7311, abs=0.03)
    assert pred["interval"][0] < pred["value"] < pred["interval"][1]
    assert (tmp_path / "metric_hellaswag_acc.png").exists()
    boot = rec["target_metric"]["fit"]["bootstrap"]       # every draw accounted for, and said in the report
    assert boot["used"] + boot["dropped"] == 30 and f"{boot['used']} of 30 draws used" in (tmp_path / "report.md").read_text()


def test_sweep_records_carry_metrics_points_and_chance(tmp_path):
    """run.json `metrics` / `evaluation` and eval.jsonl rows (pipeline/train/evaluate.py) reach the table."""
    for name, n in (("a", 1000), ("b", 2000)):
        run_dir = tmp_path / "runs" / name
        rec = record(name, n=n)
        rec.update(metrics={"t_bpb": 2.0 - n / 1e4, "t_acc": 0.3 + n / 1e4, "notes_loss": 4.0},
                   evaluation={"tasks": {"t": {"chance": 0.25, "n_questions": 128}}}, run_dir=str(run_dir))
        write_record(run_dir, rec)
        for step, tokens in ((5, 10_000), (10, 20_000)):
            append_jsonl(run_dir / "eval.jsonl", {"step": step, "tokens": tokens, "flops_exact": 1e9, "flops_6n": 1e9,
                                                  "val_loss": 3.0, "t_bpb": 2.5 - step / 10, "t_acc": 0.25 + step / 100})
    table = load_results_dir(tmp_path)
    assert sorted(table.metrics) == ["notes_loss", "t_acc", "t_bpb"]
    assert table.tasks["t"]["chance"] == 0.25
    tokens, values = table.metric_points[table.run_id.index("b")]["t_acc"]
    assert list(tokens) == [10_000, 20_000] and values == pytest.approx([0.3, 0.35])
    assert parse_target("t:acc", table).accuracy == "t_acc"
    assert table.subset(np.array([False, True])).metric_points[0]["t_acc"][1] == pytest.approx([0.3, 0.35])
