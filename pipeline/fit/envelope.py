"""Approach 1: the lower envelope of the training curves (Hoffmann et al. 2022, sec. 3.1, Fig. 2).

Every evaluation of every run is a point (FLOPs so far, tokens so far, loss, the run's N). FLOPs
are binned log-uniformly; in each bin the point with the lowest loss marks the compute-optimal
model for that much compute; bins won by the smallest or largest model are left out (the optimum
may lie beyond the sampled sizes). Power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted by
least squares in log-log over the bins' winners.

Caveat (Chinchilla sec. 3.1 and App. D): an intermediate point of a run whose learning-rate
schedule is set for its full length (cosine) is not compute-optimal for its own token count: its
LR has not decayed yet, so its loss is higher than a run of exactly that length would reach.
Chinchilla therefore trained each size with several schedule lengths; with one schedule per size
the envelope is biased towards larger models at small C, and is best read as a cross-check of
Approaches 2 and 3. Curves come from the runs' eval.jsonl: a CSV or W&B table has none.

WSD runs (cooldown reuse) are the remedy Hägele et al. 2024 (sec. 4) propose: each size has one
cooldown branch per token count, and each branch's *final* loss is compute-optimal for its length.
So for pilots with the wsd schedule the envelope uses each run's end point only, never the
intermediate evaluations (mid-cooldown, LR not yet decayed).
"""

from __future__ import annotations

import numpy as np

from pipeline.fit.intervals import percentile_interval
from pipeline.fit.table import RunsTable

BINS_PER_DECADE = 8      # log-uniform FLOP bins; Chinchilla used 1500 FLOP values over ~5 decades
MIN_BINS = 3             # a power law through fewer winning points is not a fit


def _curve_flops_field(flop_method: str) -> str | None:
    return {"exact": "flops_exact", "6n": "flops_6n"}.get(flop_method)


def end_points_only(table: RunsTable) -> bool:
    """WSD pilots: only each run's final loss is a decayed, compute-optimal point (see the module doc)."""
    return bool(table.schedule and table.schedule.get("name") == "wsd")


def envelope_points(table: RunsTable) -> dict[str, np.ndarray]:
    """All evaluation points of all runs with curves: flops, tokens, loss, n (the run's N), run (row).

    For WSD pilots, one point per run: its final loss at its full FLOPs and tokens.
    """
    if end_points_only(table):
        return {"flops": table.c.astype(float), "tokens": table.tokens.astype(float), "loss": table.loss.astype(float),
                "n": table.n.astype(float), "run": np.arange(len(table), dtype=float)}
    field = _curve_flops_field(table.flop_method)
    parts: dict[str, list[np.ndarray]] = {"flops": [], "tokens": [], "loss": [], "n": [], "run": []}
    for row, (curve, n) in enumerate(zip(table.curves or [None] * len(table), table.n, strict=True)):
        if curve is None or field is None:
            continue
        parts["flops"].append(curve[field])
        parts["tokens"].append(curve["tokens"])
        parts["loss"].append(curve["val_loss"])
        parts["n"].append(np.full(curve["val_loss"].shape, n))
        parts["run"].append(np.full(curve["val_loss"].shape, row))
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}


def _frontier(pts: dict, which_bin: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, int]:
    """(winning point per bin among points `use`, without edge-size winners; count of edge winners)."""
    idx = np.flatnonzero(use)
    order = idx[np.lexsort((pts["loss"][idx], which_bin[idx]))]   # by bin, then loss
    first = np.r_[True, np.diff(which_bin[order]) != 0]
    winners = order[first]
    # A bin won by the smallest or largest model is not bracketed: the optimum may lie beyond the
    # sampled sizes (at the ends of the FLOP range only those runs have points), which flattens the
    # frontier. Same rule as Approach 2's bracketing.
    sizes = np.unique(pts["n"][idx])
    edge = (pts["n"][winners] == sizes[0]) | (pts["n"][winners] == sizes[-1])
    return winners[~edge], int(edge.sum())


def _power_laws(pts: dict, winners: np.ndarray) -> tuple[float, float, float, float]:
    log_c = np.log(pts["flops"][winners])
    a, log_k_n = np.polyfit(log_c, np.log(pts["n"][winners]), 1)
    b, log_k_d = np.polyfit(log_c, np.log(pts["tokens"][winners]), 1)
    return float(a), float(np.exp(log_k_n)), float(b), float(np.exp(log_k_d))


def _usable(pts: dict, winners: np.ndarray) -> bool:
    return winners.size >= MIN_BINS and np.unique(pts["n"][winners]).size >= 2


