"""Static IsoFLOP grid vs the adaptive design, at equal pilot FLOPs, on simulated studies with known laws.

Each study draws a true law as scripts/calibrate_intervals.py does (around Besiroglu et al. 2024's
refit of Chinchilla; every other study of the alpha = beta form, Gadre et al. 2024) and draws each
run's final loss with log-normal noise of the CPU pilots' measured seed-to-seed sd (0.013 in log
loss, docs/cooldown_reuse.md).

* static   -- the tool's IsoFLOP grid: `--budgets` budgets 3x apart from 1e17 FLOPs x `--sizes` sizes
  1.6x apart around the 20-tokens-per-parameter guess, D = C / 6N.
* adaptive -- the first `--seed-budgets` budgets of that grid, then rounds: fit (Chinchilla form,
  noise model, a `--round-bootstrap`-resample parametric bootstrap; the alpha = beta form's draws join the
  ensemble when it disagrees, as in the sweep's rounds, unless `--one-form`), choose up to `--round-runs` runs
  by expected shrinkage of log N_opt's interval per FLOP (pipeline/decide/next_runs.py; with
  `--min-profiles` > 0 new budgets as whole profiles, as sweep.min_profiles), train them (simulate), until the static grid's FLOPs are spent (no width stop: equal pilot FLOPs). While no law
  can be fitted, a round adds the grid's next budget instead, as the sweep does.

Both designs are scored by the same fit (pipeline.decide.next_runs.fit_ensemble, `--bootstrap`
resamples) at the target `--factor` x the static grid's largest budget: |log N_opt error| of the point,
log width of the 90% interval, coverage. The last line: error_ratio and width_ratio (medians, adaptive /
static) and coverage (adaptive's 90% interval, %).

    python scripts/compare_designs.py --studies 100 --seed 0            # --jobs 2 on an idle 2-core machine

Study i draws from its own generator (seed, i), so --jobs does not change the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibrate_intervals import SEED_SD_LOG, design, true_law  # noqa: E402

from pipeline.decide.next_runs import choose_next, isoflop_candidates, profile_rule  # noqa: E402
from pipeline.decide.rounds import fit_ensemble  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.fit.table import RunsTable  # noqa: E402


def trained(law, n, d, c, rng) -> np.ndarray:
    """Final losses of new runs: the true law times log-normal seed noise (drawn once per run)."""
    return law.loss(n, d) * np.exp(rng.normal(0.0, SEED_SD_LOG, np.size(n)))


def table_of(n, d, c, loss) -> RunsTable:
    flops = 6 * n * d
    return RunsTable(run_id=tuple(f"r{i}" for i in range(n.size)), params={"total": n}, tokens=d, loss=loss,
                     flops={"exact": flops, "6n": flops}, budget_flops=c, source="simulated")


def score(table, target: float, n_true: float, bootstrap: int, seed: int) -> dict | None:
    try:
        fit = fit_ensemble(table, target, bootstrap, seed)
    except UserError:
        return None
    lo, hi = fit["interval"] or (np.nan, np.nan)
    return {"error": abs(np.log(fit["n_opt"] / n_true)), "log_width": float(np.log(hi / lo)),
            "covered": bool(lo <= n_true <= hi)}


def adaptive_design(law, n, d, c, args, rng, target: float) -> tuple:
    """Seed budgets, then rounds of chosen runs until the static grid's FLOPs are spent. A round whose fit
    fails (the seed budgets do not pin a law yet) adds the static grid's next budget instead, as the sweep
    does (pipeline/sweep/adaptive.py: fallback); with none left that fits, the design stops."""
    total = float(np.sum(6 * n * d))
    grid = (n, d, c)
    static_budgets = list(np.unique(c)[args.seed_budgets:])
    keep = np.isin(c, np.unique(c)[: args.seed_budgets])
    n, d, c = n[keep], d[keep], c[keep]
    loss = trained(law, n, d, c, rng)
    rounds = 0
    while rounds < args.max_rounds:
        left = total - float(np.sum(6 * n * d))
        table = table_of(n, d, c, loss)
        try:
            # as the sweep's rounds (pipeline/decide/rounds.py: across_forms) unless --one-form
            fit = fit_ensemble(table, target, args.round_bootstrap, int(rng.integers(1 << 30)), forms=args.across_forms)
        except UserError:
            nxt = grid[2] == static_budgets.pop(0) if static_budgets else None
            if nxt is None or float(np.sum(6 * grid[0][nxt] * grid[1][nxt])) > left:
                break
            loss = np.append(loss, trained(law, grid[0][nxt], grid[1][nxt], grid[2][nxt], rng))
            n, d, c = np.append(n, grid[0][nxt]), np.append(d, grid[1][nxt]), np.append(c, grid[2][nxt])
            rounds += 1
            continue
        cands = isoflop_candidates(fit["law"], n, d, c, max_run_flops=left, min_budget=grid[2].min() / 3,
                                   profiles=args.min_profiles > 0)
        if not len(cands):
            break
        first = profile_rule(n, c, args.min_profiles)   # as the sweep: a new budget's profile first while too few
        choice = choose_next(fit["samples"], fit["sd_log"], cands, target, max_runs=args.round_runs, flops_left=left,
                             profile_first=first, width_now=fit.get("span_width"))
        if not choice["picks"]:
            break
        picks = choice["picks"]
        new_n, new_d = np.array([p["n"] for p in picks]), np.array([p["d"] for p in picks])
        new_c = np.array([p["budget"] or 6 * p["n"] * p["d"] for p in picks])
        loss = np.append(loss, trained(law, new_n, new_d, new_c, rng))
        n, d, c = np.append(n, new_n), np.append(d, new_d), np.append(c, new_c)
        rounds += 1
    return table_of(n, d, c, loss), rounds


def one_study(i: int, args) -> dict:
    rng = np.random.default_rng([args.seed, i])
    law = true_law(rng, "overtrain" if i % 2 else "chinchilla")
    n, d, c = design("isoflop", args.budgets, args.sizes)
    target = args.factor * float(c.max())
    n_true = float(law.optimal_allocation(target)[0])
    static = score(table_of(n, d, c, trained(law, n, d, c, rng)), target, n_true, args.bootstrap,
                   int(rng.integers(1 << 30)))
    table, rounds = adaptive_design(law, n, d, c, args, rng, target)
    adaptive = score(table, target, n_true, args.bootstrap, int(rng.integers(1 << 30)))
    return {"static": static, "adaptive": adaptive, "rounds": rounds, "runs": len(table),
            "flops_share": float(np.sum(table.n * table.tokens) / np.sum(n * d)),
            "top_budget": float(np.nanmax(table.budget_flops) / c.max())}


def summary_lines(results: list[dict]) -> list[str]:
    """The table of both designs, the adaptive design's spending, and the last line (JSON ratios)."""
    both = [r for r in results if r["static"] and r["adaptive"]]
    lines = ["| design | median abs log N_opt error | median log width (90%) | coverage of the 90% interval |",
             "|---|---:|---:|---:|"]
    summary = {}
    for name in ("static", "adaptive"):
        err = np.median([r[name]["error"] for r in both])
        width = np.median([r[name]["log_width"] for r in both])
        cover = 100 * np.mean([r[name]["covered"] for r in both])
        summary[name] = (err, width, cover)
        lines.append(f"| {name} | {err:.3f} ({np.exp(err):.2f}x) | {width:.2f} ({np.exp(width):.1f}x) | {cover:.0f}% |")
    lines.append(f"fitted (the score's fit gave an interval): static {sum(bool(r['static']) for r in results)}, adaptive "
                 f"{sum(bool(r['adaptive']) for r in results)} of {len(results)} studies; the medians are over the {len(both)} "
                 "fitted by both")
    lines.append(f"adaptive: median {np.median([r['rounds'] for r in results]):.0f} rounds, "
                 f"{np.median([r['runs'] for r in results]):.0f} runs, {np.median([r['flops_share'] for r in results]):.0%} "
                 f"of the static FLOPs, largest budget {np.median([r['top_budget'] for r in results]):.3g}x the static one")
    lines.append(json.dumps({"error_ratio": round(summary["adaptive"][0] / summary["static"][0], 3),
                             "width_ratio": round(summary["adaptive"][1] / summary["static"][1], 3),
                             "coverage": round(summary["adaptive"][2], 1), "studies": len(both)}))
    return lines


