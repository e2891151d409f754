/* stream_bw.cu — DRAM read throughput of the decode stream tile's weight access pattern, without any math.
 *
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a bench/stream_bw.cu -o /tmp/stream_bw
 *   /tmp/stream_bw 72 && /tmp/stream_bw 576        (MB of weights; H100 results: bench/NOTES-gpu.md session 8)
 *
 * References: a device-to-device cudaMemcpy (read + write), a linear LDG.128 read, a linear cp.async read (each
 * warp 2 KB blocks, 3 in flight).  The pattern: 2 CTAs of 8 warps per SM claim tiles of 128 weight rows (row_bytes
 * each) from an atomic counter, as the fused GEMM does; warp w streams rows [16w, 16w + 16) of the tile in chunks
 * of R bytes per row (16 rows × R bytes), `depth` chunks in flight, through a private shared-memory ring.  Mode
 * "pair": warps 2i and 2i + 1 share 16 rows and take alternate chunks (64-row tiles: 2R contiguous bytes per row in
 * flight).  Timings: best of 8 cudaEvent-timed launches, each after a 256 MB memset that flushes L2.
 * Standalone (not built by setup.py); a diagnostic for the stream tile's design. */
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cuda_runtime.h>

__device__ __forceinline__ void cp16(uint32_t dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void waitg() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <int DEPTH>
__global__ void __launch_bounds__(256, 2) stream_kernel(const char *w, int64_t row_bytes, int total_rows, int R,
                                                        int pair, int *counter, unsigned *sink) {
    extern __shared__ char smem[];
    __shared__ int claimed;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int slots = DEPTH + 1;
    const int chunk_bytes = 16 * R;
    char *ring = smem + warp * slots * chunk_bytes;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    const int tile_rows = pair ? 64 : 128;
    const int tiles = total_rows / tile_rows;
    const int rows0_of_warp = pair ? 16 * (warp >> 1) : 16 * warp;
    const int chunks = (int)(row_bytes / R);
    const int c0 = pair ? (warp & 1) : 0, cstep = pair ? 2 : 1;
    unsigned acc = 0;
    if (threadIdx.x == 0) claimed = atomicAdd(counter, 1);
    __syncthreads();
    int tile = claimed;
    while (tile < tiles) {
        int next = 0;
        if (threadIdx.x == 0) next = atomicAdd(counter, 1);
        const char *base = w + ((int64_t)tile * tile_rows + rows0_of_warp) * row_bytes;
        auto issue = [&](int i) {  // i-th chunk of this warp
            const int c = c0 + i * cstep;
            if (c < chunks) {
                const uint32_t dst = ring_s + (i % slots) * chunk_bytes;
                // 16 rows x R bytes = 16R/16 pieces of 16 B over 32 lanes
                for (int p = lane; p < R; p += 32) {  // R/16 pieces per row * 16 rows = R pieces
                    const int row = p / (R / 16), off = (p % (R / 16)) * 16;
                    cp16(dst + p * 16, base + (int64_t)row * row_bytes + (int64_t)c * R + off);
                }
            }
            commit();
        };
        const int my_chunks = (chunks - c0 + cstep - 1) / cstep;
        for (int i = 0; i < DEPTH; i++) issue(i);
        for (int i = 0; i < my_chunks; i++) {
            waitg<DEPTH - 1>();
            __syncwarp();
            issue(i + DEPTH);
            acc += *reinterpret_cast<const unsigned *>(ring + (i % slots) * chunk_bytes + lane * 4);
        }
        waitg<0>();
        if (threadIdx.x == 0) claimed = next;
        __syncthreads();
        tile = claimed;
    }
    if (acc == 0x12345678u) sink[0] = acc;
}

__global__ void __launch_bounds__(256) ldg_kernel(const uint4 *w, int64_t n16, unsigned *sink, int unroll_dummy) {
    unsigned acc = 0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 a = __ldcs(w + i), b = __ldcs(w + i + stride), c = __ldcs(w + i + 2 * stride), d = __ldcs(w + i + 3 * stride);
        acc ^= a.x ^ b.y ^ c.z ^ d.w;
    }
    for (; i < n16; i += stride) acc ^= __ldcs(w + i).x;
    if (acc == 0x12345678u) sink[0] = acc;
}
// linear cp.async: each warp copies consecutive 2 KB blocks (grid-stride), depth 3
__global__ void __launch_bounds__(256, 2) cpa_linear(const char *w, int64_t bytes, unsigned *sink) {
    extern __shared__ char smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    char *ring = smem + warp * 4 * 2048;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    const int64_t gw = (int64_t)blockIdx.x * 8 + warp, nw = (int64_t)gridDim.x * 8;
    const int64_t blocks = bytes / 2048;
    const int64_t mine = (blocks - gw + nw - 1) / nw;
    unsigned acc = 0;
    auto issue = [&](int64_t i) {
        if (i < mine) {
            const char *src = w + (gw + i * nw) * 2048;
            for (int p = 0; p < 4; p++) cp16(ring_s + (i % 4) * 2048 + (p * 32 + lane) * 16, src + (p * 32 + lane) * 16);
        }
        commit();
    };
    for (int i = 0; i < 3; i++) issue(i);
    for (int64_t i = 0; i < mine; i++) {
        waitg<2>(); __syncwarp(); issue(i + 3);
        acc += *reinterpret_cast<const unsigned *>(ring + (i % 4) * 2048 + lane * 4);
    }
    waitg<0>();
    if (acc == 0x12345678u) sink[0] = acc;
}

