/* C tests of csrc/quant.c: conversions, the grid, RTN round trips and bounds, pack/unpack identity, activation
 * quantization, and the error paths (run under valgrind by `make memcheck`). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_quant.h"

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            printf("test_quant:%d: ", __LINE__);           \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
            failures++;                                    \
        }                                                  \
    } while (0)

/* deterministic pseudo-random numbers (xorshift), no global state */
static float next_uniform(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (float)((*state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static int test_conversions(void) {
    int failures = 0;
    /* every finite f16 survives f16 -> f32 -> f16 */
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 0x1f) == 0x1f) continue;
        float v = mx_f16_to_f32((uint16_t)h);
        CHECK(mx_f32_to_f16(v) == h, "f16 round trip of 0x%04x", h);
        CHECK(mx_f32_to_f16_round_up(v) == h || (h == 0x8000), "round_up of an exact f16 0x%04x", h);
    }
    CHECK(mx_f32_to_f16(65520.0f) == 0x7c00, "65520 rounds to inf");
    CHECK(mx_f32_to_f16(1.0f + 1.0f / 2048.0f) == 0x3c00, "tie rounds to even (1.0)");
    CHECK(mx_f32_to_f16_round_up(1.0f + 1.0f / 4096.0f) == 0x3c01, "round up to the next f16");
    CHECK(mx_f32_to_f16_round_up(1e-9f) == 0x0001, "tiny positive rounds up to the smallest subnormal");
    CHECK(mx_f32_to_bf16(1.0f + 1.0f / 256.0f) == 0x3f80, "bf16 tie to even");
    CHECK(mx_f32_to_bf16(1.0f + 3.0f / 256.0f) == 0x3f82, "bf16 tie to even (up)");
    CHECK(mx_bf16_to_f32(0x4049) == 3.140625f, "bf16 decode");
    /* e4m3: every finite code round trips; saturation, NaN, ties */
    for (int v = 0; v < 256; v++) {
        if ((v & 0x7f) == 0x7f) continue;
        float x = mx_e4m3_to_f32((uint8_t)v);
        CHECK(mx_f32_to_e4m3(x) == v || (v == 0x80 && x == 0.0f), "e4m3 round trip of 0x%02x", v);
    }
    CHECK(mx_e4m3_to_f32(0x7e) == 448.0f && mx_e4m3_to_f32(0x01) == 0.001953125f, "e4m3 max / min subnormal");
    CHECK(isnan(mx_e4m3_to_f32(0x7f)) && mx_f32_to_e4m3(NAN) == 0x7f, "e4m3 NaN");
    CHECK(mx_f32_to_e4m3(1000.0f) == 0x7e && mx_f32_to_e4m3(-1e30f) == 0xfe, "e4m3 saturates");
    CHECK(mx_f32_to_e4m3(1.0625f) == 0x38 && mx_f32_to_e4m3(1.1875f) == 0x3a, "e4m3 ties to even");
    CHECK(mx_f32_to_e4m3(0.0029296875f) == 0x02, "e4m3 subnormal tie (1.5 * 2^-9) to even");
    return failures;
}

static const int32_t bits_list[] = {2, 3, 4, 8};
static const int32_t group_list[] = {-1, 32, 64, 128};

