/* gptq.c — GPTQ on the shared grid (mx_quant.h), with the dense linear algebra it needs written here: a blocked
 * GEMM-update kernel (AVX2/FMA when the CPU has it, portable C otherwise), a blocked Cholesky and a blocked
 * triangular inverse, all OpenMP-parallel.  No BLAS: the project decided not to link one.  See mx_gptq.h for the
 * algorithm's decisions (damping, dead columns, fallbacks, groups). */
#include "mx_gptq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mx_quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MX_HAVE_X86 1
#else
#define MX_HAVE_X86 0
#endif

/* ------------------------------------------------------------------------------------------------------------
 * C[rows, cols] -= A[rows, kd] * B[kd, cols], all row-major with leading dimensions lda/ldb/ldc.
 *
 * The three products GPTQ spends its time in (the lazy batch update N*K^2, Cholesky K^3/3, triangular inverse
 * K^3/3) are all this one operation.  A micro-kernel keeps a 6 x NR tile of C in registers (NR = 16 floats or
 * 8 doubles: two 256-bit vectors per row) and streams a KC-deep slice of A (6 rows) and B (NR columns, in L1).
 * Tasks of RB x CB tiles of C are spread over the OpenMP threads.
 * ---------------------------------------------------------------------------------------------------------- */

#define MX_MR 6   /* rows of the register tile */
#define MX_KC 256 /* depth slice: a [KC, NR] slice of B stays in L1 across the row tiles */
#define MX_RB 48  /* rows per parallel task (8 register tiles) */
#define MX_CB 128 /* columns per parallel task */

/* Least multiply-adds for which a loop goes parallel.  This machine class (2 cores shared with other jobs, plus
 * OpenBLAS / torch thread pools spinning in the same process) can deschedule one of our threads for a whole time
 * slice (ms), so a parallel region must carry several ms of work to pay for its barrier. */
#define MX_PARALLEL_MIN_WORK (1 << 22)

