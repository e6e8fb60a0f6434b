"""The run that is launched: its target (tokenizer, vocabulary, sequence length, precision), its shape and
token count under the recommendation's FLOP count, what differs from the pilots, and `full_run.yaml`.

    target  = the pilots' tokenizer, vocabulary, sequence length (from their records), or for a published
              law / imported runs a named preset (pipeline/config/presets.py), stated in the output
    shape   = pipeline.decide.allocation.pick_shape near N_opt, counted exactly (embedding and head included)
    tokens  = budget / F(shape) under the same count as the allocation, rounded to whole batches, so the
              run's FLOPs under that count are the budget within half a batch
    hparams = the pilots' rules (pipeline.plan.hparams) at the full budget; the pilots' LR schedule

`write_full_run_config` turns the result into a Hydra experiment for `python -m pipeline.train`.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from models.accounting import count_params, training_flops_per_token
from models.shape import ModelShape
from pipeline.config.presets import FULL_RUN_PRESETS, KNOWN_VOCAB_SIZES, STUDY_PRESET
from pipeline.decide.allocation import FlopCount
from pipeline.decide.launch_config import launch_train_keys, write_launch_files
from pipeline.errors import UserError
from pipeline.plan.hparams import DEFAULT_RULE, resolve_hyperparameters
from pipeline.plan.lr_rules import HparamRule

MIN_LR_RATIO = 0.1                # cosine to 10% of peak (Chinchilla sec. 4 / App. B), as the pilots
FULL_RUN_PRECISION = "bf16"       # bf16 autocast with fp32 master weights and AdamW moments, on GPUs


# --- what the full run trains on ---------------------------------------------------------------------
def target_from_pilots(pilots: dict) -> dict:
    """The pilots' tokenizer, vocabulary and sequence length (RunsTable.pilot_setup())."""
    return {"tokenizer": pilots.get("tokenizer"), "vocab_size": int(pilots["vocab_size"]),
            "seq_len": int(pilots["seq_len"]), "precision": FULL_RUN_PRECISION, "data": None,
            "source": "the pilots' tokenizer, vocabulary and sequence length (their run records)"}


def target_from_preset(name: str, study_data: dict, study_seq_len: int, why_no_pilots: str) -> dict:
    """A named preset (or `study`: the config's own data/model sections) for runs without pilots."""
    if name == STUDY_PRESET:
        tokenizer = study_data.get("tokenizer", "bpe")
        vocab = study_data.get("vocab_size") if tokenizer == "bpe" else KNOWN_VOCAB_SIZES.get(tokenizer)
        if vocab is None:
            raise UserError(f"full_run_preset=study: the vocabulary of tokenizer {tokenizer!r} is not tabled "
                            f"(pipeline/config/presets.py): use data.tokenizer=gpt2 or another tabled one, or "
                            f"full_run_preset={next(iter(FULL_RUN_PRESETS))}")
        return {"tokenizer": tokenizer, "vocab_size": int(vocab), "seq_len": int(study_seq_len),
                "precision": FULL_RUN_PRECISION, "data": None,
                "source": f"preset study: this config's tokenizer {tokenizer} (V={vocab}) and model.seq_len "
                          f"{study_seq_len} ({why_no_pilots})"}
    preset = FULL_RUN_PRESETS[name]
    return {"tokenizer": preset["tokenizer"], "vocab_size": preset["vocab_size"], "seq_len": preset["seq_len"],
            "precision": preset["precision"], "data": dict(preset["data"]),
            "source": f"preset {name}: {preset['why']} ({why_no_pilots}; full_run_preset=study uses this config's)"}