def _study(job: tuple) -> dict:
    return one_study(*job)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", type=int, default=3)
    p.add_argument("--sizes", type=int, default=5)
    p.add_argument("--seed-budgets", type=int, default=2, help="budgets of the grid the adaptive design starts from")
    p.add_argument("--round-runs", type=int, default=8, help="runs chosen per round")
    p.add_argument("--min-profiles", type=int, default=0,
                   help="> 0: new budgets as 3-size profiles, one first while fewer budgets have one (sweep.min_profiles)")
    p.add_argument("--max-rounds", type=int, default=4)
    p.add_argument("--round-bootstrap", type=int, default=30, help="ensemble size between rounds")
    p.add_argument("--one-form", dest="across_forms", action="store_false",
                   help="rounds on the Chinchilla form's ensemble alone (the design before the rounds read the forms)")
    p.add_argument("--bootstrap", type=int, default=60, help="resamples of the final interval (both designs)")
    p.add_argument("--jobs", type=int, default=1, help="studies fitted in parallel processes")
    p.add_argument("--factor", type=float, default=300.0, help="target budget / the static grid's largest budget")
    args = p.parse_args()
    start = time.time()
    results = []
    with Pool(args.jobs) as pool:
        for result in pool.imap(_study, [(i, args) for i in range(args.studies)]):
            results.append(result)
            if len(results) % 10 == 0:   # a running summary: a study cut short still says what it measured
                print(f"# {len(results)} studies, {time.time() - start:.0f} s: {summary_lines(results)[-1]}",
                      file=sys.stderr, flush=True)
    print(f"# {args.studies} studies, {args.budgets} budgets x {args.sizes} sizes static; adaptive from "
          f"{args.seed_budgets} budgets, up to {args.round_runs} runs a round; target {args.factor:g}x the largest "
          f"static budget; {time.time() - start:.0f} s")
    print("\n".join(summary_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
