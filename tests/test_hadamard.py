"""Tests of mxmoe.hadamard against the independent NumPy reference (mxmoe/_reference/hadamard.py)."""
from __future__ import annotations

import numpy as np
import pytest

import mxmoe
from mxmoe import hadamard
from mxmoe._reference import hadamard as ref

# Sizes the supported models need (issue 2) plus the mini model's, with the base order each must use
# (largest power-of-two factor).
MODEL_SIZES = {128: 1, 256: 1, 512: 1, 768: 12, 1024: 1, 1408: 44, 2048: 1, 2560: 20, 2816: 44, 4096: 1,
               5632: 44, 14336: 28}
SMALL_SIZES = [1, 2, 4, 8, 12, 20, 24, 28, 36, 40, 44, 52, 56, 96, 176, 224]
UNSUPPORTED_SIZES = [3, 6, 10, 92, 23 * 8]

# Exact +-1 / sqrt(n) entries: float64 matrices agree to a few ulps of 1 (the only rounding is the 1/sqrt(n)).
MATRIX_TOL = 1e-12
# Orthogonality of a float64 n x n matrix: n-term dot products of values ~1/sqrt(n), error ~ n * eps.
ORTHO_TOL = 1e-12
# Transform vs dense product, relative to max|y|: float32 accumulation over log2(p) butterflies plus m base terms
# (at most ~50 additions at eps_32 = 6e-8 each); float64 the same at eps_64.
F32_TOL = 2e-5
F64_TOL = 1e-12


def test_hadamard_base_order():
    for n, m in MODEL_SIZES.items():
        assert hadamard.hadamard_base_order(n) == m, n
        assert hadamard.hadamard_base_order(n) == ref.base_order(n), n
    for n in SMALL_SIZES:
        assert hadamard.hadamard_base_order(n) == ref.base_order(n), n


def test_base_matrices_are_hadamard():
    """Every base order below 200 that the C builds: +-1 entries, H H^T = m I, equal to the reference."""
    built = 0
    for m in range(1, 200):
        try:
            base = mxmoe._C.hadamard_base_matrix(m).astype(np.int64)
        except ValueError:
            continue
        built += 1
        assert set(np.unique(base)) <= {-1, 1}, m
        assert np.array_equal(base @ base.T, m * np.eye(m, dtype=np.int64)), m
        assert np.array_equal(base, ref.base_matrix(m)), m
    assert built == 33  # 1, 2 and the 31 Paley orders 4, 8, 12, ..., 196 (e.g. not 88, 92, 112, 116, 156)


def test_hadamard_signs():
    for seed in (0, 1, 12345, 2**64 - 1):
        signs = hadamard.hadamard_signs(1000, seed)
        assert signs.dtype == np.int8
        assert np.array_equal(signs, ref.splitmix64_signs(1000, seed)), seed
    signs = hadamard.hadamard_signs(4096, 0)
    assert 1800 < (signs > 0).sum() < 2300  # a fair coin (4096 draws: mean 2048, sd 32)


@pytest.mark.parametrize("seed", [None, 0, 42])
@pytest.mark.parametrize("n", SMALL_SIZES + [128, 768, 1408])
def test_hadamard_matrix(n, seed):
    H = hadamard.hadamard_matrix(n, seed=seed)
    assert H.dtype == np.float64 and H.shape == (n, n)
    np.testing.assert_allclose(H, ref.hadamard_matrix(n, seed=seed), rtol=0, atol=MATRIX_TOL)
    np.testing.assert_allclose(H @ H.T, np.eye(n), rtol=0, atol=ORTHO_TOL)
    np.testing.assert_allclose(np.abs(H), 1 / np.sqrt(n), rtol=0, atol=MATRIX_TOL)


@pytest.mark.parametrize("n", sorted(MODEL_SIZES))
def test_hadamard_transform_model_sizes(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n))
    for seed in (None, 7):
        y = hadamard.hadamard_transform(x, seed=seed)
        expected = ref.hadamard_transform(x, seed=seed)  # dense up to 2048, Kronecker identity above
        np.testing.assert_allclose(y, expected, rtol=0, atol=F64_TOL * np.abs(expected).max())
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(np.float32, F32_TOL), (np.float64, F64_TOL)])
@pytest.mark.parametrize("shape,axis", [((5, 768), -1), ((768,), 0), ((2, 44, 3), 1), ((12, 0), 0), ((0, 12), 1),
                                        ((1, 1), -1), ((4, 3, 256), -3 + 2)])