static int cpu_has_avx2_fma(void) {
#if MX_HAVE_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#if MX_HAVE_X86 && defined(__GNUC__)
// A: [6, kd] (lda), B: [kd, 16] (ldb), C: [6, 16] (ldc) f32; C -= A B with AVX2 FMA.
__attribute__((target("avx2,fma"))) static void micro_f32_avx2(int64_t kd, const float *A, int64_t lda,
                                                                const float *B, int64_t ldb, float *C,
                                                                int64_t ldc) {
    __m256 c[MX_MR][2];
    for (int r = 0; r < MX_MR; r++) {
        c[r][0] = _mm256_loadu_ps(C + r * ldc);
        c[r][1] = _mm256_loadu_ps(C + r * ldc + 8);
    }
    for (int64_t k = 0; k < kd; k++) {
        __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
        for (int r = 0; r < MX_MR; r++) {
            __m256 a = _mm256_broadcast_ss(A + r * lda + k);
            c[r][0] = _mm256_fnmadd_ps(a, b0, c[r][0]);
            c[r][1] = _mm256_fnmadd_ps(a, b1, c[r][1]);
        }
    }
    for (int r = 0; r < MX_MR; r++) {
        _mm256_storeu_ps(C + r * ldc, c[r][0]);
        _mm256_storeu_ps(C + r * ldc + 8, c[r][1]);
    }
}

// A: [6, kd], B: [kd, 8], C: [6, 8] f64; C -= A B with AVX2 FMA.
__attribute__((target("avx2,fma"))) static void micro_f64_avx2(int64_t kd, const double *A, int64_t lda,
                                                                const double *B, int64_t ldb, double *C,
                                                                int64_t ldc) {
    __m256d c[MX_MR][2];
    for (int r = 0; r < MX_MR; r++) {
        c[r][0] = _mm256_loadu_pd(C + r * ldc);
        c[r][1] = _mm256_loadu_pd(C + r * ldc + 4);
    }
    for (int64_t k = 0; k < kd; k++) {
        __m256d b0 = _mm256_loadu_pd(B + k * ldb), b1 = _mm256_loadu_pd(B + k * ldb + 4);
        for (int r = 0; r < MX_MR; r++) {
            __m256d a = _mm256_broadcast_sd(A + r * lda + k);
            c[r][0] = _mm256_fnmadd_pd(a, b0, c[r][0]);
            c[r][1] = _mm256_fnmadd_pd(a, b1, c[r][1]);
        }
    }
    for (int r = 0; r < MX_MR; r++) {
        _mm256_storeu_pd(C + r * ldc, c[r][0]);
        _mm256_storeu_pd(C + r * ldc + 4, c[r][1]);
    }
}
#endif

/* Portable micro-kernels and the serial tile loop, for T = float (NR 16) and double (NR 8). */
#define MX_DEFINE_GEMM(T, SUFFIX, NR)                                                                            \
    static void micro_##SUFFIX##_generic(int64_t kd, const T *A, int64_t lda, const T *B, int64_t ldb, T *C,     \
                                         int64_t ldc) {                                                          \
        T c[MX_MR][NR];                                                                                          \
        for (int r = 0; r < MX_MR; r++)                                                                          \
            for (int j = 0; j < NR; j++) c[r][j] = C[r * ldc + j];                                               \
        for (int64_t k = 0; k < kd; k++)                                                                         \
            for (int r = 0; r < MX_MR; r++) {                                                                    \
                T a = A[r * lda + k];                                                                            \
                for (int j = 0; j < NR; j++) c[r][j] -= a * B[k * ldb + j];                                      \
            }                                                                                                    \
        for (int r = 0; r < MX_MR; r++)                                                                          \
            for (int j = 0; j < NR; j++) C[r * ldc + j] = c[r][j];                                               \
    }                                                                                                            \
                                                                                                                 \
    /* One task, serial: register tiles, then the row and column fringes element by element. */                 \
    static void gemm_tile_##SUFFIX(int avx, int64_t rows, int64_t cols, int64_t kd, const T *A, int64_t lda,     \
                                   const T *B, int64_t ldb, T *C, int64_t ldc) {                                 \
        const int64_t full_rows = rows - rows % MX_MR, full_cols = cols - cols % NR;                             \
        for (int64_t k0 = 0; k0 < kd; k0 += MX_KC) {                                                             \
            const int64_t kc = kd - k0 < MX_KC ? kd - k0 : MX_KC;                                                \
            const T *Ak = A + k0, *Bk = B + k0 * ldb;                                                            \
            for (int64_t j = 0; j < full_cols; j += NR)                                                          \
                for (int64_t i = 0; i < full_rows; i += MX_MR) {                                                 \
                    if (avx) micro_##SUFFIX##_avx2(kc, Ak + i * lda, lda, Bk + j, ldb, C + i * ldc + j, ldc);    \
                    else micro_##SUFFIX##_generic(kc, Ak + i * lda, lda, Bk + j, ldb, C + i * ldc + j, ldc);     \
                }                                                                                                \
            for (int64_t i = 0; i < rows; i++) {                                                                 \
                const int64_t j0 = i < full_rows ? full_cols : 0; /* fringe rows: every column */               \
                for (int64_t k = 0; k < kc; k++) {                                                               \
                    const T a = Ak[i * lda + k];                                                                 \
                    for (int64_t j = j0; j < cols; j++) C[i * ldc + j] -= a * Bk[k * ldb + j];                   \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
    }

/* Parallel over RB x CB tasks (serial below MX_PARALLEL_MIN_WORK multiply-adds). */
#define MX_DEFINE_GEMM_PARALLEL(T, SUFFIX)                                                                       \
    static void gemm_sub_##SUFFIX(int64_t rows, int64_t cols, int64_t kd, const T *A, int64_t lda, const T *B,   \
                                  int64_t ldb, T *C, int64_t ldc) {                                              \
        if (rows <= 0 || cols <= 0 || kd <= 0) return;                                                           \
        const int avx = cpu_has_avx2_fma();                                                                      \
        const int64_t row_tasks = (rows + MX_RB - 1) / MX_RB, col_tasks = (cols + MX_CB - 1) / MX_CB;            \
        _Pragma("omp parallel for collapse(2) schedule(dynamic) if (rows * cols * kd > MX_PARALLEL_MIN_WORK)") \
        for (int64_t rt = 0; rt < row_tasks; rt++)                                                               \
            for (int64_t ct = 0; ct < col_tasks; ct++) {                                                         \
                const int64_t r0 = rt * MX_RB, c0 = ct * MX_CB;                                                  \
                const int64_t nr = rows - r0 < MX_RB ? rows - r0 : MX_RB;                                        \
                const int64_t nc = cols - c0 < MX_CB ? cols - c0 : MX_CB;                                        \
                gemm_tile_##SUFFIX(avx, nr, nc, kd, A + r0 * lda, lda, B + c0, ldb, C + r0 * ldc + c0, ldc);     \
            }                                                                                                    \
    }

#if !(MX_HAVE_X86 && defined(__GNUC__))
#define micro_f32_avx2 micro_f32_generic
#define micro_f64_avx2 micro_f64_generic
#endif
MX_DEFINE_GEMM(float, f32, 16)
MX_DEFINE_GEMM(double, f64, 8)
MX_DEFINE_GEMM_PARALLEL(double, f64)

/* ------------------------------------------------------------------------------------------------------------
 * Cholesky and triangular inverse (f64, blocked by MX_NB columns).
 * ---------------------------------------------------------------------------------------------------------- */

#define MX_NB 128

// A: [n, n] f64 symmetric (lower triangle read) -> its lower Cholesky factor L in the lower triangle.
// work: [MX_NB * n + MX_NB * MX_NB].  Returns -1, or the first index whose pivot is not > min_pivot.
static int64_t cholesky_lower(double *A, int64_t n, double min_pivot, double *work) {
    for (int64_t jb = 0; jb < n; jb += MX_NB) {
        const int64_t nb = n - jb < MX_NB ? n - jb : MX_NB;
        if (jb > 0) { /* left-looking: A[jb:, jb:jb+nb] -= L[jb:, :jb] L[jb:jb+nb, :jb]^T */
            double *Bt = work; /* [jb, nb]: Bt[k][j] = L[jb + j][k] */
            for (int64_t j = 0; j < nb; j++)
                for (int64_t k = 0; k < jb; k++) Bt[k * nb + j] = A[(jb + j) * n + k];
            gemm_sub_f64(n - jb, nb, jb, A + jb * n, n, Bt, nb, A + jb * n + jb, n);
        }
        for (int64_t j = 0; j < nb; j++) { /* the diagonal block, unblocked */
            double *rj = A + (jb + j) * n + jb;
            double d = rj[j];
            for (int64_t k = 0; k < j; k++) d -= rj[k] * rj[k];
            if (!(d > min_pivot) || !isfinite(d)) return jb + j;
            rj[j] = sqrt(d);
            for (int64_t i = j + 1; i < nb; i++) {
                double *ri = A + (jb + i) * n + jb, v = ri[j];
                for (int64_t k = 0; k < j; k++) v -= ri[k] * rj[k];
                ri[j] = v / rj[j];
            }
        }
        double *L11t = work + MX_NB * n; /* [nb, nb]: L11t[k][j] = L11[j][k] */
        for (int64_t j = 0; j < nb; j++)
            for (int64_t k = 0; k <= j; k++) L11t[k * nb + j] = A[(jb + j) * n + jb + k];
        /* rows below: x L11^T = a, forward substitution in axpy form (vectorizes without reassociation) */
#pragma omp parallel for schedule(dynamic, 16) if ((n - jb - nb) * nb * nb / 2 > MX_PARALLEL_MIN_WORK)
        for (int64_t i = jb + nb; i < n; i++) {
            double *x = A + i * n + jb;
            for (int64_t j = 0; j < nb; j++) {
                const double xj = x[j] / L11t[j * nb + j];
                x[j] = xj;
                for (int64_t jj = j + 1; jj < nb; jj++) x[jj] -= xj * L11t[j * nb + jj];
            }
        }
    }
    return -1;
}

// L: [n, n] lower -> X: [n, n] = L^-1 (lower; upper triangle zeroed).  work: [MX_NB * n].
// Block row I: X_II = L_II^-1, X[I, :I] = -X_II (L[I, :I] X[:I, :I]).
static void tri_inverse_lower(const double *L, int64_t n, double *X, double *work) {
    memset(X, 0, sizeof(double) * (size_t)(n * n));
    for (int64_t ib = 0; ib < n; ib += MX_NB) {
        const int64_t nb = n - ib < MX_NB ? n - ib : MX_NB;
        for (int64_t j = 0; j < nb; j++) { /* X_II column by column: L_II x = e_j */
            X[(ib + j) * n + ib + j] = 1.0 / L[(ib + j) * n + ib + j];
            for (int64_t i = j + 1; i < nb; i++) {
                double s = 0;
                for (int64_t k = j; k < i; k++) s += L[(ib + i) * n + ib + k] * X[(ib + k) * n + ib + j];
                X[(ib + i) * n + ib + j] = -s / L[(ib + i) * n + ib + i];
            }
        }
        if (ib == 0) continue;
        double *T = work; /* [nb, ib] <- -(L[I, :I] X[:I, :I]); column block J only sees rows K >= J of X */
        memset(T, 0, sizeof(double) * (size_t)(nb * ib));
        const int avx = cpu_has_avx2_fma();
#pragma omp parallel for schedule(dynamic) if (nb * ib * ib / 2 > MX_PARALLEL_MIN_WORK)
        for (int64_t jb = 0; jb < ib; jb += MX_NB)
            gemm_tile_f64(avx, nb, MX_NB, ib - jb, L + ib * n + jb, n, X + jb * n + jb, n, T + jb, ib);
        /* X[I, :I] = X_II T (T already carries the minus sign): compute -(X_II T) and negate */
        gemm_sub_f64(nb, ib, nb, X + ib * n + ib, n, T, ib, X + ib * n, n);
        for (int64_t i = 0; i < nb; i++)
            for (int64_t j = 0; j < ib; j++) X[(ib + i) * n + j] = -X[(ib + i) * n + j];
    }
}

// A: [K, K] f64 symmetric positive definite, in place -> U upper with A^-1 = U^T U.  X: [K, K] scratch,
// work: [MX_NB * K + MX_NB * MX_NB].  Returns -1 or the failing pivot (in reversed order).
// With J the order-reversing permutation: J A J = L L^T, so A = R R^T with R = J L J upper, A^-1 = R^-T R^-1 and
// U = R^-1 = J L^-1 J.  One Cholesky and one triangular inverse (2K^3/3 flops), no full inverse.
static int64_t inverse_cholesky_inplace(double *A, int64_t K, double min_pivot, double *X, double *work) {
    for (int64_t i = 0; i < K * K / 2; i++) { /* A <- J A J: reverse the element order */
        double t = A[i];
        A[i] = A[K * K - 1 - i];
        A[K * K - 1 - i] = t;
    }
    int64_t failed = cholesky_lower(A, K, min_pivot, work);
    if (failed >= 0) return failed;
    tri_inverse_lower(A, K, X, work);
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) A[i * K + j] = j >= i ? X[(K - 1 - i) * K + (K - 1 - j)] : 0.0;
    return -1;
}

enum mx_status mx_gptq_inverse_cholesky(const double *H, int64_t K, double min_pivot, double *U, mx_error *err) {
    if (K <= 0) return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: K=%lld must be positive", (long long)K);
    if (!H || !U) return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: H or U is NULL");
    double *X = malloc(sizeof(double) * (size_t)(K * K));
    double *work = malloc(sizeof(double) * (size_t)(MX_NB * K + MX_NB * MX_NB));
    enum mx_status st = MX_OK;
    if (!X || !work) {
        st = mx_error_set(err, MX_ERR_NOMEM, "gptq: out of memory for the Cholesky of K=%lld", (long long)K);
        goto cleanup;
    }
    memcpy(U, H, sizeof(double) * (size_t)(K * K));
    int64_t failed = inverse_cholesky_inplace(U, K, min_pivot, X, work);
    if (failed >= 0)
        st = mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: H is not positive definite (pivot %lld of K=%lld <= %g)",
                          (long long)(K - 1 - failed), (long long)K, min_pivot);
cleanup:
    free(X);
    free(work);
    return st;
}

