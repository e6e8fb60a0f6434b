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

Intervals: a parametric bootstrap within each budget's profile. Resampling runs when each (budget,
size) has one run only deletes sizes, which widens the interval for the wrong reason (on synthetic
studies the "90%" interval covered the truth 20 times in 20 while spanning two orders of magnitude).
Instead each resample redraws every point's mean loss as the budget's fitted parabola (inside its
window; the observed mean outside it) times log-normal noise of the noise model's sd
(pipeline/fit/noise.py: measured seed spread, else the law's residuals) over sqrt(seeds at the
point), refits every parabola and the power laws. A resample in which fewer than 2 budgets stay
bracketed is failed: counted and reported (`n_failed`), never dropped silently; one that loses some
budgets is counted as `n_partial`. scripts/calibrate_intervals.py measures the coverage.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.intervals import percentile_interval
from pipeline.fit.table import RunsTable

PARABOLA_HALF_WIDTH = 2
# Approach 2's own bias (arXiv 2603.22339, "Problems with Chinchilla Approach 2": grid width and an off-centre
# grid bias the parabola's vertex even without noise): warn when it moves N_opt by more than this. Measured
# under Besiroglu et al.'s law with the windowed parabola above: 5 sizes 1.6x apart -0.2% centred; 3x apart
# -1.2% centred, -1.9% off-centre; 5x apart (a 625x span) -2.6% centred, -4.7% off-centre.
GRID_BIAS_WARN = 0.03
FAILED_WARN_SHARE = 0.05   # more failed resamples than this and the interval is flagged


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
    counts = np.bincount(inverse)
    mean_loss = np.bincount(inverse, weights=loss) / counts
    out = {"log_n": sizes.tolist(), "loss": mean_loss.tolist(), "counts": counts.tolist(), "bracketed": False}
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


