"""What several processes of one run must agree on, and how their states become one checkpoint.

A run on several processes (`accelerate launch`, `torchrun`, or one `srun` task per GPU) trains the
same loop on every rank; only the main process touches the run's files (lock, record, logs,
checkpoints) and W&B. Three rules keep the ranks in step (a rank that takes another branch than the
others waits forever in the next collective):

1. Every control decision is agreed each step by ONE small all-reduce (`agree`): the summed train
   loss (so a NaN on any rank is a NaN everywhere), "a stop signal arrived" (any rank) and "checkpoint
   now" (the main process's clock). All ranks then branch on the same numbers.
2. What only the main process can know (it holds the lock, a checkpoint is readable) is sent to the
   others (`from_main`) before anyone acts on it.
3. Checkpoints are each rank's own state (`training_state`): under FSDP2 the parameters and AdamW
   moments are DTensor shards, saved and loaded shard by shard through torch.distributed.checkpoint
   (pipeline/train/checkpoint.py), so no rank ever holds the full state and a run may resume on
   another number of processes (DCP reads the overlapping parts of the saved shards). One process
   writes the same state, keyed by parameter name, into one file.

FSDP: `train.parallelism=fsdp` shards each transformer block and the root with FSDP2's
`fully_shard` here, on CPU (gloo) and GPU (NCCL) alike. accelerate 1.15 ignores an FSDP plugin on
CPU (it silently wraps DDP), so sharding is done by us, and the same code path is the one tested on CPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks of `values`, in one all-reduce (float64; identity on one process)."""
    if not distributed():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def close(wait_for_all: bool) -> None:
    """End the process group before the interpreter exits.

    Without it gloo's background threads are torn down at exit and a rank can abort ("terminate
    called without an active exception", status 134) after a run that succeeded or was preempted,
    which turns exit 0/75 into a failure for srun and the sweep. `wait_for_all`: a barrier first (only
    when every rank is known to reach it, i.e. not while an exception is leaving this rank).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait_for_all and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001, S110 - best effort on the way out; the record is already written
        pass


def from_main(value, is_main: bool):
    """The main process's `value` on every rank (a small picklable object)."""
    if not distributed():
        return value
    box = [value if is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_model(model: torch.nn.Module, bf16: bool = False) -> torch.nn.Module:
    """FSDP2: each block is one unit (its parameters gathered for its forward/backward only), the root
    holds the embeddings, final norm and head (tied embeddings share one unit).

    With bf16 the shards stay fp32 (the optimizer's master weights) while each unit is all-gathered
    in bf16 for compute and its gradients reduce-scattered in fp32 (`MixedPrecisionPolicy`): half the
    all-gather traffic of fp32, and gradient sums without bf16 rounding.
    """
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{"model", "optimizer"}: this rank's state keyed by parameter name (DDP and compile prefixes dropped).

    Under FSDP2 its tensors are this rank's DTensor shards: nothing is gathered. On a fresh optimizer
    `get_state_dict` first allocates the AdamW moments (one step at lr=0 on zero gradients, which
    leaves the weights bit for bit as they are), so the result is also the template a load fills in.
    A collective under FSDP: every rank calls it. The tensors are the live ones (no copy).
    """
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's model and optimizer state into the (possibly wrapped or sharded) model.

    `state["format"]` (pipeline/train/checkpoint.py): 3, `training_state` filled in from a sharded
    checkpoint (the live model's placements); 2, one file's state keyed by name, full (a single
    process's, or gathered by rank 0 before sharded checkpoints); 1, one process's state by index.

    On `set_optimizer_state_dict` and "an unexplained 7e-4 difference": an earlier two-rank
    experiment compared the optimizer loaded this way with the state dict it had saved and then
    continued the uninterrupted run. `get_state_dict(cpu_offload=True)` returns AdamW's `step`
    counters on the CPU as the live tensors, not copies, so continuing the run advanced the "saved"
    steps too: the loaded optimizer was one step ahead in Adam's bias correction (step 4, not 3), a
    change of about 7% of the LR. With a copy of the state (or a checkpoint read back from disk) the
    loaded run is bit for bit the uninterrupted one; tests/test_multiprocess.py checks it on 2 and 4 ranks.
    """
    if state.get("format", 1) < 2:  # written by a single process before format 2
        set_model_state_dict(model, state["model"])  # names as the bare model's, whatever wraps it now
        optimizer.load_state_dict(state["optimizer"])
        return
    full = state["format"] == 2 and distributed()  # every rank holds the whole file: keep its own part
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=full))
