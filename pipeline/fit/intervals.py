"""What "the interval" means everywhere in the tool: one definition, used by every approach and the decision.

Every interval the tool prints is the 5th-95th percentile of a bootstrap distribution (a nominal 90%
interval): of the refitted law's parameters and N_opt/D_opt in the fit, and of N_opt, D_opt, tokens per
parameter and the predicted loss in the recommendation (Besiroglu et al. 2024 bootstrap the Chinchilla
fit the same way).
"""

from __future__ import annotations

import numpy as np

INTERVAL_PERCENTILES = (5.0, 95.0)
INTERVAL_LABEL = "percentile 5-95% (nominal 90% interval)"


def percentile_interval(values) -> list[float]:
    """[low, high] of `values` at INTERVAL_PERCENTILES."""
    lo, hi = INTERVAL_PERCENTILES
    return [float(np.percentile(values, lo)), float(np.percentile(values, hi))]


def percentile_band(values, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Low and high curves of a stack of sampled curves (for plotted bands)."""
    lo, hi = INTERVAL_PERCENTILES
    return np.percentile(values, lo, axis=axis), np.percentile(values, hi, axis=axis)