def fit_isoflop(table: RunsTable, budget_flops: float, bootstrap: int = 1000, seed: int = 0,
                noise_sd_log: float | None = None) -> dict:
    """Approach 2 on the table's budgets; N_opt, D_opt at `budget_flops` from the power laws.

    Raises UserError when the table has a single budget (an IsoFLOP design needs several); with
    fewer than 2 bracketed budgets the result is {"error": ..., "budgets": [...]}. The bootstrap is
    parametric within each budget's profile (module doc) with noise `noise_sd_log` (sd of log loss of
    one run); without it, the pooled residual sd of the parabolas is used when they have degrees of
    freedom, else no interval is given and `bootstrap.note` says why.
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
        out["bootstrap"] = _bootstrap(table, groups, profiles, budget_flops, bootstrap, seed, noise_sd_log)
        out["intervals"] = out["bootstrap"]["intervals"]
    return out


def _parabola_residual_sd(table: RunsTable, groups: np.ndarray, profiles: list[dict]) -> tuple[float, int] | None:
    """Pooled sd of log loss about the window parabolas (mean-of-seeds points, scaled to one run)."""
    ss, dof = 0.0, 0
    for prof in profiles:
        if not prof.get("parabola"):
            continue
        x = np.asarray(prof["log_n"])
        inside = (x >= prof["window_log_n"][0]) & (x <= prof["window_log_n"][1])
        fitted = np.polyval(prof["parabola"], x[inside])
        resid = np.log(np.asarray(prof["loss"])[inside] / fitted) * np.sqrt(np.asarray(prof["counts"])[inside])
        ss += float(resid @ resid)
        dof += int(inside.sum()) - 3
    return (float(np.sqrt(ss / dof)), dof) if dof > 0 else None


def grid_bias(table: RunsTable, profiles: list[dict], law) -> tuple[list[dict], list[str]]:
    """Per budget with a parabola: the bias of its vertex, measured by refitting `law`'s noise-free losses
    on the same sizes (each budget's own FLOPs-per-token line) with the same window, against the law's
    minimum on that line; and the warnings for biases beyond GRID_BIAS_WARN, with their size and cause."""
    groups = table.budget_groups()
    rows, warnings = [], []
    for prof in profiles:
        if not prof.get("parabola"):
            continue
        members = groups == prof["planned_budget_flops"]
        x_all, log_d = np.log(table.n[members]), np.log(table.tokens[members])
        slope, icept = _fit_line(x_all, log_d) if np.ptp(x_all) > 0 else (-1.0, float(np.mean(log_d + x_all)))
        sizes = np.asarray(prof["log_n"])
        x = sizes[(sizes >= prof["window_log_n"][0]) & (sizes <= prof["window_log_n"][1])]
        with np.errstate(over="ignore", invalid="ignore"):
            coef = _fit_parabola(x, law.loss(np.exp(x), np.exp(icept + slope * x)))
            dense = np.linspace(sizes[0] - 4.0, sizes[-1] + 4.0, 4001)
            reference = float(dense[np.argmin(law.loss(np.exp(dense), np.exp(icept + slope * dense)))])
        if not coef[0] > 0:
            continue
        vertex = float(-coef[1] / (2 * coef[0]))
        half = (x[-1] - x[0]) / 2
        row = {"budget_flops": prof["budget_flops"], "n_opt_bias": float(np.exp(vertex - reference) - 1),
               "law_n_opt": float(np.exp(reference)), "off_centre": float((reference - (x[0] + x[-1]) / 2) / half),
               "window_ratio": float(np.exp(x[-1] - x[0]))}
        rows.append(row)
        prof["grid_bias"] = row
        if abs(row["n_opt_bias"]) > GRID_BIAS_WARN:
            warnings.append(
                f"Approach 2 at {row['budget_flops']:.3g} FLOPs: its grid alone biases N_opt by {row['n_opt_bias']:+.0%} "
                f"(the law's noise-free losses on the same sizes, fitted by the same parabola; arXiv 2603.22339): the "
                f"window spans {row['window_ratio']:.3g}x in N and its centre is {row['off_centre']:+.2f} half-widths "
                f"from the law's optimum {row['law_n_opt']:.3g}: centre the sizes there (sweep.design=adaptive does) "
                "or space them closer")
    return rows, warnings


def batched_vertices(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """profile_budget's vertex for every row of y (resamples x sizes): (log N_opt, bracketed)."""
    n_rows, n_sizes = y.shape
    best = np.argmin(y, axis=1)
    vertex = np.full(n_rows, np.nan)
    ok = np.zeros(n_rows, dtype=bool)
    for b in range(1, n_sizes - 1):
        rows = np.flatnonzero(best == b)
        if rows.size == 0:
            continue
        half = min(b, n_sizes - 1 - b, PARABOLA_HALF_WIDTH)
        xw = x[b - half:b + half + 1]
        x0 = xw.mean()
        v = np.vander(xw - x0, 3)
        c2, c1, _ = np.linalg.solve(v.T @ v, v.T @ y[rows, b - half:b + half + 1].T)   # each (rows,)
        with np.errstate(divide="ignore", invalid="ignore"):
            vx = x0 - c1 / (2 * c2)
        vertex[rows] = vx
        ok[rows] = (c2 > 0) & (vx >= x[0]) & (vx <= x[-1])
    return vertex, ok


def _bootstrap(table: RunsTable, groups: np.ndarray, profiles: list[dict], budget_flops: float, n_resamples: int,
               seed: int, noise_sd_log: float | None) -> dict:
    base = {"n_resamples": n_resamples, "seed": seed, "intervals": {},
            "unit": "parametric: each budget's profile redrawn with the noise model (module doc)"}
    if noise_sd_log is None:
        pooled = _parabola_residual_sd(table, groups, profiles)
        if pooled is None:
            return {**base, "n_used": 0, "n_failed": 0, "n_partial": 0,
                    "note": "no noise estimate (no seeds, no law residuals, parabolas without spare points): no interval"}
        noise_sd_log, noise_source = pooled[0], f"pooled parabola residuals ({pooled[1]} degrees of freedom)"
    else:
        noise_source = "the fit's noise model"
    rng = np.random.default_rng(seed)
    log_n_opt, log_d_opt, bracketed, log_c, point_bracketed = [], [], [], [], []
    log_n_all = np.log(table.n)
    for prof in profiles:
        if len(prof["log_n"]) < 3:
            continue
        x, mu = np.asarray(prof["log_n"]), np.asarray(prof["loss"], dtype=float).copy()
        if prof.get("parabola"):
            inside = (x >= prof["window_log_n"][0]) & (x <= prof["window_log_n"][1])
            mu[inside] = np.polyval(prof["parabola"], x[inside])
        sd = noise_sd_log / np.sqrt(np.asarray(prof["counts"], dtype=float))
        y = mu * np.exp(sd * rng.standard_normal((n_resamples, x.size)))
        vertex, ok = batched_vertices(x, y)
        rows = groups == prof["planned_budget_flops"]
        log_fpt = np.log(table.c[rows] / table.tokens[rows])
        if np.ptp(log_n_all[rows]) > 0:
            slope, icept = _fit_line(log_n_all[rows], log_fpt)
        else:
            slope, icept = 0.0, float(log_fpt.mean())
        log_c.append(np.log(prof["budget_flops"]))
        log_n_opt.append(vertex)
        log_d_opt.append(np.log(prof["budget_flops"]) - (icept + slope * vertex))
        bracketed.append(ok)
        point_bracketed.append(bool(prof["bracketed"]))
    if len(log_c) < 2:
        return {**base, "n_used": 0, "n_failed": n_resamples, "n_partial": 0,
                "note": "fewer than 2 budgets with 3+ sizes: no interval"}
    w = np.column_stack(bracketed).astype(float)
    lc = np.array(log_c)
    n_budgets = w.sum(1)
    used = n_budgets >= 2
    lost = (w[:, np.array(point_bracketed)] == 0).any(axis=1) & used
    samples: dict[str, np.ndarray] = {}
    for key, values in (("n", np.nan_to_num(np.column_stack(log_n_opt))), ("d", np.nan_to_num(np.column_stack(log_d_opt)))):
        ww, nb = w[used], n_budgets[used]
        xbar = (ww @ lc) / nb
        ybar = (ww * values[used]).sum(1) / nb
        dx = lc[None, :] - xbar[:, None]
        sxx = (ww * dx * dx).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (ww * dx * (values[used] - ybar[:, None])).sum(1) / sxx
        samples["a" if key == "n" else "b"] = slope
        samples[f"{key}_opt"] = np.exp(ybar + slope * (np.log(budget_flops) - xbar))
    finite = np.all(np.isfinite(np.column_stack(list(samples.values()))), axis=1) if used.any() else np.zeros(0, bool)
    samples = {k: v[finite] for k, v in samples.items()}
    n_used = int(finite.sum())
    intervals = {k: percentile_interval(v) for k, v in samples.items()} if n_used >= 2 else {}
    out = {**base, "n_used": n_used, "n_failed": int(n_resamples - n_used), "n_partial": int(lost.sum()),
           "noise_sd_log": float(noise_sd_log), "noise_source": noise_source, "intervals": intervals,
           "interval": "percentile 5-95% over parametric resamples within each budget's profile"}
    if n_resamples - n_used > FAILED_WARN_SHARE * n_resamples:
        out["warning"] = (f"Approach 2 bootstrap: {n_resamples - n_used} of {n_resamples} resamples left fewer than "
                          "2 budgets with a bracketed minimum: the noise can move the minima off the sampled sizes, "
                          "so the interval understates the uncertainty (add sizes around the minima or seeds)")
    return out