int main(int argc, char **argv) {
    const int64_t total_bytes = (argc > 1 ? atoll(argv[1]) : 72ll) << 20;
    char *w; int *counter; unsigned *sink;
    cudaMalloc(&w, total_bytes + (1 << 20)); cudaMalloc(&counter, 4); cudaMalloc(&sink, 4);
    cudaMemset(w, 1, total_bytes);
    char *flush; cudaMalloc(&flush, 256 << 20);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    // linear copy reference
    char *dst; cudaMalloc(&dst, total_bytes);
    float best = 1e9;
    for (int r = 0; r < 10; r++) {
        cudaMemset(flush, r, 256 << 20);
        cudaEventRecord(a); cudaMemcpy(dst, w, total_bytes, cudaMemcpyDeviceToDevice); cudaEventRecord(b);
        cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); if (ms < best) best = ms;
    }
    printf("memcpy D2D: read+write %.2f TB/s (read %.2f)\n", 2 * total_bytes / best / 1e9, total_bytes / best / 1e9);
    for (int blocks_per_sm = 1; blocks_per_sm <= 8; blocks_per_sm *= 2) {
        float bestl = 1e9;
        for (int r = 0; r < 8; r++) {
            cudaMemset(flush, r, 256 << 20);
            cudaEventRecord(a); ldg_kernel<<<blocks_per_sm * sms, 256>>>((const uint4 *)w, total_bytes / 16, sink, 0); cudaEventRecord(b);
            cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); if (ms < bestl) bestl = ms;
        }
        printf("ldg linear read, %d CTAs/SM: %.2f TB/s\n", blocks_per_sm, total_bytes / bestl / 1e9);
    }
    {
        cudaFuncSetAttribute(cpa_linear, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
        float bestl = 1e9;
        for (int r = 0; r < 8; r++) {
            cudaMemset(flush, r, 256 << 20);
            cudaEventRecord(a); cpa_linear<<<2 * sms, 256, 64 * 1024>>>(w, total_bytes, sink); cudaEventRecord(b);
            cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); if (ms < bestl) bestl = ms;
        }
        printf("cp.async linear 2 KB blocks per warp, depth 3: %.2f TB/s %s\n", total_bytes / bestl / 1e9, cudaGetErrorString(cudaGetLastError()));
    }
    const int row_bytes_list[] = {1024, 7168};
    const int R_list[] = {128, 256};
    for (int rb : row_bytes_list)
        for (int pair = 0; pair < 2; pair++)
            for (int R : R_list)
                for (int depth = 2; depth <= 3; depth++) {
                    if (rb % R) continue;
                    const int slots = depth + 1;
                    const int smem = 8 * slots * 16 * R;
                    if (smem > 110 * 1024) continue;
                    const int tile_rows = pair ? 64 : 128;
                    const int total_rows = (int)(total_bytes / rb) / tile_rows * tile_rows;
                    void (*k)(const char *, int64_t, int, int, int, int *, unsigned *) =
                        depth == 1 ? stream_kernel<1> : depth == 2 ? stream_kernel<2> : stream_kernel<3>;
                    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
                    float bestk = 1e9;
                    for (int r = 0; r < 8; r++) {
                        cudaMemset(flush, r, 256 << 20);
                        cudaMemset(counter, 0, 4);
                        cudaEventRecord(a);
                        k<<<2 * sms, 256, smem>>>(w, rb, total_rows, R, pair, counter, sink);
                        cudaEventRecord(b);
                        cudaEventSynchronize(b);
                        float ms; cudaEventElapsedTime(&ms, a, b); if (ms < bestk) bestk = ms;
                    }
                    cudaError_t e = cudaGetLastError();
                    printf("row %5d B  %s R=%3d depth=%d smem %3d KB: %.2f TB/s %s\n", rb, pair ? "pair" : "solo", R, depth,
                           smem / 1024, (double)total_rows * rb / bestk / 1e9, e ? cudaGetErrorString(e) : "");
                }
    return 0;
}
