/* mx_scheme.h — quantization schemes: the one table of facts, and the packed byte layouts every part reads.
 *
 * Name grammar (parsed by mx_scheme_parse, printed by mx_scheme_format; they round-trip):
 *
 *     w16a16                                  bf16 weights and activations, nothing quantized
 *     w{W}a{A}_g{G}_{sym|asym}[_fp8]          W in {2,3,4,8}, A in {16,8,4}, G in {-1,32,64,128}
 *
 *   G = -1 means one scale per output channel (weights).  Activations are always quantized per token (one scale
 *   per row of X), symmetric, whatever G says: G is the weight group.  `_fp8` switches 8-bit activations to
 *   float8 e4m3 and, when W = 8, the weights too (e4m3 weights are symmetric, per channel or per group); integer
 *   weights under `_fp8` stay integers (|q| <= 15 is exact in e4m3).  Examples: w4a16_g128_asym, w8a8_g-1_sym,
 *   w8a8_g-1_sym_fp8, w4a8_g128_asym, w4a4_g-1_sym.
 *
 * One grid for quantizer, packer and kernels.  A weight element is stored as an unsigned code u in [0, 2^W - 1]
 * and means
 *
 *     w = (u - z) * s          asym: z is the group's integer zero point, stored in `zeros`
 *                              sym:  z = 2^(W-1) implicitly, and u - z is restricted to +-(2^(W-1) - 1)
 *                                    (the code 0 is never produced), so the grid is symmetric around 0
 *
 *   Scales are float16, rounded *up* from the exact fp32 value so that the grid always covers the group's range
 *   (hence |w - w_hat| <= s/2 for every element of a group that RTN quantized).
 *
 * Packed layouts (a QuantizedWeight of a [N, K] = [out, in] matrix; K must be a multiple of 32 and of G):
 *
 *   qweight  u32 [N, K/32 * W]   each row holds its K codes in order; a "pack" of 32 consecutive codes of one
 *                                row takes exactly W words:
 *                                  W = 8, 4, 2: word j of the pack holds codes j*(32/W) ... j*(32/W) + 32/W - 1,
 *                                               code i of the word in bits [i*W, i*W + W)  (little-endian order)
 *                                  W = 3:       words 0 and 1 hold the low 2 bits of codes 0-15 and 16-31 (as W=2),
 *                                               word 2 holds bit 2 of code i in bit i
 *                                  W = 8 fp8:   the bytes are e4m3 values (no zero point), same order as W = 8
 *            u16 [N, K]          W = 16: the bf16 bit patterns of the weights
 *   scales   f16 [K/G', N]       G' = G, or K for G = -1 (one row); column n is output channel n
 *   zeros    u8  [K/G', N]       asym only: the integer zero point z of each group (0 <= z <= 2^W - 1)
 *
 * Activations quantized per token (mx_quantize_activations): values [M, K] as int8 (A=8 int), uint8 e4m3 bytes
 * (A=8 fp8), or int4 packed two per byte, low nibble = even k (A=4); one fp32 scale per token; x = q * scale.
 *
 * Both C11 and nvcc include this header. */
#ifndef MX_SCHEME_H
#define MX_SCHEME_H

#include "mx_common.h"