// w[j] -= e * h[j] for j < len (multiply, then subtract: identical rounding on both paths, no FMA)
#if MX_HAVE_X86 && defined(__GNUC__)
__attribute__((target("avx2"))) static void row_update_avx2(float *w, float e, const float *h, int64_t len) {
    const __m256 ev = _mm256_set1_ps(e);
    int64_t j = 0;
    for (; j + 8 <= len; j += 8)
        _mm256_storeu_ps(w + j, _mm256_sub_ps(_mm256_loadu_ps(w + j), _mm256_mul_ps(ev, _mm256_loadu_ps(h + j))));
    for (; j < len; j++) w[j] -= e * h[j];
}
#else
#define row_update_avx2 row_update_generic
#endif

static void row_update_generic(float *w, float e, const float *h, int64_t len) {
    for (int64_t j = 0; j < len; j++) w[j] -= e * h[j];
}

/* ------------------------------------------------------------------------------------------------------------
 * The GPTQ core: Algorithm 1 of the paper with lazy batch updates, in processing order.
 *
 * W:      [N, K] f32, columns in processing order (perm), updated in place
 * Hinv:   [K, K] f32, upper Cholesky factor of the damped H^-1 (processing order); Hinv_diag [K] f64
 * perm:   [K] processing position -> original column (group of a column = original column / G)
 * scale:  [K/G, N] f32 and zero [K/G, N] u8 group parameters; with dynamic_groups they are (re)computed from W
 *         when the group's block starts (scales_f16 receives the stored f16 value)
 * Err:    [N, B] f32 scratch, the scaled errors of the current block
 * codes:  [N, K] u8 out, in original column order
 *
 * A row's error only ever moves along that row, so rows are independent: each task takes MX_RB rows through
 * every block (quantize a column, spread its error inside the block, then the lazy update of the columns right
 * of the block as one GEMM on the task's rows).  One parallel loop and no barrier per block, which matters on a
 * shared machine where a descheduled thread stalls every barrier for a time slice.
 * ---------------------------------------------------------------------------------------------------------- */
