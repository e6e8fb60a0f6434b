"""The shape value, the torch module and the Hugging Face round trip."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.shape import ModelShape, ShapeError  # noqa: E402
from models.transformer import Transformer  # noqa: E402

TINY = ModelShape(n_layer=2, d_model=32, n_heads=4, d_ff=96, vocab_size=64, seq_len=16)


def _one_line_error(error_type, call) -> str:
    with pytest.raises(error_type) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and ": " in message  # problem, then the fix
    return message


# ---- ModelShape ---------------------------------------------------------------------------------


def test_shape_properties_and_dict_round_trip():
    assert TINY.head_dim == 8 and TINY.aspect_ratio == 16
    assert ModelShape.from_dict(TINY.to_dict()) == TINY
    assert TINY.to_dict()["tie_embeddings"] is False


@pytest.mark.parametrize(
    "changes, expected_text",
    [
        ({"n_heads": 5}, "does not divide d_model=32"),
        ({"n_heads": 32}, "head_dim=1"),  # RoPE rotates channel pairs: head_dim must be even
        ({"d_model": 36, "n_heads": 4}, "head_dim=9"),
        ({"n_layer": 0}, "n_layer=0 must be a positive integer"),
        ({"vocab_size": 64.0}, "vocab_size=64.0"),
        ({"seq_len": True}, "seq_len=True"),
        ({"rope_theta": 0.0}, "rope_theta"),
        ({"norm_eps": -1.0}, "norm_eps"),
    ],
)
def test_invalid_shapes_are_rejected(changes, expected_text):
    values = {**TINY.to_dict(), **changes}
    message = _one_line_error(ShapeError, lambda: ModelShape(**values))
    assert expected_text in message
    assert issubclass(ShapeError, ValueError)


def test_from_dict_rejects_unknown_and_missing_fields():
    assert "n_layers" in _one_line_error(ShapeError, lambda: ModelShape.from_dict({**TINY.to_dict(), "n_layers": 2}))
    values = TINY.to_dict()
    del values["d_ff"]
    assert "d_ff" in _one_line_error(ShapeError, lambda: ModelShape.from_dict(values))


# ---- Transformer --------------------------------------------------------------------------------


def test_forward_shape_and_length_check():
    model = Transformer(TINY)
    logits = model(torch.randint(0, 64, (3, 16)))
    assert logits.shape == (3, 16, 64) and logits.dtype == torch.float32
    assert model(torch.randint(0, 64, (1, 5))).shape == (1, 5, 64)
    message = _one_line_error(ShapeError, lambda: model(torch.randint(0, 64, (1, 17))))
    assert "17 tokens exceeds seq_len=16" in message
    _one_line_error(ShapeError, lambda: model(torch.randint(0, 64, (16,))))


def test_causality():
    model = Transformer(TINY).eval()
    model.init_weights(seed=1)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 64
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :10], after[:, :10])  # the past cannot see the future
    assert not torch.allclose(before[:, 10:], after[:, 10:])  # and the changed token does matter


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    first, second = Transformer(TINY), Transformer(TINY)
    torch.manual_seed(123)
    state_before = torch.get_rng_state()
    first.init_weights(seed=7)
    second.init_weights(seed=7)
    assert torch.equal(torch.get_rng_state(), state_before)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    second.init_weights(seed=8)
    assert not torch.equal(first.embed.weight, second.embed.weight)


def test_init_scales():
    shape = ModelShape(n_layer=8, d_model=128, n_heads=4, d_ff=352, vocab_size=256, seq_len=16)
    model = Transformer(shape, init_std=0.02)
    model.init_weights(seed=0)
    block = model.blocks[3]
    assert torch.equal(block.attn_norm.weight, torch.ones(128))
    assert torch.equal(model.final_norm.weight, torch.ones(128))
    assert block.attn.query.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.03)
    residual_std = 0.02 / 4.0  # 1 / sqrt(2 * n_layer) with n_layer = 8 (GPT-2)
    assert block.attn.out.weight.std().item() == pytest.approx(residual_std, rel=0.03)
    assert block.mlp.down.weight.std().item() == pytest.approx(residual_std, rel=0.03)


def test_tied_head_shares_the_embedding_and_trains():
    shape = ModelShape(**{**TINY.to_dict(), "tie_embeddings": True})
    model = Transformer(shape)
    assert model.head.weight is model.embed.weight
    generator = torch.Generator().manual_seed(0)
    tokens, targets = torch.randint(0, 64, (2, 2, 16), generator=generator).unbind(0)
    loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, 64), targets.reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # At init the loss on unrelated targets is near ln(V): the logits start small.
    assert loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), abs=0.1)


def test_meta_device_builds_a_3b_model_instantly():
    from models.sizing import shape_for_name

    with torch.device("meta"):
        model = Transformer(shape_for_name("3b", 50257, 2048))
    assert model.num_params("total") == sum(p.numel() for p in model.parameters())


# ---- Hugging Face round trip --------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_hf_round_trip(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    from models.hf_io import load_hf_checkpoint, save_hf_checkpoint

    shape = ModelShape(**{**TINY.to_dict(), "tie_embeddings": tie, "rope_theta": 500.0, "norm_eps": 1e-6})
    model = Transformer(shape).eval()
    model.init_weights(seed=3)
    save_hf_checkpoint(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()

    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(tokens), hf_model(input_ids=tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)

    reloaded = load_hf_checkpoint(tmp_path)
    assert reloaded.shape == shape
    assert (reloaded.head.weight is reloaded.embed.weight) == tie
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_hf_loader_rejects_grouped_query_attention(tmp_path):
    from transformers import LlamaForCausalLM

    from models.hf_io import hf_llama_config, load_hf_checkpoint

    config = hf_llama_config(TINY)
    config.num_key_value_heads = 2
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    assert "grouped-query" in _one_line_error(ShapeError, lambda: load_hf_checkpoint(tmp_path))
    assert "config.json" in _one_line_error(ShapeError, lambda: load_hf_checkpoint(tmp_path / "missing"))
