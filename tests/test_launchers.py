"""The node launcher: several runs at once as subprocesses, each on its own GPUs (exercised on CPU)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.data.corpus import prepare_corpus
from pipeline.errors import UserError
from pipeline.plan.design import plan_sweep, plan_table
from pipeline.records import load_record
from pipeline.sweep.launchers import launch_node, train_command

GRID = ["sweep.design=grid", "sweep.sizes=[23k,46k]", "sweep.tokens=[20480]", "sweep.tokens_per_param=[]",
        "train.batch_tokens=1024", "train.warmup_tokens=2048", "train.threads=1", "tracking.mode=disabled",
        "launcher.mode=node", "launcher.gpus=2", "sweep_name=node"]


def test_node_launcher_runs_each_planned_run_once_in_parallel(corpus_overrides, tmp_path):
    overrides = [*corpus_overrides, *GRID, f"results_dir={tmp_path}"]
    study = load_config("study", Study, overrides)
    runs = plan_sweep(study, prepare_corpus(study.data).vocab_size)
    launch_node(study, runs, overrides)
    for run in runs:  # each subprocess composed the same config, so it landed in the planned run's directory
        record = load_record(tmp_path / "node" / "runs" / run.run_id)
        assert record["status"] == "ok" and record["tokens"] == run.spec.tokens
    assert sorted(p.name for p in (tmp_path / "node" / "logs").iterdir()) == sorted(f"{r.run_id}.log" for r in runs)


def test_a_size_that_needs_several_gpus_runs_under_accelerate_launch():
    study = load_config("study", Study, [*GRID, "launcher.gpus_per_run=2", "launcher.multi_gpu_min_params=30000"])
    small, large = plan_sweep(study, vocab_size=512, world_size=2)   # 23k and 46k requested: 23.1k and 38.5k on the family chain
    assert (small.gpus, large.gpus) == (1, 2)
    assert (small.spec.micro_batch_size, large.spec.micro_batch_size) == (8, 4)  # 8 sequences over 1 or 2 ranks
    cmd = train_command(["experiment=x"], large)
    assert cmd[0].endswith("accelerate") and cmd[1:5] == ["launch", "--multi_gpu", "--num_processes", "2"]
    assert cmd[5:8] == ["-m", "pipeline.train", "experiment=x"] and large.overrides[0] in cmd
    assert train_command([], small)[:3] == [sys.executable, "-m", "pipeline.train"]
    assert "1 runs (N >= 3.85e+04) train across 2 GPUs each" in plan_table([small, large], "cuda")


def test_node_launcher_gives_each_run_its_own_gpus_and_frees_them(tmp_path, monkeypatch):
    """GPU bookkeeping with stand-in processes that record CUDA_VISIBLE_DEVICES and their lifetime."""
    import pipeline.sweep.launchers as launchers

    study = load_config("study", Study, [*GRID, "sweep.sizes=[23k,46k,73k]", "launcher.gpus=3", "launcher.gpus_per_run=2",
                                         "launcher.multi_gpu_min_params=30000", f"results_dir={tmp_path}"])
    runs = plan_sweep(study, vocab_size=512, world_size=2)
    assert [r.gpus for r in runs] == [1, 2, 2]
    script = ("import os, sys, time, json; t0 = time.time(); time.sleep(0.5); "
              "print(json.dumps([sys.argv[1], os.environ['CUDA_VISIBLE_DEVICES'], t0, time.time()]))")
    monkeypatch.setattr(launchers, "train_command", lambda _o, run, **_port: [sys.executable, "-c", script, run.run_id])
    monkeypatch.setattr(launchers, "POLL_S", 0.05)
    launch_node(study, runs, [])
    seen = {}
    for run in runs:
        run_id, devices, start, end = json.loads((tmp_path / "node" / "logs" / f"{run.run_id}.log").read_text())
        seen[run_id] = (devices.split(","), start, end)
    assert [len(seen[r.run_id][0]) for r in runs] == [1, 2, 2]
    # 3 GPUs: the two 2-GPU runs cannot overlap; every run's devices are distinct from any overlapping run's
    for a in runs:
        for b in runs:
            if a is not b and seen[a.run_id][1] < seen[b.run_id][2] and seen[b.run_id][1] < seen[a.run_id][2]:
                assert not set(seen[a.run_id][0]) & set(seen[b.run_id][0])
    big = [seen[r.run_id] for r in runs if r.gpus == 2]
    assert big[0][2] <= big[1][1] or big[1][2] <= big[0][1]


def test_a_run_needing_more_gpus_than_the_node_has_is_refused_before_starting(tmp_path):
    # Refused when the config is loaded (pipeline/config/validate.py), before any plan, data or attempt.
    with pytest.raises(UserError, match="launcher.gpus_per_run=4 is more than launcher.gpus=2"):
        load_config("study", Study, [*GRID, "launcher.gpus=2", "launcher.gpus_per_run=4", f"results_dir={tmp_path}"])
    # The launcher keeps its own check for a plan made elsewhere.
    study = load_config("study", Study, [*GRID, "launcher.gpus=4", "launcher.gpus_per_run=4", f"results_dir={tmp_path}"])
    runs = plan_sweep(study, vocab_size=512, world_size=4)
    study = replace(study, launcher=replace(study.launcher, gpus=2))
    with pytest.raises(UserError, match="needs 4 GPUs but launcher.gpus=2"):
        launch_node(study, runs, [])
    assert not (tmp_path / "node" / "logs").exists()
