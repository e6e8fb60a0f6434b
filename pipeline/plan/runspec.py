"""Resolve a Study config into a RunSpec: every number a run will use, computed in one place.

The horizon (train.tokens | train.tokens_per_param | train.flops), the model shape from the sizing
rule, the parameter counts under every convention, the FLOPs per token (exact, Chinchilla App. F;
6N; PaLM's MFU count), the hyperparameters from pipeline.plan.hparams, steps and micro-batching: a
batch from the rule is rounded to the nearest multiple of micro-batch x processes, for every run (stated in
`batch_note`).
The planner (pipeline.plan.design) calls the same function, so the dry-run table is exactly what runs.

Run identity: `run_id = <readable name>-<hash8>`, the hash of the canonical JSON of the *resolved*
semantic values (shape, tokens, batch, LR, schedule, seed, data identity). Reordering overrides
or giving the same horizon as tokens or as FLOPs keeps the id; changing the LR changes it; log
intervals, W&B settings and paths never enter it (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace

from models.accounting import count_params, palm_mfu_flops_per_token, training_flops_per_token
from models.shape import ModelShape, ShapeError
from models.sizing import SizingError, parse_size, shape_for_params
from pipeline.config.load import as_dict
from pipeline.config.schema import NON_SEMANTIC_DATA_KEYS, Study
from pipeline.errors import UserError
from pipeline.plan.hparams import Hyperparameters, resolve_hyperparameters
from pipeline.plan.launch import batch_note


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    shape: ModelShape
    params: dict            # {total, non_embedding, embedding, head}
    convention: str         # the N the run's name, horizon and 6N count use
    flops_per_token: dict   # {exact, 6n, palm}
    tokens: int             # tokens the run will train on (= steps * batch_tokens)
    steps: int
    batch_tokens: int
    micro_batch_size: int   # sequences per forward pass, per process
    grad_accum: int
    warmup_steps: int
    cooldown_steps: int     # wsd only
    hparams: Hyperparameters
    horizon_source: str     # how the horizon was given, e.g. "flops=1e12"
    budget_flops: float | None
    world_size: int = 1     # processes the batch is split over
    batch_note: str = ""    # how the rule's batch became micro x accumulation x world (plan.launch.batch_note)

    @property
    def n_params(self) -> int:
        return self.params[self.convention]

    @property
    def flops(self) -> dict:
        """Training FLOPs of the whole run under each counting method."""
        return {k: v * self.tokens for k, v in self.flops_per_token.items()}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = self.shape.to_dict()
        out["flops"] = self.flops
        return out


def model_shape(job: Study, vocab_size: int) -> ModelShape:
    m = job.model
    try:
        if m.n_layer is not None:
            return ModelShape(n_layer=m.n_layer, d_model=m.d_model, n_heads=m.n_heads, d_ff=m.d_ff,
                              vocab_size=vocab_size, seq_len=m.seq_len, tie_embeddings=m.tie_embeddings)
    except ShapeError as err:
        raise UserError(f"model (n_layer, d_model, n_heads, d_ff): {err}") from err
    try:
        return shape_for_params(parse_size(m.size), vocab_size, m.seq_len, convention=m.convention,
                                tie_embeddings=m.tie_embeddings, tolerance=m.size_tolerance)
    except SizingError as err:
        raise UserError(f"model.size={m.size}: {err}") from err


def _size_label(n: float) -> str:
    for unit, scale in (("b", 1e9), ("m", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}".replace(".", "p")
    return str(int(n))


def _semantic_identity(job: Study, spec_values: dict, data_identity: dict) -> str:
    payload = {"spec": spec_values, "data": data_identity,
               "train": {k: v for k, v in as_dict(job.train).items()
                         if k in ("schedule", "min_lr_ratio", "cooldown_fraction", "beta1", "weight_decay",
                                  "adam_eps", "grad_clip", "seed", "precision", "diverge_ratio")},
               "init_std": job.model.init_std}
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def data_identity(job: Study) -> dict:
    return {k: v for k, v in as_dict(job.data).items() if k not in NON_SEMANTIC_DATA_KEYS}


def resolve_run(job: Study, vocab_size: int, world_size: int = 1) -> RunSpec:
    """Every number of the run, before anything is allocated. Raises UserError on bad combinations."""
    t = job.train
    shape = model_shape(job, vocab_size)
    params = count_params(shape)
    seq_len = shape.seq_len
    fpt = {"exact": training_flops_per_token(shape, seq_len, method="exact"),
           "6n": training_flops_per_token(shape, seq_len, method="6n"),
           "palm": palm_mfu_flops_per_token(shape, seq_len)}
    n_params = params[job.model.convention]

    # Horizon, given one way, turned into a token count and an approximate compute for the LR rule.
    if t.flops is not None:
        target_tokens, source = t.flops / fpt["exact"], f"flops={t.flops:.3g}"
    elif t.tokens_per_param is not None:
        target_tokens, source = t.tokens_per_param * n_params, f"tokens_per_param={t.tokens_per_param:g} x N_{job.model.convention}"
    elif t.tokens is not None:
        target_tokens, source = float(t.tokens), f"tokens={t.tokens}"
    else:
        raise UserError("no horizon: set one of train.tokens, train.tokens_per_param or train.flops")
    approx_flops = target_tokens * fpt["exact"]
    try:
        hp = resolve_hyperparameters(flops=approx_flops, n_params=n_params, run_tokens=int(target_tokens),
                                     seq_len=seq_len, n_params_non_embedding=params["non_embedding"],
                                     rule=t.hparam_rule, lr=t.lr, batch_tokens=t.batch_tokens,
                                     warmup_tokens=t.warmup_tokens, beta2=t.beta2)
    except ValueError as err:
        raise UserError(f"train.hparam_rule={t.hparam_rule}: {err}") from err
    if t.world_size is not None and t.world_size != world_size:
        raise UserError(f"this run is configured for train.world_size={t.world_size} processes but runs on "
                        f"{world_size}: launch {t.world_size} processes, or set train.world_size={world_size} "
                        "(the batch is then re-split; check it with train.dry_run=true)")
    batch_seqs = rule_seqs = hp.batch_tokens // seq_len
    if t.batch_tokens is None:
        # The rule's batch, rounded to the nearest whole number of micro-batches on every process (an explicit
        # train.batch_tokens is not moved); unset micro_batch_size: one forward pass per process per step.
        unit = (t.micro_batch_size or 1) * world_size
        batch_seqs = max(1, round(batch_seqs / unit)) * unit
        hp = replace(hp, batch_tokens=batch_seqs * seq_len)
    # Whole steps, rounded to the nearest, so an IsoFLOP run lands within half a step of its budget.
    steps = max(1, round(target_tokens / hp.batch_tokens))
    if steps < 10:
        raise UserError(f"the run has only {steps} optimizer steps ({source}, batch {hp.batch_tokens} tokens): "
                        "raise the horizon or lower train.batch_tokens")

    micro = t.micro_batch_size or max(1, batch_seqs // world_size)
    if batch_seqs % (micro * world_size):
        raise UserError(f"train.batch_tokens={hp.batch_tokens} ({batch_seqs} sequences) does not divide into "
                        f"micro-batches of {micro} x {world_size} processes: set train.micro_batch_size to a divisor "
                        f"of {batch_seqs // world_size if batch_seqs % world_size == 0 else batch_seqs}")
    grad_accum = batch_seqs // (micro * world_size)
    batching = batch_note(rule_seqs, batch_seqs, micro, grad_accum, world_size, seq_len, given=t.batch_tokens is not None)
    warmup_steps = math.ceil(hp.warmup_tokens / hp.batch_tokens)
    cooldown_steps = round(t.cooldown_fraction * steps) if t.schedule.value == "wsd" else 0
    if warmup_steps + cooldown_steps >= steps:
        raise UserError(f"warmup ({warmup_steps} steps) + cooldown ({cooldown_steps}) is not shorter than the run "
                        f"({steps} steps): lower train.warmup_tokens or train.cooldown_fraction, or lengthen the run")

    tokens = steps * hp.batch_tokens
    values = {"shape": shape.to_dict(), "tokens": tokens, "batch_tokens": hp.batch_tokens,
              "hparams": hp.to_dict(), "warmup_steps": warmup_steps, "cooldown_steps": cooldown_steps}
    digest = _semantic_identity(job, values, data_identity(job))
    run_id = f"n{_size_label(n_params)}-d{_size_label(tokens)}-{digest}"
    return RunSpec(run_id=run_id, shape=shape, params=params, convention=job.model.convention,
                   flops_per_token=fpt, tokens=tokens, steps=steps, batch_tokens=hp.batch_tokens,
                   micro_batch_size=micro, grad_accum=grad_accum, warmup_steps=warmup_steps,
                   cooldown_steps=cooldown_steps, hparams=hp, horizon_source=source,
                   budget_flops=job.budget_flops, world_size=world_size, batch_note=batching)
