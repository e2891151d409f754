/* quant.c — the one quantization grid (RTN, GPTQ, packer, kernels), packing, RTN, dequantization and per-token
 * activation quantization.  Layouts: mx_scheme.h.  API: mx_quant.h.
 *
 * Rounding conventions (the GPU kernels and mxmoe/_reference/quant.py follow them bit for bit):
 *   - weights, int grid: u = clamp(rint((double)w / (double)s) + z), round half to even, quotient in double so
 *     that |w - (u - z)s| <= s/2 holds exactly (the f16 scale times a code is exact in f32);
 *   - weights, fp8 grid: code = e4m3(w / s) with the quotient in f32;
 *   - activations: scale = amax / qmax in f32 (qmax = 127, 7 or 448), code = rint(x / scale) clamped to
 *     +-qmax (int) or e4m3(x / scale) (fp8), quotient in f32 (what a CUDA kernel computes with IEEE division).
 */
#include "mx_quant.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------------------
 * Scalar conversions.  Bit manipulation through memcpy (no type punning UB).
 * ---------------------------------------------------------------------------------------------------------- */

static inline uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

// x: one f32 -> IEEE binary16 bits, round to nearest even, overflow -> inf, subnormals kept.
uint16_t mx_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u)); /* NaN / inf */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (a < 0x38800000u) {
        /* f16 subnormal (|x| < 2^-14): value = m * 2^-24, m = rint(|x| * 2^24); exact in float arithmetic */
        float m = rintf(bits_f32(a) * 16777216.0f);
        return (uint16_t)(sign | (uint16_t)m); /* m == 1024 gives the smallest normal, encoded the same way */
    }
    /* normal: drop 13 mantissa bits with round-to-nearest-even; a carry into the exponent is correct */
    uint32_t rounded = a + 0x0fffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | (uint16_t)((rounded - 0x38000000u) >> 13));
}

// h: binary16 bits -> f32 (exact).
float mx_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        float v = (float)man * 5.9604644775390625e-08f; /* man * 2^-24 */
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// x >= 0 (any sign accepted): the smallest f16 value >= x; scales use it so the grid covers its group.
uint16_t mx_f32_to_f16_round_up(float x) {
    if (isnan(x)) return 0x7e00u;
    uint16_t h = mx_f32_to_f16(x);
    float back = mx_f16_to_f32(h);
    if (back >= x) return h;
    /* rounded down: step one f16 towards +inf */
    if (h & 0x8000u) return (h == 0x8000u) ? 0x0001u : (uint16_t)(h - 1u);
    return (uint16_t)(h + 1u); /* 0x7bff + 1 = 0x7c00 (inf) only when x > 65504 */
}

// x: f32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
uint16_t mx_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mx_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// x: f32 -> OCP e4m3fn bits (bias 7, no inf, 0x7f = NaN, max 448), round to nearest even, saturating.
uint8_t mx_f32_to_e4m3(float x) {
    if (isnan(x)) return 0x7fu;
    uint8_t sign = signbit(x) ? 0x80u : 0x00u;
    float a = fabsf(x);
    if (a >= MX_FP8_E4M3_MAX) return (uint8_t)(sign | 0x7eu);
    uint32_t code;
    if (a < 0.015625f) {
        /* subnormal range (|x| < 2^-6): value = m * 2^-9; m = 8 is the smallest normal, encoded as 0x08 */
        code = (uint32_t)rintf(a * 512.0f);
    } else {
        int e;
        frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1): the leading bit has weight 2^(e-1) */
        float mantissa = ldexpf(a, 1 - e);                     /* in [1, 2), exact */
        uint32_t m = (uint32_t)rintf((mantissa - 1.0f) * 8.0f); /* 0..8; 8 carries into the exponent */
        code = ((uint32_t)(e - 1 + 7) << 3) + m;
    }
    if (code > 0x7eu) code = 0x7eu; /* values in (448, 464) that rounded up: saturate */
    return (uint8_t)(sign | code);
}

