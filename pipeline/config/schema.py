"""The configuration schema: one dataclass per section of conf/, and `Study`, which holds them all.

One schema serves `python -m pipeline.train`, `pipeline.sweep` and `pipeline.fit`, so one preset drives
the sweep, every run and the fit. Composition and loading: pipeline/config/load.py; every check of a
value, run once after loading and before any compute: pipeline/config/validate.py.
Schemas use str Enums because omegaconf 2.3 rejects `Literal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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
class DataConfig:
    source: str = "stdlib"              # "stdlib" | "hf:<dataset name>" | a local path, directory or glob (txt/jsonl/parquet)
    hf_config: str | None = None        # hub dataset config, e.g. "sample-10BT" for FineWeb-Edu
    hf_split: str = "train"
    text_field: str = "text"            # column holding the documents (jsonl, parquet, hub)
    tokenizer: str = "bpe"              # "bpe": byte-level BPE trained on the train split; else a hub tokenizer name or dir
    vocab_size: int = 512               # "bpe" only (pipeline/data/tokenizer.py: why 512)
    val_tokens: int = 262_144           # fixed validation size in tokens, identical for every run
    max_train_tokens: int | None = None # cap on training tokens (required for "hf:" sources)
    allow_repeat: bool = True           # False: a run needing more tokens than the corpus holds is refused
    cache_dir: str = ".cache/data"      # prepared corpora live under cache_dir/<fingerprint>/
    num_proc: int = 2                   # processes for reading many local files
    seed: int = 0                       # seeds the document-level train/validation split
    max_documents: int | None = None    # use only the first N documents of the source (tests, quick looks)
    txt_sample_by: str = "document"     # .txt/.py files: one document per "document" (file), "paragraph" or "line"
    unique_tokens: float | None = None  # fit only: unique tokens available for the FULL run (Muennighoff et al. 2023)


@dataclass
class ModelConfig:
    size: str = "tiny"               # a name from models.sizing.NAMED_SIZES or a parameter count ("2e5")
    convention: str = "total"        # which parameter count `size` means (total | non_embedding)
    # the shape's count must lie this close to `size` (models/sizing.py): the family chain's steps at CPU scale
    # are up to 1.7x apart (2 x 16 -> 2 x 24 wide at vocabulary 512), so a request snaps within 25%
    size_tolerance: float = 0.25
    n_layer: int | None = None    # an explicit shape (all four set) overrides `size`
    d_model: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None
    seq_len: int = 128
    tie_embeddings: bool = False
    init_std: float = 0.02


@dataclass
class TrainConfig:
    # Horizon: exactly one of tokens, tokens_per_param, flops (resolved in pipeline.plan.runspec).
    tokens: int | None = None
    tokens_per_param: float | None = None
    flops: float | None = None
    # Left unset, these follow the cited rules in pipeline.plan.hparams; hparam_rule picks the LR/batch rule:
    # steplaw2025 | deepseek2024 | the path of an lr_law.json written by the LR probe's fit (docs/hparams.md).
    hparam_rule: str = "steplaw2025"
    lr: float | None = None
    batch_tokens: int | None = None
    warmup_tokens: int | None = None
    beta2: float | None = None
    micro_batch_size: int | None = None  # sequences per forward pass; unset: the whole batch
    eval_batch_size: int | None = None   # sequences per evaluation forward pass; unset: 32
    world_size: int | None = None        # the processes this run is for (full_run.yaml records it); unset: as launched
    dry_run: bool = False                # resolve at world_size and print the launch, no process group, no data
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
    keep_checkpoints: int = 2               # newest readable ones kept (>= 1), plus keep_steps
    parallelism: str = "ddp"                # several processes: ddp (replicated) | fsdp (FSDP2, sharded)
    precision: Precision = Precision.auto
    compile: bool | None = None          # unset: on for CUDA, off on CPU (9-22 s compile per shape)
    device: str = "auto"                    # auto | cpu | cuda
    threads: int | None = None           # CPU threads for torch; unset: torch's default
    seed: int = 0
    diverge_ratio: float = 2.0              # loss above ratio x best-so-far (after warmup) = diverged
    # Cooldown reuse (Hägele et al. 2024; planned by pipeline.plan.design when sweep.cooldown_reuse=true):
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
    init_timeout_s: float = 15.0         # an unreachable server: offline after this, for the rest of the sweep
    finish_timeout_s: float = 30.0       # wandb.finish (uploading) is abandoned after this; the files stay local


class Design(str, Enum):
    isoflop = "isoflop"  # compute budgets x model sizes; D = C / exact FLOPs per token (Chinchilla Approach 2)
    grid = "grid"        # model sizes x token counts (absolute or tokens per parameter)
    adaptive = "adaptive"  # IsoFLOP seed budgets, then rounds chosen from the fit (pipeline/decide/next_runs.py)
    lr_probe = "lr_probe"  # a few sizes x learning rates around the rule's: calibrates the LR rule (docs/hparams.md)


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
    size_ratio: float = 1.6                 # neighbouring sizes ~1.5x apart near the optimum: the U is flat there
    tokens_per_param_guess: float = 20.0    # centre of each budget's sizes: N* = sqrt(C / (6 r))
    # grid: sizes x tokens, absolute or per parameter
    tokens: list[float] = field(default_factory=list)
    tokens_per_param: list[float] = field(default_factory=list)
    # One warmup-stable trunk per model size, with (1 - sqrt) cooldowns branched from its stable phase at
    # each requested token count (Hägele et al. 2024, sec. 4): each branch is its own run and record.
    cooldown_reuse: bool = False
    # Every planned run trained with this many seeds (train.seed, +1, ...): the fit measures the
    # seed-to-seed noise from them and says when a budget's minimum is not resolved beyond it.
    seeds: int = 1
    # isoflop/adaptive: only the centre size of each budget (where its minimum is expected) trained with this many
    # seeds: measured seed noise (one degree of freedom per budget) at a fraction of sweep.seeds' cost.
    centre_seeds: int = 1
    # adaptive: the first `seed_budgets` IsoFLOP budgets, then rounds of up to `round_runs` runs chosen by the
    # expected shrinkage of log N_opt's 90% interval at the full budget per FLOP, until the interval is at most
    # `stop_width` x (high/low) or the pilot compute is spent: `pilot_flops`, else `pilot_share` x the full
    # budget, else what the static IsoFLOP plan of all `budgets_flops` would spend (docs/adaptive_design.md).
    seed_budgets: int = 2
    round_runs: int = 4
    # > 0: a new budget enters as a whole 3-size profile, and while fewer budgets than this have one a round
    # starts with it, so that Approach 2 can check Approach 3; it costs Approach 3 precision
    # (docs/adaptive_design.md). 0: every run by the per-FLOP rule alone
    min_profiles: int = 0
    max_rounds: int = 6
    stop_width: float | None = 3.0
    pilot_flops: float | None = None
    min_budget_flops: float | None = None    # no new budget below this (unset: the smallest seed budget / budget_ratio)
    # the ensemble between rounds (the final fit uses fit.bootstrap): its 5-95% interval decides the stop, and 40
    # draws put the 5th percentile at the 2nd-lowest draw (the demo read 8.8x where 200 and 300 draws read 13x)
    round_bootstrap: int = 200
    max_retries: int = 1                    # failed runs are retried this many times, diverged never
    # lr_probe (pipeline/plan/lr_probe.py): sizes spanning the isoflop design's range, each at these multiples
    # of the LR rule's value, for a token count that keeps the probe within lr_probe_max_share of that design.
    lr_probe_sizes: list[str] = field(default_factory=list)   # unset: lr_probe_n_sizes spanning the design
    lr_probe_n_sizes: int = 3
    lr_probe_factors: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    lr_probe_tokens: int | None = None       # unset: the most tokens the share allows (same for every size)
    lr_probe_max_share: float = 0.25         # of the isoflop design's exact FLOPs
    # A second horizon: the smallest probed size also trains lr_probe_long_factor x the probe's tokens at every
    # factor, so the fit measures the LR's D exponent instead of borrowing the base rule's (null: one horizon).
    lr_probe_long_factor: float | None = None
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
    """The full run's budget: FLOPs, or hardware x time x MFU (converted in pipeline.decide.budget)."""

    flops: float | None = None
    gpu: str | None = None               # h100_sxm, h100_pcie, h200, a100_80gb, b200, ... (pipeline/plan/hardware.py)
    gpus: int | None = None
    days: float | None = None
    mfu: float | None = None             # unset: measured in the pilots on that GPU, else 0.40 (stated)
    peak_flops: float | None = None      # dense bf16 FLOP/s, for a GPU not in the table
    price_per_gpu_hour: float | None = None