# --- the launched run ------------------------------------------------------------------------------------
def full_run_schedule(pilot_schedule: dict | None) -> dict:
    """The pilots' LR schedule, which the full run must share: the law's loss level is the pilots'
    schedule's (a WSD cooldown ends below a cosine cycle, docs/cooldown_reuse.md). Without it (runs
    from a file or W&B, a published law): one cosine cycle to 10% (Chinchilla sec. 4 / App. B)."""
    if pilot_schedule and pilot_schedule.get("name") in ("cosine", "wsd"):
        return {"name": pilot_schedule["name"], "min_lr_ratio": float(pilot_schedule["min_lr_ratio"]),
                "cooldown_fraction": pilot_schedule.get("cooldown_fraction"), "source": "the pilots' schedule"}
    why = (f"the pilots' {pilot_schedule['name']} schedule never decays" if pilot_schedule
           else "the pilots' schedule is not known")
    return {"name": "cosine", "min_lr_ratio": MIN_LR_RATIO, "cooldown_fraction": None,
            "source": f"Chinchilla default ({why})"}


def schedule_text(schedule: dict) -> str:
    if schedule["name"] == "wsd":
        return (f"warmup-stable-decay, (1 - sqrt) cooldown over the last {schedule['cooldown_fraction']:.0%} "
                f"to {schedule['min_lr_ratio']:.0%} of peak (Hägele et al. 2024)")
    return f"one cosine cycle over exactly train.tokens to {schedule['min_lr_ratio']:.0%} of peak (Chinchilla)"


def lr_sensitivity(rule: HparamRule) -> str:
    """The loss cost of an LR off by 2x either way, where a probe measured the curvature."""
    cost = rule.lr_loss_cost(2.0)
    if cost is None:
        return (f"not measured: {rule.name} has no LR probe behind it (sweep.design=lr_probe measures what a 2x miss "
                "costs at the pilots' scale)")
    return (f"an LR 2x too high or too low costs about {cost:.2%} of the loss at the probed sizes "
            f"({rule.name}: k ln(2)^2, k the probe's median curvature in ln LR)")


def launched_run(shape: ModelShape, budget_flops: float, count: FlopCount, *, convention: str,
                 schedule: dict | None = None, hparam_rule: dict | None = None) -> dict:
    """The shape's exact counts, its token count under `count` and its hyperparameters: the pilots' LR/batch
    rule (`hparam_rule`, as recorded in their runs; the default rule without pilots) at the run's own N and D."""
    seq_len = shape.seq_len
    params = count_params(shape)
    fpt = {m: training_flops_per_token(shape, seq_len, method=m) for m in ("exact", "6n")}
    per_token = count.of_shape(shape)
    target_tokens = budget_flops / per_token
    rule = HparamRule.from_dict(hparam_rule) if hparam_rule else DEFAULT_RULE
    hp = resolve_hyperparameters(flops=budget_flops, n_params=params[convention], run_tokens=int(target_tokens),
                                 seq_len=seq_len, n_params_non_embedding=params["non_embedding"], rule=rule)
    rule = HparamRule.from_dict(hp.rule_law)
    steps = max(1, round(target_tokens / hp.batch_tokens))  # whole steps, as the pilots round
    tokens = steps * hp.batch_tokens
    return {
        "shape": shape.to_dict(), "describe": shape.describe(), "params": params, "convention": convention,
        "flops_per_token": fpt, "count": count.name, "count_flops_per_token": per_token,
        "flop_convention": count.formula,
        "tokens": tokens, "tokens_rule": f"budget / {count.name} training FLOPs per token of this shape, whole batches",
        "tokens_per_param": tokens / params[convention], "flops": tokens * per_token,
        "flops_exact": tokens * fpt["exact"], "flops_6n": tokens * fpt["6n"], "lr": hp.lr,
        "batch_tokens": hp.batch_tokens, "warmup_tokens": hp.warmup_tokens,
        "warmup_steps": math.ceil(hp.warmup_tokens / hp.batch_tokens), "beta2": hp.beta2, "steps": steps,
        "schedule": full_run_schedule(schedule), "precision": FULL_RUN_PRECISION,
        "hparam_sources": {k: v for k, v in hp.to_dict().items() if k.endswith("_source")},
        "hparam_rule": hp.rule, "hparam_rule_range": hp.rule_range, "hparam_rule_law": hp.rule_law,
        "lr_extrapolation_decades": hp.extrapolation_decades, "lr_sensitivity": lr_sensitivity(rule),
    }


