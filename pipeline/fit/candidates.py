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
the free parameters; successive halving, then scipy L-BFGS-B polish. Refits on subsets of the runs
(backtest folds, the outlier rule) and the bootstrap start from the grid search's basins instead
(pipeline/fit/refits.py, pipeline/fit/bootstrap.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import UserError
from pipeline.fit.laws import ParametricLaw
from pipeline.fit.parametric import (
    MOVED_TOL,
    POLISH_STARTS,
    FitError,
    HuberLogObjective,
    _check_points,
    _distinct_best,
    _screen,
    check_constants,
    chinchilla_grid,
    polish,
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

    def screening(self) -> FormObjective:
        return FormObjective(self.form, self.base.screening())

    def subset(self, rows: np.ndarray) -> FormObjective:
        return FormObjective(self.form, self.base.subset(rows))

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
                "n_points": self.n_points, "converged": self.converged, "moved": True, "source": self.form.source,
                **self.law().to_dict()}


def grid_search(form: Form, objective: FormObjective) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chinchilla's grid projected on the form, screened by successive halving: (thetas, objectives, the
    grid start of each), every survivor run to convergence (pipeline.fit.parametric._screen)."""
    starts = form.starts()
    theta, fun, index = _screen(objective, starts)
    return theta, fun, starts[index]


def finish(form: Form, objective, theta: np.ndarray, fun: np.ndarray, origins: np.ndarray, n: np.ndarray,
           d: np.ndarray, convention: str = "total", n_polish: int = POLISH_STARTS) -> CandidateFit:
    """The best of batched L-BFGS results, polished and checked: finished at tight tolerances from the `n_polish`
    best distinct points (pipeline.fit.parametric.polish), then the checks every fit passes (it moved from its grid
    start `origins`, converged, E, A, B in float range, alpha, beta > 0); raises FitError otherwise."""
    picks = _distinct_best(theta, fun, n_polish)
    res = polish(objective, theta[picks], n, d) if picks else None
    if res is None:
        raise FitError(f"candidate {form.name}: every start gave a non-finite objective")
    if not np.max(np.abs(res.x - origins[picks[res.pick]])) > MOVED_TOL:
        raise FitError(f"candidate {form.name}: the best solution did not move from its start: add runs")
    if not res.converged:
        raise FitError(f"candidate {form.name} did not converge ({res.message})")
    full = form.full(res.x)
    check_constants(f"candidate {form.name}", full[2], full[0], full[1])
    if not (full[3] > 0 and full[4] > 0):
        raise FitError(f"candidate {form.name}: alpha={full[3]:.3g}, beta={full[4]:.3g}: loss does not fall with N and D")
    return CandidateFit(form, np.asarray(res.x, dtype=float), res.fun, int(n.size), origins[picks], res.converged,
                        convention)


def check_size(form: Form, n_params, tokens, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs as arrays, refused (UserError) when they are not positive finite or too few for the form."""
    n, d, loss = _check_points(n_params, tokens, loss)
    if n.size < form.n_free + 1:
        raise UserError(f"candidate {form.name}: {n.size} runs for {form.n_free} parameters: add runs")
    return n, d, loss


def fit_candidate(form: Form, n_params, tokens, loss, convention: str = "total") -> CandidateFit:
    """Fit one form from its whole grid (see the module doc); raises FitError like fit_parametric when it cannot."""
    n, d, loss = check_size(form, n_params, tokens, loss)
    objective = FormObjective(form, HuberLogObjective(n, d, loss))
    theta, fun, origins = grid_search(form, objective)
    return finish(form, objective, theta, fun, origins, n, d, convention)
