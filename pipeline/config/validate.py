"""Every check of a config's values, in one place, run once after loading and before any compute.

`validate(obj)` dispatches on the schema: a `Study` is checked section by section and across sections,
a `DataConfig` on its own. Each failure is a one-line `UserError` naming the dotted key and what to
change. Checks that need the planned design (sizes, budgets) live with the planner
(pipeline/plan/design.py: check_design), which the sweep runs before any data is prepared.
"""

from __future__ import annotations

import math
import re

from models.sizing import SizingError, parse_size
from pipeline.config.presets import FULL_RUN_PRESETS, STUDY_PRESET
from pipeline.config.schema import DataConfig, Study, SweepConfig
from pipeline.errors import UserError

# Sizes above this are refused at once: no dense model this large has been trained, and sizing one
# takes seconds to minutes (models/sizing.py enumerates the shape grid up to the request).
MAX_MODEL_PARAMS = 1e13
# A full run longer than this many days is a typo (1e9 days is 2.7 million years), not a plan.
MAX_BUDGET_DAYS = 3650
# sweep_name and run ids become directory names under results_dir: no separators, no "..".
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    if d.unique_tokens is not None and not (math.isfinite(d.unique_tokens) and d.unique_tokens > 0):
        raise UserError(f"data.unique_tokens={d.unique_tokens:g} must be a positive token count (the unique tokens "
                        "available to the full run), e.g. data.unique_tokens=1e12, or null")
    if d.txt_sample_by not in ("document", "paragraph", "line"):
        raise UserError(f"data.txt_sample_by={d.txt_sample_by} must be document, paragraph or line")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _positive(key: str, value, example: str) -> None:
    """`value` is unset, or a positive finite number."""
    if value is not None:
        _need(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
              f"{key}={value:g} must be a positive number: e.g. {key}={example}")


def _at_least(key: str, value, low: int, hint: str) -> None:
    if value is not None:
        _need(value >= low, f"{key}={value} must be >= {low}: {hint}")


def _model_size(key: str, text) -> float:
    """A model size (name or count) as a parameter count, or a one-line error naming `key`."""
    try:
        size = parse_size(text)
    except SizingError as err:
        raise UserError(f"{key}: {err}") from err
    _need(size > 0, f"{key}={text} must be a positive parameter count, e.g. {key.split('[')[0]}=2e5")
    _need(size <= MAX_MODEL_PARAMS, f"{key}={text} is {size:.3g} parameters, above {MAX_MODEL_PARAMS:.0e}, larger "
                                     "than any model this tool can size: check the exponent (e.g. 1e9, not 1e15)")
    return size


def validate_study(job: Study) -> None:
    validate_data(job.data)
    validate_model(job)
    validate_train(job)
    validate_sweep(job)
    validate_launcher(job)
    validate_budget(job)
    validate_fit(job)
    validate_fit_keys(job)
    validate_eval(job)
    validate_target_keys(job)


