"""Approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta to the runs (its bootstrap: pipeline/fit/bootstrap.py).

Procedure (Hoffmann et al. 2022, "Chinchilla", sec. 3.3 and App. D.2; corrected as in Besiroglu
et al. 2024, arXiv:2404.10102, sec. 2-3):
* parameters theta = (a, b, e, alpha, beta) with A = exp(a), B = exp(b), E = exp(e);
* prediction in log space by log-sum-exp: log L_hat = LSE(a - alpha log N, b - beta log D, e);
* objective = SUM over runs of Huber_delta(log L_hat - log L), delta = 1e-3 (a sum, not a mean:
  Besiroglu et al. show the mean plus loose tolerances stopped Chinchilla's optimiser early);
* exact analytic gradient; L-BFGS from the grid alpha, beta in {0, .5, ..., 2}, e in {-1, ..., 1},
  a, b in {0, 5, ..., 25} (4500 starts); the lowest objective wins.

Speed: every start runs in one vectorised L-BFGS (pipeline.fit.lbfgs). Starts are pruned by
successive halving (Jamieson & Talwalkar 2016): after a few iterations only the best share goes on,
since the lowest objective is reached from many starts (e.g. 31% of them on Chinchilla's points).
The screening iterations evaluate the objective (pipeline/fit/objective.py) in float32 (`HuberLogObjective.screening`): they only
rank the starts, and float32's exp and log run twice as fast; the survivors then converge in float64.
The best few finish at tight tolerances (`polish`: the same L-BFGS, scipy L-BFGS-B's tolerances). scripts/bench_fit.py
checks the result against a plain loop of scipy over all 4500 starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw, optimum_on_line
from pipeline.fit.lbfgs import minimize_batched
from pipeline.fit.objective import HUBER_DELTA, HuberLogObjective

SAMPLE_COLUMNS = ("E", "A", "B", "alpha", "beta")   # order of the bootstrap samples; theta is (a, b, e, alpha, beta)
SCREEN_ITERS = (15, 40)     # successive halving: after 15 iterations keep 1/8, after 40 more keep 1/4 of those
SCREEN_KEEP = (1 / 8, 1 / 4)
SCREEN_MIN_KEEP = 64
POLISH_STARTS = 8           # distinct best candidates finished at tight tolerances (`polish`)
# The polish's tolerances: those this fit long used with scipy's L-BFGS-B (ftol 1e-15, gtol 1e-12, 20 pairs, 10k
# iterations); batched here, so the fit needs no scipy import (0.3 s of the fit command's start).
POLISH_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "history": 20, "max_iter": 10_000}
MOVED_TOL = 1e-6            # a best solution closer than this to its start "did not move"
LOG_CONSTANT_LIMIT = 700.0  # exp(+-709.8) bounds float64: log E, log A, log B beyond this are no law


class FitError(UserError):
    """The parametric fit produced no trustworthy optimum (did not move or did not converge)."""


def chinchilla_grid() -> np.ndarray:
    """The 4500 starts of Chinchilla App. D.2, rows of (a, b, e, alpha, beta)."""
    exps = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    coefs = np.arange(0.0, 25.01, 5.0)
    mesh = np.meshgrid(coefs, coefs, es, exps, exps, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


@dataclass(frozen=True)
class ParametricFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    converged: bool
    moved: bool
    n_starts: int
    start: tuple            # the grid start the best solution came from, (a, b, e, alpha, beta)
    grad_max: float         # max |gradient| at the optimum
    message: str
    basin_starts: tuple = ()  # grid starts of the best distinct solutions (the bootstrap reuses them)

    @property
    def theta(self) -> np.ndarray:
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

    def law(self, convention: str = "total") -> ParametricLaw:
        return ParametricLaw(self.E, self.A, self.B, self.alpha, self.beta, name="fit", convention=convention,
                             source="Approach 3 fit (Chinchilla App. D.2 procedure)")

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(a=self.beta / (self.alpha + self.beta), b=self.alpha / (self.alpha + self.beta),
                   start=list(self.start), basin_starts=[list(s) for s in self.basin_starts])
        return out


@dataclass(frozen=True)
class Polished:
    x: np.ndarray           # the best polished point
    fun: float
    pick: int               # which of the polished points it came from
    converged: bool
    grad_max: float         # max |gradient| at x
    message: str


def polish(objective, thetas: np.ndarray, n: np.ndarray, d: np.ndarray) -> Polished | None:
    """Finish `thetas` (k, dim) at POLISH_OPTIONS' tolerances and keep the lowest; None when all are non-finite.

    The line search can stall at a kink of the Huber loss even at the optimum (so did scipy's, with
    "ABNORMAL_TERMINATION_IN_LNSRCH"): that counts as converged only when the gradient there is negligible
    against the Huber scale, delta per run times the largest log-feature."""
    res = minimize_batched(objective, np.atleast_2d(thetas), **POLISH_OPTIONS)
    fun = np.where(np.isfinite(res.fun), res.fun, np.inf)
    if not np.isfinite(fun).any():
        return None
    k = int(np.argmin(fun))
    f, g = objective.single(res.theta[k])
    grad_max = float(np.max(np.abs(g)))
    grad_scale = HUBER_DELTA * len(n) * max(np.max(np.log(n)), np.max(np.log(d)))
    message = ("converged" if res.converged[k] else "line search stalled" if res.stalled[k]
               else f"iteration limit ({POLISH_OPTIONS['max_iter']})")
    return Polished(res.theta[k].copy(), f, k, bool(res.converged[k] or grad_max <= 1e-7 * grad_scale),
                    grad_max, message)


def check_constants(what: str, log_e: float, log_a: float, log_b: float) -> None:
    """Raise FitError when E, A or B = exp(log) would leave float64's range (|log| > LOG_CONSTANT_LIMIT).

    The objective works on the logs, so a degenerate optimum (A and alpha running off together) can
    have a finite objective while exp(a) is inf or exp(e) is 0; that is a failed fit, not a law."""
    if not np.all(np.abs([log_e, log_a, log_b]) < LOG_CONSTANT_LIMIT):   # NaN fails too
        raise FitError(f"{what}: the optimum sends E, A or B out of floating-point range (log E, log A, log B = "
                       f"{log_e:.3g}, {log_a:.3g}, {log_b:.3g}): the runs do not pin the law; add runs")


def _check_points(n_params, tokens, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(v, dtype=float) for v in (n_params, tokens, loss)]
    if not (arrays[0].shape == arrays[1].shape == arrays[2].shape) or arrays[0].ndim != 1:
        raise UserError("parametric fit: N, D and loss must be 1-D arrays of the same length")
    if arrays[0].size < 5:
        raise UserError(f"parametric fit needs at least 5 runs (it has 5 parameters), got {arrays[0].size}: add runs")
    if not all(np.all(np.isfinite(v) & (v > 0)) for v in arrays):
        raise UserError("parametric fit: N, D and loss must be positive finite numbers: clean the runs table")
    return arrays[0], arrays[1], arrays[2]


def _screen(objective: HuberLogObjective, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Successive halving over the starts (in float32), the survivors run to convergence in float64; returns
    (final thetas, objectives, index of each start)."""
    index = np.arange(len(starts))
    theta = starts
    ranking = objective.screening()
    for iters, keep in zip(SCREEN_ITERS, SCREEN_KEEP, strict=True):
        res = minimize_batched(ranking, theta, max_iter=iters)
        n_keep = max(SCREEN_MIN_KEEP, int(len(theta) * keep))
        order = np.argsort(np.where(np.isfinite(res.fun), res.fun, np.inf), kind="stable")[:n_keep]
        theta, index = res.theta[order], index[order]
    res = minimize_batched(objective, theta, max_iter=2000)
    return res.theta, res.fun, index


