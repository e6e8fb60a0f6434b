"""Cooldown reuse vs independent runs: the same (N, D) grid trained three ways, over several seeds.

Hägele et al. 2024 report that a constant-LR run with a short (1 - sqrt) cooldown matches a cosine
run of the same length, so one stable trunk per size can serve every token count. This script
measures it on our CPU setting. Each (N, D) of a sizes x tokens grid is trained
  (a) with cooldown reuse: one constant-LR trunk per size, a 20% (1 - sqrt) cooldown branched from
      it at each token count (what `sweep.cooldown_reuse=true` plans);
  (b) as an independent WSD run with the same schedule (what the branch replaces);
  (c) as an independent cosine run to 10% (Chinchilla; the pilots' default schedule).
All three use the same LR, batch, warmup and beta2 per size (the rule at the size's largest run), so
(a) vs (b) isolates reuse and (b) vs (c) the schedule. Repeating over `--seeds` (weights and data
order) gives the noise the differences are judged against: the seed-to-seed sd of one run's final
loss, and the 95% band for the difference of two runs that differ only in seed, 1.96 * sqrt(2) * sd.

    .venv/bin/python scripts/compare_cooldown_reuse.py [--sizes 46k 105k 188k] [--tokens 5e5 1e6 2e6] [--seeds 0 1 2]

Use a fresh --results-dir for each measurement: the wall times are of the runs trained in this call.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

WAYS = ("reuse", "wsd", "cosine")


def plan(name: str, sizes: list[str], tokens: list[str], reuse: bool, results_dir: str, extra=()):
    from pipeline.config.load import load_config
    from pipeline.config.schema import Study
    from pipeline.data.corpus import prepare_corpus
    from pipeline.plan.design import plan_sweep

    overrides = ["experiment=cpu_tiny", "sweep.design=grid", f"sweep.sizes=[{','.join(sizes)}]",
                 f"sweep.tokens=[{','.join(tokens)}]", "sweep.tokens_per_param=[]",
                 f"sweep.cooldown_reuse={str(reuse).lower()}", f"sweep_name={name}", f"results_dir={results_dir}",
                 "train.progress=false", *extra]
    study = load_config("study", Study, overrides)
    return study, plan_sweep(study, prepare_corpus(study.data).vocab_size)


def run_grid(study, runs) -> tuple[dict, float, float]:
    """Train the runs; per (N, planned D): final loss, and the exact FLOPs and wall time spent."""
    from pipeline.records import load_record
    from pipeline.sweep.launchers import launch_local

    start = time.perf_counter()
    launch_local(study, runs)
    wall = time.perf_counter() - start
    losses = {}
    for run in runs:
        if not run.job.train.keep_steps:  # trunks have no loss of their own
            record = load_record(f"{study.results_dir}/{study.sweep_name}/runs/{run.run_id}")
            losses[(run.spec.n_params, run.train_over.get("tokens"))] = record["final_val_loss"]
    return losses, sum(r.spent_flops for r in runs), wall


def train_three_ways(sizes, tokens, seed: int, results_dir: str, extra: list[str]) -> dict:
    """{way: (losses, flops, wall)} for one seed."""
    extra = [*extra, f"train.seed={seed}"]
    study, reuse_runs = plan(f"reuse_s{seed}", sizes, tokens, True, results_dir, extra)
    out = {"reuse": run_grid(study, reuse_runs)}
    for way in ("wsd", "cosine"):
        losses, flops, wall = {}, 0.0, 0.0
        for trunk in (r for r in reuse_runs if r.job.train.keep_steps):
            hp = trunk.spec.hparams
            same = [f"train.lr={hp.lr}", f"train.batch_tokens={hp.batch_tokens}",
                    f"train.warmup_tokens={hp.warmup_tokens}", f"train.beta2={hp.beta2}", f"train.schedule={way}"]
            s, runs = plan(f"{way}_s{seed}", [trunk.job.model.size], tokens, False, results_dir, [*extra, *same])
            part = run_grid(s, runs)
            losses.update(part[0])
            flops += part[1]
            wall += part[2]
        out[way] = (losses, flops, wall)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["46k", "105k", "188k"])
    parser.add_argument("--tokens", nargs="+", default=["5e5", "1e6", "2e6"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results-dir", default="results/compare_cooldown")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every way, e.g. train.min_lr_ratio=0")
    args = parser.parse_args()
    tokens = [str(int(float(t))) for t in args.tokens]
    per_seed = [train_three_ways(args.sizes, tokens, s, args.results_dir, args.override) for s in args.seeds]

    points = sorted(per_seed[0]["cosine"][0])
    loss = {w: {p: [r[w][0][p] for r in per_seed] for p in points} for w in WAYS}
    mean = {w: {p: statistics.fmean(v) for p, v in loss[w].items()} for w in WAYS}
    print(f"\n{'N (total)':>10} {'D tokens':>10} " + " ".join(f"{w:>8}" for w in WAYS)
          + f" {'reuse-wsd':>10} {'reuse-cos':>10} {'seed sd':>8}")
    sds, reuse_wsd, reuse_cos = [], [], []
    for p in points:
        # seed-to-seed sd of one run's loss, pooled over the three ways at this point
        sd = statistics.fmean(statistics.stdev(loss[w][p]) for w in WAYS) if len(args.seeds) > 1 else float("nan")
        sds.append(sd)
        reuse_wsd += [a - b for a, b in zip(loss["reuse"][p], loss["wsd"][p], strict=True)]
        reuse_cos += [a - b for a, b in zip(loss["reuse"][p], loss["cosine"][p], strict=True)]
        print(f"{p[0]:>10,} {p[1]:>10,} " + " ".join(f"{mean[w][p]:>8.4f}" for w in WAYS)
              + f" {mean['reuse'][p] - mean['wsd'][p]:>+10.4f} {mean['reuse'][p] - mean['cosine'][p]:>+10.4f} {sd:>8.4f}")
    noise = statistics.fmean(sds) if len(args.seeds) > 1 else float("nan")
    band = 1.96 * math.sqrt(2) * noise
    print(f"\nseed-to-seed sd of a run's final loss (mean over points): {noise:.4f} nats ({len(args.seeds)} seeds); "
          f"two runs differing only in seed differ by less than {band:.4f} nats 95% of the time")
    for name, diffs in (("reuse - independent wsd", reuse_wsd), ("reuse - independent cosine", reuse_cos)):
        spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        inside = sum(abs(d) <= band for d in diffs)
        print(f"{name:>27}: mean {statistics.fmean(diffs):+.4f}, max |diff| {max(map(abs, diffs)):.4f}, "
              f"sd {spread:.4f} over {len(diffs)} (point, seed) pairs; {inside} within the seed band")
    flops = {w: sum(r[w][1] for r in per_seed) for w in WAYS}
    wall = {w: sum(r[w][2] for r in per_seed) for w in WAYS}
    print(f"compute: reuse {flops['reuse']:.3g} FLOPs ({wall['reuse']:.0f} s), independent {flops['wsd']:.3g} (wsd, "
          f"{wall['wsd']:.0f} s) / {flops['cosine']:.3g} (cosine, {wall['cosine']:.0f} s): ratio "
          f"{flops['reuse'] / flops['cosine']:.2f} of the FLOPs, {wall['reuse'] / wall['cosine']:.2f} of the wall time")


if __name__ == "__main__":
    main()