def validate_model(job: Study) -> None:
    m = job.model
    _need(m.seq_len > 1, f"model.seq_len={m.seq_len} must be at least 2")
    _need(job.data.val_tokens >= m.seq_len + 1,
          f"model.seq_len={m.seq_len} is longer than the validation set (data.val_tokens={job.data.val_tokens}): "
          f"raise data.val_tokens to at least {m.seq_len + 1} or lower model.seq_len")
    explicit = {"n_layer": m.n_layer, "d_model": m.d_model, "n_heads": m.n_heads, "d_ff": m.d_ff}
    if any(v is not None for v in explicit.values()) and not all(v is not None for v in explicit.values()):
        raise UserError("model.n_layer, d_model, n_heads and d_ff must be set together (or none, to use model.size)")
    if m.n_layer is not None:
        for key, value in explicit.items():
            _need(value >= 1, f"model.{key}={value} must be a positive integer, e.g. model.{key}=4")
        _need(m.d_model % m.n_heads == 0, f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}: "
                                          f"pick n_heads from the divisors of d_model, e.g. model.n_heads="
                                          f"{max(h for h in range(1, min(m.n_heads, m.d_model) + 1) if m.d_model % h == 0)}")
        _need((m.d_model // m.n_heads) % 2 == 0, f"model.d_model / model.n_heads = {m.d_model // m.n_heads} is odd: "
                                                 "RoPE needs an even head width; change n_heads or d_model")
    else:
        _model_size("model.size", m.size)
    _need(m.convention in ("total", "non_embedding"), f"model.convention={m.convention!r}: use total or non_embedding")
    _need(0 < m.size_tolerance < 1, f"model.size_tolerance={m.size_tolerance} must be in (0, 1), e.g. 0.1 for 10%")
    _need(m.init_std > 0, f"model.init_std={m.init_std} must be > 0, e.g. model.init_std=0.02")


def validate_train(job: Study) -> None:
    t, m = job.train, job.model
    horizons = [k for k in ("tokens", "tokens_per_param", "flops") if getattr(t, k) is not None]
    if len(horizons) > 1:
        raise UserError(f"train.{horizons[0]} and train.{horizons[1]} both set: give the horizon one way only")
    for key in ("tokens", "tokens_per_param", "flops", "lr", "batch_tokens", "micro_batch_size", "eval_batch_size",
                "world_size"):
        value = getattr(t, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"train.{key}={value:g} must be positive")
    if job.budget_flops is not None and not (math.isfinite(job.budget_flops) and job.budget_flops > 0):
        raise UserError(f"budget_flops={job.budget_flops:g} must be positive")
    if t.warmup_tokens is not None and t.warmup_tokens < 0:
        raise UserError(f"train.warmup_tokens={t.warmup_tokens} must be >= 0")
    if not 0 <= t.min_lr_ratio <= 1:
        raise UserError(f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
    if not 0 < t.cooldown_fraction < 1:
        raise UserError(f"train.cooldown_fraction={t.cooldown_fraction} must be in (0, 1)")
    if t.beta2 is not None and not 0 < t.beta2 < 1:
        raise UserError(f"train.beta2={t.beta2} must be in (0, 1)")
    _need(0 <= t.beta1 < 1, f"train.beta1={t.beta1} must be in [0, 1), e.g. train.beta1=0.9")
    _need(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0, e.g. train.weight_decay=0.1")
    _need(t.adam_eps > 0, f"train.adam_eps={t.adam_eps} must be > 0, e.g. train.adam_eps=1e-8")
    _need(t.grad_clip > 0, f"train.grad_clip={t.grad_clip} must be > 0 (the max gradient norm), e.g. train.grad_clip=1.0")
    if t.batch_tokens is not None and t.batch_tokens % m.seq_len:
        raise UserError(f"train.batch_tokens={t.batch_tokens} is not a multiple of model.seq_len={m.seq_len}: "
                        f"use {max(1, round(t.batch_tokens / m.seq_len)) * m.seq_len}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"train.device={t.device!r}: use auto, cpu or cuda")
    if t.evals_per_run < 1:
        raise UserError(f"train.evals_per_run={t.evals_per_run} must be >= 1")
    if t.diverge_ratio <= 1:
        raise UserError(f"train.diverge_ratio={t.diverge_ratio} must be > 1")
    _at_least("train.threads", t.threads, 1, "give the CPU threads for torch, e.g. train.threads=2, or null for "
                                            "torch's default")
    _at_least("train.seed", t.seed, 0, "use e.g. train.seed=0")
    _at_least("train.keep_checkpoints", t.keep_checkpoints, 1, "keep at least the newest checkpoint "
                                                              "(train.keep_checkpoints=2 is the default)")
    _at_least("train.log_interval_steps", t.log_interval_steps, 1, "e.g. train.log_interval_steps=10")
    _need(t.checkpoint_interval_s >= 0, f"train.checkpoint_interval_s={t.checkpoint_interval_s} must be >= 0 "
                                        "(0 checkpoints at every step), e.g. train.checkpoint_interval_s=300")
    bad_step = next((s for s in t.keep_steps if s < 1), None)
    _need(bad_step is None, f"train.keep_steps holds {bad_step}: steps start at 1")
    _need(t.parallelism in ("ddp", "fsdp"), f"train.parallelism={t.parallelism!r}: use ddp (replicated) or fsdp "
                                             "(sharded with FSDP2)")
    for key in ("init_timeout_s", "finish_timeout_s"):
        value = getattr(job.tracking, key)
        _need(math.isfinite(value) and value > 0, f"tracking.{key}={value} must be > 0 seconds, e.g. tracking.{key}=30")


def validate_sweep(job: Study) -> None:
    s = job.sweep
    _need(bool(_PLAIN_NAME.match(job.sweep_name)), f"sweep_name={job.sweep_name!r} must be a plain directory name "
                                                   "(letters, digits, . _ -), e.g. sweep_name=my_study")
    _need(bool(str(job.results_dir).strip()), "results_dir is empty: give a directory, e.g. results_dir=results")
    for i, size in enumerate(s.sizes):
        _model_size(f"sweep.sizes[{i}]", size)
    for i, budget in enumerate(s.budgets_flops):
        _need(math.isfinite(budget) and budget > 0, f"sweep.budgets_flops[{i}]={budget:g} must be a positive number "
                                                    "of FLOPs, e.g. sweep.budgets_flops=[1e12,3e12]")
    for key in ("tokens", "tokens_per_param"):
        for i, value in enumerate(getattr(s, key)):
            _need(math.isfinite(value) and value > 0, f"sweep.{key}[{i}]={value:g} must be positive")
    _need(s.sizes_per_budget >= 3, f"sweep.sizes_per_budget={s.sizes_per_budget}: a parabola needs at least 3 sizes "
                                   "per budget, e.g. sweep.sizes_per_budget=5")
    _need(s.size_ratio > 1, f"sweep.size_ratio={s.size_ratio} must be > 1 (the factor between neighbouring sizes), "
                            "e.g. sweep.size_ratio=1.6")
    _need(s.budget_ratio > 1, f"sweep.budget_ratio={s.budget_ratio} must be > 1 (the factor between neighbouring "
                              "budgets), e.g. sweep.budget_ratio=3")
    _need(s.n_budgets >= 1, f"sweep.n_budgets={s.n_budgets} must be >= 1 (Approach 2 needs 2 or more), "
                            "e.g. sweep.n_budgets=3")
    _need(s.tokens_per_param_guess > 0, f"sweep.tokens_per_param_guess={s.tokens_per_param_guess} must be > 0, "
                                        "e.g. 20 (Chinchilla's ratio)")
    if s.pilot_share is not None:
        _need(0 < s.pilot_share <= 1, f"sweep.pilot_share={s.pilot_share} must be in (0, 1]: it is a share of the full "
                                      "budget")
    _at_least("sweep.max_retries", s.max_retries, 0, "0 never retries a failed run, e.g. sweep.max_retries=1")
    if s.design.value == "adaptive":
        validate_adaptive(job)


def validate_adaptive(job: Study) -> None:
    s = job.sweep
    for key, low in (("seed_budgets", 1), ("round_runs", 1), ("max_rounds", 0), ("round_bootstrap", 10),
                     ("min_profiles", 0)):
        _at_least(f"sweep.{key}", getattr(s, key), low, f"e.g. sweep.{key}={getattr(SweepConfig, key)}")
    if s.stop_width is not None:
        _need(math.isfinite(s.stop_width) and s.stop_width > 1, f"sweep.stop_width={s.stop_width} must be > 1 (the "
              "high/low ratio of N_opt's 90% interval to stop at), e.g. sweep.stop_width=3, or null to spend it all")
    _positive("sweep.pilot_flops", s.pilot_flops, "1e13")
    _positive("sweep.min_budget_flops", s.min_budget_flops, "5e11")
    _need(bool(job.budget.flops or job.budget.days), "sweep.design=adaptive chooses runs for the full budget: set "
          "budget.flops (or budget.gpu, budget.gpus and budget.days)")
    _need(not s.cooldown_reuse and not s.sizes, "sweep.design=adaptive places its own sizes and runs each once: "
          "drop sweep.sizes and sweep.cooldown_reuse")


def validate_launcher(job: Study) -> None:
    ln = job.launcher
    for key, hint in (("gpus", "the GPUs on this node"), ("gpus_per_run", "GPUs per run"),
                      ("timeout_min", "minutes per SLURM allocation"), ("cpus_per_task", "CPUs per SLURM task"),
                      ("mem_gb", "memory per SLURM task"),
                      ("array_parallelism", "SLURM tasks running at once")):
        _at_least(f"launcher.{key}", getattr(ln, key), 1, f"give {hint}, e.g. launcher.{key}=1")
    _at_least("launcher.gpus_per_node", ln.gpus_per_node, 0, "GPUs per SLURM task, e.g. launcher.gpus_per_node=1 "
              "(0 on a CPU partition, with train.device=cpu)")
    _at_least("launcher.max_num_timeout", ln.max_num_timeout, 0, "requeues after a time limit, e.g. 3")
    if ln.mode.value == "node":
        _need(ln.gpus_per_run <= ln.gpus, f"launcher.gpus_per_run={ln.gpus_per_run} is more than launcher.gpus="
                                          f"{ln.gpus}: lower launcher.gpus_per_run or raise launcher.gpus")
    _positive("launcher.multi_gpu_min_params", ln.multi_gpu_min_params, "1e9")


def validate_budget(job: Study) -> None:
    b = job.budget
    _positive("budget.flops", b.flops, "1e22")
    _positive("budget.peak_flops", b.peak_flops, "989e12")
    if b.gpus is not None:
        _need(b.gpus >= 1, f"budget.gpus={b.gpus} must be a positive whole number of GPUs, e.g. budget.gpus=32")
    if b.days is not None:
        _need(math.isfinite(b.days) and 0 < b.days <= MAX_BUDGET_DAYS,
              f"budget.days={b.days:g} must be in (0, {MAX_BUDGET_DAYS}] (at most ten years of wall-clock time), "
              "e.g. budget.days=14")
    if b.mfu is not None:
        _need(0 < b.mfu <= 1, f"budget.mfu={b.mfu} must lie in (0, 1]: pass a fraction, e.g. budget.mfu=0.4")
    if b.price_per_gpu_hour is not None:
        _need(math.isfinite(b.price_per_gpu_hour) and b.price_per_gpu_hour >= 0,
              f"budget.price_per_gpu_hour={b.price_per_gpu_hour} must be >= 0 dollars, e.g. 2.5")


def validate_fit(job: Study) -> None:
    tokens = job.inference.tokens
    if tokens is not None:
        _need(math.isfinite(tokens) and tokens >= 0, f"inference.tokens={tokens:g} must be >= 0 (lifetime inference "
                                                     "tokens), e.g. inference.tokens=1e13, or null for none")
    _at_least("bootstrap", job.bootstrap, 0, "bootstrap=0 skips the intervals")
    _at_least("seed", job.seed, 0, "the fit's bootstrap seed, e.g. seed=0")
    _need(job.convention in ("total", "non_embedding"), f"convention={job.convention!r}: use total or non_embedding")
    presets = (*FULL_RUN_PRESETS, STUDY_PRESET)
    _need(job.full_run_preset in presets, f"full_run_preset={job.full_run_preset!r}: use one of {', '.join(presets)}")


# The fit's choices (pipeline/fit/checks.py OUTLIER_RULES + "auto", pipeline/fit/candidates.py CANDIDATE_NAMES);
# listed here because the config stage imports no later stage (tests/test_layout.py).
OUTLIER_SETTINGS = ("auto", "default", "none")
LAW_CANDIDATES = ("chinchilla", "overtrain", "fixed_E")


def validate_fit_keys(job: Study) -> None:
    if job.sweep.seeds < 1:
        raise UserError(f"sweep.seeds={job.sweep.seeds} must be >= 1 (seeds per planned run)")
    if job.sweep.centre_seeds < 1:
        raise UserError(f"sweep.centre_seeds={job.sweep.centre_seeds} must be >= 1 (seeds of each budget's centre size)")
    centre_repeats = job.sweep.centre_seeds > 1 and job.sweep.design.value in ("isoflop", "adaptive")  # else unused
    if job.sweep.seeds > 1 and centre_repeats:
        raise UserError(f"sweep.seeds={job.sweep.seeds} repeats every run and sweep.centre_seeds={job.sweep.centre_seeds} "
                        "the centre sizes: set only one of them")
    if centre_repeats and job.sweep.cooldown_reuse:
        raise UserError("sweep.centre_seeds > 1 with sweep.cooldown_reuse=true is not supported yet: use one of them")
    if job.sweep.seeds > 1 and job.sweep.cooldown_reuse:
        raise UserError("sweep.seeds > 1 with sweep.cooldown_reuse=true is not supported yet: use one of them")
    if job.outliers not in OUTLIER_SETTINGS:
        raise UserError(f"outliers={job.outliers!r}: use auto (the backtest decides), default (rule on) or none")
    lf = job.law_fit
    if lf.candidate is not None and lf.candidate not in LAW_CANDIDATES:
        raise UserError(f"law_fit.candidate={lf.candidate!r}: use one of {', '.join(LAW_CANDIDATES)} or leave it unset")
    if lf.fixed_E is not None and not lf.fixed_E > 0:
        raise UserError(f"law_fit.fixed_E={lf.fixed_E} must be a positive loss in nats")
    if lf.candidate == "fixed_E" and lf.fixed_E is None:
        raise UserError("law_fit.candidate=fixed_E needs law_fit.fixed_E=<irreducible loss in nats>")


def validate_eval(job: Study) -> None:
    e = job.eval
    if e.val_set_tokens < job.model.seq_len + 1:
        raise UserError(f"eval.val_set_tokens={e.val_set_tokens} must be at least model.seq_len + 1 = "
                        f"{job.model.seq_len + 1}")
    if e.max_questions < 1:
        raise UserError(f"eval.max_questions={e.max_questions} must be >= 1")
    names = []
    for spec in e.val_sets:
        name, sep, source = str(spec).partition("=")
        if not sep or not source.strip() or not re.match(r"^[a-z][a-z0-9_]*$", name.strip()) or name.strip() == "val":
            raise UserError(f"eval.val_sets entry {spec!r} must be name=source with a lower-case name other than "
                            "'val', e.g. eval.val_sets=['docs=stdlib:idlelib/*.txt']")
        names.append(name.strip())
    if len(set(names)) < len(names):
        raise UserError(f"eval.val_sets names repeat ({', '.join(names)}): give each set its own name")


def validate_target_keys(job: Study) -> None:
    if not str(job.target).strip():
        raise UserError("target is empty: use loss, a metric column, <task>:bpb or <task>:acc")
    p = job.predict
    if len(p.params) != len(p.tokens):
        raise UserError(f"predict.params has {len(p.params)} values and predict.tokens {len(p.tokens)}: "
                        "give them in pairs, e.g. predict.params=[7e9] predict.tokens=[4e12]")
    for key, values in (("predict.params", p.params), ("predict.tokens", p.tokens)):
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise UserError(f"{key} holds {bad[0]!r}: every value must be a positive number")
    cap = job.serving.max_params
    if cap is not None and not (math.isfinite(cap) and cap > 0):
        raise UserError(f"serving.max_params={cap!r} must be a positive parameter count, e.g. serving.max_params=7e9")
