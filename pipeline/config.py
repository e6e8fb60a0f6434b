"""Typed configuration: dataclass schemas, composed from conf/ by Hydra and validated once.

Every entry point calls `load_config(<primary>, overrides)`, which
  1. composes `conf/<primary>.yaml` with the command-line overrides (Hydra's Compose API),
  2. merges the result into a fresh structured copy of the schema, so misspelled keys -- even ones
     added with `+` -- wrong types and bad enum values fail here, before any compute is spent
     (RELIABILITY.md: `OmegaConf.to_object` alone drops `+model.dropuot` silently),
  3. converts it to dataclasses once (`OmegaConf.to_object`) and runs the cross-field checks.
All failures become a one-line `UserError` that names the dotted key and what to change.
Schemas use str Enums because omegaconf 2.3 rejects `Literal`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.data import DataConfig
from pipeline.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class Schedule(str, Enum):
    cosine = "cosine"      # Chinchilla: one cosine cycle over exactly the run's tokens, to 10% of peak
    wsd = "wsd"            # warmup-stable-decay with a (1 - sqrt) cooldown (Hägele et al. 2024)
    constant = "constant"  # warmup then constant (for debugging only)


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast on GPU, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"


class WandbMode(str, Enum):
    auto = "auto"          # online when an API key is configured, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class ModelConfig:
    size: str = "tiny"               # a name from models.sizing.NAMED_SIZES or a parameter count ("2e5")
    convention: str = "total"        # which parameter count `size` means (total | non_embedding)
    size_tolerance: float = 0.10     # the shape's count must lie this close to `size` (models/sizing.py)
    n_layer: int | None = None    # an explicit shape (all four set) overrides `size`
    d_model: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None
    seq_len: int = 128
    tie_embeddings: bool = False
    init_std: float = 0.02


@dataclass
class TrainConfig:
    # Horizon: exactly one of tokens, tokens_per_param, flops (resolved in pipeline.horizon).
    tokens: int | None = None
    tokens_per_param: float | None = None
    flops: float | None = None
    # Left unset, these follow the cited rules in pipeline.hparams.
    lr: float | None = None
    batch_tokens: int | None = None
    warmup_tokens: int | None = None
    beta2: float | None = None
    micro_batch_size: int | None = None  # sequences per forward pass; unset: the whole batch
    min_lr_ratio: float = 0.1               # cosine decays to 10% of peak (Chinchilla sec. 4 / App. B)
    schedule: Schedule = Schedule.cosine
    cooldown_fraction: float = 0.2          # wsd only: share of the run spent cooling down
    beta1: float = 0.9
    weight_decay: float = 0.1
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    evals_per_run: int = 12                 # evaluation points along the run (Approach 1 uses the curve)
    log_interval_steps: int = 10
    checkpoint_interval_s: float = 300.0
    keep_checkpoints: int = 2
    precision: Precision = Precision.auto
    compile: bool | None = None          # unset: on for CUDA, off on CPU (9-22 s compile per shape)
    device: str = "auto"                    # auto | cpu | cuda
    threads: int | None = None           # CPU threads for torch; unset: torch's default
    seed: int = 0
    diverge_ratio: float = 2.0              # loss above ratio x best-so-far (after warmup) = diverged
    # Cooldown reuse (Hägele et al. 2024; planned by pipeline.plan when sweep.cooldown_reuse=true):
    branch_from: str | None = None       # run id of the stable-phase trunk this wsd run branches from
    keep_steps: list[int] = field(default_factory=list)  # trunk: checkpoints kept for branches to start from
    progress: bool = True


@dataclass
class TrackingConfig:
    mode: WandbMode = WandbMode.auto
    project: str = "scaling-pilot"
    entity: str | None = None
    group: str | None = None             # unset: the sweep name (one W&B group per sweep)
    tags: list[str] = field(default_factory=list)
    dir: str | None = None               # unset: <results_dir>/wandb
    finish_timeout_s: float = 30.0


class Design(str, Enum):
    isoflop = "isoflop"  # compute budgets x model sizes; D = C / exact FLOPs per token (Chinchilla Approach 2)
    grid = "grid"        # model sizes x token counts (absolute or tokens per parameter)


class LaunchMode(str, Enum):
    local = "local"      # one run after another in this process (CPU, one GPU)
    node = "node"        # one run per GPU on this node, several at once
    slurm = "slurm"      # an array job through hydra-submitit-launcher


@dataclass
class SweepConfig:
    design: Design = Design.isoflop
    # isoflop: explicit budgets, or `pilot_share` of `full_budget_flops` spread over `n_budgets`.
    budgets_flops: list[float] = field(default_factory=list)
    pilot_share: float | None = None     # e.g. 0.1 = the pilots may spend 10% of the full budget
    n_budgets: int = 3
    budget_ratio: float = 3.0               # neighbouring budgets differ by this factor
    # sizes: explicit (names or counts, same for every budget), or placed around the expected optimum
    sizes: list[str] = field(default_factory=list)
    sizes_per_budget: int = 5
    size_ratio: float = 1.6                 # neighbouring sizes ~1.5x apart near the optimum (DESIGN.md)
    tokens_per_param_guess: float = 20.0    # centre of each budget's sizes: N* = sqrt(C / (6 r))
    # grid: sizes x tokens, absolute or per parameter
    tokens: list[float] = field(default_factory=list)
    tokens_per_param: list[float] = field(default_factory=list)
    # One warmup-stable trunk per model size, with (1 - sqrt) cooldowns branched from its stable phase at
    # each requested token count (Hägele et al. 2024, sec. 4): each branch is its own run and record.
    cooldown_reuse: bool = False
    max_retries: int = 1                    # failed runs are retried this many times, diverged never
    dry_run: bool = False


@dataclass
class LauncherConfig:
    mode: LaunchMode = LaunchMode.local
    gpus: int = 8                            # node: GPUs on this node
    gpus_per_run: int = 1                    # node: >1 runs a pilot across that many GPUs with `accelerate launch`
    multi_gpu_min_params: float | None = None  # node: only models this large take gpus_per_run GPUs, smaller ones one
    # slurm (hydra-submitit-launcher's submitit_slurm); see slurm/README.md
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 64
    array_parallelism: int = 32
    max_num_timeout: int = 3                 # requeues after preemption/timeout; 0 would lose the run
    submitit_folder: str | None = None    # unset: <results_dir>/<sweep_name>/submitit


@dataclass
class BudgetConfig:
    """The full run's budget: FLOPs, or hardware x time x MFU (converted in pipeline.hardware)."""

    flops: float | None = None
    gpu: str | None = None               # h100_sxm, h100_pcie, h200, a100_80gb, b200, ... (pipeline/hardware.py)
    gpus: int | None = None
    days: float | None = None
    mfu: float | None = None             # unset: measured in the pilots on that GPU, else 0.40 (stated)
    peak_flops: float | None = None      # dense bf16 FLOP/s, for a GPU not in the table
    price_per_gpu_hour: float | None = None


