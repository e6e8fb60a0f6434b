"""The pilot planner: a pure function from a Study config to the list of runs it implies.

Hydra's multirun is a Cartesian product, but an IsoFLOP design is not one (D depends on N and C),
so the design is computed here, tested, and printed as a dry-run table before compute is spent.

Designs
* isoflop -- Hoffmann et al. 2022 (Chinchilla) Approach 2: for each compute budget C, several model
  sizes N, each trained for D = C / F(N) tokens where F is the exact training FLOPs per token of that
  shape (models.accounting, Chinchilla App. F). Rounding to whole optimizer steps keeps each run's
  FLOPs within half a step of its budget. Sizes are either given, or placed geometrically
  (`size_ratio` apart) around the expected optimum N* = sqrt(C / (6 r)), r = tokens_per_param_guess,
  so that each budget's minimum is bracketed.
* grid -- sizes x token counts (absolute `tokens`, or `tokens_per_param` x N).
* adaptive -- the IsoFLOP plan of the first `seed_budgets` budgets only; later rounds are chosen from
  the fit (pipeline/decide/next_runs.py) and planned one run at a time (pipeline/plan/adaptive.py).
* lr_probe -- a few sizes spanning the isoflop design's range x several multiples of the rule's LR,
  at a cost bounded by a share of that design (pipeline/plan/lr_probe.py).
Budgets come from `budgets_flops`, or from `pilot_share` of the full budget: `n_budgets` budgets
`budget_ratio` apart whose runs together spend exactly that share.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from enum import Enum

from pipeline.config.schema import DataConfig, Schedule, Study
from pipeline.data.tokenizer import load_hub_tokenizer
from pipeline.errors import UserError
from pipeline.plan.lr_probe import plan_probe, probe_cost_line
from pipeline.plan.runspec import RunSpec, resolve_run

# Dry-run time estimates only (never used for a decision): effective training FLOP/s assumed on a
# laptop-class CPU core pair (1-1.5e11 measured for the larger tiny models; 5e10 is conservative) and on an H100
# at 40% MFU of its 989 TFLOP/s dense bf16 peak.
ASSUMED_FLOPS_PER_S = {"cpu": 5e10, "cuda": 0.4 * 989e12}


# Auto-placed sizes are targets, not promises: at CPU scale one width step is 30-60% of a model, so
# they snap to the nearest shape within this tolerance.
AUTO_SIZE_TOLERANCE = 0.35


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    job: Study            # the full config of this run (what `pipeline.train` will receive)
    overrides: tuple      # the same, as command-line overrides relative to the sweep's config
    model_over: dict      # what the planner set, as dicts (cooldown reuse re-plans from them)
    train_over: dict
    gpus: int = 1         # processes (GPUs) the run is planned for (gpus_for_run)
    probe: dict | None = None  # lr_probe runs: the LR factor and the probe's cost (pipeline/plan/lr_probe.py)

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def spent_flops(self) -> float:
        """Exact FLOPs this run itself trains: a cooldown branch only pays for its cooldown."""
        if self.job.train.branch_from:
            return self.spec.cooldown_steps * self.spec.batch_tokens * self.spec.flops_per_token["exact"]
        return self.spec.flops["exact"]


def pilot_budgets(sweep, full_budget_flops: float | None, runs_per_budget: int) -> list[float]:
    """IsoFLOP budgets: explicit, or n geometric budgets whose runs spend `pilot_share` of the full budget."""
    if sweep.budgets_flops:
        budgets = [float(b) for b in sweep.budgets_flops]
    else:
        if sweep.pilot_share is None:
            raise UserError("sweep.budgets_flops is empty: list budgets, or set sweep.pilot_share and budget.flops")
        if not 0 < sweep.pilot_share <= 1:
            raise UserError(f"sweep.pilot_share={sweep.pilot_share} must be in (0, 1]: it is a share of the full budget")
        if not full_budget_flops:
            raise UserError("sweep.pilot_share needs the full budget: set budget.flops (or budget.gpu/gpus/days)")
        r, n = sweep.budget_ratio, sweep.n_budgets
        # sum over budgets of runs_per_budget * b0 * r^i = share * full
        b0 = sweep.pilot_share * full_budget_flops / runs_per_budget * (r - 1) / (r**n - 1)
        budgets = [b0 * r**i for i in range(n)]
    for b in budgets:
        if not b > 0 or not math.isfinite(b):
            raise UserError(f"sweep.budgets_flops has {b}: every budget must be a positive number of FLOPs")
    if len(set(budgets)) != len(budgets):
        raise UserError("sweep.budgets_flops lists a budget twice: remove the duplicate")
    return sorted(budgets)


def sizes_for_budget(sweep, budget_flops: float) -> list[str]:
    if sweep.sizes:
        return [str(s) for s in sweep.sizes]
    if sweep.sizes_per_budget < 3:
        raise UserError(f"sweep.sizes_per_budget={sweep.sizes_per_budget}: a parabola needs at least 3 sizes per budget")
    centre = math.sqrt(budget_flops / (6.0 * sweep.tokens_per_param_guess))
    half = (sweep.sizes_per_budget - 1) / 2
    return [f"{centre * sweep.size_ratio ** (k - half):.4g}" for k in range(sweep.sizes_per_budget)]


def gpus_for_run(study: Study, n_params: int, world_size: int) -> int:
    """Processes (GPUs) one run uses: `world_size` (launcher.gpus_per_run on a node) for models of at
    least launcher.multi_gpu_min_params -- the large sizes that would otherwise set the sweep's
    makespan -- and one for the rest. Without a threshold every run uses `world_size`."""
    threshold = study.launcher.multi_gpu_min_params
    return world_size if threshold is None or n_params >= threshold else 1


def _run(base: Study, vocab_size: int, world_size: int, model_over: dict, train_over: dict,
         budget: float | None) -> PlannedRun:
    job = replace(base, model=replace(base.model, **model_over),
                  train=replace(base.train, **{"tokens": None, "tokens_per_param": None, "flops": None, **train_over}),
                  budget_flops=budget, run_dir=None)
    # The run's overrides on top of the sweep's: the horizon keys it does not set are cleared, so a
    # preset's default horizon (e.g. train.tokens) cannot collide with the run's own.
    cleared = {k: "null" for k in ("tokens", "tokens_per_param", "flops") if k not in train_over}
    overrides = tuple(f"model.{k}={_override_value(v)}" for k, v in model_over.items()) + tuple(
        f"train.{k}={_override_value(v)}" for k, v in {**cleared, **train_over}.items()) + (
        f"budget_flops={budget}" if budget else "budget_flops=null", "run_dir=null")
    spec = resolve_run(job, vocab_size, world_size)
    ranks = gpus_for_run(base, spec.n_params, world_size)
    if ranks != world_size:  # N does not depend on the world size; the batch split (and rounding) does
        spec = resolve_run(job, vocab_size, ranks)
    return PlannedRun(spec, job, overrides, dict(model_over), dict(train_over), ranks)


def _override_value(value) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def with_cooldown_reuse(study: Study, runs: list[PlannedRun], vocab_size: int, world_size: int) -> list[PlannedRun]:
    """Replace independent runs by one warmup-stable trunk per model shape plus cooldown branches.

    Hägele et al. 2024 (sec. 4): a constant-LR run with a short (1 - sqrt) cooldown matches a cosine
    run of the same length, so the runs of one size can share the stable phase: the trunk trains
    to the latest branch point and keeps a checkpoint at each; branch i resumes there and decays over
    its last `train.cooldown_fraction` of steps. All members of a group share the trunk's LR, batch,
    warmup and beta2 (the rule evaluated at the group's largest run), so the stable phases are
    bitwise the same computation.
    """
    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(run.spec.shape.describe(), []).append(run)
    planned: list[PlannedRun] = []
    for members in groups.values():
        top = max(members, key=lambda r: r.spec.tokens).spec.hparams
        common = {"lr": top.lr, "batch_tokens": top.batch_tokens, "warmup_tokens": top.warmup_tokens,
                  "beta2": top.beta2}
        branches = [_run(study, vocab_size, world_size, r.model_over, {**r.train_over, **common, "schedule": Schedule.wsd},
                         r.spec.budget_flops) for r in members]
        points = sorted({b.spec.steps - b.spec.cooldown_steps for b in branches})
        trunk = _run(study, vocab_size, world_size, members[0].model_over,
                     {**common, "schedule": Schedule.constant, "tokens": points[-1] * top.batch_tokens, "keep_steps": points},
                     None)
        planned.append(trunk)
        planned += [_run(study, vocab_size, world_size, b.model_over, {**b.train_over, "branch_from": trunk.run_id},
                         b.spec.budget_flops) for b in branches]
    return planned


def expected_vocab_size(data: DataConfig) -> int | None:
    """The vocabulary the prepared corpus will have, known before preparing it: the configured size for
    our byte-level BPE (pipeline/data/tokenizer.py trains exactly that many), the hub tokenizer's length
    otherwise, from the local cache only (the data stage loads the same tokenizer first). None when it is
    not there: the data stage then downloads it, or reports why it cannot."""
    if data.tokenizer == "bpe":
        return data.vocab_size
    try:
        return len(load_hub_tokenizer(data.tokenizer, local_only=True))
    except UserError:
        return None


def _check_static(study: Study) -> None:
    """The design checks that need no vocabulary (duplicates, shares, budgets)."""
    sweep = study.sweep
    if sweep.sizes and len(set(map(str, sweep.sizes))) != len(sweep.sizes):
        dup = next(s for s in sweep.sizes if list(map(str, sweep.sizes)).count(str(s)) > 1)
        raise UserError(f"sweep.sizes lists {dup} twice: remove the duplicate size")
    if sweep.design.value == "lr_probe" and sweep.cooldown_reuse:
        raise UserError("sweep.design=lr_probe with sweep.cooldown_reuse=true would give every LR of a size one shared "
                        "trunk (and so one LR): set sweep.cooldown_reuse=false for the probe")
    if sweep.design.value in ("isoflop", "adaptive", "lr_probe"):
        pilot_budgets(sweep, study.budget.flops, len(sweep.sizes) if sweep.sizes else sweep.sizes_per_budget)


def sweep_world_size(study: Study) -> int:
    """Processes per run the launcher will start (node mode: launcher.gpus_per_run), for the batch split."""
    return study.launcher.gpus_per_run if study.launcher.mode.value == "node" else 1


def check_design(study: Study) -> list[PlannedRun] | None:
    """Plan the whole sweep before the corpus is prepared, so that every impossible run (too few steps,
    a size no shape meets, micro-batches that do not divide, a run needing more GPUs than the node has)
    is a one-line error before any data preparation, attempt count or file write. Returns the plan
    (None when the vocabulary is only known after preparing the data)."""
    _check_static(study)
    vocab_size = expected_vocab_size(study.data)
    if vocab_size is None:
        return None
    runs = plan_sweep(study, vocab_size, sweep_world_size(study))
    if study.launcher.mode.value == "node":
        too_big = next((r for r in runs if r.gpus > study.launcher.gpus), None)
        if too_big:
            raise UserError(f"run {too_big.run_id} needs {too_big.gpus} GPUs but launcher.gpus={study.launcher.gpus}: "
                            "lower launcher.gpus_per_run or raise launcher.gpus")
    return runs


def check_run(job: Study) -> RunSpec | None:
    """Resolve one training run before its corpus is prepared (`python -m pipeline.train`): the same
    resolution the run makes afterwards, with the vocabulary known in advance. Under `accelerate launch`
    the batch splits over WORLD_SIZE processes."""
    vocab_size = expected_vocab_size(job.data)
    if vocab_size is None:
        return None
    return resolve_run(job, vocab_size, world_size=int(os.environ.get("WORLD_SIZE", "1")))


def plan_sweep(study: Study, vocab_size: int, world_size: int = 1) -> list[PlannedRun]:
    """Every run of the study, resolved. Raises a one-line UserError for an impossible design."""
    sweep = study.sweep
    _check_static(study)
    runs: list[PlannedRun] = []
    if sweep.design.value == "lr_probe":
        main = plan_sweep(replace(study, sweep=replace(sweep, design=type(sweep.design)("isoflop"), lr_probe_sizes=[],
                                                       cooldown_reuse=False, seeds=1)), vocab_size, world_size)
        probe_over = {"size_tolerance": AUTO_SIZE_TOLERANCE} if not sweep.lr_probe_sizes else {}
        planned = plan_probe(sweep, sum(r.spec.flops["exact"] for r in main), [r.spec.n_params for r in main],
                             lambda size, train_over: _run(study, vocab_size, world_size,
                                                           {"size": size, **probe_over}, train_over, None))
        runs = [replace(run, probe=info) for run, info in planned]
    elif sweep.design.value in ("isoflop", "adaptive"):
        per_budget = len(sweep.sizes) if sweep.sizes else sweep.sizes_per_budget
        budgets = pilot_budgets(sweep, study.budget.flops, per_budget)
        for budget in budgets[: sweep.seed_budgets] if sweep.design.value == "adaptive" else budgets:
            seen: dict[int, str] = {}
            sizes = sizes_for_budget(sweep, budget)
            for size in sizes:
                try:
                    # auto-placed sizes snap to the nearest shape of the grid (the record has its exact N)
                    model_over = {"size": size} if sweep.sizes else {"size": size, "size_tolerance": AUTO_SIZE_TOLERANCE}
                    run = _run(study, vocab_size, world_size, model_over, {"flops": budget}, budget)
                except UserError as err:
                    raise UserError(f"sweep.budgets_flops: IsoFLOP budget {budget:.3g} with size {size}: {err}") from err
                n = run.spec.n_params
                if n in seen:
                    raise UserError(f"sizes {seen[n]} and {size} give the same model ({n} params) at budget "
                                    f"{budget:.3g}: space sizes further apart (sweep.size_ratio) or drop one")
                seen[n] = size
                runs.append(run)
                if size == sizes[len(sizes) // 2]:   # the centre size: its other seeds (sweep.centre_seeds)
                    runs += [_run(study, vocab_size, world_size, run.model_over,
                                  {**run.train_over, "seed": study.train.seed + k}, budget)
                             for k in range(1, sweep.centre_seeds)]
    else:
        if not sweep.sizes:
            raise UserError("sweep.design=grid needs sweep.sizes (names or parameter counts)")
        if bool(sweep.tokens) == bool(sweep.tokens_per_param):
            raise UserError("sweep.design=grid needs exactly one of sweep.tokens or sweep.tokens_per_param")
        for size in sweep.sizes:
            for tokens in sweep.tokens:
                runs.append(_run(study, vocab_size, world_size, {"size": str(size)}, {"tokens": int(tokens)}, None))
            for ratio in sweep.tokens_per_param:
                runs.append(_run(study, vocab_size, world_size, {"size": str(size)}, {"tokens_per_param": float(ratio)}, None))
    if sweep.seeds > 1:   # repeats with train.seed + k: the fit's measured noise (pipeline/fit/noise.py)
        runs = [run if k == 0 else _run(study, vocab_size, world_size, run.model_over,
                                        {**run.train_over, "seed": study.train.seed + k}, run.spec.budget_flops)
                for run in runs for k in range(sweep.seeds)]
    if sweep.cooldown_reuse:
        runs = with_cooldown_reuse(study, runs, vocab_size, world_size)
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise UserError("the design contains the same run twice: check sweep.sizes / tokens for duplicates")
    return runs


def estimated_seconds(run: PlannedRun, device_type: str) -> float:
    """Wall time of the run on its `run.gpus` GPUs (device time is this times run.gpus)."""
    return run.spec.flops["exact"] / ASSUMED_FLOPS_PER_S["cuda" if device_type == "cuda" else "cpu"] / run.gpus


def plan_table(runs: list[PlannedRun], device_type: str = "cpu", states: dict | None = None) -> str:
    """The dry-run table: one line per run (with its state on disk when known), then totals."""
    states = states or {}
    head = (f"{'run_id':<28} {'N':>9} {'shape (LxDxH)':>14} {'D tokens':>10} {'C exact':>9} {'C budget':>9} "
            f"{'steps':>6} {'batch':>6} {'lr':>8} {'est. time':>9}  state")
    lines = [head, "-" * len(head)]
    total_flops = total_s = 0.0
    for r in runs:
        s = r.spec
        shape = f"{s.shape.n_layer}x{s.shape.d_model}x{s.shape.n_heads}"
        est = estimated_seconds(r, device_type)
        total_flops += s.flops["exact"]
        total_s += est * r.gpus  # device time
        budget = f"{s.budget_flops:.2e}" if s.budget_flops else "-"
        lines.append(f"{s.run_id:<28} {s.n_params:>9.3g} {shape:>14} {s.tokens:>10.3g} {s.flops['exact']:>9.2e} "
                     f"{budget:>9} {s.steps:>6} {s.batch_tokens:>6} {s.hparams.lr:>8.2e} {est / 60:>7.1f}m  "
                     f"{states.get(s.run_id, '')}")
    lines.append("-" * len(head))
    spent = sum(r.spent_flops for r in runs)
    if spent < total_flops:
        pilots = sum(r.spec.flops["exact"] for r in runs if not r.job.train.keep_steps)
        total_s *= spent / total_flops
        total_flops = spent
        lines.append(f"cooldown reuse: {spent:.3g} FLOPs spent for {pilots:.3g} FLOPs of independent runs "
                     f"({spent / pilots:.0%}, trunks included)")
    if runs and runs[0].probe:
        lines.append(probe_cost_line(runs[0].probe))
    multi = [r for r in runs if r.gpus > 1]
    if multi:
        lines.append(f"{len(multi)} runs (N >= {min(r.spec.n_params for r in multi):.3g}) train across "
                     f"{multi[0].gpus} GPUs each with accelerate launch (est. time: wall time on those GPUs; total: GPU time)")
    lines.append(f"{len(runs)} runs, {total_flops:.3g} FLOPs (exact count), est. {total_s / 60:.1f} min "
                 f"on {device_type} at an assumed {ASSUMED_FLOPS_PER_S['cuda' if device_type == 'cuda' else 'cpu']:.2g} FLOP/s")
    return "\n".join(lines)
