"""Orthonormal (randomized) Hadamard transforms for n = m * 2^k (C core: csrc/hadamard.c).

The transform of a vector x of length n is ``y = H_n D x`` with ``H_n = (H_m kron H_{2^k}) / sqrt(n)`` (a Paley
base H_m, Sylvester H_{2^k}) and ``D = diag(d)`` random signs drawn from ``seed`` with splitmix64 (``D = I`` when
seed is None).  Both factors are orthogonal, so ``x = D H_n^T y``: ``hadamard_matrix(n, seed).T`` inverts it.
csrc/mx_hadamard.h documents the constructions, the choice of m and the sign generator.

Supported n: every power of two and m * 2^k with m from Paley I/II, e.g. 768 = 12*64, 1408 = 44*32,
2560 = 20*128, 5632 = 44*128, 14336 = 28*512.  Other sizes raise ValueError naming the nearest supported sizes.
"""
from __future__ import annotations

import numpy as np

from . import _C

__all__ = ["hadamard_transform", "hadamard_matrix", "hadamard_base_order", "hadamard_signs"]

_SUPPORTED_DTYPES = (np.float32, np.float64)


def _check_seed(seed: int | None) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")
    return int(seed)


def hadamard_base_order(n: int) -> int:
    """The base order m with n = m * 2^k (1 for powers of two); ValueError for unsupported n."""
    return _C.hadamard_base_order(int(n))


def hadamard_signs(n: int, seed: int) -> np.ndarray:
    """The random diagonal of ``seed``: int8 [n] of +-1 (splitmix64, see csrc/mx_hadamard.h)."""
    return _C.hadamard_signs(int(n), _check_seed(seed))


def hadamard_transform(x: np.ndarray, axis: int = -1, seed: int | None = None) -> np.ndarray:
    """Apply ``H_n D`` along ``axis`` of a float32 or float64 array; returns a new C-contiguous array of the
    same dtype and shape (the input is not modified).

    ``hadamard_transform(x, seed=s) == x @ hadamard_matrix(n, s).T`` along the last axis, so the inverse of
    ``y = hadamard_transform(x, seed=s)`` is ``y @ hadamard_matrix(n, s)``.  NaN/Inf in x raise ValueError.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"x must have dtype float32 or float64, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for an array of {x.ndim} dimensions")
    seed = _check_seed(seed)
    moved = np.moveaxis(x, axis, -1)
    rows = np.array(moved, dtype=x.dtype, order="C", copy=True)  # our own buffer: the C call works in place
    n = rows.shape[-1]
    if n == 0:
        raise ValueError(f"x has length 0 along axis={axis}: there is no Hadamard transform of size 0")
    _C.hadamard_transform(rows.reshape(-1, n), seed)
    return np.ascontiguousarray(np.moveaxis(rows, -1, axis))


def hadamard_matrix(n: int, seed: int | None = None) -> np.ndarray:
    """The transform as a matrix: float64 [n, n] equal to ``H_n D`` (rows are the outputs)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    return _C.hadamard_matrix(int(n), _check_seed(seed))
