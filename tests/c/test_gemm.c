/* C tests of csrc/gemm_ref.c: the group GEMM against scalar loops written from the definition in mx_gemm_ref.h
 * (a16: dequantize + double matmul; a8/a4/fp8: quantized operands, group dot products, f32 accumulation), empty
 * problems, mixed schemes, and the error paths (run under valgrind by `make memcheck`). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_gemm_ref.h"
#include "mx_quant.h"

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            printf("test_gemm:%d: ", __LINE__);            \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
            failures++;                                    \
        }                                                  \
    } while (0)

/* the a16 tolerance of tests/test_gemm.py: (K/4 + 2) 2^-24 sum |x w| < 1e-5 sum |x w| for K <= 512 */
#define MX_TOL_A16 1e-5

static float next_uniform(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (float)((*state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

typedef struct owned_problem {
    mx_gemm_problem p;
    float *x, *y, *w_hat;
    uint32_t *qweight;
    uint16_t *scales;
    uint8_t *zeros;
} owned_problem;

static void owned_free(owned_problem *o) {
    free(o->x), free(o->y), free(o->w_hat), free(o->qweight), free(o->scales), free(o->zeros);
    memset(o, 0, sizeof *o);
}

// a problem with random X [M, K] and an RTN weight [N, K] in `name`; returns 0 on failure
static int owned_init(owned_problem *o, const char *name, int64_t M, int64_t N, int64_t K, uint64_t seed) {
    memset(o, 0, sizeof *o);
    mx_scheme s;
    mx_error err;
    if (mx_scheme_parse(name, &s, &err) != MX_OK) return 0;
    const int64_t rows = mx_scheme_scale_rows(&s, K);
    o->x = malloc((size_t)(M * K + 1) * sizeof(float));
    o->y = malloc((size_t)(M * N + 1) * sizeof(float));
    o->w_hat = malloc((size_t)(N * K) * sizeof(float));
    o->qweight = malloc((size_t)(N * K) * sizeof(uint32_t));
    o->scales = malloc((size_t)(rows * N + 1) * sizeof(uint16_t));
    o->zeros = malloc((size_t)(rows * N + 1));
    float *w = malloc((size_t)(N * K) * sizeof(float));
    int ok = o->x && o->y && o->w_hat && o->qweight && o->scales && o->zeros && w;
    uint64_t state = seed * 2654435761u + 1;
    if (ok) {
        for (int64_t i = 0; i < M * K; i++) o->x[i] = next_uniform(&state) * (float)(1 + (i / K) % 5);
        for (int64_t i = 0; i < N * K; i++) w[i] = next_uniform(&state) * 0.1f;
        ok = mx_quantize_rtn(w, N, K, &s, o->qweight, o->scales, o->zeros, &err) == MX_OK &&
             mx_dequantize(o->qweight, o->scales, o->zeros, N, K, &s, o->w_hat, &err) == MX_OK;
    }
    free(w);
    o->p = (mx_gemm_problem){o->x, M, N, K, s, o->qweight, o->scales, o->zeros, o->y};
    return ok;
}

/* The definition, scalar: returns the max |y - expect| / bound over the problem (<= 1 passes). */
static double check_problem(const owned_problem *o) {
    const mx_gemm_problem *p = &o->p;
    const mx_scheme *s = &p->scheme;
    const int64_t M = p->M, N = p->N, K = p->K;
    double worst = 0.0;
    if (M == 0) return 0.0;
    if (s->a_bits == 16) {
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double dot = 0.0, mag = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    dot += (double)p->x[m * K + k] * o->w_hat[n * K + k];
                    mag += fabs((double)p->x[m * K + k] * o->w_hat[n * K + k]);
                }
                const double r = fabs(p->y[m * N + n] - dot) / (MX_TOL_A16 * mag + 1e-30);
                worst = r > worst ? r : worst;
            }
        return worst;
    }
    /* quantized activations: the C quantizer (tested on its own in test_quant.c), then the definition */
    float *xq = malloc((size_t)(M * K) * sizeof(float)), *sa = malloc((size_t)M * sizeof(float));
    uint8_t *values = malloc((size_t)(M * K)), *codes = malloc((size_t)(N * K));
    mx_error err;
    if (!xq || !sa || !values || !codes || mx_quantize_activations(p->x, M, K, s, values, sa, &err) != MX_OK ||
        mx_unpack_codes(p->qweight, N, K, s, codes, &err) != MX_OK) {
        worst = INFINITY;
        goto done;
    }
    for (int64_t i = 0; i < M * K; i++) {
        if (s->fmt == MX_FMT_FP8_E4M3)
            xq[i] = mx_e4m3_to_f32(values[i]);
        else if (s->a_bits == 8)
            xq[i] = (float)(int8_t)values[i];
        else {
            const int nib = (values[i / 2] >> ((i & 1) * 4)) & 0xf;
            xq[i] = (float)(nib >= 8 ? nib - 16 : nib);
        }
    }
    const int64_t G = s->group_size > 0 ? s->group_size : K;
    const int fp8w = s->fmt == MX_FMT_FP8_E4M3 && s->w_bits == 8;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < K / G; g++) {
                double d = 0.0;
                const int32_t z = fp8w ? 0 : (s->symmetric ? mx_sym_zero(s->w_bits) : p->zeros[g * N + n]);
                for (int64_t k = g * G; k < (g + 1) * G; k++) {
                    const double wv = fp8w ? mx_e4m3_to_f32(codes[n * K + k]) : (double)((int32_t)codes[n * K + k] - z);
                    d += (double)xq[m * K + k] * wv; /* exact: integers / fp8 products, sums below 2^53 */
                }
                const float combined = sa[m] * mx_f16_to_f32(p->scales[g * N + n]);
                acc += (float)d * combined;
            }
            /* same operations in the same order: equal, up to a few ulps if the compiler fused a multiply-add */
            const double r = fabs(p->y[m * N + n] - acc) / (4 * 1.2e-7 * fabs(acc) + 1e-30);
            worst = r > worst ? r : worst;
        }
