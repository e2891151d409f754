/* C tests of csrc/hadamard.c: base matrices, the fast transform against the explicit matrix, signs, errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_hadamard.h"

#define CHECK(cond, ...)                     \
    do {                                     \
        if (!(cond)) {                       \
            printf("hadamard: " __VA_ARGS__); \
            printf("\n");                    \
            failures++;                      \
        }                                    \
    } while (0)

/* float32 transform vs the f64 matrix product, relative to max|y|: ~log2(n) + m rounding steps of 6e-8. */
#define MX_TEST_HADAMARD_F32_TOL 2e-5
#define MX_TEST_HADAMARD_F64_TOL 1e-12

// Base matrix of order m: +-1 and H H^T = m I.
static int check_base(int32_t m) {
    int failures = 0;
    int8_t *h = malloc((size_t)m * m);
    mx_error err;
    if (mx_hadamard_base_matrix(m, h, &err) != MX_OK) {
        printf("hadamard: base m=%d: %s\n", (int)m, err.message);
        free(h);
        return 1;
    }
    for (int32_t i = 0; i < m && !failures; i++)
        for (int32_t j = 0; j < m; j++) {
            long dot = 0;
            for (int32_t k = 0; k < m; k++) dot += h[i * m + k] * h[j * m + k];
            if (dot != (i == j ? m : 0) || (h[i * m + j] != 1 && h[i * m + j] != -1)) {
                CHECK(0, "base m=%d is not Hadamard at (%d, %d)", (int)m, (int)i, (int)j);
                break;
            }
        }
    free(h);
    return failures;
}

// Transform of `rows` random rows (f32 and f64) vs y = M x with M = mx_hadamard_matrix(n, signs).
static int check_transform(int64_t n, int64_t rows, int seeded) {
    int failures = 0;
    mx_error err;
    double *M = malloc(sizeof(double) * n * n), *x64 = malloc(sizeof(double) * rows * n);
    float *x32 = malloc(sizeof(float) * rows * n);
    int8_t *signs = malloc((size_t)n);
    mx_hadamard_signs(n, 1234, signs);
    const int8_t *d = seeded ? signs : NULL;
    uint64_t state = 99;
    for (int64_t i = 0; i < rows * n; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        x64[i] = (double)(state >> 11) / 9007199254740992.0 - 0.5;
        x32[i] = (float)x64[i];
    }
    enum mx_status st = mx_hadamard_matrix(n, d, M, &err);
    CHECK(st == MX_OK, "matrix n=%lld: %s", (long long)n, err.message);
    double *expected = calloc((size_t)(rows * n), sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++) {
            double acc = 0;
            for (int64_t j = 0; j < n; j++) acc += M[i * n + j] * (double)x32[r * n + j];
            expected[r * n + i] = acc;
        }
    double *x64c = malloc(sizeof(double) * rows * n);
    for (int64_t i = 0; i < rows * n; i++) x64c[i] = x32[i];
    st = mx_hadamard_transform_f32(x32, rows, n, d, &err);
    CHECK(st == MX_OK, "f32 n=%lld: %s", (long long)n, err.message);
    st = mx_hadamard_transform_f64(x64c, rows, n, d, &err);
    CHECK(st == MX_OK, "f64 n=%lld: %s", (long long)n, err.message);
    double worst32 = 0, worst64 = 0, scale = 1e-30;
    for (int64_t i = 0; i < rows * n; i++) scale = fmax(scale, fabs(expected[i]));
    for (int64_t i = 0; i < rows * n; i++) {
        worst32 = fmax(worst32, fabs(x32[i] - expected[i]));
        worst64 = fmax(worst64, fabs(x64c[i] - expected[i]));
    }
    CHECK(worst32 <= MX_TEST_HADAMARD_F32_TOL * scale, "f32 n=%lld seeded=%d: error %g", (long long)n, seeded,
          worst32 / scale);
    CHECK(worst64 <= MX_TEST_HADAMARD_F64_TOL * scale, "f64 n=%lld seeded=%d: error %g", (long long)n, seeded,
          worst64 / scale);
    free(M);
    free(x64);
    free(x32);
    free(x64c);
    free(signs);
    free(expected);
    return failures;
}

