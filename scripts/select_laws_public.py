"""Which law form predicts public runs best, and what the outlier rule does there (docs/calibration.md, sec. 2).

For each table given: every law candidate backtested with the outlier rule on and off
(pipeline.fit.selection.select_law: rolling folds of held-out largest-compute runs), the row the
tool chooses, the runs the rule drops and the runs it lists far below the law, and each candidate's
N_opt at `--budget` refitted on the kept runs. Tables:

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

from pipeline.fit.candidates import candidate_forms, fit_candidate  # noqa: E402
from pipeline.fit.checks import apply_outlier_rule  # noqa: E402
from pipeline.fit.selection import select_law  # noqa: E402
from pipeline.fit.sources import load_table_file  # noqa: E402
from pipeline.fit.table import RunsTable  # noqa: E402


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def report(name: str, table: RunsTable, budget: float) -> None:
    start = time.time()
    sel = select_law(table, budget)
    print(f"\n### {name}: {len(table)} runs, budget {budget:.3g} FLOPs ({time.time() - start:.0f} s)\n")
    print("| candidate | rule on: mean (top fold) | rule off: mean (top fold) | N_opt, rule on |")
    print("|---|---:|---:|---:|")
    clean, rule_report = apply_outlier_rule(table, "default")
    for form in candidate_forms():
        rows = {r["outliers"]: r for r in sel["rows"] if r["candidate"] == form.name}
        n_opt = fit_candidate(form, clean.n, clean.tokens, clean.loss, clean.convention).law().optimal_allocation(budget)[0]
        print(f"| {form.name} | " + " | ".join(f"{pct(rows[rule]['score'])} ({pct(rows[rule]['top_budget_error'])})"
                                               for rule in ("default", "none")) + f" | {n_opt:.3g} |")
    print(f"\nchosen: {sel['chosen']}; rule: {sel['rule']}")
    for key in ("dropped", "below_fit"):
        print(f"{key}: " + (", ".join(f"loss {d['loss']:.3f} ({d['z']:+.1f} robust sd)" for d in rule_report[key])
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
