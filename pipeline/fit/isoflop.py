"""Approach 2: IsoFLOP profiles (Hoffmann et al. 2022, "Chinchilla", sec. 3.2, Fig. 3).

For each compute budget C: a parabola of final loss over log N, fitted near the observed minimum;
its vertex is N_opt(C). Then power laws N_opt = k_N C^a and D_opt = k_D C^b by least squares in
log-log over the budgets whose minimum is bracketed.

Choices, and why:
* The parabola uses the observed minimum and the same number of sizes on each side of it (up to
  PARABOLA_HALF_WIDTH, at least one: 3 points). Loss over log N is only parabolic near its minimum;
  on a grid placed off-centre, fitting every point lets the long side pull the vertex away (the
  test with a shifted grid shows the bias this avoids).
* A budget is "bracketed" only when the observed minimum is an interior size, the parabola is
  convex and its vertex lies inside the sampled sizes; other budgets are reported with a reason
  and left out of the power law (an extrapolated vertex is a guess, not a measurement).
* D_opt(C) = C / F(N_opt), F = the budget's FLOPs per token C_i / D_i interpolated in log-log at
  N_opt. With C = 6 N D ("6n") that is exactly D_opt = C / (6 N_opt); with exact FLOPs it keeps
  the attention share (Chinchilla App. F) that the runs really paid.
* Each budget's C is the geometric mean of its runs' FLOPs under the table's FLOP method.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.intervals import percentile_interval
from pipeline.fit.table import RunsTable

PARABOLA_HALF_WIDTH = 2


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (slope, intercept); closed form (np.polyfit's overhead dominates the bootstrap)."""
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    return slope, float(y.mean() - slope * x.mean())