def differences(pilots: dict | None, model: dict, target: dict) -> list[dict]:
    """Every setting that differs between the pilots and the full run, with why (the report lists them)."""
    if not pilots:
        return [{"setting": "tokenizer, vocabulary, sequence length, precision", "pilots": "none (no pilot records)",
                 "full_run": f"{target['tokenizer']}, V={target['vocab_size']}, T={target['seq_len']}, {model['precision']}",
                 "why": target["source"]}]
    rows = [{"setting": "model size and shape", "pilots": "the sweep's sizes",
             "full_run": f"{model['describe']}", "why": "the law's optimum at the full budget, on the same sizing rule"},
            {"setting": "tokens", "pilots": "each run's IsoFLOP budget / its FLOPs per token",
             "full_run": f"{model['tokens']:,}", "why": "the full budget under the same count"},
            {"setting": "learning rate, batch, warmup, beta2", "pilots": "the rules at each pilot's compute",
             "full_run": f"lr {model['lr']:.3g}, batch {model['batch_tokens']:,} tokens",
             "why": f"the same rules ({model.get('hparam_rule', DEFAULT_RULE)}; Porian et al. 2024) at the full run's N and D, "
                    f"{model.get('lr_extrapolation_decades', 0):.1f} decades beyond the LR rule's data"}]
    pilot_precision = pilots.get("precision")
    if pilot_precision != model["precision"]:
        rows.append({"setting": "precision", "pilots": pilot_precision or "unknown", "full_run": model["precision"],
                     "why": "bf16 autocast (fp32 master weights and AdamW moments) is how GPUs train at scale; "
                            "the law assumes it leaves the loss unchanged (not measured here)"})
    if pilots.get("device") and pilots["device"] != "cuda":
        rows.append({"setting": "device", "pilots": pilots["device"], "full_run": "cuda",
                     "why": "the full budget is GPU-days"})
    return rows


# --- the launchable config -------------------------------------------------------------------------------
def _yaml_float(value: float) -> str:
    """A float YAML 1.1 loaders (PyYAML) read as a float: they need a dot before the exponent."""
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _section_lines(section: str, mine: list[tuple[str, str, str]], extra: dict | None) -> list[str]:
    """`section:` with our keys (value, comment) then any keys from the pilots' overrides we do not set."""
    lines = [f"{section}:"]
    width = max(len(f"  {key}: {value}") for key, value, _ in mine)
    for key, value, comment in mine:
        text = f"  {key}: {value}"
        lines.append(f"{text:<{width}}  # {comment}" if comment else text)
    ours = {key for key, _, _ in mine}
    rest = {k: v for k, v in (extra or {}).items() if k not in ours}
    if rest:
        lines.append("  # from the pilots' configuration:")
        dumped = yaml.safe_dump(rest, default_flow_style=False, sort_keys=False).rstrip().splitlines()
        lines.extend(f"  {line}" for line in dumped)
    return lines