static void gptq_rows(float *W, const float *Hinv, const double *Hinv_diag, int64_t N, int64_t K, int64_t n0,
                      int64_t rows, const int64_t *perm, const mx_scheme *s, int64_t G, int dynamic_groups,
                      float *scale, uint16_t *scales_f16, uint8_t *zero, float *Err, int64_t B, uint8_t *codes,
                      int avx) {
    for (int64_t i1 = 0; i1 < K; i1 += B) {
        const int64_t i2 = i1 + B < K ? i1 + B : K, count = i2 - i1;
        for (int64_t n = n0; n < n0 + rows; n++) {
            float *w = W + n * K, *err_row = Err + n * B;
            if (dynamic_groups) /* groups starting in this block, from W as it is at the block start */
                for (int64_t g0 = (i1 + G - 1) / G * G; g0 < i2; g0 += G) {
                    const int64_t g = g0 / G;
                    mx_grid_params(w + g0, G, 1, s, &scales_f16[g * N + n], &zero[g * N + n]);
                    scale[g * N + n] = mx_f16_to_f32(scales_f16[g * N + n]);
                }
            for (int64_t i = i1; i < i2; i++) {
                const int64_t column = perm[i], g = column / G;
                const uint8_t code = mx_grid_code(w[i], scale[g * N + n], zero[g * N + n], s);
                const float q = mx_grid_value(code, scale[g * N + n], zero[g * N + n], s);
                codes[n * K + column] = code;
                const float e = (float)((double)(w[i] - q) / Hinv_diag[i]);
                err_row[i - i1] = e;
                /* spread the error over the rest of the block */
                if (avx) row_update_avx2(w + i + 1, e, Hinv + i * K + i + 1, i2 - i - 1);
                else row_update_generic(w + i + 1, e, Hinv + i * K + i + 1, i2 - i - 1);
            }
        }
        /* lazy batch: W[rows, i2:] -= Err[rows] Hinv[i1:i2, i2:] */
        gemm_tile_f32(avx, rows, K - i2, count, Err + n0 * B, B, Hinv + i1 * K + i2, K, W + n0 * K + i2, K);
    }
}

