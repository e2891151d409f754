"""NumPy reference of the quantization grid, the packed layouts and per-token activation quantization.

Written from the definitions in csrc/mx_scheme.h (not from csrc/quant.c): the test oracle of mxmoe.quant.
Weights are [N, K] = [out, in]; groups run along K; scales/zeros are stored [K/G', N].
"""
from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0
F16_MIN_NORMAL = np.float16(2.0 ** -14)
F16_MAX = np.float16(65504.0)


# ---- number formats ---------------------------------------------------------------------------------------------

def f16_round_up(x: np.ndarray) -> np.ndarray:
    """Smallest float16 >= x (x >= 0 float32), clamped to 65504; 0 becomes the smallest normal 2^-14."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    below = h.astype(np.float32) < x
    h = np.where(below, np.nextafter(h, np.float16(np.inf)), h)
    h = np.minimum(h, F16_MAX)
    return np.where(x > 0, h, F16_MIN_NORMAL).astype(np.float16)


def e4m3_values() -> np.ndarray:
    """The 127 non-negative finite e4m3fn values indexed by their code 0x00..0x7e (exponent bias 7; exponent 0
    is subnormal m * 2^-9; 0x7f is NaN)."""
    codes = np.arange(0x7f)
    exponent, mantissa = codes >> 3, codes & 7
    normal = (1.0 + mantissa / 8.0) * np.exp2(exponent - 7.0)
    subnormal = mantissa * 2.0 ** -9
    return np.where(exponent == 0, subnormal, normal)


def e4m3_encode(x: np.ndarray) -> np.ndarray:
    """float32 -> e4m3fn bytes: nearest value (ties to the even code), |x| saturated to 448, NaN -> 0x7f."""
    x = np.asarray(x, dtype=np.float32)
    table = e4m3_values()
    a = np.minimum(np.abs(x.astype(np.float64)), E4M3_MAX)
    hi = np.clip(np.searchsorted(table, a, side="left"), 0, len(table) - 1)  # first value >= a
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - table[lo], table[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo)
    code = np.where(table[hi] == a, hi, code)
    out = (code | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)
    return np.where(np.isnan(x), np.uint8(0x7f), out).astype(np.uint8)


def e4m3_decode(v: np.ndarray) -> np.ndarray:
    """e4m3fn bytes -> float32."""
    v = np.asarray(v, dtype=np.uint8)
    table = np.append(e4m3_values(), np.nan)
    mag = table[v & 0x7f]
    return np.where(v & 0x80, -mag, mag).astype(np.float32)


# ---- the grid -----------------------------------------------------------------------------------------------------

def _groups(W: np.ndarray, group_size: int) -> np.ndarray:
    """[N, K] -> [N, K/G', G'] with G' = K for per-channel."""
    N, K = W.shape
    G = K if group_size <= 0 else group_size
    return W.reshape(N, K // G, G)


def _is_fp8_weight(scheme) -> bool:
    return scheme.fmt == "fp8" and scheme.w_bits == 8


def grid_params(W: np.ndarray, scheme) -> tuple[np.ndarray, np.ndarray]:
    """Per group: f16 scale (rounded up) and integer zero point (asym; 2^(W-1) for sym, 0 for fp8), both [N, K/G']."""
    g = _groups(W.astype(np.float32), scheme.group_size)
    lo = np.minimum(g.min(axis=2), 0.0).astype(np.float32)
    hi = np.maximum(g.max(axis=2), 0.0).astype(np.float32)
    amax = np.maximum(-lo, hi)
    if _is_fp8_weight(scheme):
        scale = f16_round_up(amax / np.float32(E4M3_MAX))
        zero = np.zeros(scale.shape, np.int64)
    elif scheme.symmetric:
        scale = f16_round_up(amax / np.float32(2 ** (scheme.w_bits - 1) - 1))
        zero = np.full(scale.shape, 2 ** (scheme.w_bits - 1), np.int64)
    else:
        maxq = 2 ** scheme.w_bits - 1
        exact = ((hi.astype(np.float64) - lo.astype(np.float64)) / maxq).astype(np.float32)
        scale = f16_round_up(exact)
        zero = np.clip(np.rint(-lo.astype(np.float64) / scale.astype(np.float64)), 0, maxq).astype(np.int64)
    return scale, zero


def grid_codes(W: np.ndarray, scale: np.ndarray, zero: np.ndarray, scheme) -> np.ndarray:
    """Codes u8 [N, K] of W on the grid given per-group scale/zero [N, K/G']."""
    g = _groups(W.astype(np.float32), scheme.group_size)
    s = scale[:, :, None]
    if _is_fp8_weight(scheme):
        q = e4m3_encode(g / s.astype(np.float32))
        return q.reshape(W.shape)
    if scheme.symmetric:
        qmax = 2 ** (scheme.w_bits - 1) - 1
        q = np.clip(np.rint(g.astype(np.float64) / s.astype(np.float64)), -qmax, qmax) + 2 ** (scheme.w_bits - 1)
    else:
        q = np.clip(np.rint(g.astype(np.float64) / s.astype(np.float64)) + zero[:, :, None], 0,
                    2 ** scheme.w_bits - 1)
    return q.astype(np.uint8).reshape(W.shape)


def grid_values(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, scheme) -> np.ndarray:
    """W_hat f32 [N, K] from codes and per-group scale/zero [N, K/G']."""
    g = _groups(codes, scheme.group_size)
    s = scale.astype(np.float32)[:, :, None]
    if _is_fp8_weight(scheme):
        return (e4m3_decode(g) * s).reshape(codes.shape)
    return ((g.astype(np.int64) - zero[:, :, None]).astype(np.float32) * s).reshape(codes.shape)


# ---- packing --------------------------------------------------------------------------------------------------

def pack(codes: np.ndarray, w_bits: int) -> np.ndarray:
    """codes u8 [N, K] -> qweight u32 [N, K/32*W] (layout of mx_scheme.h, incl. the 3-bit 2+1 planes)."""
    N, K = codes.shape
    c = codes.astype(np.uint32).reshape(N, K // 32, 32)
    if w_bits == 3:
        low = c & 3
        shifts2 = (2 * np.arange(16, dtype=np.uint32))
        w0 = np.bitwise_or.reduce(low[:, :, :16] << shifts2, axis=2)
        w1 = np.bitwise_or.reduce(low[:, :, 16:] << shifts2, axis=2)
        w2 = np.bitwise_or.reduce(((c >> 2) & 1) << np.arange(32, dtype=np.uint32), axis=2)
        words = np.stack([w0, w1, w2], axis=2)
    else:
        per_word = 32 // w_bits
        lanes = c.reshape(N, K // 32, w_bits, per_word)
        words = np.bitwise_or.reduce(lanes << (w_bits * np.arange(per_word, dtype=np.uint32)), axis=3)
    return words.reshape(N, K // 32 * w_bits).astype(np.uint32)


def unpack(qweight: np.ndarray, K: int, w_bits: int) -> np.ndarray:
    """qweight u32 [N, K/32*W] -> codes u8 [N, K]."""
    N = qweight.shape[0]
    words = qweight.astype(np.uint32).reshape(N, K // 32, w_bits)
    if w_bits == 3:
        shifts2 = 2 * np.arange(16, dtype=np.uint32)
        low = np.concatenate([(words[:, :, 0:1] >> shifts2) & 3, (words[:, :, 1:2] >> shifts2) & 3], axis=2)
        high = (words[:, :, 2:3] >> np.arange(32, dtype=np.uint32)) & 1
        return (low | (high << 2)).reshape(N, K).astype(np.uint8)
    per_word = 32 // w_bits
    lanes = (words[:, :, :, None] >> (w_bits * np.arange(per_word, dtype=np.uint32))) & ((1 << w_bits) - 1)
    return lanes.reshape(N, K).astype(np.uint8)


def quantize_rtn(W: np.ndarray, scheme) -> dict:
    """RTN: {"qweight", "scales" [K/G', N] f16, "zeros" [K/G', N] u8 | None, "codes" [N, K], "w_hat" [N, K]}."""
    W = np.asarray(W, dtype=np.float32)
    if scheme.w_bits == 16:
        import torch  # reference only: torch's bf16 rounding is independent of ours

        bits = torch.from_numpy(W.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        w_hat = (bits.astype(np.uint32) << 16).view(np.float32)
        return {"qweight": bits, "scales": None, "zeros": None, "codes": None, "w_hat": w_hat}
    scale, zero = grid_params(W, scheme)
    codes = grid_codes(W, scale, zero, scheme)
    uses_zeros = not scheme.symmetric and not _is_fp8_weight(scheme)
    return {"qweight": pack(codes, scheme.w_bits), "scales": np.ascontiguousarray(scale.T),
            "zeros": np.ascontiguousarray(zero.T.astype(np.uint8)) if uses_zeros else None, "codes": codes,
            "w_hat": grid_values(codes, scale, zero, scheme)}


def dequantize(qweight: np.ndarray, scales, zeros, N: int, K: int, scheme) -> np.ndarray:
    """W_hat f32 [N, K] from the packed buffers."""
    if scheme.w_bits == 16:
        return (qweight.astype(np.uint32) << 16).view(np.float32)
    codes = unpack(qweight, K, scheme.w_bits)
    scale = scales.T
    if _is_fp8_weight(scheme):
        zero = np.zeros(scale.shape, np.int64)
    elif scheme.symmetric:
        zero = np.full(scale.shape, 2 ** (scheme.w_bits - 1), np.int64)
    else:
        zero = zeros.T.astype(np.int64)
    return grid_values(codes, scale, zero, scheme)


# ---- activations ----------------------------------------------------------------------------------------------

def quantize_activations(X: np.ndarray, scheme) -> tuple[np.ndarray, np.ndarray]:
    """Per token: scale = amax / qmax (f32; qmax 127, 7 or 448), q = rint(x / scale) clamped (int) or
    e4m3(x / scale).  Returns the unpacked codes (int64 [M, K] for int, u8 e4m3 for fp8) and scales f32 [M].
    A zero row gets scale 1 and codes 0."""
    X = np.asarray(X, dtype=np.float32)
    fp8 = scheme.fmt == "fp8"
    qmax = np.float32(E4M3_MAX if fp8 else 2 ** (scheme.a_bits - 1) - 1)
    amax = np.abs(X).max(axis=1) if X.shape[0] else np.zeros(0, np.float32)
    scale = (amax / qmax).astype(np.float32)
    zero_row = ~(scale > 0)
    scale = np.where(zero_row, np.float32(1.0), scale).astype(np.float32)
    ratio = (X / scale[:, None]).astype(np.float32)
    if fp8:
        q = np.where(zero_row[:, None], np.uint8(0), e4m3_encode(ratio)).astype(np.uint8)
    else:
        q = np.where(zero_row[:, None], 0, np.clip(np.rint(ratio), -qmax, qmax)).astype(np.int64)
    return q, scale


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int codes [M, K] in [-8, 7] -> u8 [M, K/2], low nibble = even k (two's complement nibbles)."""
    nib = (q.astype(np.int64) & 0xF).astype(np.uint8)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)


def activation_values(q: np.ndarray, scheme) -> np.ndarray:
    """Codes of quantize_activations -> their exact values (before the scale), f64."""
    if scheme.fmt == "fp8":
        return e4m3_decode(q).astype(np.float64)
    return q.astype(np.float64)
