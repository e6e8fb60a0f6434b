"""Benchmark of the whole fit stage (pipeline.fit.fit_all, no bootstrap) on Chinchilla's 240 points, old vs new.

    python scripts/bench_fit_stage.py [--baseline-rev REV] [--repeats 3] [--csv chinchilla_fig4_epoch.csv]

What is timed: `fit_all(table, 5.76e23, bootstrap=0)` -- the outlier rule, the law selection (every candidate
backtested on every fold with the rule on and off), the headline refits, Approaches 1 and 2 and the checks:
what `python -m pipeline.fit` computes before writing its report and plots. The table is Epoch's 245 points
less the 5 highest losses (Besiroglu et al. 2024; scripts/_bench_common.py writes it).
`--baseline-rev` (a git revision of this repository) is extracted to a temporary folder and timed the same
way in the same run, alternating with this checkout, so the ratio is measured under the same load. Both run
with one BLAS thread; each side reports its best wall time and its best CPU time (time.process_time, which
a busy machine inflates less than wall time). Prints a markdown table and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _bench_common as bench

ONE_RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.fit.fit_all import fit_all
from pipeline.fit.sources import load_table_file
table = load_table_file(sys.argv[2], columns={"Model Size": "params", "Training FLOP": "flops"})
wall, cpu = time.perf_counter(), time.process_time()
result = fit_all(table, float(sys.argv[3]), bootstrap=0)
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "n_opt": result["n_opt"],
                  "chosen": result["selection"]["chosen"], "n_runs": len(table), "n_kept": result["n_runs"]}))
"""


def time_once(src: Path, csv: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(src), str(csv), str(bench.BUDGET)], env=bench.ONE_THREAD_ENV,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", type=Path, default=bench.DEFAULT_CSV)
    p.add_argument("--baseline-rev", help="git revision to compare against (e.g. the commit before the speed-up)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if problem := bench.missing_csv(args.csv):
        print(problem)
        return 2
    sides = {"this checkout": bench.ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "chinchilla_240.csv"
        bench.write_240_points(args.csv, table)
        if args.baseline_rev:
            sides = {f"baseline {args.baseline_rev}": bench.extract_revision(args.baseline_rev, Path(tmp) / "baseline"), **sides}
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for _ in range(args.repeats):                 # alternate, so both sides see the same load
            for name, src in sides.items():
                runs[name].append(time_once(src, table))
    first = runs["this checkout"][0]
    print(f"# Fit stage on Chinchilla's {first['n_runs']} points ({first['n_kept']} kept by the outlier rule), no bootstrap "
          f"(best of {args.repeats}; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")
    print("| code | wall (s) | CPU (s) | N_opt(5.76e23) | chosen |")
    print("|---|---:|---:|---:|---|")
    best = {}
    for name, rows in runs.items():
        best[name] = (min(r["wall"] for r in rows), min(r["cpu"] for r in rows))
        print(f"| {name} | {best[name][0]:.2f} | {best[name][1]:.2f} | {rows[0]['n_opt']:.6e} | "
              f"{rows[0]['chosen']['candidate']}, rule {rows[0]['chosen']['outliers']} |")
    if args.baseline_rev:
        base, ours = best[f"baseline {args.baseline_rev}"], best["this checkout"]
        print(f"\nspeed-up (baseline / this checkout): wall {base[0] / ours[0]:.1f}x, CPU {base[1] / ours[1]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
