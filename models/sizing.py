"""From a target parameter count to a concrete `ModelShape`: the family's sizing rule.

The rule, and why:
- Width grid. d_model is a multiple of 64 from 256 up (matmul tiles, and head_dim 64 as in GPT-2/3
  and LLaMA); below 256 a multiple of 16. CPU-scale models need the finer grid: with a 512-token vocab
  a 64-wide model has 65K embedding + head parameters, so a 50K model must be ~32 wide, and 16 keeps
  head_dim = d_model / 4 even (RoPE) and a whole number of fp32 SIMD lanes.
- Heads. head_dim 64 from d_model 256 up; below, 4 heads (head_dim 4..60, reaching 64 at 256).
- MLP. SwiGLU with d_ff = 8/3 d_model, which keeps the MLP at the 8 d_model^2 parameters of a 4x GELU
  MLP (Shazeer 2020; LLaMA, Touvron et al. 2023), rounded up to the width grid's multiple.
- Depth. Aspect ratio d_model / n_layer near 64 from d_model 256 up: GPT-2 small and GPT-3 760M sit at
  64, and Kaplan et al. 2020 (Fig. 5) find loss within a few percent anywhere from 20 to 200. Below 256
  wide the preferred aspect is 16, so CPU-scale models get several layers instead of one wide layer: a
  one-layer transformer cannot form induction heads (Olsson et al. 2022) and learns differently, which
  would put 1- and 5-layer models on different curves inside one IsoFLOP profile. Shapes between 8 and
  256 are allowed, at a cost (Levine et al. 2020 show the best depth-width balance drifts with size;
  the tiny CPU models need the freedom because one 16-wide step is 30-60% of their size).
- Choice. Among the grid shapes whose count lies within `tolerance` (10%) of the target, minimise
      (ln(N_shape / N_target))^2 + ASPECT_WEIGHT * (ln(aspect / preferred_aspect(d_model)))^2,
  N in the requested convention. With ASPECT_WEIGHT = 0.01 an aspect off by 2x costs as much as a
  7% count error: the count dominates and the aspect settles near-ties. Without the tolerance filter
  the choice would be provably monotone (adding the two optimality inequalities of targets t1 < t2
  leaves 2 (ln n1 - ln n2)(ln t1 - ln t2) >= 0); the filter can only break that at a gap's edge, and
  tests/test_sizing.py checks monotonicity on a dense sweep of targets.
  A request with no shape within `tolerance` raises `SizingError` instead of returning a poor match.
"""

from __future__ import annotations

import math
import re

from models.accounting import param_count
from models.shape import ModelShape

PREFERRED_ASPECT = 64.0
PREFERRED_ASPECT_NARROW = 16.0  # below d_model 256 (see "Depth" above)
ASPECT_RANGE = (8.0, 256.0)
ASPECT_WEIGHT = 0.01
TOLERANCE = 0.10
SIZING_CONVENTIONS = ("total", "non_embedding")
# The largest model the rule sizes (the config's own limit on model sizes): the grid is enumerated up to
# the request, so an unbounded one (a 1e40-FLOP budget's N_opt ~1e19) would list shapes for hours.
MAX_SIZED_PARAMS = 1e13

NAMED_SIZES: dict[str, int] = {
    "50k": 50_000,
    "100k": 100_000,
    "200k": 200_000,
    "500k": 500_000,
    "1m": 1_000_000,
    "5m": 5_000_000,
    "20m": 20_000_000,
    "50m": 50_000_000,
    "124m": 124_000_000,
    "350m": 350_000_000,
    "760m": 760_000_000,
    "1.3b": 1_300_000_000,
    "3b": 3_000_000_000,
}
# "tiny": the CPU size of `python -m pipeline.train model=tiny`: ~200K total parameters, ~40K tokens/s
# on a 2-core CPU (docs/model_throughput.md), so the 2M-token default run takes about a minute.
NAMED_SIZES["tiny"] = NAMED_SIZES["200k"]


class SizingError(ValueError):
    """A size request that no shape of the family can meet; the message says what to change."""

    def __init__(self, message: str):
        if "\n" in message:
            raise ValueError("SizingError messages must fit on one line")
        super().__init__(message)


def width_multiple(d_model: int) -> int:
    return 64 if d_model >= 256 else 16


def heads_for_width(d_model: int) -> int:
    return d_model // 64 if d_model >= 256 else 4


