"""One rank of tests/test_mixed_precision.py: what a GPU run does, on CPU (gloo), checked from inside.

The model is built the engine's way (pipeline/train/build.py) twice from one seed: fp32 eager, and
bf16 with FSDP2's MixedPrecisionPolicy and every block compiled by inductor. Both train 3 AdamW
steps on the same batches under the same autocast setting as the engine; the bf16 losses must stay
within bf16 rounding of the fp32 ones, and the policy must really be in force (bf16 compute,
fp32 shards and fp32 gradients). Exit 0 and "ok" on success.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch._dynamo.eval_frame import OptimizedModule  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from models.shape import ModelShape  # noqa: E402
from pipeline.train.build import build_model  # noqa: E402

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
shape = ModelShape(n_layer=2, d_model=32, n_heads=2, d_ff=64, vocab_size=128, seq_len=16)
device = torch.device("cpu")


def train(bf16: bool) -> list[float]:
    model = build_model(shape, init_std=0.02, seed=7, device=device, fsdp=True, bf16=bf16, compile_blocks=bf16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if bf16:
        assert all(isinstance(block, OptimizedModule) for block in model.blocks)  # FSDP subclasses it
        policy = model.blocks[0]._get_fsdp_state()._mp_policy
        assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    losses = []
    for step in range(3):
        tokens = torch.randint(0, shape.vocab_size, (2, shape.seq_len),
                               generator=torch.Generator().manual_seed(10 * step + rank))
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = model(tokens)
        assert logits.dtype == (torch.bfloat16 if bf16 else torch.float32)
        loss = F.cross_entropy(logits.float().view(-1, shape.vocab_size), tokens.view(-1))
        loss.backward()
        for param in model.parameters():  # the shards the optimizer updates stay fp32, and so do their gradients
            assert isinstance(param, DTensor) and param.dtype == param.grad.dtype == torch.float32
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / dist.get_world_size())
    return losses


fp32, bf16 = train(bf16=False), train(bf16=True)
gap = max(abs(a - b) for a, b in zip(fp32, bf16, strict=True))
assert gap < 0.02 * max(fp32), (fp32, bf16)  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding
print(f"rank {rank} ok: fp32 {fp32} bf16 {bf16}", flush=True)
dist.barrier()
dist.destroy_process_group()
