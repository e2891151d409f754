"""Tests of mxmoe.ref_group_gemm (C: csrc/gemm_ref.c) against dequantize + NumPy matmul and the NumPy emulation
mxmoe/_reference/gemm.py."""
from __future__ import annotations

import numpy as np
import pytest

import mxmoe
from mxmoe import GemmProblem, Scheme
from mxmoe._reference import gemm as rg

# a16: the C sums K f32 products in f32 (vector lanes of 4, each a sequential sum of K/4 terms, then combined), so
# |error| <= (K/4 + 2) * 2^-24 * sum_k |x_k w_k|; for the K <= 512 used here that is < 7.8e-6 -> 1e-5.
MX_TOL_A16 = 1e-5
MX_TESTED_K_MAX = 512
# Quantized activations: the C and the emulation perform the same f32 operations in the same order (exact integer /
# fp8 group dot products, then acc += f32(d_g) * (s_a * s_g)), so they agree bit for bit; the tolerance (a few f32
# ulps of |Y|) only guards against a compiler contracting the multiply-add into an FMA.
MX_TOL_EMULATION = 4 * 2.0 ** -23
# Against the float64 product of the dequantized operands the emulation differs by its f32 roundings only:
# one rounding of s_a * s_g, of d_g (|d_g| may exceed 2^24), of the product and of each of the K/G' sums,
# so (K/G' + 3) * 2^-24 relative to sum_g |d_g s_a s_g| <= sum_k |x_hat_k w_hat_k|; K/G' <= 16 here -> 2e-6.
MX_TOL_QUANTIZED_VS_F64 = 2e-6

A16_SCHEMES = ["w16a16", "w8a16_g-1_sym", "w4a16_g-1_asym", "w4a16_g128_asym", "w3a16_g128_asym",
               "w2a16_g128_asym", "w4a16_g32_sym"]
ACT_SCHEMES = ["w8a8_g-1_sym", "w8a8_g-1_sym_fp8", "w4a8_g-1_sym", "w4a8_g128_asym", "w4a4_g-1_sym",
               "w4a4_g128_sym", "w8a8_g32_asym", "w2a8_g32_asym", "w3a4_g64_asym", "w4a8_g-1_sym_fp8",
               "w8a8_g64_sym_fp8"]


def make_weight(N: int, K: int, scheme: str, seed: int) -> mxmoe.QuantizedWeight:
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((N, K)) * rng.uniform(0.01, 1.0, (N, 1))).astype(np.float32)
    return mxmoe.quantize_rtn(W, scheme)


