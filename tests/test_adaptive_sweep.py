"""`sweep.design=adaptive` end to end on real tiny CPU runs: seed budgets, a round, the relaunch that trains nothing twice."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import UserError
from pipeline.sweep.__main__ import main

FLAGS = {"cfg": False, "debug": False}
# Tiny real runs (20-60 steps): too short to follow a law, so the round falls back to the static plan's
# next budget; the chooser itself is tested on simulated studies in tests/test_next_runs.py.
TINY = ["sweep.design=adaptive", "sweep.budgets_flops=[5e9,1e10,2e10]", "sweep.seed_budgets=2", "sweep.sizes_per_budget=3",
        "sweep.size_ratio=1.6", "sweep.tokens_per_param_guess=1", "sweep.round_runs=2", "budget.flops=1e12",
        "train.batch_tokens=1024", "train.warmup_tokens=1024", "train.threads=1", "train.evals_per_run=1",
        "train.progress=false", "tracking.mode=disabled", "sweep_name=adaptive"]


def test_adaptive_sweep_runs_rounds_and_a_relaunch_trains_nothing_twice(corpus_overrides, tmp_path, capsys):
    overrides = [*corpus_overrides, *TINY, f"results_dir={tmp_path}"]
    assert main(overrides, FLAGS) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "adaptive"
    design = json.loads((sweep / "design.json").read_text())
    plan = json.loads((sweep / "plan.json").read_text())
    assert len(design["rounds"]) == 1 and design["stopped"]
    picks = design["rounds"][0]["picks"]
    assert len(picks) == 3 and all(p["key"]["budget"] == 2e10 and "budget 2e+10 added" in p["reason"] for p in picks)
    assert plan["design"]["rounds"] == design["rounds"] and len(plan["runs"]) == 9
    assert f"adaptive design: 1 rounds, stopped: {design['stopped']}" in out
    attempts = json.loads((sweep / "attempts.json").read_text())
    assert sorted(attempts) == sorted(r["run_id"] for r in plan["runs"]) and set(attempts.values()) == {1}

    assert main(overrides, FLAGS) == 0           # relaunch: the design continues from the records
    out = capsys.readouterr().out
    assert "launching" not in out and "9 done" in out
    assert json.loads((sweep / "attempts.json").read_text()) == attempts
    assert json.loads((sweep / "design.json").read_text())["rounds"] == design["rounds"]


def test_an_adaptive_round_written_before_its_runs_launch_is_trained_on_relaunch(corpus_overrides, tmp_path, capsys):
    overrides = [*corpus_overrides, *TINY, f"results_dir={tmp_path}", "sweep.dry_run=true"]
    assert main(overrides, FLAGS) == 0
    sweep = tmp_path / "adaptive"
    # a round the previous invocation chose and wrote, then died before launching
    round_ = {"round": 1, "fit": {}, "rule": "static", "picks": [
        {"key": {"size": 2.5e4, "budget": 2e10, "seed_offset": 0}, "reason": "test round"}]}
    (sweep / "design.json").write_text(json.dumps({"rounds": [round_], "stopped": None}))
    assert main(overrides, FLAGS) == 0
    plan = json.loads((sweep / "plan.json").read_text())
    assert len(plan["runs"]) == 7 and plan["design"]["rounds"][0]["picks"][0]["reason"] == "test round"


def test_adaptive_needs_the_full_budget_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="budget.flops"):
        main([*TINY[:-1], "budget.flops=null", f"results_dir={tmp_path}"], FLAGS)
    assert not any(tmp_path.iterdir())
