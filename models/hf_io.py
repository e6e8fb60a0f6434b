"""Export to and import from Hugging Face `LlamaForCausalLM` checkpoints (safetensors).

Our family is the Llama architecture with all key/value heads present, so the mapping is a renaming
of parameters (`_NAME_PAIRS`). RoPE needs no permutation because `models.transformer` already uses HF Llama's rotate-half layout.
The round trip is exact (same tensors), and HF's logits match ours to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from models.shape import ModelShape, ShapeError
from models.transformer import Transformer


def hf_llama_config(shape: ModelShape) -> LlamaConfig:
    """The LlamaConfig that describes `shape` exactly."""
    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_ff,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads,
        head_dim=shape.head_dim,
        hidden_act="silu",
        max_position_embeddings=shape.seq_len,
        rms_norm_eps=shape.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        tie_word_embeddings=shape.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
    )


def shape_from_hf_config(config: LlamaConfig) -> ModelShape:
    """The ModelShape of a Llama config, refusing features our family does not have."""
    rope = dict(config.rope_parameters or {})
    unsupported = {
        "num_key_value_heads != num_attention_heads (grouped-query attention)": (
            config.num_key_value_heads != config.num_attention_heads
        ),
        f"hidden_act={config.hidden_act!r}": config.hidden_act != "silu",
        "attention_bias or mlp_bias": bool(config.attention_bias or config.mlp_bias),
        f"head_dim={config.head_dim}": config.head_dim * config.num_attention_heads != config.hidden_size,
        f"rope_type={rope.get('rope_type')!r}": rope.get("rope_type", "default") != "default",
    }
    problems = [name for name, present in unsupported.items() if present]
    if problems:
        raise ShapeError(
            f"this Llama checkpoint uses {'; '.join(problems)}, which models.Transformer lacks: "
            f"load it with transformers.AutoModelForCausalLM instead"
        )
    return ModelShape(
        n_layer=config.num_hidden_layers,
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        d_ff=config.intermediate_size,
        vocab_size=config.vocab_size,
        seq_len=config.max_position_embeddings,
        tie_embeddings=bool(config.tie_word_embeddings),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        norm_eps=float(config.rms_norm_eps),
    )


# (our name, HF Llama name); "{i}" is the block index.
_TOP_LEVEL_NAMES = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("final_norm.weight", "model.norm.weight"),
    # A tied HF model still lists lm_head.weight (the same tensor as the embedding).
    ("head.weight", "lm_head.weight"),
]
_BLOCK_NAMES = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn.query.weight", "self_attn.q_proj.weight"),
    ("attn.key.weight", "self_attn.k_proj.weight"),
    ("attn.value.weight", "self_attn.v_proj.weight"),
    ("attn.out.weight", "self_attn.o_proj.weight"),
    ("mlp_norm.weight", "post_attention_layernorm.weight"),
    ("mlp.gate.weight", "mlp.gate_proj.weight"),
    ("mlp.up.weight", "mlp.up_proj.weight"),
    ("mlp.down.weight", "mlp.down_proj.weight"),
]


def _name_pairs(n_layer: int) -> list[tuple[str, str]]:
    pairs = list(_TOP_LEVEL_NAMES)
    for i in range(n_layer):
        pairs += [(f"blocks.{i}.{ours}", f"model.layers.{i}.{hf}") for ours, hf in _BLOCK_NAMES]
    return pairs


def to_hf_llama(model: Transformer) -> LlamaForCausalLM:
    """A LlamaForCausalLM holding copies of `model`'s weights, in the same dtype, on the CPU."""
    ours = model.state_dict()
    state = {hf: ours[own].detach().cpu().clone() for own, hf in _name_pairs(model.shape.n_layer)}
    hf_model = LlamaForCausalLM(hf_llama_config(model.shape)).to(model.embed.weight.dtype)
    hf_model.load_state_dict(state, strict=True)
    return hf_model.eval()


def from_hf_llama(hf_model: LlamaForCausalLM) -> Transformer:
    """Our Transformer holding copies of a LlamaForCausalLM's weights (same dtype, CPU)."""
    shape = shape_from_hf_config(hf_model.config)
    hf_state = {name: t.detach().cpu() for name, t in hf_model.state_dict().items()}
    if shape.tie_embeddings:
        hf_state.setdefault("lm_head.weight", hf_state["model.embed_tokens.weight"])
    with torch.device("meta"):
        model = Transformer(shape)
    ours = {own: hf_state[hf] for own, hf in _name_pairs(shape.n_layer)}
    # assign=True swaps the meta tensors for these ones; clone so the HF model's storage is not shared.
    model.load_state_dict({name: t.clone() for name, t in ours.items()}, strict=True, assign=True)
    if shape.tie_embeddings:
        model.head.weight = model.embed.weight  # assign=True replaced the shared Parameter; re-tie it
    return model.eval()


def save_hf_checkpoint(model: Transformer, out_dir: str | Path) -> Path:
    """Write `model` as a HF Llama checkpoint (config.json + model.safetensors) that
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads."""
    out_path = Path(out_dir)
    to_hf_llama(model).save_pretrained(out_path)
    return out_path


def load_hf_checkpoint(out_dir: str | Path) -> Transformer:
    """Our Transformer from a directory written by `save_hf_checkpoint` (or any matching Llama)."""
    path = Path(out_dir)
    if not (path / "config.json").is_file():
        raise ShapeError(f"no config.json in {path}: pass a directory written by save_hf_checkpoint")
    hf_model = AutoModelForCausalLM.from_pretrained(path)
    if not isinstance(hf_model, LlamaForCausalLM):
        raise ShapeError(
            f"{path} holds a {type(hf_model).__name__}, not a LlamaForCausalLM: export it as Llama first"
        )
    return from_hf_llama(hf_model)
