"""The compute-optimal allocation under ONE FLOP count: the count the pilots' budgets and the full run use.

Given a loss law L(N, D) and a training budget C, the allocation is

    N_opt = argmin_N  L(N, C / F(N)),     D_opt = C / F(N_opt)

where F(N) is the training FLOPs per token of a model of N parameters (`FlopCount`):

* "exact": 3 x the forward count of Hoffmann et al. 2022 (Chinchilla), App. F -- attention at the run's
  sequence length, embedding and logits included -- of the family's shape at N (models/sizing.py), at the
  pilots' vocabulary and sequence length. This is the count the pilots' IsoFLOP budgets and records use
  (pipeline/plan/runspec.py), so the law's optimum, the launched run and the pilots agree on what C is.
  Between the family's shapes F(N) = N * rho(N), with rho = exact FLOPs per token / N of the family's
  preferred shape at each width of the grid, interpolated in log N (smooth enough to minimise over); the
  launched shape is then picked among the grid's real shapes around N_opt (`pick_shape`), with its own
  exact count.
* "palm": the PaLM model FLOPs per token (Chowdhery et al. 2022, App. B: 6 N_matmul + 12 L H Q T) of the family's
  shape at N, at the FULL RUN's vocabulary and sequence length: the count the launch's time is stated in
  (pipeline/train/dry_run.py: PaLM FLOPs / (world x peak x MFU); MFU is defined with it). Used where the decision
  has no pilots of its own to agree with (a published law, runs imported without a shape): an Approach-3 law
  L(N, D) does not depend on the count it was fitted with, only the budget line does, and that line is the full
  run's, so a budget of "8 GPUs for 14 days" launches a run the dry run times at 14 days. The exact count would
  fall short of it by the embedding lookup it charges as a one-hot matmul (6 V d per token: 3.4% at 5.5B
  parameters, V = 50,257), which no GPU spends.
* "6nd": F(N) = 6 N (Kaplan et al. 2020 sec. 2.1), for which the argmin is Chinchilla's closed form
  (eq. 4). Kept as the default of the functions called without a count (tradeoffs, sample intervals), and it is
  the count inside Kaplan's frontier N_opt(C) (read at C = 6 N D, the only count it has; its tokens still follow
  the full run's PaLM line).

The minimisation is numeric (pipeline/fit/laws.py: minimise_log, the tool's one 1-D minimiser: a log-spaced
grid, then a parabola through the best three points of a finer grid), so it takes ANY law with a vectorised `.loss(n, d)`, and any `flops_per_token(n)`; `sample_intervals`
applies exactly the same procedure to every bootstrap sample of the law.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from models.accounting import count_params, palm_mfu_flops_per_token, training_flops_per_token
from models.shape import ModelShape
from models.sizing import (
    SizingError,
    chain,
    family_depth,
    family_shape,
    shape_for_params,
)
from pipeline.errors import UserError
from pipeline.fit.intervals import INTERVAL_PERCENTILES, percentile_interval
from pipeline.fit.laws import SEARCH_DECADES, minimise_log

SHAPE_FACTORS = (1 / 1.35, 1 / 1.15, 1.0, 1.15, 1.35)  # neighbouring grid shapes tried around N_opt
# The family's FLOPs-per-token table grows to at most this N; beyond it rho = F(N)/N is held at the last anchor's
# (np.interp clamps), within 0.1% of the value the walk would reach: 6.0041 at 1e15 against 6.0007 at 1e17
# (V = 50257, T = 2048). Unbounded, a wild law's data-constrained search asked for N ~ 1e30 and the walk along the
# chain (one anchor per 64-wide step) filled 16 GB before it returned.
FAMILY_TABLE_MAX_N = 1e15
SHAPE_TOLERANCES = (0.10, 0.35)


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs per token as a function of N (the law's parameter convention), and why this count."""

    name: str                                      # "exact" | "palm" | "6nd"
    formula: str
    why: str
    flops_per_token: Callable[[np.ndarray], np.ndarray]
    convention: str = "total"
    n_min: float = 1.0                             # smallest N the count is defined for
    shape_count: Callable[[ModelShape], float] | None = field(default=None, repr=False)

    def of_shape(self, shape: ModelShape) -> float:
        """The same count applied to a concrete shape (the launched run's FLOPs per token)."""
        if self.shape_count is not None:
            return float(self.shape_count(shape))
        return float(self.flops_per_token(np.asarray(float(count_params(shape)[self.convention]))))

    def describe(self) -> dict:
        return {"name": self.name, "formula": self.formula, "why": self.why, "convention": self.convention}


def six_nd_count(why: str, convention: str = "total") -> FlopCount:
    """C = 6 N D (Kaplan et al. 2020 sec. 2.1), N in `convention` parameters."""
    return FlopCount("6nd", f"C = 6 N D, N = {convention} parameters (Kaplan et al. 2020 sec. 2.1)", why,
                     lambda n: 6.0 * np.asarray(n, dtype=float), convention)


