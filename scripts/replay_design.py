"""Replay the adaptive design on a pool of finished runs: would it have reached the same answer for less?

The design starts from the pool's cheapest runs (`--seed-runs`, more while no law can be fitted to
them), then in rounds fits them (pipeline.decide.rounds.fit_ensemble: Approach 3's Chinchilla form, the
noise model, a `--round-bootstrap`-resample parametric bootstrap; the alpha = beta form's draws join when it
disagrees, as in the sweep's rounds, rounds.across_forms, unless `--one-form`) and chooses up to `--round-runs` runs
*from the pool only* by the expected shrinkage of log N_opt's 90% interval at `--target-flops` per FLOP
(pipeline/decide/next_runs.py), until `--share` of the pool's FLOPs is spent or nothing fits (the
design's own stop rule; `--max-rounds` caps the rounds only when given). The answer is compared with the
same fit on the whole pool, and both carry their 90% interval (the fit's parametric bootstrap,
`--bootstrap` resamples): how far the replay may land from the pool's answer is bounded below by how far
the pool's own resamples land from it, so the last line also gives the share of those within
`--tolerance` (`pool_resamples_within`; a criterion tighter than the pool's own noise is met by chance).
Last line, JSON: n_opt, n_opt_full, rel_diff, interval, interval_full, pool_resamples_within, share_used,
runs_used, rounds.

    python scripts/replay_design.py --runs chinchilla_fig4_epoch.csv --share 0.3 --target-flops 5.76e23
    python scripts/replay_design.py --runs ladder_final.csv --share 0.3 --target-flops 1e23

Columns: params, tokens, loss[, flops] as `python -m pipeline.fit runs=...` reads them; Epoch's Chinchilla
extraction ("Model Size", "Training FLOP") and the OLMo ladder ("N", "c4_loss") are recognised.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.decide.next_runs import Candidates, choose_next, log_n_opt  # noqa: E402
from pipeline.decide.rounds import fit_ensemble  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.fit.candidates import chinchilla_form, fit_candidate  # noqa: E402
from pipeline.fit.sources import load_table_file  # noqa: E402

KNOWN_COLUMNS = ({"Model Size": "params", "Training FLOP": "flops"}, {"N": "params", "c4_loss": "loss"})


def load_pool(path: Path):
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    columns = next((c for c in KNOWN_COLUMNS if set(c) <= set(header)), None)
    return load_table_file(path, columns=columns) if columns else load_table_file(path)


def pool_candidates(table, used: np.ndarray) -> tuple[Candidates, np.ndarray]:
    """The pool's runs not used yet, as the chooser's candidates (their own N, D, FLOPs and budget)."""
    rest = np.flatnonzero(~used)
    groups = table.budget_groups()
    seen_points = {(round(float(np.log(table.n[i])), 3), round(float(np.log(table.tokens[i])), 3))
                   for i in np.flatnonzero(used)}
    seen_budgets = set(groups[used].tolist())
    kind = tuple("seed" if (round(float(np.log(table.n[i])), 3), round(float(np.log(table.tokens[i])), 3)) in seen_points
                 else "new size" if groups[i] in seen_budgets else "new budget" for i in rest)
    return Candidates(table.n[rest], table.tokens[rest], table.c[rest], groups[rest], kind), rest


def point_n_opt(table, target: float) -> float:
    fit = fit_candidate(chinchilla_form(), table.n, table.tokens, table.loss, table.convention)
    return float(fit.law().optimal_allocation(target)[0])


def reference(table, target: float, bootstrap: int, seed: int, tolerance: float) -> dict:
    """N_opt of the pool's fit, its 90% interval, and the share of its bootstrap draws within `tolerance` of it."""
    fit = fit_ensemble(table, target, bootstrap, seed)
    draws = np.exp(log_n_opt(fit["samples"], target)) / fit["n_opt"] - 1
    return {"n_opt": fit["n_opt"], "interval": [float(v) for v in fit["interval"]],
            "within": float(np.mean(np.abs(draws[np.isfinite(draws)]) <= tolerance))}


