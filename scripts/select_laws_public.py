"""Which law form predicts public runs best, and what the outlier rule does there (docs/calibration.md, sec. 2).

For each table given, the fit stage as the tool runs it (pipeline.fit.fit_all, no bootstrap): every
law candidate backtested with the outlier rule on and off (rolling folds of held-out
largest-compute runs), the row it chooses, the runs the rule drops (or would drop) and the runs it
lists far below the law, and each candidate's N_opt at `--budget` refitted under the chosen rule.
Tables:

* `--chinchilla CSV` -- Epoch's extraction of Chinchilla's Figure 4 (Besiroglu et al. 2024; columns
  "Model Size" and "Training FLOP"), fitted twice: all 245 points, and without the 5 highest losses
  (the 240 points of Epoch's refit);
* `--olmo CSV` -- the OLMo model ladder's final runs (Bhagia et al. 2024; columns N and c4_loss).

    python scripts/select_laws_public.py --chinchilla chinchilla_fig4_epoch.csv --olmo ladder_final.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.fit.fit_all import fit_all  # noqa: E402
from pipeline.fit.sources import load_table_file  # noqa: E402
from pipeline.fit.table import RunsTable  # noqa: E402


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def report(name: str, table: RunsTable, budget: float) -> None:
    start = time.time()
    result = fit_all(table, budget, bootstrap=0)           # selection, outlier rule, every candidate refitted
    sel = result["selection"]
    chosen_rule = sel["chosen"]["outliers"]
    print(f"\n### {name}: {len(table)} runs, budget {budget:.3g} FLOPs ({time.time() - start:.0f} s)\n")
    print(f"| candidate | rule on: mean (top fold) | rule off: mean (top fold) | N_opt, rule {chosen_rule} |")
    print("|---|---:|---:|---:|")
    for cand in sel["candidates"]:
        rows = {r["outliers"]: r for r in sel["rows"] if r["candidate"] == cand["candidate"]}
        print(f"| {cand['candidate']} | " + " | ".join(f"{pct(rows[rule]['score'])} ({pct(rows[rule]['top_budget_error'])})"
                                                    for rule in ("default", "none"))
              + f" | {cand.get('n_opt', float('nan')):.3g} |")
    print(f"\nchosen: {sel['chosen']}; rule: {sel['rule']}")
    outliers = result["outliers"]
    for key in ("dropped", "would_drop", "below_fit"):
        if key in outliers:
            print(f"{key}: " + (", ".join(f"loss {d['loss']:.3f} ({d['z']:+.1f} robust sd)" for d in outliers[key])
                                or "none"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chinchilla", type=Path, help="Epoch's chinchilla_fig4_epoch.csv")
    p.add_argument("--olmo", type=Path, help="the OLMo ladder's ladder_final.csv")
    p.add_argument("--budget", type=float, default=5.76e23, help="FLOPs for N_opt (Gopher's and Chinchilla's)")
    args = p.parse_args()
    if args.chinchilla:
        table = load_table_file(args.chinchilla, columns={"Model Size": "params", "Training FLOP": "flops"})
        report("Chinchilla, all points", table, args.budget)
        highest = np.argsort(np.argsort(-table.loss)) < 5
        report("Chinchilla without the 5 highest losses", table.subset(~highest, reason="5 highest losses"), args.budget)
    if args.olmo:
        report("OLMo ladder", load_table_file(args.olmo, columns={"N": "params", "c4_loss": "loss"}), args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
