"""Does the recommended model fit one GPU, and if not, which parallelism does it need?

A rough, stated estimate -- enough to pick a strategy before launching, not to size buffers.

Model states, bytes per parameter (mixed-precision AdamW; Rajbhandari et al. 2020, "ZeRO", sec. 3.1,
with K = 12):
    bf16 weights 2 + bf16 gradients 2 + fp32 master weights 4 + AdamW first and second moments 4 + 4
    = 16 bytes per parameter. ZeRO-3 / FSDP full sharding divides all 16 by the number of shards.

Activations per transformer layer, bytes, for a micro-batch of b sequences of s tokens at width h
with a heads (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", sec. 4.1, eq. 1):
    s b h (34 + 5 a s / h)
The 5 a s^2 b term stores the attention scores; fused attention kernels (FlashAttention, which
torch's SDPA uses on GPUs in bf16) never materialise them, so we count 34 s b h. The 34 assumes a 4h
GELU MLP with dropout; our SwiGLU at d_ff = 8/3 h stores about as much, and we have no dropout masks,
so it slightly overestimates. With full activation checkpointing only each layer's input is kept,
2 s b h per layer (ibid., the full-recomputation case), plus one layer's activations while it is recomputed.
The output layer adds the logits: bf16 logits plus an fp32 copy for the loss, 6 s b V bytes.
Tensor parallelism with sequence parallelism divides the activations by its degree t (ibid., sec. 4,
sequence parallelism).

Evaluation (no gradients, nothing kept for a backward pass) holds, per sequence, one layer's
transient tensors in bf16, 2 s b (4 h + 3 f) bytes (q, k, v, attention output; SwiGLU gate, up and
product), and the logits three times: bf16 from the head, the fp32 copy the loss takes, and the fp32
log-softmax inside the cross-entropy, 10 s b V bytes (pipeline/train/engine.py, evaluate). At T = 2,048
and V = 50,257 that is 1.03 GB per sequence: 32 sequences, the old fixed eval batch, need ~33 GB.

Of each GPU's memory we budget 90% (CUDA context, NCCL buffers, allocator fragmentation).
It lives in plan/ (pure, no torch) so that the decision (pipeline/decide) and a run's dry run
(pipeline/train/dry_run.py) use the same numbers.
"""

from __future__ import annotations

from models.accounting import count_params
from models.shape import ModelShape

BYTES_PER_PARAM_STATES = {"weights_bf16": 2, "gradients_bf16": 2, "master_fp32": 4, "adam_m_fp32": 4, "adam_v_fp32": 4}
STATE_BYTES_PER_PARAM = sum(BYTES_PER_PARAM_STATES.values())  # 16
ACTIVATION_BYTES_PER_SBH = 34          # Korthikanti et al. 2022 eq. 1 without the attention-score term
CHECKPOINT_BYTES_PER_SBH = 2           # the layer input, kept under full recomputation
LOGIT_BYTES = 6                        # bf16 logits + fp32 copy for the cross-entropy
EVAL_LOGIT_BYTES = 10                  # bf16 logits + fp32 copy + fp32 log-softmax, no backward to feed
EVAL_LAYER_BYTES = 2                   # bf16 transients of the one layer running: q, k, v, out (4h), SwiGLU (3f)
USABLE_FRACTION = 0.90
MAX_TENSOR_PARALLEL = 8                # one node: tensor parallelism across nodes is rarely worth it
MAX_SHARDS_WITHOUT_GPU_COUNT = 1024
GB = 1e9

STATES_CONVENTION = ("bf16 weights 2 + bf16 gradients 2 + fp32 master weights 4 + AdamW m, v 4 + 4 = "
                     "16 bytes/parameter (Rajbhandari et al. 2020, ZeRO sec. 3.1)")
ACTIVATION_FORMULA = ("per layer s*b*h*34 bytes (Korthikanti et al. 2022 eq. 1, sbh(34 + 5as/h), without the "
                      "5as/h attention-score term that fused attention does not store); 2sbh with full "
                      "activation checkpointing; logits 6*s*b*V")


def activation_bytes(shape: ModelShape, micro_batch_sequences: int, seq_len: int, checkpointing: bool) -> float:
    """Activation memory of one micro-batch, whole model (see module doc for the formula)."""
    sbh = seq_len * micro_batch_sequences * shape.d_model
    logits = LOGIT_BYTES * seq_len * micro_batch_sequences * shape.vocab_size
    if checkpointing:
        # every layer's input, plus the one layer being recomputed in the backward pass
        return shape.n_layer * CHECKPOINT_BYTES_PER_SBH * sbh + ACTIVATION_BYTES_PER_SBH * sbh + logits
    return shape.n_layer * ACTIVATION_BYTES_PER_SBH * sbh + logits


def eval_activation_bytes(shape: ModelShape, batch_sequences: int, seq_len: int) -> float:
    """Peak transient memory of one evaluation forward pass without gradients (module doc)."""
    per_token = EVAL_LAYER_BYTES * (4 * shape.d_model + 3 * shape.d_ff) + EVAL_LOGIT_BYTES * shape.vocab_size
    return float(batch_sequences * seq_len * per_token)


def _powers_of_two(limit: int):
    k = 1
    while k <= limit:
        yield k
        k *= 2


