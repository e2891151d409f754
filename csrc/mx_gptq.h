/* mx_gptq.h — GPTQ (Frantar et al., 2022, arXiv 2210.17323) on the one grid of mx_quant.h.
 *
 * Given W [N, K] and the layer Hessian H = X^T X [K, K] of its inputs, quantize column by column, spreading each
 * column's rounding error over the columns not yet quantized with the upper Cholesky factor of H^-1
 * (Hinv = U, H^-1 = U^T U), in blocks of `blocksize` columns with a lazy batched update of the rest.
 * The output is packed exactly like RTN (mx_scheme.h layouts), so the kernels need no g_idx.
 *
 * Decisions (the NumPy reference mxmoe/_reference/gptq.py implements the same ones):
 *   - Precision: H, the Cholesky factors and U in f64; W, the error and the updates applied to W in f32.
 *   - Damping: lambda = damp * mean(diag H over live columns) is added to the diagonal.
 *   - Dead columns (H_ii == 0: the input channel was 0 for every calibration token): their row and column of H
 *     are zeroed and H_ii := mean(live diagonal), which decouples them.  Unlike the reference GPTQ code we do NOT
 *     zero their weights: a channel that was silent in a few hundred calibration tokens need not be silent in
 *     deployment, so its weights are kept and simply rounded (no error flows into or out of them).
 *   - All-zero H (an expert that calibration never reached): plain RTN, flag MX_GPTQ_ZERO_HESSIAN.
 *   - Cholesky failure (H not positive semi-definite, e.g. f32 round-off in an almost singular H): a pivot below
 *     lambda/2 (impossible for a PSD H in exact arithmetic, the damped matrix has every eigenvalue >= lambda) or a
 *     non-finite factor retries with the relative damping x10 (from at least 1e-4), up to 1e4; flag
 *     MX_GPTQ_EXTRA_DAMPING.  If even that fails: plain RTN, flag MX_GPTQ_RTN_FALLBACK.  Never NaN.
 *   - act_order: columns are processed by decreasing diag(H) (stable: ties keep the lower index first).
 *   - static_groups (or per-channel schemes): every group's scale / zero point is computed up front from the
 *     original W in original column order, so act_order does not reorder groups.  Without static groups (only
 *     allowed without act_order) a group's parameters come from the current W when its block starts, as the
 *     reference implementation does (W at block start: in-block updates are not yet applied to later columns).
 *   - w16a16: bf16 rounding (as RTN); fp8 weights: the same algorithm on the e4m3 grid.
 */
#ifndef MX_GPTQ_H
#define MX_GPTQ_H

#include "mx_scheme.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mx_gptq_options {
    int32_t blocksize;     /* columns per lazy-update block, >= 1 (128) */
    double damp;           /* relative damping, >= 0 (0.01) */
    int32_t act_order;     /* 1: process columns by decreasing diag(H) */
    int32_t static_groups; /* 1: group parameters from the original W (required with act_order and G > 0) */
} mx_gptq_options;

/* Bits of mx_gptq_report.flags. */
enum mx_gptq_flag {
    MX_GPTQ_DEAD_COLUMNS = 1,  /* some H_ii == 0 (kept weights, see above) */
    MX_GPTQ_ZERO_HESSIAN = 2,  /* H == 0: the result is RTN */
    MX_GPTQ_EXTRA_DAMPING = 4, /* Cholesky needed more damping than asked (report.damp) */
    MX_GPTQ_RTN_FALLBACK = 8,  /* Cholesky failed at every damping: the result is RTN */
};

typedef struct mx_gptq_report {
    int32_t flags;        /* enum mx_gptq_flag bits; 0 = plain GPTQ */
    int64_t dead_columns; /* number of H_ii == 0 */
    double damp;          /* relative damping that succeeded (options.damp unless EXTRA_DAMPING) */
} mx_gptq_report;

/* The defaults of the paper / reference code: blocksize 128, damp 0.01, act_order 1, static_groups 1. */
MX_API mx_gptq_options mx_gptq_default_options(void);

/* w: [N, K] f32 (finite), H: [K, K] f64 (finite, symmetric up to 1e-4 relative, diag >= 0)
 * -> qweight [N, K/32*W] u32 (u16 [N, K] for w16), scales f16 [K/G', N], zeros u8 [K/G', N] (asym only; may be
 * NULL otherwise); report (may be NULL).  Parallel (OpenMP). */
MX_API enum mx_status mx_gptq(const float *w, const double *H, int64_t N, int64_t K, const mx_scheme *s,
                              const mx_gptq_options *options, uint32_t *qweight, uint16_t *scales, uint8_t *zeros,
                              mx_gptq_report *report, mx_error *err);

/* The factor GPTQ uses, exposed for tests: H: [K, K] f64 symmetric positive definite -> U: [K, K] f64 upper
 * triangular with H^-1 = U^T U.  MX_ERR_INVALID_ARG when a pivot is <= min_pivot (H not positive definite
 * enough). */
MX_API enum mx_status mx_gptq_inverse_cholesky(const double *H, int64_t K, double min_pivot, double *U,
                                               mx_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MX_GPTQ_H */
