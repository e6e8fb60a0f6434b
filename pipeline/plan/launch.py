"""A run at the size it is launched at: processes, micro-batch, accumulation, eval batch, checkpoint interval.

One function, `plan_launch`, serves the decision (pipeline/decide/full_run.py writes its answer into
full_run.yaml) and the dry run (pipeline/train/dry_run.py checks a config against it), so the file and
the check cannot disagree. Pure arithmetic on the shape; the memory model is pipeline/plan/memory.py.

    parallelism   DDP when the 16 bytes/parameter of model states and one sequence's activations fit one
                  GPU, else FSDP over every process (the engine's `fully_shard` spans the whole world)
    micro-batch   sequences per forward pass: the most that fit beside the states (activations grow
                  linearly with it), but no more than each process's share of the rule's batch
    accumulation  ceil(share / largest micro-batch); then the micro-batch is evened out over the steps
    global batch  micro x accumulation x world: the rule's batch (pipeline/plan/hparams.py) rounded to the
                  nearest multiple of micro x world, the change stated
    eval batch    the most sequences one no-grad forward pass holds beside the states, at most 32 (the
                  old fixed size; more gains nothing)
    checkpoint    fp32 weights + AdamW m and v = 12 bytes/parameter, written by every node in parallel
                  (sharded checkpoints) at CHECKPOINT_WRITE_GB_PER_S per node; the interval is chosen
                  so that writing costs at most CHECKPOINT_OVERHEAD of the run, and never under 10 min
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from models.accounting import count_params
from models.shape import ModelShape
from pipeline.plan.memory import (
    GB,
    STATE_BYTES_PER_PARAM,
    USABLE_FRACTION,
    activation_bytes,
    eval_activation_bytes,
)

GPUS_PER_NODE = 8                    # H100/H200/A100/B200 HGX nodes
CHECKPOINT_BYTES_PER_PARAM = 12      # fp32 weights 4 + AdamW m 4 + v 4 (bf16 is autocast only: no bf16 copy saved)
CHECKPOINT_WRITE_GB_PER_S = 1.0      # per node, sustained, to a parallel filesystem: a conservative stated figure
CHECKPOINT_OVERHEAD = 0.02           # saving may cost at most 2% of the run's time
MIN_CHECKPOINT_INTERVAL_S = 600.0    # never more often than every 10 minutes
MAX_EVAL_BATCH = 32                  # the former fixed eval batch: larger ones only add memory
CHECKPOINT_RULE = (f"checkpoint = {CHECKPOINT_BYTES_PER_PARAM} bytes/parameter (fp32 weights, AdamW m, v), written "
                   f"by every node at {CHECKPOINT_WRITE_GB_PER_S:g} GB/s each (assumed; sharded checkpoints); "
                   f"interval = max({MIN_CHECKPOINT_INTERVAL_S / 60:.0f} min, write time / "
                   f"{CHECKPOINT_OVERHEAD:.0%}) so saving costs at most {CHECKPOINT_OVERHEAD:.0%} of the run")


@dataclass(frozen=True)
class Launch:
    world_size: int
    nodes: int
    gpus_per_node: int
    parallelism: str                  # ddp | fsdp
    micro_batch_size: int             # sequences per forward pass per process
    grad_accum_steps: int
    global_batch_sequences: int       # micro x accumulation x world
    rule_batch_sequences: int         # what the LR/batch rule asked for
    batch_note: str                   # how the rule's batch became the global batch
    eval_batch_size: int
    gpu_memory_gb: float
    usable_gb: float
    states_gb_per_gpu: float
    train_peak_gb: float              # states + one micro-batch's activations
    eval_peak_gb: float               # states + one eval batch's transients
    checkpoint_gb: float
    checkpoint_write_s: float
    checkpoint_interval_s: float
    problems: list[str] = field(default_factory=list)   # what stops this launch, each with its fix

    @property
    def peak_memory_gb_per_gpu(self) -> float:
        return max(self.train_peak_gb, self.eval_peak_gb)

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_memory_gb_per_gpu": self.peak_memory_gb_per_gpu}


def nodes_for(world_size: int, gpus_per_node: int = GPUS_PER_NODE) -> tuple[int, int]:
    """(nodes, processes per node) for `world_size` processes on nodes of `gpus_per_node` GPUs."""
    per_node = min(world_size, gpus_per_node)
    return math.ceil(world_size / per_node), per_node


def checkpoint_interval(n_params_total: int, nodes: int) -> tuple[float, float, float]:
    """(checkpoint GB, seconds to write it, interval in seconds) under CHECKPOINT_RULE."""
    size = CHECKPOINT_BYTES_PER_PARAM * n_params_total
    write_s = size / (CHECKPOINT_WRITE_GB_PER_S * GB * nodes)
    interval = max(MIN_CHECKPOINT_INTERVAL_S, write_s / CHECKPOINT_OVERHEAD)
    return size / GB, write_s, 60.0 * math.ceil(interval / 60.0)  # whole minutes


def split_batch(rule_sequences: int, world_size: int, max_micro: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) whose batch, micro x accumulation x world, is closest to the rule's.

    Micro-batches from the largest that fits (`max_micro`, or the per-GPU share when that is smaller) down to
    half of it are tried, each with its nearest accumulation count; the closest batch wins, the larger micro-batch
    on a tie (fewer, fuller steps). Half keeps the GPU busy; the minimum accumulation alone rounded a 12.5-sequence
    share with 2 fitting to 2 x 7 (+12%) where 2 x 6 (-4%) was there."""
    share = max(rule_sequences / world_size, 1.0)
    top = max(1, min(max_micro, math.ceil(share)))
    best = None
    for micro in range(top, (top + 1) // 2 - 1, -1):
        accum = max(1, round(share / micro))
        miss = abs(micro * accum - share)
        if best is None or miss < best[0] - 1e-9:
            best = (miss, micro, accum)
    return best[1], best[2]


def batch_note(rule: int, global_batch: int, micro: int, accum: int, world: int, seq_len: int,
               given: bool = False) -> str:
    """How the batch became micro x accumulation x world (`given`: train.batch_tokens was set, never moved)."""
    unit = f"{micro} x {accum} accumulation x {world} processes"
    if given:
        return f"train.batch_tokens as given: {global_batch} sequences = {unit}"
    if rule == global_batch:
        return f"the rule's batch, {rule} sequences = {unit}"
    return (f"the rule's {rule} sequences rounded to {global_batch} = {unit} "
            f"({global_batch / rule - 1:+.1%}, {global_batch * seq_len:,} tokens per step)")


def plan_launch(shape: ModelShape, rule_batch_sequences: int, world_size: int, gpu_memory_gb: float = 80.0, *,
                micro_batch_size: int | None = None, eval_batch_size: int | None = None,
                parallelism: str | None = None, gpus_per_node: int = GPUS_PER_NODE) -> Launch:
    """The launch of `shape` on `world_size` GPUs of `gpu_memory_gb`; given values are checked, not moved."""
    seq_len = shape.seq_len
    n_total = count_params(shape)["total"]
    states = STATE_BYTES_PER_PARAM * n_total
    usable = USABLE_FRACTION * gpu_memory_gb * GB
    one_sequence = activation_bytes(shape, 1, seq_len, checkpointing=False)
    if parallelism is None:
        parallelism = "ddp" if states + one_sequence <= usable or world_size == 1 else "fsdp"
    states_per_gpu = states / world_size if parallelism == "fsdp" else states
    room = usable - states_per_gpu
    problems = []

    fits = max(int(room // one_sequence), 0)
    if micro_batch_size is None:
        micro, accum = split_batch(rule_batch_sequences, world_size, max(fits, 1))
    else:
        micro = micro_batch_size
        accum = max(1, round(rule_batch_sequences / (micro * world_size)))
    global_batch = micro * accum * world_size
    train_peak = states_per_gpu + activation_bytes(shape, micro, seq_len, checkpointing=False)
    if train_peak > usable:
        if fits >= 1:
            fix = f"set train.micro_batch_size={fits} (gradient accumulation keeps the batch)"
        elif parallelism == "ddp" and world_size > 1:
            fix = "set train.parallelism=fsdp to shard the model states"
        else:
            fix = ("add GPUs (budget.gpus, train.world_size) or use a trainer with activation checkpointing / "
                   "tensor parallelism (models/transformer.py has neither)")
        problems.append(f"a micro-batch of {micro} needs {train_peak / GB:.1f} GB per GPU, over the {usable / GB:.0f} "
                        f"GB usable of {gpu_memory_gb:g} GB ({parallelism}, {world_size} processes): {fix}")

    per_eval_sequence = eval_activation_bytes(shape, 1, seq_len)
    eval_fits = max(int(room // per_eval_sequence), 0)
    eval_batch = eval_batch_size or max(1, min(MAX_EVAL_BATCH, eval_fits))
    eval_peak = states_per_gpu + eval_activation_bytes(shape, eval_batch, seq_len)
    if eval_peak > usable and not problems:
        problems.append(f"an eval batch of {eval_batch} sequences needs {eval_peak / GB:.1f} GB per GPU, over the "
                        f"{usable / GB:.0f} GB usable: set train.eval_batch_size={max(eval_fits, 1)}")

    nodes, per_node = nodes_for(world_size, gpus_per_node)
    if nodes * per_node != world_size:
        problems.append(f"{world_size} processes do not fill whole {gpus_per_node}-GPU nodes: use a multiple of "
                        f"{gpus_per_node} (budget.gpus, train.world_size)")
    ckpt_gb, write_s, interval = checkpoint_interval(n_total, nodes)
    return Launch(world_size=world_size, nodes=nodes, gpus_per_node=per_node, parallelism=parallelism,
                  micro_batch_size=micro, grad_accum_steps=accum, global_batch_sequences=global_batch,
                  rule_batch_sequences=rule_batch_sequences,
                  batch_note=batch_note(rule_batch_sequences, global_batch, micro, accum, world_size, seq_len),
                  eval_batch_size=eval_batch, gpu_memory_gb=gpu_memory_gb, usable_gb=usable / GB,
                  states_gb_per_gpu=states_per_gpu / GB, train_peak_gb=train_peak / GB, eval_peak_gb=eval_peak / GB,
                  checkpoint_gb=ckpt_gb, checkpoint_write_s=write_s, checkpoint_interval_s=interval,
                  problems=problems)
