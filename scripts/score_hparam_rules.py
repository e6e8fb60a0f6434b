"""Score each selectable LR/batch rule on Step Law's released sweep: the loss it costs over each group's best.

    python scripts/score_hparam_rules.py /path/to/dense_lr_bs_loss.csv [--rule results/probe/fit/lr_law.json]

The CSV is Step Law's `data/dense_lr_bs_loss.csv` (Li et al. 2025, "Predictable Scale: Part I",
github.com/step-law/steplaw): one row per training run of a dense model, with `N` non-embedding
parameters, `D` tokens, `lr`, `bs` in sequences of 2,048 tokens, the shape (h, ffnh, numl) and
`smooth loss`, the final smoothed training loss. 17 (N, D) groups, each a grid of ~12 LRs x 10 batches.
It has no licence: read it from where you downloaded it; nothing of it is committed here.

Per (N, D) group: a quadratic surface in (ln LR, ln batch) fitted by least squares to the runs whose
loss lies within 2% of the group's best; each rule's (LR, batch) at the group's N, D (and C = M * D, M
the non-embedding training FLOPs per token incl. attention, DeepSeek's convention, written for SwiGLU as
Step Law's code does: 6 (4h + 3 ffnh + 2 T) numl h) is evaluated on it; the penalty is the surface's
loss there over the group's best observed loss, minus one. The median over groups is the rule's score.
A rule point outside the group's sampled grid is counted (the surface extrapolates there).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import UserError  # noqa: E402
from pipeline.plan.hparams import RULES, Scale, load_rule  # noqa: E402

SEQ_LEN = 2048
NEAR_BEST = 0.02
COLUMNS = ("N", "D", "lr", "bs", "smooth loss", "h", "ffnh", "numl")


def read_groups(path: Path) -> dict:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}; pass the path of Step Law's dense_lr_bs_loss.csv") from None
    missing = [c for c in COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise UserError(f"{path} lacks column(s) {missing}: pass Step Law's data/dense_lr_bs_loss.csv")
    groups: dict = defaultdict(list)
    for row in rows:
        n, d = float(row["N"]), float(row["D"])
        flops_per_token = 6 * (4 * float(row["h"]) + 3 * float(row["ffnh"]) + 2 * SEQ_LEN) * float(row["numl"]) * float(row["h"])
        groups[(n, d, flops_per_token)].append((float(row["lr"]), float(row["bs"]) * SEQ_LEN, float(row["smooth loss"])))
    return groups


def _features(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def fit_surface(runs: list) -> tuple[np.ndarray, float, int]:
    """Quadratic in (ln lr, ln batch tokens) over the runs within NEAR_BEST of the best: (coefs, best, n used)."""
    arr = np.array(runs)
    best = float(arr[:, 2].min())
    near = arr[arr[:, 2] <= best * (1 + NEAR_BEST)]
    coefs, *_ = np.linalg.lstsq(_features(np.log(near[:, 0]), np.log(near[:, 1])), near[:, 2], rcond=None)
    return coefs, best, len(near)


def penalty(coefs: np.ndarray, best: float, lr: float, batch_tokens: float) -> float:
    loss = float(_features(np.array([math.log(lr)]), np.array([math.log(batch_tokens)]))[0] @ coefs)
    return loss / best - 1


def score(groups: dict, rules: dict) -> dict:
    """rule name -> {median, per-group penalties, lr ratio to the surface optimum's grid best, outside count}."""
    out = {name: {"penalties": [], "lr_ratio": [], "batch_ratio": [], "outside": 0} for name in rules}
    for (n, d, fpt), runs in sorted(groups.items()):
        coefs, best, _ = fit_surface(runs)
        best_lr, best_bs, _ = min(runs, key=lambda r: r[2])
        lrs, bss = [r[0] for r in runs], [r[1] for r in runs]
        scale = Scale(flops=fpt * d, n_params=n, n_params_non_embedding=n, run_tokens=d)
        for name, rule in rules.items():
            lr, bs = rule.lr(scale), max(SEQ_LEN, round(rule.batch_tokens(scale) / SEQ_LEN) * SEQ_LEN)
            out[name]["penalties"].append(penalty(coefs, best, lr, bs))
            out[name]["lr_ratio"].append(lr / best_lr)
            out[name]["batch_ratio"].append(bs / best_bs)
            out[name]["outside"] += not (min(lrs) <= lr <= max(lrs) and min(bss) <= bs <= max(bss))
    for values in out.values():
        values["median"] = statistics.median(values["penalties"])
    return out


def leave_one_group_out(groups: dict) -> list[float]:
    """Step Law's form refitted without each group (on the other groups' best runs), scored on the held-out one:
    an out-of-sample check of steplaw2025, whose constants were fitted on these very groups."""
    keys = sorted(groups)
    best = {k: min(groups[k], key=lambda r: r[2]) for k in keys}
    out = []
    for held in keys:
        rest = [k for k in keys if k != held]
        x = np.array([[1.0, math.log(k[0]), math.log(k[1])] for k in rest])
        lr_coef, *_ = np.linalg.lstsq(x, np.log([best[k][0] for k in rest]), rcond=None)
        bs_coef, *_ = np.linalg.lstsq(x[:, [0, 2]], np.log([best[k][1] for k in rest]), rcond=None)
        lr = math.exp(lr_coef @ [1.0, math.log(held[0]), math.log(held[1])])
        bs = max(SEQ_LEN, round(math.exp(bs_coef @ [1.0, math.log(held[1])]) / SEQ_LEN) * SEQ_LEN)
        coefs, best_loss, _ = fit_surface(groups[held])
        out.append(penalty(coefs, best_loss, lr, bs))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="Step Law's data/dense_lr_bs_loss.csv")
    parser.add_argument("--rule", action="append", default=[], help="also score an lr_law.json (repeatable)")
    args = parser.parse_args(argv)
    try:
        rules = {**RULES, **{path: load_rule(path) for path in args.rule}}
        groups = read_groups(args.csv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = score(groups, rules)
    print(f"{len(groups)} (N, D) groups, {sum(map(len, groups.values()))} runs; quadratic surface in ln LR x ln batch "
          f"per group, fitted to the runs within {NEAR_BEST:.0%} of its best")
    print(f"{'rule':<16} {'median penalty':>14} {'max':>7} {'LR / best run LR':>20} {'batch / best run':>18} "
          f"{'outside grid':>12}  fitted range")
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["median"]):
        lr_lo, lr_hi = min(r["lr_ratio"]), max(r["lr_ratio"])
        bs_med = statistics.median(r["batch_ratio"])
        print(f"{name:<16} {r['median']:>13.2%} {max(r['penalties']):>7.2%} "
              f"{statistics.median(r['lr_ratio']):>8.2f} [{lr_lo:.2f}-{lr_hi:.2f}] {bs_med:>11.2f} (median) "
              f"{r['outside']:>6}/{len(groups)}  {rules[name].fitted_range}")
    logo = leave_one_group_out(groups)
    print(f"{'steplaw form, each group held out':<34} median {statistics.median(logo):.2%}, max {max(logo):.2%} "
          "(refitted on the other 16 groups' best runs: out of sample)")
    print("penalty = surface loss at the rule's (LR, batch) / the group's best observed loss - 1; "
          "steplaw2025 was fitted on these data (in-sample)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