def write_full_run_config(recommendation: dict, out_dir, base_overrides: dict | None = None) -> Path:
    """Write <out_dir>/experiment/full_run.yaml, a Hydra experiment for `python -m pipeline.train`.

    Launch: python -m pipeline.train --config-dir <out_dir> experiment=full_run
    `base_overrides` carries the pilots' sections to keep (e.g. {"data": {...}}); our model/train keys win,
    and a preset's data keys (its tokenizer) win over the pilots' data section.
    """
    base = dict(base_overrides or {})
    model, budget = recommendation["model"], recommendation["budget"]
    shape, hp_src = model["shape"], model["hparam_sources"]
    convention = model["convention"]
    memory = model.get("memory") or {}
    sched = model["schedule"]
    target = recommendation.get("target") or {}
    count = recommendation.get("count") or {}
    header = [
        "# @package _global_",
        f"# Full run recommended by `python -m pipeline.fit` for {budget['flops']:.3g} FLOPs ({budget['conversion']}).",
        f"# Law {recommendation['law'].get('name')}: N_opt = {recommendation['n_opt']:.4g} {convention} parameters; "
        f"this run: {model['params'][convention]:,} parameters on {model['tokens']:,} tokens, "
        f"predicted loss {_loss_text(recommendation.get('predicted_loss'))}.",
        f"# FLOP count: {count.get('formula', model.get('flop_convention'))} ({count.get('why', '')}); "
        f"this run's FLOPs under it: {model['flops']:.4g}.",
        f"# Tokenizer {target.get('tokenizer')}, vocabulary {shape['vocab_size']:,}, sequence {shape['seq_len']:,}: "
        f"{target.get('source', 'as given')}.",
        f"# Memory: {memory.get('summary', 'not checked')}.",
        *[f"# Differs from the pilots: {d['setting']}: {d['pilots']} -> {d['full_run']} ({d['why']})"
          for d in recommendation.get("differences") or []],
        "# Launch: python -m pipeline.train --config-dir <this fit directory> experiment=full_run",
        "sweep_name: full_run",
        f"budget_flops: {_yaml_float(budget['flops'])}",
    ]
    sizing = f"sizing rule (models/sizing.py) near N_opt {recommendation['n_opt']:.3g}"
    model_keys = [
        ("n_layer", str(shape["n_layer"]), sizing),
        ("d_model", str(shape["d_model"]), f"{model['params'][convention]:,} {convention} parameters exactly "
                                           f"(embedding {model['params']['embedding']:,}, head {model['params']['head']:,})"),
        ("n_heads", str(shape["n_heads"]), "head_dim 64 from d_model 256 up"),
        ("d_ff", str(shape["d_ff"]), "SwiGLU, 8/3 d_model rounded to the width grid"),
        ("seq_len", str(shape["seq_len"]), target.get("source", "as the pilots")),
        ("tie_embeddings", str(shape["tie_embeddings"]).lower(), ""),
        ("convention", convention, "the parameter count the law uses"),
    ]
    train_keys = [
        ("tokens", str(model["tokens"]), model["tokens_rule"]),
        ("lr", _yaml_float(model["lr"]), hp_src["lr_source"]),
        ("batch_tokens", str(model["batch_tokens"]), hp_src["batch_source"]),
        ("warmup_tokens", str(model["warmup_tokens"]), hp_src["warmup_source"]),
        ("beta2", _yaml_float(model["beta2"]), hp_src["beta2_source"]),
        ("schedule", sched["name"], f"{schedule_text(sched)}; {sched['source']}"),
        ("min_lr_ratio", _yaml_float(sched["min_lr_ratio"]), "as the schedule above"),
        *([("cooldown_fraction", _yaml_float(sched["cooldown_fraction"]), "as the pilots' cooldowns")]
          if sched["name"] == "wsd" else []),
        ("precision", model.get("precision", FULL_RUN_PRECISION), "bf16 autocast; fp32 master weights and AdamW moments"),
        *launch_train_keys(recommendation),
    ]
    data = dict(base.pop("data", None) or {})
    if target.get("data"):
        data.update(target["data"])
    lines = header + _section_lines("model", model_keys, base.pop("model", None))
    lines += _section_lines("train", train_keys, base.pop("train", None))
    if data:
        lines.append("# data: the pilots' corpus" + (f"; tokenizer from {target['source']}" if target.get("data") else ""))
        lines.append("data:")
        lines.extend(f"  {line}" for line in
                     yaml.safe_dump(data, default_flow_style=False, sort_keys=False).rstrip().splitlines())
    for key in ("sweep_name", "budget_flops"):
        base.pop(key, None)
    if base:
        lines.append("# from the pilots' configuration:")
        lines.extend(yaml.safe_dump(base, default_flow_style=False, sort_keys=False).rstrip().splitlines())
    path = Path(out_dir) / "experiment" / "full_run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    write_launch_files(recommendation, out_dir)  # the accelerate config and commands (FSDP when memory says so)
    return path


def _loss_text(loss) -> str:
    return "none (the law has no L(N, D))" if loss is None else f"{loss:.4f}"
