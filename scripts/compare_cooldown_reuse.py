"""Cooldown reuse vs independent cosine runs: same (N, D) grid, both ways, losses and compute compared.

Hägele et al. 2024 report that a constant-LR run with a short (1 - sqrt) cooldown matches a cosine
run of the same length. This script checks it on our CPU setting: a grid of sizes x token counts is
trained (a) as independent runs, each with its own cosine schedule (Chinchilla), and (b) with
cooldown reuse (one constant-LR trunk per size, a 20% cooldown branched at each token count). Both
ways use the same LR, batch, warmup and beta2 per size (those reuse shares: the rule at the size's
largest run), so only the schedule differs. It prints the loss of every (N, D) both ways, their
difference, and the compute each way.

    .venv/bin/python scripts/compare_cooldown_reuse.py [--sizes 46k 105k] [--tokens 1e6 2e6 4e6]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def plan(name: str, sizes: list[str], tokens: list[str], reuse: bool, results_dir: str, extra=()):
    from pipeline.config import Study, load_config
    from pipeline.data import prepare_corpus
    from pipeline.plan import plan_sweep

    overrides = ["experiment=cpu_tiny", "sweep.design=grid", f"sweep.sizes=[{','.join(sizes)}]",
                 f"sweep.tokens=[{','.join(tokens)}]", "sweep.tokens_per_param=[]",
                 f"sweep.cooldown_reuse={str(reuse).lower()}", f"sweep_name={name}", f"results_dir={results_dir}",
                 "train.progress=false", *extra]
    study = load_config("study", Study, overrides)
    return study, plan_sweep(study, prepare_corpus(study.data).vocab_size)


def run_grid(study, runs, results_dir: str) -> tuple[dict, float, float]:
    from pipeline.launchers import launch_local
    from pipeline.results import load_record

    name = study.sweep_name
    start = time.perf_counter()
    launch_local(study, runs)
    wall = time.perf_counter() - start
    losses, spent = {}, 0.0
    for run in runs:
        record = load_record(f"{results_dir}/{name}/runs/{run.run_id}")
        spent += run.spent_flops
        if record.get("role") != "trunk":
            losses[(record["params"]["total"], record["tokens"])] = record["final_val_loss"]
    return losses, spent, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["46k", "105k"])
    parser.add_argument("--tokens", nargs="+", default=["1e6", "2e6", "4e6"])
    parser.add_argument("--results-dir", default="results/compare_cooldown")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for both ways, e.g. train.min_lr_ratio=0")
    args = parser.parse_args()
    tokens = [str(int(float(t))) for t in args.tokens]
    study, reuse_runs = plan("cooldown_reuse", args.sizes, tokens, True, args.results_dir, args.override)
    # The independent cosine runs of each size use the hyperparameters its reuse group shares (the
    # rule at the group's largest run), so the comparison isolates the schedule.
    cosine_plans = []
    for trunk in (r for r in reuse_runs if r.job.train.keep_steps):
        hp = trunk.spec.hparams
        same = [f"train.lr={hp.lr}", f"train.batch_tokens={hp.batch_tokens}", f"train.warmup_tokens={hp.warmup_tokens}",
                f"train.beta2={hp.beta2}"]
        size = trunk.job.model.size
        cosine_plans.append(plan("independent_cosine", [size], tokens, False, args.results_dir, [*args.override, *same]))
    cosine, cosine_flops, cosine_s = {}, 0.0, 0.0
    for cstudy, cruns in cosine_plans:
        losses, flops, wall = run_grid(cstudy, cruns, args.results_dir)
        cosine.update(losses)
        cosine_flops += flops
        cosine_s += wall
    reuse, reuse_flops, reuse_s = run_grid(study, reuse_runs, args.results_dir)
    print(f"{'N (total)':>10} {'D tokens':>10} {'cosine':>8} {'wsd branch':>10} {'diff':>8}")
    diffs = []
    for (n, d), loss in sorted(cosine.items()):
        # batch rounding can differ by one batch between the two plans: match on N and nearest D
        match = min((k for k in reuse if k[0] == n), key=lambda k: abs(k[1] - d))
        diffs.append(reuse[match] - loss)
        print(f"{n:>10,} {d:>10,} {loss:>8.4f} {reuse[match]:>10.4f} {diffs[-1]:>+8.4f}")
    print(f"mean |diff| = {sum(abs(x) for x in diffs) / len(diffs):.4f} nats, max |diff| = {max(map(abs, diffs)):.4f}")
    print(f"compute: independent {cosine_flops:.3g} FLOPs ({cosine_s:.0f} s), reuse {reuse_flops:.3g} FLOPs "
          f"({reuse_s:.0f} s): ratio {reuse_flops / cosine_flops:.2f} (wall {reuse_s / cosine_s:.2f})")


if __name__ == "__main__":
    main()