def fit_envelope(table: RunsTable, budget_flops: float, bootstrap: int = 0, seed: int = 0,
                 noise_sd_log: float | None = None) -> dict:
    """Approach 1; returns {"error": ...} when the table has no curves or too few bins.

    `bootstrap` > 0 with a noise model (`noise_sd_log`, sd of one run's log loss, pipeline/fit/noise.py)
    redraws every run's curve with a run-level log-normal offset of that sd (seed noise moves a
    run's whole curve) and re-takes the envelope on the same bins: percentile 5-95% intervals of a,
    b and N_opt, D_opt. Resampling runs instead would delete sizes, which is not noise. Failed
    resamples (too few bins) are counted in `n_failed`.
    """
    if not table.has_curves and not end_points_only(table):
        return {"error": "no training curves (a CSV or W&B table has none): Approach 1 needs sweep records "
                         "with eval.jsonl"}
    if not end_points_only(table) and _curve_flops_field(table.flop_method) is None:
        return {"error": f"curves carry exact and 6n FLOPs, not '{table.flop_method}': use flop_method exact or 6n"}
    pts = envelope_points(table)
    log_c = np.log(pts["flops"])
    decades = (log_c.max() - log_c.min()) / np.log(10)
    n_bins = max(1, int(np.ceil(decades * BINS_PER_DECADE)))
    edges = np.linspace(log_c.min(), log_c.max(), n_bins + 1)
    which_bin = np.clip(np.searchsorted(edges, log_c, side="right") - 1, 0, n_bins - 1)
    winners, n_edge = _frontier(pts, which_bin, np.ones(log_c.size, dtype=bool))
    if not _usable(pts, winners):
        return {"error": f"the curves give {winners.size} FLOP bins won by {np.unique(pts['n'][winners]).size} "
                         f"interior model sizes ({n_edge} more won by the smallest or largest): Approach 1 needs "
                         f"{MIN_BINS}+ bins and 2+ sizes (add runs or evaluations)"}
    a, k_n, b, k_d = _power_laws(pts, winners)
    out = {"a": a, "b": b, "k_n": k_n, "k_d": k_d, "n_opt": k_n * budget_flops ** a, "d_opt": k_d * budget_flops ** b,
           "budget_flops": float(budget_flops), "n_bins": int(winners.size), "n_bins_won_at_edges": n_edge,
           "bins_per_decade": BINS_PER_DECADE, "flop_method": table.flop_method,
           "points": "each run's final loss (wsd pilots)" if end_points_only(table) else "every evaluation of every run",
           "frontier": {"flops": pts["flops"][winners].tolist(), "n": pts["n"][winners].tolist(),
                        "tokens": pts["tokens"][winners].tolist(), "loss": pts["loss"][winners].tolist()}}
    if bootstrap > 0:
        out["bootstrap"] = _bootstrap(pts, which_bin, len(table), budget_flops, bootstrap, seed, noise_sd_log)
        out["intervals"] = out["bootstrap"]["intervals"]
    return out


def _bootstrap(pts: dict, which_bin: np.ndarray, n_runs: int, budget_flops: float, n_resamples: int,
               seed: int, noise_sd_log: float | None) -> dict:
    base = {"n_resamples": n_resamples, "seed": seed,
            "unit": "parametric: one log-normal offset per run's curve, sd from the noise model"}
    if noise_sd_log is None:
        return {**base, "n_used": 0, "n_failed": 0, "intervals": {}, "note": "no noise estimate: no interval"}
    rng = np.random.default_rng(seed)
    run = pts["run"].astype(int)
    everything = np.ones(run.size, dtype=bool)
    samples: dict[str, list[float]] = {"a": [], "b": [], "n_opt": [], "d_opt": []}
    for _ in range(n_resamples):
        offset = np.exp(noise_sd_log * rng.standard_normal(n_runs))
        redrawn = {**pts, "loss": pts["loss"] * offset[run]}
        winners, _ = _frontier(redrawn, which_bin, everything)
        if not _usable(redrawn, winners):
            continue
        a, k_n, b, k_d = _power_laws(redrawn, winners)
        for key, value in (("a", a), ("b", b), ("n_opt", k_n * budget_flops ** a), ("d_opt", k_d * budget_flops ** b)):
            samples[key].append(value)
    n_used = len(samples["a"])
    intervals = ({k: percentile_interval(v) for k, v in samples.items()}
                 if n_used >= 2 else {})
    return {**base, "n_used": n_used, "n_failed": n_resamples - n_used, "noise_sd_log": float(noise_sd_log),
            "interval": "percentile 5-95% over noise redraws of the runs' curves", "intervals": intervals}
