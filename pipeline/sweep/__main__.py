"""`python -m pipeline.sweep`: plan the pilot study, skip what is done, launch the rest.

    python -m pipeline.sweep experiment=cpu_tiny                       # CPU demo, runs one after another
    python -m pipeline.sweep experiment=cpu_tiny sweep.dry_run=true    # the plan and each run's state
    python -m pipeline.sweep experiment=h100_pilot launcher.mode=node  # one run per GPU on this node
    python -m pipeline.sweep experiment=h100_pilot launcher=slurm launcher.partition=gpu
    python -m pipeline.sweep experiment=cpu_tiny_adaptive              # seed budgets, then rounds chosen by the fit

Files are the source of truth: a run is done when its `run.json` says ok or diverged; failed runs
are retried up to `sweep.max_retries` times; preempted or interrupted runs resume from their
checkpoints. Relaunching the same command is always safe (idempotent).
"""

from __future__ import annotations

import shlex
import sys

import torch

from pipeline.cli import load_study, run_main
from pipeline.config.presets import KNOWN_VOCAB_SIZES
from pipeline.config.schema import DataConfig
from pipeline.data.corpus import corpus_fingerprint, prepare_corpus, resolve_source
from pipeline.data.manifest import load_manifest
from pipeline.decide.budget import resolve_budget
from pipeline.decide.rounds import adaptive_round
from pipeline.errors import UserError
from pipeline.fit.table import load_results_dir
from pipeline.plan.adaptive import check_design_target, static_pilot_flops
from pipeline.plan.design import check_design, plan_sweep, plan_table
from pipeline.sweep.adaptive import run_adaptive
from pipeline.sweep.dispatch import TERMINAL, launch, pending_runs, status_counts, sweep_dir, write_plan
from pipeline.sweep.scheduler_state import with_scheduler_states
from pipeline.sweep.slurm_array import check_launcher
from pipeline.train.engine import REQUEUE_EXIT_CODE

USAGE = __doc__


def planned_vocab_size(cfg: DataConfig) -> tuple[int, str]:
    """The vocabulary a dry run plans with, from the config alone: no data preparation, no tokenizer, no network.

    A trained-on-the-spot BPE has data.vocab_size; a corpus already prepared in the cache says its own; a
    well-known hub tokenizer is tabled (pipeline/config/presets.py: gpt2 = 50,257).
    """
    if cfg.tokenizer == "bpe":
        return cfg.vocab_size, f"bpe, data.vocab_size={cfg.vocab_size}"
    if cfg.tokenizer in KNOWN_VOCAB_SIZES:
        return KNOWN_VOCAB_SIZES[cfg.tokenizer], f"{cfg.tokenizer} (tabled)"
    try:  # stat-only: a hub source's identity is its name, a local one's its files' sizes and times
        corpus_dir = f"{cfg.cache_dir}/{corpus_fingerprint(cfg, resolve_source(cfg))}"
        return load_manifest(corpus_dir).vocab_size, f"{cfg.tokenizer} (prepared corpus {corpus_dir})"
    except UserError:
        pass
    raise UserError(f"data.tokenizer={cfg.tokenizer}: its vocabulary size is not tabled and no prepared corpus is "
                    "cached: run the sweep once without sweep.dry_run (it prepares the data), or use a tabled "
                    f"tokenizer ({', '.join(KNOWN_VOCAB_SIZES)})")


def main(overrides: list[str], flags: dict) -> int:
    study = load_study(overrides, flags)
    if study is None:  # --cfg printed it
        return 0
    if study.launcher.mode.value == "slurm" and not study.sweep.dry_run:
        check_launcher(study)  # before any data preparation or attempt is counted
    check_design(study)  # before the corpus is prepared: a typo must not cost a data preparation
    if study.sweep.design.value == "adaptive":
        check_design_target(study)  # the rounds choose by target=: the pilots must record it
    if study.sweep.dry_run:  # the plan from the config alone: never prepare data nor load a tokenizer
        vocab_size, vocab_source = planned_vocab_size(study.data)
        print(f"dry run: vocabulary {vocab_size:,} ({vocab_source}); no data prepared")
    else:
        vocab_size = prepare_corpus(study.data).vocab_size
    device_type = "cuda" if study.train.device == "cuda" or (study.train.device == "auto" and torch.cuda.is_available()) else "cpu"
    world_size = study.launcher.gpus_per_run if study.launcher.mode.value == "node" else 1
    runs = plan_sweep(study, vocab_size, world_size)
    if not runs:
        raise UserError("the sweep has no runs: give sweep.sizes and budgets (or tokens)")
    if study.sweep.design.value == "adaptive":
        return run_adaptive(study, runs, vocab_size, world_size, overrides, device_type, round_chooser(study, runs))
    plan_path = write_plan(study, runs, overrides)
    todo, states = pending_runs(study, runs)
    print(plan_table(runs, device_type, with_scheduler_states(sweep_dir(study), states)))
    print(f"plan: {plan_path}\nstate: {status_counts(states)}")
    if study.sweep.dry_run:
        return 0
    if todo:
        print(f"launching {len(todo)} of {len(runs)} runs ({study.launcher.mode.value})", flush=True)
        if launch(study, todo, overrides) == "stopped":  # a stop signal: checkpoints saved, relaunch to resume
            return REQUEUE_EXIT_CODE
    if not plan_path.is_file():  # deleted while the runs trained: the fit reads the plan to know its runs
        write_plan(study, runs, overrides)
        print(f"{plan_path} was removed during the sweep: rewritten", file=sys.stderr)
    _, states = pending_runs(study, runs)
    print(f"sweep {study.sweep_name}: {status_counts(states)} -> {sweep_dir(study)}")
    unfinished = [k for k, v in states.items() if v not in TERMINAL and v != "done"]
    if unfinished:
        print(f"{len(unfinished)} runs not finished; relaunch the same command to resume or retry them")
        return 1
    print(f"next: python -m pipeline.fit {shlex.join(overrides)}")  # quoted: a results_dir may hold spaces
    return 0


def round_chooser(study, seed_runs):
    """The adaptive design's next round from the records so far (pipeline/decide/next_runs.py), for the full
    budget; the pilot compute is sweep.pilot_flops, else sweep.pilot_share of the full budget, else what the
    static IsoFLOP plan of every budget would spend."""
    target = resolve_budget(study.budget)["flops"]
    sweep = study.sweep
    pilot = sweep.pilot_flops or (sweep.pilot_share * target if sweep.pilot_share else static_pilot_flops(study))
    # one budget step below the seed design at most: the design must not walk down to budgets too small to follow a law
    min_budget = sweep.min_budget_flops or min(r.spec.budget_flops for r in seed_runs) / sweep.budget_ratio

    def next_round(state: dict, realize) -> dict:
        table = load_results_dir(sweep_dir(study), convention=study.convention)
        return adaptive_round(table, target, pilot_flops=pilot, stop_width=sweep.stop_width,
                              rounds_done=len(state["rounds"]), max_rounds=sweep.max_rounds,
                              round_runs=sweep.round_runs, bootstrap=sweep.round_bootstrap,
                              seed=study.seed + len(state["rounds"]), size_ratio=sweep.size_ratio,
                              budget_ratio=sweep.budget_ratio,
                              min_budget=min_budget, realize=realize, target=study.target, outliers=study.outliers,
                              min_profiles=sweep.min_profiles)
    return next_round


if __name__ == "__main__":
    run_main(main, USAGE)