int mx_test_hadamard(void) {
    int failures = 0;
    mx_error err;
    int32_t m = 0;

    /* base orders of the model sizes (largest power-of-two factor) */
    const int64_t sizes[] = {128, 256, 512, 768, 1024, 1408, 2048, 2560, 2816, 4096, 5632, 14336};
    const int32_t orders[] = {1, 1, 1, 12, 1, 44, 1, 20, 44, 1, 44, 28};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        enum mx_status st = mx_hadamard_base_order(sizes[i], &m, &err);
        CHECK(st == MX_OK && m == orders[i], "base order of %lld: got %d, want %d", (long long)sizes[i], (int)m,
              (int)orders[i]);
    }
    const int32_t bases[] = {1, 2, 4, 12, 20, 28, 36, 44, 52, 108};
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) failures += check_base(bases[i]);

    failures += check_transform(1, 2, 1);
    failures += check_transform(64, 3, 0);
    failures += check_transform(176, 2, 1);  /* 44 * 4 */
    failures += check_transform(224, 2, 1);  /* 28 * 8, GF(27) */
    failures += check_transform(768, 1, 1);  /* 12 * 64 */
    failures += check_transform(144, 40, 1); /* 36 * 4 (Paley II), enough rows to go parallel */

    /* a large size: norm preserved, rows = 0 is a no-op */
    {
        int64_t n = 14336;
        float *x = malloc(sizeof(float) * n);
        double before = 0, after = 0;
        for (int64_t i = 0; i < n; i++) {
            x[i] = (float)sin((double)i);
            before += (double)x[i] * x[i];
        }
        int8_t *signs = malloc((size_t)n);
        mx_hadamard_signs(n, 7, signs);
        CHECK(mx_hadamard_transform_f32(x, 1, n, signs, &err) == MX_OK, "n=14336: %s", err.message);
        for (int64_t i = 0; i < n; i++) after += (double)x[i] * x[i];
        CHECK(fabs(after - before) <= 1e-4 * before, "n=14336 norm %g -> %g", before, after);
        CHECK(mx_hadamard_transform_f32(x, 0, n, NULL, &err) == MX_OK, "rows=0 should be a no-op");
        free(x);
        free(signs);
    }

    /* signs: reproducible, balanced, and the documented first values of seed 0 */
    {
        int8_t a[1000], b[1000];
        mx_hadamard_signs(1000, 5, a);
        mx_hadamard_signs(1000, 5, b);
        int plus = 0;
        for (int i = 0; i < 1000; i++) plus += a[i] > 0;
        CHECK(memcmp(a, b, sizeof a) == 0 && plus > 400 && plus < 600, "signs not reproducible or biased (%d)",
              plus);
        /* splitmix64(0) outputs start e220a8397b1dcdaf (top bit 1), 6e789e6aa1b965f4 (0), 06c45d188009454f (0) */
        mx_hadamard_signs(3, 0, a);
        CHECK(a[0] == -1 && a[1] == 1 && a[2] == 1, "splitmix64 signs of seed 0 are %d %d %d", a[0], a[1], a[2]);
    }

    /* errors */
    {
        float x[12] = {0};
        CHECK(mx_hadamard_base_order(92, &m, &err) == MX_ERR_UNSUPPORTED && strstr(err.message, "n=92"),
              "n=92 should be unsupported with a message naming it");
        CHECK(strstr(err.message, "88 and 96") != NULL, "message should name the nearest sizes: %s", err.message);
        CHECK(mx_hadamard_base_order(0, &m, &err) == MX_ERR_INVALID_ARG, "n=0 should be invalid");
        CHECK(mx_hadamard_transform_f32(x, 1, 3, NULL, &err) == MX_ERR_UNSUPPORTED, "n=3 should be unsupported");
        CHECK(mx_hadamard_transform_f32(x, -1, 4, NULL, &err) == MX_ERR_INVALID_ARG, "rows=-1 should be invalid");
        CHECK(mx_hadamard_transform_f32(NULL, 1, 4, NULL, &err) == MX_ERR_INVALID_ARG, "x=NULL should be invalid");
        x[5] = NAN;
        CHECK(mx_hadamard_transform_f32(x, 1, 12, NULL, &err) == MX_ERR_NONFINITE && strstr(err.message, "column 5"),
              "NaN should be reported with its position");
        CHECK(x[0] == 0.0f, "a rejected input must be left untouched");
        int8_t h[16];
        CHECK(mx_hadamard_base_matrix(3, h, &err) == MX_ERR_UNSUPPORTED, "m=3 should be unsupported");
        CHECK(mx_hadamard_base_matrix(4, NULL, &err) == MX_ERR_INVALID_ARG, "h=NULL should be invalid");
        CHECK(mx_hadamard_matrix(6, NULL, (double *)h, &err) == MX_ERR_UNSUPPORTED, "matrix n=6 unsupported");
        CHECK(mx_hadamard_transform_f32(x, 1, 12, NULL, NULL) == MX_ERR_NONFINITE, "err may be NULL");
    }
    return failures;
}