static int test_rtn_round_trip(void) {
    int failures = 0;
    const int64_t N = 6, K = 256;
    float *w = malloc(N * K * sizeof *w), *w_hat = malloc(N * K * sizeof *w_hat);
    uint32_t *qweight = malloc(N * K * sizeof *qweight); /* >= K/32*W words per row for every W <= 16 */
    uint16_t *scales = malloc(N * K * sizeof *scales);
    uint8_t *zeros = malloc(N * K), *codes = malloc(N * K), *codes2 = malloc(N * K);
    uint32_t *qweight2 = malloc(N * K * sizeof *qweight2);
    uint64_t state = 42;
    for (int64_t i = 0; i < N * K; i++) w[i] = next_uniform(&state) * (float)(1 + i / K);
    for (int64_t k = 0; k < K; k++) w[2 * K + k] = 0.0f; /* an all-zero row */
    mx_error err;
    for (int b = 0; b < 4; b++)
        for (int g = 0; g < 4; g++)
            for (int sym = 0; sym <= 1; sym++) {
                mx_scheme s = {bits_list[b], 16, group_list[g], sym, MX_FMT_INT};
                const int64_t G = s.group_size > 0 ? s.group_size : K;
                CHECK(mx_quantize_rtn(w, N, K, &s, qweight, scales, zeros, &err) == MX_OK, "rtn: %s", err.message);
                CHECK(mx_dequantize(qweight, scales, zeros, N, K, &s, w_hat, &err) == MX_OK, "deq: %s", err.message);
                CHECK(mx_unpack_codes(qweight, N, K, &s, codes, &err) == MX_OK, "unpack: %s", err.message);
                CHECK(mx_pack_codes(codes, N, K, &s, qweight2, &err) == MX_OK, "pack: %s", err.message);
                CHECK(memcmp(qweight, qweight2, (size_t)mx_scheme_qweight_words(&s, N, K) * 4) == 0,
                      "pack(unpack(q)) != q (W=%d G=%d sym=%d)", s.w_bits, s.group_size, sym);
                for (int64_t n = 0; n < N; n++)
                    for (int64_t k = 0; k < K; k++) {
                        const float scale = mx_f16_to_f32(scales[(k / G) * N + n]);
                        const float e = fabsf(w[n * K + k] - w_hat[n * K + k]);
                        if (e > scale / 2) {
                            CHECK(0, "|w - w_hat| = %g > s/2 = %g (W=%d G=%d sym=%d)", e, scale / 2, s.w_bits,
                                  s.group_size, sym);
                            n = N;
                            break;
                        }
                        if (sym && codes[n * K + k] == 0) {
                            CHECK(0, "sym code 0 at [%lld, %lld]", (long long)n, (long long)k);
                            n = N;
                            break;
                        }
                        const int32_t z = sym ? mx_sym_zero(s.w_bits) : zeros[(k / G) * N + n];
                        if (w_hat[n * K + k] != mx_grid_value(codes[n * K + k], scale, z, &s)) {
                            CHECK(0, "dequantize != mx_grid_value");
                            n = N;
                            break;
                        }
                    }
                for (int64_t k = 0; k < K; k++) CHECK(w_hat[2 * K + k] == 0.0f, "zero row stays zero");
            }
    /* random codes: unpack(pack(c)) == c */
    for (int b = 0; b < 4; b++) {
        mx_scheme s = {bits_list[b], 16, 32, 0, MX_FMT_INT};
        for (int64_t i = 0; i < N * K; i++)
            codes[i] = (uint8_t)(((uint32_t)((next_uniform(&state) + 1.0f) * 1e6f)) & ((1u << s.w_bits) - 1));
        CHECK(mx_pack_codes(codes, N, K, &s, qweight, &err) == MX_OK, "pack");
        CHECK(mx_unpack_codes(qweight, N, K, &s, codes2, &err) == MX_OK, "unpack");
        CHECK(memcmp(codes, codes2, (size_t)(N * K)) == 0, "unpack(pack(c)) != c for W=%d", s.w_bits);
    }
    /* fp8 weights and w16 */
    mx_scheme fp8 = {8, 8, -1, 1, MX_FMT_FP8_E4M3}, w16 = {16, 16, -1, 1, MX_FMT_INT};
    CHECK(mx_quantize_rtn(w, N, K, &fp8, qweight, scales, NULL, &err) == MX_OK, "fp8 rtn: %s", err.message);
    CHECK(mx_dequantize(qweight, scales, NULL, N, K, &fp8, w_hat, &err) == MX_OK, "fp8 deq");
    for (int64_t i = 0; i < N * K; i++) {
        const float s = mx_f16_to_f32(scales[i / K]);
        if (fabsf(w[i] - w_hat[i]) > fmaxf(fabsf(w[i]) / 16.0f, s / 1024.0f)) {
            CHECK(0, "fp8 error %g at %lld", fabsf(w[i] - w_hat[i]), (long long)i);
            break;
        }
    }
    CHECK(mx_quantize_rtn(w, N, K, &w16, qweight, NULL, NULL, &err) == MX_OK, "w16 rtn: %s", err.message);
    CHECK(mx_dequantize(qweight, NULL, NULL, N, K, &w16, w_hat, &err) == MX_OK, "w16 deq");
    CHECK(w_hat[5] == mx_bf16_to_f32(mx_f32_to_bf16(w[5])), "w16 is bf16");
    free(w), free(w_hat), free(qweight), free(qweight2), free(scales), free(zeros), free(codes), free(codes2);
    return failures;
}

