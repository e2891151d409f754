"""NumPy reference of the mixed-precision group GEMM (the arithmetic of csrc/mx_gemm_ref.h, from its definition).

a16: Y = X W_hatᵀ (computed here in float64; the C computes in f32, compared with a tolerance).
a8/a4 int: per token q_a, s_a; per weight group g, d_g = q_a · (u - z_g) exactly (int64 here), then in group order
    acc = acc + f32(d_g) * (s_a * s_g)   in float32.
a8 fp8: e4m3 activations; weights e4m3 (w8) or integers u - z; each group's dot product is exact (float64 here: all
    partial sums are representable), rounded to f32, then accumulated as above.
"""
from __future__ import annotations

import numpy as np

from . import quant as rq


def _weight_operands(qweight, scales, zeros, N: int, K: int, scheme) -> tuple[np.ndarray, np.ndarray]:
    """Integer (u - z) or exact fp8 weight values f64 [N, K], and the f32 scales [K/G', N]."""
    codes = rq.unpack(qweight, K, scheme.w_bits)
    rows = scales.shape[0]
    G = K // rows
    if scheme.fmt == "fp8" and scheme.w_bits == 8:
        values = rq.e4m3_decode(codes).astype(np.float64)
    else:
        if scheme.symmetric:
            z = np.full((N, rows), 2 ** (scheme.w_bits - 1), np.int64)
        else:
            z = zeros.T.astype(np.int64)
        values = (codes.astype(np.int64).reshape(N, rows, G) - z[:, :, None]).reshape(N, K).astype(np.float64)
    return values, scales.astype(np.float32)


def group_gemm(x: np.ndarray, qweight, scales, zeros, N: int, K: int, scheme) -> np.ndarray:
    """One problem: Y [M, N] as defined above (float64 for a16, float32 otherwise)."""
    x = np.asarray(x, dtype=np.float32)
    M = x.shape[0]
    if not scheme.quantizes_activations:
        w_hat = rq.dequantize(qweight, scales, zeros, N, K, scheme)
        return x.astype(np.float64) @ w_hat.astype(np.float64).T
    q, s_a = rq.quantize_activations(x, scheme)
    a = rq.activation_values(q, scheme)
    w, s_w = _weight_operands(qweight, scales, zeros, N, K, scheme)
    rows = s_w.shape[0]
    G = K // rows
    acc = np.zeros((M, N), np.float32)
    for g in range(rows):
        d = a[:, g * G:(g + 1) * G] @ w[:, g * G:(g + 1) * G].T  # exact: integers / fp8 products in f64
        combined = (s_a[:, None] * s_w[g][None, :]).astype(np.float32)
        acc = (acc + (d.astype(np.float32) * combined).astype(np.float32)).astype(np.float32)
    return acc