@dataclass
class InferenceConfig:
    tokens: float | None = None          # expected lifetime inference tokens (Sardana & Frankle 2023)


@dataclass
class Study:
    """One schema for every entry point (train, sweep, fit), so one preset drives all three."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    experiment: str | None = None        # name of the preset that composed this config
    results_dir: str = "results"
    sweep_name: str = "adhoc"               # runs live in <results_dir>/<sweep_name>/runs/<run_id>
    run_dir: str | None = None           # train only; unset: derived from the run id
    budget_flops: float | None = None    # train only: the IsoFLOP budget this run belongs to
    # fit only (python -m pipeline.fit)
    runs: str | None = None              # a CSV/JSONL of runs or wandb:<entity>/<project>; unset: the sweep's results
    law: str | None = None               # a published law instead of a fit: chinchilla, chinchilla_unrounded, epoch, kaplan
    bootstrap: int = 1000                   # bootstrap resamples over runs; 0 skips the intervals
    outliers: str = "default"               # the outlier rule (pipeline/runs_table.py); none turns it off
    convention: str = "total"               # which parameter count the law is fitted in
    out_dir: str | None = None           # unset: <results_dir>/<sweep_name>/fit
    seed: int = 0




# Fields that change what a run computes; everything else (logging, tracking, paths) may differ
# between a run and its resumption without changing its identity (RELIABILITY.md, "run identity").
SEMANTIC_SECTIONS = ("model", "data", "train")
NON_SEMANTIC_TRAIN_KEYS = ("log_interval_steps", "checkpoint_interval_s", "keep_checkpoints", "progress",
                           "threads", "device", "compile")
NON_SEMANTIC_DATA_KEYS = ("cache_dir", "num_proc", "unique_tokens")


# --- composition ---------------------------------------------------------------------------------
_OMEGACONF_KEY = re.compile(r"full_key: (\S+)")


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    key = _OMEGACONF_KEY.search(text)
    return f"{key.group(1)}: {first}" if key and key.group(1) not in first else first


def compose(primary: str, overrides: list[str]):
    """Compose conf/<primary>.yaml with overrides; Hydra's errors become one-line UserErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=primary, overrides=list(overrides))
    except HydraException as err:
        message = _one_line(err)
        unknown = re.match(r"Could not override '([\w.]+)'", message)
        if unknown:
            message = (f"unknown key {unknown.group(1)}: check the spelling "
                       "(`python -m pipeline.train --cfg` prints every key)")
        elif err.__cause__ is not None:
            message = f"{message}: {_one_line(err.__cause__)}"
        if "Could not find" in message or "could not find" in message.lower():
            group = re.search(r"'([\w/]+)/([\w.-]+)'", message)
            if group:
                options = sorted(p.stem for p in (CONF_DIR / group.group(1)).glob("*.yaml"))
                message = (f"unknown preset {group.group(1)}={group.group(2)}: "
                           f"choose one of {', '.join(options)}")
        raise UserError(f"bad override: {message}") from err
    except OmegaConfBaseException as err:
        raise UserError(f"bad override: {_one_line(err)}") from err
    finally:
        GlobalHydra.instance().clear()


