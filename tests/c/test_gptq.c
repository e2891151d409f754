/* C tests of csrc/gptq.c: the inverse Cholesky factor, GPTQ vs RTN, the degenerate Hessians and the errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_gptq.h"
#include "mx_quant.h"

#define CHECK(cond, ...)                 \
    do {                                 \
        if (!(cond)) {                   \
            printf("gptq: " __VA_ARGS__); \
            printf("\n");                \
            failures++;                  \
        }                                \
    } while (0)

/* U^T U H = I in f64 for a well-conditioned H (condition ~1e3): residual ~ K * cond * eps. */
#define MX_TEST_GPTQ_INVERSE_TOL 1e-9

static double uniform(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*state >> 11) / 9007199254740992.0 - 0.5;
}

// H: [K, K] = X^T X with X [T, K] correlated (rank r directions + noise), + `ridge` I.
static void make_hessian(double *H, int64_t K, int64_t T, int64_t r, double ridge, uint64_t seed) {
    double *X = malloc(sizeof(double) * T * K), *Z = malloc(sizeof(double) * r * K);
    uint64_t st = seed;
    for (int64_t i = 0; i < r * K; i++) Z[i] = uniform(&st);
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++) {
            double v = 0.3 * uniform(&st);
            for (int64_t j = 0; j < r; j++) v += Z[j * K + k] * ((t * 7 + j * 3) % 5 - 2.0);
            X[t * K + k] = v;
        }
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            double acc = 0;
            for (int64_t t = 0; t < T; t++) acc += X[t * K + i] * X[t * K + j];
            H[i * K + j] = acc + (i == j ? ridge : 0);
        }
    free(X);
    free(Z);
}

// tr((W - W_hat) H (W - W_hat)^T)
static double objective(const float *W, const float *W_hat, const double *H, int64_t N, int64_t K) {
    double total = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < K; i++) {
            double di = (double)W[n * K + i] - W_hat[n * K + i];
            for (int64_t j = 0; j < K; j++) total += di * H[i * K + j] * ((double)W[n * K + j] - W_hat[n * K + j]);
        }
    return total;
}

typedef struct quantized {
    uint32_t *qweight;
    uint16_t *scales;
    uint8_t *zeros;
    float *w_hat;
} quantized;

static quantized alloc_quantized(const mx_scheme *s, int64_t N, int64_t K) {
    quantized q;
    q.qweight = calloc((size_t)mx_scheme_qweight_words(s, N, K), 4);
    q.scales = calloc((size_t)(mx_scheme_scale_rows(s, K) * N), 2);
    q.zeros = calloc((size_t)(mx_scheme_scale_rows(s, K) * N), 1);
    q.w_hat = calloc((size_t)(N * K), 4);
    return q;
}

static void free_quantized(quantized *q) {
    free(q->qweight);
    free(q->scales);
    free(q->zeros);
    free(q->w_hat);
}

static int same_buffers(const quantized *a, const quantized *b, const mx_scheme *s, int64_t N, int64_t K) {
    int64_t rows = mx_scheme_scale_rows(s, K);
    return memcmp(a->qweight, b->qweight, (size_t)mx_scheme_qweight_words(s, N, K) * 4) == 0 &&
           memcmp(a->scales, b->scales, (size_t)(rows * N) * 2) == 0 &&
           memcmp(a->zeros, b->zeros, (size_t)(rows * N)) == 0;
}

