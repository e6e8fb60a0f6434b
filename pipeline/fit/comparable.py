"""Which runs may be fitted together: the settings that change what a loss means, checked across runs.

Runs that differ in their data (corpus fingerprint, tokenizer, validation set), their LR, batch, warmup or
beta2 rule, an optimizer setting (weight decay, gradient clipping, beta1, Adam's epsilon), their precision,
tied embeddings or their LR schedule are never mixed: a fit of them refuses with one line naming the
setting. Also the pilots' shared setup (tokenizer, unique tokens, precision, device) for the decision.
"""

from __future__ import annotations

import json
import re

from pipeline.errors import UserError

# (name in messages, path in the record): settings that change what a loss means. The tokenizer and the
# validation set change the units and the sample of the loss; the fingerprint catches any other change of
# the corpus; the LR/batch/warmup/beta2 rules and every recorded optimizer setting (weight decay, gradient
# clipping, beta1, Adam's epsilon) change how well each size is trained; the precision and tied embeddings
# change the model that is trained. The LR schedule is checked apart (pilot_schedule), with its own message.
COMPARABLE_FIELDS = (("data.tokenizer", ("data", "tokenizer")), ("data.val_tokens", ("data", "val_tokens")),
                     ("data.source", ("data", "source")), ("data.fingerprint", ("data", "fingerprint")),
                     ("LR rule", ("hparams", "lr_source")), ("batch rule", ("hparams", "batch_source")),
                     ("warmup rule", ("hparams", "warmup_source")), ("beta2 rule", ("hparams", "beta2_source")),
                     ("train.weight_decay", ("hparams", "weight_decay")), ("train.grad_clip", ("hparams", "grad_clip")),
                     ("train.beta1", ("hparams", "beta1")), ("train.adam_eps", ("hparams", "adam_eps")),
                     ("precision", ("precision",)), ("model.tie_embeddings", ("shape", "tie_embeddings")))


def _schedule_of(rec: dict) -> dict | None:
    hp = rec.get("hparams") or {}
    if not hp.get("schedule"):
        return None
    fraction = None
    if hp["schedule"] == "wsd":  # the configured fraction; older records only have the rounded step count
        fraction = hp.get("cooldown_fraction") or round((hp.get("cooldown_steps") or 0) / max(1, rec.get("steps") or 1), 2)
    return {"name": hp["schedule"], "min_lr_ratio": hp.get("min_lr_ratio"), "cooldown_fraction": fraction}


def pilot_schedule(records: list[dict], source: str) -> dict | None:
    """The LR schedule all runs share, or a one-line UserError when they mix schedules.

    A fit must not mix them: on our CPU pilots a (1 - sqrt) WSD cooldown ends 0.02-0.04 nats below a
    cosine cycle at the same (N, D), and decaying to 0 instead of 10% moves a cosine run by ~0.03
    (docs/cooldown_reuse.md): a near-constant offset per family that would bend the law if mixed.
    The full run then uses the same schedule, so the predicted loss is for the run it will be.
    """
    kinds: dict[tuple, int] = {}
    for rec in records:
        sched = _schedule_of(rec)
        key = tuple(sorted(sched.items())) if sched else None
        kinds[key] = kinds.get(key, 0) + 1
    if len(kinds) > 1:
        def label(key):
            if key is None:
                return "unknown"
            d = dict(key)
            tail = f", cooldown {d['cooldown_fraction']:.0%}" if d.get("cooldown_fraction") else ""
            return f"{d['name']} to {d['min_lr_ratio']:g} of peak{tail}"
        mix = "; ".join(f"{n} runs {label(k)}" for k, n in kinds.items())
        raise UserError(f"the runs in {source} mix LR schedules ({mix}): their losses differ by a schedule offset, "
                        "so fit one schedule at a time (one sweep's results directory)")
    key = next(iter(kinds))
    return dict(key) if key else None


# Rules whose recorded text states the run's own values ("beta2 0.999 for 1152-token batches", "N tokens"):
# the rule is the same when the text is the same with its numbers masked. The LR and batch rules' texts
# carry only the rule's constants, so they compare as written.
PER_RUN_VALUE_SOURCES = ("warmup_source", "beta2_source")
_NUMBER = re.compile(r"\d[\d.,]*(?:e[+-]?\d+)?")


def _field(rec: dict, path: tuple[str, ...]):
    node = rec
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, str) and path[-1] in PER_RUN_VALUE_SOURCES:
        return _NUMBER.sub("#", node)
    return node


def differing_field(rec: dict, reference: dict) -> str | None:
    """The first COMPARABLE_FIELDS setting in which `rec` differs from `reference`, as 'name (a vs b)'."""
    for name, path in COMPARABLE_FIELDS:
        mine, theirs = _field(rec, path), _field(reference, path)
        if mine is not None and theirs is not None and mine != theirs:
            return f"{name} ({mine} vs {theirs})"
    return None


def check_comparable(records: list[dict], source: str) -> None:
    """One-line UserError when the runs differ in a COMPARABLE_FIELDS setting (their losses do not compare)."""
    for name, path in COMPARABLE_FIELDS:
        values: dict = {}
        for rec in records:
            value = _field(rec, path)
            if value is not None:
                values[value] = values.get(value, 0) + 1
        if len(values) > 1:
            mix = ", ".join(f"{n} runs with {v}" for v, n in values.items())
            raise UserError(f"the runs in {source} differ in {name} ({mix}): their losses are not comparable; fit the "
                            "current plan (drop all_runs=true) or one setting at a time")


def pilot_setup(records: list[dict]) -> dict:
    """What the pilots shared beyond the schedule: tokenizer, unique training tokens, precision, device, and
    whether their head was tied to the embedding (the full run keeps their architecture)."""
    def common(values):
        values = {v for v in values if v is not None}
        return values.pop() if len(values) == 1 else None
    rules = {json.dumps(_field(r, ("hparams", "rule_law")), sort_keys=True) for r in records}
    return {"hparam_rule": json.loads(rules.pop()) if len(rules) == 1 else None,   # the LR/batch rule, if shared
            "lr_runs": [{"lr": r["hparams"]["lr"], "tokens": r["tokens"], "flops": r["flops"]["exact"],
                         "n_total": r["params"]["total"], "n_non_embedding": r["params"]["non_embedding"],
                         "budget": (r.get("target") or {}).get("budget_flops")}
                        for r in records if (r.get("hparams") or {}).get("lr") and (r.get("flops") or {}).get("exact")],
            "tokenizer": common(_field(r, ("data", "tokenizer")) for r in records),
            "unique_tokens": common(_field(r, ("data", "train_tokens_unique")) for r in records),
            "data_fingerprint": common(_field(r, ("data", "fingerprint")) for r in records),
            "precision": common(r.get("precision") for r in records),
            "device": common(((r.get("provenance") or {}).get("device") or {}).get("type") for r in records),
            "tie_embeddings": common((r.get("shape") or {}).get("tie_embeddings") for r in records)}