def _plan(states: float, act_full: float, act_ckpt: float, usable: float, max_shards: int) -> dict:
    """The cheapest strategy that fits: DDP, then FSDP shards, then + checkpointing, then + TP."""
    for shards in _powers_of_two(max_shards):
        if states / shards + act_full <= usable:
            kind = "single_gpu" if shards == 1 else "fsdp"
            return {"parallelism": kind, "shards": shards, "tensor_parallel": 1, "activation_checkpointing": False,
                    "per_gpu_bytes": states / shards + act_full}
    for shards in _powers_of_two(max_shards):
        if states / shards + act_ckpt <= usable:
            kind = "checkpointing" if shards == 1 else "fsdp+checkpointing"
            return {"parallelism": kind, "shards": shards, "tensor_parallel": 1, "activation_checkpointing": True,
                    "per_gpu_bytes": states / shards + act_ckpt}
    for tp in _powers_of_two(MAX_TENSOR_PARALLEL):
        per_gpu = states / max_shards + act_ckpt / tp
        if tp > 1 and per_gpu <= usable:
            return {"parallelism": "fsdp+checkpointing+tensor_parallel", "shards": max_shards, "tensor_parallel": tp,
                    "activation_checkpointing": True, "per_gpu_bytes": per_gpu}
    return {"parallelism": "does_not_fit", "shards": max_shards, "tensor_parallel": MAX_TENSOR_PARALLEL,
            "activation_checkpointing": True,
            "per_gpu_bytes": states / max_shards + act_ckpt / MAX_TENSOR_PARALLEL}


def _summary(plan: dict, gpu_memory_gb: float) -> str:
    kind, k, tp = plan["parallelism"], plan["shards"], plan["tensor_parallel"]
    per_gpu = plan["per_gpu_bytes"] / GB
    if kind == "single_gpu":
        return f"fits on one {gpu_memory_gb:g} GB GPU unsharded ({per_gpu:.3g} GB): plain data parallel (DDP)"
    if kind == "checkpointing":
        return (f"fits on one {gpu_memory_gb:g} GB GPU only with activation checkpointing ({per_gpu:.3g} GB): "
                "DDP + checkpointing")
    if kind == "fsdp":
        return (f"does not fit one {gpu_memory_gb:g} GB GPU unsharded: shard with FSDP/ZeRO-3 across {k} GPUs "
                f"({per_gpu:.3g} GB each)")
    if kind == "fsdp+checkpointing":
        return (f"does not fit one {gpu_memory_gb:g} GB GPU unsharded: FSDP/ZeRO-3 across {k} GPUs plus "
                f"activation checkpointing ({per_gpu:.3g} GB each)")
    if kind == "fsdp+checkpointing+tensor_parallel":
        return (f"needs FSDP/ZeRO-3 across {k} GPUs, activation checkpointing and tensor parallelism of {tp} "
                f"({per_gpu:.3g} GB each)")
    return (f"does not fit even with FSDP across {k} GPUs, checkpointing and tensor parallelism {tp} "
            f"({per_gpu:.3g} GB each): add GPUs or pipeline parallelism")


def memory_check(shape: ModelShape, *, seq_len: int | None = None, micro_batch_sequences: int = 1,
                 gpu_memory_gb: float = 80.0, n_gpus: int | None = None) -> dict:
    """Per-GPU memory of training `shape` with AdamW in bf16, and the parallelism that makes it fit.

    `n_gpus` caps the shard count (unset: any power of two up to 1024). Returns GB figures, the
    chosen strategy and a one-sentence summary; the largest micro-batch that fits under that
    strategy is reported too (at least the one asked for when nothing fits).
    """
    seq_len = seq_len or shape.seq_len
    n_params = count_params(shape)["total"]  # every parameter occupies memory, embeddings included
    states = STATE_BYTES_PER_PARAM * n_params
    usable = USABLE_FRACTION * gpu_memory_gb * GB
    max_shards = n_gpus if n_gpus else MAX_SHARDS_WITHOUT_GPU_COUNT
    act_full = activation_bytes(shape, micro_batch_sequences, seq_len, checkpointing=False)
    act_ckpt = activation_bytes(shape, micro_batch_sequences, seq_len, checkpointing=True)
    plan = _plan(states, act_full, act_ckpt, usable, max_shards)

    # Largest micro-batch under the chosen strategy (activations grow linearly with it).
    per_sequence = activation_bytes(shape, 1, seq_len, plan["activation_checkpointing"]) / plan["tensor_parallel"]
    room = usable - states / plan["shards"]
    max_micro = max(int(room // per_sequence), 0) if per_sequence > 0 else 0

    return {
        "n_params_total": n_params,
        "states_convention": STATES_CONVENTION,
        "activation_formula": ACTIVATION_FORMULA,
        "gpu_memory_gb": gpu_memory_gb,
        "usable_gb": usable / GB,
        "micro_batch_sequences": micro_batch_sequences,
        "seq_len": seq_len,
        "weights_gb": BYTES_PER_PARAM_STATES["weights_bf16"] * n_params / GB,
        "gradients_gb": BYTES_PER_PARAM_STATES["gradients_bf16"] * n_params / GB,
        "optimizer_gb": (STATE_BYTES_PER_PARAM - 4) * n_params / GB,
        "model_states_gb": states / GB,
        "activations_gb": {"no_checkpointing": act_full / GB, "checkpointing": act_ckpt / GB},
        "fits_unsharded": states + act_full <= usable,
        "parallelism": plan["parallelism"],
        "shards": plan["shards"],
        "tensor_parallel": plan["tensor_parallel"],
        "activation_checkpointing": plan["activation_checkpointing"],
        "per_gpu_gb": plan["per_gpu_bytes"] / GB,
        "max_micro_batch_sequences": max_micro,
        "summary": _summary(plan, gpu_memory_gb),
    }
