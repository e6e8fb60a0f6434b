"""Benchmark of the whole fit command on Chinchilla's 240 points, against a fixed reference workload.

    python scripts/bench_fit_cli.py [--repeats 5] [--baseline-rev REV] [--csv chinchilla_fig4_epoch.csv]

What is timed: `python -m pipeline.fit runs=<the 240 points> columns.params="Model Size"
columns.flops="Training FLOP" budget.flops=5.76e23 bootstrap=0 out_dir=<tmp>` as a subprocess, start to exit:
imports, the config, the law selection and backtests, the decision, report.md, recommendation.json, the
figures and the full-run config. The 240 points are Epoch's 245 less the 5 highest losses (Besiroglu et al.
2024; scripts/_bench_common.py, shared with scripts/bench_fit_stage.py). `--baseline-rev` (a git revision) is extracted to a
temporary folder and its command timed the same way, alternating with this checkout.

Why a reference: the machine is shared, so a wall time alone says little. Each repeat also times a fixed
single-process workload: a plain loop of scipy's L-BFGS-B (scripts/bench_fit.py's objective) from every
10th of Chinchilla's 4500 grid starts. The printed ratio (command wall / reference wall, median over
repeats) is what compares across loads and machines; `idle-equivalent` is that ratio times the reference's
CPU time (one process, so its CPU time is close to its wall time on an idle core). One BLAS thread everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_common import (
    BUDGET,
    DEFAULT_CSV,
    ONE_THREAD_ENV,
    ROOT,
    extract_revision,
    missing_csv,
    write_240_points,
)

REFERENCE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from scipy.optimize import minimize
from bench_fit import plain_objective
from pipeline.fit.parametric import chinchilla_grid
from pipeline.fit.sources import load_table_file
table = load_table_file(sys.argv[2], columns={"Model Size": "params", "Training FLOP": "flops"})
f = plain_objective(np.log(table.n), np.log(table.tokens), np.log(table.loss))
wall, cpu = time.perf_counter(), time.process_time()
best = min(minimize(f, x0, jac=True, method="L-BFGS-B").fun for x0 in chinchilla_grid()[::10])
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "best": best}))
"""


def time_command(src: Path, runs: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "pipeline.fit", f"runs={runs}", "columns.params=Model Size",
           "columns.flops=Training FLOP", f"budget.flops={BUDGET:g}", "bootstrap=0", f"out_dir={out}"]
    start = time.perf_counter()
    before = os.times()
    subprocess.run(cmd, cwd=src, env={**ONE_THREAD_ENV, "PYTHONPATH": str(src)}, check=True, capture_output=True)
    after = os.times()
    rec = json.loads((out / "recommendation.json").read_text())
    return {"wall": time.perf_counter() - start,
            "cpu": (after.children_user - before.children_user) + (after.children_system - before.children_system),
            "n_opt": rec["n_opt"], "chosen": (rec.get("selection") or {}).get("chosen"),
            "files": sorted(p.name for p in out.iterdir())}


def time_reference(runs: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", REFERENCE, str(ROOT / "scripts"), str(runs)], cwd=ROOT,
                         env={**ONE_THREAD_ENV, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--baseline-rev", help="git revision to time beside this checkout (e.g. the commit before)")
    args = p.parse_args()
    if problem := missing_csv(args.csv):
        print(problem)
        return 2
    if args.repeats < 1:
        print(f"--repeats {args.repeats}: give 1 or more")
        return 2
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = tmp / "chinchilla_240.csv"
        n_points = write_240_points(args.csv, runs)
        sides = {"this checkout": ROOT}
        if args.baseline_rev:
            sides = {f"baseline {args.baseline_rev}": extract_revision(args.baseline_rev, tmp / "baseline"), **sides}
        times: dict[str, list[dict]] = {name: [] for name in [*sides, "reference"]}
        for i in range(args.repeats):                  # alternate, so every side sees the same load
            for name, src in sides.items():
                times[name].append(time_command(src, runs, tmp / f"out-{len(times[name])}-{i}"))
            times["reference"].append(time_reference(runs))
    ref = times["reference"]
    ref_cpu = statistics.median(r["cpu"] for r in ref)
    print(f"# `python -m pipeline.fit` on Chinchilla's {n_points} points, bootstrap=0: median of {args.repeats}, "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores\n")
    print(f"reference (scipy L-BFGS-B loop, {len(range(0, 4500, 10))} starts): median wall "
          f"{statistics.median(r['wall'] for r in ref):.2f} s, CPU {ref_cpu:.2f} s\n")
    print("| code | median wall (s) | median CPU, all processes (s) | wall / reference | idle-equivalent (s) "
          "| N_opt(5.76e23) | chosen |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in sides:
        rows = times[name]
        ratio = statistics.median(r["wall"] / q["wall"] for r, q in zip(rows, ref, strict=True))
        chosen = rows[0]["chosen"] or {}
        print(f"| {name} | {statistics.median(r['wall'] for r in rows):.2f} | "
              f"{statistics.median(r['cpu'] for r in rows):.2f} | {ratio:.3f} | {ratio * ref_cpu:.2f} | "
              f"{rows[0]['n_opt']:.6e} | {chosen.get('candidate')}, rule {chosen.get('outliers')} |")
    if args.baseline_rev:
        base, ours = times[f"baseline {args.baseline_rev}"], times["this checkout"]
        print(f"\nsame files written: {base[0]['files'] == ours[0]['files']} ({', '.join(ours[0]['files'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
