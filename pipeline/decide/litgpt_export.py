"""The recommended full run as a LitGPT pretraining config (Lightning AI's `litgpt`, installed from PyPI).

    litgpt pretrain --config <fit dir>/litgpt/pretrain.yaml --data <your data module> --tokenizer_dir <dir>

One module per trainer, beside the HF export (pipeline/train/export.py): this one writes text only (the
decision stage never imports torch); tests/test_litgpt_export.py builds LitGPT's own `GPT` from the file,
finds exactly our parameter count and trains a few steps on CPU.

Our family maps one-to-one onto LitGPT's LLaMA-style blocks (models/transformer.py): RMSNorm pre-norm
(`norm_class_name: RMSNorm`), SwiGLU (`mlp_class_name: LLaMAMLP`, `intermediate_size` = d_ff), full
rotary embeddings (`rotary_percentage: 1.0`, `rope_base` = theta), as many key/value heads as heads
(`n_query_groups` = n_heads), no biases, the vocabulary unpadded (`padded_vocab_size` = V, or the counts
differ), and a tied head through LitGPT's `train.tie_embeddings`. The schedule is LitGPT's: linear warmup,
then one cosine cycle to `min_lr` over `max_tokens` -- our cosine; a warmup-stable-decay schedule has no
LitGPT equivalent and is refused here (the pilots' law was measured under it). Global batch, micro-batch,
devices and nodes are the launch's (pipeline/plan/launch.py).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.errors import UserError


def litgpt_model_config(shape: dict) -> dict:
    """LitGPT `Config` keyword arguments for our shape (models/shape.py, ModelShape.to_dict())."""
    return {
        "name": "scaling-pilot-full-run",
        "block_size": shape["seq_len"], "vocab_size": shape["vocab_size"], "padded_vocab_size": shape["vocab_size"],
        "n_layer": shape["n_layer"], "n_head": shape["n_heads"], "n_query_groups": shape["n_heads"],
        "n_embd": shape["d_model"], "head_size": shape["d_model"] // shape["n_heads"],
        "intermediate_size": shape["d_ff"], "bias": False, "lm_head_bias": False,
        "norm_class_name": "RMSNorm", "norm_eps": float(shape.get("norm_eps", 1e-5)),
        "mlp_class_name": "LLaMAMLP", "parallel_residual": False, "shared_attention_norm": False,
        "rotary_percentage": 1.0, "rope_base": int(shape.get("rope_theta", 10000)),
    }


def litgpt_pretrain_config(recommendation: dict) -> dict:
    """The whole `litgpt pretrain --config` file for the recommended run."""
    model = recommendation["model"]
    schedule = model["schedule"]
    if schedule["name"] != "cosine":
        raise UserError(f"the full run's schedule is {schedule['name']}; LitGPT pretrains with warmup + cosine only: "
                        "no LitGPT export (use full_run.yaml)")
    shape, launch = model["shape"], model["launch"]
    return {
        "model_name": "scaling-pilot-full-run",
        "model_config": litgpt_model_config(shape),
        "out_dir": "out/pretrain/scaling-pilot-full-run",
        "precision": "bf16-mixed",
        "devices": launch["gpus_per_node"], "num_nodes": launch["nodes"],
        "train": {
            "global_batch_size": model["batch_tokens"] // shape["seq_len"],   # sequences per optimizer step
            "micro_batch_size": launch["micro_batch_size"],
            "max_tokens": model["tokens"], "max_seq_length": shape["seq_len"],
            "lr_warmup_steps": model["warmup_steps"], "min_lr": model["lr"] * schedule["min_lr_ratio"],
            "max_norm": 1.0, "tie_embeddings": bool(shape["tie_embeddings"]),
            "save_interval": max(1, round(launch["checkpoint_interval_s"] / _step_seconds(recommendation))),
            "log_interval": 20,
        },
        "optimizer": {"class_path": "torch.optim.AdamW",
                      "init_args": {"lr": model["lr"], "weight_decay": 0.1, "betas": [0.9, model["beta2"]],
                                    "eps": 1e-8}},
        "seed": 0,
    }


def _step_seconds(recommendation: dict) -> float:
    """Seconds per optimizer step at the budget's speed (for a checkpoint interval in steps)."""
    model, compute = recommendation["model"], recommendation["model"].get("compute") or {}
    days = compute.get("wall_clock_days")
    return days * 86_400 / model["steps"] if days else 1.0


def write_litgpt_config(recommendation: dict, out_dir) -> Path | str:
    """Write <out_dir>/litgpt/pretrain.yaml; returns its path, or the one-line reason it cannot be written."""
    try:
        config = litgpt_pretrain_config(recommendation)
    except UserError as why:
        return str(why)
    path = Path(out_dir) / "litgpt" / "pretrain.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# The recommended full run for LitGPT (pipeline/decide/litgpt_export.py): litgpt pretrain --config "
              "this file --data <data module> --tokenizer_dir <tokenizer>\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