static int test_activations(void) {
    int failures = 0;
    const int64_t M = 5, K = 64;
    float x[5 * 64], x_hat[5 * 64], scales[5];
    int8_t values[5 * 64];
    uint64_t state = 7;
    for (int64_t i = 0; i < M * K; i++) x[i] = next_uniform(&state) * 3.0f;
    for (int64_t k = 0; k < K; k++) x[1 * K + k] = 0.0f;
    const mx_scheme schemes[3] = {{8, 8, -1, 1, MX_FMT_INT}, {4, 4, -1, 1, MX_FMT_INT}, {8, 8, -1, 1, MX_FMT_FP8_E4M3}};
    mx_error err;
    for (int t = 0; t < 3; t++) {
        const mx_scheme *s = &schemes[t];
        CHECK(mx_quantize_activations(x, M, K, s, values, scales, &err) == MX_OK, "act quant: %s", err.message);
        CHECK(mx_dequantize_activations(values, scales, M, K, s, x_hat, &err) == MX_OK, "act deq: %s", err.message);
        CHECK(scales[1] == 1.0f, "a zero row gets scale 1");
        for (int64_t i = 0; i < M * K; i++) {
            const float sc = scales[i / K];
            const float bound = s->fmt == MX_FMT_FP8_E4M3 ? fmaxf(fabsf(x[i]) / 16.0f, sc / 1024.0f) : sc / 2;
            if (fabsf(x[i] - x_hat[i]) > bound * 1.000001f) {
                CHECK(0, "activation error %g > %g (a%d fmt %d)", fabsf(x[i] - x_hat[i]), bound, s->a_bits, s->fmt);
                break;
            }
        }
    }
    return failures;
}

static int test_errors(void) {
    int failures = 0;
    mx_error err;
    float w[4 * 64] = {0};
    uint32_t qweight[4 * 64];
    uint16_t scales[4 * 2];
    uint8_t zeros[4 * 2], codes[4 * 64];
    mx_scheme asym = {4, 16, 128, 0, MX_FMT_INT}, g32 = {4, 16, 32, 0, MX_FMT_INT};
    CHECK(mx_quantize_rtn(w, 4, 64, &asym, qweight, scales, zeros, &err) == MX_ERR_INVALID_ARG &&
              strstr(err.message, "group_size=128"),
          "K %% G: %s", err.message);
    CHECK(mx_quantize_rtn(w, 4, 48, &g32, qweight, scales, zeros, &err) == MX_ERR_INVALID_ARG &&
              strstr(err.message, "multiple of 32"),
          "K %% 32: %s", err.message);
    CHECK(mx_quantize_rtn(w, 0, 64, &g32, qweight, scales, zeros, &err) == MX_ERR_INVALID_ARG, "N = 0");
    CHECK(mx_quantize_rtn(w, 4, 64, &g32, qweight, scales, NULL, &err) == MX_ERR_INVALID_ARG &&
              strstr(err.message, "zeros"),
          "asym without zeros: %s", err.message);
    w[70] = NAN;
    CHECK(mx_quantize_rtn(w, 4, 64, &g32, qweight, scales, zeros, &err) == MX_ERR_NONFINITE &&
              strstr(err.message, "[1, 6]"),
          "NaN weight: %s", err.message);
    w[70] = 0.0f;
    mx_scheme bad = {5, 16, 32, 0, MX_FMT_INT};
    CHECK(mx_quantize_rtn(w, 4, 64, &bad, qweight, scales, zeros, &err) == MX_ERR_INVALID_ARG &&
              strstr(err.message, "w_bits=5"),
          "bad scheme: %s", err.message);
    mx_scheme w16 = {16, 16, -1, 1, MX_FMT_INT};
    CHECK(mx_pack_codes(codes, 4, 64, &w16, qweight, &err) == MX_ERR_INVALID_ARG, "w16 has no codes");
    CHECK(mx_pack_codes(NULL, 4, 64, &g32, qweight, &err) == MX_ERR_INVALID_ARG, "NULL codes");
    float scales_f[4];
    int8_t values[4 * 64];
    CHECK(mx_quantize_activations(w, 4, 64, &asym, values, scales_f, &err) == MX_ERR_INVALID_ARG &&
              strstr(err.message, "16-bit activations"),
          "a16 activation quantization: %s", err.message);
    mx_scheme a4 = {4, 4, -1, 1, MX_FMT_INT};
    CHECK(mx_quantize_activations(w, 2, 63, &a4, values, scales_f, &err) == MX_ERR_INVALID_ARG, "odd K for a4");
    w[3] = INFINITY;
    mx_scheme a8 = {8, 8, -1, 1, MX_FMT_INT};
    CHECK(mx_quantize_activations(w, 4, 64, &a8, values, scales_f, &err) == MX_ERR_NONFINITE, "Inf activation");
    CHECK(mx_quantize_activations(w, 0, 64, &a8, NULL, NULL, &err) == MX_OK, "M = 0 is empty, not an error");
    CHECK(mx_check_weight_shape(4, 64, NULL, &err) == MX_ERR_INVALID_ARG, "NULL scheme");
    return failures;
}

int mx_test_quant(void) {
    return test_conversions() + test_rtn_round_trip() + test_activations() + test_errors();
}
