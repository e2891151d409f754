/* gemm_ref.c — reference mixed-precision GroupGEMM on packed weights (CPU).  Semantics: mx_gemm_ref.h.
 *
 * Plan of one call:
 *   1. validate every problem (nothing is computed when one is wrong);
 *   2. quantize the activations of every a8/a4 problem once (per token, mx_quantize_activations), widened to
 *      int16 (int path) or to their exact values in double (fp8 path);
 *   3. split every problem into work items of up to MX_GEMM_TILE_M tokens x NT output channels, sort them by cost
 *      (largest first) and hand them to the threads dynamically; an item unpacks its [NT, K] weights once into a
 *      per-thread scratch (f32 values, int16 u - z, or exact fp8 values in double) and reuses it for all its token rows with a
 *      2x4 register-blocked micro-kernel whose inner loop the compiler vectorizes (no -march flags needed).
 * Every tile writes a disjoint block of one Y, so results do not depend on the thread count.
 */
#include "mx_gemm_ref.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "mx_quant.h"

enum gemm_path {
    PATH_F32 = 0, /* a16: f32 activations times dequantized weights */
    PATH_INT = 1, /* a8/a4 int: exact int32 group dot products */
    PATH_FP8 = 2, /* a8 fp8: exact e4m3 products, exact group sums */
};

static enum gemm_path problem_path(const mx_scheme *s) {
    if (s->a_bits == 16) return PATH_F32;
    return s->fmt == MX_FMT_FP8_E4M3 ? PATH_FP8 : PATH_INT;
}

static int fp8_weights(const mx_scheme *s) { return s->fmt == MX_FMT_FP8_E4M3 && s->w_bits == 8; }

/* Target bytes of one tile's weight scratch: L1-sized (64 KiB), so the 4 weight rows a micro-kernel streams stay
 * in L1 while the activation rows come from L2 (measured: 16-128 KiB all within 10% on an EPYC, 64 best). */
#define MX_GEMM_TILE_BYTES (64 * 1024)
/* Token rows per work item: bounds the activation rows one tile streams (L2-sized for K <= 4096) and splits a
 * problem with many tokens (a dense layer, an expert taking every token) across threads. */
#define MX_GEMM_TILE_M 128
/* Work (multiply-adds, see work_item.cost) below which one more thread does not pay for its wake-up. */
#define MX_GEMM_MIN_COST_PER_THREAD 1.0e6

// rows of W per tile: a multiple of 4 (the micro-kernel's width), at least 4, at most 64
static int64_t tile_rows(int64_t K) {
    int64_t nt = MX_GEMM_TILE_BYTES / (K * (int64_t)sizeof(float));
    nt = nt / 4 * 4;
    return nt < 4 ? 4 : (nt > 64 ? 64 : nt);
}

/* ---- validation ---- */

static enum mx_status validate_problem(const mx_gemm_problem *p, mx_error *err) {
    enum mx_status st = mx_check_weight_shape(p->N, p->K, &p->scheme, err);
    if (st != MX_OK) return st;
    const mx_scheme *s = &p->scheme;
    char name[64];
    mx_scheme_format(s, name, sizeof name);
    if (p->M < 0) return mx_error_set(err, MX_ERR_INVALID_ARG, "M=%lld is negative (%s)", (long long)p->M, name);
    if (p->M == 0) return MX_OK;
    if (!p->x || !p->y || !p->qweight)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "x, y or qweight is NULL (M=%lld, %s)", (long long)p->M, name);
    if (s->w_bits != 16 && !p->scales) return mx_error_set(err, MX_ERR_INVALID_ARG, "scales is NULL (%s)", name);
    if (s->w_bits != 16 && !s->symmetric && !fp8_weights(s) && !p->zeros)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "zeros is NULL for the asym scheme %s", name);
    const int64_t G = s->group_size > 0 ? s->group_size : p->K;
    enum gemm_path path = problem_path(s);
    if (path == PATH_INT && (double)G * 127.0 * (double)((1 << s->w_bits) - 1) >= 2147483648.0)
        return mx_error_set(err, MX_ERR_UNSUPPORTED,
                            "group of %lld weights may overflow the int32 dot product (%s, K=%lld)", (long long)G,
                            name, (long long)p->K);
    if (path == PATH_FP8 && G >= (1 << 17))
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "fp8 group of %lld >= 2^17 weights is not exact (%s)",
                            (long long)G, name);
    for (int64_t i = 0; i < p->M * p->K; i++)
        if (!isfinite(p->x[i]))
            return mx_error_set(err, MX_ERR_NONFINITE, "X has a non-finite value %g at [%lld, %lld] (%s)",
                                (double)p->x[i], (long long)(i / p->K), (long long)(i % p->K), name);
    return MX_OK;
}

