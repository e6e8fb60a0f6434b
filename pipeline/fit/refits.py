"""Many refits of one law form at once: subsets of a table (backtest folds, outlier rules) and bootstrap draws.

Why: the law selection backtests every candidate on every fold with the outlier rule on and off, and the
rule itself needs a first fit on each fold: 19 fits on one table. Each from Chinchilla's whole grid
(4500 starts, Hoffmann et al. 2022 App. D.2) took 8.8 s on Chinchilla's 240 points. Here the grid
search runs once per form on every run of the table (`TableFits`); each subset is then refitted from
the best distinct solutions that search found (the basins; WARM_BASINS of them) and from the grid
starts that led to them, every subset and start as one problem of one batched L-BFGS
(pipeline.fit.lbfgs), a subset being 0/1 weights on the runs. The best point of each subset is
polished with scipy and checked exactly as a grid fit (pipeline.fit.candidates.finish): it must have
moved from the grid start it came from, converged, and give E, A, B in float range and alpha, beta > 0.
The bootstrap (pipeline/fit/bootstrap.py) refits its draws with the same `refit_batched`. A subset of
the whole table (every run) is the grid fit itself, so the headline is the grid search's answer.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.candidates import (
    CandidateFit,
    Form,
    FormObjective,
    check_size,
    finish,
    grid_search,
)
from pipeline.fit.lbfgs import minimize_batched
from pipeline.fit.parametric import LOG_CONSTANT_LIMIT, HuberLogObjective, _distinct_best
from pipeline.fit.table import RunsTable

WARM_BASINS = 12          # distinct best solutions of the grid search each subset restarts from (and their starts)
WARM_POLISH = 2           # distinct best points of a subset's refit polished with scipy


def refit_batched(form: Form, base: HuberLogObjective, starts: np.ndarray, n_problems: int,
                  max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every problem of `base` (its weights or losses are (n_problems * k, n_runs), problem-major) from each of
    the k `starts`: (thetas (P, k, dim), objectives (P, k), converged (P, k))."""
    k, dim = starts.shape
    res = minimize_batched(FormObjective(form, base), np.tile(starts, (n_problems, 1)), max_iter=max_iter)
    fun = np.where(np.isfinite(res.fun), res.fun, np.inf).reshape(n_problems, k)
    return res.theta.reshape(n_problems, k, dim), fun, res.converged.reshape(n_problems, k)


def law_rows(full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (E, A, B, alpha, beta) from rows of theta (a, b, e, alpha, beta), and which are laws at all:
    A, B strictly inside float range (|log| < LOG_CONSTANT_LIMIT: not 0, not inf), E finite, alpha, beta > 0.
    The one guard every bootstrap draw passes (ParametricLaw refuses A = 0 with an error). E may underflow to
    0: a draw whose floor ran off is a law without an irreducible term, a real part of the spread (dropping
    those draws cut the loss interval's low tail: coverage 80% instead of ~90% on simulated studies)."""
    full = np.asarray(full, dtype=float).reshape(-1, 5)
    logs = full[:, :3]
    ok = np.all(np.isfinite(full), axis=1) & np.all(np.abs(logs[:, :2]) < LOG_CONSTANT_LIMIT, axis=1)
    ok &= (logs[:, 2] < LOG_CONSTANT_LIMIT) & (full[:, 3] > 0) & (full[:, 4] > 0)
    safe = np.where(ok[:, None], logs, 0.0)
    params = np.column_stack([np.exp(safe[:, 2]), np.exp(safe[:, 0]), np.exp(safe[:, 1]), full[:, 3], full[:, 4]])
    return np.where(ok[:, None], params, np.nan), ok


class TableFits:
    """Every fit of the law forms on subsets of one table, sharing one grid search per form (module doc).

    `fits(form, masks)` returns a CandidateFit or the UserError that refused it, per mask (True = fitted);
    results are cached by (form, mask), so the selection and the headline never fit the same subset twice.
    """

    def __init__(self, table: RunsTable):
        self.n, self.d, self.loss = (np.asarray(v, dtype=float) for v in (table.n, table.tokens, table.loss))
        self.convention = table.convention
        self._searches: dict[str, tuple] = {}
        self._done: dict[tuple, CandidateFit | UserError] = {}

    def _search(self, form: Form) -> tuple:
        """(the fit on every run or its error, warm starts, their grid starts) of the form's grid search."""
        if form.name not in self._searches:
            try:
                n, d, loss = check_size(form, self.n, self.d, self.loss)
            except UserError as err:
                self._searches[form.name] = (err, None, None)
                return self._searches[form.name]
            objective = FormObjective(form, HuberLogObjective(n, d, loss))
            theta, fun, origins = grid_search(form, objective)
            try:
                whole: CandidateFit | UserError = finish(form, objective, theta, fun, origins, n, d, self.convention)
            except UserError as err:
                whole = err
            picks = _distinct_best(theta, fun, WARM_BASINS)
            starts = np.vstack([theta[picks], origins[picks]])
            self._searches[form.name] = (whole, starts, np.vstack([origins[picks], origins[picks]]))
        return self._searches[form.name]

    def fit(self, form: Form, mask: np.ndarray | None = None) -> CandidateFit:
        """One subset's fit; raises its UserError."""
        out = self.fits(form, [mask])[0]
        if isinstance(out, UserError):
            raise out
        return out

    def fits(self, form: Form, masks: list[np.ndarray | None]) -> list[CandidateFit | UserError]:
        masks = [np.ones(self.n.size, bool) if m is None else np.asarray(m, dtype=bool) for m in masks]
        keys = [(form.name, m.tobytes()) for m in masks]
        whole, starts, origins = self._search(form)
        todo: dict[tuple, np.ndarray] = {}
        for key, mask in zip(keys, masks, strict=True):
            if key in self._done or key in todo:
                continue
            if mask.all() or starts is None:
                self._done[key] = whole
                continue
            try:
                check_size(form, self.n[mask], self.d[mask], self.loss[mask])
            except UserError as err:
                self._done[key] = err
                continue
            todo[key] = mask
        if todo:
            weights = np.array(list(todo.values()), dtype=float)
            base = HuberLogObjective(self.n, self.d, self.loss, weights=np.repeat(weights, len(starts), axis=0))
            theta, fun, _ = refit_batched(form, base, starts, len(todo))
            for p, (key, mask) in enumerate(todo.items()):
                objective = FormObjective(form, HuberLogObjective(self.n[mask], self.d[mask], self.loss[mask]))
                try:
                    self._done[key] = finish(form, objective, theta[p], fun[p], origins, self.n[mask], self.d[mask],
                                             self.convention, n_polish=WARM_POLISH)
                except UserError as err:
                    self._done[key] = err
        return [self._done[key] for key in keys]
