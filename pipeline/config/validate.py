"""Every check of a config's values, in one place, run once after loading and before any compute.

`validate(obj)` dispatches on the schema: a `Study` is checked section by section and across sections,
a `DataConfig` on its own. Each failure is a one-line `UserError` naming the dotted key and what to
change. Checks that need the planned design (sizes, budgets) live with the planner
(pipeline/plan/design.py: check_design), which the sweep runs before any data is prepared.
"""

from __future__ import annotations

from models.sizing import SizingError, parse_size
from pipeline.config.schema import DataConfig, Study
from pipeline.errors import UserError


def validate(obj) -> None:
    """Check a loaded config; raise a one-line UserError naming the key at the first problem."""
    if isinstance(obj, Study):
        validate_study(obj)
    elif isinstance(obj, DataConfig):
        validate_data(obj)


def validate_data(d: DataConfig) -> None:
    if not d.source:
        raise UserError("data.source is empty: use stdlib, hf:<name> or a path")
    if d.tokenizer == "bpe" and d.vocab_size < 257:
        raise UserError(f"data.vocab_size={d.vocab_size} must be >= 257 (256 bytes + end-of-document) for bpe")
    if d.val_tokens < 2:
        raise UserError(f"data.val_tokens={d.val_tokens} must be >= 2: e.g. data.val_tokens=262144")
    if d.max_train_tokens is not None and d.max_train_tokens < 2:
        raise UserError(f"data.max_train_tokens={d.max_train_tokens} must be >= 2 or null")
    if d.source.startswith("hf:") and d.max_train_tokens is None:
        raise UserError("data.max_train_tokens is required for hub sources: e.g. data.max_train_tokens=2000000000")
    if d.max_documents is not None and d.max_documents < 2:
        raise UserError(f"data.max_documents={d.max_documents} must be >= 2 (train and validation) or null")
    if d.num_proc < 1:
        raise UserError(f"data.num_proc={d.num_proc} must be >= 1")
    if d.seed < 0:
        raise UserError(f"data.seed={d.seed} must be >= 0")
    if d.txt_sample_by not in ("document", "paragraph", "line"):
        raise UserError(f"data.txt_sample_by={d.txt_sample_by} must be document, paragraph or line")


def validate_study(job: Study) -> None:
    validate_data(job.data)
    t, m = job.train, job.model
    horizons = [k for k in ("tokens", "tokens_per_param", "flops") if getattr(t, k) is not None]
    if len(horizons) > 1:
        raise UserError(f"train.{horizons[0]} and train.{horizons[1]} both set: give the horizon one way only")
    for key in ("tokens", "tokens_per_param", "flops", "lr", "batch_tokens", "micro_batch_size"):
        value = getattr(t, key)
        if value is not None and value <= 0:
            raise UserError(f"train.{key}={value:g} must be positive")
    if job.budget_flops is not None and job.budget_flops <= 0:
        raise UserError(f"budget_flops={job.budget_flops:g} must be positive")
    if t.warmup_tokens is not None and t.warmup_tokens < 0:
        raise UserError(f"train.warmup_tokens={t.warmup_tokens} must be >= 0")
    if not 0 <= t.min_lr_ratio <= 1:
        raise UserError(f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
    if not 0 < t.cooldown_fraction < 1:
        raise UserError(f"train.cooldown_fraction={t.cooldown_fraction} must be in (0, 1)")
    if t.beta2 is not None and not 0 < t.beta2 < 1:
        raise UserError(f"train.beta2={t.beta2} must be in (0, 1)")
    if t.batch_tokens is not None and t.batch_tokens % m.seq_len:
        raise UserError(f"train.batch_tokens={t.batch_tokens} is not a multiple of model.seq_len={m.seq_len}: "
                        f"use {max(1, round(t.batch_tokens / m.seq_len)) * m.seq_len}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"train.device={t.device!r}: use auto, cpu or cuda")
    if m.seq_len <= 1:
        raise UserError(f"model.seq_len={m.seq_len} must be at least 2")
    explicit = [m.n_layer, m.d_model, m.n_heads, m.d_ff]
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise UserError("model.n_layer, d_model, n_heads and d_ff must be set together (or none, to use model.size)")
    if m.n_layer is None:
        try:
            size = parse_size(m.size)
        except SizingError as err:
            raise UserError(f"model.size: {err}") from err
        if not size > 0:
            raise UserError(f"model.size={m.size} must be a positive parameter count, e.g. model.size=2e5")
    if m.convention not in ("total", "non_embedding"):
        raise UserError(f"model.convention={m.convention!r}: use total or non_embedding")
    if t.evals_per_run < 1:
        raise UserError(f"train.evals_per_run={t.evals_per_run} must be >= 1")
    if t.diverge_ratio <= 1:
        raise UserError(f"train.diverge_ratio={t.diverge_ratio} must be > 1")
    if t.keep_checkpoints < 1:  # the newest readable checkpoint is what a relaunch resumes from (issue 18, #7)
        raise UserError(f"train.keep_checkpoints={t.keep_checkpoints} must be >= 1 (the newest checkpoint is what a "
                        "relaunch resumes from; 2, the default, also survives a torn newest file); to keep more, "
                        "give a larger count")
    if t.parallelism not in ("ddp", "fsdp"):
        raise UserError(f"train.parallelism={t.parallelism!r}: use ddp (replicated) or fsdp (sharded with FSDP2)")
