"""The run that is launched: its target (tokenizer, vocabulary, sequence length, precision), its shape and
token count under the recommendation's FLOP count, what differs from the pilots, and `full_run.yaml`.

    target  = the pilots' tokenizer, vocabulary, sequence length (from their records), or for a published
              law / imported runs a named preset (pipeline/config/presets.py), stated in the output
    shape   = pipeline.decide.allocation.pick_shape near N_opt, counted exactly (embedding and head included)
    tokens  = budget / F(shape) under the same count as the allocation, rounded to whole batches, so the
              run's FLOPs under that count are the budget within half a batch
    hparams = the pilots' rules (pipeline.plan.hparams) at the full budget; the pilots' LR schedule

`pipeline.decide.full_run_yaml.write_full_run_config` turns the result into a Hydra experiment for
`python -m pipeline.train`.
"""

from __future__ import annotations

import math

from models.accounting import count_params, palm_mfu_flops_per_token, training_flops_per_token
from models.shape import ModelShape
from pipeline.config.presets import FULL_RUN_PRESETS, KNOWN_VOCAB_SIZES, STUDY_PRESET
from pipeline.decide.allocation import FamilyFlopsPerToken, FlopCount, palm_count
from pipeline.errors import UserError
from pipeline.plan.hparams import DEFAULT_RULE, resolve_hyperparameters
from pipeline.plan.launch import plan_launch
from pipeline.plan.lr_rules import HparamRule

MIN_LR_RATIO = 0.1                # cosine to 10% of peak (Chinchilla sec. 4 / App. B), as the pilots
FULL_RUN_PRECISION = "bf16"       # bf16 autocast with fp32 master weights and AdamW moments, on GPUs


# --- what the full run trains on ---------------------------------------------------------------------
def target_from_pilots(pilots: dict) -> dict:
    """The pilots' tokenizer, vocabulary, sequence length and architecture (RunsTable.pilot_setup()):
    `architecture` holds every shape setting besides the size (tied embeddings), so the full run is the
    pilots' family at another size."""
    return {"tokenizer": pilots.get("tokenizer"), "vocab_size": int(pilots["vocab_size"]),
            "seq_len": int(pilots["seq_len"]), "precision": FULL_RUN_PRECISION, "data": None,
            "architecture": {"tie_embeddings": bool(pilots.get("tie_embeddings") or False)},
            "source": "the pilots' tokenizer, vocabulary, sequence length and architecture (their run records)"}


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
    out = {"tokenizer": preset["tokenizer"], "vocab_size": preset["vocab_size"], "seq_len": preset["seq_len"],
           "precision": preset["precision"], "data": dict(preset["data"]), "unique_tokens": preset.get("unique_tokens"),
           "unique_tokens_source": preset.get("unique_tokens_source"),
           "source": f"preset {name}: {preset['why']} ({why_no_pilots}; full_run_preset=study uses this config's)"}
    if study_data.get("tokenizer") == preset["tokenizer"]:
        # This config already names a corpus for the preset's tokenizer (e.g. experiment=h100_pilot): train on it.
        out.update(data=None, unique_tokens=None, unique_tokens_source=None)
    return out


def full_run_count(target: dict, convention: str, *, law: str | None = None, frontier: bool = False,
                   runs: str | None = None) -> FlopCount:
    """The budget line's count when no pilots of this family fix one: the full run's PaLM count (allocation.py),
    at the target's vocabulary, sequence length and tying, N in the law's `convention`. `law`: a published law's
    name (`frontier`: a compute frontier N_opt(C) such as Kaplan's, not an L(N, D)); `runs`: where a table
    without shapes came from. The why says which."""
    timed = "the count the dry run times the launch with, so the budget's days are the launched run's"
    if frontier:
        why = (f"law {law} is a compute frontier N_opt(C) fitted with C = 6 N D ({convention} N), its only count, so "
               f"N_opt keeps it; the tokens are C / F(shape) under the full run's PaLM count, {timed}")
    elif law is not None:
        why = (f"law {law} is published as L(N, D), which holds whatever count it was fitted with (6 N D): only the "
               f"budget line needs one, the full run's, {timed}")
    elif runs is not None:
        why = (f"the runs from {runs} carry no shape, so the law is fitted in N and D alone (Approaches 1 and 2 keep "
               f"the table's own C): the budget line is the full run's, {timed}")
    else:
        why = f"no count was given: the full run's, {timed}"
    tied = bool((target.get("architecture") or {}).get("tie_embeddings", False))
    return palm_count(int(target["vocab_size"]), int(target["seq_len"]), convention, tied, why)


