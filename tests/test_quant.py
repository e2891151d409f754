"""Tests of mxmoe.quant (C: csrc/quant.c) against the NumPy reference mxmoe/_reference/quant.py."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import mxmoe
from mxmoe import Scheme
from mxmoe import _C
from mxmoe._reference import quant as rq
from mxmoe.quant import QuantizedActivations, QuantizedWeight

# |w - w_hat| <= s/2 holds exactly for the int grid (w_hat = (u - z) s is exact in f32, the quotient w/s is taken in
# double); the slack only covers a quotient that double rounding puts on a .5 tie (relative 2^-52 -> 2^-40 margin).
MX_TOL_GRID_REL = 2.0 ** -40
# e4m3 keeps 3 mantissa bits: a normal value is off by at most half a unit in the last place, 2^-4 relative; in the
# subnormal range (|v| < 2^-6) the spacing is 2^-9, half of it 2^-10 (times the scale).
MX_FP8_REL = 2.0 ** -4
MX_FP8_SUBNORMAL_ABS = 2.0 ** -10
# Activation codes are rint(x / s) with s = amax / qmax in f32; x / s may exceed qmax by an f32 rounding before the
# clamp, so the s/2 bound gets a few f32 ulps of slack.
MX_TOL_ACT_REL = 4 * 2.0 ** -23

BITS = (2, 3, 4, 8)
GROUPS = (-1, 32, 64, 128)
INT_SCHEMES = [Scheme(b, 16, g, sym) for b, g, sym in itertools.product(BITS, GROUPS, (True, False))]
ALL_SCHEMES = INT_SCHEMES + [Scheme.parse("w8a8_g-1_sym_fp8"), Scheme(8, 8, 32, True, "fp8"),
                             Scheme.parse("w16a16")]


def awkward_weight(N: int = 24, K: int = 256, seed: int = 0) -> np.ndarray:
    """Rows of different magnitudes plus the awkward cases: an all-zero row, an all-zero group, a constant row,
    an all-negative row, an all-positive row and a lone outlier."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((N, K)) * rng.uniform(1e-3, 4.0, (N, 1))).astype(np.float32)
    awkward = [(1, lambda r: 0.0 * r), (2, lambda r: np.where(np.arange(K) < K // 2, 0.0, r)),
               (3, lambda r: np.full_like(r, 0.75)), (4, lambda r: -np.abs(r)), (5, np.abs),
               (6, lambda r: np.where(np.arange(K) == 17, 300.0, r))]
    for row, make in awkward:
        if row < N:
            W[row] = make(W[row])
    return W


def scale_per_element(q: QuantizedWeight) -> np.ndarray:
    """The f32 scale of every weight element [N, K]."""
    G = q.in_features if q.scheme.group_size <= 0 else q.scheme.group_size
    return np.repeat(q.scales.astype(np.float32).T, G, axis=1)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=str)
def test_quantize_rtn(scheme: Scheme) -> None:
    W = awkward_weight()
    q = mxmoe.quantize_rtn(W, scheme)
    ref = rq.quantize_rtn(W, scheme)
    N, K = W.shape
    assert (q.out_features, q.in_features, q.scheme) == (N, K, scheme)
    # bit-identical to the reference quantizer and packer
    np.testing.assert_array_equal(q.qweight, ref["qweight"])
    W_hat = q.dequantize()
    np.testing.assert_array_equal(W_hat, ref["w_hat"])
    np.testing.assert_array_equal(W_hat, rq.dequantize(q.qweight, q.scales, q.zeros, N, K, scheme))
    if scheme.w_bits == 16:
        assert q.scales is None and q.zeros is None
        np.testing.assert_allclose(W_hat, W, rtol=2.0 ** -8, atol=0)  # bf16 keeps 8 significant bits
        return
    np.testing.assert_array_equal(q.scales.view(np.uint16), ref["scales"].view(np.uint16))
    assert np.all(np.isfinite(q.scales)) and np.all(q.scales > 0)
    if ref["zeros"] is None:
        assert q.zeros is None
    else:
        np.testing.assert_array_equal(q.zeros, ref["zeros"])
        assert int(q.zeros.max()) <= 2 ** scheme.w_bits - 1
    # pack/unpack identity against the NumPy packer
    codes = q.codes()
    np.testing.assert_array_equal(codes, ref["codes"])
    np.testing.assert_array_equal(rq.pack(codes, scheme.w_bits), q.qweight)
    np.testing.assert_array_equal(rq.unpack(q.qweight, K, scheme.w_bits), codes)
    # error bounds
    s = scale_per_element(q)
    err = np.abs(W.astype(np.float64) - W_hat)
    if scheme.fmt == "fp8":
        assert np.all(err <= np.maximum(MX_FP8_REL * np.abs(W), MX_FP8_SUBNORMAL_ABS * s))
    else:
        assert np.all(err <= s / 2 * (1 + MX_TOL_GRID_REL)), f"max excess {np.max(err - s / 2)} ({scheme})"
        if scheme.symmetric:
            assert codes.min() >= 1, "the sym grid never produces the code 0"
            assert codes.max() <= 2 ** scheme.w_bits - 1
    assert np.all(W_hat[1] == 0.0), "an all-zero row stays exactly zero"


def test_quantize_rtn_float16_input() -> None:
    W = awkward_weight(N=8, K=128).astype(np.float16)
    for scheme in ("w4a16_g128_asym", "w8a8_g-1_sym", "w16a16"):
        assert mxmoe.quantize_rtn(W, scheme).equals(mxmoe.quantize_rtn(W.astype(np.float32), scheme))


def test_quantize_rtn_scheme_object_or_name() -> None:
    W = awkward_weight(N=4, K=64)
    assert mxmoe.quantize_rtn(W, "w3a16_g32_asym").equals(mxmoe.quantize_rtn(W, Scheme.parse("w3a16_g32_asym")))


def test_quantize_rtn_single_row() -> None:
    W = awkward_weight(N=1, K=32, seed=3)
    q = mxmoe.quantize_rtn(W, "w2a16_g32_asym")
    np.testing.assert_array_equal(q.dequantize(), rq.quantize_rtn(W, q.scheme)["w_hat"])


def test_quantize_rtn_scale_rounding() -> None:
    """Scales are the smallest f16 >= the exact scale (C conversion checked against NumPy's float16)."""
    rng = np.random.default_rng(5)
    W = (rng.standard_normal((64, 32)) * 10.0 ** rng.integers(-6, 3, (64, 1))).astype(np.float32)
    q = mxmoe.quantize_rtn(W, "w4a16_g-1_sym")
    exact = np.abs(W).max(axis=1) / np.float32(7)
    s = q.scales[0].astype(np.float32)
    assert np.all(s >= exact)
    below = np.nextafter(q.scales[0], np.float16(0)).astype(np.float32)
    assert np.all(below < exact)


@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack(bits: int) -> None:
    rng = np.random.default_rng(bits)
    N, K = 7, 96
    codes = rng.integers(0, 2 ** bits, (N, K), dtype=np.uint8)
    scheme = Scheme(bits, 16, 32, False)
    scales = np.ones((K // 32, N), np.float16)
    zeros = np.full((K // 32, N), 2 ** (bits - 1), np.uint8)
    q = QuantizedWeight.from_codes(codes, scales, zeros, scheme)
    np.testing.assert_array_equal(q.qweight, rq.pack(codes, bits))
    np.testing.assert_array_equal(q.codes(), codes)
    np.testing.assert_array_equal(rq.unpack(q.qweight, K, bits), codes)


def test_pack_bit_layout() -> None:
    """The documented layout, checked on single codes: W=4 code i of a pack sits in word i // 8, bits 4*(i % 8);
    W=3 keeps the low 2 bits in words 0/1 and bit 2 of code i in bit i of word 2."""
    codes = np.zeros((1, 32), np.uint8)
    codes[0, 13] = 0xB
    assert list(rq.pack(codes, 4)[0]) == [0, 0xB << 20, 0, 0]
    assert list(_C.pack_codes(codes, Scheme(4, 16, 32, True).as_tuple())[0]) == [0, 0xB << 20, 0, 0]
    codes[0, 13] = 0b101
    codes[0, 20] = 0b110
    expect = [0b01 << 26, 0b10 << 8, (1 << 13) | (1 << 20)]
    assert list(rq.pack(codes, 3)[0]) == expect
    assert list(_C.pack_codes(codes, Scheme(3, 16, 32, False).as_tuple())[0]) == expect


def test_e4m3_conversion() -> None:
    """C e4m3 encode/decode against the reference (nearest, ties to even, saturation, NaN)."""
    values = rq.e4m3_values()
    midpoints = (values[:-1] + values[1:]) / 2
    rng = np.random.default_rng(11)
    x = np.concatenate([values, midpoints, -midpoints, np.nextafter(midpoints.astype(np.float32), np.float32(0)),
                        rng.uniform(-500, 500, 4000), rng.uniform(-0.03, 0.03, 4000),
                        [449.0, 464.0, 465.0, 1e9, -1e9, 0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(np.float32)
    np.testing.assert_array_equal(_C.e4m3_encode(x), rq.e4m3_encode(x))
    every_code = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(_C.e4m3_decode(every_code), rq.e4m3_decode(every_code))


def test_e4m3_reference_matches_torch() -> None:
    """The reference e4m3 encoder itself agrees with torch.float8_e4m3fn (in its non-saturating range)."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch without float8_e4m3fn")
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.uniform(-448, 448, 5000), rng.uniform(-0.02, 0.02, 5000)]).astype(np.float32)
    expect = torch.from_numpy(x).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(rq.e4m3_encode(x), expect)


ACT_SCHEMES = ["w8a8_g-1_sym", "w4a4_g-1_sym", "w8a8_g-1_sym_fp8"]


def awkward_activations(M: int, K: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((M, K)) * rng.uniform(1e-3, 50.0, (M, 1))).astype(np.float32)
    if M > 2:
        X[1] = 0.0  # a zero row
        X[2, 5] = 1e4  # an outlier token
    return X


def reference_values(X: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """The reference codes in the stored layout and the scales."""
    q, s = rq.quantize_activations(X, scheme)
    if scheme.a_bits == 4:
        return rq.pack_int4(q), s
    return (q if scheme.fmt == "fp8" else q.astype(np.int8)), s


@pytest.mark.parametrize("name", ACT_SCHEMES)
@pytest.mark.parametrize("M", [0, 1, 17])
def test_quantize_activations(name: str, M: int) -> None:
    scheme = Scheme.parse(name)
    X = awkward_activations(M)
    qa = mxmoe.quantize_activations(X, name)
    values, scales = reference_values(X, scheme)
    assert qa.values.dtype == values.dtype and qa.values.shape == values.shape
    np.testing.assert_array_equal(qa.values, values)
    np.testing.assert_array_equal(qa.scales, scales)
    if M > 2:
        assert qa.scales[1] == 1.0 and not np.any(mxmoe.dequantize_activations(qa)[1])
    X_hat = mxmoe.dequantize_activations(qa)
    err = np.abs(X.astype(np.float64) - X_hat)
    s = qa.scales.astype(np.float64)[:, None]
    if scheme.fmt == "fp8":
        assert np.all(err <= np.maximum(MX_FP8_REL * np.abs(X), MX_FP8_SUBNORMAL_ABS * s) * (1 + MX_TOL_ACT_REL))
    else:
        assert np.all(err <= s / 2 * (1 + MX_TOL_ACT_REL))


def test_quantize_activations_float16_input() -> None:
    X = awkward_activations(5).astype(np.float16)
    a = mxmoe.quantize_activations(X, "w4a8_g128_asym")
    b = mxmoe.quantize_activations(X.astype(np.float32), "w4a8_g128_asym")
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.scales, b.scales)


@pytest.mark.parametrize("name", ACT_SCHEMES)
def test_dequantize_activations(name: str) -> None:
    scheme = Scheme.parse(name)
    X = awkward_activations(9, K=32, seed=4)
    q, scales = rq.quantize_activations(X, scheme)
    stored = reference_values(X, scheme)[0]
    got = mxmoe.dequantize_activations(QuantizedActivations(scheme, stored, scales))
    expect = (rq.activation_values(q, scheme) * scales[:, None].astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got, expect)


# ---- QuantizedWeight --------------------------------------------------------------------------------------------

def test_quantized_weight_equals_and_nbytes() -> None:
    W = awkward_weight(N=8, K=128)
    a = mxmoe.quantize_rtn(W, "w4a16_g128_asym")
    b = QuantizedWeight(a.scheme.name, 8, 128, a.qweight.copy(), a.scales.copy(), a.zeros.copy())
    assert a.equals(b) and b.scheme == a.scheme
    assert a.nbytes() == 8 * 128 // 2 + 8 * 2 + 8
    b.zeros[0, 0] ^= 1
    assert not a.equals(b)
    assert not a.equals(mxmoe.quantize_rtn(W, "w4a16_g-1_asym"))


@pytest.mark.parametrize("field,bad", [
    ("qweight", np.zeros((8, 16), np.int32)),
    ("qweight", np.zeros((8, 15), np.uint32)),
    ("scales", np.zeros((1, 8), np.float32)),
    ("scales", np.zeros((2, 8), np.float16)),
    ("zeros", np.zeros((1, 8), np.int8)),
    ("zeros", None),
    ("zeros", np.full((1, 8), 16, np.uint8)),
    ("scales", np.full((1, 8), np.inf, np.float16)),
])
def test_quantized_weight_validates_buffers(field: str, bad) -> None:
    q = mxmoe.quantize_rtn(awkward_weight(N=8, K=128), "w4a16_g128_asym")
    fields = {"qweight": q.qweight, "scales": q.scales, "zeros": q.zeros, field: bad}
    with pytest.raises(ValueError, match=field):
        QuantizedWeight(q.scheme, 8, 128, **fields)


def test_quantized_weight_rejects_zeros_for_sym_and_scales_for_w16() -> None:
    q = mxmoe.quantize_rtn(awkward_weight(N=8, K=128), "w8a8_g-1_sym")
    with pytest.raises(ValueError, match="zeros"):
        QuantizedWeight(q.scheme, 8, 128, q.qweight, q.scales, np.zeros((1, 8), np.uint8))
    w16 = mxmoe.quantize_rtn(awkward_weight(N=8, K=128), "w16a16")
    with pytest.raises(ValueError, match="scales"):
        QuantizedWeight(w16.scheme, 8, 128, w16.qweight, np.ones((1, 8), np.float16))
    with pytest.raises(ValueError, match="in_features"):
        QuantizedWeight(q.scheme, 8, 100, q.qweight, q.scales)


def test_quantized_weight_non_contiguous_buffers_are_copied() -> None:
    q = mxmoe.quantize_rtn(awkward_weight(N=8, K=128), "w4a16_g128_asym")
    strided = np.asfortranarray(q.qweight)
    r = QuantizedWeight(q.scheme, 8, 128, strided, q.scales, q.zeros)
    assert r.qweight.flags.c_contiguous and r.equals(q)


# ---- bad input ----------------------------------------------------------------------------------------------

def test_quantize_rtn_bad_dtype() -> None:
    with pytest.raises(TypeError, match="W must have dtype float32"):
        mxmoe.quantize_rtn(np.zeros((4, 32), np.float64), "w4a16_g-1_asym")
    with pytest.raises(TypeError, match="numpy"):
        mxmoe.quantize_rtn([[0.0] * 32], "w4a16_g-1_asym")


def test_quantize_rtn_non_contiguous() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        mxmoe.quantize_rtn(np.zeros((64, 64), np.float32)[:, ::2], "w4a16_g-1_asym")


def test_quantize_rtn_bad_ndim() -> None:
    with pytest.raises(ValueError, match="2-dimensional"):
        mxmoe.quantize_rtn(np.zeros(64, np.float32), "w4a16_g-1_asym")
    with pytest.raises(ValueError, match="2-dimensional"):
        mxmoe.quantize_rtn(np.zeros((2, 2, 32), np.float32), "w4a16_g-1_asym")


def test_quantize_rtn_k_not_multiple_of_group() -> None:
    with pytest.raises(ValueError, match="group_size=128"):
        mxmoe.quantize_rtn(np.zeros((4, 96), np.float32), "w4a16_g128_asym")


def test_quantize_rtn_k_not_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        mxmoe.quantize_rtn(np.zeros((4, 48), np.float32), "w4a16_g-1_asym")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_quantize_rtn_nonfinite(value: float) -> None:
    W = np.zeros((4, 32), np.float32)
    W[2, 7] = value
    with pytest.raises(ValueError, match=r"non-finite .* at \[2, 7\]"):
        mxmoe.quantize_rtn(W, "w4a16_g-1_asym")


@pytest.mark.parametrize("name", ["w5a16_g128_asym", "w4a16_g100_asym", "bogus"])
def test_quantize_rtn_bad_scheme(name: str) -> None:
    with pytest.raises(ValueError, match="accepted forms"):
        mxmoe.quantize_rtn(np.zeros((4, 128), np.float32), name)


def test_quantize_activations_rejects_a16() -> None:
    with pytest.raises(ValueError, match="16-bit activations"):
        mxmoe.quantize_activations(np.zeros((2, 32), np.float32), "w4a16_g128_asym")


def test_quantize_activations_bad_input() -> None:
    with pytest.raises(TypeError, match="X must have dtype float32"):
        mxmoe.quantize_activations(np.zeros((2, 32), np.int32), "w8a8_g-1_sym")
    with pytest.raises(ValueError, match="contiguous"):
        mxmoe.quantize_activations(np.zeros((4, 64), np.float32)[:, ::2], "w8a8_g-1_sym")
    with pytest.raises(ValueError, match="2-dimensional"):
        mxmoe.quantize_activations(np.zeros(32, np.float32), "w8a8_g-1_sym")
    X = np.ones((3, 32), np.float32)
    X[1, 4] = np.nan
    with pytest.raises(ValueError, match=r"non-finite .* at \[1, 4\]"):
        mxmoe.quantize_activations(X, "w8a8_g-1_sym")
    with pytest.raises(ValueError, match="even"):
        mxmoe.quantize_activations(np.ones((3, 33), np.float32), "w4a4_g-1_sym")


def test_dequantize_activations_bad_input() -> None:
    qa = mxmoe.quantize_activations(np.ones((3, 32), np.float32), "w8a8_g-1_sym")
    with pytest.raises(ValueError, match="do not match"):
        mxmoe.dequantize_activations(QuantizedActivations(qa.scheme, qa.values, qa.scales[:2]))
    with pytest.raises(TypeError, match="values must have dtype int8"):
        mxmoe.dequantize_activations(QuantizedActivations(qa.scheme, qa.values.view(np.uint8), qa.scales))


MINI_MODEL = __import__("pathlib").Path(__file__).resolve().parents[1] / "models" / "qwen2moe-mini"


def test_quantize_rtn_real_weights() -> None:
    """Real expert weights of the bundled Qwen2-MoE mini model: bit-identical to the reference, within the s/2
    bound, and the error shrinks as bits grow."""
    torch = pytest.importorskip("torch")
    safetensors = pytest.importorskip("safetensors")
    shard = MINI_MODEL / "model-00001-of-00004.safetensors"
    with safetensors.safe_open(str(shard), framework="pt") as f:
        weights = [f.get_tensor(f"model.layers.0.mlp.experts.0.{name}.weight").to(torch.float32).numpy()
                   for name in ("gate_proj", "down_proj")]
    for W in weights:
        errors = []
        for name in ("w2a16_g128_asym", "w3a16_g128_asym", "w4a16_g128_asym", "w8a16_g-1_sym"):
            q = mxmoe.quantize_rtn(W, name)
            W_hat = q.dequantize()
            np.testing.assert_array_equal(W_hat, rq.quantize_rtn(W, q.scheme)["w_hat"])
            assert np.all(np.abs(W.astype(np.float64) - W_hat) <= scale_per_element(q) / 2 * (1 + MX_TOL_GRID_REL))
            errors.append(float(np.linalg.norm(W - W_hat)))
        assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01 * np.linalg.norm(W)
