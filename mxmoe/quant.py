"""Quantized weights and activations: RTN, packing, per-token activation quantization (thin layer over mxmoe._C).

The grid and every byte layout are defined once in csrc/mx_scheme.h:

- weights ``w = (u - z) * s`` with unsigned codes ``u``; sym: ``z = 2^(W-1)`` and ``|u - z| <= 2^(W-1) - 1``;
  asym: an integer zero point per group; float16 scales rounded up so that ``|w - w_hat| <= s/2`` (RTN);
- ``qweight`` u32 [N, K/32*W] (u16 [N, K] bf16 bits for w16a16), ``scales`` f16 [K/G', N], ``zeros`` u8 [K/G', N];
- activations per token: int8 [M, K], e4m3 bytes [M, K] (``_fp8``) or int4 packed two per byte [M, K/2]
  (low nibble = even k), one f32 scale per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _C
from ._scheme import Scheme, SchemeLike, as_scheme

__all__ = ["QuantizedWeight", "QuantizedActivations", "quantize_rtn", "quantize_activations",
           "dequantize_activations"]


def _float32_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """float16 -> float32 (the C core takes f32); other dtypes and layouts are left for the binding to reject."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype == np.float16:
        return x.astype(np.float32)
    return x


def _uses_zeros(scheme: Scheme) -> bool:
    """Asym integer weights carry a zero point per group; sym, fp8 (w8 _fp8) and w16 weights do not."""
    return scheme.w_bits != 16 and not scheme.symmetric and not (scheme.fmt == "fp8" and scheme.w_bits == 8)


def _scale_rows(scheme: Scheme, in_features: int) -> int:
    return in_features // scheme.group_size if scheme.group_size > 0 else 1