def _distinct_best(theta: np.ndarray, fun: np.ndarray, k: int, tol: float = 1e-3) -> list[int]:
    picked: list[int] = []
    for i in np.argsort(np.where(np.isfinite(fun), fun, np.inf), kind="stable"):
        if not np.isfinite(fun[i]):
            break
        if all(np.max(np.abs(theta[i] - theta[j])) > tol for j in picked):
            picked.append(int(i))
        if len(picked) == k:
            break
    return picked


def fit_parametric(n_params, tokens, loss, starts: np.ndarray | None = None) -> ParametricFit:
    """Chinchilla's Approach 3 fit; raises FitError when the best solution is not a real optimum."""
    n, d, loss = _check_points(n_params, tokens, loss)
    objective = HuberLogObjective(n, d, loss)
    starts = chinchilla_grid() if starts is None else np.asarray(starts, dtype=float)
    theta, fun, index = _screen(objective, starts)
    candidates = _distinct_best(theta, fun, POLISH_STARTS)
    res = polish(objective, theta[candidates], n, d) if candidates else None
    if res is None:
        raise FitError("parametric fit: every start gave a non-finite objective: check the losses are in nats")
    start = starts[index[candidates[res.pick]]]
    moved = bool(np.max(np.abs(res.x - start)) > MOVED_TOL)
    check_constants("parametric fit", res.x[2], res.x[0], res.x[1])
    E, A, B = np.exp(res.x[2]), np.exp(res.x[0]), np.exp(res.x[1])
    fit = ParametricFit(E=float(E), A=float(A), B=float(B), alpha=float(res.x[3]), beta=float(res.x[4]),
                        objective=res.fun, n_points=int(len(n)), converged=res.converged, moved=moved,
                        n_starts=int(len(starts)), start=tuple(float(v) for v in start),
                        grad_max=res.grad_max, message=res.message,
                        basin_starts=tuple(tuple(float(v) for v in starts[index[i]]) for i in candidates))
    if not moved:
        raise FitError(f"parametric fit: the best solution did not move from its start {fit.start}: "
                       "the runs do not constrain the law; add runs at more sizes and budgets")
    if not fit.converged:
        raise FitError(f"parametric fit did not converge ({fit.message}, max |grad| {fit.grad_max:.2g}): "
                       "add runs or check the losses for outliers")
    if not (fit.alpha > 0 and fit.beta > 0):
        raise FitError(f"parametric fit: alpha={fit.alpha:.3g}, beta={fit.beta:.3g}; loss does not fall with "
                       "N and D in these runs: check the runs span enough sizes and token counts")
    return fit


def derived_quantities(params: np.ndarray, budget_flops: float, flops_per_token=None) -> dict[str, np.ndarray]:
    """Per row of (E, A, B, alpha, beta): the law's constants and its optimum at `budget_flops`.

    The allocation is pipeline.fit.laws.optimum_on_line: Chinchilla eq. 4's closed form under C = 6 N D
    (`flops_per_token` None), else argmin L(N, C / F(N)) under that count F.
    """
    out: dict[str, list[float]] = {k: [] for k in ("E", "A", "B", "alpha", "beta", "a", "b", "n_opt", "d_opt",
                                                  "tokens_per_param", "predicted_loss")}
    for E, A, B, alpha, beta in params:
        law = ParametricLaw(E, A, B, alpha, beta)
        # numpy scalars: a wild law's optimum at 0 or inf gives inf/nan here (the bootstrap drops it), not an exception
        n_opt, d_opt = (np.float64(v) for v in optimum_on_line(law, budget_flops, flops_per_token))
        for key, value in zip(out, (E, A, B, alpha, beta, law.a, law.b, n_opt, d_opt, d_opt / n_opt,
                                    law.loss(n_opt, d_opt)), strict=True):
            out[key].append(float(value))
    return {k: np.asarray(v) for k, v in out.items()}