def replay(table, target: float, share: float, seed_runs: int = 8, round_runs: int = 4, round_bootstrap: int = 40,
           max_rounds: int | None = None, seed: int = 0, discrepancy: float = 0.0, forms: bool = True) -> dict:
    cap = share * float(table.c.sum())
    order = np.argsort(table.c, kind="stable")
    used = np.zeros(len(table), dtype=bool)
    used[order[:seed_runs]] = True
    log: list[str] = []
    rounds = 0
    while max_rounds is None or rounds < max_rounds:   # each round adds a run of a finite pool: it ends
        sub = table.subset(used)
        try:
            fit = fit_ensemble(sub, target, round_bootstrap, seed + rounds, forms=forms)
        except UserError as err:   # no law yet: the next-cheapest run, as a static design would add
            nxt = next((i for i in order if not used[i]), None)
            if nxt is None or float(table.c[used].sum() + table.c[nxt]) > cap:
                raise UserError(f"no law could be fitted within {share:.0%} of the pool's FLOPs ({err})") from err
            used[nxt] = True
            continue
        cands, rest = pool_candidates(table, used)
        left = cap - float(table.c[used].sum())
        choice = choose_next(fit["samples"], fit["sd_log"], cands, target, max_runs=round_runs, flops_left=left,
                             discrepancy_per_decade=discrepancy,
                             width_now=fit.get("span_width"))
        if not choice["picks"]:
            log.append(f"stopped: {choice['stopped']}")
            break
        rounds += 1
        used[rest[[p["index"] for p in choice["picks"]]]] = True
        log.append(f"round {rounds}: {len(choice['picks'])} runs, width {choice['width_now']:.3g}x -> expected "
                   f"{choice['expected_width_after']:.3g}x")
    return {"n_opt": point_n_opt(table.subset(used), target), "share_used": float(table.c[used].sum() / table.c.sum()),
            "runs_used": int(used.sum()), "rounds": rounds, "log": log, "used": used}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="CSV of finished runs (the pool)")
    p.add_argument("--share", type=float, default=0.3, help="at most this share of the pool's FLOPs")
    p.add_argument("--target-flops", type=float, required=True, help="the budget N_opt is asked at")
    p.add_argument("--seed-runs", type=int, default=8)
    p.add_argument("--round-runs", type=int, default=4)
    p.add_argument("--round-bootstrap", type=int, default=40)
    p.add_argument("--one-form", dest="forms", action="store_false",
                   help="rounds on the Chinchilla form's ensemble alone (the design before the rounds read the forms)")
    p.add_argument("--max-rounds", type=int, default=None, help="cap on the rounds (default: until the share is spent)")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples of the replay's and the pool's 90%% intervals")
    p.add_argument("--tolerance", type=float, default=0.15, help="the criterion: |n_opt / n_opt_full - 1| at most this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--discrepancy", type=float, default=0.0,
                   help="model-discrepancy sd of log loss per decade of compute below the target (next_runs.py)")
    args = p.parse_args()
    if not 0 < args.share <= 1 or not args.target_flops > 0:
        print("error: --share must be in (0, 1] and --target-flops positive", file=sys.stderr)
        return 2
    try:
        table = load_pool(args.runs)
        result = replay(table, args.target_flops, args.share, args.seed_runs, args.round_runs, args.round_bootstrap,
                        args.max_rounds, seed=args.seed, discrepancy=args.discrepancy, forms=args.forms)
        ours = reference(table.subset(result["used"]), args.target_flops, args.bootstrap, args.seed, args.tolerance)
        full = reference(table, args.target_flops, args.bootstrap, args.seed, args.tolerance)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(result.pop("log")))
    (lo, hi), (flo, fhi) = ours["interval"], full["interval"]
    print(f"{result['runs_used']} of {len(table)} runs, {result['share_used']:.1%} of the pool's FLOPs; N_opt at "
          f"{args.target_flops:.3g} FLOPs (Chinchilla form, C = 6 N D): [{lo:.3g}, {hi:.3g}] {result['n_opt']:.4g} vs "
          f"[{flo:.3g}, {fhi:.3g}] {full['n_opt']:.4g} from all runs (90%, parametric bootstrap); "
          f"{full['within']:.0%} of the pool's own resamples land within {args.tolerance:.0%} of its answer")
    print(json.dumps({"n_opt": result["n_opt"], "n_opt_full": full["n_opt"], "rel_diff": result["n_opt"] / full["n_opt"] - 1,
                      "interval": ours["interval"], "interval_full": full["interval"],
                      "pool_resamples_within": full["within"], "share_used": result["share_used"],
                      "runs_used": result["runs_used"], "rounds": result["rounds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