def make_x(M: int, K: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    X = (rng.standard_normal((M, K)) * rng.uniform(0.1, 10.0, (M, 1))).astype(np.float32)
    if M > 3:
        X[3] = 0.0  # a token of zeros
    return X


def enumerate_shapes():
    """(M, N, K): empty and single-token problems, M below/above the micro-kernel's 2 rows and the 128-token work
    blocks, N tails (not a multiple of the 4-channel micro-kernel), K not a power of two."""
    yield from [(0, 8, 128), (1, 1, 128), (1, 5, 256), (2, 4, 128), (17, 36, 256), (33, 70, 512), (64, 12, 384),
                (261, 6, 128)]  # 261 tokens: three token blocks of the C work split, the last one odd


def bound_a16(X: np.ndarray, W_hat: np.ndarray) -> np.ndarray:
    return MX_TOL_A16 * (np.abs(X.astype(np.float64)) @ np.abs(W_hat.astype(np.float64)).T)


@pytest.mark.parametrize("scheme", A16_SCHEMES)
def test_ref_group_gemm_a16(scheme: str) -> None:
    shapes = [(M, N, K) for M, N, K in enumerate_shapes() if K % max(Scheme.parse(scheme).group_size, 32) == 0]
    problems = [GemmProblem(make_x(M, K, i), make_weight(N, K, scheme, i)) for i, (M, N, K) in enumerate(shapes)]
    outputs = mxmoe.ref_group_gemm(problems)
    assert len(outputs) == len(problems)
    for (M, N, K), p, Y in zip(shapes, problems, outputs):
        assert K <= MX_TESTED_K_MAX
        assert Y.shape == (M, N) and Y.dtype == np.float32
        W_hat = p.weight.dequantize()
        expect = p.x.astype(np.float64) @ W_hat.astype(np.float64).T
        assert np.all(np.abs(Y - expect) <= bound_a16(p.x, W_hat)), f"{M=}, {N=}, {K=}, {scheme=}"
        np.testing.assert_allclose(Y, rg.group_gemm(p.x, p.weight.qweight, p.weight.scales, p.weight.zeros, N, K,
                                                    p.weight.scheme), rtol=0, atol=np.max(bound_a16(p.x, W_hat),
                                                                                         initial=0))


@pytest.mark.parametrize("scheme", ACT_SCHEMES)
def test_ref_group_gemm_quantized_activations(scheme: str) -> None:
    s = Scheme.parse(scheme)
    shapes = [(M, N, K) for M, N, K in enumerate_shapes() if K % max(s.group_size, 32) == 0]
    problems = [(make_x(M, K, i), make_weight(N, K, scheme, i)) for i, (M, N, K) in enumerate(shapes)]
    outputs = mxmoe.ref_group_gemm(problems)
    for (M, N, K), (x, w), Y in zip(shapes, problems, outputs):
        emulated = rg.group_gemm(x, w.qweight, w.scales, w.zeros, N, K, s)
        scale = np.max(np.abs(emulated), initial=0.0)
        np.testing.assert_allclose(Y, emulated, rtol=0, atol=MX_TOL_EMULATION * scale, err_msg=f"{M=} {scheme=}")
        # independent of the emulation: the f64 product of the dequantized operands
        if M:
            x_hat = mxmoe.dequantize_activations(mxmoe.quantize_activations(x, s)).astype(np.float64)
            W_hat = w.dequantize().astype(np.float64)
            bound = MX_TOL_QUANTIZED_VS_F64 * (np.abs(x_hat) @ np.abs(W_hat).T)
            assert np.all(np.abs(Y - x_hat @ W_hat.T) <= bound), f"{M=}, {N=}, {K=}, {scheme=}"


def test_ref_group_gemm_mixed_schemes_one_call() -> None:
    """Many problems of every scheme in one call give the same results as one call per problem."""
    names = A16_SCHEMES + ACT_SCHEMES
    rng = np.random.default_rng(7)
    problems = []
    for i in range(40):
        name = names[i % len(names)]
        g = max(Scheme.parse(name).group_size, 32)
        K = int(rng.choice([k for k in (128, 256, 384) if k % g == 0]))
        problems.append((make_x(int(rng.integers(0, 20)), K, i), make_weight(int(rng.integers(1, 40)), K, name, i)))
    together = mxmoe.ref_group_gemm(problems)
    for p, Y in zip(problems, together):
        np.testing.assert_array_equal(Y, mxmoe.ref_group_gemm([p])[0])


def test_ref_group_gemm_one_problem_takes_all_rows() -> None:
    K, N = 256, 48
    weights = [make_weight(N, K, "w4a8_g128_asym", e) for e in range(8)]
    X = make_x(300, K, 0)
    problems = [(X if e == 5 else X[:0], w) for e, w in enumerate(weights)]
    outputs = mxmoe.ref_group_gemm(problems)
    assert [Y.shape[0] for Y in outputs] == [0, 0, 0, 0, 0, 300, 0, 0]
    w = weights[5]
    np.testing.assert_allclose(outputs[5], rg.group_gemm(X, w.qweight, w.scales, w.zeros, N, K, w.scheme), rtol=0,
                               atol=MX_TOL_EMULATION * np.abs(outputs[5]).max())


def test_ref_group_gemm_all_empty() -> None:
    w = make_weight(8, 128, "w4a16_g128_asym", 0)
    outputs = mxmoe.ref_group_gemm([(np.zeros((0, 128), np.float32), w)] * 3)
    assert [Y.shape for Y in outputs] == [(0, 8)] * 3
    assert mxmoe.ref_group_gemm([]) == []


def test_ref_group_gemm_thread_count_independent() -> None:
    problems = [(make_x(9 + i, 256, i), make_weight(20 + 3 * i, 256, name, i))
                for i, name in enumerate(["w4a16_g128_asym", "w8a8_g-1_sym", "w8a8_g-1_sym_fp8", "w4a4_g-1_sym"])]
    one = mxmoe.ref_group_gemm(problems, n_threads=1)
    two = mxmoe.ref_group_gemm(problems, n_threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_ref_group_gemm_float16_x() -> None:
    w = make_weight(8, 128, "w4a16_g128_asym", 0)
    x = make_x(5, 128, 0)
    np.testing.assert_array_equal(mxmoe.ref_group_gemm([(x.astype(np.float16), w)])[0],
                                  mxmoe.ref_group_gemm([(x.astype(np.float16).astype(np.float32), w)])[0])


# ---- bad input ----------------------------------------------------------------------------------------------

@pytest.fixture
def weight() -> mxmoe.QuantizedWeight:
    return make_weight(8, 128, "w4a8_g128_asym", 0)


def test_ref_group_gemm_bad_dtype(weight) -> None:
    with pytest.raises(TypeError, match="X must have dtype float32"):
        mxmoe.ref_group_gemm([(np.zeros((2, 128), np.float64), weight)])


def test_ref_group_gemm_non_contiguous(weight) -> None:
    with pytest.raises(ValueError, match="contiguous"):
        mxmoe.ref_group_gemm([(np.zeros((2, 256), np.float32)[:, ::2], weight)])


def test_ref_group_gemm_bad_ndim(weight) -> None:
    with pytest.raises(ValueError, match="2-dimensional"):
        mxmoe.ref_group_gemm([(np.zeros((2, 1, 128), np.float32), weight)])


def test_ref_group_gemm_mismatched_k(weight) -> None:
    with pytest.raises(ValueError, match=r"problem 1: x has K=96 .* in_features=128"):
        mxmoe.ref_group_gemm([(np.zeros((2, 128), np.float32), weight), (np.zeros((2, 96), np.float32), weight)])


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("scheme", ["w4a16_g128_asym", "w4a8_g128_asym"])
def test_ref_group_gemm_nonfinite(value: float, scheme: str) -> None:
    x = np.ones((3, 128), np.float32)
    x[2, 9] = value
    with pytest.raises(ValueError, match=r"problem 0: X has a non-finite value .* at \[2, 9\]"):
        mxmoe.ref_group_gemm([(x, make_weight(8, 128, scheme, 0))])


def test_ref_group_gemm_bad_problem(weight) -> None:
    with pytest.raises(TypeError, match="problem 0"):
        mxmoe.ref_group_gemm([np.zeros((2, 128), np.float32)])
    with pytest.raises(TypeError, match="QuantizedWeight"):
        mxmoe.ref_group_gemm([(np.zeros((2, 128), np.float32), weight.qweight)])
    with pytest.raises(ValueError, match="n_threads"):
        mxmoe.ref_group_gemm([(np.zeros((2, 128), np.float32), weight)], n_threads=0)


def test_ref_group_gemm_binding_checks_buffers(weight) -> None:
    """The C binding validates raw buffers too (callers may bypass QuantizedWeight)."""
    from mxmoe import _C
    x = np.zeros((2, 128), np.float32)
    bad_scales = np.zeros((2, 8), np.float16)
    with pytest.raises(ValueError, match="problem 0: scales must have shape"):
        _C.ref_group_gemm([(x, weight.qweight, bad_scales, weight.zeros, 8, 128, weight.scheme.as_tuple())])
    with pytest.raises(ValueError, match="problem 0: zeros must have shape"):
        _C.ref_group_gemm([(x, weight.qweight, weight.scales, None, 8, 128, weight.scheme.as_tuple())])
    with pytest.raises(ValueError, match="qweight has shape"):
        _C.ref_group_gemm([(x, weight.qweight, weight.scales, weight.zeros, 9, 128, weight.scheme.as_tuple())])
    with pytest.raises(ValueError, match="accepted forms"):
        _C.ref_group_gemm([(x, weight.qweight, weight.scales, weight.zeros, 8, 128, "w4a8_g100_asym")])
