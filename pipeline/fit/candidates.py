"""Law candidates: forms of L(N, D) fitted with the same care, for the selection to choose between.

Li et al. 2025 ("(Mis)fitting scaling laws", arXiv:2502.18969) show that the law's form, the fitted
range and the optimiser move an extrapolation more than the noise does, so the tool fits several
forms and lets their predictions of held-out larger runs choose (pipeline/fit/selection.py).

Every candidate is the Chinchilla family L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2)
with some parameters constrained, so each fitted law is a `ParametricLaw` (vectorised `.loss(n, d)`,
closed-form allocation, `to_dict()`), and one fitting routine serves them all:

* `chinchilla`  -- E, A, B, alpha, beta all free (Approach 3 itself, pipeline/fit/parametric.py).
* `fixed_E`     -- E given by the user (`law_fit.fixed_E`), e.g. the entropy floor of the data or a
                   value from a larger study; four free parameters. A pilot study at small compute
                   constrains E poorly and E sets the extrapolated loss level.
* `overtrain`   -- alpha = beta (Gadre et al. 2024, "Language models scale reliably with over-training
                   and on downstream tasks", eq. 4: L(C, M) = E + (a M^eta + b M^-eta) C^-eta with
                   M = D/N tokens per parameter is exactly this form under C = 6ND). They fit it to
                   runs trained up to 640 tokens per parameter; tying the exponents keeps the
                   reducible loss a power law in C at every token multiplier, which is what makes
                   over-trained runs extrapolate.

Muennighoff et al. 2023's repeated-data term needs the runs' unique-token counts (epochs > 1); the
runs table does not carry them, so that form is not offered (the decision's data-constrained plan
applies it to the chosen law, pipeline/decide/tradeoffs.py).

Fitting, the same for every form (Chinchilla App. D.2 as corrected by Besiroglu et al. 2024): Huber
(delta 1e-3) on log residuals, summed; the free parameters are a linear map of the full
theta = (a, b, e, alpha, beta) (A = e^a, B = e^b, E = e^e), so the objective and its exact gradient
are Approach 3's (the gradient is mapped back); multi-start from the Chinchilla grid projected on
the free parameters; successive halving, then scipy L-BFGS-B polish; bootstrap over runs from the
full-data optimum and the best basins' starts; failed resamples counted, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.lbfgs import minimize_batched
from pipeline.fit.parametric import (
    HUBER_DELTA,
    MOVED_TOL,
    POLISH_STARTS,
    FitError,
    HuberLogObjective,
    _check_points,
    _distinct_best,
    _screen,
    _summaries,
    check_constants,
    chinchilla_grid,
    derived_quantities,
)

FULL_NAMES = ("a", "b", "e", "alpha", "beta")   # theta of pipeline.fit.parametric: A = e^a, B = e^b, E = e^e


@dataclass(frozen=True)
class Form:
    """A candidate form: theta_full = matrix @ theta_free + offset (theta_full as FULL_NAMES)."""

    name: str
    free: tuple[str, ...]
    matrix: np.ndarray = field(repr=False)       # (5, k)
    offset: np.ndarray = field(repr=False)       # (5,)
    source: str = ""

    @property
    def n_free(self) -> int:
        return len(self.free)

    def full(self, theta_free: np.ndarray) -> np.ndarray:
        return np.asarray(theta_free, dtype=float) @ self.matrix.T + self.offset

    def starts(self) -> np.ndarray:
        """The Chinchilla App. D.2 grid projected on the free parameters (duplicates removed)."""
        grid = chinchilla_grid()
        cols = [FULL_NAMES.index(self.free_source(name)) for name in self.free]
        return np.unique(grid[:, cols], axis=0)

    @staticmethod
    def free_source(name: str) -> str:
        return {"eta": "alpha"}.get(name, name)

    def law(self, theta_free: np.ndarray, convention: str = "total", n_runs: int | None = None) -> ParametricLaw:
        a, b, e, alpha, beta = self.full(theta_free)
        where = f" to {n_runs} runs" if n_runs else ""
        return ParametricLaw(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta),
                             name=self.name, convention=convention, source=f"candidate {self.name} fitted{where}; {self.source}")


def chinchilla_form() -> Form:
    return Form("chinchilla", FULL_NAMES, np.eye(5), np.zeros(5),
                "L = E + A/N^alpha + B/D^beta, all free (Hoffmann et al. 2022, eq. 2; Approach 3)")


def fixed_e_form(E: float) -> Form:
    if not (np.isfinite(E) and E > 0):
        raise UserError(f"law_fit.fixed_E={E!r} must be a positive loss in nats (the irreducible term)")
    m = np.zeros((5, 4))
    m[0, 0] = m[1, 1] = m[3, 2] = m[4, 3] = 1.0
    offset = np.zeros(5)
    offset[2] = np.log(E)
    return Form(f"fixed_E={E:g}", ("a", "b", "alpha", "beta"), m, offset,
                f"E = {E:g} fixed by the user (law_fit.fixed_E), A, B, alpha, beta free")


def overtrain_form() -> Form:
    m = np.zeros((5, 4))
    m[0, 0] = m[1, 1] = m[2, 2] = m[3, 3] = m[4, 3] = 1.0
    return Form("overtrain", ("a", "b", "e", "eta"), m, np.zeros(5),
                "alpha = beta = eta (Gadre et al. 2024, eq. 4: L = E + (a M^eta + b M^-eta) C^-eta, M = D/N)")


def candidate_forms(fixed_E: float | None = None) -> list[Form]:
    forms = [chinchilla_form(), overtrain_form()]
    if fixed_E is not None:
        forms.append(fixed_e_form(float(fixed_E)))
    return forms


CANDIDATE_NAMES = ("chinchilla", "overtrain", "fixed_E")


class FormObjective:
    """Approach 3's batched Huber objective on the free parameters of `form` (gradient mapped back)."""

    def __init__(self, form: Form, base: HuberLogObjective):
        self.form, self.base = form, base

    def __call__(self, theta: np.ndarray, rows: np.ndarray):
        f, g = self.base(self.form.full(theta), rows)
        return f, g @ self.form.matrix

    def single(self, theta: np.ndarray, row: int = 0):
        f, g = self(np.asarray(theta, dtype=float)[None, :], np.array([row]))
        return float(f[0]), g[0]