// v: e4m3fn bits -> f32 (exact).
float mx_e4m3_to_f32(uint8_t v) {
    uint32_t exp = (v >> 3) & 0xfu, man = v & 7u;
    float mag;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0)
        mag = (float)man * 0.001953125f; /* man * 2^-9 */
    else
        mag = ldexpf(1.0f + (float)man * 0.125f, (int)exp - 7);
    return (v & 0x80u) ? -mag : mag;
}

/* ------------------------------------------------------------------------------------------------------------
 * The grid.
 * ---------------------------------------------------------------------------------------------------------- */

static inline int is_fp8_weight(const mx_scheme *s) { return s->fmt == MX_FMT_FP8_E4M3 && s->w_bits == 8; }

/* Smallest normal f16 (2^-14): the scale of an all-zero group, so dequantization stays finite and nonzero. */
#define MX_F16_MIN_NORMAL_BITS 0x0400u
#define MX_F16_MAX_BITS 0x7bffu /* 65504 */

/* An exact f32 scale -> the f16 scale stored: rounded up, never 0, never inf (clamped to 65504: only groups with
 * |w| beyond ~65504 * qmax reach it, and then the s/2 bound cannot hold in f16 anyway). */
static uint16_t scale_to_f16(float exact) {
    if (!(exact > 0.0f)) return MX_F16_MIN_NORMAL_BITS;
    uint16_t h = mx_f32_to_f16_round_up(exact);
    return h > MX_F16_MAX_BITS ? MX_F16_MAX_BITS : h;
}