static void gptq_core(float *W, const float *Hinv, const double *Hinv_diag, int64_t N, int64_t K,
                      const int64_t *perm, const mx_scheme *s, int64_t G, int dynamic_groups, float *scale,
                      uint16_t *scales_f16, uint8_t *zero, float *Err, int64_t B, uint8_t *codes) {
    const int avx = cpu_has_avx2_fma();
    const int64_t tasks = (N + MX_RB - 1) / MX_RB;
#pragma omp parallel for schedule(dynamic, 1) if (N * K * K > MX_PARALLEL_MIN_WORK)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t n0 = t * MX_RB, rows = N - n0 < MX_RB ? N - n0 : MX_RB;
        gptq_rows(W, Hinv, Hinv_diag, N, K, n0, rows, perm, s, G, dynamic_groups, scale, scales_f16, zero, Err, B,
                  codes, avx);
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Entry: validate, handle the degenerate Hessians, prepare H (dead columns, order, damping), run the core.
 * ---------------------------------------------------------------------------------------------------------- */

mx_gptq_options mx_gptq_default_options(void) {
    mx_gptq_options o = {128, 0.01, 1, 1};
    return o;
}

typedef struct diag_index {
    double d;
    int64_t i;
} diag_index;

static int by_decreasing_diag(const void *a, const void *b) {
    const diag_index *x = a, *y = b;
    if (x->d != y->d) return x->d > y->d ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i); /* ties: lower index first (stable) */
}