def to_schema(cfg: Any, schema: type):
    """Merge a composed config into `schema` strictly and return the dataclass instance."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
        container = {k: v for k, v in container.items() if k != "hydra"}
        merged = OmegaConf.merge(OmegaConf.structured(schema), container)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise UserError(f"{missing[0]} has no value: set it on the command line, e.g. {missing[0]}=...")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        message = _one_line(err)
        if "not in" in message or "Key '" in message:
            message += " (check the spelling; `python -m pipeline.<entry> --cfg` prints every key)"
        raise UserError(f"invalid config: {message}") from err


def load_config(primary: str, schema: type, overrides: list[str]):
    obj = to_schema(compose(primary, overrides), schema)
    validate = getattr(obj, "validate", None) or globals().get(f"validate_{schema.__name__}")
    if validate:
        validate(obj)
    return obj


def as_dict(obj) -> dict:
    """A plain, JSON-able dict of a config dataclass (enums as their values)."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True, enum_to_str=True)


# --- cross-field checks (run before any compute) ------------------------------------------------
def validate_Study(job: Study) -> None:  # noqa: N802 - named after the schema it checks
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
        from models.sizing import SizingError, parse_size

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


def wandb_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def register_schemas() -> None:
    """Register the schemas in Hydra's ConfigStore (for `--cfg` help and IDEs that read it)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="study_schema", node=Study)
    store.store(group="model", name="schema", node=ModelConfig)
    store.store(group="train", name="schema", node=TrainConfig)
    store.store(group="tracking", name="schema", node=TrackingConfig)
    store.store(group="data", name="schema", node=DataConfig)
