"""From a target parameter count to a concrete `ModelShape`: the family's sizing rule.

The family is one chain of shapes in which depth and width only ever grow together, so that loss
against N within one budget measures the scale, not the shape rule (a family whose shapes zigzag --
1 layer x 32, then 2 x 32, 4 x 32, 2 x 48 -- puts neighbouring sizes on different curves):
- Width grid. d_model is a multiple of 8 below 256 (head_dim = d_model / 4 stays even for RoPE; CPU
  models need the fine grid because one width step is a large share of a tiny model), a multiple of
  64 from 256 up (matmul tiles, head_dim 64 as in GPT-2/3 and LLaMA).
- Heads. head_dim 64 from d_model 256 up; below, 4 heads.
- MLP. SwiGLU with d_ff = 8/3 d_model, which keeps the MLP at the 8 d_model^2 parameters of a 4x GELU
  MLP (Shazeer 2020; LLaMA, Touvron et al. 2023), rounded up to the width grid's multiple.
- Aspect rule (the one rule that ties depth to width):  n_layer*(d) = 2 (d_model / 32) ** 0.57,
  i.e. d_model / n_layer = 16 (d_model / 32) ** 0.43. The exponent is fitted to published shapes:
  GPT-3 125M (768 wide, 12 layers), 1.3B (2048, 24), 6.7B (4096, 32) and LLaMA 7B (4096, 32) give
  12.2, 21.5, 31.8 and 31.8 layers (Brown et al. 2020, Table 2.1; Touvron et al. 2023). Its aspect
  (64 at 768 wide, 129 at 4096) lies in the 20-200 where Kaplan et al. 2020 (Fig. 5) find loss within
  a few percent; the tiny CPU models get aspect 12-20 (2-4 layers instead of one wide layer: a
  one-layer transformer cannot form induction heads, Olsson et al. 2022, and learns differently).
- Chain. From (16 wide, 1 layer), each step adds either one width step or one layer, whichever lands
  nearer the rule's depth (|ln(n_layer / n_layer*(d))|): a staircase along the rule in which depth and
  width are both non-decreasing, so counts strictly increase and every count is a step of a few
  percent (one layer or one width step) at GPU scale.
- Choice. The chain shape whose count (in the requested convention) is nearest the target in log;
  a request with no chain shape within `tolerance` (10%) raises `SizingError`, naming the nearest
  achievable counts. Monotone in the target by construction.
Parameter convention: where embeddings dominate (tiny models with a 512-token vocabulary: 57% of a
57K model), sizing by total or by non-embedding parameters picks different chain shapes, but the
chain is the same; see docs/hparams.md for how the demo keeps the convention from deciding the answer.
"""

from __future__ import annotations

import math
import re

from models.accounting import param_count
from models.shape import ModelShape

DEPTH_RULE = (2.0, 32.0, 0.57)   # n_layer*(d) = 2 * (d / 32) ** 0.57 (see "Aspect rule" above)
TOLERANCE = 0.10
NAME_TOLERANCE = 0.20
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
    return 64 if d_model >= 256 else 8


def heads_for_width(d_model: int) -> int:
    return d_model // 64 if d_model >= 256 else 4


def ffn_width(d_model: int) -> int:
    """8/3 d_model rounded up to the width grid's multiple (SwiGLU at the parameters of a 4x MLP)."""
    multiple = width_multiple(d_model)
    return -(-(8 * d_model) // (3 * multiple)) * multiple


def rule_depth(d_model: int) -> float:
    """The aspect rule's (real-valued) depth at this width."""
    coef, width0, exponent = DEPTH_RULE
    return coef * (d_model / width0) ** exponent


def family_shape(d_model: int, n_layer: int, vocab_size: int, seq_len: int, tie: bool = False) -> ModelShape:
    return ModelShape(
        n_layer=n_layer,
        d_model=d_model,
        n_heads=heads_for_width(d_model),
        d_ff=ffn_width(d_model),
        vocab_size=vocab_size,
        seq_len=seq_len,
        tie_embeddings=tie,
    )


def chain():
    """(d_model, n_layer) of the family, smallest first: width and depth never decrease (module doc)."""
    d_model, n_layer = 16, 1
    while True:
        yield d_model, n_layer
        wider = d_model + width_multiple(d_model)
        off_if_wider = abs(math.log(n_layer / rule_depth(wider)))
        off_if_deeper = abs(math.log((n_layer + 1) / rule_depth(d_model)))
        if off_if_wider <= off_if_deeper:
            d_model = wider
        else:
            n_layer += 1


def family_depth(d_model: int) -> int:
    """The depth the chain gives this width on first reaching it (for per-width anchors)."""
    for width, n_layer in chain():
        if width >= d_model:
            return n_layer
    raise AssertionError("unreachable: the chain is infinite")


def _chain_shapes(vocab_size: int, seq_len: int, tie: bool, convention: str, max_count: float):
    """(count, shape) along the chain while the count is <= max_count."""
    for d_model, n_layer in chain():
        shape = family_shape(d_model, n_layer, vocab_size, seq_len, tie)
        count = param_count(shape, convention)
        if count > max_count:
            return
        yield count, shape


def shape_for_params(
    n_params: float,
    vocab_size: int,
    seq_len: int,
    convention: str = "total",
    tie_embeddings: bool = False,
    tolerance: float = TOLERANCE,
) -> ModelShape:
    """The chain shape whose `convention` parameter count is nearest n_params in log (see module doc).

    Raises SizingError when no chain shape lies within `tolerance` (relative) of the request: below the
    smallest model, or in one of the gaps between tiny chain shapes (the message names the nearest
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

    log_target = math.log(n_params)
    best: tuple[float, int, ModelShape] | None = None
    below, above = 0, None  # nearest achievable counts, for the error message
    for count, shape in _chain_shapes(vocab_size, seq_len, tie_embeddings, convention, n_params * (1 + tolerance) * 2):
        if count <= n_params:
            below = max(below, count)
        else:
            above = count if above is None else min(above, count)
        distance = abs(math.log(count) - log_target)
        if best is None or distance < best[0]:
            best = (distance, count, shape)
    if best is not None and best[0] <= math.log1p(tolerance):
        return best[2]

    if below == 0:
        smallest = family_shape(16, 1, vocab_size, seq_len, tie_embeddings)
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
    """The shape for a named size of `NAMED_SIZES` (case-insensitive), counted as total parameters.

    A name is a label, not a promise: the nearest chain shape within NAME_TOLERANCE (20%; the chain's
    steps at CPU scale and near d_model 256-640 with a small vocabulary are up to ~1.5x apart)."""
    key = str(name).strip().lower()
    if key not in NAMED_SIZES:
        raise SizingError(f"unknown model size {name!r}: use one of {', '.join(NAMED_SIZES)} or a number like 2e5")
    return shape_for_params(NAMED_SIZES[key], vocab_size, seq_len, tolerance=NAME_TOLERANCE)


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
