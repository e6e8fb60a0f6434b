"""Cooldown reuse (Hägele et al. 2024): one stable trunk per size, (1 - sqrt) cooldown branches from it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.plan.design import plan_sweep, plan_table
from pipeline.records import load_record, write_record
from pipeline.sweep import __main__ as sweep_command
from pipeline.sweep import dispatch
from pipeline.train.run import execute

GRID = ["sweep.design=grid", "sweep.sizes=[23k]", "sweep.tokens=[40960,81920,163840]", "train.warmup_tokens=4096", "sweep.tokens_per_param=[]",
        "sweep.cooldown_reuse=true", "train.batch_tokens=1024", "train.threads=1", "train.progress=false",
        "train.evals_per_run=2", "tracking.mode=disabled", "sweep_name=reuse"]


def test_branch_points_lie_in_the_trunks_stable_phase_and_save_compute():
    study = load_config("study", Study, GRID)
    runs = plan_sweep(study, vocab_size=512)
    trunk, branches = runs[0], runs[1:]
    assert trunk.job.train.schedule.value == "constant" and len(branches) == 3
    for b in branches:
        point = b.spec.steps - b.spec.cooldown_steps
        assert b.job.train.branch_from == trunk.run_id and b.job.train.schedule.value == "wsd"
        assert point in trunk.job.train.keep_steps
        assert b.spec.warmup_steps < point <= trunk.spec.steps  # after warmup, within the trunk: stable phase
        assert b.spec.hparams.lr == trunk.spec.hparams.lr and b.spec.batch_tokens == trunk.spec.batch_tokens
    independent = sum(b.spec.flops["exact"] for b in branches)
    spent = sum(r.spent_flops for r in runs)
    assert spent == pytest.approx(0.8 * 163840 * trunk.spec.flops_per_token["exact"]
                                  + 0.2 * independent, rel=0.02)
    assert "cooldown reuse:" in plan_table(runs)


def test_trunks_launch_in_a_wave_before_their_branches(tmp_path, monkeypatch):
    study = load_config("study", Study, [*GRID, f"results_dir={tmp_path}"])
    runs = plan_sweep(study, vocab_size=512)
    trunk, branches = runs[0], [r.run_id for r in runs[1:]]
    waves = []
    monkeypatch.setattr(dispatch, "_launch_wave", lambda _study, wave, _over: waves.append([r.run_id for r in wave]))
    dispatch.launch(study, runs, [])
    assert waves == [[trunk.run_id]]   # the trunk did not finish: its branches wait for the next launch
    write_record(tmp_path / "reuse" / "runs" / trunk.run_id, {
        "run_id": trunk.run_id, "status": "ok", "params": trunk.spec.params, "convention": "total",
        "tokens": trunk.spec.tokens, "flops": trunk.spec.flops, "shape": trunk.spec.shape.to_dict(),
        "final_val_loss": 4.0})
    waves.clear()
    dispatch.launch(study, runs[1:], [])
    assert waves == [branches]


def test_cooldown_reuse_runs_on_the_node_launcher_trunk_first(corpus_overrides, tmp_path, capsys):
    overrides = [*corpus_overrides, *GRID, "launcher.mode=node", "launcher.gpus=2", f"results_dir={tmp_path}"]
    assert sweep_command.main(overrides, {}) == 0
    runs = plan_sweep(load_config("study", Study, overrides), vocab_size=512)
    records = [load_record(tmp_path / "reuse" / "runs" / r.run_id) for r in runs]
    assert [r["status"] for r in records] == ["ok"] * 4 and records[0]["role"] == "trunk"
    assert all(r["branched_from"]["run_id"] == runs[0].run_id for r in records[1:])
    out = capsys.readouterr().out
    assert out.index(f"{runs[0].run_id} exited 0") < min(out.index(f"{r.run_id} started") for r in runs[1:])


def test_a_branch_equals_an_independent_wsd_run_bitwise(corpus_overrides, tmp_path):
    study = load_config("study", Study, [*corpus_overrides, *GRID, f"results_dir={tmp_path}"])
    from pipeline.data.corpus import prepare_corpus

    runs = plan_sweep(study, prepare_corpus(study.data).vocab_size)
    trunk, branch = runs[0], runs[2]  # the 81,920-token branch
    execute(trunk.job)
    branched = execute(branch.job)
    assert branched["branched_from"] == {"run_id": trunk.run_id, "step": branch.spec.steps - branch.spec.cooldown_steps}
    alone = replace(branch.job, train=replace(branch.job.train, branch_from=None), run_dir=str(tmp_path / "alone"))
    independent = execute(alone)
    assert branched["final_val_loss"] == independent["final_val_loss"]
    assert load_record(tmp_path / "reuse" / "runs" / trunk.run_id)["role"] == "trunk"
