"""`full_run.yaml`: the recommended run as a Hydra experiment for `python -m pipeline.train`, at the size it
was sized for.

    python -m pipeline.train --config-dir <fit dir> experiment=full_run train.dry_run=true   # check it
    python -m pipeline.train --config-dir <fit dir> experiment=full_run                       # launch it

The file composes the GPU presets (conf/train/gpu.yaml, conf/model/gpu.yaml), then lists every `train:` key
the run uses: the GPU preset's (bf16, compile; the engine uses fused AdamW on CUDA), the schedule and
hyperparameters of the decision, and the launch (pipeline/plan/launch.py): world size, micro-batch from the
memory check, accumulation, the batch rounded to micro x accumulation x world (said so), the eval batch and a
checkpoint interval from the checkpoint's size. `budget:` carries the GPU and MFU, so the dry run states the
time; `data:` is the pilots' corpus or the preset's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config.schema import CONF_DIR
from pipeline.decide.full_run import FULL_RUN_PRECISION, schedule_text
from pipeline.decide.launch_config import launch_train_keys, write_launch_files
from pipeline.plan.launch import CHECKPOINT_RULE

LAUNCH_LINE = "python -m pipeline.train --config-dir <this fit directory> experiment=full_run"


def _yaml_float(value: float) -> str:
    """A float YAML 1.1 loaders (PyYAML) read as a float: they need a dot before the exponent."""
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _yaml_value(value) -> str:
    if isinstance(value, float):
        return _yaml_float(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _section_lines(section: str, mine: list[tuple[str, str, str]], extra: dict | None, extra_label: str) -> list[str]:
    """`section:` with our keys (value, comment) then any keys of `extra` we do not set."""
    lines = [f"{section}:"]
    width = max(len(f"  {key}: {value}") for key, value, _ in mine)
    for key, value, comment in mine:
        text = f"  {key}: {value}"
        lines.append(f"{text:<{width}}  # {comment}" if comment else text)
    ours = {key for key, _, _ in mine}
    rest = {k: v for k, v in (extra or {}).items() if k not in ours}
    if rest:
        lines.append(f"  # {extra_label}:")
        dumped = yaml.safe_dump(rest, default_flow_style=False, sort_keys=False).rstrip().splitlines()
        lines.extend(f"  {line}" for line in dumped)
    return lines


def gpu_train_preset() -> dict:
    """conf/train/gpu.yaml, every key of which the full run carries."""
    return yaml.safe_load((CONF_DIR / "train" / "gpu.yaml").read_text())


def _model_keys(recommendation: dict, target: dict, model_extra: dict) -> list[tuple[str, str, str]]:
    model, shape, convention = recommendation["model"], recommendation["model"]["shape"], recommendation["model"]["convention"]
    arch = target.get("architecture") or {}
    return [
        ("n_layer", str(shape["n_layer"]), f"sizing rule (models/sizing.py) near N_opt {recommendation['n_opt']:.3g}"),
        ("d_model", str(shape["d_model"]), f"{model['params'][convention]:,} {convention} parameters exactly "
                                           f"(embedding {model['params']['embedding']:,}, head {model['params']['head']:,})"),
        ("n_heads", str(shape["n_heads"]), "head_dim 64 from d_model 256 up"),
        ("d_ff", str(shape["d_ff"]), "SwiGLU, 8/3 d_model rounded to the width grid"),
        ("seq_len", str(shape["seq_len"]), target.get("source", "as the pilots")),
        ("tie_embeddings", str(shape["tie_embeddings"]).lower(),
         "the pilots' architecture" if "tie_embeddings" in arch else ""),
        ("convention", convention, "the parameter count the law uses"),
        *[(k, _yaml_value(v), "as the pilots' configuration") for k, v in model_extra.items()
          if k in ("init_std", "norm_eps", "rope_theta")],
    ]


def _train_keys(recommendation: dict, pilots_train: dict) -> list[tuple[str, str, str]]:
    model = recommendation["model"]
    hp_src, sched, launch = model["hparam_sources"], model["schedule"], model["launch"]
    keys = [
        ("tokens", str(model["tokens"]), model["tokens_rule"]),
        ("lr", _yaml_float(model["lr"]), hp_src["lr_source"]),
        ("batch_tokens", str(model["batch_tokens"]), hp_src["batch_source"]),
        ("micro_batch_size", str(launch["micro_batch_size"]),
         f"sequences per forward pass: the most that fit beside the model states ({launch['train_peak_gb']:.1f} "
         f"of {launch['usable_gb']:.0f} GB usable per GPU, pipeline/plan/memory.py), at most each process's share"),
        ("world_size", str(launch["world_size"]),
         f"{launch['nodes']} node(s) x {launch['gpus_per_node']} GPUs; gradient accumulation "
         f"{launch['grad_accum_steps']} steps"),
        ("eval_batch_size", str(launch["eval_batch_size"]),
         f"no-grad forward with bf16 + fp32 logits: {launch['eval_peak_gb']:.1f} GB per GPU"),
        ("warmup_tokens", str(model["warmup_tokens"]), hp_src["warmup_source"]),
        ("beta2", _yaml_float(model["beta2"]), hp_src["beta2_source"]),
        ("schedule", sched["name"], f"{schedule_text(sched)}; {sched['source']}"),
        ("min_lr_ratio", _yaml_float(sched["min_lr_ratio"]), "as the schedule above"),
        *([("cooldown_fraction", _yaml_float(sched["cooldown_fraction"]), "as the pilots' cooldowns")]
          if sched["name"] == "wsd" else []),
        ("precision", model.get("precision", FULL_RUN_PRECISION), "bf16 autocast; fp32 master weights and AdamW moments"),
        ("checkpoint_interval_s", _yaml_float(launch["checkpoint_interval_s"]),
         f"{launch['checkpoint_gb']:.1f} GB, ~{launch['checkpoint_write_s']:.0f} s to write: {CHECKPOINT_RULE}"),
        *launch_train_keys(recommendation),
    ]
    ours = {key for key, _, _ in keys}
    preset = [(k, _yaml_value(v), "GPU preset (conf/train/gpu.yaml)") for k, v in gpu_train_preset().items()
              if k not in ours and k not in pilots_train and v is not None]  # the pilots' own values win
    return keys + preset


def _budget_lines(budget: dict) -> list[str]:
    """The hardware the run is for, so the dry run can state its memory and time."""
    keys = {"gpu": budget.get("gpu"), "gpus": budget.get("gpus"), "peak_flops": budget.get("peak_flops") if
            budget.get("gpu") is None else None, "mfu": budget.get("mfu")}
    lines = [f"# budget: the hardware the run is for; MFU {budget.get('mfu')}: {budget.get('mfu_source', 'given')}",
             "budget:"]
    lines += [f"  {k}: {_yaml_value(v)}" for k, v in keys.items() if v is not None]
    return lines


def write_full_run_config(recommendation: dict, out_dir, base_overrides: dict | None = None) -> Path:
    """Write <out_dir>/experiment/full_run.yaml (and launch/, pipeline/decide/launch_config.py).

    `base_overrides` carries the pilots' sections to keep ({"data": ..., "model": ...}); our model/train keys
    win, and a preset's corpus (its data section) replaces the study's.
    """
    base = dict(base_overrides or {})
    model, budget = recommendation["model"], recommendation["budget"]
    convention, launch = model["convention"], model["launch"]
    target = recommendation.get("target") or {}
    count = recommendation.get("count") or {}
    memory = model.get("memory") or {}
    header = [
        "# @package _global_",
        f"# Full run recommended by `python -m pipeline.fit` for {budget['flops']:.3g} FLOPs ({budget['conversion']}).",
        f"# Law {recommendation['law'].get('name')}: N_opt = {recommendation['n_opt']:.4g} {convention} parameters; "
        f"this run: {model['params'][convention]:,} parameters on {model['tokens']:,} tokens, "
        f"predicted loss {_loss_text(recommendation.get('predicted_loss'))}.",
        f"# FLOP count: {count.get('formula', model.get('flop_convention'))} ({count.get('why', '')}); "
        f"this run's FLOPs under it: {model['flops']:.4g}.",
        f"# Tokenizer {target.get('tokenizer')}, vocabulary {model['shape']['vocab_size']:,}, sequence "
        f"{model['shape']['seq_len']:,}: {target.get('source', 'as given')}.",
        f"# Launch: {launch['world_size']} processes ({launch['parallelism']}), micro-batch {launch['micro_batch_size']} "
        f"x {launch['grad_accum_steps']} accumulation; batch: {launch['batch_note']}.",
        f"# Memory per GPU: {launch['peak_memory_gb_per_gpu']:.1f} GB of {launch['usable_gb']:.0f} usable "
        f"({launch['states_gb_per_gpu']:.1f} GB model states); fewest GPUs: {memory.get('summary', 'not checked')}.",
        *[f"# CANNOT LAUNCH as written: {p}" for p in launch["problems"]],
        *[f"# Differs from the pilots: {d['setting']}: {d['pilots']} -> {d['full_run']} ({d['why']})"
          for d in recommendation.get("differences") or []],
        f"# Check: {LAUNCH_LINE} train.dry_run=true",
        f"# Launch: {LAUNCH_LINE} (several GPUs: launch/launch.json)",
        "defaults:",
        "  - override /model: gpu",
        "  - override /train: gpu",
        "sweep_name: full_run",
        f"budget_flops: {_yaml_float(budget['flops'])}",
    ]
    model_extra = base.pop("model", None) or {}
    lines = header + _section_lines("model", _model_keys(recommendation, target, model_extra), None, "")
    pilots_train = base.pop("train", None) or {}
    lines += _section_lines("train", _train_keys(recommendation, pilots_train), pilots_train,
                            "from the pilots' configuration")
    data = dict(target["data"]) if target.get("data") else dict(base.pop("data", None) or {})
    base.pop("data", None)
    if data:
        origin = f"the corpus of {target['source']}" if target.get("data") else "the pilots' corpus"
        lines.append(f"# data: {origin}")
        lines.append("data:")
        lines.extend(f"  {line}" for line in
                     yaml.safe_dump(data, default_flow_style=False, sort_keys=False).rstrip().splitlines())
    lines += _budget_lines(budget)
    for key in ("sweep_name", "budget_flops", "budget"):
        base.pop(key, None)
    if base:
        lines.append("# from the pilots' configuration:")
        lines.extend(yaml.safe_dump(base, default_flow_style=False, sort_keys=False).rstrip().splitlines())
    path = Path(out_dir) / "experiment" / "full_run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    write_launch_files(recommendation, out_dir)  # the accelerate config and commands
    return path


def _loss_text(loss) -> str:
    return "none (the law has no L(N, D))" if loss is None else f"{loss:.4f}"
