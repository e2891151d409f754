"""Reference mixed-precision GroupGEMM on packed weights (C, OpenMP): the oracle of the GPU kernels and the CPU
runtime of quantized models.  Arithmetic per scheme: csrc/mx_gemm_ref.h."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from . import _C
from .quant import QuantizedWeight, _float32_matrix

__all__ = ["GemmProblem", "ref_group_gemm"]


@dataclass
class GemmProblem:
    """One problem of a group GEMM: token rows x [M, K] (f32, or f16 converted) times weight [N, K]ᵀ."""

    x: np.ndarray
    weight: QuantizedWeight


ProblemLike = Union[GemmProblem, tuple]


def _as_problem(index: int, problem: ProblemLike) -> tuple:
    if isinstance(problem, GemmProblem):
        x, weight = problem.x, problem.weight
    elif isinstance(problem, tuple) and len(problem) == 2:
        x, weight = problem
    else:
        raise TypeError(f"problem {index} must be a GemmProblem or an (x, QuantizedWeight) tuple, "
                        f"got {type(problem).__name__}")
    if not isinstance(weight, QuantizedWeight):
        raise TypeError(f"problem {index}: weight must be a QuantizedWeight, got {type(weight).__name__}")
    x = _float32_matrix(x, f"problem {index}: x")
    if x.ndim == 2 and x.shape[1] != weight.in_features:
        raise ValueError(f"problem {index}: x has K={x.shape[1]} columns but the weight has "
                         f"in_features={weight.in_features} ({weight.scheme})")
    return (x, weight.qweight, weight.scales, weight.zeros, weight.out_features, weight.in_features,
            weight.scheme.as_tuple())


def ref_group_gemm(problems: Sequence[ProblemLike], n_threads: Optional[int] = None) -> list[np.ndarray]:
    """Y_i = X_i W_iᵀ [M_i, N_i] f32 for every problem, each in its weight's scheme, computed as the GPU kernels
    do: per-token activation quantization where the scheme says so, exact integer (or exact fp8) dot products per
    weight group, f32 accumulation.  ``n_threads=None`` uses the OpenMP default."""
    if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(f"n_threads={n_threads!r} must be a positive integer or None")
    packed = [_as_problem(i, p) for i, p in enumerate(problems)]
    return _C.ref_group_gemm(packed, n_threads or 0)