/* ---- activations of one problem, prepared once ---- */

typedef struct prepared_acts {
    int16_t *q16;  /* [M, K] int path: q_a */
    double *qf;    /* [M, K] fp8 path: the exact e4m3 values (double: the dot products run in double) */
    float *scales; /* [M] per-token scales */
} prepared_acts;

static void prepared_free(prepared_acts *a) {
    free(a->q16);
    free(a->qf);
    free(a->scales);
    memset(a, 0, sizeof *a);
}

// x [M, K] f32 -> a->q16 or a->qf [M, K], a->scales [M]
static enum mx_status prepare_acts(const mx_gemm_problem *p, prepared_acts *a, mx_error *err) {
    const int64_t M = p->M, K = p->K;
    const mx_scheme *s = &p->scheme;
    const int64_t value_bytes = s->a_bits == 4 ? M * (K / 2) : M * K;
    uint8_t *values = malloc((size_t)value_bytes);
    a->scales = malloc((size_t)M * sizeof(float));
    if (problem_path(s) == PATH_INT)
        a->q16 = malloc((size_t)(M * K) * sizeof(int16_t));
    else
        a->qf = malloc((size_t)(M * K) * sizeof(double));
    if (!values || !a->scales || (!a->q16 && !a->qf)) {
        free(values);
        return mx_error_set(err, MX_ERR_NOMEM, "no memory for the quantized activations (M=%lld, K=%lld)",
                            (long long)M, (long long)K);
    }
    enum mx_status st = mx_quantize_activations(p->x, M, K, s, values, a->scales, err);
    if (st == MX_OK) {
        if (s->fmt == MX_FMT_FP8_E4M3) {
            for (int64_t i = 0; i < M * K; i++) a->qf[i] = (double)mx_e4m3_to_f32(values[i]);
        } else if (s->a_bits == 8) {
            for (int64_t i = 0; i < M * K; i++) a->q16[i] = (int8_t)values[i];
        } else {
            for (int64_t i = 0; i < M * K; i++) {
                int32_t nib = (values[i / 2] >> ((i & 1) * 4)) & 0xf; /* rows have even K: i/2 stays in its row */
                a->q16[i] = (int16_t)(nib >= 8 ? nib - 16 : nib);
            }
        }
    }
    free(values);
    return st;
}

/* ---- weights of one tile, unpacked into the scratch ---- */

// rows [n0, n0 + nt) of the packed weight -> scratch [nt, K]: f32 values, int16 (u - z) or exact fp8 values
// (e4m3_table: the f32 value of each of the 256 e4m3 bytes)
static void unpack_tile(const mx_gemm_problem *p, enum gemm_path path, int64_t n0, int64_t nt, uint8_t *codes,
                        const float *e4m3_table, void *scratch) {
    const mx_scheme *s = &p->scheme;
    const int64_t K = p->K, N = p->N;
    if (s->w_bits == 16) { /* only the f32 path has w16 */
        const uint16_t *bf = (const uint16_t *)(const void *)p->qweight + n0 * K;
        float *out = scratch;
        for (int64_t i = 0; i < nt * K; i++) out[i] = mx_bf16_to_f32(bf[i]);
        return;
    }
    const int64_t words = K / 32 * s->w_bits;
    /* the tile's rows are contiguous in qweight, so the packer's inverse works on the sub-matrix */
    mx_unpack_codes(p->qweight + n0 * words, nt, K, s, codes, NULL);
    const int64_t G = s->group_size > 0 ? s->group_size : K;
    const int use_zeros = !s->symmetric && !fp8_weights(s);
    for (int64_t r = 0; r < nt; r++) {
        const int64_t n = n0 + r;
        for (int64_t g = 0; g < K / G; g++) {
            const uint8_t *c = codes + r * K + g * G;
            const int32_t z = use_zeros ? p->zeros[g * N + n] : (fp8_weights(s) ? 0 : mx_sym_zero(s->w_bits));
            const float scale = mx_f16_to_f32(p->scales[g * N + n]);
            if (path == PATH_F32) {
                float *out = (float *)scratch + r * K + g * G;
                if (fp8_weights(s))
                    for (int64_t k = 0; k < G; k++) out[k] = e4m3_table[c[k]] * scale;
                else /* the grid's value (u - z) * s, inlined so the loop vectorizes */
                    for (int64_t k = 0; k < G; k++) out[k] = (float)((int32_t)c[k] - z) * scale;
            } else if (path == PATH_INT) {
                int16_t *out = (int16_t *)scratch + r * K + g * G;
                for (int64_t k = 0; k < G; k++) out[k] = (int16_t)((int32_t)c[k] - z);
            } else { /* fp8 activations: e4m3 weights or the integers u - z, exact in double */
                double *out = (double *)scratch + r * K + g * G;
                if (fp8_weights(s))
                    for (int64_t k = 0; k < G; k++) out[k] = e4m3_table[c[k]];
                else
                    for (int64_t k = 0; k < G; k++) out[k] = (double)((int32_t)c[k] - z);
            }
        }
    }
}

