"""The LitGPT export (pipeline/decide/litgpt_export.py): LitGPT's own model, built from the exported config,
has exactly our parameter count, tied or not, and trains on CPU with the exported optimizer settings."""

from __future__ import annotations

import pytest
import torch
import yaml

from models.accounting import count_params
from models.shape import ModelShape
from pipeline.decide.budget import resolve_budget
from pipeline.decide.litgpt_export import litgpt_pretrain_config, write_litgpt_config
from pipeline.decide.recommend import recommend
from pipeline.errors import UserError
from pipeline.fit.laws import published_law

litgpt_model = pytest.importorskip("litgpt.model", reason="litgpt is installed by `make install` (Makefile)")
litgpt_config = pytest.importorskip("litgpt.config")


def build(exported: dict):
    """LitGPT's GPT exactly as `litgpt pretrain` builds it (the tie is its train.tie_embeddings)."""
    with torch.device("meta"):
        model = litgpt_model.GPT(litgpt_config.Config(**exported["model_config"]))
    if exported["train"]["tie_embeddings"]:
        model.transformer.wte.weight = model.lm_head.weight
    return model


def unique_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared (tied) tensor once


@pytest.mark.parametrize("tied", [False, True])
def test_litgpt_builds_the_recommended_model_with_our_exact_parameter_count(tied, tmp_path):
    target = {"tokenizer": "gpt2", "vocab_size": 50257, "seq_len": 2048, "precision": "bf16", "data": None,
              "source": "test", "architecture": {"tie_embeddings": tied}}
    rec = recommend(published_law("epoch"), resolve_budget({"gpu": "h100_sxm", "gpus": 8, "days": 14}), target=target)
    path = write_litgpt_config(rec, tmp_path)
    exported = yaml.safe_load(path.read_text())
    ours = count_params(ModelShape.from_dict(rec["model"]["shape"]))["total"]
    assert unique_params(build(exported)) == ours == rec["model"]["params"]["total"]
    train = exported["train"]
    assert train["global_batch_size"] * 2048 == rec["model"]["batch_tokens"] and train["max_tokens"] == rec["model"]["tokens"]
    assert exported["devices"] * exported["num_nodes"] == 8 and train["tie_embeddings"] is tied


def test_litgpt_trains_the_exported_model_on_cpu_a_few_steps():
    shape = ModelShape(n_layer=2, d_model=64, n_heads=4, d_ff=176, vocab_size=512, seq_len=32)
    rec = {"model": {"shape": shape.to_dict(), "schedule": {"name": "cosine", "min_lr_ratio": 0.1},
                     "launch": {"gpus_per_node": 1, "nodes": 1, "micro_batch_size": 4, "checkpoint_interval_s": 600},
                     "batch_tokens": 4 * 32, "tokens": 4 * 32 * 20, "warmup_steps": 2, "lr": 3e-3, "beta2": 0.95,
                     "steps": 20}}
    exported = litgpt_pretrain_config(rec)
    torch.manual_seed(0)
    model = litgpt_model.GPT(litgpt_config.Config(**exported["model_config"]))
    assert unique_params(model) == count_params(shape)["total"]
    opt = exported["optimizer"]["init_args"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]),
                                  weight_decay=opt["weight_decay"], eps=opt["eps"])
    batch = torch.randint(0, 512, (exported["train"]["micro_batch_size"], 33), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(8):  # one fixed batch: the loss must fall if the model trains
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_a_schedule_litgpt_lacks_is_refused_in_one_line():
    with pytest.raises(UserError, match="warmup \\+ cosine only"):
        litgpt_pretrain_config({"model": {"schedule": {"name": "wsd"}}})
