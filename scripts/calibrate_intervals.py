"""Do the fit's "90%" intervals cover the truth 90% of the time? Simulated pilot studies from known laws.

Each simulated study draws a true law L = E + A/N^alpha + B/D^beta around Besiroglu et al. 2024's
refit of Chinchilla (E 1.6-2.0, alpha 0.28-0.40, beta 0.26-0.38, A and B within x0.6-1.6), plans
pilots the way the tool does, draws their final losses with log-normal noise of the CPU pilots'
measured seed-to-seed sd (0.0435 nats at a loss of ~3.3, i.e. 1.3% -> sd of log loss 0.013;
docs/cooldown_reuse.md), and runs the product's fits unchanged (pipeline.fit: parametric fit and its
run bootstrap, IsoFLOP with its profile bootstrap, the envelope with its curve bootstrap, the noise
model). Designs:
* isoflop -- `--budgets` budgets 3x apart from 1e17 FLOPs, `--sizes` sizes 1.6x apart around the
  20-tokens-per-parameter guess (not the true optimum), D = C / 6N; curves for Approach 1 at 6
  evaluations per run as if each were a run of that length (the ideal Approach 1 assumes), with the
  run's noise offset plus 0.3% per evaluation.
* grid -- `--sizes` sizes 2x apart x 4 token multipliers (5, 10, 20, 40 tokens per parameter),
  sized around the same guess at the top budget; Approach 2 does not apply.
Target: `--factor` x the largest pilot run's FLOPs. For each approach that reports an interval:
coverage of the nominal 90% interval of N_opt and of the predicted loss at the target (against the true
law's loss at the (N, D) the approach's point estimate names: the run it would launch), median width
(high/low ratio for N_opt, high-low in nats for the loss), and how many studies gave an interval.

`--product` also runs the fit stage end to end (pipeline.fit.fit_all: outlier rule, law candidates
chosen by backtest, the chosen law's noise bootstrap) and scores the headline's intervals -- the
numbers a user reads -- with the share of studies per chosen candidate and the median error of the
point N_opt, chosen law vs the Chinchilla form pinned. `--truth overtrain` draws alpha = beta truths
(Gadre et al. 2024's over-training form), where the alpha = beta candidate is the right constraint.

    python scripts/calibrate_intervals.py --studies 100 --bootstrap 200
    python scripts/calibrate_intervals.py --studies 100 --bootstrap 150 --product --truth overtrain
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import UserError  # noqa: E402
from pipeline.fit.bootstrap import bootstrap_law  # noqa: E402
from pipeline.fit.envelope import fit_envelope  # noqa: E402
from pipeline.fit.fit_all import fit_all  # noqa: E402
from pipeline.fit.isoflop import fit_isoflop  # noqa: E402
from pipeline.fit.laws import ParametricLaw  # noqa: E402
from pipeline.fit.noise import noise_model  # noqa: E402
from pipeline.fit.parametric import fit_parametric  # noqa: E402
from pipeline.fit.table import RunsTable  # noqa: E402

SEED_SD_LOG = 0.0435 / 3.3        # docs/cooldown_reuse.md: 0.0435 nats between seeds at losses ~3.3
EVAL_SD_LOG = 0.003


def true_law(rng, form: str = "chinchilla") -> ParametricLaw:
    E, A, B = rng.uniform(1.6, 2.0), 482.0 * rng.uniform(0.6, 1.6), 2085.0 * rng.uniform(0.6, 1.6)
    alpha, beta = rng.uniform(0.28, 0.40), rng.uniform(0.26, 0.38)
    return ParametricLaw(E, A, B, alpha, alpha if form == "overtrain" else beta, name="truth")


def design(kind: str, n_budgets: int, n_sizes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, planned budget or nan) of every run."""
    budgets = 1e17 * 3.0 ** np.arange(n_budgets)
    n, d, c = [], [], []
    if kind == "isoflop":
        for budget in budgets:
            centre = np.sqrt(budget / (6 * 20))
            for k in np.arange(n_sizes) - (n_sizes - 1) / 2:
                size = centre * 1.6**k
                n.append(size), d.append(budget / (6 * size)), c.append(budget)
    else:
        centre = np.sqrt(budgets[-1] / (6 * 40))
        for k in np.arange(n_sizes) - (n_sizes - 1):
            for ratio in (5, 10, 20, 40):
                size = centre * 2.0**k
                n.append(size), d.append(ratio * size), c.append(np.nan)
    return np.array(n), np.array(d), np.array(c)


