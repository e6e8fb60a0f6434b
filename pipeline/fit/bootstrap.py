"""The bootstrap of a fitted law: the one implementation every interval of a law comes from.

Two kinds of draw, both refitted in one batched L-BFGS (pipeline.fit.refits.refit_batched) from the
full-data optimum and the grid starts of the fit's best distinct solutions (so a draw whose best basin
moved can still find it), keeping the lowest objective per draw:
* parametric (`sd_log` given, the calibrated default; docs/calibration.md) -- every run's loss redrawn as
  the fitted law times log-normal noise of the noise model's sd (pipeline/fit/noise.py). With few runs (a
  CPU pilot study has 15-25 for 5 parameters) resampling runs leaves draws with a handful of distinct
  points whose refits run off (E -> 0, A, B -> inf); redrawing the noise keeps the design.
* runs (`sd_log` None) -- the runs resampled with replacement (seeded multinomial counts = a weighted
  objective), as Besiroglu et al. 2024 bootstrap Chinchilla's points.
A draw whose best point did not converge, or is no law (refits.law_rows: E, A or B at 0 or inf, alpha or
beta <= 0) is dropped and counted (`n_dropped`), never fatal and never silent. Intervals are percentile
5-95% (pipeline/fit/intervals.py); the predicted loss's interval is the draws' loss at the point fit's
own optimum (N_opt, D_opt), the run the headline describes, not each draw's loss at its own optimum.
Standard errors are the draws' standard deviations (as Besiroglu et al. 2024 report them).
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.candidates import CandidateFit, chinchilla_form
from pipeline.fit.intervals import percentile_interval
from pipeline.fit.laws import ParametricLaw, optimum_on_line
from pipeline.fit.parametric import (
    SAMPLE_COLUMNS,
    HuberLogObjective,
    ParametricFit,
    _check_points,
    derived_quantities,
)
from pipeline.fit.refits import law_rows, refit_batched


def resample_counts(n_runs: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_runs) multiplicities of each run in each seeded bootstrap resample (with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=n_resamples).astype(float)


def noise_draws(law: ParametricLaw, n, d, sd_log: float, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_runs) losses: the law at every run times log-normal noise of sd `sd_log`, seeded."""
    rng = np.random.default_rng(seed)
    return law.loss(n, d)[None, :] * np.exp(sd_log * rng.standard_normal((n_resamples, len(n))))


def summaries(samples: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Percentile intervals and standard deviations of each sampled quantity."""
    intervals = {k: percentile_interval(v) for k, v in samples.items()}
    with np.errstate(over="ignore", invalid="ignore"):  # a few wild draws make a spread infinite: say so
        errors = {k: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for k, v in samples.items()}
    return intervals, errors


def bootstrap_law(fit: CandidateFit | ParametricFit, n_params, tokens, loss, budget_flops: float,
                  n_resamples: int = 1000, seed: int = 0, sd_log: float | None = None,
                  flops_per_token=None) -> dict:
    """Refit `fit`'s form on `n_resamples` seeded draws (module doc); parametric with `sd_log`, else runs.
    N_opt, D_opt of every draw under the FLOP count `flops_per_token` (None: C = 6 N D), as the point's."""
    n, d, loss = _check_points(n_params, tokens, loss)
    if n_resamples < 2:
        raise UserError(f"bootstrap={n_resamples}: use 0 to skip it or at least 2 resamples")
    if isinstance(fit, ParametricFit):
        form, theta, basins = chinchilla_form(), fit.theta, np.asarray(fit.basin_starts, dtype=float).reshape(-1, 5)
    else:
        form, theta, basins = fit.form, fit.theta, np.asarray(fit.basin_starts, dtype=float)
    law = fit.law()
    starts = np.vstack([theta[None, :], basins])
    k = len(starts)
    if sd_log is not None:
        base = HuberLogObjective(n, d, np.repeat(noise_draws(law, n, d, sd_log, n_resamples, seed), k, axis=0))
        unit = f"parametric: the fitted law x log-normal noise, sd(log loss) {sd_log:.4f}"
    else:
        counts = resample_counts(len(n), n_resamples, seed)
        base = HuberLogObjective(n, d, loss, weights=np.repeat(counts, k, axis=0))
        unit = "runs (multinomial resample of the fitted runs)"
    thetas, fun, converged = refit_batched(form, base, starts, n_resamples)
    best = np.argmin(fun, axis=1)
    rows = np.arange(n_resamples)
    params, ok = law_rows(form.full(thetas[rows, best]))
    ok &= converged[rows, best]
    params = params[ok]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):   # a wild draw: its optimum at 0 or inf
        samples = derived_quantities(params, budget_flops, flops_per_token) if ok.sum() else {}
        if samples:   # a draw whose optimum is at 0 or infinity (G under/overflows) is no answer: dropped, counted
            good = np.ones(len(params), dtype=bool)
            for key in ("n_opt", "d_opt"):
                good &= np.isfinite(samples[key]) & (samples[key] > 0)
            ok[np.flatnonzero(ok)[~good]] = False
            params, samples = params[good], {k: v[good] for k, v in samples.items()}
        if samples and len(params):
            n_opt, d_opt = optimum_on_line(law, budget_flops, flops_per_token)
            samples["predicted_loss"] = (params[:, 0] + params[:, 1] / n_opt ** params[:, 3]
                                         + params[:, 2] / d_opt ** params[:, 4])
    intervals, errors = summaries(samples) if ok.sum() >= 2 else ({}, {})
    return {"n_resamples": int(n_resamples), "n_used": int(ok.sum()), "n_dropped": int((~ok).sum()),
            "n_failed": int((~ok).sum()), "seed": int(seed), "unit": unit,
            "interval": "percentile 5-95% (90% bootstrap interval)",
            "predicted_loss_at": "the point fit's (N_opt, D_opt), each draw's law evaluated there",
            "intervals": intervals, "standard_errors": errors,
            "sample_columns": list(SAMPLE_COLUMNS), "samples": params,
            "kept_resamples": np.flatnonzero(ok)}   # which seeded draws the samples are (pipeline/fit/targets.py)