def _per_token(method: str) -> Callable[[ModelShape, int], float]:
    """A shape's training FLOPs per token under `method`: "exact" (Chinchilla App. F x 3) or "palm" (PaLM App. B)."""
    if method == "palm":
        return palm_mfu_flops_per_token
    return training_flops_per_token


class FamilyFlopsPerToken:
    """F(N) = N * rho(N): training FLOPs per token (exact, or PaLM's) of the family's preferred shape near N.

    One anchor per width of the sizing grid (models/sizing.py: 8-wide steps below 256, 64 above), at the
    family chain's depth for that width (the aspect rule n_layer = 2 (d/32)^0.57); rho is interpolated in log N between anchors sorted by
    N. The table grows on demand to cover the N asked for.
    """

    def __init__(self, vocab_size: int, seq_len: int, convention: str, tie_embeddings: bool = False,
                 method: str = "exact"):
        self.vocab_size, self.seq_len, self.convention, self.tie = vocab_size, seq_len, convention, tie_embeddings
        self.per_token = _per_token(method)
        self._chain = chain()          # walked once: each width's depth on first reaching it (family_depth)
        self._width = 0
        self._log_n: np.ndarray = np.empty(0)
        self._rho: np.ndarray = np.empty(0)
        self._anchors: list[tuple[float, float]] = []
        self._grow(0.0)

    def shape_at_width(self, d_model: int) -> ModelShape:
        return family_shape(d_model, family_depth(d_model), self.vocab_size, self.seq_len, self.tie)

    def _grow(self, n_needed: float) -> None:
        # one walk along the chain, not family_depth per width (each of which restarts the chain: a table grown
        # to the N a data-constrained search asks for took minutes)
        while not self._anchors or self._anchors[-1][0] < n_needed * 1.5 or len(self._anchors) < 2:
            d_model, n_layer = next(self._chain)
            if d_model == self._width:
                continue               # deeper at the same width: the anchor is the depth it first had
            self._width = d_model
            shape = family_shape(d_model, n_layer, self.vocab_size, self.seq_len, self.tie)
            n = float(count_params(shape)[self.convention])
            self._anchors.append((n, self.per_token(shape, self.seq_len) / n))
        pairs = sorted(self._anchors)
        self._log_n = np.log([p[0] for p in pairs])
        self._rho = np.array([p[1] for p in pairs])

    @property
    def n_min(self) -> float:
        return float(math.exp(self._log_n[0]))

    def __call__(self, n) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        top = float(np.nanmax(n)) if n.size else 0.0
        if math.isfinite(top) and top > math.exp(self._log_n[-1]) and self._anchors[-1][0] < FAMILY_TABLE_MAX_N:
            self._grow(min(top, FAMILY_TABLE_MAX_N))
        return n * np.interp(np.log(n), self._log_n, self._rho)


def exact_count(vocab_size: int, seq_len: int, convention: str = "total", tie_embeddings: bool = False,
                why: str = "") -> FlopCount:
    """The exact count (Chinchilla App. F x 3) of the family's shapes at this vocabulary and sequence length."""
    family = FamilyFlopsPerToken(vocab_size, seq_len, convention, tie_embeddings)
    return FlopCount(
        "exact", f"exact training FLOPs per token of the family's shape (Chinchilla App. F x 3; V={vocab_size}, "
                 f"T={seq_len}, N = {convention} parameters)",
        why or "the pilots' IsoFLOP budgets and records count exact FLOPs of this family's shapes",
        family, convention, family.n_min, lambda shape: training_flops_per_token(shape, seq_len))


def palm_count(vocab_size: int, seq_len: int, convention: str = "total", tie_embeddings: bool = False,
               why: str = "") -> FlopCount:
    """The PaLM count (Chowdhery et al. 2022, App. B) of the family's shapes: the count the launch is timed with."""
    family = FamilyFlopsPerToken(vocab_size, seq_len, convention, tie_embeddings, method="palm")
    return FlopCount(
        "palm", f"PaLM model FLOPs per token of the full run's shape, 6 N_matmul + 12 L H Q T (Chowdhery et al. 2022, "
                f"App. B; V={vocab_size}, T={seq_len}, N = {convention} parameters): the count the launch's time and "
                "MFU use",
        why or "the count the launched run is timed with (pipeline/train/dry_run.py)",
        family, convention, family.n_min, lambda shape: palm_mfu_flops_per_token(shape, seq_len))


# --- the minimisation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Allocation:
    n: float
    d: float
    loss: float
    flops_per_token: float

    @property
    def tokens_per_param(self) -> float:
        return self.d / self.n


