/* mx_gemm_ref.h — the reference mixed-precision GroupGEMM on packed weights (CPU).
 *
 * One call computes Y_i = X_i W_iᵀ for many problems (one per expert block), each with its own scheme, exactly as
 * the GPU kernels define it.  It is the oracle of the CUDA kernels and the CPU runtime of quantized models.
 *
 * Arithmetic per scheme (W_hat = the dequantized weight, see mx_scheme.h for the grid):
 *   a16 (incl. w16a16)  Y = X W_hatᵀ in f32, X as given (f32); f32 dot products (summation order unspecified).
 *   a8 / a4, int        X is quantized per token with mx_quantize_activations (q_a, s_a); per weight group g:
 *                       d_g = sum_k q_a[k] * (u[k] - z_g)  exactly in int32, then, in group order,
 *                       y += (float)d_g * (s_a * s_g)      in f32 (no FMA).
 *   a8 fp8              X is quantized to e4m3 per token; weights are e4m3 (w8) or integers u - z (w < 8).  Every
 *                       product is exact; each group's dot product is computed exactly (in double: all partial sums
 *                       are multiples of 2^-18 below 2^53 for K < 2^17), rounded to f32, then as above
 *                       y += d_g * (s_a * s_g).
 * Limits: per group |d_g| must fit int32: G * 127 * (2^W - 1) < 2^31 (K <= 66311 for per-channel w8 asym).
 *
 * Example (two experts of one layer, each with its own scheme; buffers from mx_quantize_rtn):
 *
 *     mx_gemm_problem problems[2] = {
 *         {x0, M0, N, K, s_w4a16, qweight0, scales0, zeros0, y0},   // Y0 [M0, N] = X0 [M0, K] W0ᵀ
 *         {x1, M1, N, K, s_w8a8, qweight1, scales1, NULL, y1},
 *     };
 *     mx_error err;
 *     if (mx_ref_group_gemm(problems, 2, 0, &err) != MX_OK) puts(err.message);
 *
 * Threads: OpenMP over (problem, token block, N-tile) work items, largest first (dynamic schedule), each unpacking
 * its tile of weights once into a scratch and reusing it for all its token rows.  Results do not depend on the
 * number of threads. */
#ifndef MX_GEMM_REF_H
#define MX_GEMM_REF_H

#include "mx_scheme.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mx_gemm_problem {
    const float *x;          /* [M, K] f32 (may be NULL when M == 0) */
    int64_t M, N, K;         /* tokens, out_features, in_features */
    mx_scheme scheme;
    const uint32_t *qweight; /* [N, K/32*W] u32; for w16a16 the bf16 bits u16 [N, K] */
    const uint16_t *scales;  /* [K/G', N] f16 (NULL for w16a16) */
    const uint8_t *zeros;    /* [K/G', N] u8 (asym int weights only, else ignored) */
    float *y;                /* [M, N] f32 output (may be NULL when M == 0) */
} mx_gemm_problem;

/* problems: [n_problems]; n_threads <= 0 uses the OpenMP default.  Validates every problem first (shape, scheme,
 * buffers, finite X), then computes; on failure no y is guaranteed written.  Messages name the problem index. */
MX_API enum mx_status mx_ref_group_gemm(const mx_gemm_problem *problems, int64_t n_problems, int n_threads,
                                        mx_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MX_GEMM_REF_H */