def test_hadamard_transform(shape, axis, dtype, tol):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    before = x.copy()
    y = hadamard.hadamard_transform(x, axis=axis, seed=3)
    assert y.dtype == dtype and y.shape == x.shape and y.flags.c_contiguous
    assert np.array_equal(x, before)  # the input is not modified
    expected = ref.hadamard_transform(x.astype(np.float64), axis=axis, seed=3)
    scale = max(np.abs(expected).max(initial=0.0), 1.0)
    np.testing.assert_allclose(y, expected, rtol=0, atol=tol * scale)


def test_hadamard_transform_inverse():
    rng = np.random.default_rng(1)
    for n in (256, 1408, 2560):
        x = rng.standard_normal((4, n))
        H = hadamard.hadamard_matrix(n, seed=11)
        y = hadamard.hadamard_transform(x, seed=11)
        np.testing.assert_allclose(y @ H, x, rtol=0, atol=F64_TOL * 10)  # x = D H^T y
        # a power of two without signs is its own inverse (Sylvester is symmetric)
        if n == 256:
            np.testing.assert_allclose(hadamard.hadamard_transform(hadamard.hadamard_transform(x)), x, atol=1e-12)


def test_hadamard_transform_equals_matrix_product():
    """The contract: hadamard_transform(x, seed=s) == x @ hadamard_matrix(n, s).T along the last axis."""
    x = np.random.default_rng(2).standard_normal((6, 2816))
    np.testing.assert_allclose(hadamard.hadamard_transform(x, seed=5), x @ hadamard.hadamard_matrix(2816, 5).T,
                               rtol=0, atol=1e-11)


def test_hadamard_transform_bad_inputs():
    x = np.ones((2, 128), dtype=np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        hadamard.hadamard_transform(x.astype(np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        hadamard.hadamard_transform(np.ones((2, 128), dtype=np.int32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        hadamard.hadamard_transform([1.0, 2.0])
    for n in UNSUPPORTED_SIZES:
        with pytest.raises(ValueError, match=f"n={n} .*not supported.*nearest supported sizes"):
            hadamard.hadamard_transform(np.ones((1, n), dtype=np.float32))
        with pytest.raises(ValueError, match="not supported"):
            hadamard.hadamard_matrix(n)
    # a huge unsupported size answers at once (the nearest sizes come from the bases, not a scan of integers)
    with pytest.raises(ValueError, match="nearest supported sizes are 1099511627776 and"):
        hadamard.hadamard_base_order(2**40 + 1)
    with pytest.raises(ValueError, match="length 0"):
        hadamard.hadamard_transform(np.ones((3, 0)))
    with pytest.raises(ValueError, match="axis=2"):
        hadamard.hadamard_transform(x, axis=2)
    with pytest.raises(ValueError, match="at least one dimension"):
        hadamard.hadamard_transform(np.array(1.0))
    with pytest.raises(ValueError, match="non-finite"):
        hadamard.hadamard_transform(np.array([[0.0, np.nan, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        hadamard.hadamard_transform(np.array([[0.0, np.inf]], dtype=np.float32))
    with pytest.raises(ValueError, match="seed"):
        hadamard.hadamard_transform(x, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        hadamard.hadamard_transform(x, seed=1.5)
    with pytest.raises(ValueError, match="positive"):
        hadamard.hadamard_matrix(0)
    with pytest.raises(TypeError, match="n must be an int"):
        hadamard.hadamard_matrix(12.0)
    # the binding validates on its own too (non-contiguous rows)
    with pytest.raises(ValueError, match="C-contiguous"):
        mxmoe._C.hadamard_transform(np.ones((4, 256))[:, ::2])


def test_public_names():
    assert mxmoe.hadamard_transform is hadamard.hadamard_transform
    assert mxmoe.hadamard_matrix is hadamard.hadamard_matrix