def _finite_loss(law, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        values = np.asarray(law.loss(n, d), dtype=float)
    return np.where(np.isfinite(values), values, np.inf)


def search_range(budget_flops: float, count: FlopCount) -> tuple[float, float]:
    centre = math.sqrt(budget_flops / 6.0)
    lo = max(count.n_min, centre * 10.0 ** -SEARCH_DECADES)
    hi = max(lo * 10, centre * 10.0 ** SEARCH_DECADES)
    return lo, hi


def _closed_form(law, budget_flops: float, count: FlopCount) -> Allocation | None:
    """Under C = 6 N D a law's own closed form (Chinchilla eq. 4; Kaplan's frontier), when it has one: the
    same optimum as the numeric search, to the last digit, so published laws give their published numbers."""
    if count.name != "6nd" or not hasattr(law, "optimal_allocation"):
        return None
    n, d = (float(v) for v in law.optimal_allocation(budget_flops))
    return Allocation(n, d, float(law.loss(n, d)) if hasattr(law, "loss") else float("nan"), 6.0 * n)


def optimal_allocation(law, budget_flops: float, count: FlopCount) -> Allocation:
    """N_opt = argmin_N L(N, C / F(N)), D_opt = C / F(N_opt), for any law with a vectorised `.loss(n, d)`."""
    closed = _closed_form(law, budget_flops, count)
    if closed is not None:
        return closed
    lo, hi = search_range(budget_flops, count)
    n = minimise_log(lambda x: _finite_loss(law, x, budget_flops / count.flops_per_token(x)), lo, hi,
                     interior_only=True)
    if n is None:
        raise UserError(f"law {getattr(law, 'name', '?')} has no compute-optimal size between {lo:.3g} and {hi:.3g} "
                        f"parameters at {budget_flops:.3g} FLOPs (its loss keeps falling towards an edge): check the "
                        "fit's exponents, or use a published law")
    fpt = float(count.flops_per_token(np.asarray(n)))
    d = budget_flops / fpt
    return Allocation(n, d, float(law.loss(n, d)), fpt)


def allocation_samples(laws: Iterable, budget_flops: float, count: FlopCount) -> dict[str, np.ndarray]:
    """`optimal_allocation` for each law sample; samples without an interior optimum are dropped and counted."""
    lo, hi = search_range(budget_flops, count)
    out: dict[str, list[float]] = {"n_opt": [], "d_opt": [], "tokens_per_param": [], "predicted_loss": []}
    dropped = 0
    for law in laws:
        closed = _closed_form(law, budget_flops, count)
        if closed is not None:
            for key, value in zip(out, (closed.n, closed.d, closed.tokens_per_param, closed.loss), strict=True):
                out[key].append(value)
            continue
        n = minimise_log(lambda x, law=law: _finite_loss(law, x, budget_flops / count.flops_per_token(x)), lo, hi,
                         interior_only=True)
        if n is None:
            dropped += 1
            continue
        d = budget_flops / float(count.flops_per_token(np.asarray(n)))
        loss = float(law.loss(n, d))
        for key, value in zip(out, (n, d, d / n, loss), strict=True):
            out[key].append(value)
    result = {k: np.asarray(v) for k, v in out.items()}
    result["dropped"] = np.asarray(dropped)
    return result


def sample_intervals(laws: Iterable, budget_flops: float, count: FlopCount, dropped_before: int = 0) -> dict | None:
    """5-95 percentile intervals of N_opt, D_opt, tokens/param and the loss, each sample allocated as the point."""
    samples = allocation_samples(laws, budget_flops, count)
    used = len(samples["n_opt"])
    if used < 2:
        return None
    lo, hi = INTERVAL_PERCENTILES
    return {"method": f"percentile {lo:g}-{hi:g} over {used} law samples", "count": count.name,
            "dropped_samples": int(samples["dropped"]) + dropped_before,
            **{k: percentile_interval(samples[k]) for k in ("n_opt", "d_opt", "tokens_per_param", "predicted_loss")}}


# --- from the optimum to a real shape --------------------------------------------------------------------
def pick_shape(law, budget_flops: float, n_opt: float, count: FlopCount, *, vocab_size: int, seq_len: int,
               tie_embeddings: bool = False) -> ModelShape:
    """The grid shape near N_opt with the lowest L(N_shape, C / F(shape)): the model that is launched.

    Candidates: the sizing rule's shape for N_opt and for N_opt x 1.15^+-1, 1.35^+-1 (one or two grid steps
    either side at CPU scale). Each is scored with its own count and its own N, so rounding to the grid
    costs as little loss as the grid allows.
    """
    candidates: dict[tuple, ModelShape] = {}
    for tolerance in SHAPE_TOLERANCES:
        for factor in SHAPE_FACTORS:
            try:
                shape = shape_for_params(float(n_opt * factor), vocab_size, seq_len, convention=count.convention,
                                         tie_embeddings=tie_embeddings, tolerance=tolerance)
            except SizingError:
                continue
            candidates[(shape.n_layer, shape.d_model)] = shape
        if candidates:
            break
    if not candidates:
        try:
            shape_for_params(float(n_opt), vocab_size, seq_len, convention=count.convention)
        except SizingError as err:
            raise UserError(f"cannot size the recommended model: {err}") from err
    best = None
    for shape in candidates.values():
        n = float(count_params(shape)[count.convention])
        loss = float(law.loss(n, budget_flops / count.of_shape(shape))) if hasattr(law, "loss") else abs(math.log(n / n_opt))
        if best is None or loss < best[0]:
            best = (loss, shape)
    return best[1]