@dataclass
class InferenceConfig:
    tokens: float | None = None          # expected lifetime inference tokens (Sardana & Frankle 2023)


@dataclass
class LawFitConfig:
    """The law candidates of the fit (pipeline/fit/candidates.py, chosen by backtest in selection.py)."""

    candidate: str | None = None         # pin a form: chinchilla, overtrain, fixed_E; unset: the backtest chooses
    fixed_E: float | None = None         # adds the candidate with this irreducible loss E (nats) fixed


@dataclass
class EvalConfig:
    """Metrics recorded beside the validation loss at every evaluation point (pipeline/train/evaluate.py).

    Not part of a run's identity: they measure the run, they do not change what it trains.
    """

    val_sets: list[str] = field(default_factory=list)  # "name=source": more validation domains -> <name>_loss
    val_set_tokens: int = 16_384         # tokens kept of each named validation set
    tasks: list[str] = field(default_factory=list)     # JSONL files {question, choices, answer} or corpus_next_line
    max_questions: int = 256             # questions kept per task (the first ones of a file)
    seed: int = 0                        # corpus_next_line: which held-out lines are asked


@dataclass
class ColumnsConfig:
    """fit only: which column of a runs file holds each quantity (`columns.params=N`); unset: its own name."""

    run_id: str | None = None
    params: str | None = None
    tokens: str | None = None
    loss: str | None = None
    flops: str | None = None
    status: str | None = None
    step: str | None = None


