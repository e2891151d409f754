/* mx_quant.h — the quantization grid (one definition for RTN, GPTQ, the packer and the kernels), packing, and
 * per-token activation quantization.  Layouts: see mx_scheme.h.  Shapes in comments are row-major.
 *
 * Example (RTN of a [N, K] float matrix with a scheme parsed from its name):
 *
 *     mx_scheme s; mx_error err;
 *     mx_scheme_parse("w4a16_g128_asym", &s, &err);
 *     uint32_t *qweight = malloc(mx_scheme_qweight_words(&s, N, K) * 4);
 *     uint16_t *scales  = malloc(mx_scheme_scale_rows(&s, K) * N * 2);
 *     uint8_t  *zeros   = malloc(mx_scheme_scale_rows(&s, K) * N);
 *     if (mx_quantize_rtn(w, N, K, &s, qweight, scales, zeros, &err) != MX_OK) puts(err.message);
 */
#ifndef MX_QUANT_H
#define MX_QUANT_H

#include "mx_scheme.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- scalar conversions (exact, round-to-nearest-even unless stated) ---- */
MX_API uint16_t mx_f32_to_f16(float x);
MX_API uint16_t mx_f32_to_f16_round_up(float x); /* smallest f16 >= x (x >= 0): scales use this */
MX_API float mx_f16_to_f32(uint16_t h);
MX_API uint16_t mx_f32_to_bf16(float x);
MX_API float mx_bf16_to_f32(uint16_t h);
MX_API uint8_t mx_f32_to_e4m3(float x); /* saturating to +-448, NaN -> 0x7f */
MX_API float mx_e4m3_to_f32(uint8_t v);

/* ---- the grid ----
 * Group parameters of one group of `n` weights (a run of one output row): the f16 scale (rounded up, never 0:
 * an all-zero group gets the smallest normal f16 so dequantization stays finite) and, for asym, the integer
 * zero point in [0, 2^W - 1].  For fp8 weights the scale maps max|w| to 448.  `w` may be strided by `stride`. */
MX_API void mx_grid_params(const float *w, int64_t n, int64_t stride, const mx_scheme *s, uint16_t *scale_f16,
                           uint8_t *zero);

/* Code of one weight on the grid: u in [0, 2^W - 1] (sym codes never 0), or e4m3 bits for fp8 weights. */
MX_API uint8_t mx_grid_code(float w, float scale, int32_t zero, const mx_scheme *s);

/* Value of a code: (u - z) * scale (z = 2^(W-1) for sym), or e4m3(u) * scale for fp8 weights. */
MX_API float mx_grid_value(uint8_t code, float scale, int32_t zero, const mx_scheme *s);

/* ---- packing (codes u8 [N, K] <-> qweight u32 [N, K/32*W]); K % 32 == 0 ---- */
MX_API enum mx_status mx_pack_codes(const uint8_t *codes, int64_t N, int64_t K, const mx_scheme *s,
                                    uint32_t *qweight, mx_error *err);
MX_API enum mx_status mx_unpack_codes(const uint32_t *qweight, int64_t N, int64_t K, const mx_scheme *s,
                                      uint8_t *codes, mx_error *err);

/* Check N, K against the scheme (K % 32, K % G, positive sizes); message names the values. */
MX_API enum mx_status mx_check_weight_shape(int64_t N, int64_t K, const mx_scheme *s, mx_error *err);

/* ---- RTN ----
 * w: [N, K] f32 (finite) -> qweight [N, K/32*W] u32 (u16 [N, K] bf16 for w16), scales f16 [K/G', N],
 * zeros u8 [K/G', N] (asym only; may be NULL for sym). */
MX_API enum mx_status mx_quantize_rtn(const float *w, int64_t N, int64_t K, const mx_scheme *s, uint32_t *qweight,
                                      uint16_t *scales, uint8_t *zeros, mx_error *err);

/* Inverse: -> w_hat [N, K] f32. */
MX_API enum mx_status mx_dequantize(const uint32_t *qweight, const uint16_t *scales, const uint8_t *zeros,
                                    int64_t N, int64_t K, const mx_scheme *s, float *w_hat, mx_error *err);

/* ---- activations, per token (row) ----
 * x: [M, K] f32 -> values (int8 [M, K] for a8 int; e4m3 bytes [M, K] for a8 fp8; int4 [M, K/2] two per byte,
 * low nibble = even k, for a4), scales f32 [M]; x ~= q * scale.  A row of zeros gets scale 1 and codes 0. */
MX_API enum mx_status mx_quantize_activations(const float *x, int64_t M, int64_t K, const mx_scheme *s,
                                              void *values, float *scales, mx_error *err);
MX_API enum mx_status mx_dequantize_activations(const void *values, const float *scales, int64_t M, int64_t K,
                                                const mx_scheme *s, float *x_hat, mx_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MX_QUANT_H */