// w: n values at stride `stride` (one group of one output row) -> *scale_f16, *zero (zero may be NULL).
void mx_grid_params(const float *w, int64_t n, int64_t stride, const mx_scheme *s, uint16_t *scale_f16,
                    uint8_t *zero) {
    float lo = 0.0f, hi = 0.0f; /* the range always includes 0 so the asym zero point is a code */
    for (int64_t i = 0; i < n; i++) {
        float v = w[i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    float amax = fmaxf(-lo, hi);
    uint8_t z;
    uint16_t h;
    if (is_fp8_weight(s)) {
        h = scale_to_f16(amax / MX_FP8_E4M3_MAX);
        z = 0;
    } else if (s->symmetric) {
        h = scale_to_f16(amax / (float)mx_sym_qmax(s->w_bits));
        z = (uint8_t)mx_sym_zero(s->w_bits);
    } else {
        int32_t maxq = (1 << s->w_bits) - 1;
        /* (hi - lo) in double: no overflow, then the exact f32 scale */
        h = scale_to_f16((float)(((double)hi - (double)lo) / maxq));
        double zd = rint(-(double)lo / (double)mx_f16_to_f32(h));
        z = (uint8_t)(zd < 0 ? 0 : (zd > maxq ? maxq : zd));
    }
    *scale_f16 = h;
    if (zero) *zero = z;
}

// one weight -> its code (sym: u in [1, 2^W-1] around z = 2^(W-1); asym: [0, 2^W-1]; fp8: e4m3 bits).
uint8_t mx_grid_code(float w, float scale, int32_t zero, const mx_scheme *s) {
    if (is_fp8_weight(s)) return mx_f32_to_e4m3(w / scale);
    double lo, hi, z;
    if (s->symmetric) {
        z = mx_sym_zero(s->w_bits);
        lo = z - mx_sym_qmax(s->w_bits);
        hi = z + mx_sym_qmax(s->w_bits);
    } else {
        z = zero;
        lo = 0;
        hi = (1 << s->w_bits) - 1;
    }
    double q = rint((double)w / (double)scale) + z;
    if (!(q >= lo)) q = (q != q) ? z : lo; /* NaN (only from a bad scale) maps to the zero point */
    if (q > hi) q = hi;
    return (uint8_t)q;
}

// one code -> its value.
float mx_grid_value(uint8_t code, float scale, int32_t zero, const mx_scheme *s) {
    if (is_fp8_weight(s)) return mx_e4m3_to_f32(code) * scale;
    int32_t z = s->symmetric ? mx_sym_zero(s->w_bits) : zero;
    return (float)((int32_t)code - z) * scale;
}

/* ------------------------------------------------------------------------------------------------------------
 * Packing.  One "pack" = 32 consecutive codes of a row = W u32 words (mx_scheme.h).
 * ---------------------------------------------------------------------------------------------------------- */

// codes: [32] u8 -> words: [W] u32
static void pack32(const uint8_t *codes, int32_t bits, uint32_t *words) {
    if (bits == 3) {
        uint32_t w0 = 0, w1 = 0, w2 = 0;
        for (int i = 0; i < 16; i++) {
            w0 |= (uint32_t)(codes[i] & 3u) << (2 * i);
            w1 |= (uint32_t)(codes[16 + i] & 3u) << (2 * i);
        }
        for (int i = 0; i < 32; i++) w2 |= (uint32_t)((codes[i] >> 2) & 1u) << i;
        words[0] = w0;
        words[1] = w1;
        words[2] = w2;
        return;
    }
    int per_word = 32 / bits;
    uint32_t mask = (1u << bits) - 1u;
    for (int j = 0; j < bits; j++) {
        uint32_t word = 0;
        for (int i = 0; i < per_word; i++) word |= (uint32_t)(codes[j * per_word + i] & mask) << (i * bits);
        words[j] = word;
    }
}

// words: [W] u32 -> codes: [32] u8, for a compile-time `bits` (2, 4, 8) so the loops unroll and vectorize
static inline __attribute__((always_inline)) void unpack32_pow2(const uint32_t *words, const int bits,
                                                                uint8_t *codes) {
    const int per_word = 32 / bits;
    const uint32_t mask = (1u << bits) - 1u;
    for (int j = 0; j < bits; j++)
        for (int i = 0; i < per_word; i++) codes[j * per_word + i] = (uint8_t)((words[j] >> (i * bits)) & mask);
}

// words: [W] u32 -> codes: [32] u8
static void unpack32(const uint32_t *words, int32_t bits, uint8_t *codes) {
    switch (bits) {
    case 2: unpack32_pow2(words, 2, codes); return;
    case 4: unpack32_pow2(words, 4, codes); return;
    case 8: unpack32_pow2(words, 8, codes); return;
    default: break;
    }
    /* W = 3: two 2-bit planes (codes 0-15, 16-31) and one plane of the third bits */
    for (int i = 0; i < 16; i++) {
        codes[i] = (uint8_t)(((words[0] >> (2 * i)) & 3u) | (((words[2] >> i) & 1u) << 2));
        codes[16 + i] = (uint8_t)(((words[1] >> (2 * i)) & 3u) | (((words[2] >> (16 + i)) & 1u) << 2));
    }
}

enum mx_status mx_check_weight_shape(int64_t N, int64_t K, const mx_scheme *s, mx_error *err) {
    enum mx_status st = mx_scheme_validate(s, err);
    if (st != MX_OK) return st;
    char name[64];
    mx_scheme_format(s, name, sizeof name);
    if (N <= 0 || K <= 0 || N > INT32_MAX || K > INT32_MAX)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "weight shape N=%lld, K=%lld must be positive and < 2^31 (%s)",
                            (long long)N, (long long)K, name);
    if (K % 32 != 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "in_features K=%lld is not a multiple of 32 (%s)", (long long)K,
                            name);
    if (s->w_bits != 16 && s->group_size > 0 && K % s->group_size != 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "in_features K=%lld is not a multiple of group_size=%d (%s)",
                            (long long)K, (int)s->group_size, name);
    return MX_OK;
}

static enum mx_status check_packed_scheme(int64_t N, int64_t K, const mx_scheme *s, const char *what,
                                          mx_error *err) {
    enum mx_status st = mx_check_weight_shape(N, K, s, err);
    if (st != MX_OK) return st;
    if (s->w_bits == 16)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: w16a16 weights are bf16, not packed codes", what);
    return MX_OK;
}

// codes: [N, K] u8 -> qweight: [N, K/32*W] u32
enum mx_status mx_pack_codes(const uint8_t *codes, int64_t N, int64_t K, const mx_scheme *s, uint32_t *qweight,
                             mx_error *err) {
    enum mx_status st = check_packed_scheme(N, K, s, "mx_pack_codes", err);
    if (st != MX_OK) return st;
    if (!codes || !qweight) return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_pack_codes: NULL buffer");
    const int32_t bits = s->w_bits;
    const int64_t packs = K / 32;
#pragma omp parallel for schedule(static) if (N * K > (1 << 18))
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < packs; p++) pack32(codes + n * K + p * 32, bits, qweight + (n * packs + p) * bits);
    return MX_OK;
}