/* Asym integer weights store a zero point per group; sym, fp8 (w8 _fp8) and w16 weights do not. */
static int uses_zero_points(const mx_scheme *s) {
    return s->w_bits != 16 && !s->symmetric && !(s->fmt == MX_FMT_FP8_E4M3 && s->w_bits == 8);
}

/* Symmetry tolerance of H, relative to sqrt(H_ii H_jj): f32-accumulated X^T X from a BLAS is not exactly
 * symmetric (round-off ~1e-7 relative); 1e-4 accepts that and rejects a wrong matrix. */
#define MX_GPTQ_SYMMETRY_TOL 1e-4
#define MX_GPTQ_MAX_DAMP 1e4

static enum mx_status check_inputs(const float *w, const double *H, int64_t N, int64_t K, const mx_scheme *s,
                                   const mx_gptq_options *o, const void *qweight, const void *scales,
                                   const void *zeros, mx_error *err) {
    enum mx_status st = mx_check_weight_shape(N, K, s, err);
    if (st != MX_OK) return st;
    char name[64];
    mx_scheme_format(s, name, sizeof name);
    if (!w || !H || !o || !qweight || (s->w_bits != 16 && !scales))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: NULL buffer (w, H, options, qweight or scales)");
    if (uses_zero_points(s) && !zeros) return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: zeros is NULL for %s", name);
    if (o->blocksize < 1)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: blocksize=%d must be >= 1", (int)o->blocksize);
    if (!(o->damp >= 0) || !isfinite(o->damp))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: damp=%g must be finite and >= 0", o->damp);
    if (o->act_order && !o->static_groups && s->group_size > 0 && s->w_bits != 16)
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "gptq: act_order without static_groups needs a group index "
                            "(g_idx) that the packed layout does not have (%s); use static_groups=True or "
                            "act_order=False", name);
    for (int64_t i = 0; i < N * K; i++)
        if (!isfinite(w[i]))
            return mx_error_set(err, MX_ERR_NONFINITE, "gptq: W has a non-finite value %g at [%lld, %lld] (%s)",
                                (double)w[i], (long long)(i / K), (long long)(i % K), name);
    for (int64_t i = 0; i < K * K; i++)
        if (!isfinite(H[i]))
            return mx_error_set(err, MX_ERR_NONFINITE, "gptq: H has a non-finite value %g at [%lld, %lld]", H[i],
                                (long long)(i / K), (long long)(i % K));
    for (int64_t i = 0; i < K; i++)
        if (H[i * K + i] < 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: H[%lld, %lld]=%g < 0: a Hessian X^T X has a "
                                "non-negative diagonal", (long long)i, (long long)i, H[i * K + i]);
    for (int64_t ib = 0; ib < K; ib += MX_NB) /* MX_NB x MX_NB tiles: the transposed reads stay in cache */
        for (int64_t jb = 0; jb <= ib; jb += MX_NB)
            for (int64_t i = ib; i < ib + MX_NB && i < K; i++)
                for (int64_t j = jb; j < jb + MX_NB && j < i; j++)
                    if (fabs(H[i * K + j] - H[j * K + i]) >
                        MX_GPTQ_SYMMETRY_TOL * sqrt(H[i * K + i] * H[j * K + j]) + 1e-300)
                        return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: H is not symmetric: H[%lld, %lld]=%g "
                                            "but H[%lld, %lld]=%g", (long long)i, (long long)j, H[i * K + j],
                                            (long long)j, (long long)i, H[j * K + i]);
    return MX_OK;
}