def simulate(law: ParametricLaw, n, d, planned, rng) -> RunsTable:
    offset = rng.normal(0.0, SEED_SD_LOG, n.size)
    loss = law.loss(n, d) * np.exp(offset)
    curves = []
    for i in range(n.size):
        t = d[i] * np.arange(1, 7) / 6
        val = law.loss(n[i], t) * np.exp(offset[i] + rng.normal(0.0, EVAL_SD_LOG, t.size))
        val[-1] = loss[i]
        curves.append({"tokens": t, "flops_exact": 6 * n[i] * t, "flops_6n": 6 * n[i] * t, "val_loss": val})
    return RunsTable(run_id=tuple(f"r{i}" for i in range(n.size)), params={"total": n}, tokens=d, loss=loss,
                     flops={"exact": 6 * n * d, "6n": 6 * n * d}, budget_flops=planned, curves=tuple(curves),
                     source="simulated")


def one_study(kind: str, args, rng) -> dict:
    law = true_law(rng, args.truth)
    n, d, planned = design(kind, args.budgets, args.sizes)
    table = simulate(law, n, d, planned, rng)
    target = args.factor * float(table.c.max())
    n_true, d_true = law.optimal_allocation(target)
    truth = {"n_opt": float(n_true), "predicted_loss": float(law.loss(n_true, d_true))}
    out: dict[str, dict] = {}
    fitted = None
    try:
        fit = fit_parametric(table.n, table.tokens, table.loss)
        fitted = fit.law()
        boot = bootstrap_law(fit, table.n, table.tokens, table.loss, target, args.bootstrap, int(rng.integers(1 << 30)))
        out["parametric"] = {k: boot["intervals"].get(k) for k in truth}
        out["parametric"]["failed"] = boot["n_dropped"]
        out["parametric"]["point_n_opt"] = float(fitted.optimal_allocation(target)[0])
        out["parametric"]["truth_loss"] = float(law.loss(*fitted.optimal_allocation(target)))
    except UserError:
        out["parametric"] = {}
    noise = noise_model(table, fitted)
    sd = noise["sd_log"] if noise else None
    if fitted is not None and sd:
        boot = bootstrap_law(fit, table.n, table.tokens, table.loss, target, args.bootstrap,
                             int(rng.integers(1 << 30)), sd_log=sd)
        out["parametric_noise"] = {k: boot["intervals"].get(k) for k in truth}
        out["parametric_noise"]["failed"] = boot["n_dropped"]
        out["parametric_noise"]["truth_loss"] = float(law.loss(*fitted.optimal_allocation(target)))
    if kind == "isoflop":
        iso = fit_isoflop(table, target, bootstrap=args.bootstrap, seed=int(rng.integers(1 << 30)), noise_sd_log=sd)
        boot = iso.get("bootstrap") or {}
        out["isoflop"] = {"n_opt": (boot.get("intervals") or {}).get("n_opt"), "failed": boot.get("n_failed", 0)}
    env = fit_envelope(table, target, bootstrap=args.bootstrap, seed=int(rng.integers(1 << 30)), noise_sd_log=sd)
    boot = env.get("bootstrap") or {}
    out["envelope"] = {"n_opt": (boot.get("intervals") or {}).get("n_opt"), "failed": boot.get("n_failed", 0)}
    if args.product:
        try:
            result = fit_all(table, target, bootstrap=args.bootstrap, seed=int(rng.integers(1 << 30)))
            out["product"] = {k: result["intervals"].get(k) for k in truth}
            out["product"].update(failed=(result.get("bootstrap") or {}).get("n_failed", 0), point_n_opt=result["n_opt"],
                                  truth_loss=float(law.loss(result["n_opt"], result["d_opt"])),
                                  chosen="{candidate} (outlier rule {outliers})".format(**result["selection"]["chosen"])
                                  if result["selection"].get("chosen") else "none scored: chinchilla used")
        except UserError:
            out["product"] = {}
    return {"truth": truth, "approaches": out}


