"""GPTQ (Frantar et al., arXiv 2210.17323) in C on the shared grid: ``gptq(W, H, scheme) -> QuantizedWeight``.

The algorithm and every decision (damping, dead input channels, all-zero or indefinite Hessians, act-order with
static groups) are documented in csrc/mx_gptq.h.  In short: the output packs exactly like ``quantize_rtn`` (no
g_idx); an all-zero Hessian gives RTN; a Hessian that is not positive definite gets more damping (x10 steps) and,
if even that fails, RTN; every fallback is reported on the result (``.gptq_report``) and by a
``GPTQFallbackWarning``.  The result never contains NaN.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from . import _C
from ._scheme import SchemeLike, as_scheme
from .quant import QuantizedWeight

__all__ = ["gptq", "GPTQReport", "GPTQFallbackWarning", "hessian_error"]

# enum mx_gptq_flag (csrc/mx_gptq.h)
_DEAD_COLUMNS, _ZERO_HESSIAN, _EXTRA_DAMPING, _RTN_FALLBACK = 1, 2, 4, 8


class GPTQFallbackWarning(UserWarning):
    """GPTQ could not use the Hessian as given (all zero, or not positive definite): see GPTQReport."""


@dataclass(frozen=True)
class GPTQReport:
    """What GPTQ did with the Hessian.

    fallback: None (plain GPTQ), "zero_hessian" (H == 0: RTN), "extra_damping" (Cholesky needed ``damp``
    larger than asked) or "rtn" (Cholesky failed at every damping: RTN).  dead_columns: input channels with
    H_ii == 0 (their weights are kept and rounded, see mx_gptq.h).  damp: the relative damping used.
    """

    fallback: str | None
    dead_columns: int
    damp: float


def _as_matrix(x: np.ndarray, name: str, dtype: type) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=dtype)


def gptq(W: np.ndarray, H: np.ndarray, scheme: SchemeLike, blocksize: int = 128, damp: float = 0.01,
         act_order: bool = True, static_groups: bool = True) -> QuantizedWeight:
    """Quantize W [out, in] (f32/f16; f64 is rounded to f32) with its input Hessian H [in, in] (f32/f64, e.g.
    X^T X over calibration tokens; any positive scale).  ``damp`` is relative to mean(diag H); ``act_order``
    processes columns by decreasing diag(H); ``static_groups`` fixes the group scales from the original W, which
    act_order requires for grouped schemes (ValueError otherwise).  Returns a QuantizedWeight with an extra
    attribute ``gptq_report`` (GPTQReport)."""
    s = as_scheme(scheme)
    W32 = _as_matrix(W, "W", np.float32)
    H64 = _as_matrix(H, "H", np.float64)
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)):
        raise TypeError(f"blocksize must be an int, got {type(blocksize).__name__}")
    if not isinstance(damp, (int, float, np.floating, np.integer)) or not math.isfinite(float(damp)) or damp < 0:
        raise ValueError(f"damp={damp!r} must be a finite number >= 0")
    qweight, scales, zeros, flags, dead_columns, damp_used = _C.gptq(
        W32, H64, s.as_tuple(), int(blocksize), float(damp), bool(act_order), bool(static_groups))
    fallback = None
    if flags & _ZERO_HESSIAN:
        fallback = "zero_hessian"
    elif flags & _RTN_FALLBACK:
        fallback = "rtn"
    elif flags & _EXTRA_DAMPING:
        fallback = "extra_damping"
    report = GPTQReport(fallback, int(dead_columns), float(damp_used))
    if fallback is not None:
        detail = {"zero_hessian": "H is all zero (no calibration tokens): round-to-nearest",
                  "rtn": "H is not positive definite even with damp=1e4: round-to-nearest",
                  "extra_damping": f"H needed damp={damp_used:g} (asked {damp:g}) to factor"}[fallback]
        warnings.warn(f"gptq on [{W32.shape[0]}, {W32.shape[1]}] {s}: {detail}", GPTQFallbackWarning,
                      stacklevel=2)
    result = QuantizedWeight(s, W32.shape[0], W32.shape[1], qweight, scales, zeros)
    result.gptq_report = report
    return result


def hessian_error(W: np.ndarray, W_hat: np.ndarray, H: np.ndarray) -> float:
    """The GPTQ objective tr((W - W_hat) H (W - W_hat)^T), in float64."""
    D = np.asarray(W, dtype=np.float64) - np.asarray(W_hat, dtype=np.float64)
    return float(np.einsum("nk,kl,nl->", D, np.asarray(H, dtype=np.float64), D))
