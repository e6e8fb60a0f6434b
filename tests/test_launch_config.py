"""The full run's launch: FSDP when the memory check says the states do not fit one GPU, DDP otherwise,
with the processes, nodes and commands written next to full_run.yaml."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.decide.budget import resolve_budget
from pipeline.decide.launch_config import commands, launch_plan
from pipeline.decide.recommend import recommend, write_full_run_config
from pipeline.fit.laws import published_law

EPOCH = published_law("epoch")
VOCAB, SEQ = 50304, 2048


@pytest.fixture(scope="module")
def big():
    """~3e24 FLOPs on 256 H100s: a model whose 16 bytes/parameter do not fit one 80 GB GPU."""
    return recommend(EPOCH, resolve_budget({"gpu": "h100_sxm", "gpus": 256, "days": 60}), vocab_size=VOCAB,
                     seq_len=SEQ)


def test_a_model_too_large_for_one_gpu_launches_with_fsdp_over_all_nodes(big, tmp_path):
    memory = big["model"]["memory"]
    assert memory["parallelism"].startswith("fsdp") and not memory["fits_unsharded"]
    plan = launch_plan(memory, gpus=256)
    assert (plan["parallelism"], plan["processes"], plan["nodes"], plan["gpus_per_node"]) == ("fsdp", 256, 32, 8)
    write_full_run_config(big, tmp_path)
    train = yaml.safe_load((tmp_path / "experiment" / "full_run.yaml").read_text())["train"]
    assert train["parallelism"] == "fsdp"
    launch = json.loads((tmp_path / "launch" / "launch.json").read_text())
    assert launch["commands"]["one_node"] is None  # 32 nodes: only the SLURM path
    assert launch["commands"]["slurm"].startswith("sbatch --nodes=32 --ntasks-per-node=8 --gpus-per-node=8 ")
    assert launch["commands"]["slurm"].endswith("slurm/full_run.sbatch")
    accelerate = yaml.safe_load((tmp_path / "launch" / "accelerate.yaml").read_text())
    assert accelerate["distributed_type"] == "MULTI_GPU"  # the engine shards; accelerate must not wrap again
    assert accelerate["num_processes"] == 8 and accelerate["mixed_precision"] == "bf16"
    # The generated experiment is a valid config for `python -m pipeline.train`.
    job = load_config("study", Study, [f"hydra.searchpath=[file://{tmp_path}]", "experiment=full_run"])
    assert job.train.parallelism == "fsdp"


def test_a_model_that_fits_one_gpu_is_plain_data_parallel(tmp_path):
    small = recommend(EPOCH, resolve_budget({"gpu": "h100_sxm", "gpus": 8, "days": 1}), vocab_size=VOCAB, seq_len=SEQ)
    assert small["model"]["memory"]["fits_unsharded"]
    plan = launch_plan(small["model"]["memory"], gpus=8)
    assert (plan["parallelism"], plan["processes"], plan["nodes"]) == ("ddp", 8, 1)
    assert commands(plan, "/fit")["one_node"] == ("accelerate launch --config_file /fit/launch/accelerate.yaml "
                                                  "-m pipeline.train --config-dir /fit experiment=full_run")
    alone = launch_plan(small["model"]["memory"], gpus=None)  # no hardware given: one GPU
    assert alone["processes"] == 1
    assert commands(alone, "/fit")["one_node"] == "python -m pipeline.train --config-dir /fit experiment=full_run"


def test_what_the_trainer_cannot_do_is_said_not_hidden():
    memory = {"parallelism": "fsdp+checkpointing+tensor_parallel", "shards": 64, "tensor_parallel": 4,
              "activation_checkpointing": True, "summary": "needs everything"}
    plan = launch_plan(memory, gpus=16)
    assert plan["processes"] == 64  # fewer GPUs than shards cannot hold the states
    assert len(plan["unsupported"]) == 2
    assert "activation checkpointing" in plan["unsupported"][0] and "tensor parallelism of 4" in plan["unsupported"][1]
