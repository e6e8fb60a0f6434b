"""The model family: a decoder-only transformer in plain torch.

Pre-norm blocks (Xiong et al. 2020) with RMSNorm (Zhang & Sennrich 2019), rotary positions (Su et
al. 2021), SwiGLU MLP (Shazeer 2020), no biases, a final norm and an untied output head by default --
the LLaMA recipe (Touvron et al. 2023). Weights are laid out so that `models.hf_io` maps them one-to-one onto
`transformers.LlamaForCausalLM`: RoPE uses the same "rotate half" channel pairing as HF Llama.

Shapes in comments: B batch, T tokens, D d_model, H heads, K head_dim, F d_ff, V vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from models.accounting import param_count, training_flops_per_token
from models.shape import ModelShape, ShapeError


def rope_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T, K] for RoPE, computed in fp32 like HF Llama's default rotary embedding.

    Channel i and i + K/2 form a rotation pair with frequency theta^(-2i/K) (Su et al. 2021, Eq. 34,
    in the non-interleaved layout), so the tables repeat the K/2 frequencies twice.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float, device=device), inv_freq)  # [T, K/2]
    angles = torch.cat((angles, angles), dim=-1)  # [T, K]
    return angles.cos(), angles.sin()


def _fill(param: torch.Tensor, values: torch.Tensor) -> None:
    """Copy the full tensor `values` into `param`, or its own shard of it when `param` is a DTensor."""
    if isinstance(param, DTensor):
        values = distribute_tensor(values.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(values)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, K] by position: x * cos + rotate_half(x) * sin."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-second, first), dim=-1)
    return (x * cos + rotated_half * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.n_heads, self.head_dim = shape.n_heads, shape.head_dim
        # Three separate projections, not one fused [q; k; v] matmul: on CPU the fused version was ~15%
        # slower per training step at 5M parameters (the backward concatenates the three gradients).
        self.query = nn.Linear(shape.d_model, shape.d_model, bias=False)
        self.key = nn.Linear(shape.d_model, shape.d_model, bias=False)
        self.value = nn.Linear(shape.d_model, shape.d_model, bias=False)
        self.out = nn.Linear(shape.d_model, shape.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape  # [B, T, D]
        heads = (batch, tokens, self.n_heads, self.head_dim)
        q = self.query(x).view(heads).transpose(1, 2)  # [B, H, T, K]
        k = self.key(x).view(heads).transpose(1, 2)  # [B, H, T, K]
        v = self.value(x).view(heads).transpose(1, 2)  # [B, H, T, K]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, K]
        return self.out(y.transpose(1, 2).reshape(batch, tokens, width))  # [B, T, D]


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020, Eq. 6)."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.gate = nn.Linear(shape.d_model, shape.d_ff, bias=False)
        self.up = nn.Linear(shape.d_model, shape.d_ff, bias=False)
        self.down = nn.Linear(shape.d_ff, shape.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))  # [B, T, F] inside, [B, T, D] out


class Block(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.attn_norm = nn.RMSNorm(shape.d_model, eps=shape.norm_eps)
        self.attn = Attention(shape)
        self.mlp_norm = nn.RMSNorm(shape.d_model, eps=shape.norm_eps)
        self.mlp = SwiGLU(shape)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)  # [B, T, D]
        return x + self.mlp(self.mlp_norm(x))  # [B, T, D]


class Transformer(nn.Module):
    def __init__(self, shape: ModelShape, init_std: float = 0.02):
        super().__init__()
        if not init_std > 0:
            raise ShapeError(f"init_std={init_std!r} must be > 0: use 0.02")
        self.shape, self.init_std = shape, init_std
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layer))
        self.final_norm = nn.RMSNorm(shape.d_model, eps=shape.norm_eps)
        self.head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        if shape.tie_embeddings:
            self.head.weight = self.embed.weight
        self.init_weights(seed=None)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Re-initialise every weight.

        Matrices (embedding, projections, head) ~ normal(0, init_std); the residual-stream outputs
        (attention `out`, MLP `down`) ~ normal(0, init_std / sqrt(2 * n_layer)) so the residual sum
        keeps its scale with depth (GPT-2, Radford et al. 2019, Sec. 2.3); RMSNorm gains = 1.
        With a seed, numbers come from a private CPU `torch.Generator`: the global RNG is untouched and
        the same seed gives the same weights on any device. With None they come from the global RNG.
        Parameters on the meta device are skipped (nothing to fill). A sharded parameter (an FSDP2
        DTensor) keeps its own part of the full tensor drawn here, one parameter at a time, so every
        number of processes starts from exactly the weights of one process.
        """
        generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        residual_std = self.init_std / math.sqrt(2 * self.shape.n_layer)
        for name, param in self.named_parameters():  # shared (tied) tensors are yielded once
            if param.is_meta:
                continue
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            std = residual_std if name.endswith(("attn.out.weight", "mlp.down.weight")) else self.init_std
            values = torch.empty(param.shape, dtype=torch.float32, device="cpu")  # CPU even under a device context
            _fill(param, values.normal_(0.0, std, generator=generator))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] (fp32 or the autocast dtype) for input_ids [B, T] with T <= shape.seq_len."""
        if input_ids.dim() != 2:
            raise ShapeError(f"input_ids has shape {tuple(input_ids.shape)}: pass a [batch, tokens] LongTensor")
        tokens = input_ids.shape[1]
        if tokens > self.shape.seq_len:
            raise ShapeError(
                f"sequence of {tokens} tokens exceeds seq_len={self.shape.seq_len}: "
                f"truncate the input or build the model with a larger seq_len"
            )
        cos, sin = rope_cos_sin(tokens, self.shape.head_dim, self.shape.rope_theta, input_ids.device)  # [T, K]
        x = self.embed(input_ids)  # [B, T, D]
        for block in self.blocks:
            x = block(x, cos, sin)  # [B, T, D]
        return self.head(self.final_norm(x))  # [B, T, V]

    def num_params(self, convention: str = "total") -> int:
        """Parameter count under one of `models.accounting.CONVENTIONS`, from the shape alone."""
        return param_count(self.shape, convention)

    def flops_per_token(self, seq_len: int | None = None, method: str = "exact") -> float:
        """Training FLOPs per token ("exact" Chinchilla App. F count, or "6n"); seq_len defaults to the shape's."""
        return training_flops_per_token(self.shape, seq_len, method)
