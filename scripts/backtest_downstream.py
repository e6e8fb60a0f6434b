"""Backtest of the two-step task prediction on the OLMo model ladder (Bhagia et al. 2024).

Fit on the 190M-1B runs the paper fits on (`in_paper_fit`: 190M, 370M, 760M, 1B at 1, 2, 5, 10 x
Chinchilla tokens), predict the 3B runs' final task bits per byte and accuracy, and print a Markdown
table per task: relative error of bpb, absolute error of accuracy in points, and whether the truth lies
inside the 5-95% interval. Step 2 is fitted twice: on the 16 runs' final points only, and on every
evaluated checkpoint after the first 10% of each run (the paper's choice, from the per-step CSVs;
without its 5-point moving average). Step 1 uses each run's last checkpoint (the paper averages the
last 5).

    python scripts/backtest_downstream.py --ladder <dir with ladder_final.csv and the per-step CSVs>
        [--bootstrap 200] [--out docs/downstream_backtest.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import UserError  # noqa: E402
from pipeline.fit.intervals import percentile_band  # noqa: E402
from pipeline.fit.sources import load_runs  # noqa: E402
from pipeline.fit.targets import Target, fit_metric  # noqa: E402

TASKS = ("mmlu", "hellaswag", "arc_challenge", "arc_easy", "piqa", "csqa", "socialiqa", "openbookqa",
         "winogrande", "boolq")
# The authors' MMLU weights over the 4 test subsets (the data folder's README; OLMo scripts/scaling).
MMLU_WEIGHTS = {"stem": 0.215, "humanities": 0.335, "social_sciences": 0.219, "other": 0.231}


def with_mmlu_points(points: dict | None) -> dict | None:
    """Add mmlu_bpb / mmlu_acc per checkpoint: the weighted mean of the 4 subsets (as ladder_final.csv)."""
    if not points:
        return points
    out = dict(points)
    for suffix in ("bpb", "acc"):
        parts = [points.get(f"mmlu_{s}_{suffix}") for s in MMLU_WEIGHTS]
        if all(p is not None for p in parts) and all(np.array_equal(parts[0][0], p[0]) for p in parts):
            out[f"mmlu_{suffix}"] = (parts[0][0], sum(w * p[1] for w, p in zip(MMLU_WEIGHTS.values(), parts, strict=True)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ladder", required=True, help="folder with ladder_final.csv and the per-step CSVs")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args()
    folder = Path(args.ladder)
    t0 = time.perf_counter()
    table = load_runs(folder / "ladder_final.csv", columns={"N": "params", "c4_loss": "loss", "run": "run_id"},
                      steps=str(folder))
    table = replace(table, metric_points=tuple(with_mmlu_points(p) for p in table.metric_points))
    train_mask = table.metrics["in_paper_fit"] == 1
    test_mask = np.array([rid.startswith("3B-") and not rid.endswith(("-rerun", "0.5xC")) for rid in table.run_id])
    train = table.subset(train_mask)
    test = table.subset(test_mask)
    rows = []
    for task in TASKS:
        target = Target(f"{task}:acc", "accuracy", f"{task}_bpb", accuracy=f"{task}_acc", task=task)
        row = {"task": task}
        for label, fit_table in (("final", replace(train, metric_points=())), ("steps", train)):
            try:
                model = fit_metric(fit_table, target, bootstrap=args.bootstrap, seed=0)
            except UserError as err:          # reported in the table, as the fit command reports it
                row["error"] = str(err)
                break
            bpb_pred = model.law.loss(test.n, test.tokens)
            acc_pred = model.value(test.n, test.tokens)
            acc_true, bpb_true = test.metrics[f"{task}_acc"], test.metrics[f"{task}_bpb"]
            samples = model.samples(test.n, test.tokens)
            lo, hi = percentile_band(samples, axis=0)  # the tool's one interval definition
            row[label] = {"acc_err": 100 * np.abs(acc_pred - acc_true), "bpb_rel": np.abs(bpb_pred / bpb_true - 1),
                          "covered": int(np.sum((acc_true >= lo) & (acc_true <= hi))), "n_points": len(model.points["bpb"]),
                          "acc_pred": acc_pred, "acc_true": acc_true}
        rows.append(row)
    runs = ", ".join(test.run_id)
    last = test.run_id.index("3B-10xC")
    lines = [f"Fitted on {int(train_mask.sum())} runs ({', '.join(train.run_id)}); predicted: {runs} "
             f"(N = {test.n[0]:.4g}, the authors' count). Bootstrap {args.bootstrap} pairs; "
             f"{time.perf_counter() - t0:.0f} s.", "",
             "| task | bpb rel. error, mean (max) | acc error, points, mean (max): step 2 on final points | "
             "in 90% interval | acc error, points, mean (max): step 2 on checkpoints | in 90% interval | "
             "3B-10xC acc: true / predicted (checkpoints) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | not fitted: {r['error']} | | | | | |")
            continue
        f, s = r["final"], r["steps"]
        lines.append(f"| {r['task']} | {100 * f['bpb_rel'].mean():.1f}% ({100 * f['bpb_rel'].max():.1f}%) | "
                     f"{f['acc_err'].mean():.1f} ({f['acc_err'].max():.1f}) | {f['covered']}/{len(test)} | "
                     f"{s['acc_err'].mean():.1f} ({s['acc_err'].max():.1f}) | {s['covered']}/{len(test)} | "
                     f"{s['acc_true'][last]:.3f} / {s['acc_pred'][last]:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
