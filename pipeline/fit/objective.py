"""Approach 3's objective: the sum over runs of Huber(log L_hat - log L) and its exact gradient, for many thetas at once.

theta = (a, b, e, alpha, beta) with A = exp(a), B = exp(b), E = exp(e); log L_hat = LSE(a - alpha log N,
b - beta log D, e); delta = 1e-3 (Hoffmann et al. 2022 App. D.2, as corrected by Besiroglu et al. 2024; the fit
itself: pipeline/fit/parametric.py). Every problem of a batched L-BFGS (pipeline/fit/lbfgs.py) is one theta, so
one call evaluates thousands of starts in a few numpy passes.
"""

from __future__ import annotations

import contextlib

import numpy as np

HUBER_DELTA = 1e-3
# Problems per numpy pass: about PASS_ELEMENTS values per array, in workspaces reused from pass to pass. Larger
# passes mean fewer Python-level numpy calls: one objective on 4500 starts took 14 ms (float64) and 10 ms
# (float32) in passes of 8192 values, 10 and 6 ms in passes of 65536.
PASS_ELEMENTS = 65536
# The objective takes exp of log(A/N^alpha), log(B/D^beta) and log E with their exponents clipped to +-300:
# exp stays off its overflow and denormal slow path (35x slower), and no law a loss of nats could fit has a
# term beyond e^+-300 (1e+-130); a wild line-search trial there just gets a huge residual and is rejected.
EXP_LIMIT = 300.0
# float32 (the screening passes) overflows at exp(88.7): its terms are clipped to e^+-80 instead. A loss of nats
# is fitted by terms far inside that; a trial beyond it gets a huge residual either way.
SCREEN_EXP_LIMIT = 80.0


def _rebuild(inputs: tuple, delta: float, dtype: str) -> HuberLogObjective:
    return HuberLogObjective(*inputs, delta=delta, dtype=np.dtype(dtype))


