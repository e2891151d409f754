/* bf16x8.cuh — eight bf16 values in one 16-byte access, and SiLU(gate)·up on them: the act·up step shared by the
 * row kernels (route.cu) and the two-stage decode launch of the fused GEMM (sm90_mixed_grouped_gemm.cu), which
 * must produce bit-identical h. */
#ifndef MX_BF16X8_CUH
#define MX_BF16X8_CUH

#include <cuda_bf16.h>
#include <cstdint>

constexpr int kChunk = 8;  // bf16 values per 16-byte access

// Round to nearest even, as mx_f32_to_bf16 (NaN kept quiet).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

// Unpack 8 bf16 from a 16-byte vector.
__device__ __forceinline__ void unpack8(uint4 v, float out[kChunk]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ uint4 pack8(const float in[kChunk]) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
        w[i] = uint32_t(f32_to_bf16_bits(in[2 * i])) | (uint32_t(f32_to_bf16_bits(in[2 * i + 1])) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// x = SiLU(gate)·up in f32 for the 8 bf16 values of one 16-byte chunk of each.
__device__ __forceinline__ void silu_mul8(const uint4 &gate_raw, const uint4 &up_raw, float (&x)[kChunk]) {
    float g[kChunk], u[kChunk];
    unpack8(gate_raw, g);
    unpack8(up_raw, u);
    // Fast exp and division: Nsight Compute shows act·up + quant at prefill bound by instructions (SM 69 %, DRAM
    // 31 % of peak; the IEEE expf and division were most of them); their few-ulp f32 error is far below the bf16
    // rounding of the result, and the quantized copies quantize that bf16 value.
#pragma unroll
    for (int i = 0; i < kChunk; ++i) x[i] = __fdividef(g[i], 1.f + __expf(-g[i])) * u[i];
}

#endif /* MX_BF16X8_CUH */
