/* mma.cuh — the PTX wrappers the GEMM micro-kernels are built from (sm_80+; the e4m3 mma needs sm_89+).
 *
 * Each wrapper is one instruction with a what/why comment.  Fragment layouts (PTX ISA, "warp-level matrix
 * fragments"), with g = lane / 4 and t = lane % 4:
 *
 *   m16n8k16 bf16   A (row, 16x16): a0 = A[g][2t..2t+1]   a1 = A[g+8][2t..]   a2 = A[g][2t+8..]   a3 = A[g+8][2t+8..]
 *                   B (col, 16x8):  b0 = B[2t..2t+1][g]   b1 = B[2t+8..2t+9][g]
 *   m16n8k32 s8/e4m3 A (row, 16x32 bytes): a0 = A[g][4t..4t+3]   a1 = A[g+8][4t..]   a2 = A[g][16+4t..]   a3 = A[g+8][16+4t..]
 *                   B (col, 32x8):  b0 = B[4t..4t+3][g]   b1 = B[16+4t..16+4t+3][g]
 *   accumulators    c0, c1 = C[g][2t], C[g][2t+1]         c2, c3 = C[g+8][2t], C[g+8][2t+1]
 *
 * B is "col" = column n of B is contiguous in k, i.e. row n of the weight matrix W[N, K]: the packed weight rows
 * feed the B operand directly, which is why the kernels never transpose weights. */
#ifndef MX_MMA_CUH
#define MX_MMA_CUH

#include <cstdint>

namespace mx {

// Shared-memory address of a generic pointer: cp.async and ldmatrix take 32-bit .shared addresses.
__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1 (.cg: weights are streamed once; activations are re-read by the
// CTAs of neighbouring n-tiles through L2).  src_bytes = 0 writes 16 zero bytes and reads nothing: the tails of K,
// N and M are zero-filled this way, so the math never sees garbage and no load leaves the buffers.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
// 4-byte global -> shared copy (.ca: the only cp.async form below 16 bytes), zero-filling like cp_async16: the
// per-row activation scales of a tile, whose rows start at any 4-byte boundary.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
// Close the group of cp.async issued since the last commit (one group = one pipeline stage).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N groups are still in flight: with N = stages - 2 the oldest stage has landed.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices from shared memory, one row address per lane (lanes 8i..8i+7 address matrix i): the A
// fragment of one m16 x k16 bf16 (or m16 x k32 byte) step in one instruction, and the B fragment of w16 weights.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// D = A·B + C, bf16 inputs, fp32 accumulators (the wXa16 and w16a16 micro-kernels).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A·B + C, int8 inputs, exact int32 accumulators (w8a8, w4a8, and w4a4 after unpacking to int8: Hopper's int4
// mma is emulated, so int4 operands are widened to int8 in registers instead).
__device__ __forceinline__ void mma_s8_16832(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A·B + C, float8 e4m3 inputs, fp32 accumulators (w8a8_fp8).  sm_89+ only: the host refuses fp8 problems on
// older devices before launching, so the sm_80 build never reaches the trap.
__device__ __forceinline__ void mma_e4m3_16832(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// Programmatic dependent launch (sm_90+; no-ops before): the schedule kernel lets the GEMM kernel launch while it
// runs, and the GEMM waits here until the schedule kernel has finished and its writes are visible.  This hides the
// second launch's latency (a few µs, a tenth of a decode-size GEMM).
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// A flag between CTAs of one launch: the release store orders the writer's earlier stores (made device-wide by its
// CTA's __threadfence and barrier) before the flag; the acquire load orders the reader's later loads after it.
__device__ __forceinline__ int32_t ld_acquire_gpu(const int32_t *p) {
    int32_t v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_gpu(int32_t *p, int32_t v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
// A counter between CTAs: releases what this thread (and, after a barrier, its CTA) stored before, and acquires what
// the CTAs that counted before it released.
__device__ __forceinline__ int32_t atom_add_acq_rel_gpu(int32_t *p, int32_t v) {
    int32_t old;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
}

__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace mx

#endif /* MX_MMA_CUH */