@dataclass(eq=False)
class QuantizedWeight:
    """A packed [out_features, in_features] weight.  Construction validates the buffers (checkpoints build it from
    loaded arrays): wrong dtype or shape -> ValueError naming the field."""

    scheme: Scheme
    out_features: int
    in_features: int
    qweight: np.ndarray
    scales: Optional[np.ndarray] = None
    zeros: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.scheme = as_scheme(self.scheme)
        s, N, K = self.scheme, self.out_features, self.in_features
        if not isinstance(N, (int, np.integer)) or not isinstance(K, (int, np.integer)) or N <= 0 or K <= 0:
            raise ValueError(f"out_features={N!r} and in_features={K!r} must be positive integers")
        self.out_features, self.in_features = int(N), int(K)
        if K % 32 != 0:
            raise ValueError(f"in_features={K} is not a multiple of 32 ({s})")
        if s.group_size > 0 and s.w_bits != 16 and K % s.group_size != 0:
            raise ValueError(f"in_features={K} is not a multiple of group_size={s.group_size} ({s})")
        if s.w_bits == 16:
            self._check("qweight", self.qweight, np.uint16, (N, K))
            for field in ("scales", "zeros"):
                if getattr(self, field) is not None:
                    raise ValueError(f"{field} must be None for {s} (bf16 weights have no scales)")
            return
        rows = _scale_rows(s, K)
        self._check("qweight", self.qweight, np.uint32, (N, K // 32 * s.w_bits))
        self._check("scales", self.scales, np.float16, (rows, N))
        if _uses_zeros(s):
            self._check("zeros", self.zeros, np.uint8, (rows, N))
            if self.zeros.size and int(self.zeros.max()) > (1 << s.w_bits) - 1:
                raise ValueError(f"zeros has a zero point {int(self.zeros.max())} > 2^{s.w_bits} - 1 ({s})")
        elif self.zeros is not None:
            raise ValueError(f"zeros must be None for {s} (no zero point)")
        if not np.all(np.isfinite(self.scales)):
            raise ValueError(f"scales has non-finite values ({s})")

    def _check(self, field: str, array: object, dtype: type, shape: tuple[int, int]) -> None:
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{field} must be a numpy.ndarray of {np.dtype(dtype)} {shape}, got "
                             f"{type(array).__name__} ({self.scheme})")
        if array.dtype != dtype or array.shape != shape:
            raise ValueError(f"{field} must be {np.dtype(dtype)} {shape}, got {array.dtype} {array.shape} "
                             f"({self.scheme}, N={self.out_features}, K={self.in_features})")
        if not array.flags.c_contiguous or not array.flags.aligned:
            setattr(self, field, np.ascontiguousarray(array))

    @classmethod
    def from_codes(cls, codes: np.ndarray, scales: np.ndarray, zeros: Optional[np.ndarray],
                   scheme: SchemeLike) -> "QuantizedWeight":
        """Pack unsigned codes u8 [N, K] (values on the scheme's grid) with their f16 scales / u8 zero points."""
        s = as_scheme(scheme)
        codes = np.ascontiguousarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise ValueError(f"codes must be uint8 [N, K], got {codes.dtype} {codes.shape}")
        if codes.size and int(codes.max()) > (1 << s.w_bits) - 1:
            raise ValueError(f"codes has a value {int(codes.max())} > 2^{s.w_bits} - 1 ({s})")
        qweight = _C.pack_codes(codes, s.as_tuple())
        return cls(s, codes.shape[0], codes.shape[1], qweight, np.ascontiguousarray(scales, dtype=np.float16),
                   None if zeros is None else np.ascontiguousarray(zeros, dtype=np.uint8))

    def codes(self) -> np.ndarray:
        """The unsigned codes u8 [N, K] (unpacked qweight); ValueError for w16a16."""
        if self.scheme.w_bits == 16:
            raise ValueError("w16a16 weights are bf16, not codes")
        return _C.unpack_codes(self.qweight, self.in_features, self.scheme.as_tuple())

    def dequantize(self) -> np.ndarray:
        """W_hat f32 [N, K] on the grid: (u - z) * s, e4m3(u) * s for fp8 weights, or the bf16 values."""
        return _C.dequantize(self.qweight, self.scales, self.zeros, self.out_features, self.in_features,
                             self.scheme.as_tuple())

    def nbytes(self) -> int:
        """Bytes of the packed buffers."""
        return sum(a.nbytes for a in (self.qweight, self.scales, self.zeros) if a is not None)

    def equals(self, other: object) -> bool:
        """Bit-identical: same scheme, shape and buffers."""
        if not isinstance(other, QuantizedWeight):
            return False
        if (self.scheme, self.out_features, self.in_features) != (other.scheme, other.out_features,
                                                                   other.in_features):
            return False
        for a, b in ((self.qweight, other.qweight), (self.scales, other.scales), (self.zeros, other.zeros)):
            if (a is None) != (b is None):
                return False
            if a is not None and (a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes()):
                return False
        return True


def quantize_rtn(W: np.ndarray, scheme: SchemeLike) -> QuantizedWeight:
    """Round-to-nearest quantization of W [out, in] (f32 or f16) on the scheme's grid (per-group scales)."""
    s = as_scheme(scheme)
    W = _float32_matrix(W, "W")
    qweight, scales, zeros = _C.quantize_rtn(W, s.as_tuple())
    return QuantizedWeight(s, W.shape[0], W.shape[1], qweight, scales, zeros)


@dataclass(eq=False)
class QuantizedActivations:
    """Per-token quantized activations: values int8 [M, K] | uint8 e4m3 [M, K] | uint8 packed int4 [M, K/2];
    scales f32 [M]; x ~= q * scale."""

    scheme: Scheme
    values: np.ndarray
    scales: np.ndarray

    @property
    def in_features(self) -> int:
        return self.values.shape[1] * (2 if self.scheme.a_bits == 4 else 1)


def quantize_activations(X: np.ndarray, scheme: SchemeLike) -> QuantizedActivations:
    """Per-token symmetric quantization of X [M, K] (f32 or f16) to the scheme's activation format:
    int8 (scale = amax/127), int4 (amax/7) or e4m3 (amax/448).  ValueError for a16 schemes."""
    s = as_scheme(scheme)
    if not s.quantizes_activations:
        raise ValueError(f"scheme {s} keeps 16-bit activations: nothing to quantize")
    X = _float32_matrix(X, "X")
    values, scales = _C.quantize_activations(X, s.as_tuple())
    return QuantizedActivations(s, values, scales)


def dequantize_activations(qa: QuantizedActivations) -> np.ndarray:
    """X_hat f32 [M, K] = q * scale per row."""
    s = as_scheme(qa.scheme)
    return _C.dequantize_activations(qa.values, qa.scales, qa.in_features, s.as_tuple())