def budget_line_count(count: FlopCount, budget: dict) -> FlopCount:
    """The count the budget line is drawn in. A budget of GPUs x days is PaLM FLOPs: GPUs x peak x MFU x seconds,
    with MFU defined on PaLM's count (Chowdhery et al. 2022, App. B), the count the dry run times the launch with.
    Pilots count in the exact count (their IsoFLOP budgets do), which also charges the input-embedding lookup
    as a matmul, so sizing a GPU-days budget on their line launched 1-3% fewer days than it names (V = 50,257).
    Such a budget is sized on the PaLM line of the pilots' own family; a budget in FLOPs keeps the pilots' count,
    as do the fit's approaches (their C is the pilots')."""
    family = count.flops_per_token
    if budget.get("source") != "hardware" or count.name != "exact" or not isinstance(family, FamilyFlopsPerToken):
        return count
    return palm_count(family.vocab_size, family.seq_len, count.convention, family.tie,
                      "the budget is GPUs x days, i.e. PaLM FLOPs (MFU is defined on them), so the run is sized on "
                      "the PaLM line of the pilots' family and its days are the budget's; the pilots' IsoFLOP "
                      "budgets and the fit's approaches stay in the exact count")


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
                 schedule: dict | None = None, world_size: int = 1, gpu_memory_gb: float = 80.0,
                 hparam_rule: dict | None = None) -> dict:
    """The shape's exact counts, its token count under `count`, its hyperparameters and its launch on
    `world_size` GPUs (pipeline.plan.launch). The hyperparameters are the pilots' LR/batch rule (`hparam_rule`,
    as recorded in their runs; the default rule without pilots) at the run's own N and D; the rule's batch is
    rounded to micro x accumulation x world, and the steps are counted in that batch."""
    seq_len = shape.seq_len
    params = count_params(shape)
    fpt = {**{m: training_flops_per_token(shape, seq_len, method=m) for m in ("exact", "6n")},
           "palm": palm_mfu_flops_per_token(shape, seq_len)}   # what the dry run times the launch with
    per_token = count.of_shape(shape)
    target_tokens = budget_flops / per_token
    given_rule = HparamRule.from_dict(hparam_rule) if hparam_rule else DEFAULT_RULE

    def rules(**over):
        return resolve_hyperparameters(flops=budget_flops, n_params=params[convention], run_tokens=int(target_tokens),
                                       seq_len=seq_len, n_params_non_embedding=params["non_embedding"],
                                       rule=given_rule, **over)

    rule = rules()
    launch = plan_launch(shape, rule.batch_tokens // seq_len, world_size, gpu_memory_gb)
    # The same rules at the launched batch (an LR rule may depend on it); the batch's source says how it was rounded.
    hp = rules(batch_tokens=launch.global_batch_sequences * seq_len)
    sources = {k: v for k, v in hp.to_dict().items() if k.endswith("_source")}
    sources["batch_source"] = f"{rule.batch_source}; {launch.batch_note}"
    rule_law = HparamRule.from_dict(hp.rule_law)
    steps = max(1, round(target_tokens / hp.batch_tokens))  # whole steps, as the pilots round
    tokens = steps * hp.batch_tokens
    return {
        "shape": shape.to_dict(), "describe": shape.describe(), "params": params, "convention": convention,
        "flops_per_token": fpt, "count": count.name, "count_flops_per_token": per_token,
        "flop_convention": count.formula,
        "tokens": tokens, "tokens_rule": f"budget / {count.name} training FLOPs per token of this shape, whole batches",
        "tokens_per_param": tokens / params[convention], "flops": tokens * per_token,
        "flops_exact": tokens * fpt["exact"], "flops_6n": tokens * fpt["6n"], "flops_palm": tokens * fpt["palm"],
        "lr": hp.lr,
        "batch_tokens": hp.batch_tokens, "rule_batch_tokens": rule.batch_tokens, "warmup_tokens": hp.warmup_tokens,
        "warmup_steps": math.ceil(hp.warmup_tokens / hp.batch_tokens), "beta2": hp.beta2, "steps": steps,
        "schedule": full_run_schedule(schedule), "precision": FULL_RUN_PRECISION,
        "hparam_sources": sources, "launch": launch.to_dict(),
        "hparam_rule": hp.rule, "hparam_rule_range": hp.rule_range, "hparam_rule_law": hp.rule_law,
        "lr_extrapolation_decades": hp.extrapolation_decades, "lr_sensitivity": lr_sensitivity(rule_law),
    }


def differences(pilots: dict | None, model: dict, target: dict) -> list[dict]:
    """Every setting that differs between the pilots and the full run, with why (the report lists them)."""
    if not pilots:
        return [{"setting": "tokenizer, vocabulary, sequence length, precision", "pilots": "none (no pilot records)",
                 "full_run": f"{target['tokenizer']}, V={target['vocab_size']}, T={target['seq_len']}, {model['precision']}",
                 "why": target["source"]}]
    rows = [{"setting": "model size and shape", "pilots": "the sweep's sizes",
             "full_run": f"{model['describe']}", "why": "the law's optimum at the full budget, on the same sizing rule"},
            {"setting": "tokens", "pilots": "each run's IsoFLOP budget / its exact FLOPs per token",
             "full_run": f"{model['tokens']:,}",
             "why": ("the full budget under the same count" if model.get("count") == "exact" else
                     f"the full budget / the shape's {model.get('count')} FLOPs per token (the count the budget is in)")},
            {"setting": "learning rate, batch, warmup, beta2", "pilots": "the rules at each pilot's compute",
             "full_run": f"lr {model['lr']:.3g}, batch {model['batch_tokens']:,} tokens",
             "why": f"the same rules ({model.get('hparam_rule', DEFAULT_RULE)}; Porian et al. 2024) at the full run's N and D, "
                    f"{model.get('lr_extrapolation_decades', 0):.1f} decades beyond the LR rule's data"}]
    pilot_precision = pilots.get("precision")
    if pilot_precision != model["precision"]:
        rows.append({"setting": "precision", "pilots": pilot_precision or "unknown", "full_run": model["precision"],
                     "why": "bf16 autocast (fp32 master weights and AdamW moments) is how GPUs train at scale; "
                            "the law assumes it leaves the loss unchanged (not measured here)"})
    launch = model.get("launch") or {}
    if launch.get("parallelism") == "fsdp" and model["precision"] == "bf16" and pilots.get("parallelism") != "fsdp":
        rows.append({"setting": "parallelism", "pilots": pilots.get("parallelism") or "one process or DDP",
                     "full_run": f"FSDP2 over {launch.get('world_size')} GPUs",
                     "why": "the model states do not fit one GPU; FSDP2 gathers the parameters in bf16, so the "
                            "residual stream is bf16 where the pilots' autocast kept it fp32 (40 CPU steps of a "
                            "tiny model: 1.5% apart; at scale not measured here, docs/multiprocess.md)"})
    if pilots.get("device") and pilots["device"] != "cuda":
        rows.append({"setting": "device", "pilots": pilots["device"], "full_run": "cuda",
                     "why": "the full budget is GPU-days"})
    return rows
