/* wgmma.cuh — Hopper warpgroup MMA (sm_90a) for the prefill variant's 128 × 256 fat tiles of the 8-bit-activation
 * w8a8 schemes: shared-memory descriptors, fences, and the two m64n256k32 instructions the kernel uses.
 *
 * Operands come from shared memory, both K-major (A = activations [rows][k], B = weights [n][k], as they lie in
 * global memory), in the 128-byte swizzle: a tile is rows of 128 bytes (k = 128 of 8-bit values), and the 16-byte
 * chunk c of row r is stored at chunk c ^ (r % 8).  The swizzle is a function of the address bits, so a tile must
 * start 1024-byte aligned, and the k32 step s of a tile is addressed by adding 32·s bytes to the descriptor's start.
 *
 * Descriptor (PTX ISA, "matrix descriptor"): bits 0-13 start address >> 4, 16-29 leading byte offset >> 4 (unused for
 * swizzled K-major), 32-45 stride byte offset >> 4 = 1024 (the distance between groups of 8 rows), 62-63 layout
 * type 1 = 128-byte swizzle.
 *
 * Accumulators: one warpgroup (4 warps) owns a 64 × 256 block; warp w of the group holds rows 16w .. 16w + 15 in
 * 32 n8 tiles, each in the m16n8 mma.sync layout: d[4j + e] = C[16w + g + 8(e >> 1)][8j + 2t + (e & 1)]. */
#ifndef MX_WGMMA_CUH
#define MX_WGMMA_CUH

#include <cstdint>

namespace mx {

__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_addr) {
    uint64_t desc = 0;
    desc |= (uint64_t)((smem_addr >> 4) & 0x3FFFu);
    desc |= (uint64_t)1 << 16;                  // leading byte offset: unused for swizzled K-major
    desc |= (uint64_t)(1024 >> 4) << 32;        // stride byte offset: 8 rows × 128 bytes
    desc |= (uint64_t)1 << 62;                  // 128-byte swizzle
    return desc;
}

// Order this thread's earlier generic-proxy shared-memory writes (cp.async results) before async-proxy reads
// (wgmma operands); a __syncthreads after it publishes them to the whole CTA.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// The 128 accumulators of an m64n256 wgmma: "{%0, ..., %127}" in the instruction, CONSTRAINT(d[i]) in the operand
// list (the wrappers below differ only in the instruction's types and the accumulators' register class).
#define MX_WGMMA_D128_REGS \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define MX_WGMMA_D8(C, i) C(d[i + 0]), C(d[i + 1]), C(d[i + 2]), C(d[i + 3]), C(d[i + 4]), C(d[i + 5]), C(d[i + 6]), C(d[i + 7])
#define MX_WGMMA_D128(C)                                                                                          \
    MX_WGMMA_D8(C, 0), MX_WGMMA_D8(C, 8), MX_WGMMA_D8(C, 16), MX_WGMMA_D8(C, 24), MX_WGMMA_D8(C, 32),             \
        MX_WGMMA_D8(C, 40), MX_WGMMA_D8(C, 48), MX_WGMMA_D8(C, 56), MX_WGMMA_D8(C, 64), MX_WGMMA_D8(C, 72),       \
        MX_WGMMA_D8(C, 80), MX_WGMMA_D8(C, 88), MX_WGMMA_D8(C, 96), MX_WGMMA_D8(C, 104), MX_WGMMA_D8(C, 112),     \
        MX_WGMMA_D8(C, 120)
// One m64n256k32 wgmma with both operands in shared memory (descriptors), scale-d = 1 (accumulate); TYPES is the
// instruction's type suffix and trailing immediates, C the accumulators' constraint.
#define MX_WGMMA_M64N256K32(TYPES, C)                                                                             \
    asm volatile("{\n"                                                                                          \
                 ".reg .pred p;\n"                                                                               \
                 "setp.ne.b32 p, %130, 0;\n"                                                                     \
                 "wgmma.mma_async.sync.aligned.m64n256k32." TYPES "\n"                                           \
                 "}\n"                                                                                          \
                 : MX_WGMMA_D128(C)                                                                              \
                 : "l"(desc_a), "l"(desc_b), "r"(1))

// D[64 × 256] += A[64 × 32] (s8, activations) · B[32 × 256] (u8, weight codes u: the caller subtracts 128·Σx).
__device__ __forceinline__ void wgmma_m64n256k32_s8u8(int32_t (&d)[128], uint64_t desc_a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    MX_WGMMA_M64N256K32("s32.s8.u8 " MX_WGMMA_D128_REGS ", %128, %129, p;", "+r");
#else
    __trap();
#endif
}

// D[64 × 256] += A[64 × 32] (e4m3) · B[32 × 256] (e4m3), fp32 accumulators.
__device__ __forceinline__ void wgmma_m64n256k32_e4m3(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    MX_WGMMA_M64N256K32("f32.e4m3.e4m3 " MX_WGMMA_D128_REGS ", %128, %129, p, 1, 1;", "+f");
#else
    __trap();
#endif
}

#undef MX_WGMMA_M64N256K32
#undef MX_WGMMA_D128
#undef MX_WGMMA_D8
#undef MX_WGMMA_D128_REGS

}  // namespace mx

#endif /* MX_WGMMA_CUH */