/* ---- micro-kernels: 2 activation rows x 4 weight rows over `len` columns ---- */

// x0, x1: [len] f32; w: 4 rows [len] f32 -> out[i*4 + j] = x_i . w_j (f32)
static void dot_f32_2x4(const float *restrict x0, const float *restrict x1, const float *const w[4], int64_t len,
                        float out[8]) {
    const float *restrict w0 = w[0], *restrict w1 = w[1], *restrict w2 = w[2], *restrict w3 = w[3];
    float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13)
    for (int64_t k = 0; k < len; k++) {
        const float a = x0[k], b = x1[k];
        s00 += a * w0[k];
        s01 += a * w1[k];
        s02 += a * w2[k];
        s03 += a * w3[k];
        s10 += b * w0[k];
        s11 += b * w1[k];
        s12 += b * w2[k];
        s13 += b * w3[k];
    }
    out[0] = s00, out[1] = s01, out[2] = s02, out[3] = s03;
    out[4] = s10, out[5] = s11, out[6] = s12, out[7] = s13;
}

// x0, x1: [len] int16; w: 4 rows [len] int16 -> out = exact int32 dot products
static void dot_i16_2x4(const int16_t *restrict x0, const int16_t *restrict x1, const int16_t *const w[4],
                        int64_t len, int32_t out[8]) {
    const int16_t *restrict w0 = w[0], *restrict w1 = w[1], *restrict w2 = w[2], *restrict w3 = w[3];
    int32_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
    /* no omp simd here: integer sums reassociate freely, and the plain loop lets GCC use pmaddwd */
    for (int64_t k = 0; k < len; k++) {
        s00 += x0[k] * w0[k];
        s01 += x0[k] * w1[k];
        s02 += x0[k] * w2[k];
        s03 += x0[k] * w3[k];
        s10 += x1[k] * w0[k];
        s11 += x1[k] * w1[k];
        s12 += x1[k] * w2[k];
        s13 += x1[k] * w3[k];
    }
    out[0] = s00, out[1] = s01, out[2] = s02, out[3] = s03;
    out[4] = s10, out[5] = s11, out[6] = s12, out[7] = s13;
}

// x0, x1: [len] exact fp8 values; w: 4 rows -> exact dot products (double holds every partial sum exactly)
static void dot_fp8_2x4(const double *restrict x0, const double *restrict x1, const double *const w[4],
                        int64_t len, double out[8]) {
    const double *restrict w0 = w[0], *restrict w1 = w[1], *restrict w2 = w[2], *restrict w3 = w[3];
    double s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13)
    for (int64_t k = 0; k < len; k++) {
        const double a = x0[k], b = x1[k];
        s00 += a * w0[k];
        s01 += a * w1[k];
        s02 += a * w2[k];
        s03 += a * w3[k];
        s10 += b * w0[k];
        s11 += b * w1[k];
        s12 += b * w2[k];
        s13 += b * w3[k];
    }
    out[0] = s00, out[1] = s01, out[2] = s02, out[3] = s03;
    out[4] = s10, out[5] = s11, out[6] = s12, out[7] = s13;
}

/* ---- one work item: Y[m0:m_end, n0:n0 + nt] ---- */

