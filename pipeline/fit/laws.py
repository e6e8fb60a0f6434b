"""Scaling-law forms, the published laws, and the closed-form compute-optimal allocation.

Parametric form (Hoffmann et al. 2022, "Chinchilla", eq. 2):

    L(N, D) = E + A / N**alpha + B / D**beta

Compute-optimal allocation under C = k * N * D (k = 6 training FLOPs per parameter per token,
Kaplan et al. 2020 sec. 2.1), Chinchilla eq. 4 / Appendix D.2:

    G     = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N_opt = G * (C / k) ** a,   a = beta  / (alpha + beta)
    D_opt = (C / k) / N_opt,    b = alpha / (alpha + beta)

N is whatever parameter-count convention the law was fitted in; the published laws below say
theirs. Kaplan et al. 2020 is a different family (non-embedding N, fixed schedules) and is kept
only as a comparison: its compute-efficient frontier N_opt = 1.3e9 * (C / PF-day)**0.73.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.errors import UserError

COARSE_POINTS = 161         # minimise_log: 20 per decade over 8 decades, 12% steps
FINE_POINTS = 41            # within the bracket of the coarse minimum: 0.6% steps, then a parabola
SEARCH_DECADES = 4.0        # optimum_on_line searches N within 10^+-4 of sqrt(C / 6)
TRAIN_FLOPS_PER_PARAM_TOKEN = 6.0  # forward 2 + backward 4 multiply-adds-as-2 per parameter per token
PF_DAY_FLOPS = 1e15 * 86_400.0


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla eq. 2); N in `convention` parameters."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "fit"
    convention: str = "total"
    source: str = ""

    def __post_init__(self):
        for key in ("A", "B", "alpha", "beta"):
            value = getattr(self, key)
            if not np.isfinite(value) or value <= 0:
                raise UserError(f"law {self.name}: {key}={value} must be a positive finite number")
        if not np.isfinite(self.E):
            raise UserError(f"law {self.name}: E={self.E} must be finite")

    # --- predictions -------------------------------------------------------------------------
    def loss(self, n_params, tokens):
        n = np.asarray(n_params, dtype=float)
        d = np.asarray(tokens, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def a(self) -> float:
        """Exponent of N_opt in C (Chinchilla Table 2's `a`)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C (Chinchilla Table 2's `b`)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimal_allocation(self, budget_flops, flops_per_param_token: float = TRAIN_FLOPS_PER_PARAM_TOKEN):
        """(N_opt, D_opt) minimising L subject to k*N*D = C (Chinchilla eq. 4, App. D.2)."""
        c = np.asarray(budget_flops, dtype=float) / flops_per_param_token
        n_opt = self.G * c**self.a
        return n_opt, c / n_opt

    def loss_at_budget(self, n_params, budget_flops, flops_per_param_token: float = TRAIN_FLOPS_PER_PARAM_TOKEN):
        """Loss of a model of size N trained on the rest of budget C (D = C / (k N))."""
        n = np.asarray(n_params, dtype=float)
        return self.loss(n, np.asarray(budget_flops, dtype=float) / (flops_per_param_token * n))

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(a=self.a, b=self.b, G=self.G)
        return out


@dataclass(frozen=True)
class KaplanFrontier:
    """Kaplan et al. 2020 compute-efficient frontier, eq. 1.7 / Fig. 14: N_opt = N0 (C/PF-day)^0.73.

    N counts non-embedding parameters and the fits used a fixed LR schedule, which biases the
    exponent towards bigger models (Porian et al. 2024 reconcile it with Chinchilla's).
    """

    n0: float = 1.3e9
    exponent: float = 0.73
    name: str = "kaplan"
    convention: str = "non_embedding"
    source: str = "Kaplan et al. 2020, eq. 1.7 (N_opt = 1.3e9 * (C / PF-day)^0.73)"

    def optimal_allocation(self, budget_flops, flops_per_param_token: float = TRAIN_FLOPS_PER_PARAM_TOKEN):
        c = np.asarray(budget_flops, dtype=float)
        n_opt = self.n0 * (c / PF_DAY_FLOPS) ** self.exponent
        return n_opt, c / (flops_per_param_token * n_opt)

    def to_dict(self) -> dict:
        return asdict(self)