@dataclass(frozen=True)
class CandidateFit:
    form: Form
    theta: np.ndarray          # free parameters at the optimum
    objective: float
    n_points: int
    basin_starts: np.ndarray   # free-parameter grid starts of the best distinct solutions
    converged: bool
    convention: str = "total"

    def law(self) -> ParametricLaw:
        return self.form.law(self.theta, self.convention, self.n_points)

    def to_dict(self) -> dict:
        return {"candidate": self.form.name, "free": list(self.form.free), "objective": self.objective,
                "n_points": self.n_points, "converged": self.converged, "source": self.form.source,
                **self.law().to_dict()}


def fit_candidate(form: Form, n_params, tokens, loss, convention: str = "total") -> CandidateFit:
    """Fit one form (see the module doc); raises FitError like fit_parametric when it cannot."""
    n, d, loss = _check_points(n_params, tokens, loss)
    if n.size < form.n_free + 1:
        raise UserError(f"candidate {form.name}: {n.size} runs for {form.n_free} parameters: add runs")
    objective = FormObjective(form, HuberLogObjective(n, d, loss))
    starts = form.starts()
    theta, fun, index = _screen(objective, starts)
    best = None
    picks = _distinct_best(theta, fun, POLISH_STARTS)
    for i in picks:
        res = minimize(objective.single, theta[i], jac=True, method="L-BFGS-B",
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000, "maxcor": 20})
        if best is None or res.fun < best[0].fun:
            best = (res, index[i])
    if best is None:
        raise FitError(f"candidate {form.name}: every start gave a non-finite objective")
    res, start_index = best
    f, g = objective.single(res.x)
    grad_scale = HUBER_DELTA * len(n) * max(np.max(np.log(n)), np.max(np.log(d)))
    converged = bool(res.success or np.max(np.abs(g)) <= 1e-7 * grad_scale)
    if not np.max(np.abs(res.x - starts[start_index])) > MOVED_TOL:
        raise FitError(f"candidate {form.name}: the best solution did not move from its start: add runs")
    if not converged:
        raise FitError(f"candidate {form.name} did not converge ({res.message})")
    full = form.full(res.x)
    check_constants(f"candidate {form.name}", full[2], full[0], full[1])
    if not (full[3] > 0 and full[4] > 0):
        raise FitError(f"candidate {form.name}: alpha={full[3]:.3g}, beta={full[4]:.3g}: loss does not fall with N and D")
    return CandidateFit(form, np.asarray(res.x, dtype=float), f, int(n.size), starts[index[picks]], converged,
                        convention)