static void compute_tile(const mx_gemm_problem *p, const prepared_acts *acts, enum gemm_path path, int64_t m0,
                         int64_t m_end, int64_t n0, int64_t nt, const void *scratch) {
    const mx_scheme *s = &p->scheme;
    const int64_t N = p->N, K = p->K;
    const int64_t G = (path == PATH_F32 || s->group_size <= 0) ? K : s->group_size;
    for (int64_t m = m0; m < m_end; m += 2) {
        const int two = m + 1 < m_end; /* an odd last row is computed twice and written once */
        const int64_t m1 = two ? m + 1 : m;
        for (int64_t j0 = 0; j0 < nt; j0 += 4) {
            /* a tail of fewer than 4 channels repeats the last one; only valid columns are written */
            int64_t rows[4];
            for (int j = 0; j < 4; j++) rows[j] = j0 + j < nt ? j0 + j : nt - 1;
            float acc[8] = {0};
            if (path == PATH_F32) {
                const float *w[4];
                for (int j = 0; j < 4; j++) w[j] = (const float *)scratch + rows[j] * K;
                dot_f32_2x4(p->x + m * K, p->x + m1 * K, w, K, acc);
            } else {
                const float sa[2] = {acts->scales[m], acts->scales[m1]};
                for (int64_t g = 0; g < K / G; g++) {
                    float d[8];
                    if (path == PATH_INT) {
                        const int16_t *w[4];
                        int32_t di[8];
                        for (int j = 0; j < 4; j++) w[j] = (const int16_t *)scratch + rows[j] * K + g * G;
                        dot_i16_2x4(acts->q16 + m * K + g * G, acts->q16 + m1 * K + g * G, w, G, di);
                        for (int i = 0; i < 8; i++) d[i] = (float)di[i];
                    } else {
                        const double *w[4];
                        double dd[8];
                        for (int j = 0; j < 4; j++) w[j] = (const double *)scratch + rows[j] * K + g * G;
                        dot_fp8_2x4(acts->qf + m * K + g * G, acts->qf + m1 * K + g * G, w, G, dd);
                        for (int i = 0; i < 8; i++) d[i] = (float)dd[i];
                    }
                    for (int i = 0; i < 2; i++)
                        for (int j = 0; j < 4; j++) {
                            const float sw = mx_f16_to_f32(p->scales[g * N + n0 + rows[j]]);
                            const float combined = sa[i] * sw;
                            acc[i * 4 + j] += d[i * 4 + j] * combined;
                        }
                }
            }
            for (int j = 0; j < 4 && j0 + j < nt; j++) {
                p->y[m * N + n0 + j0 + j] = acc[j];
                if (two) p->y[m1 * N + n0 + j0 + j] = acc[4 + j];
            }
        }
    }
}

/* ---- the entry ---- */

typedef struct work_item {
    int64_t problem, m0, m_end, n0, nt;
    double cost;
} work_item;

static int by_cost_desc(const void *a, const void *b) {
    const work_item *x = a, *y = b;
    if (x->cost != y->cost) return x->cost < y->cost ? 1 : -1;
    if (x->problem != y->problem) return x->problem < y->problem ? -1 : 1;
    if (x->m0 != y->m0) return x->m0 < y->m0 ? -1 : 1;
    return x->n0 < y->n0 ? -1 : (x->n0 > y->n0);
}

