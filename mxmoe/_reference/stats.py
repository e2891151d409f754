"""NumPy reference of the stats area (csrc/stats.c): the definition, computed the obvious way in float64."""
from __future__ import annotations

import numpy as np


def accumulate_xtx(H: np.ndarray, x: np.ndarray, row_weights: np.ndarray | None = None) -> np.ndarray:
    """``H + sum_r row_weights[r] * outer(x[r], x[r])`` as a new float64 array (H f64 [K, K], x [rows, K])."""
    x64 = np.asarray(x, dtype=np.float64)
    weights = np.ones(x64.shape[0]) if row_weights is None else np.asarray(row_weights, dtype=np.float64)
    return np.asarray(H, dtype=np.float64) + np.einsum("r,ri,rj->ij", weights, x64, x64)