// qweight: [N, K/32*W] u32 -> codes: [N, K] u8
enum mx_status mx_unpack_codes(const uint32_t *qweight, int64_t N, int64_t K, const mx_scheme *s, uint8_t *codes,
                               mx_error *err) {
    enum mx_status st = check_packed_scheme(N, K, s, "mx_unpack_codes", err);
    if (st != MX_OK) return st;
    if (!codes || !qweight) return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_unpack_codes: NULL buffer");
    const int32_t bits = s->w_bits;
    const int64_t packs = K / 32;
#pragma omp parallel for schedule(static) if (N * K > (1 << 18))
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < packs; p++) unpack32(qweight + (n * packs + p) * bits, bits, codes + n * K + p * 32);
    return MX_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * RTN and dequantization.
 * ---------------------------------------------------------------------------------------------------------- */

/* First non-finite element of a [rows, cols] f32 array, or -1. */
static int64_t find_nonfinite(const float *x, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

static enum mx_status check_weight_buffers(int64_t N, int64_t K, const mx_scheme *s, const void *qweight,
                                           const void *scales, const void *zeros, const char *what, mx_error *err) {
    enum mx_status st = mx_check_weight_shape(N, K, s, err);
    if (st != MX_OK) return st;
    if (!qweight) return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: qweight is NULL", what);
    if (s->w_bits != 16 && !scales) return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: scales is NULL", what);
    if (s->w_bits != 16 && !s->symmetric && !is_fp8_weight(s) && !zeros)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: zeros is NULL for an asym scheme", what);
    return MX_OK;
}

// w: [N, K] f32 -> qweight [N, K/32*W] u32 (u16 [N, K] for w16), scales [K/G', N] f16, zeros [K/G', N] u8
enum mx_status mx_quantize_rtn(const float *w, int64_t N, int64_t K, const mx_scheme *s, uint32_t *qweight,
                               uint16_t *scales, uint8_t *zeros, mx_error *err) {
    enum mx_status st = check_weight_buffers(N, K, s, qweight, scales, zeros, "mx_quantize_rtn", err);
    if (st != MX_OK) return st;
    if (!w) return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_quantize_rtn: w is NULL");
    int64_t bad = find_nonfinite(w, N * K);
    if (bad >= 0)
        return mx_error_set(err, MX_ERR_NONFINITE, "weight has a non-finite value %g at [%lld, %lld]",
                            (double)w[bad], (long long)(bad / K), (long long)(bad % K));

    if (s->w_bits == 16) {
        uint16_t *out = (uint16_t *)(void *)qweight;
        for (int64_t i = 0; i < N * K; i++) out[i] = mx_f32_to_bf16(w[i]);
        return MX_OK;
    }
    const int64_t G = s->group_size > 0 ? s->group_size : K;
    const int64_t groups = K / G;
    uint8_t *codes = malloc((size_t)(N * K));
    if (!codes) return mx_error_set(err, MX_ERR_NOMEM, "mx_quantize_rtn: no memory for %lld codes", (long long)(N * K));
#pragma omp parallel for schedule(static) if (N * K > (1 << 16))
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *wg = w + n * K + g * G;
            uint16_t h;
            uint8_t z;
            mx_grid_params(wg, G, 1, s, &h, &z);
            scales[g * N + n] = h;
            if (zeros && !s->symmetric && !is_fp8_weight(s)) zeros[g * N + n] = z;
            const float scale = mx_f16_to_f32(h);
            for (int64_t k = 0; k < G; k++) codes[n * K + g * G + k] = mx_grid_code(wg[k], scale, z, s);
        }
    }
    st = mx_pack_codes(codes, N, K, s, qweight, err);
    free(codes);
    return st;
}