// problems: [n_problems] -> each y [M, N] f32
enum mx_status mx_ref_group_gemm(const mx_gemm_problem *problems, int64_t n_problems, int n_threads,
                                 mx_error *err) {
    /* validate */
    if (n_problems < 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "n_problems=%lld is negative", (long long)n_problems);
    if (n_problems > 0 && !problems) return mx_error_set(err, MX_ERR_INVALID_ARG, "problems is NULL");
    for (int64_t i = 0; i < n_problems; i++) {
        mx_error inner = {MX_OK, ""};
        enum mx_status st = validate_problem(&problems[i], &inner);
        if (st != MX_OK) return mx_error_set(err, st, "problem %lld: %s", (long long)i, inner.message);
    }
    /* work items; early return when there is nothing to compute */
    int64_t n_items = 0, scratch_bytes = 0, codes_bytes = 0;
    for (int64_t i = 0; i < n_problems; i++) {
        const mx_gemm_problem *p = &problems[i];
        if (p->M == 0) continue;
        const int64_t nt = tile_rows(p->K);
        n_items += (p->N + nt - 1) / nt * ((p->M + MX_GEMM_TILE_M - 1) / MX_GEMM_TILE_M);
        /* f32 values, int16 codes or (fp8 path) doubles */
        const int64_t elem = problem_path(&p->scheme) == PATH_FP8 ? (int64_t)sizeof(double) : (int64_t)sizeof(float);
        const int64_t bytes = nt * p->K * elem;
        scratch_bytes = bytes > scratch_bytes ? bytes : scratch_bytes;
        codes_bytes = nt * p->K > codes_bytes ? nt * p->K : codes_bytes;
    }
    if (n_items == 0) return MX_OK;

    enum mx_status status = MX_OK;
    work_item *items = malloc((size_t)n_items * sizeof *items);
    prepared_acts *acts = calloc((size_t)n_problems, sizeof *acts);
    enum mx_status *act_status = calloc((size_t)n_problems, sizeof *act_status);
    mx_error *act_err = calloc((size_t)n_problems, sizeof *act_err);
    if (!items || !acts || !act_status || !act_err) {
        status = mx_error_set(err, MX_ERR_NOMEM, "no memory for %lld work items", (long long)n_items);
        goto cleanup;
    }
    int64_t w = 0;
    for (int64_t i = 0; i < n_problems; i++) {
        const mx_gemm_problem *p = &problems[i];
        if (p->M == 0) continue;
        const int64_t nt = tile_rows(p->K);
        for (int64_t m0 = 0; m0 < p->M; m0 += MX_GEMM_TILE_M)
            for (int64_t n0 = 0; n0 < p->N; n0 += nt) {
                const int64_t rows = p->N - n0 < nt ? p->N - n0 : nt;
                const int64_t m_end = p->M - m0 < MX_GEMM_TILE_M ? p->M : m0 + MX_GEMM_TILE_M;
                /* cost ~ MACs plus unpacking (about two rows' worth of work per weight) */
                const double cost = (double)(m_end - m0 + 2) * (double)rows * (double)p->K;
                items[w++] = (work_item){i, m0, m_end, n0, rows, cost};
            }
    }
    qsort(items, (size_t)n_items, sizeof *items, by_cost_desc);
    /* threads: as asked (or the OpenMP default), but no more than there are tiles or chunks of
     * MX_GEMM_MIN_COST_PER_THREAD multiply-adds (~0.1 ms): waking a thread costs more than a tiny GEMM */
    double total_cost = 0.0;
    int any_quantized_acts = 0;
    for (int64_t t = 0; t < n_items; t++) total_cost += items[t].cost;
    for (int64_t i = 0; i < n_problems; i++)
        any_quantized_acts |= problems[i].M > 0 && problem_path(&problems[i].scheme) != PATH_F32;
    int threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    const double useful = ceil(total_cost / MX_GEMM_MIN_COST_PER_THREAD);
    if ((double)threads > useful) threads = (int)useful;
    if ((int64_t)threads > n_items) threads = (int)n_items;
    if (threads < 1) threads = 1;

    /* activations, once per problem */
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (any_quantized_acts)
    for (int64_t i = 0; i < n_problems; i++) {
        const mx_gemm_problem *p = &problems[i];
        if (p->M == 0 || problem_path(&p->scheme) == PATH_F32) continue;
        act_status[i] = prepare_acts(p, &acts[i], &act_err[i]);
    }
    for (int64_t i = 0; i < n_problems; i++)
        if (act_status[i] != MX_OK) {
            status = mx_error_set(err, act_status[i], "problem %lld: %s", (long long)i, act_err[i].message);
            goto cleanup;
        }

    /* tiles, largest first */
    float e4m3_table[256]; /* the value of every e4m3 byte: fp8 weights decode through it */
    for (int v = 0; v < 256; v++) e4m3_table[v] = mx_e4m3_to_f32((uint8_t)v);
    int out_of_memory = 0;
#pragma omp parallel num_threads(threads)
    {
        void *scratch = malloc((size_t)scratch_bytes);
        uint8_t *codes = malloc((size_t)codes_bytes);
        if (!scratch || !codes) {
#pragma omp atomic write
            out_of_memory = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_items; t++) {
            if (!scratch || !codes) continue;
            const work_item *it = &items[t];
            const mx_gemm_problem *p = &problems[it->problem];
            const enum gemm_path path = problem_path(&p->scheme);
            unpack_tile(p, path, it->n0, it->nt, codes, e4m3_table, scratch);
            compute_tile(p, &acts[it->problem], path, it->m0, it->m_end, it->n0, it->nt, scratch);
        }
        free(scratch);
        free(codes);
    }
    if (out_of_memory)
        status = mx_error_set(err, MX_ERR_NOMEM, "no memory for the per-thread weight scratch (%lld bytes)",
                              (long long)scratch_bytes);
cleanup:
    if (acts)
        for (int64_t i = 0; i < n_problems; i++) prepared_free(&acts[i]);
    free(items);
    free(acts);
    free(act_status);
    free(act_err);
    return status;
}