class HuberLogObjective:
    """Sum of Huber(log L_hat - log L) and its exact gradient, for many thetas at once.

    `weights` (n_problems, n_runs) gives each problem its own run multiplicities (a bootstrap
    resample is a vector of counts); None weighs every run once for every problem. `loss` may also be
    (n_problems, n_runs): each problem its own losses (a parametric bootstrap redraws them).
    """

    def __init__(self, n_params, tokens, loss, weights: np.ndarray | None = None, delta: float = HUBER_DELTA,
                 dtype=np.float64):
        self.dtype = np.dtype(dtype)
        self.log_n = np.log(np.asarray(n_params, dtype=float)).astype(self.dtype)
        self.log_d = np.log(np.asarray(tokens, dtype=float)).astype(self.dtype)
        self.log_loss = np.log(np.asarray(loss, dtype=float)).astype(self.dtype)
        self.per_problem = self.log_loss.ndim == 2
        self.weights = None if weights is None else np.asarray(weights).astype(self.dtype, copy=False)
        self.delta = delta
        self.exp_limit = EXP_LIMIT if self.dtype == np.float64 else SCREEN_EXP_LIMIT
        self._neg_log_n, self._neg_log_d = -self.log_n, -self.log_d
        self._work: np.ndarray | None = None
        self._inputs = (n_params, tokens, loss, weights)

    def screening(self) -> HuberLogObjective:
        """The same objective in float32, for the passes that only rank starts (module doc)."""
        return HuberLogObjective(*self._inputs, delta=self.delta, dtype=np.float32)

    def subset(self, rows: np.ndarray) -> HuberLogObjective:
        """The objective of problems `rows` alone, numbered from 0 (minimize_batched hands half a batch to the
        fit command's fit worker with it); problems that share the runs' weights and losses share all."""
        n_params, tokens, loss, weights = self._inputs

        def pick(per_problem):
            return per_problem if per_problem is None or np.ndim(per_problem) < 2 else np.asarray(per_problem)[rows]
        return HuberLogObjective(n_params, tokens, pick(loss), weights=pick(weights), delta=self.delta, dtype=self.dtype)

    def __reduce__(self):
        """Pickled as its inputs (to the fit worker): not the float copies, not the workspace."""
        return _rebuild, (self._inputs, self.delta, self.dtype.str)

    def _workspace(self, rows: int) -> np.ndarray:
        """Six (rows, n_runs) arrays reused by every chunk: fresh temporaries per numpy call cost an allocation each
        (and page faults above glibc's mmap threshold)."""
        if self._work is None or self._work.shape[1] < rows:
            self._work = np.empty((6, rows, len(self.log_n)), dtype=self.dtype)
        return self._work[:, :rows]

    def _chunk(self, theta: np.ndarray, weights: np.ndarray | None, log_loss: np.ndarray | None,
               work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = theta.astype(self.dtype, copy=False)
        a, b, e, alpha, beta = theta.T[:, :, None]                # (k, 1) each
        exp_n, exp_d, total, resid, clipped, huber = work
        lo, hi = -self.exp_limit, self.exp_limit
        # exp of each term's exponent clipped to +-EXP_LIMIT (see its comment): no max-subtraction pass needed.
        # clip gives min(max(x, lo), hi) bit for bit (NaN stays NaN) in one pass instead of two.
        np.multiply(alpha, self._neg_log_n, out=exp_n)            # log(A / N^alpha), then its exp, in place
        exp_n += a
        np.exp(exp_n.clip(lo, hi, out=exp_n), out=exp_n)
        np.multiply(beta, self._neg_log_d, out=exp_d)             # log(B / D^beta)
        exp_d += b
        np.exp(exp_d.clip(lo, hi, out=exp_d), out=exp_d)
        exp_e = np.exp(e.clip(lo, hi))                         # (k, 1)
        np.add(exp_n, exp_d, out=total)
        total += exp_e
        np.log(total, out=resid)
        resid -= self.log_loss if log_loss is None else log_loss
        resid.clip(-self.delta, self.delta, out=clipped)
        np.multiply(clipped, 0.5, out=huber)                       # Huber = c (r - c/2), c = clip(r, -delta, delta)
        np.subtract(resid, huber, out=huber)
        huber *= clipped
        dres = clipped                                             # d huber / d resid = c, times d LSE / d t_i = exp_i / total
        dres /= total
        if weights is not None:
            huber *= weights
            dres *= weights
        exp_n *= dres                                              # now the gradient terms of a and alpha
        exp_d *= dres
        grad = np.empty((len(theta), 5))
        grad[:, 0], grad[:, 1] = exp_n.sum(1), exp_d.sum(1)
        grad[:, 2] = dres.sum(1) * exp_e[:, 0]
        # Each row's product with log N (log D) as its own dot product (np.vecdot: numpy >= 2.0), not one gemv over the
        # rows: gemv rounds a row by its place in the call (among the last rows mod 4 or not), which made a problem's
        # gradient depend on the problems beside it. So a problem follows the same path in any batch, in either half
        # of one (pipeline/fit/lbfgs.py), bit for bit; and one call is faster than gemv in blocks (docs/fit_benchmark.md).
        grad[:, 3] = -np.vecdot(exp_n, self.log_n)
        grad[:, 4] = -np.vecdot(exp_d, self.log_d)
        return huber.sum(1, dtype=np.float64), grad

    def __call__(self, theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.empty(len(theta))
        g = np.empty((len(theta), 5))
        step = max(1, PASS_ELEMENTS // len(self.log_n))
        work = self._workspace(min(step, len(theta)))
        # float32 overflows on a wild line-search trial (alpha * log N past 3.4e38) where float64 does not: the
        # trial's objective is then non-finite and the line search rejects it, as it rejects any such trial
        quiet = np.errstate(over="ignore", invalid="ignore") if self.dtype != np.float64 else contextlib.nullcontext()
        with quiet:
            for lo in range(0, len(theta), step):
                hi = lo + step
                k = len(theta[lo:hi])
                w = None if self.weights is None else self.weights[rows[lo:hi]]
                f[lo:hi], g[lo:hi] = self._chunk(theta[lo:hi], w,
                                                 self.log_loss[rows[lo:hi]] if self.per_problem else None, work[:, :k])
        return f, g

    def single(self, theta: np.ndarray, row: int = 0) -> tuple[float, np.ndarray]:
        """One problem, in scipy's (f, grad) form."""
        f, g = self(np.asarray(theta, dtype=float)[None, :], np.array([row]))
        return float(f[0]), g[0]