#ifdef __cplusplus
extern "C" {
#endif

enum mx_number_format {
    MX_FMT_INT = 0,
    MX_FMT_FP8_E4M3 = 1,
};

/* A scheme as numbers.  Any combination mx_scheme_validate accepts can be quantized and run by the C reference;
 * the GPU kernels cover the candidate table below. */
typedef struct mx_scheme {
    int32_t w_bits;     /* 2, 3, 4, 8 or 16 */
    int32_t a_bits;     /* 4, 8 or 16 */
    int32_t group_size; /* -1 (per output channel) or 32, 64, 128; -1 for w16 */
    int32_t symmetric;  /* 1 = sym (restricted grid), 0 = asym (integer zero point) */
    int32_t fmt;        /* enum mx_number_format */
} mx_scheme;

/* The candidate schemes: the set the allocator chooses from and the GPU dispatch instantiates.
 * Explicit values, append-only (plans and checkpoints store names, kernels store these ids). */
enum mx_scheme_id {
    MX_SCHEME_W16A16 = 0,
    MX_SCHEME_W8A16_GN1_SYM = 1,
    MX_SCHEME_W4A16_GN1_ASYM = 2,
    MX_SCHEME_W4A16_G128_ASYM = 3,
    MX_SCHEME_W3A16_G128_ASYM = 4,
    MX_SCHEME_W2A16_G128_ASYM = 5,
    MX_SCHEME_W8A8_GN1_SYM = 6,
    MX_SCHEME_W8A8_GN1_SYM_FP8 = 7,
    MX_SCHEME_W4A8_GN1_SYM = 8,
    MX_SCHEME_W4A8_G128_ASYM = 9,
    MX_SCHEME_W4A4_GN1_SYM = 10,
    MX_SCHEME_W4A4_G128_SYM = 11,
    MX_SCHEME_COUNT = 12
};

/* GPU architectures on which a scheme's kernel runs at tensor-core speed (bit mask). */
enum mx_arch_mask {
    MX_ARCH_SM80 = 1, /* A100 */
    MX_ARCH_SM89 = 2, /* RTX 4090 / L40 (Ada): native int4 and fp8 mma */
    MX_ARCH_SM90 = 4, /* H100 / H200: int4 mma is emulated, so w4a4 is slow there */
    MX_ARCH_ALL = 7
};

typedef struct mx_scheme_traits {
    enum mx_scheme_id id;
    const char *name;    /* canonical name, mx_scheme_format(scheme) == name */
    mx_scheme scheme;
    int32_t fast_arch;   /* enum mx_arch_mask */
    const char *kernel;  /* kernel family that runs it: "bf16", "wxa16", "int8", "fp8" */
} mx_scheme_traits;

/* The table, indexed by enum mx_scheme_id. */
MX_API extern const mx_scheme_traits mx_scheme_table[MX_SCHEME_COUNT];

/* Check ranges and combinations; MX_ERR_INVALID_ARG with a message naming the bad field. */
MX_API enum mx_status mx_scheme_validate(const mx_scheme *scheme, mx_error *err);

/* Parse a name (grammar above) into *out; MX_ERR_INVALID_ARG with the accepted forms on failure. */
MX_API enum mx_status mx_scheme_parse(const char *name, mx_scheme *out, mx_error *err);

/* Write the canonical name into buf (>= 32 bytes). */
MX_API void mx_scheme_format(const mx_scheme *scheme, char *buf, size_t buf_bytes);

/* Index in mx_scheme_table, or -1 if the scheme is not a candidate. */
MX_API int mx_scheme_find(const mx_scheme *scheme);

/* Bits charged per weight: w_bits + 16/G for the f16 scale + 16/G for the zero point (asym), with G = in_features
 * for per-channel schemes (pass in_features <= 0 to ignore that per-channel overhead). w16 costs 16. */
MX_API double mx_scheme_bits_per_weight(const mx_scheme *scheme, int64_t in_features);

/* Sizes of the packed buffers for an [N, K] matrix (elements, not bytes; see the layout comment above). */
MX_API int64_t mx_scheme_qweight_words(const mx_scheme *scheme, int64_t N, int64_t K); /* u32 (u16 for w16) */
MX_API int64_t mx_scheme_scale_rows(const mx_scheme *scheme, int64_t K);               /* rows of scales/zeros */

/* Largest positive code magnitude of the sym grid (2^(W-1) - 1) and the offset z of the sym grid (2^(W-1)). */
static inline int32_t mx_sym_qmax(int32_t bits) { return (1 << (bits - 1)) - 1; }
static inline int32_t mx_sym_zero(int32_t bits) { return 1 << (bits - 1); }

/* Largest finite e4m3 magnitude (OCP FP8 E4M3FN). */
#define MX_FP8_E4M3_MAX 448.0f

#ifdef __cplusplus
}
#endif
#endif /* MX_SCHEME_H */