enum mx_status mx_gptq(const float *w, const double *H, int64_t N, int64_t K, const mx_scheme *s,
                       const mx_gptq_options *options, uint32_t *qweight, uint16_t *scales, uint8_t *zeros,
                       mx_gptq_report *report, mx_error *err) {
    mx_gptq_report local_report;
    if (!report) report = &local_report;
    memset(report, 0, sizeof *report);
    if (!s) return mx_error_set(err, MX_ERR_INVALID_ARG, "gptq: scheme is NULL");
    enum mx_status st = check_inputs(w, H, N, K, s, options, qweight, scales, zeros, err);
    if (st != MX_OK) return st;
    report->damp = options->damp;
    if (s->w_bits == 16) return mx_quantize_rtn(w, N, K, s, qweight, scales, zeros, err); /* bf16 rounding */

    /* dead columns and the all-zero Hessian */
    double live_sum = 0;
    for (int64_t i = 0; i < K; i++) {
        if (H[i * K + i] == 0) report->dead_columns++;
        live_sum += H[i * K + i];
    }
    if (report->dead_columns) report->flags |= MX_GPTQ_DEAD_COLUMNS;
    if (report->dead_columns == K) {
        report->flags |= MX_GPTQ_ZERO_HESSIAN;
        return mx_quantize_rtn(w, N, K, s, qweight, scales, zeros, err);
    }
    const double mean_diag = live_sum / (double)(K - report->dead_columns);

    const int64_t G = s->group_size > 0 ? s->group_size : K, groups = K / G, B = options->blocksize;
    const int dynamic_groups = !options->static_groups && s->group_size > 0;
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)K);
    diag_index *order = malloc(sizeof(diag_index) * (size_t)K);
    double *A = malloc(sizeof(double) * (size_t)(K * K)), *X = malloc(sizeof(double) * (size_t)(K * K));
    double *work = malloc(sizeof(double) * (size_t)(MX_NB * K + MX_NB * MX_NB));
    double *Hinv_diag = malloc(sizeof(double) * (size_t)K);
    float *Hinv = NULL, *Wp = NULL, *Err = NULL, *scale = NULL;
    uint8_t *zero = NULL, *codes = NULL;
    if (!perm || !order || !A || !X || !work || !Hinv_diag) goto nomem;

    /* processing order: by decreasing diag(H) (dead columns count as the mean) or as given */
    for (int64_t i = 0; i < K; i++) {
        order[i].d = H[i * K + i] == 0 ? mean_diag : H[i * K + i];
        order[i].i = i;
    }
    if (options->act_order) qsort(order, (size_t)K, sizeof *order, by_decreasing_diag);
    for (int64_t i = 0; i < K; i++) perm[i] = order[i].i;

    /* Cholesky of the damped, permuted, symmetrized H; more damping while it fails */
    double damp = options->damp;
    int64_t failed = 0;
    for (;;) {
        const double lambda = damp * mean_diag;
        /* X <- (H + H^T)/2 with dead rows/columns zeroed and their diagonal set to the live mean (tiled), then
         * A <- X[perm][:, perm] + lambda I (row gathers).  X is the inverse's scratch: rebuilt on every try. */
        for (int64_t ib = 0; ib < K; ib += MX_NB)
            for (int64_t jb = 0; jb < K; jb += MX_NB)
                for (int64_t i = ib; i < ib + MX_NB && i < K; i++)
                    for (int64_t j = jb; j < jb + MX_NB && j < K; j++) {
                        const int dead = H[i * K + i] == 0 || H[j * K + j] == 0;
                        X[i * K + j] = dead ? (i == j ? mean_diag : 0.0) : 0.5 * (H[i * K + j] + H[j * K + i]);
                    }
        for (int64_t i = 0; i < K; i++) {
            const double *row = X + perm[i] * K;
            for (int64_t j = 0; j < K; j++) A[i * K + j] = row[perm[j]];
            A[i * K + i] += lambda;
        }
        failed = inverse_cholesky_inplace(A, K, 0.5 * lambda, X, work);
        for (int64_t i = 0; failed < 0 && i < K * K; i++)
            if (!isfinite(A[i])) failed = i / K;
        if (failed < 0) break;
        damp = damp * 10 > 1e-4 ? damp * 10 : 1e-4;
        if (damp > MX_GPTQ_MAX_DAMP) break;
        report->flags |= MX_GPTQ_EXTRA_DAMPING;
    }
    free(X);
    X = NULL;
    if (failed >= 0) { /* even H + 1e4 mean(diag) I failed: H is far from PSD; round to nearest */
        report->flags = (report->flags & ~MX_GPTQ_EXTRA_DAMPING) | MX_GPTQ_RTN_FALLBACK;
        st = mx_quantize_rtn(w, N, K, s, qweight, scales, zeros, err);
        goto cleanup;
    }
    report->damp = damp;
    Hinv = malloc(sizeof(float) * (size_t)(K * K));
    Wp = malloc(sizeof(float) * (size_t)(N * K));
    Err = malloc(sizeof(float) * (size_t)(N * B));
    scale = malloc(sizeof(float) * (size_t)(groups * N));
    zero = malloc((size_t)(groups * N));
    codes = malloc((size_t)(N * K));
    if (!Hinv || !Wp || !Err || !scale || !zero || !codes) goto nomem;
    for (int64_t i = 0; i < K; i++) Hinv_diag[i] = A[i * K + i];
    for (int64_t i = 0; i < K * K; i++) Hinv[i] = (float)A[i];
    free(A);
    A = NULL;

    /* static group parameters from the original W (original column order) */
    if (!dynamic_groups) {
#pragma omp parallel for schedule(static) if (N * K > MX_PARALLEL_MIN_WORK / 16)
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < groups; g++) {
                mx_grid_params(w + n * K + g * G, G, 1, s, &scales[g * N + n], &zero[g * N + n]);
                scale[g * N + n] = mx_f16_to_f32(scales[g * N + n]);
            }
    }
#pragma omp parallel for schedule(static) if (N * K > MX_PARALLEL_MIN_WORK / 4)
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < K; i++) Wp[n * K + i] = w[n * K + perm[i]];

    gptq_core(Wp, Hinv, Hinv_diag, N, K, perm, s, G, dynamic_groups, scale, scales, zero, Err, B, codes);

    if (uses_zero_points(s)) memcpy(zeros, zero, (size_t)(groups * N));
    st = mx_pack_codes(codes, N, K, s, qweight, err);
    goto cleanup;
nomem:
    st = mx_error_set(err, MX_ERR_NOMEM, "gptq: out of memory (N=%lld, K=%lld)", (long long)N, (long long)K);
cleanup:
    free(perm);
    free(order);
    free(A);
    free(X);
    free(work);
    free(Hinv_diag);
    free(Hinv);
    free(Wp);
    free(Err);
    free(scale);
    free(zero);
    free(codes);
    return st;
}