done:
    free(xq), free(sa), free(values), free(codes);
    return worst;
}

static int test_group_gemm(void) {
    int failures = 0;
    const char *names[] = {"w16a16",        "w4a16_g128_asym", "w3a16_g128_asym",  "w2a16_g128_asym",
                           "w8a16_g-1_sym", "w8a8_g-1_sym",    "w8a8_g-1_sym_fp8", "w4a8_g128_asym",
                           "w4a4_g-1_sym",  "w4a4_g128_sym",   "w4a8_g-1_sym_fp8", "w8a8_g32_asym"};
    const int64_t shapes[][3] = {{0, 8, 128}, {1, 1, 128}, {3, 5, 256}, {7, 9, 128}, {131, 3, 128}};
    enum { n_names = sizeof names / sizeof names[0], n_shapes = sizeof shapes / sizeof shapes[0] };
    owned_problem owned[n_names * n_shapes];
    mx_gemm_problem problems[n_names * n_shapes];
    int n = 0;
    for (int i = 0; i < n_names; i++)
        for (int j = 0; j < n_shapes; j++, n++) {
            CHECK(owned_init(&owned[n], names[i], shapes[j][0], shapes[j][1], shapes[j][2], (uint64_t)n),
                  "setup %s", names[i]);
            problems[n] = owned[n].p;
        }
    mx_error err;
    /* all schemes in one call, two threads */
    CHECK(mx_ref_group_gemm(problems, n, 2, &err) == MX_OK, "group gemm: %s", err.message);
    for (int i = 0; i < n; i++) {
        const double r = check_problem(&owned[i]);
        CHECK(r <= 1.0, "problem %d (%s, M=%lld N=%lld K=%lld): error %.3g x the bound", i, names[i / n_shapes],
              (long long)problems[i].M, (long long)problems[i].N, (long long)problems[i].K, r);
    }
    /* empty calls */
    CHECK(mx_ref_group_gemm(NULL, 0, 0, &err) == MX_OK, "no problems");
    CHECK(mx_ref_group_gemm(problems, 1, 1, &err) == MX_OK, "one M = 0 problem");
    /* error paths: the message names the problem */
    mx_gemm_problem bad[2] = {problems[2], problems[3]};
    bad[1].K = 100;
    CHECK(mx_ref_group_gemm(bad, 2, 1, &err) == MX_ERR_INVALID_ARG && strstr(err.message, "problem 1"),
          "bad K: %s", err.message);
    bad[1] = problems[3];
    bad[1].y = NULL;
    CHECK(mx_ref_group_gemm(bad, 2, 1, &err) == MX_ERR_INVALID_ARG, "NULL y");
    bad[1] = problems[3];
    bad[1].M = -1;
    CHECK(mx_ref_group_gemm(bad, 2, 1, &err) == MX_ERR_INVALID_ARG && strstr(err.message, "M=-1"), "M < 0");
    bad[1] = problems[3];
    bad[1].scheme.w_bits = 7;
    CHECK(mx_ref_group_gemm(bad, 2, 1, &err) == MX_ERR_INVALID_ARG && strstr(err.message, "w_bits=7"),
          "bad scheme: %s", err.message);
    bad[1] = problems[n_shapes * 7 + 3]; /* w4a8_g128_asym, M = 7 */
    bad[1].zeros = NULL;
    CHECK(mx_ref_group_gemm(bad, 2, 1, &err) == MX_ERR_INVALID_ARG && strstr(err.message, "zeros"), "no zeros");
    bad[1] = problems[3];
    const float saved = owned[3].x[5];
    owned[3].x[5] = NAN;
    CHECK(mx_ref_group_gemm(bad, 2, 1, &err) == MX_ERR_NONFINITE && strstr(err.message, "problem 1"),
          "NaN X: %s", err.message);
    owned[3].x[5] = saved;
    CHECK(mx_ref_group_gemm(NULL, 3, 1, &err) == MX_ERR_INVALID_ARG, "NULL problems");
    for (int i = 0; i < n; i++) owned_free(&owned[i]);
    return failures;
}

int mx_test_gemm(void) { return test_group_gemm(); }