def ffn_width(d_model: int) -> int:
    """8/3 d_model rounded up to the width grid's multiple (SwiGLU at the parameters of a 4x MLP)."""
    multiple = width_multiple(d_model)
    return -(-(8 * d_model) // (3 * multiple)) * multiple


def _widths():
    d_model = 16
    while True:
        yield d_model
        d_model += width_multiple(d_model)


def _make_shape(d_model: int, n_layer: int, vocab_size: int, seq_len: int, tie: bool) -> ModelShape:
    return ModelShape(
        n_layer=n_layer,
        d_model=d_model,
        n_heads=heads_for_width(d_model),
        d_ff=ffn_width(d_model),
        vocab_size=vocab_size,
        seq_len=seq_len,
        tie_embeddings=tie,
    )


def _grid_shapes(vocab_size: int, seq_len: int, tie: bool, convention: str, max_count: float):
    """(count, shape) for every grid shape within ASPECT_RANGE whose count is <= max_count."""
    for d_model in _widths():
        min_layers = max(1, math.ceil(d_model / ASPECT_RANGE[1]))
        max_layers = max(1, math.floor(d_model / ASPECT_RANGE[0]))
        if param_count(_make_shape(d_model, min_layers, vocab_size, seq_len, tie), convention) > max_count:
            return  # counts grow with width at the shallowest allowed depth: no wider shape fits
        for n_layer in range(min_layers, max_layers + 1):
            shape = _make_shape(d_model, n_layer, vocab_size, seq_len, tie)
            count = param_count(shape, convention)
            if count > max_count:
                break  # and with depth
            yield count, shape


def preferred_aspect(d_model: int) -> float:
    return PREFERRED_ASPECT if d_model >= 256 else PREFERRED_ASPECT_NARROW


def _score(count: int, shape: ModelShape, log_target: float) -> float:
    aspect_term = math.log(shape.aspect_ratio / preferred_aspect(shape.d_model)) ** 2
    return (math.log(count) - log_target) ** 2 + ASPECT_WEIGHT * aspect_term


def shape_for_params(
    n_params: float,
    vocab_size: int,
    seq_len: int,
    convention: str = "total",
    tie_embeddings: bool = False,
    tolerance: float = TOLERANCE,
) -> ModelShape:
    """The grid shape whose `convention` parameter count best matches n_params (see module doc).

    Raises SizingError when no grid shape lies within `tolerance` (relative) of the request: below the
    smallest model, or in one of the gaps of the coarse CPU-scale grid (the message names the nearest
    achievable counts).
    """
    if convention not in SIZING_CONVENTIONS:
        raise SizingError(
            f"cannot size by convention {convention!r}: use one of {', '.join(SIZING_CONVENTIONS)} "
            f"(embedding and head counts depend on the width alone)"
        )
    for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SizingError(f"{name}={value!r} must be a positive integer: pass e.g. {name}=512")
    if isinstance(n_params, bool) or not isinstance(n_params, (int, float)) or not math.isfinite(n_params):
        raise SizingError(f"n_params={n_params!r} must be a positive number: pass e.g. n_params=1e6")
    if n_params <= 0:
        raise SizingError(f"n_params={n_params!r} must be positive: pass e.g. n_params=1e6")
    if n_params > MAX_SIZED_PARAMS:
        raise SizingError(f"n_params={n_params:.3g} is above the {MAX_SIZED_PARAMS:.0e} parameters the family's sizing "
                          "rule covers: lower the budget")
    if not 0 < tolerance < 1:
        raise SizingError(f"tolerance={tolerance!r} must lie in (0, 1): use e.g. 0.1 for 10%")

    # A shape scoring better than any within `tolerance` lies within this factor of the target.
    max_aspect_penalty = ASPECT_WEIGHT * max(math.log(ASPECT_RANGE[1] / PREFERRED_ASPECT_NARROW),
                                             math.log(PREFERRED_ASPECT / ASPECT_RANGE[0])) ** 2
    window = math.exp(math.sqrt(math.log1p(tolerance) ** 2 + max_aspect_penalty)) * 1.01
    log_target = math.log(n_params)
    best: tuple[float, int, ModelShape] | None = None
    below, above = 0, None  # nearest achievable counts, for the error message
    for count, shape in _grid_shapes(vocab_size, seq_len, tie_embeddings, convention, n_params * window):
        if count <= n_params:
            below = max(below, count)
        else:
            above = count if above is None else min(above, count)
        if abs(math.log(count / n_params)) <= math.log1p(tolerance):
            score = _score(count, shape, log_target)
            if best is None or score < best[0]:
                best = (score, count, shape)
    if best is not None and abs(math.log(best[1] / n_params)) <= math.log1p(tolerance):
        return best[2]

    if below == 0:
        smallest = _make_shape(16, 1, vocab_size, seq_len, tie_embeddings)
        smallest_count = param_count(smallest, convention)
        raise SizingError(
            f"n_params={n_params:,.0f} ({convention}) is below the smallest model of the family "
            f"({smallest_count:,}: one 16-wide layer, vocab {vocab_size}): "
            f"request at least {smallest_count:,} or use a smaller vocabulary"
        )
    nearest = f"{below:,} below" + (f", {above:,} above" if above is not None else "")
    raise SizingError(
        f"no shape has {convention} parameters within {tolerance:.0%} of {n_params:,.0f} (vocab {vocab_size}; "
        f"nearest achievable: {nearest}): request a size near those or pass a larger tolerance"
    )


def shape_for_name(name: str, vocab_size: int, seq_len: int) -> ModelShape:
    """The shape for a named size of `NAMED_SIZES` (case-insensitive), counted as total parameters."""
    key = str(name).strip().lower()
    if key not in NAMED_SIZES:
        raise SizingError(f"unknown model size {name!r}: use one of {', '.join(NAMED_SIZES)} or a number like 2e5")
    return shape_for_params(NAMED_SIZES[key], vocab_size, seq_len)


def parse_size(text: str) -> float:
    """'200k', '1.3b', '2e5' or a named size -> a parameter count."""
    key = str(text).strip().lower()
    if key in NAMED_SIZES:
        return float(NAMED_SIZES[key])
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)([kmb]?)", key)
    if not match:
        raise SizingError(f"cannot read model size {text!r}: write e.g. 200k, 1.3b or 2e5")
    scale = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9}[match.group(2)]
    return float(match.group(1)) * scale


def ladder(lo: float, hi: float, ratio: float) -> list[int]:
    """Parameter counts lo, lo*ratio, lo*ratio^2, ... up to hi (inclusive, to 0.1% rounding)."""
    if not (lo > 0 and hi >= lo):
        raise SizingError(f"ladder needs 0 < lo <= hi, got lo={lo!r} hi={hi!r}: swap or fix the bounds")
    if not ratio > 1:
        raise SizingError(f"ladder ratio={ratio!r} must be > 1: use e.g. ratio=2")
    steps = math.floor(math.log(hi / lo) / math.log(ratio) + 1e-3)
    return [round(lo * ratio**k) for k in range(steps + 1)]
