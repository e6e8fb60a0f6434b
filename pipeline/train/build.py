"""The model of a run, built the way a model too large for one device must be built.

`build_model` never materialises the full model on any rank: the module is created on the meta
device (shapes only), sharded with FSDP2 when the run is, then `to_empty` allocates only this rank's
shards on the training device, and `init_weights` fills them once, from the run's seed. The weights
are the same numbers as a one-process run's (the initialiser draws each full parameter on the CPU
from a private generator and every rank keeps its own part), so the process count changes neither
the start nor the result beyond float rounding.

torch.compile is applied block by block (the blocks share one compiled graph: same code, same
shapes), before FSDP2's `fully_shard` and accelerate's DDP wrap, as torchtitan does: the
communication hooks of FSDP (all-gather before a block, reduce-scatter after its backward) and DDP
(a gradient bucket's all-reduce as soon as its block's backward is done) stay outside the compiled
graphs, so communication overlaps the other blocks' compute. Compiling the whole model before
the DDP wrap -- as this engine did before -- made the whole backward one graph whose gradients all
arrive at its end: nothing left to overlap.
"""

from __future__ import annotations

import torch

from models.shape import ModelShape
from models.transformer import Transformer
from pipeline.train.distributed import shard_model


def build_model(shape: ModelShape, *, init_std: float, seed: int, device: torch.device, fsdp: bool,
                bf16: bool, compile_blocks: bool) -> Transformer:
    """The run's model on `device`: initialised once from `seed`, sharded when `fsdp`, blocks compiled
    when `compile_blocks`. With FSDP and `bf16` the shards are fp32 and compute runs on bf16 copies
    (pipeline/train/distributed.py's MixedPrecisionPolicy)."""
    with torch.device("meta"):
        model = Transformer(shape, init_std=init_std)  # no storage: its __init__ initialises nothing
    if compile_blocks:
        for index, block in enumerate(model.blocks):
            model.blocks[index] = torch.compile(block)
    if fsdp:
        shard_model(model, bf16=bf16)
    model.to_empty(device=device)
    if shape.tie_embeddings:  # to_empty gives each module its own new tensor (FSDP2 keeps the sharing itself)
        model.head.weight = model.embed.weight
    model.init_weights(seed=seed)
    return model