int mx_test_gptq(void) {
    int failures = 0;
    mx_error err;
    const int64_t N = 12, K = 160; /* K crosses the 64-column Cholesky blocks and a 64-column GPTQ block */
    float *W = malloc(sizeof(float) * N * K);
    double *H = malloc(sizeof(double) * K * K), *U = malloc(sizeof(double) * K * K);
    uint64_t st = 5;
    for (int64_t i = 0; i < N * K; i++) W[i] = (float)uniform(&st);
    make_hessian(H, K, 64, 6, 0.0, 11);

    /* the factor: U upper, U^T U H = I (on a ridge-regularised H) */
    {
        double *Hr = malloc(sizeof(double) * K * K);
        memcpy(Hr, H, sizeof(double) * K * K);
        for (int64_t i = 0; i < K; i++) Hr[i * K + i] += 1.0;
        CHECK(mx_gptq_inverse_cholesky(Hr, K, 0.0, U, &err) == MX_OK, "inverse cholesky: %s", err.message);
        double worst = 0, *UtU = calloc((size_t)(K * K), sizeof(double));
        for (int64_t m = 0; m < K; m++) /* UtU = U^T U */
            for (int64_t i = m; i < K; i++)
                for (int64_t k = m; k < K; k++) UtU[i * K + k] += U[m * K + i] * U[m * K + k];
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++) {
                double acc = 0;
                for (int64_t k = 0; k < K; k++) acc += UtU[i * K + k] * Hr[k * K + j];
                worst = fmax(worst, fabs(acc - (i == j)));
                if (j < i && U[i * K + j] != 0) worst = 1;
            }
        free(UtU);
        CHECK(worst < MX_TEST_GPTQ_INVERSE_TOL, "U^T U H - I = %g", worst);
        double neg[4] = {-1, 0, 0, 1};
        CHECK(mx_gptq_inverse_cholesky(neg, 2, 0.0, U, &err) == MX_ERR_INVALID_ARG, "indefinite H accepted");
        free(Hr);
    }

    mx_scheme s;
    const char *names[] = {"w4a16_g32_asym", "w3a16_g-1_sym", "w8a8_g-1_sym_fp8", "w2a16_g32_asym"};
    mx_gptq_options o = mx_gptq_default_options();
    o.blocksize = 64;
    for (size_t t = 0; t < sizeof names / sizeof names[0]; t++) {
        mx_scheme_parse(names[t], &s, &err);
        quantized g = alloc_quantized(&s, N, K), r = alloc_quantized(&s, N, K);
        mx_gptq_report report;
        /* GPTQ beats RTN on the objective it minimises */
        CHECK(mx_gptq(W, H, N, K, &s, &o, g.qweight, g.scales, g.zeros, &report, &err) == MX_OK, "%s: %s",
              names[t], err.message);
        CHECK(report.flags == 0, "%s: flags %d on a healthy H", names[t], (int)report.flags);
        CHECK(mx_quantize_rtn(W, N, K, &s, r.qweight, r.scales, r.zeros, &err) == MX_OK, "rtn: %s", err.message);
        mx_dequantize(g.qweight, g.scales, g.zeros, N, K, &s, g.w_hat, &err);
        mx_dequantize(r.qweight, r.scales, r.zeros, N, K, &s, r.w_hat, &err);
        double eg = objective(W, g.w_hat, H, N, K), er = objective(W, r.w_hat, H, N, K);
        CHECK(isfinite(eg) && eg < er, "%s: GPTQ objective %g not below RTN %g", names[t], eg, er);

        /* H = I: no error propagates, RTN bit for bit; H = 0: RTN with the flag */
        double *I = calloc((size_t)(K * K), sizeof(double));
        for (int64_t i = 0; i < K; i++) I[i * K + i] = 1;
        CHECK(mx_gptq(W, I, N, K, &s, &o, g.qweight, g.scales, g.zeros, &report, &err) == MX_OK, "H=I: %s",
              err.message);
        CHECK(same_buffers(&g, &r, &s, N, K), "%s: GPTQ with H = I differs from RTN", names[t]);
        memset(I, 0, sizeof(double) * K * K);
        memset(g.qweight, 0, (size_t)mx_scheme_qweight_words(&s, N, K) * 4);
        CHECK(mx_gptq(W, I, N, K, &s, &o, g.qweight, g.scales, g.zeros, &report, &err) == MX_OK, "H=0: %s",
              err.message);
        CHECK(report.flags == (MX_GPTQ_ZERO_HESSIAN | MX_GPTQ_DEAD_COLUMNS) && report.dead_columns == K,
              "H=0: flags %d", (int)report.flags);
        CHECK(same_buffers(&g, &r, &s, N, K), "%s: GPTQ with H = 0 differs from RTN", names[t]);
        free(I);
        free_quantized(&g);
        free_quantized(&r);
    }

    /* degenerate Hessians: dead columns, damp = 0 on a singular H, a far-from-PSD H; never NaN */
    {
        mx_scheme_parse("w4a16_g32_asym", &s, &err);
        quantized g = alloc_quantized(&s, N, K);
        mx_gptq_report report;
        double *Hd = malloc(sizeof(double) * K * K);
        memcpy(Hd, H, sizeof(double) * K * K);
        for (int64_t i = 0; i < K; i++) Hd[3 * K + i] = Hd[i * K + 3] = Hd[90 * K + i] = Hd[i * K + 90] = 0;
        CHECK(mx_gptq(W, Hd, N, K, &s, &o, g.qweight, g.scales, g.zeros, &report, &err) == MX_OK, "dead: %s",
              err.message);
        CHECK(report.flags == MX_GPTQ_DEAD_COLUMNS && report.dead_columns == 2, "dead: flags %d, %lld dead",
              (int)report.flags, (long long)report.dead_columns);
        mx_gptq_options o0 = o;
        o0.damp = 0; /* H has rank 64 < K: singular */
        CHECK(mx_gptq(W, H, N, K, &s, &o0, g.qweight, g.scales, g.zeros, &report, &err) == MX_OK, "damp 0: %s",
              err.message);
        CHECK((report.flags & MX_GPTQ_EXTRA_DAMPING) && report.damp > 0, "damp 0 on singular H: flags %d",
              (int)report.flags);
        mx_dequantize(g.qweight, g.scales, g.zeros, N, K, &s, g.w_hat, &err);
        int finite = 1;
        for (int64_t i = 0; i < N * K; i++) finite &= isfinite(g.w_hat[i]);
        CHECK(finite, "damp 0: non-finite weights");
        memcpy(Hd, H, sizeof(double) * K * K);
        Hd[0 * K + 1] = Hd[1 * K + 0] = 1e9;
        CHECK(mx_gptq(W, Hd, N, K, &s, &o, g.qweight, g.scales, g.zeros, &report, &err) == MX_OK, "indef: %s",
              err.message);
        CHECK(report.flags == MX_GPTQ_RTN_FALLBACK, "indefinite H: flags %d", (int)report.flags);

        /* w16: bf16 rounding */
        mx_scheme w16;
        mx_scheme_parse("w16a16", &w16, &err);
        uint16_t *bf = malloc(sizeof(uint16_t) * N * K);
        CHECK(mx_gptq(W, H, N, K, &w16, &o, (uint32_t *)(void *)bf, NULL, NULL, NULL, &err) == MX_OK, "w16: %s",
              err.message);
        CHECK(bf[7] == mx_f32_to_bf16(W[7]), "w16: not bf16 rounding");
        free(bf);

        /* errors */
        CHECK(mx_gptq(W, H, N, 48, &s, &o, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_INVALID_ARG,
              "K=48 with G=32 accepted");
        CHECK(mx_gptq(NULL, H, N, K, &s, &o, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_INVALID_ARG,
              "W=NULL accepted");
        CHECK(mx_gptq(W, H, N, K, &s, &o, g.qweight, g.scales, NULL, NULL, &err) == MX_ERR_INVALID_ARG,
              "zeros=NULL accepted for asym");
        mx_gptq_options bad = o;
        bad.blocksize = 0;
        CHECK(mx_gptq(W, H, N, K, &s, &bad, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_INVALID_ARG,
              "blocksize 0 accepted");
        bad = o;
        bad.damp = NAN;
        CHECK(mx_gptq(W, H, N, K, &s, &bad, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_INVALID_ARG,
              "damp NaN accepted");
        bad = o;
        bad.static_groups = 0;
        CHECK(mx_gptq(W, H, N, K, &s, &bad, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_UNSUPPORTED &&
                  strstr(err.message, "g_idx"),
              "act_order without static groups accepted");
        memcpy(Hd, H, sizeof(double) * K * K);
        Hd[5 * K + 6] += 1.0;
        CHECK(mx_gptq(W, Hd, N, K, &s, &o, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_INVALID_ARG &&
                  strstr(err.message, "symmetric"),
              "asymmetric H accepted");
        Hd[5 * K + 6] = NAN;
        CHECK(mx_gptq(W, Hd, N, K, &s, &o, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_NONFINITE,
              "NaN in H accepted");
        memcpy(Hd, H, sizeof(double) * K * K);
        Hd[2 * K + 2] = -1;
        CHECK(mx_gptq(W, Hd, N, K, &s, &o, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_INVALID_ARG,
              "negative diagonal accepted");
        float saved = W[17];
        W[17] = INFINITY;
        CHECK(mx_gptq(W, H, N, K, &s, &o, g.qweight, g.scales, g.zeros, NULL, &err) == MX_ERR_NONFINITE &&
                  strstr(err.message, "[0, 17]"),
              "Inf in W accepted");
        W[17] = saved;
        free(Hd);
        free_quantized(&g);
    }
    free(W);
    free(H);
    free(U);
    return failures;
}