def bootstrap_candidate(fit: CandidateFit, n_params, tokens, loss, budget_flops: float,
                        n_resamples: int, seed: int = 0, sd_log: float | None = None) -> dict:
    """Refit `fit.form` on `n_resamples` bootstrap samples, batched; percentile 5-95% intervals.

    With `sd_log` (the noise model, pipeline/fit/noise.py): parametric -- every run's loss redrawn as
    the fitted law times log-normal noise of that sd (the calibrated choice for pilot studies, see
    pipeline.fit.parametric.bootstrap_parametric_noise and docs/calibration.md). Without it: runs
    resampled (multinomial counts = a weighted objective). Starts at the full-data optimum and the
    best basins' grid starts; a resample whose best point did not converge, has alpha or beta <= 0
    or non-finite constants counts as failed (n_failed), never dropped silently.
    """
    n, d, loss = _check_points(n_params, tokens, loss)
    rng = np.random.default_rng(seed)
    starts = np.vstack([fit.theta[None, :], fit.basin_starts])
    k = len(starts)
    if sd_log is not None:
        redrawn = fit.law().loss(n, d)[None, :] * np.exp(sd_log * rng.standard_normal((n_resamples, n.size)))
        base = HuberLogObjective(n, d, np.repeat(redrawn, k, axis=0))
        unit = f"parametric: the fitted law x log-normal noise, sd(log loss) {sd_log:.4f}"
    else:
        counts = rng.multinomial(len(n), np.full(len(n), 1.0 / len(n)), size=n_resamples).astype(float)
        base = HuberLogObjective(n, d, loss, weights=np.repeat(counts, k, axis=0))
        unit = "runs (multinomial resample of the fitted runs)"
    objective = FormObjective(fit.form, base)
    res = minimize_batched(objective, np.tile(starts, (n_resamples, 1)), max_iter=2000)
    fun = np.where(np.isfinite(res.fun), res.fun, np.inf).reshape(n_resamples, k)
    pick = np.arange(n_resamples) * k + np.argmin(fun, axis=1)
    full = fit.form.full(res.theta[pick])
    with np.errstate(over="ignore"):
        params = np.column_stack([np.exp(full[:, 2]), np.exp(full[:, 0]), np.exp(full[:, 1]), full[:, 3], full[:, 4]])
    ok = res.converged[pick] & (full[:, 3] > 0) & (full[:, 4] > 0) & np.all(np.isfinite(params), axis=1)
    samples = derived_quantities(params[ok], budget_flops) if ok.sum() else {}
    intervals, errors = _summaries(samples) if ok.sum() >= 2 else ({}, {})
    return {"n_resamples": int(n_resamples), "n_used": int(ok.sum()), "n_failed": int((~ok).sum()),
            "n_dropped": int((~ok).sum()), "seed": int(seed), "unit": unit,
            "interval": "percentile 5-95% (90% bootstrap interval)",
            "intervals": intervals, "standard_errors": errors,
            "sample_columns": ["E", "A", "B", "alpha", "beta"], "samples": params[ok]}