def summarise(results: list[dict]) -> list[list]:
    rows = []
    for approach in ("product", "parametric", "parametric_noise", "isoflop", "envelope"):
        for key in ("n_opt", "predicted_loss"):
            # the loss's truth is the true law at the (N, D) the approach's point names: the run it describes
            pairs = [(r["approaches"][approach].get(key), r["approaches"][approach].get("truth_loss", r["truth"][key])
                      if key == "predicted_loss" else r["truth"][key]) for r in results if approach in r["approaches"]]
            given = [(iv, t) for iv, t in pairs if iv]
            if not pairs or (key == "predicted_loss" and approach not in ("product", "parametric", "parametric_noise")):
                continue
            covered = [iv[0] <= t <= iv[1] for iv, t in given]
            widths = [iv[1] / iv[0] if key == "n_opt" else iv[1] - iv[0] for iv, _ in given]
            failed = [r["approaches"][approach].get("failed") or 0 for r in results if approach in r["approaches"]]
            rows.append([approach, key, len(given), len(pairs),
                         f"{np.mean(covered):.0%}" if given else "-",
                         (f"{np.median(widths):.2f}x" if key == "n_opt" else f"{np.median(widths):.3f} nats") if given else "-",
                         f"{np.mean(failed) / max(1, args_bootstrap):.1%}"])
    return rows


def selection_summary(results: list[dict]) -> list[str]:
    """Which candidate the product chose, and its point N_opt's error against the Chinchilla form pinned."""
    done = [r for r in results if r["approaches"].get("product", {}).get("chosen")
            and r["approaches"]["parametric"].get("point_n_opt")]
    if not done:
        return []
    lines = []
    for chosen in sorted({r["approaches"]["product"]["chosen"] for r in done}):
        group = [r for r in done if r["approaches"]["product"]["chosen"] == chosen]
        err_chosen = [abs(np.log(r["approaches"]["product"]["point_n_opt"] / r["truth"]["n_opt"])) for r in group]
        err_pinned = [abs(np.log(r["approaches"]["parametric"]["point_n_opt"] / r["truth"]["n_opt"])) for r in group]
        lines.append(f"| {chosen} | {len(group)} of {len(done)} | {np.exp(np.median(err_chosen)):.2f}x "
                     f"| {np.exp(np.median(err_pinned)):.2f}x |")
    return lines


args_bootstrap = 1


def main() -> int:
    global args_bootstrap
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=100, help="simulated studies per design")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--budgets", type=int, default=4)
    p.add_argument("--sizes", type=int, default=5)
    p.add_argument("--factor", type=float, default=300.0, help="target budget / largest pilot run")
    p.add_argument("--designs", default="isoflop,grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", choices=("chinchilla", "overtrain"), default="chinchilla",
                   help="form of the true laws: alpha and beta drawn apart, or alpha = beta")
    p.add_argument("--product", action="store_true", help="also score the fit stage end to end (fit_all)")
    args = p.parse_args()
    args_bootstrap = args.bootstrap
    rng = np.random.default_rng(args.seed)
    print(f"# {args.studies} studies per design, {args.budgets} budgets x {args.sizes} sizes, bootstrap "
          f"{args.bootstrap}, target {args.factor:g}x the largest pilot, seed noise sd(log loss) {SEED_SD_LOG:.4f}, "
          f"true laws of the {args.truth} form")
    for kind in args.designs.split(","):
        start = time.time()
        results = [one_study(kind, args, rng) for _ in range(args.studies)]
        print(f"\n## design {kind} ({time.time() - start:.0f} s)\n")
        print("| approach | quantity | studies with an interval | studies | coverage of the 90% interval | median width | failed resamples |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for row in summarise(results):
            print("| " + " | ".join(str(c) for c in row) + " |")
        choice = selection_summary(results)
        if choice:
            print("\n| chosen law | studies | median error of point N_opt, chosen | same, Chinchilla form pinned |")
            print("|---|---:|---:|---:|")
            print("\n".join(choice))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
