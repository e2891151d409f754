"""NumPy GPTQ written from the paper (Frantar et al., "GPTQ", arXiv 2210.17323, Algorithm 1 with lazy batch
updates), with the paper's names W, H, Hinv, Err, Q.  Test oracle of csrc/gptq.c: it follows the decisions
documented in csrc/mx_gptq.h (damping on live columns, dead columns decoupled but kept, all-zero H -> RTN,
escalating damping, act-order with static groups) and the grid of csrc/mx_scheme.h, re-derived here in NumPy
(f16 scales rounded up, integer zero points, e4m3 codes) without calling the C core.

Linear algebra uses numpy.linalg (LAPACK): Hinv = Cholesky(H^-1)^T, the upper factor, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_F16_MIN_NORMAL = np.float16(2.0**-14)
_F16_MAX = np.float16(65504.0)


# ---------------------------------------------------------------------------------------------------------------
# The grid (mx_scheme.h): w = (u - z) * s, f16 scales rounded up
# ---------------------------------------------------------------------------------------------------------------

def f16_round_up(x: np.ndarray) -> np.ndarray:
    """The smallest float16 >= x (x float32 >= 0); 0 -> the smallest normal; clamped to 65504."""
    x = np.asarray(x, dtype=np.float32)
    h = x.astype(np.float16)
    below = h.astype(np.float32) < x
    h = np.where(below, np.nextafter(h, np.float16(np.inf)), h)
    h = np.where(x > 0, h, _F16_MIN_NORMAL)
    return np.minimum(h, _F16_MAX).astype(np.float16)


def _e4m3_table() -> tuple[np.ndarray, np.ndarray]:
    """Non-negative finite e4m3fn values (codes 0..126) in increasing order, with their codes."""
    codes = np.arange(127)
    exponent, mantissa = codes >> 3, codes & 7
    values = np.where(exponent == 0, mantissa * 2.0**-9, (1 + mantissa / 8.0) * 2.0 ** (exponent - 7.0))
    return values.astype(np.float64), codes


def e4m3_round(x: np.ndarray) -> np.ndarray:
    """x (float32) -> the nearest e4m3fn value (ties to the even code), saturating at +-448, as float64."""
    values, codes = _e4m3_table()
    a = np.minimum(np.abs(x.astype(np.float64)), 448.0)
    hi = np.clip(np.searchsorted(values, a), 1, len(values) - 1)
    lo = hi - 1
    d_lo, d_hi = a - values[lo], values[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (codes[hi] % 2 == 0))
    return np.sign(x) * np.where(pick_hi, values[hi], values[lo])


@dataclass(frozen=True)
class Grid:
    w_bits: int
    group_size: int
    symmetric: bool
    fp8: bool

    @staticmethod
    def of(scheme) -> "Grid":
        return Grid(scheme.w_bits, scheme.group_size, scheme.symmetric, scheme.fmt == "fp8" and scheme.w_bits == 8)

    def params(self, Wg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wg [N, G] f32 (one group per row) -> scale f32 [N] (an f16 value), zero point [N]."""
        lo = np.minimum(Wg.min(axis=1), 0).astype(np.float32)
        hi = np.maximum(Wg.max(axis=1), 0).astype(np.float32)
        amax = np.maximum(-lo, hi)
        if self.fp8:
            return f16_round_up(amax / np.float32(448.0)).astype(np.float32), np.zeros(len(Wg))
        if self.symmetric:
            qmax = np.float32(2 ** (self.w_bits - 1) - 1)
            return f16_round_up(amax / qmax).astype(np.float32), np.full(len(Wg), 2.0 ** (self.w_bits - 1))
        maxq = 2**self.w_bits - 1
        scale = f16_round_up((hi.astype(np.float64) - lo.astype(np.float64)) / maxq).astype(np.float32)
        zero = np.clip(np.rint(-lo.astype(np.float64) / scale.astype(np.float64)), 0, maxq)
        return scale, zero

    def quantize(self, w: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """w, scale, zero: [N] -> (value f32 [N], code [N]); code is the unsigned grid index (e4m3 magnitude for
        fp8, where the value is what is compared)."""
        if self.fp8:
            v = e4m3_round(w.astype(np.float32) / scale)
            return (v * scale).astype(np.float32), v
        if self.symmetric:
            z = 2 ** (self.w_bits - 1)
            lo, hi = z - (z - 1), z + (z - 1)
        else:
            lo, hi = 0, 2**self.w_bits - 1
        u = np.clip(np.rint(w.astype(np.float64) / scale.astype(np.float64)) + zero, lo, hi)
        return ((u - zero) * scale).astype(np.float32), u


# ---------------------------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class GPTQResult:
    W_hat: np.ndarray        # f32 [N, K] dequantized, original column order
    codes: np.ndarray        # [N, K] grid indices
    scales: np.ndarray       # f32 [K/G', N]
    zeros: np.ndarray        # [K/G', N]
    fallback: str | None     # None, "zero_hessian", "extra_damping", "rtn"
    damp: float


def rtn(W: np.ndarray, scheme) -> GPTQResult:
    """Round to nearest with per-group parameters (the fallback and the baseline)."""
    grid = Grid.of(scheme)
    N, K = W.shape
    G = scheme.group_size if scheme.group_size > 0 else K
    W_hat, codes = np.zeros((N, K), np.float32), np.zeros((N, K))
    scales, zeros = np.zeros((K // G, N), np.float32), np.zeros((K // G, N))
    for g in range(K // G):
        scales[g], zeros[g] = grid.params(W[:, g * G:(g + 1) * G])
        for k in range(g * G, (g + 1) * G):
            W_hat[:, k], codes[:, k] = grid.quantize(W[:, k], scales[g], zeros[g])
    return GPTQResult(W_hat, codes, scales, zeros, None, 0.0)


def _upper_cholesky_of_inverse(H: np.ndarray, lam: float) -> np.ndarray | None:
    """Hinv = Cholesky(H^-1)^T (upper), or None when H is not positive definite beyond the damping lam:
    a pivot^2 <= lam/2 cannot happen for H = PSD + lam I."""
    try:
        L = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return None
    if np.any(np.diag(L) ** 2 <= 0.5 * lam):
        return None
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T
    return Hinv if np.all(np.isfinite(Hinv)) else None


def gptq(W: np.ndarray, H: np.ndarray, scheme, blocksize: int = 128, damp: float = 0.01, act_order: bool = True,
         static_groups: bool = True) -> GPTQResult:
    """W [N, K], H [K, K] -> GPTQResult.  Integer or fp8 weight schemes (w16 is plain bf16 rounding, not here)."""
    W = np.array(W, dtype=np.float32)
    H = np.array(H, dtype=np.float64)
    N, K = W.shape
    grid = Grid.of(scheme)
    G = scheme.group_size if scheme.group_size > 0 else K
    dynamic_groups = not static_groups and scheme.group_size > 0
    assert not (act_order and dynamic_groups), "act_order needs static groups (no g_idx in the packed layout)"

    # dead input channels: decouple (row/column 0, diagonal = mean of the live diagonal), keep their weights
    dead = np.diag(H) == 0
    if dead.all():
        result = rtn(W, scheme)
        result.fallback = "zero_hessian"
        return result
    mean_diag = np.diag(H)[~dead].mean()
    H = 0.5 * (H + H.T)
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = mean_diag

    # group parameters of the original W (static), filled in as the groups start otherwise
    scales = np.zeros((K // G, N), np.float32)
    zeros = np.zeros((K // G, N))
    if not dynamic_groups:
        for g in range(K // G):
            scales[g], zeros[g] = grid.params(W[:, g * G:(g + 1) * G])

    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    W = W[:, perm]
    H = H[perm][:, perm]

    lam, fallback = damp, None
    while True:
        Hinv = _upper_cholesky_of_inverse(H + lam * mean_diag * np.eye(K), lam * mean_diag)
        if Hinv is not None:
            break
        lam = max(lam * 10, 1e-4)
        if lam > 1e4:
            result = rtn(W[:, np.argsort(perm)], scheme)
            result.fallback = "rtn"
            return result
        fallback = "extra_damping"
    Hinv32 = Hinv.astype(np.float32)  # the updates of W are f32 (W is f32)

    Q = np.zeros((N, K), np.float32)
    codes = np.zeros((N, K))
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros((N, count), np.float32)
        for i in range(count):
            column = perm[i1 + i]
            g = column // G
            if dynamic_groups and column % G == 0:  # from W as it was when this block started
                scales[g], zeros[g] = grid.params(W[:, column:column + G])
            w = W1[:, i]
            q, codes[:, i1 + i] = grid.quantize(w, scales[g], zeros[g])
            Q[:, i1 + i] = q
            err1 = ((w - q) / Hinv[i1 + i, i1 + i]).astype(np.float32)
            W1[:, i:] -= np.outer(err1, Hinv32[i1 + i, i1 + i:i2])
            Err1[:, i] = err1
        W[:, i2:] -= Err1 @ Hinv32[i1:i2, i2:]

    inverse = np.argsort(perm)
    return GPTQResult(Q[:, inverse], codes[:, inverse], scales, zeros, fallback, lam)
