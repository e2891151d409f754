/* warp_scan.cuh — inclusive prefix sums over the lanes of a warp (shuffles) and over the threads of a block (warp
 * scans, then a scan of the warp totals in 32 ints of shared memory), used by the routing scans (cuda/route.cu) and
 * the GEMM's schedule kernel (cuda/sm90_mixed_grouped_gemm.cu). */
#ifndef MX_WARP_SCAN_CUH
#define MX_WARP_SCAN_CUH

#include <cstdint>

namespace mx {

// Every lane of the warp must call it (full mask); lane i gets v_0 + ... + v_i.
__device__ __forceinline__ int32_t warp_inclusive_sum(int32_t v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const int32_t u = __shfl_up_sync(0xffffffffu, v, offset);
        if (lane >= offset) v += u;
    }
    return v;
}

// Every thread of the block must call it (blockDim.x a multiple of 32, <= 1024); thread i gets v_0 + ... + v_i, and
// afterwards warp_sums[31] holds the block total.  It synchronizes the block, also on entry, so a second call may
// reuse warp_sums at once.
__device__ __forceinline__ int32_t block_inclusive_sum(int32_t v, int32_t *warp_sums) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_inclusive_sum(v);
    __syncthreads();  // a previous call's readers of warp_sums are done
    if (lane == 31) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) warp_sums[lane] = warp_inclusive_sum(lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0);
    __syncthreads();
    return v + (warp > 0 ? warp_sums[warp - 1] : 0);
}

}  // namespace mx

#endif /* MX_WARP_SCAN_CUH */
