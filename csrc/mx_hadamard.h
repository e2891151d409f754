/* mx_hadamard.h — orthonormal (randomized) Hadamard transforms for n = m * 2^k.
 *
 * The matrix.  For n = m * p with p = 2^k and an order-m Hadamard matrix H_m built in code,
 *
 *     H_n = (H_m (x) H_p) / sqrt(n)        (x) = Kronecker product, H_m the OUTER factor
 *
 *   so element i = a*p + b of a vector (a in [0, m), b in [0, p)) is coordinate (a, b).  H_p is Sylvester's
 *   matrix in natural order, H_p[i][j] = (-1)^popcount(i & j).  H_m (m > 1) is a Paley matrix:
 *
 *     Paley I   m = q + 1, q a prime power with q = 3 (mod 4):  H_m = I + S,  S = [[0, 1^T], [-1, Q]]
 *     Paley II  m = 2(q + 1), q a prime power with q = 1 (mod 4):  C = [[0, 1^T], [1, Q]] (a symmetric
 *               conference matrix); every 0 of C becomes [[1, -1], [-1, -1]] and every +-1 becomes
 *               +-[[1, 1], [1, -1]]
 *
 *   where Q[a][b] = chi(a - b) is the Jacobsthal matrix of GF(q): chi(0) = 0, chi(x) = +1 for non-zero squares,
 *   -1 otherwise.  Elements of GF(q), q = r^e, are the integers 0..q-1 read as base-r digit vectors (polynomial
 *   coefficients, lowest digit first), multiplied modulo the monic irreducible f = x^e + c_{e-1} x^{e-1} + ... + c_0
 *   with the smallest integer sum_i c_i r^i (for e = 1: plain arithmetic modulo q).  Paley I is tried before
 *   Paley II.
 *
 * Choice of m.  n = m0 * 2^k0 with m0 odd.  m0 = 1: m = 1 (pure Sylvester).  Otherwise the smallest
 *   m = m0 * 2^j (j = 2, 3, ..., k0; a Hadamard order > 2 is a multiple of 4) that Paley I or II builds, i.e. the
 *   largest power-of-two factor (fastest transform).  Examples: 768 = 12 * 64, 1408 = 44 * 32, 2560 = 20 * 128,
 *   14336 = 28 * 512.  Other n are MX_ERR_UNSUPPORTED with a message naming the nearest supported size.
 *
 * Randomized transform.  With a sign vector d (+-1, e.g. from mx_hadamard_signs) the transform is y = H_n D x,
 *   D = diag(d): the signs are applied BEFORE the Hadamard matrix.  Both are orthogonal, so the inverse is
 *   x = D H_n^T y.
 *
 * Signs from a seed (splitmix64, so that every language can reproduce them):
 *     state = seed;  for i in 0..n-1:
 *         state += 0x9E3779B97F4A7C15;  z = state;
 *         z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;  z = (z ^ (z >> 27)) * 0x94D049BB133111EB;  z ^= z >> 31;
 *         d[i] = (z >> 63) ? -1 : +1                     (all arithmetic modulo 2^64)
 */
#ifndef MX_HADAMARD_H
#define MX_HADAMARD_H

#include "mx_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest base order built (m * m bytes of +-1, m flops per element of the transform). */
#define MX_HADAMARD_MAX_BASE 4096

/* The base order m of size n (1 for powers of two).  MX_ERR_UNSUPPORTED for other n, with the message naming
 * the nearest supported sizes around n; MX_ERR_INVALID_ARG for n < 1. */
MX_API enum mx_status mx_hadamard_base_order(int64_t n, int32_t *m, mx_error *err);

/* h: [m, m] int8, the unnormalised +-1 base matrix of order m (1, 2, or a Paley order; see above).
 * H H^T = m I.  MX_ERR_UNSUPPORTED when no construction here gives order m. */
MX_API enum mx_status mx_hadamard_base_matrix(int32_t m, int8_t *h, mx_error *err);

/* signs: [n] int8 +-1 from `seed` (splitmix64, see above). */
MX_API void mx_hadamard_signs(int64_t n, uint64_t seed, int8_t *signs);

/* x: [rows, n] f32 / f64, transformed in place along the last axis: x[r] <- H_n D x[r].
 * signs: [n] int8 +-1 or NULL (D = I).  x must be finite (MX_ERR_NONFINITE otherwise; x is then untouched).
 * Parallel over rows (OpenMP). */
MX_API enum mx_status mx_hadamard_transform_f32(float *x, int64_t rows, int64_t n, const int8_t *signs,
                                                mx_error *err);
MX_API enum mx_status mx_hadamard_transform_f64(double *x, int64_t rows, int64_t n, const int8_t *signs,
                                                mx_error *err);

/* out: [n, n] f64, the matrix of the transform: H_n D (so y = out @ x for a column vector x).
 * signs: [n] int8 +-1 or NULL. */
MX_API enum mx_status mx_hadamard_matrix(int64_t n, const int8_t *signs, double *out, mx_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MX_HADAMARD_H */
