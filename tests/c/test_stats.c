/* C tests of csrc/stats.c: H += X^T diag(c) X against a naive double loop, tile tails, symmetry, error paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mx_stats.h"

/* Double products of float inputs summed in a different order: ~rows * 2^-52 relative. */
#define MX_TOL_STATS 1e-12

static float uniform(unsigned *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static int check_case(int64_t rows, int64_t K, int weighted, unsigned seed) {
    unsigned state = seed;
    float *x = malloc(sizeof(float) * (size_t)(rows * K + 1));
    float *c = malloc(sizeof(float) * (size_t)(rows + 1));
    double *H = malloc(sizeof(double) * (size_t)(K * K));
    double *ref = malloc(sizeof(double) * (size_t)(K * K));
    int failures = 0;
    for (int64_t i = 0; i < rows * K; i++) x[i] = uniform(&state);
    for (int64_t r = 0; r < rows; r++) c[r] = 0.5f * (uniform(&state) + 1.0f);
    for (int64_t i = 0; i < K * K; i++) H[i] = ref[i] = (double)(i % 7); /* accumulates onto existing contents */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++)
                ref[i * K + j] += (weighted ? (double)c[r] : 1.0) * (double)x[r * K + i] * (double)x[r * K + j];
    mx_error err;
    if (mx_stats_accumulate_xtx(x, rows, K, weighted ? c : NULL, H, &err) != MX_OK) {
        printf("accumulate_xtx rows=%lld K=%lld: %s\n", (long long)rows, (long long)K, err.message);
        failures++;
    } else {
        double worst = 0.0, scale = 1.0 + (double)rows;
        for (int64_t i = 0; i < K * K; i++) worst = fmax(worst, fabs(H[i] - ref[i]) / scale);
        if (worst > MX_TOL_STATS) {
            printf("accumulate_xtx rows=%lld K=%lld weighted=%d: error %g\n", (long long)rows, (long long)K, weighted,
                   worst);
            failures++;
        }
    }
    free(x);
    free(c);
    free(H);
    free(ref);
    return failures;
}

int mx_test_stats(void) {
    int failures = 0;
    /* shapes: single row, K below/at/above the 64-wide tile, tails in rows (not a multiple of 4) and in K */
    const int64_t shapes[][2] = {{1, 1}, {3, 5}, {4, 64}, {9, 65}, {130, 129}, {7, 200}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int weighted = 0; weighted < 2; weighted++)
            failures += check_case(shapes[s][0], shapes[s][1], weighted, 17u + (unsigned)s);

    /* rows == 0: H untouched */
    double H[4] = {1, 2, 3, 4};
    float x[4] = {1, 2, 3, 4};
    mx_error err;
    if (mx_stats_accumulate_xtx(NULL, 0, 2, NULL, H, &err) != MX_OK || H[0] != 1 || H[3] != 4) {
        printf("rows=0 should be a no-op\n");
        failures++;
    }
    /* error paths: each leaves H untouched and names the problem */
    struct {
        const float *x;
        int64_t rows, K;
        const float *w;
        double *H;
        enum mx_status want;
        const char *what;
    } bad[] = {
        {x, 2, 0, NULL, H, MX_ERR_INVALID_ARG, "K=0"},
        {x, -1, 2, NULL, H, MX_ERR_INVALID_ARG, "rows=-1"},
        {NULL, 2, 2, NULL, H, MX_ERR_INVALID_ARG, "NULL x"},
        {x, 2, 2, NULL, NULL, MX_ERR_INVALID_ARG, "NULL H"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (mx_stats_accumulate_xtx(bad[i].x, bad[i].rows, bad[i].K, bad[i].w, bad[i].H, &err) != bad[i].want) {
            printf("%s should fail with status %d\n", bad[i].what, (int)bad[i].want);
            failures++;
        }
    float with_nan[4] = {1, NAN, 3, 4}, negative[2] = {1, -1}, inf_weight[2] = {1, INFINITY};
    if (mx_stats_accumulate_xtx(with_nan, 2, 2, NULL, H, &err) != MX_ERR_NONFINITE || H[0] != 1) {
        printf("NaN in x should be MX_ERR_NONFINITE with H untouched\n");
        failures++;
    }
    if (mx_stats_accumulate_xtx(x, 2, 2, negative, H, &err) != MX_ERR_INVALID_ARG) {
        printf("negative row weight should be rejected\n");
        failures++;
    }
    if (mx_stats_accumulate_xtx(x, 2, 2, inf_weight, H, &err) != MX_ERR_NONFINITE) {
        printf("infinite row weight should be MX_ERR_NONFINITE\n");
        failures++;
    }
    return failures;
}
