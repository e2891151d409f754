/* warp_scan.cuh — the inclusive prefix sum over the 32 lanes of a warp (shuffles, no shared memory), used by the
 * routing scans (cuda/route.cu) and the GEMM's schedule kernel (cuda/sm90_mixed_grouped_gemm.cu).  Every lane of
 * the warp must call it (full mask); lane i gets v_0 + ... + v_i. */
#ifndef MX_WARP_SCAN_CUH
#define MX_WARP_SCAN_CUH

#include <cstdint>

namespace mx {

__device__ __forceinline__ int32_t warp_inclusive_sum(int32_t v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const int32_t u = __shfl_up_sync(0xffffffffu, v, offset);
        if (lane >= offset) v += u;
    }
    return v;
}

}  // namespace mx

#endif /* MX_WARP_SCAN_CUH */