// qweight [N, K/32*W] u32 (u16 [N, K] for w16), scales [K/G', N] f16, zeros [K/G', N] u8 -> w_hat [N, K] f32
enum mx_status mx_dequantize(const uint32_t *qweight, const uint16_t *scales, const uint8_t *zeros, int64_t N,
                             int64_t K, const mx_scheme *s, float *w_hat, mx_error *err) {
    enum mx_status st = check_weight_buffers(N, K, s, qweight, scales, zeros, "mx_dequantize", err);
    if (st != MX_OK) return st;
    if (!w_hat) return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_dequantize: w_hat is NULL");
    if (s->w_bits == 16) {
        const uint16_t *in = (const uint16_t *)(const void *)qweight;
        for (int64_t i = 0; i < N * K; i++) w_hat[i] = mx_bf16_to_f32(in[i]);
        return MX_OK;
    }
    const int64_t G = s->group_size > 0 ? s->group_size : K;
    const int64_t packs = K / 32;
    const int32_t bits = s->w_bits;
    const int use_zeros = !s->symmetric && !is_fp8_weight(s);
    const int fp8 = is_fp8_weight(s);
    float e4m3_table[256];
    for (int v = 0; v < 256; v++) e4m3_table[v] = mx_e4m3_to_f32((uint8_t)v);
#pragma omp parallel for schedule(static) if (N * K > (1 << 16))
    for (int64_t n = 0; n < N; n++) {
        uint8_t codes[32];
        for (int64_t p = 0; p < packs; p++) {
            unpack32(qweight + (n * packs + p) * bits, bits, codes);
            const int64_t g = p * 32 / G; /* G is a multiple of 32: one group per pack */
            const float scale = mx_f16_to_f32(scales[g * N + n]);
            float *out = w_hat + n * K + p * 32;
            if (fp8) {
                for (int i = 0; i < 32; i++) out[i] = e4m3_table[codes[i]] * scale;
            } else {
                /* the grid's value (u - z) * s, inlined so the loop vectorizes */
                const int32_t z = use_zeros ? zeros[g * N + n] : mx_sym_zero(bits);
                for (int i = 0; i < 32; i++) out[i] = (float)((int32_t)codes[i] - z) * scale;
            }
        }
    }
    return MX_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * Activations, per token.
 * ---------------------------------------------------------------------------------------------------------- */

static enum mx_status check_activation_args(int64_t M, int64_t K, const mx_scheme *s, const char *what,
                                            mx_error *err) {
    enum mx_status st = mx_scheme_validate(s, err);
    if (st != MX_OK) return st;
    char name[64];
    mx_scheme_format(s, name, sizeof name);
    if (s->a_bits == 16)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: scheme %s keeps 16-bit activations (nothing to quantize)",
                            what, name);
    if (M < 0 || K <= 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: shape M=%lld, K=%lld (need M >= 0, K > 0) (%s)", what,
                            (long long)M, (long long)K, name);
    if (s->a_bits == 4 && K % 2 != 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: a4 packs two values per byte: K=%lld must be even (%s)",
                            what, (long long)K, name);
    return MX_OK;
}

