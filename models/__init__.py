"""The model family: shapes, the torch module, the sizing rule and exact parameter/FLOP accounting.

Pure torch; imports nothing from `pipeline`. `models.hf_io` (which imports transformers) is left out
of this namespace so that `import models` stays light.
"""

from __future__ import annotations

from models.accounting import (
    CONVENTIONS,
    FLOP_METHODS,
    count_params,
    forward_flops_breakdown,
    matmul_params,
    palm_mfu_flops_per_token,
    param_count,
    training_flops_per_token,
)
from models.shape import ModelShape, ShapeError
from models.sizing import NAMED_SIZES, SizingError, ladder, parse_size, shape_for_name, shape_for_params
from models.transformer import Transformer

__all__ = [
    "CONVENTIONS",
    "FLOP_METHODS",
    "NAMED_SIZES",
    "ModelShape",
    "ShapeError",
    "SizingError",
    "Transformer",
    "count_params",
    "forward_flops_breakdown",
    "ladder",
    "matmul_params",
    "palm_mfu_flops_per_token",
    "param_count",
    "parse_size",
    "shape_for_name",
    "shape_for_params",
    "training_flops_per_token",
]