PUBLISHED_LAWS: dict[str, ParametricLaw] = {
    # Hoffmann et al. 2022, eq. 10 (as printed, rounded).
    "chinchilla": ParametricLaw(1.69, 406.4, 410.7, 0.34, 0.28, name="chinchilla",
                                source="Hoffmann et al. 2022, eq. 10 (rounded as published)"),
    # The unrounded Approach-3 constants recovered by Besiroglu et al. 2024 (Epoch AI), sec. 2.
    "chinchilla_unrounded": ParametricLaw(1.6934, 406.4, 410.7, 0.33917, 0.28491, name="chinchilla_unrounded",
                                          source="Hoffmann et al. 2022 Approach 3, unrounded by Besiroglu et al. 2024"),
    # Besiroglu et al. 2024, Table 1: Chinchilla's own points re-fitted (~20 tokens per parameter).
    "epoch": ParametricLaw(1.8172, 482.01, 2085.43, 0.3478, 0.3658, name="epoch",
                           source="Besiroglu et al. 2024 (arXiv:2404.10102), Table 1"),
}
KAPLAN = KaplanFrontier()


def published_law(name: str) -> ParametricLaw | KaplanFrontier:
    if name == "kaplan":
        return KAPLAN
    if name not in PUBLISHED_LAWS:
        known = ", ".join([*PUBLISHED_LAWS, "kaplan"])
        raise UserError(f"unknown law '{name}': use one of {known}, or leave `law` unset to fit the runs")
    return PUBLISHED_LAWS[name]


def tokens_per_param_rule(budget_flops, tokens_per_param: float = 20.0,
                          flops_per_param_token: float = TRAIN_FLOPS_PER_PARAM_TOKEN):
    """The '20 tokens per parameter' rule of thumb (Chinchilla Table 3): D = r N, C = k N D."""
    n_opt = np.sqrt(np.asarray(budget_flops, dtype=float) / (flops_per_param_token * tokens_per_param))
    return n_opt, tokens_per_param * n_opt


# --- the one 1-D minimiser (the fit's allocations under a count, and every search of the decision) ----------
def minimise_log(objective: Callable[[np.ndarray], np.ndarray], lo: float, hi: float,
                 interior_only: bool = False) -> float | None:
    """argmin over N in [lo, hi] of a vectorised objective(N), searched in log N: the decision's one 1-D minimiser.

    Coarse log grid, then a finer grid between the coarse minimum's neighbours, then the vertex of the
    parabola through the best fine point and its neighbours (kept only if it lies between them). Non-finite
    values count as +inf. `interior_only`: None when the coarse minimum is at an edge (the objective keeps
    falling out of the range, e.g. no compute-optimal size); otherwise an edge minimum is refined like any
    other (e.g. a binding size cap). None as well when no value is finite.
    """
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), COARSE_POINTS))
    values = _as_finite(objective(grid))
    if not np.isfinite(values).any():
        return None
    i = int(np.argmin(values))
    if interior_only and (i == 0 or i == len(grid) - 1):
        return None
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    fine = np.exp(np.linspace(math.log(left), math.log(right), FINE_POINTS))
    fvals = _as_finite(objective(fine))
    j = min(max(int(np.argmin(fvals)), 1), FINE_POINTS - 2)
    x = np.log(fine[j - 1:j + 2])
    y = fvals[j - 1:j + 2]
    denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
    if np.all(np.isfinite(y)) and denom != 0:
        a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / denom
        b = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / denom
        if a > 0:
            vertex = -b / (2 * a)
            if x[0] <= vertex <= x[2]:
                return float(math.exp(vertex))
    return float(fine[int(np.argmin(fvals))])


def _as_finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.inf)


def elementwise(func: Callable[[float], float]) -> Callable[[np.ndarray], np.ndarray]:
    """A scalar function of N as the vectorised objective minimise_log takes."""
    return lambda ns: np.array([func(float(n)) for n in ns])


def optimum_on_line(law: ParametricLaw, budget_flops: float, flops_per_token: Callable | None = None) -> tuple:
    """(N_opt, D_opt) minimising L(N, C / F(N)): Chinchilla eq. 4's closed form when F is None (C = 6 N D),
    else numerically in log N (minimise_log) with D = C / F(N); (nan, nan) when the minimum is at the search's edge."""
    if flops_per_token is None:
        return tuple(float(v) for v in law.optimal_allocation(budget_flops))
    centre = math.sqrt(budget_flops / TRAIN_FLOPS_PER_PARAM_TOKEN)
    with np.errstate(all="ignore"):
        n = minimise_log(lambda x: law.loss(x, budget_flops / flops_per_token(x)),
                         centre * 10.0 ** -SEARCH_DECADES, centre * 10.0 ** SEARCH_DECADES, interior_only=True)
    if n is None:
        return float("nan"), float("nan")
    return n, float(budget_flops / flops_per_token(np.asarray(n)))