// x: [M, K] f32 -> values (int8 [M, K] | e4m3 u8 [M, K] | int4 u8 [M, K/2]), scales f32 [M]
enum mx_status mx_quantize_activations(const float *x, int64_t M, int64_t K, const mx_scheme *s, void *values,
                                       float *scales, mx_error *err) {
    enum mx_status st = check_activation_args(M, K, s, "mx_quantize_activations", err);
    if (st != MX_OK) return st;
    if (M == 0) return MX_OK;
    if (!x || !values || !scales) return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_quantize_activations: NULL buffer");
    int64_t bad = find_nonfinite(x, M * K);
    if (bad >= 0)
        return mx_error_set(err, MX_ERR_NONFINITE, "activation has a non-finite value %g at [%lld, %lld]",
                            (double)x[bad], (long long)(bad / K), (long long)(bad % K));
    const int fp8 = s->fmt == MX_FMT_FP8_E4M3;
    const float qmax = fp8 ? MX_FP8_E4M3_MAX : (float)mx_sym_qmax(s->a_bits);
#pragma omp parallel for schedule(static) if (M * K > (1 << 16))
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        float amax = 0.0f;
        for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(row[k]));
        float scale = amax / qmax;
        /* a zero row (or one so small that its scale underflows) is stored as scale 1, codes 0 */
        const int zero_row = !(scale > 0.0f);
        if (zero_row) scale = 1.0f;
        scales[m] = scale;
        if (fp8) {
            uint8_t *out = (uint8_t *)values + m * K;
            for (int64_t k = 0; k < K; k++) out[k] = zero_row ? 0 : mx_f32_to_e4m3(row[k] / scale);
        } else if (s->a_bits == 8) {
            int8_t *out = (int8_t *)values + m * K;
            for (int64_t k = 0; k < K; k++) {
                float q = zero_row ? 0.0f : rintf(row[k] / scale);
                out[k] = (int8_t)fminf(fmaxf(q, -qmax), qmax);
            }
        } else {
            uint8_t *out = (uint8_t *)values + m * (K / 2);
            for (int64_t k = 0; k < K; k += 2) {
                float q0 = zero_row ? 0.0f : fminf(fmaxf(rintf(row[k] / scale), -qmax), qmax);
                float q1 = zero_row ? 0.0f : fminf(fmaxf(rintf(row[k + 1] / scale), -qmax), qmax);
                out[k / 2] = (uint8_t)(((uint32_t)(int32_t)q0 & 0xfu) | (((uint32_t)(int32_t)q1 & 0xfu) << 4));
            }
        }
    }
    return MX_OK;
}

// values (as above), scales f32 [M] -> x_hat [M, K] f32
enum mx_status mx_dequantize_activations(const void *values, const float *scales, int64_t M, int64_t K,
                                         const mx_scheme *s, float *x_hat, mx_error *err) {
    enum mx_status st = check_activation_args(M, K, s, "mx_dequantize_activations", err);
    if (st != MX_OK) return st;
    if (M == 0) return MX_OK;
    if (!values || !scales || !x_hat)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_dequantize_activations: NULL buffer");
    const int fp8 = s->fmt == MX_FMT_FP8_E4M3;
    for (int64_t m = 0; m < M; m++) {
        const float scale = scales[m];
        float *out = x_hat + m * K;
        if (fp8) {
            const uint8_t *in = (const uint8_t *)values + m * K;
            for (int64_t k = 0; k < K; k++) out[k] = mx_e4m3_to_f32(in[k]) * scale;
        } else if (s->a_bits == 8) {
            const int8_t *in = (const int8_t *)values + m * K;
            for (int64_t k = 0; k < K; k++) out[k] = (float)in[k] * scale;
        } else {
            const uint8_t *in = (const uint8_t *)values + m * (K / 2);
            for (int64_t k = 0; k < K; k++) {
                int32_t nib = (in[k / 2] >> ((k & 1) * 4)) & 0xf;
                out[k] = (float)(nib >= 8 ? nib - 16 : nib) * scale;
            }
        }
    }
    return MX_OK;
}
