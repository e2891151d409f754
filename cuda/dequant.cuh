/* dequant.cuh — packed weight codes (csrc/mx_scheme.h layouts) -> mma B fragments, in registers.
 *
 * The kernels never store dequantized weights.  Scales are NOT applied here: a fragment holds the exact integers
 * (u - z), and the scale multiplies fp32 partial sums instead (per group for g128, in the epilogue for per-channel
 * schemes).  That keeps the bf16 operands exact (|u - z| <= 255 fits bf16's 8-bit significand) and the result equal
 * to the reference's (u - z)·s up to fp32 summation order.
 *
 * bf16 path (m16n8k16): for one 32-code pack of weight row n = g, lane (g, t) needs the code pairs
 *   {2t, 2t+1} (b0 of k16 step 0), {8+2t, 9+2t} (b1, step 0), {16+2t, 17+2t} (b0, step 1), {24+2t, 25+2t} (b1, step 1).
 *   W = 4: word j of the pack holds codes 8j..8j+7, so pair j is byte t of word j.
 *   W = 2: word j holds codes 16j..16j+15: the pairs are the nibbles at bits 4t and 16+4t of words 0 and 1.
 *   W = 3: the low two bits as W = 2 (words 0, 1), bit 2 of code c is bit c of word 2.
 *   W = 8: word j holds codes 4j..4j+3: pair {c, c+1} is the 16 bits at byte offset c of the pack.
 * The trick for W <= 4: 0x4300 | u is the bf16 number 128 + u (exponent 2^7, so the 7 mantissa bits count units),
 * and (128 + u) - (128 + z) is exact in bf16.
 *
 * int8 path (m16n8k32): lane (g, t) needs codes {4t..4t+3} (b0) and {16+4t..16+4t+3} (b1) of the pack.
 *   W = 8: words t and 4 + t of the pack (bytes are codes in order); sym int: u - 128 = u ^ 0x80 as int8.
 *   W = 4: the 16 bits at byte offset 2t and 8 + 2t of the pack, spread nibble -> byte, minus z per byte.
 * No SIMD-video intrinsics (__vsub4 is emulated on sm_90): byte-wise math is done with a bias of 128 instead. */
#ifndef MX_DEQUANT_CUH
#define MX_DEQUANT_CUH

#include <cuda_bf16.h>

#include <cstdint>

#include "mma.cuh"

namespace mx {

__device__ __forceinline__ uint32_t bf16x2_bits(__nv_bfloat162 v) { return *reinterpret_cast<uint32_t *>(&v); }
__device__ __forceinline__ __nv_bfloat162 bits_bf16x2(uint32_t v) { return *reinterpret_cast<__nv_bfloat162 *>(&v); }

// bf16x2 (128 + z, 128 + z): subtracted from the magic pairs below to get the exact integers u - z.
__device__ __forceinline__ uint32_t bf16x2_128_plus(int z) {
    const uint32_t h = 0x4300u | static_cast<uint32_t>(z);
    return h | (h << 16);
}

// Two codes u0, u1 (already isolated to bits [0,8) and [16,24), each <= 127) -> bf16x2 (u0 - z, u1 - z), exact.
__device__ __forceinline__ uint32_t pair_minus_z(uint32_t u0u1_spread, uint32_t z_magic) {
    return bf16x2_bits(__hsub2(bits_bf16x2(u0u1_spread | 0x43004300u), bits_bf16x2(z_magic)));
}

// (x & MASK) | 0x43004300 in ONE LOP3, for a MASK that isolates two codes u0, u1 at bits [0,7) and [16,23): the
// bf16 pair (128 + u0, 128 + u1), exact.  Written in C this compiles to two LOP3s (an instruction takes one
// immediate), and in the decode stream kernel those were a quarter of all instructions.  That kernel takes the zero
// point off after the mma (128 + z times the activations' group sum), so this is all its weights' unpacking.
template <uint32_t MASK>
__device__ __forceinline__ uint32_t magic_pair(uint32_t x) {
    uint32_t pair;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(pair) : "r"(x), "n"(MASK), "n"(0x43004300));  // (a & b) | c
    return pair;
}

// W = 4: bits [0,4) and [4,8) of x are two consecutive codes.
__device__ __forceinline__ uint32_t spread_nib_pair(uint32_t x) { return (x & 0xFu) | ((x & 0xF0u) << 12); }
// W = 2: bits [0,2) and [2,4) of x are two consecutive codes.
__device__ __forceinline__ uint32_t spread_crumb_pair(uint32_t x) { return (x & 0x3u) | ((x & 0xCu) << 14); }
// W = 3: low planes as W = 2 in x, bit 0 / 1 of h = bit 2 of the first / second code.
__device__ __forceinline__ uint32_t spread_w3_pair(uint32_t x, uint32_t h) {
    return (x & 0x3u) | ((h & 1u) << 2) | ((x & 0xCu) << 14) | ((h & 2u) << 17);
}

// W = 8 (sym, z = 128): the 16 bits b = u0 | u1 << 8 -> bf16x2 (u0 - 128, u1 - 128), exact: 2^23 + u is an fp32
// whose last mantissa bits are u, minus (2^23 + 128) gives u - 128 exactly.
__device__ __forceinline__ uint32_t u8pair_minus_128(uint32_t b) {
    const float f0 = __uint_as_float(0x4B000000u | (b & 0xFFu)) - 8388736.0f;
    const float f1 = __uint_as_float(0x4B000000u | ((b >> 8) & 0xFFu)) - 8388736.0f;
    return bf16x2_bits(__floats2bfloat162_rn(f0, f1));
}

// Four 4-bit codes -> four bytes (u0, u1, u2, u3), little-endian.  `sel` = 0x1100 takes the codes from bits
// [0,16) of w, 0x3322 from bits [16,32): PRMT duplicates the two bytes (b0 b0 b1 b1), then bytes 0/2 keep their lo
// nibble and bytes 1/3 their hi nibble.
__device__ __forceinline__ uint32_t spread_nib4(uint32_t w, uint32_t sel) {
    const uint32_t y = __byte_perm(w, 0u, sel);
    return (y & 0x000F000Fu) | ((y >> 4) & 0x0F000F00u);
}

// Four codes u (0..15) minus z per byte as int8: u ^ 0x80 = u + 128, (u + 128 - z) never borrows across bytes, and
// flipping bit 7 back turns the biased byte into two's complement.  z4 = z · 0x01010101.
__device__ __forceinline__ uint32_t u4x4_minus_z(uint32_t w, uint32_t sel, uint32_t z4) {
    return ((spread_nib4(w, sel) ^ 0x80808080u) - z4) ^ 0x80808080u;
}

// Four signed int4 activations (two's complement nibbles) -> four int8: n ^ 8 is the code biased by 8, so
// byte ^ 0x88 = 128 + 8 + s, minus 8, flip bit 7.
__device__ __forceinline__ uint32_t int4x4_to_int8x4(uint32_t w, uint32_t sel) {
    return ((spread_nib4(w, sel) ^ 0x88888888u) - 0x08080808u) ^ 0x80808080u;
}

// An int32 partial sum |v| < 2^22 -> fp32 with two full-rate ops (2^23 + 2^22 + v has v in its mantissa).
__device__ __forceinline__ float small_int_to_float(int32_t v) {
    return __int_as_float(v + 0x4B400000) - 12582912.0f;
}

}  // namespace mx

#endif /* MX_DEQUANT_CUH */
