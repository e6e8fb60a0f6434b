"""How the recommended full run is launched: processes, nodes, DDP or FSDP, and the files that say so.

The memory check (pipeline/plan/memory.py) decides the parallelism; this module turns it into
what a user runs:

- `train.parallelism` for full_run.yaml: `fsdp` when the model states do not fit one GPU
  unsharded (the engine then shards each block with FSDP2's `fully_shard`, the path tested on CPU
  in tests/test_multiprocess.py), `ddp` otherwise;
- `launch/accelerate.yaml`: accelerate's launch topology for one node (processes, bf16, rendezvous
  port). It says MULTI_GPU, not FSDP, on purpose: the sharding is the engine's, so accelerate must
  not wrap the model a second time;
- `launch/launch.json`: the processes and nodes, the one-node command and the multi-node SLURM
  command (slurm/full_run.sbatch: one `srun` task per GPU over all nodes, rendezvous at the first
  node), and what the memory check asks for that this trainer does not do (activation
  checkpointing, tensor parallelism).

Text only: the decision stage never imports torch.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import yaml

from pipeline.plan.launch import GPUS_PER_NODE

RENDEZVOUS_PORT = 29500


def launch_plan(memory: dict, gpus: int | None, gpus_per_node: int = GPUS_PER_NODE) -> dict:
    """Processes, nodes and parallelism for the full run.

    `gpus`: the budget's GPU count (None: no hardware given, so the fewest GPUs the memory check
    allows: its shard count under FSDP, one otherwise).
    """
    kind = memory.get("parallelism", "single_gpu")
    sharded = kind.startswith("fsdp")
    processes = int(gpus) if gpus else (int(memory.get("shards", 1)) if sharded else 1)
    if sharded and processes < memory.get("shards", 1):
        processes = int(memory["shards"])  # the check's shard count is the fewest GPUs that hold the states
    per_node = min(processes, gpus_per_node)
    nodes = math.ceil(processes / per_node)
    unsupported = []
    if memory.get("activation_checkpointing"):
        unsupported.append("the memory check needs activation checkpointing, which models/transformer.py does not "
                           "implement: lower train.micro_batch_size (gradient accumulation keeps the batch) until "
                           "it fits")
    if memory.get("tensor_parallel", 1) > 1:
        unsupported.append(f"the memory check needs tensor parallelism of {memory['tensor_parallel']}, which this "
                           "trainer does not do: use a framework with tensor parallelism (e.g. torchtitan, Megatron)")
    return {"parallelism": "fsdp" if sharded else "ddp", "processes": processes, "nodes": nodes,
            "gpus_per_node": per_node, "memory_verdict": memory.get("summary", "not checked"),
            "unsupported": unsupported}


def accelerate_config(plan: dict) -> dict:
    """accelerate's config file for one node (`accelerate launch --config_file`)."""
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU" if plan["processes"] > 1 else "NO",
            "num_machines": 1, "machine_rank": 0, "num_processes": plan["gpus_per_node"],
            "main_process_port": RENDEZVOUS_PORT, "mixed_precision": "bf16", "dynamo_backend": "NO",
            "same_network": True, "rdzv_backend": "static", "use_cpu": False}


def commands(plan: dict, fit_dir: str) -> dict:
    """Shell commands, each path quoted (a fit folder may hold spaces)."""
    quoted = shlex.quote(str(fit_dir))
    train = f"-m pipeline.train --config-dir {quoted} experiment=full_run"
    one_node = (f"accelerate launch --config_file {shlex.quote(f'{fit_dir}/launch/accelerate.yaml')} {train}"
                if plan["processes"] > 1 else f"python {train}")
    slurm = (f"sbatch --nodes={plan['nodes']} --ntasks-per-node={plan['gpus_per_node']} "
             f"--gpus-per-node={plan['gpus_per_node']} {shlex.quote(f'--export=ALL,FIT_DIR={fit_dir}')} "
             "slurm/full_run.sbatch")
    return {"one_node": one_node if plan["nodes"] == 1 else None, "slurm": slurm}


def _full_run_plan(recommendation: dict) -> dict:
    """launch_plan for the recommended run, at the world size and parallelism of its launch (plan/launch.py)."""
    model = recommendation["model"]
    plan = launch_plan(model.get("memory") or {}, recommendation["budget"].get("gpus"))
    launch = model.get("launch")
    if launch:
        plan.update(parallelism=launch["parallelism"], processes=launch["world_size"], nodes=launch["nodes"],
                    gpus_per_node=launch["gpus_per_node"], unsupported=list(launch["problems"]))
    return plan


def launch_train_keys(recommendation: dict) -> list[tuple[str, str, str]]:
    """The full_run.yaml `train:` entries this module decides (one: the parallelism, with its reason)."""
    plan = _full_run_plan(recommendation)
    why = ("the model states and a micro-batch fit one GPU: replicated" if plan["parallelism"] == "ddp"
           else f"model states sharded over all {plan['processes']} processes (FSDP2)")
    return [("parallelism", plan["parallelism"], f"{why}; launch: see launch/launch.json")]


def write_launch_files(recommendation: dict, out_dir) -> Path:
    """Write <out_dir>/launch/{launch.json, accelerate.yaml}; returns the launch.json path."""
    plan = _full_run_plan(recommendation)
    folder = Path(out_dir) / "launch"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accelerate.yaml").write_text(yaml.safe_dump(accelerate_config(plan), sort_keys=False))
    path = folder / "launch.json"
    path.write_text(json.dumps({**plan, "commands": commands(plan, str(Path(out_dir)))}, indent=2) + "\n")
    return path