def _fit_parabola(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares (c2, c1, c0) of y = c2 x^2 + c1 x + c0, solved in x centred on its mean."""
    x0 = x.mean()
    v = np.vander(x - x0, 3)
    c2, c1, c0 = np.linalg.solve(v.T @ v, v.T @ y)
    return np.array([c2, c1 - 2 * c2 * x0, c2 * x0 * x0 - c1 * x0 + c0])


def profile_budget(log_n: np.ndarray, loss: np.ndarray) -> dict:
    """Vertex of one IsoFLOP profile; sizes with several runs use their mean loss."""
    sizes, inverse = np.unique(log_n, return_inverse=True)
    mean_loss = np.bincount(inverse, weights=loss) / np.bincount(inverse)
    out = {"log_n": sizes.tolist(), "loss": mean_loss.tolist(), "bracketed": False}
    if sizes.size < 3:
        return {**out, "reason": f"only {sizes.size} model sizes: a parabola needs 3 or more"}
    best = int(np.argmin(mean_loss))
    if best == 0:
        return {**out, "reason": "lowest loss at the smallest size: add smaller models"}
    if best == sizes.size - 1:
        return {**out, "reason": "lowest loss at the largest size: add larger models"}
    half = min(best, sizes.size - 1 - best, PARABOLA_HALF_WIDTH)
    window = slice(best - half, best + half + 1)
    coef = _fit_parabola(sizes[window], mean_loss[window])
    out["parabola"] = coef.tolist()                     # loss = c2 x^2 + c1 x + c0, x = ln N
    out["window_log_n"] = [float(sizes[window][0]), float(sizes[window][-1])]
    if not coef[0] > 0:
        return {**out, "reason": "the losses near the minimum are not convex: add runs or seeds near it"}
    vertex = -coef[1] / (2 * coef[0])
    if not sizes[0] <= vertex <= sizes[-1]:
        return {**out, "reason": "the parabola's vertex lies outside the sampled sizes"}
    return {**out, "bracketed": True, "log_n_opt": float(vertex),
            "loss_min": float(np.polyval(coef, vertex))}


def _flops_per_token_at(log_n: np.ndarray, flops: np.ndarray, tokens: np.ndarray, log_n_opt: float) -> float:
    log_fpt = np.log(flops / tokens)
    if np.ptp(log_n) == 0:
        return float(np.exp(log_fpt.mean()))
    slope, icept = _fit_line(log_n, log_fpt)
    return float(np.exp(icept + slope * log_n_opt))


def _profiles(table: RunsTable, groups: np.ndarray, rows: np.ndarray | None = None,
              budgets: np.ndarray | None = None) -> list[dict]:
    """Profile of each budget in `budgets` (default: all); `rows` (a resample of row indices)
    replaces the table's rows."""
    rows = np.arange(len(table)) if rows is None else rows
    log_n = np.log(table.n)
    out = []
    for group in np.unique(groups) if budgets is None else budgets:
        idx = rows[groups[rows] == group]
        budget = float(np.exp(np.mean(np.log(table.c[groups == group]))))
        prof = {"budget_flops": budget, "planned_budget_flops": float(group), "n_runs": int(idx.size),
                **profile_budget(log_n[idx], table.loss[idx])}
        if prof["bracketed"]:
            prof["n_opt"] = float(np.exp(prof["log_n_opt"]))
            prof["d_opt"] = budget / _flops_per_token_at(log_n[idx], table.c[idx], table.tokens[idx],
                                                         prof["log_n_opt"])
        out.append(prof)
    return out


def _power_laws(profiles: list[dict]) -> dict | None:
    good = [p for p in profiles if p["bracketed"]]
    if len({p["budget_flops"] for p in good}) < 2:
        return None
    log_c = np.log([p["budget_flops"] for p in good])
    a, log_k_n = _fit_line(log_c, np.log([p["n_opt"] for p in good]))
    b, log_k_d = _fit_line(log_c, np.log([p["d_opt"] for p in good]))
    return {"a": float(a), "k_n": float(np.exp(log_k_n)), "b": float(b), "k_d": float(np.exp(log_k_d))}


def fit_isoflop(table: RunsTable, budget_flops: float, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Approach 2 on the table's budgets; N_opt, D_opt at `budget_flops` from the power laws.

    Raises UserError when the table has a single budget (an IsoFLOP design needs several); with
    fewer than 2 bracketed budgets the result is {"error": ..., "budgets": [...]}. The bootstrap
    resamples runs within each budget (percentile 5-95% intervals of a, b, N_opt, D_opt).
    """
    groups = table.budget_groups()
    if np.unique(groups).size < 2:
        raise UserError(f"IsoFLOP fit: all {len(table)} runs share one compute budget: Approach 2 needs runs at "
                        "2 or more budgets (add budgets to sweep.budgets_flops)")
    profiles = _profiles(table, groups)
    laws = _power_laws(profiles)
    if laws is None:
        reasons = "; ".join(f"{p['budget_flops']:.3g}: {p['reason']}" for p in profiles if not p["bracketed"])
        return {"error": f"fewer than 2 budgets have a bracketed minimum ({reasons})", "budgets": profiles}
    out = {**laws, "n_opt": laws["k_n"] * budget_flops ** laws["a"], "d_opt": laws["k_d"] * budget_flops ** laws["b"],
           "budget_flops": float(budget_flops), "n_budgets_used": sum(p["bracketed"] for p in profiles),
           "budgets": profiles, "flop_method": table.flop_method}
    out["tokens_per_param"] = out["d_opt"] / out["n_opt"]
    if bootstrap > 0:
        out["bootstrap"] = _bootstrap(table, groups, budget_flops, bootstrap, seed)
        out["intervals"] = out["bootstrap"]["intervals"]
    return out


def _bootstrap(table: RunsTable, groups: np.ndarray, budget_flops: float, n_resamples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # budgets with fewer than 3 sizes can never be bracketed, in any resample: leave them out
    budgets = [g for g in np.unique(groups) if np.unique(table.n[groups == g]).size >= 3]
    members = [np.flatnonzero(groups == g) for g in budgets]
    samples: dict[str, list[float]] = {"a": [], "b": [], "n_opt": [], "d_opt": []}
    for _ in range(n_resamples if len(budgets) >= 2 else 0):
        rows = np.concatenate([rng.choice(m, size=m.size, replace=True) for m in members])
        laws = _power_laws(_profiles(table, groups, rows, budgets))
        if laws is None:
            continue
        for key, value in (("a", laws["a"]), ("b", laws["b"]), ("n_opt", laws["k_n"] * budget_flops ** laws["a"]),
                           ("d_opt", laws["k_d"] * budget_flops ** laws["b"])):
            samples[key].append(value)
    n_used = len(samples["a"])
    intervals = ({k: percentile_interval(v) for k, v in samples.items()}
                 if n_used >= 2 else {})
    return {"n_resamples": n_resamples, "n_used": n_used, "seed": seed,
            "interval": "percentile 5-95% over resamples of runs within budgets", "intervals": intervals}
