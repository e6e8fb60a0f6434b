"""L-BFGS run on many independent problems at once, vectorised over the problems in numpy.

Why: Chinchilla's Approach 3 (Hoffmann et al. 2022, App. D.2) starts L-BFGS from a grid of 4500
points, and a bootstrap refits the law on 1000 resamples. Looping `scipy.optimize.minimize` over
them spends most of its time in Python overhead on tiny (5-parameter) problems; here one numpy
call evaluates the objective of every still-active problem, so the per-iteration overhead is paid
once for all of them.

The algorithm is textbook L-BFGS (Nocedal & Wright 2006, Algorithm 7.4, two-loop recursion with
the gamma_k = s'y / y'y initial scaling of eq. 7.20) with a backtracking Armijo line search;
pairs that violate the curvature condition s'y > 0 are not stored, which keeps the implicit
Hessian approximation positive definite without a Wolfe search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from pipeline.fit import worker

# f, g = objective(theta[rows], rows): values (k,) and gradients (k, dim) of the problems `rows`.
BatchedObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

ARMIJO_C1 = 1e-4        # sufficient-decrease constant (Nocedal & Wright, sec. 3.1)
MAX_BACKTRACKS = 40     # 0.5**40 ~ 1e-12: a step that small means the search has stalled
# A batch of at least this many problems runs its second half in the fit command's fit worker, when there is one
# (pipeline/fit/worker.py). Smaller ones (the polish's 8 problems) are not worth the trip: pickling the objective and
# back costs ~1 ms; an iteration over 64 problems about as much.
SPLIT_MIN_PROBLEMS = 128


@dataclass
class BatchedResult:
    theta: np.ndarray       # (n_problems, dim) final points
    fun: np.ndarray         # (n_problems,) objective at theta
    grad: np.ndarray        # (n_problems, dim) gradient at theta
    n_iter: np.ndarray      # (n_problems,) iterations each problem ran
    converged: np.ndarray   # (n_problems,) bool: stopped on the gradient or relative-decrease test
    stalled: np.ndarray     # (n_problems,) bool: the line search found no decrease (usually at a kink)


def _two_loop(grad, s_hist, y_hist, rho, gamma, newest, filled):
    """H_k @ grad for each problem (Nocedal & Wright Algorithm 7.4); slots with rho == 0 are empty.

    Only the `filled` slots written so far are visited: a never-written slot (s = y = rho = 0) subtracts and adds
    zeros (at most a zero's sign could flip), so skipping it saves the first iterations of every minimisation a
    pass each; the fit's whole result stayed byte for byte the same (docs/fit_benchmark.md)."""
    m = s_hist.shape[1]
    order = [(newest - j) % m for j in range(filled)]      # newest to oldest
    q = grad.copy()
    alphas = []
    for slot in order:
        alpha = rho[:, slot] * np.einsum("pk,pk->p", s_hist[:, slot], q)
        q -= alpha[:, None] * y_hist[:, slot]
        alphas.append(alpha)
    r = gamma[:, None] * q
    for slot, alpha in zip(reversed(order), reversed(alphas), strict=True):
        beta = rho[:, slot] * np.einsum("pk,pk->p", y_hist[:, slot], r)
        r += (alpha - beta)[:, None] * s_hist[:, slot]
    return r


def minimize_batched(objective: BatchedObjective, theta0: np.ndarray, **options) -> BatchedResult:
    """Minimise n independent problems from theta0 (n, dim); each stops on its own criteria (`minimize_here`).

    With the fit command's fit worker (pipeline/fit/worker.py) and SPLIT_MIN_PROBLEMS or more problems, the second
    half runs there (on `objective.subset`, the objective of those problems alone) while this process runs the
    first: the problems are independent, and each problem's objective is computed row by row (no product rounds it
    by its neighbours, pipeline/fit/objective.py), so the result is the whole batch's to the bit. An objective
    without `subset` always runs here.
    """
    n = len(theta0)
    helper = worker.active()
    if helper is None or n < SPLIT_MIN_PROBLEMS or not hasattr(objective, "subset"):
        return minimize_here(objective, theta0, **options)
    half = n // 2
    ticket = helper.submit("fit", "pipeline.fit.lbfgs:minimize_here", objective.subset(np.arange(half, n)),
                           np.asarray(theta0)[half:], **options)
    first = minimize_here(objective, np.asarray(theta0)[:half], **options)
    second = helper.result(ticket)
    return BatchedResult(*(np.concatenate([getattr(first, f.name), getattr(second, f.name)]) for f in fields(BatchedResult)))


def minimize_here(objective: BatchedObjective, theta0: np.ndarray, *, max_iter: int = 500,
                  history: int = 10, gtol: float = 1e-10, ftol: float = 1e-13,
                  first_step: float = 1.0) -> BatchedResult:
    """Minimise n independent problems from theta0 (n, dim) in this process; each stops on its own criteria.

    A problem stops when max|grad| <= gtol, when one iteration lowers f by less than
    ftol * max(|f|, tiny) (scipy L-BFGS-B's `factr` test), or when the line search stalls.
    `first_step` is the length of the very first (steepest-descent) step, in parameter units.

    The state of the still-running problems (x, f, g, the curvature pairs) is kept compact, in the order of
    their rows, and shrunk only when some stop: an iteration gathers nothing (gathering 10 pairs per problem
    cost as much as the objective on 4500 starts). Every problem sees the same arithmetic as when each
    iteration gathered its rows, so the results are the same to the bit.
    """
    theta = np.array(theta0, dtype=float)
    n, dim = theta.shape
    fun, grad = objective(theta, np.arange(n))
    n_iter = np.zeros(n, dtype=int)
    converged = np.max(np.abs(grad), axis=1) <= gtol
    stalled = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(~converged & np.isfinite(fun))     # the running problems' rows
    x, f, g = theta[idx], fun[idx], grad[idx]
    s_hist = np.zeros((idx.size, history, dim))
    y_hist = np.zeros((idx.size, history, dim))
    rho = np.zeros((idx.size, history))
    gamma = np.full(idx.size, np.nan)                        # nan = no curvature pair yet

    for it in range(max_iter):
        if idx.size == 0:
            break
        newest = (it - 1) % history
        no_pairs = np.isnan(gamma)
        scale = np.where(no_pairs, first_step / np.maximum(np.linalg.norm(g, axis=1), 1e-300), gamma)
        direction = -_two_loop(g, s_hist, y_hist, rho, scale, newest, min(it, history))
        slope = np.einsum("pk,pk->p", g, direction)
        not_descent = ~(slope < 0)
        if not_descent.any():                                # reset to steepest descent
            direction[not_descent] = -g[not_descent] * scale[not_descent, None]
            slope[not_descent] = np.einsum("pk,pk->p", g[not_descent], direction[not_descent])
            rho[not_descent] = 0.0

        step, f_new, g_new = _line_search(objective, idx, x, f, direction, slope)
        moved = np.isfinite(f_new)
        every = moved.all()
        take = slice(None) if every else moved               # a view, not a gather, when every problem moved
        s = (step[:, None] * direction)[take]
        y = g_new[take] - g[take]
        sy = np.einsum("pk,pk->p", s, y)
        slot = it % history
        good = sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1)
        s_hist[take, slot] = s
        y_hist[take, slot] = y
        rho[take, slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[take] = np.where(good, sy / np.maximum(np.einsum("pk,pk->p", y, y), 1e-300), gamma[take])
        decrease = f[take] - f_new[take]
        x[take] += s
        f[take] = f_new[take]
        g[take] = g_new[take]
        n_iter[idx[take]] += 1
        done = np.zeros(idx.size, dtype=bool)
        done[take] = (np.max(np.abs(g[take]), axis=1) <= gtol) | (decrease <= ftol * np.maximum(np.abs(f[take]), 1e-300))
        stop = done | ~moved
        if stop.any():                                       # write the stopped problems back, keep the rest
            theta[idx[stop]], fun[idx[stop]], grad[idx[stop]] = x[stop], f[stop], g[stop]
            converged[idx[done]] = True
            stalled[idx[~moved]] = True
            keep = ~stop
            idx, x, f, g = idx[keep], x[keep], f[keep], g[keep]
            s_hist, y_hist, rho, gamma = s_hist[keep], y_hist[keep], rho[keep], gamma[keep]
    theta[idx], fun[idx], grad[idx] = x, f, g
    return BatchedResult(theta, fun, grad, n_iter, converged, stalled)


def _line_search(objective, idx, x, f, direction, slope):
    """Backtracking Armijo search along `direction` from each x: (steps, f and g at the accepted points; f = inf
    where no step within MAX_BACKTRACKS halvings decreased f enough)."""
    # The full step first, for every problem at once: 1.0 * direction is direction to the bit, and when every
    # problem accepts it (most iterations) nothing is gathered or scattered
    f_try, g_try = objective(x + direction, idx)
    ok = np.isfinite(f_try) & (f_try <= f + ARMIJO_C1 * slope)
    step = np.ones(idx.size)
    if ok.all():
        return step, f_try, g_try
    f_new = np.where(ok, f_try, np.inf)
    g_new = np.where(ok[:, None], g_try, 0.0)
    pending = np.flatnonzero(~ok)
    step[pending] *= 0.5
    for _ in range(MAX_BACKTRACKS - 1):
        trial = x[pending] + step[pending, None] * direction[pending]
        f_try, g_try = objective(trial, idx[pending])
        ok = np.isfinite(f_try) & (f_try <= f[pending] + ARMIJO_C1 * step[pending] * slope[pending])
        f_new[pending[ok]] = f_try[ok]
        g_new[pending[ok]] = g_try[ok]
        pending = pending[~ok]
        if pending.size == 0:
            break
        step[pending] *= 0.5
    return step, f_new, g_new
