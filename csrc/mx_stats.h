/* mx_stats.h — calibration statistics: the Hessians H = X^T X of the inputs each linear block sees.
 *
 * Profiling streams every MoE layer's tokens through the experts and, per expert and block, adds the rows the
 * block receives to a running H.  One call per (expert, batch):
 *
 *     double *H = calloc(K * K, sizeof *H);               // one accumulator per expert and input space
 *     mx_error err;
 *     if (mx_stats_accumulate_xtx(x, rows, K, NULL, H, &err) != MX_OK) puts(err.message);     // H += X^T X
 *     if (mx_stats_accumulate_xtx(x, rows, K, w2, Hw, &err) != MX_OK) puts(err.message);      // Hw += X^T diag(w2) X
 *
 * Why a double accumulator with float rows: an expert of a popular layer sees ~65k calibration tokens; a float
 * running sum of 65k positive terms has relative error up to ~65k * 2^-24 ~ 4e-3 (about 4 of float's 7 digits
 * lost, and worse for the small off-diagonal entries that are differences of large partial sums), which shows up
 * as indefinite Hessians and noisy GPTQ.  Products of two floats are exact in double, so accumulating them in
 * double keeps ~1e-16 relative error per addition: H is as accurate as its float inputs allow.  The rows stay
 * float (what the model produced) so the caller's buffers are half the size.
 */
#ifndef MX_STATS_H
#define MX_STATS_H

#include "mx_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* x: [rows, K] f32 (finite), row_weights: [rows] f32 >= 0 and finite, or NULL for all ones,
 * H: [K, K] f64, updated in place:  H += sum_r row_weights[r] * x[r]^T x[r]  (both triangles written, so H stays
 * exactly symmetric).  Pass squared routing weights as row_weights for the routing-weighted Hessian.
 * rows == 0 returns MX_OK with H untouched.  Errors: K <= 0, rows < 0, NULL pointers (INVALID_ARG), a NaN/Inf
 * in x or row_weights (NONFINITE), a negative row weight (INVALID_ARG); H is untouched on error.
 * Runs on OpenMP threads (tiles of H are independent); deterministic for a given thread count and input. */
MX_API enum mx_status mx_stats_accumulate_xtx(const float *x, int64_t rows, int64_t K, const float *row_weights,
                                              double *H, mx_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MX_STATS_H */
