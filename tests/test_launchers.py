"""The node launcher: several runs at once as subprocesses, one slot of GPUs each (exercised on CPU)."""

from __future__ import annotations

import sys

from pipeline.config import Study, load_config
from pipeline.data import prepare_corpus
from pipeline.launchers import launch_node, train_command
from pipeline.plan import plan_sweep
from pipeline.results import load_record

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
    study = load_config("study", Study, [*GRID, "launcher.gpus_per_run=2"])
    run = plan_sweep(study, vocab_size=512, world_size=2)[0]
    cmd = train_command(["experiment=x"], run, gpus_per_run=2)
    assert cmd[0].endswith("accelerate") and cmd[1:5] == ["launch", "--multi_gpu", "--num_processes", "2"]
    assert cmd[5:8] == ["-m", "pipeline.train", "experiment=x"] and run.overrides[0] in cmd
    assert train_command([], run)[:3] == [sys.executable, "-m", "pipeline.train"]