@dataclass
class PredictConfig:
    """fit only: predict the target at these (N, D) pairs (`predict.params=[7e9] predict.tokens=[4e12]`)."""

    params: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)


@dataclass
class ServingConfig:
    max_params: float | None = None      # fit only: the largest model the product can serve (same convention as N)


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
    eval: EvalConfig = field(default_factory=EvalConfig)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    experiment: str | None = None        # name of the preset that composed this config
    results_dir: str = "results"
    sweep_name: str = "adhoc"               # runs live in <results_dir>/<sweep_name>/runs/<run_id>
    run_dir: str | None = None           # train only; unset: derived from the run id
    budget_flops: float | None = None    # train only: the IsoFLOP budget this run belongs to
    # fit only (python -m pipeline.fit)
    runs: str | None = None              # a CSV/JSONL of runs or wandb:<entity>/<project>; unset: the sweep's results
    law: str | None = None               # a published law instead of a fit: chinchilla, chinchilla_unrounded, epoch, kaplan
    bootstrap: int = 1000                   # bootstrap resamples over runs; 0 skips the intervals
    outliers: str = "auto"                  # auto: the backtest turns the rule (pipeline/fit/checks.py) on or off; default: on; none: off
    law_fit: LawFitConfig = field(default_factory=LawFitConfig)
    convention: str = "total"               # which parameter count the law is fitted in
    out_dir: str | None = None           # unset: <results_dir>/<sweep_name>/fit
    steps: str | None = None             # per-step CSVs (a directory or glob), one per run named <run_id>.csv
    target: str = "loss"                    # the metric to fit and optimise: loss, <column>, <task>:bpb, <task>:acc
    seed: int = 0
    next: int = 0                        # fit only: propose this many runs to train next (pipeline/decide/next_runs.py)
    all_runs: bool = False               # fit every record under the sweep, not only the current plan.json's runs
    keep_duplicates: bool = False        # fit exact duplicate rows (same N, D, loss) each time, not once
    full_run_preset: str = "gpt2-2048"   # without pilots (law=..., runs=file): the full run's tokenizer/vocab/seq_len
                                         # (pipeline/config/presets.py), or "study" for this config's own data/model




# Fields that change what a run computes; everything else (logging, tracking, paths) may differ
# between a run and its resumption without changing its identity (docs/reliability.md).
SEMANTIC_SECTIONS = ("model", "data", "train")
NON_SEMANTIC_TRAIN_KEYS = ("log_interval_steps", "checkpoint_interval_s", "keep_checkpoints", "progress", "dry_run",
                           "threads", "device", "compile")
NON_SEMANTIC_DATA_KEYS = ("cache_dir", "num_proc", "unique_tokens")


















