/* route.cu — the memory-bound stages of one MoE layer around the fused GroupGEMM (layout: route.cuh).
 *
 *   mx_cuda_route          3 launches: per-tile expert histogram -> one-block scan (row_offsets, per-tile bases)
 *                          -> stable rank of each (token, slot) pair inside its expert (warp match + per-warp
 *                          counts), plus the rows of shared groups and dropped pairs; 1 launch doing all three
 *                          when T·k <= 1024 (decode).  Deterministic: no global atomics decide any position.
 *   mx_cuda_gather_quant   one block per permuted row: gather hidden[token] with 16-byte loads, keep it in
 *                          registers, block max|x|, write bf16 / int8 / e4m3 / int4 copies the row's group reads.
 *   mx_cuda_act_mul_quant  same shape of kernel over y_gate_up rows: h = SiLU(gate)·up (+ randomized Hadamard
 *                          through shared memory), rounded to bf16, then quantized from the bf16 value; with bf16
 *                          output only and no Hadamard, an elementwise kernel that spreads each row over blocks.
 *   mx_cuda_combine        one block per token: f32 sum of the k weighted expert rows (+ gated shared rows).
 *
 * Everything here is bandwidth-bound (a few flops per byte), so the kernels are written for 16-byte coalesced
 * accesses and one pass over each row; none allocates or synchronises with the host (graph capturable). */
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <stdio.h>

#include "bf16x8.cuh"
#include "mx_cuda.h"
#include "route.cuh"
#include "warp_scan.cuh"

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------------------------

// Map the last launch error (cudaGetLastError also clears it) to MX_ERR_CUDA naming the stage.
enum mx_status route_check_launch(const char *stage, mx_error *err) {
    cudaError_t code = cudaGetLastError();
    if (code != cudaSuccess)
        return mx_error_set(err, MX_ERR_CUDA, "%s: CUDA launch failed: %s", stage, cudaGetErrorString(code));
    return MX_OK;
}

bool aligned16(const void *p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

constexpr int kRouteTile = 1024;       // (token, slot) pairs per tile (block) of the routing kernels
constexpr int kRouteThreads = 256;     // threads per routing block: a tile takes kRouteTile / kRouteThreads rounds
constexpr int kRouteWarps = kRouteThreads / 32;
constexpr int kRowThreads = 256;       // threads per row (at most, row_threads_for) of the row kernels
constexpr int kCombineSlots = 8;       // routed slots per token the combine kernel keeps in registers

size_t align_up(size_t bytes) { return (bytes + 255) & ~size_t(255); }

int64_t route_tiles(int64_t pairs) { return (pairs + kRouteTile - 1) / kRouteTile; }

// ---------------------------------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------------------------------

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); }

// op-reduction over the block (every thread gets the result); `scratch` holds one T per warp.  The row kernels'
// max|x| (f32) and the int8 rows' code sums (int32).
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, T *scratch, Op op) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T r = scratch[0];
    for (int w = 1; w < int(blockDim.x / 32); ++w) r = op(r, scratch[w]);
    return r;
}
__device__ __forceinline__ float block_max(float v, float *scratch) {
    return block_reduce(v, scratch, [](float a, float b) { return fmaxf(a, b); });
}
__device__ __forceinline__ int32_t block_sum(int32_t v, int32_t *scratch) {
    return block_reduce(v, scratch, [](int32_t a, int32_t b) { return a + b; });
}

// Group of row r: the g with row_offsets[g] <= r < row_offsets[g + 1], or -1 past row_offsets[n_groups].
__device__ __forceinline__ int find_group(const int32_t *row_offsets, int n_groups, int64_t r) {
    if (r >= row_offsets[n_groups]) return -1;
    int lo = 0, hi = n_groups; // invariant: row_offsets[lo] <= r < row_offsets[hi]
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (row_offsets[mid] <= r) lo = mid;
        else hi = mid;
    }
    return lo;
}

// scale = max|x| / qmax in f32; a row whose scale is 0 (all zeros, or so small that the quotient underflows) gets
// scale 1 and therefore codes 0, as mx_quantize_activations.
__device__ __forceinline__ float quant_scale(float amax, float qmax) {
    const float scale = amax / qmax;
    return scale > 0.f ? scale : 1.f;
}

// Per-token symmetric quantization of one row held as VPT chunks of 8 values per thread (chunk v of thread t
// covers elements (v·blockDim + t)·8 ...).  `valid[v]` says whether the chunk lies inside the row.
// Semantics of mx_quantize_activations: scale = max|x| / qmax (an all-zero row: scale 1), q = round-half-even
// (x / scale) clamped to ±qmax; e4m3 = saturating round-to-nearest-even of x / scale.  With d_rowsum_int8, also the
// sum of the row's int8 codes.  Called by the whole block (formats is block-uniform); `scratch`: one int per warp.
template <int VPT>
__device__ __forceinline__ void store_quantized(const float (&x)[VPT][kChunk], const bool (&valid)[VPT], float amax,
                                                int64_t row, int formats, const mx_cuda_act_buffers &out,
                                                int32_t *scratch) {
    if ((formats & (1 << MX_CUDA_ACT_INT8)) && out.d_int8) {
        const float scale = quant_scale(amax, 127.f);
        int8_t *dst = out.d_int8 + row * out.ld;
        int32_t code_sum = 0;
#pragma unroll
        for (int v = 0; v < VPT; ++v) {
            if (!valid[v]) continue;
            uint32_t w[2] = {0, 0};
#pragma unroll
            for (int i = 0; i < kChunk; ++i) {
                const float q = fminf(fmaxf(rintf(x[v][i] / scale), -127.f), 127.f);
                code_sum += int32_t(q);
                w[i / 4] |= (uint32_t(int32_t(q)) & 0xffu) << (8 * (i % 4));
            }
            const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
            *reinterpret_cast<uint2 *>(dst + col) = make_uint2(w[0], w[1]);
        }
        if (threadIdx.x == 0) out.d_scale_int8[row] = scale;
        if (out.d_rowsum_int8) {
            code_sum = block_sum(code_sum, scratch);
            if (threadIdx.x == 0) out.d_rowsum_int8[row] = code_sum;
        }
    }
    if ((formats & (1 << MX_CUDA_ACT_FP8)) && out.d_fp8) {
        const float scale = quant_scale(amax, MX_FP8_E4M3_MAX);
        uint8_t *dst = out.d_fp8 + row * out.ld;
#pragma unroll
        for (int v = 0; v < VPT; ++v) {
            if (!valid[v]) continue;
            uint32_t w[2] = {0, 0};
#pragma unroll
            for (int i = 0; i < kChunk; ++i) {
                const uint32_t e = __nv_cvt_float_to_fp8(x[v][i] / scale, __NV_SATFINITE, __NV_E4M3);
                w[i / 4] |= (e & 0xffu) << (8 * (i % 4));
            }
            const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
            *reinterpret_cast<uint2 *>(dst + col) = make_uint2(w[0], w[1]);
        }
        if (threadIdx.x == 0) out.d_scale_fp8[row] = scale;
    }
    if ((formats & (1 << MX_CUDA_ACT_INT4)) && out.d_int4) {
        const float scale = quant_scale(amax, 7.f);
        uint8_t *dst = out.d_int4 + row * (out.ld / 2);
#pragma unroll
        for (int v = 0; v < VPT; ++v) {
            if (!valid[v]) continue;
            uint32_t w = 0;
#pragma unroll
            for (int i = 0; i < kChunk; ++i) {
                const float q = fminf(fmaxf(rintf(x[v][i] / scale), -7.f), 7.f);
                w |= (uint32_t(int32_t(q)) & 0xfu) << (4 * i); // element 2j -> low nibble of byte j
            }
            const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
            *reinterpret_cast<uint32_t *>(dst + col / 2) = w;
        }
        if (threadIdx.x == 0) out.d_scale_int4[row] = scale;
    }
}

// All formats of `out` at once (for the bf16 copy and for zero rows).
__host__ __device__ __forceinline__ int formats_of(const mx_cuda_act_buffers &out) {
    return (out.d_bf16 ? 1 << MX_CUDA_ACT_BF16 : 0) | (out.d_int8 ? 1 << MX_CUDA_ACT_INT8 : 0) |
           (out.d_fp8 ? 1 << MX_CUDA_ACT_FP8 : 0) | (out.d_int4 ? 1 << MX_CUDA_ACT_INT4 : 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Routing kernels
// ---------------------------------------------------------------------------------------------------------------

// Stage 1. tile_counts [n_tiles, E]: how many pairs of each tile (kRouteTile consecutive pairs) go to each expert.
__global__ void __launch_bounds__(kRouteThreads) route_count_kernel(const int64_t *__restrict__ top_k_index,
                                                                    int64_t n_pairs, int n_experts,
                                                                    int32_t *__restrict__ tile_counts) {
    extern __shared__ int32_t counts[]; // [E]
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) counts[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < kRouteTile; i += blockDim.x) {
        const int64_t p = int64_t(blockIdx.x) * kRouteTile + i;
        if (p >= n_pairs) break;
        const int64_t e = top_k_index[p];
        if (e >= 0 && e < n_experts) atomicAdd(&counts[e], 1); // counts only: order-free, deterministic
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x)
        tile_counts[int64_t(blockIdx.x) * n_experts + e] = counts[e];
}

// Sum of tile_counts[0 .. n_tiles, e] with kScanUnroll loads in flight (the loop is latency-bound otherwise);
// with `base` non-NULL also writes the running (exclusive) sum, offset by `start`, to base[tile, e].
constexpr int kScanUnroll = 8;
__device__ __forceinline__ int32_t scan_tiles(const int32_t *__restrict__ tile_counts, int64_t n_tiles, int n_experts,
                                              int e, int32_t start, int32_t *__restrict__ base) {
    int32_t running = start;
    for (int64_t tile0 = 0; tile0 < n_tiles; tile0 += kScanUnroll) {
        int32_t c[kScanUnroll];
#pragma unroll
        for (int j = 0; j < kScanUnroll; ++j)
            c[j] = tile0 + j < n_tiles ? tile_counts[(tile0 + j) * n_experts + e] : 0;
#pragma unroll
        for (int j = 0; j < kScanUnroll; ++j) {
            if (base && tile0 + j < n_tiles) base[(tile0 + j) * n_experts + e] = running;
            running += c[j];
        }
    }
    return running;
}

// Stage 2 (one block of 1024 threads). row_offsets [E + S + 1] and tile_base [n_tiles, E] = first row of each
// (tile, expert) run.  Thread e owns expert e (E <= 1024): total over tiles, block scan over experts, then a
// second pass writing each tile's base.
__global__ void __launch_bounds__(1024) route_scan_kernel(const int32_t *__restrict__ tile_counts, int64_t n_tiles,
                                                          int n_experts, int n_shared, int64_t T, int64_t n_pairs,
                                                          int32_t *__restrict__ tile_base,
                                                          int32_t *__restrict__ row_offsets,
                                                          int32_t *__restrict__ dropped) {
    __shared__ int32_t warp_sums[32];
    const int e = threadIdx.x;
    const int32_t total = e < n_experts ? scan_tiles(tile_counts, n_tiles, n_experts, e, 0, nullptr) : 0;
    const int32_t exclusive = mx::block_inclusive_sum(total, warp_sums) - total;
    if (e < n_experts) {
        row_offsets[e] = exclusive;
        scan_tiles(tile_counts, n_tiles, n_experts, e, exclusive, tile_base);
    }
    if (threadIdx.x == blockDim.x - 1) {
        const int32_t n_valid = exclusive + total; // the last thread's inclusive sum = all valid pairs
        for (int j = 0; j <= n_shared; ++j) row_offsets[n_experts + j] = n_valid + int32_t(j * T);
        *dropped = int32_t(n_pairs - n_valid);
    }
}

// Positions of the pairs of one tile (kRouteTile consecutive pairs), in kRouteTile / kRouteThreads rounds of
// kRouteThreads pairs: position = base[e] + pairs of e in earlier rounds (running[e]) + in earlier warps of this
// round (warp_counts) + in earlier lanes of its warp (__match_any_sync).  So positions follow pair order: stable.
// running [E] and warp_counts [kRouteWarps, E] are shared memory, zero at entry.
__device__ __forceinline__ void permute_tile(const int64_t *__restrict__ top_k_index, int64_t n_pairs, int k,
                                             int n_experts, int64_t tile, const int32_t *base, int32_t *running,
                                             int32_t *warp_counts, int32_t *__restrict__ perm_token,
                                             int32_t *__restrict__ inv_perm) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int round = 0; round < kRouteTile / kRouteThreads; ++round) {
        const int64_t first = tile * kRouteTile + int64_t(round) * kRouteThreads;
        if (first >= n_pairs) break; // uniform over the block
        const int64_t p = first + threadIdx.x;
        int key = -2; // -2: past the end, -1: out-of-range expert, else the expert
        if (p < n_pairs) {
            const int64_t e = top_k_index[p];
            key = (e >= 0 && e < n_experts) ? int(e) : -1;
        }
        const unsigned same = __match_any_sync(0xffffffffu, key);
        const int lane_rank = __popc(same & ((1u << lane) - 1u));
        if (key >= 0 && lane_rank == 0) warp_counts[warp * n_experts + key] = __popc(same);
        __syncthreads();
        if (key >= 0) {
            int32_t rank = running[key] + lane_rank;
            for (int w = 0; w < warp; ++w) rank += warp_counts[w * n_experts + key];
            const int32_t pos = base[key] + rank;
            perm_token[pos] = int32_t(p / k);
            inv_perm[p] = pos;
        } else if (key == -1) {
            inv_perm[p] = -1;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
            int32_t add = 0;
#pragma unroll
            for (int w = 0; w < kRouteWarps; ++w) {
                add += warp_counts[w * n_experts + e];
                warp_counts[w * n_experts + e] = 0;
            }
            running[e] += add;
        }
        __syncthreads();
    }
}

// Rows after the routed ones, offset o from n_valid: shared group j's token t at o = j·T + t, then dropped (-1).
__device__ __forceinline__ void fill_tail(int64_t o, int64_t n_valid, int64_t n_pairs, int n_shared, int64_t T,
                                          int32_t *__restrict__ perm_token) {
    const int64_t tail = n_pairs - n_valid + int64_t(n_shared) * T;
    if (o < tail) perm_token[n_valid + o] = o < int64_t(n_shared) * T ? int32_t(o % T) : -1;
}

// Stage 3. Blocks [0, n_tiles): permute_tile of their tile; blocks [n_tiles, ...): fill_tail, one row per thread.
__global__ void __launch_bounds__(kRouteThreads) route_permute_kernel(
    const int64_t *__restrict__ top_k_index, int64_t n_pairs, int k, int n_experts, int n_shared, int64_t T,
    int64_t n_tiles, const int32_t *__restrict__ tile_base, const int32_t *__restrict__ row_offsets,
    int32_t *__restrict__ perm_token, int32_t *__restrict__ inv_perm) {
    if (blockIdx.x >= n_tiles) {
        fill_tail((int64_t(blockIdx.x) - n_tiles) * kRouteThreads + threadIdx.x, row_offsets[n_experts], n_pairs,
                  n_shared, T, perm_token);
        return;
    }
    extern __shared__ int32_t route_smem[];
    for (int i = threadIdx.x; i < (kRouteWarps + 1) * n_experts; i += blockDim.x) route_smem[i] = 0;
    __syncthreads();
    permute_tile(top_k_index, n_pairs, k, n_experts, blockIdx.x, tile_base + int64_t(blockIdx.x) * n_experts,
                 route_smem, route_smem + n_experts, perm_token, inv_perm);
}

// All three stages in one block when the pairs fit one tile (T·k <= kRouteTile: decode and small batches), to
// save two launches on the latency-bound path.  Thread t owns experts [t·per, (t+1)·per) for the scan.
__global__ void __launch_bounds__(kRouteThreads) route_small_kernel(
    const int64_t *__restrict__ top_k_index, int64_t n_pairs, int k, int n_experts, int n_shared, int64_t T,
    int32_t *__restrict__ row_offsets, int32_t *__restrict__ perm_token, int32_t *__restrict__ inv_perm,
    int32_t *__restrict__ dropped) {
    extern __shared__ int32_t route_smem[];
    __shared__ int32_t warp_sums[kRouteWarps];
    __shared__ int32_t n_valid_shared;
    int32_t *base = route_smem;                        // [E]: counts, then first row of each expert
    int32_t *running = route_smem + n_experts;         // [E]
    int32_t *warp_counts = route_smem + 2 * n_experts; // [kRouteWarps, E]
    for (int i = threadIdx.x; i < (kRouteWarps + 2) * n_experts; i += blockDim.x) route_smem[i] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        const int64_t e = top_k_index[p];
        if (e >= 0 && e < n_experts) atomicAdd(&base[e], 1);
    }
    __syncthreads();
    const int per = (n_experts + kRouteThreads - 1) / kRouteThreads;
    const int lo = min(int(threadIdx.x) * per, n_experts), hi = min(lo + per, n_experts);
    int32_t local = 0;
    for (int e = lo; e < hi; ++e) local += base[e];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int32_t incl = mx::warp_inclusive_sum(local);
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int32_t running_sum = incl - local;
    for (int w = 0; w < warp; ++w) running_sum += warp_sums[w];
    for (int e = lo; e < hi; ++e) { // counts -> exclusive prefix (each thread rewrites only its own experts)
        const int32_t c = base[e];
        base[e] = running_sum;
        row_offsets[e] = running_sum;
        running_sum += c;
    }
    if (threadIdx.x == blockDim.x - 1) { // its running_sum is now the total of valid pairs
        n_valid_shared = running_sum;
        for (int j = 0; j <= n_shared; ++j) row_offsets[n_experts + j] = running_sum + int32_t(j * T);
        *dropped = int32_t(n_pairs - running_sum);
    }
    __syncthreads();
    permute_tile(top_k_index, n_pairs, k, n_experts, 0, base, running, warp_counts, perm_token, inv_perm);
    const int64_t n_valid = n_valid_shared;
    for (int64_t o = threadIdx.x; o < n_pairs - n_valid + int64_t(n_shared) * T; o += blockDim.x)
        fill_tail(o, n_valid, n_pairs, n_shared, T, perm_token);
}

// ---------------------------------------------------------------------------------------------------------------
// Gather + quantize (one block per permuted row)
// ---------------------------------------------------------------------------------------------------------------

template <int VPT>
__global__ void __launch_bounds__(kRowThreads) gather_quant_kernel(
    const uint16_t *__restrict__ hidden, int64_t ld_hidden, int64_t K, const int32_t *__restrict__ perm_token,
    const int32_t *__restrict__ row_offsets, int n_groups, const uint8_t *__restrict__ group_formats,
    mx_cuda_act_buffers out) {
    __shared__ float scratch[kRowThreads / 32];
    __shared__ int32_t sum_scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    // The row's loads wait only for its token; the binary search for its group (a chain of dependent loads) runs
    // while they are in flight.  Rows past the last group are written as zeros.
    const int token = row < row_offsets[n_groups] ? perm_token[row] : -1;
    uint4 raw[VPT];
    bool valid[VPT];
#pragma unroll
    for (int v = 0; v < VPT; ++v) { // all loads issued before any use
        const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
        valid[v] = col < K;
        raw[v] = make_uint4(0, 0, 0, 0);
        if (valid[v] && token >= 0) raw[v] = *reinterpret_cast<const uint4 *>(hidden + int64_t(token) * ld_hidden + col);
    }
    const int group = token >= 0 ? find_group(row_offsets, n_groups, row) : -1;
    int formats = formats_of(out);
    if (group >= 0 && group_formats) formats &= group_formats[group];
    if (formats == 0) return;

    float x[VPT][kChunk];
    float amax = 0.f;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        unpack8(raw[v], x[v]);
        if (valid[v] && (formats & (1 << MX_CUDA_ACT_BF16)))
            *reinterpret_cast<uint4 *>(out.d_bf16 + row * out.ld + (int64_t(v) * blockDim.x + threadIdx.x) * kChunk) =
                raw[v];
    }
    if (formats == (1 << MX_CUDA_ACT_BF16)) return;
#pragma unroll
    for (int v = 0; v < VPT; ++v)
#pragma unroll
        for (int i = 0; i < kChunk; ++i) amax = fmaxf(amax, fabsf(x[v][i]));
    amax = block_max(amax, scratch);
    store_quantized<VPT>(x, valid, amax, row, formats, out, sum_scratch);
}

// ---------------------------------------------------------------------------------------------------------------
// SiLU(gate)·up (+ Hadamard) + quantize (one block per row)
// ---------------------------------------------------------------------------------------------------------------

// In-place y = (B_m ⊗ H_{2^p}) · diag(signs) · x / √n on a row of n values held by the block as x[VPT][8]
// (route.cuh).  smem: n floats for the row, then m·m floats for B.
template <int VPT>
__device__ void hadamard_rotate(float (&x)[VPT][kChunk], const bool (&valid)[VPT], int64_t n,
                                const mx_cuda_hadamard &had, float *smem) {
    float *row = smem;
    float *base = smem + n;
    const int m = had.m;
    const int64_t pow2 = n / m;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        if (!valid[v]) continue;
        const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
#pragma unroll
        for (int i = 0; i < kChunk; ++i) row[col + i] = x[v][i] * had.d_signs[col + i];
    }
    if (m > 1)
        for (int i = threadIdx.x; i < m * m; i += blockDim.x) base[i] = had.d_base[i];
    __syncthreads();
    // Sylvester H_{2^p} along b for every a: p butterfly stages over n/2 pairs.
    for (int64_t half = 1; half < pow2; half <<= 1) {
        for (int64_t i = threadIdx.x; i < n / 2; i += blockDim.x) {
            const int64_t a = i / (pow2 / 2), rem = i % (pow2 / 2);
            const int64_t j = a * pow2 + (rem / half) * 2 * half + rem % half;
            const float u = row[j], w = row[j + half];
            row[j] = u + w;
            row[j + half] = u - w;
        }
        __syncthreads();
    }
    const float norm = rsqrtf(float(n));
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        if (!valid[v]) continue;
        const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
#pragma unroll
        for (int i = 0; i < kChunk; ++i) {
            const int64_t idx = col + i, a = idx / pow2, b = idx % pow2;
            float acc;
            if (m == 1) {
                acc = row[idx];
            } else {
                acc = 0.f;
                for (int a2 = 0; a2 < m; ++a2) acc += base[a * m + a2] * row[a2 * pow2 + b];
            }
            x[v][i] = acc * norm;
        }
    }
    __syncthreads(); // the row buffer is reused by the next stage only after every thread has read it
}

template <int VPT>
__global__ void __launch_bounds__(kRowThreads) act_mul_quant_kernel(
    const uint16_t *__restrict__ gate_up, int64_t ld_gate_up, int64_t I, const int32_t *__restrict__ row_offsets,
    int n_groups, const uint8_t *__restrict__ group_formats, mx_cuda_hadamard had, int use_hadamard,
    mx_cuda_act_buffers out) {
    extern __shared__ float had_smem[];
    __shared__ float scratch[kRowThreads / 32];
    __shared__ int32_t sum_scratch[kRowThreads / 32];
    const int64_t row = blockIdx.x;
    // Every load of the row is issued first (a loop that used each pair of loads at once ran them in ~VPT round
    // trips); the binary search for the row's group, a chain of dependent loads, runs while they are in flight.
    // Rows past the last group are written as zeros.
    const bool in_groups = row < row_offsets[n_groups];
    uint4 g_raw[VPT], u_raw[VPT];
    bool valid[VPT];
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
        valid[v] = col < I;
        g_raw[v] = u_raw[v] = make_uint4(0, 0, 0, 0);
        if (valid[v] && in_groups) {
            const uint16_t *src = gate_up + row * ld_gate_up + col;
            g_raw[v] = *reinterpret_cast<const uint4 *>(src);
            u_raw[v] = *reinterpret_cast<const uint4 *>(src + I);
        }
    }
    const int group = in_groups ? find_group(row_offsets, n_groups, row) : -1;
    int formats = formats_of(out);
    if (group >= 0 && group_formats) formats &= group_formats[group];
    if (formats == 0) return;

    float x[VPT][kChunk];
#pragma unroll
    for (int v = 0; v < VPT; ++v) silu_mul8(g_raw[v], u_raw[v], x[v]);
    if (use_hadamard && (had.d_group_mask == nullptr || (group >= 0 && had.d_group_mask[group])))
        hadamard_rotate<VPT>(x, valid, I, had, had_smem); // block-uniform condition: the barriers inside are safe
    float amax = 0.f;
#pragma unroll
    for (int v = 0; v < VPT; ++v) {
        if (!valid[v]) continue;
        const int64_t col = (int64_t(v) * blockDim.x + threadIdx.x) * kChunk;
        const uint4 packed = pack8(x[v]);
        unpack8(packed, x[v]); // quantize the bf16-rounded value (what the bf16 copy holds)
        if (formats & (1 << MX_CUDA_ACT_BF16)) *reinterpret_cast<uint4 *>(out.d_bf16 + row * out.ld + col) = packed;
#pragma unroll
        for (int i = 0; i < kChunk; ++i) amax = fmaxf(amax, fabsf(x[v][i]));
    }
    if (formats == (1 << MX_CUDA_ACT_BF16)) return;
    amax = block_max(amax, scratch);
    store_quantized<VPT>(x, valid, amax, row, formats, out, sum_scratch);
}

// bf16 output only and no Hadamard (weight-only plans): SiLU(gate)·up is elementwise, so a row is spread over
// gridDim.y = ceil(I / 2048) blocks of 8 columns per thread instead of one block per row — a decode step's few rows
// of a wide I (Mixtral at 1 token: 2 rows × 14336) ran on 2 SMs for ~11 µs.  Same values as act_mul_quant_kernel.
__global__ void __launch_bounds__(kRowThreads) act_mul_bf16_kernel(
    const uint16_t *__restrict__ gate_up, int64_t ld_gate_up, int64_t I, const int32_t *__restrict__ row_offsets,
    int n_groups, const uint8_t *__restrict__ group_formats, uint16_t *__restrict__ out, int64_t ld_out) {
    const int64_t row = blockIdx.x;
    const int64_t col = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * kChunk;
    const bool in_groups = row < row_offsets[n_groups];  // rows past the last group are written as zeros
    const bool valid = col < I;
    uint4 g_raw = make_uint4(0, 0, 0, 0), u_raw = make_uint4(0, 0, 0, 0);
    if (valid && in_groups) {
        const uint16_t *src = gate_up + row * ld_gate_up + col;
        g_raw = *reinterpret_cast<const uint4 *>(src);
        u_raw = *reinterpret_cast<const uint4 *>(src + I);
    }
    const int group = in_groups ? find_group(row_offsets, n_groups, row) : -1;  // overlaps the loads
    if (!valid || (group >= 0 && group_formats && !(group_formats[group] & (1 << MX_CUDA_ACT_BF16)))) return;
    float x[kChunk];
    silu_mul8(g_raw, u_raw, x);
    *reinterpret_cast<uint4 *>(out + row * ld_out + col) = pack8(x);
}

// ---------------------------------------------------------------------------------------------------------------
// Combine (one block per token)
// ---------------------------------------------------------------------------------------------------------------

__device__ __forceinline__ float load_weight(const void *p, int64_t i, int dtype) {
    switch (dtype) {
    case MX_CUDA_WEIGHT_F32: return static_cast<const float *>(p)[i];
    case MX_CUDA_WEIGHT_F16: return __half2float(static_cast<const __half *>(p)[i]);
    default: return bf16_bits_to_f32(static_cast<const uint16_t *>(p)[i]);
    }
}

__global__ void __launch_bounds__(kRowThreads) combine_kernel(
    const uint16_t *__restrict__ y, int64_t ldy, int64_t H, int k, const int32_t *__restrict__ inv_perm,
    const void *__restrict__ weights, int weights_dtype, const int32_t *__restrict__ row_offsets, int n_experts,
    int n_shared, const void *__restrict__ shared_gate, int shared_gate_dtype, int apply_sigmoid,
    uint16_t *__restrict__ out, int64_t ld_out) {
    const int64_t t = blockIdx.x;
    float gate = 1.f;
    if (n_shared > 0 && shared_gate) {
        gate = load_weight(shared_gate, t, shared_gate_dtype);
        if (apply_sigmoid) gate = 1.f / (1.f + expf(-gate));
    }
    // Up to kCombineSlots routed rows: their rows and weights are read once, and each column block's row loads are
    // all issued before the sum (one round trip instead of k dependent ones per block).  More slots: the loop below.
    int32_t slot_row[kCombineSlots];
    float slot_weight[kCombineSlots];
    const bool few_slots = k <= kCombineSlots;
    if (few_slots) {
#pragma unroll
        for (int slot = 0; slot < kCombineSlots; ++slot) {
            slot_row[slot] = slot < k ? inv_perm[t * k + slot] : -1;
            slot_weight[slot] = slot < k ? load_weight(weights, t * k + slot, weights_dtype) : 0.f;
        }
    }
    for (int64_t col = int64_t(threadIdx.x) * kChunk; col < H; col += int64_t(blockDim.x) * kChunk) {
        float acc[kChunk] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (few_slots) {
            uint4 raw[kCombineSlots];
#pragma unroll
            for (int slot = 0; slot < kCombineSlots; ++slot)  // dropped pair (row < 0) or no slot: contributes 0
                raw[slot] = slot_row[slot] >= 0 ? *reinterpret_cast<const uint4 *>(y + int64_t(slot_row[slot]) * ldy + col)
                                                : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int slot = 0; slot < kCombineSlots; ++slot) {
                if (slot_row[slot] < 0) continue;
                float v[kChunk];
                unpack8(raw[slot], v);
#pragma unroll
                for (int i = 0; i < kChunk; ++i) acc[i] = fmaf(slot_weight[slot], v[i], acc[i]);
            }
        }
        for (int slot = 0; slot < (few_slots ? 0 : k); ++slot) {
            const int32_t r = inv_perm[t * k + slot];
            if (r < 0) continue; // dropped pair: out-of-range expert index
            const float w = load_weight(weights, t * k + slot, weights_dtype);
            float v[kChunk];
            unpack8(*reinterpret_cast<const uint4 *>(y + int64_t(r) * ldy + col), v);
#pragma unroll
            for (int i = 0; i < kChunk; ++i) acc[i] = fmaf(w, v[i], acc[i]);
        }
        if (n_shared > 0) {
            float s[kChunk] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            for (int j = 0; j < n_shared; ++j) {
                const int64_t r = int64_t(row_offsets[n_experts + j]) + t;
                float v[kChunk];
                unpack8(*reinterpret_cast<const uint4 *>(y + r * ldy + col), v);
#pragma unroll
                for (int i = 0; i < kChunk; ++i) s[i] += v[i];
            }
#pragma unroll
            for (int i = 0; i < kChunk; ++i) acc[i] = fmaf(gate, s[i], acc[i]);
        }
        *reinterpret_cast<uint4 *>(out + t * ld_out + col) = pack8(acc);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Launch helpers: row kernels are instantiated for VPT = 1, 2, 4, 8, 16 chunks of 8 per thread (K <= 32768).
// ---------------------------------------------------------------------------------------------------------------

int vpt_for(int64_t K, int threads = kRowThreads) {
    const int64_t chunks = (K + kChunk * threads - 1) / (kChunk * threads);
    return chunks <= 1 ? 1 : chunks <= 2 ? 2 : chunks <= 4 ? 4 : chunks <= 8 ? 8 : 16;
}

// Threads per row of the one-row-per-block quantizing kernels (gather + quant, act·up + quant without Hadamard).
// Many rows (prefill): the fewest of 64 / 128 / 256 that keep VPT <= 8.  With 256 a row of Qwen1.5-MoE's I = 1408
// left 80 threads idle and 48 registers per thread allowed 5 rows per SM, too few bytes in flight (act·up + quant
// at 8192 tokens: 434 µs for 461 MB); 64 threads of VPT 4 hold 12 rows per SM (w8a8 layer 2942 -> 2835 µs).  Few rows
// (decode): 256, each thread's chain of SiLU / quantization work is then 4x shorter (64 threads cost the w8a8 layer
// at 1-16 tokens +10 µs).  kManyRows: more rows than 256-thread blocks hold at once on an H100 (~1000).
constexpr int64_t kManyRows = 2048;
int row_threads_for(int64_t K, int64_t n_rows) {
    if (n_rows < kManyRows) return kRowThreads;
    return K <= 64 * kChunk * 8 ? 64 : K <= 128 * kChunk * 8 ? 128 : kRowThreads;
}

enum mx_status check_act_buffers(const mx_cuda_act_buffers *out, int64_t K, const char *fn, mx_error *err) {
    if (!out) return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: the output buffers are NULL", fn);
    if (!formats_of(*out)) return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: no output format requested", fn);
    if (out->ld < K || out->ld % kChunk)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: ld=%lld must be >= K=%lld and a multiple of %d", fn,
                           (long long)out->ld, (long long)K, kChunk);
    const void *vecs[4] = {out->d_bf16, out->d_int8, out->d_fp8, out->d_int4};
    for (int i = 0; i < 4; ++i)
        if (vecs[i] && !aligned16(vecs[i]))
            return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: output buffer %d is not 16-byte aligned", fn, i);
    if ((out->d_int8 && !out->d_scale_int8) || (out->d_fp8 && !out->d_scale_fp8) ||
        (out->d_int4 && !out->d_scale_int4))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: a quantized output is given without its scale buffer", fn);
    if (out->d_rowsum_int8 && !out->d_int8)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: int8 row sums are requested without int8 codes", fn);
    if (out->d_rowsum_int8 && ((uintptr_t)out->d_rowsum_int8 & 3u))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: the int8 row-sum buffer is not 4-byte aligned", fn);
    return MX_OK;
}

enum mx_status check_rows(int64_t K, const char *name, const char *fn, mx_error *err) {
    if (K <= 0 || K % kChunk || K > MX_ROUTE_MAX_K)
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "%s: %s=%lld must be a positive multiple of %d and <= %d", fn,
                           name, (long long)K, kChunk, MX_ROUTE_MAX_K);
    return MX_OK;
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
// Host API (route.cuh)
// ---------------------------------------------------------------------------------------------------------------

extern "C" size_t mx_cuda_route_workspace_bytes(int64_t T, int32_t k, int32_t n_experts) {
    if (T <= 0 || k <= 0 || n_experts <= 0) return 0;
    const size_t table = size_t(route_tiles(T * k)) * size_t(n_experts) * sizeof(int32_t);
    return 2 * align_up(table);
}

extern "C" enum mx_status mx_cuda_route(const int64_t *d_top_k_index, int64_t T, int32_t k, int32_t n_experts,
                                        int32_t n_shared, int32_t *d_row_offsets, int32_t *d_perm_token,
                                        int32_t *d_inv_perm, int32_t *d_dropped, void *d_workspace,
                                        size_t workspace_bytes, void *stream, mx_error *err) {
    // validate
    if (T < 0 || k <= 0 || n_experts <= 0 || n_shared < 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_cuda_route: T=%lld, k=%d, n_experts=%d, n_shared=%d",
                           (long long)T, k, n_experts, n_shared);
    if (n_experts + n_shared > MX_ROUTE_MAX_GROUPS)
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "mx_cuda_route: n_experts=%d + n_shared=%d exceeds %d",
                           n_experts, n_shared, MX_ROUTE_MAX_GROUPS);
    if (T * (int64_t(k) + n_shared) >= (int64_t(1) << 31))
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "mx_cuda_route: T=%lld rows of k=%d + n_shared=%d overflow int32",
                           (long long)T, k, n_shared);
    if (!d_row_offsets || !d_dropped || (T > 0 && (!d_top_k_index || !d_perm_token || !d_inv_perm)))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_cuda_route: a device pointer is NULL");
    const size_t need = mx_cuda_route_workspace_bytes(T, k, n_experts);
    if (workspace_bytes < need || (need && !d_workspace))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "mx_cuda_route: workspace of %zu bytes, %zu needed",
                           workspace_bytes, need);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    // empty: every group is empty
    if (T == 0) {
        cudaMemsetAsync(d_row_offsets, 0, sizeof(int32_t) * (n_experts + n_shared + 1), s);
        cudaMemsetAsync(d_dropped, 0, sizeof(int32_t), s);
        return route_check_launch("mx_cuda_route (T=0)", err);
    }
    // dispatch
    const int64_t n_pairs = T * k, n_tiles = route_tiles(n_pairs);
    if (n_tiles == 1) {
        route_small_kernel<<<1, kRouteThreads, (kRouteWarps + 2) * n_experts * sizeof(int32_t), s>>>(
            d_top_k_index, n_pairs, k, n_experts, n_shared, T, d_row_offsets, d_perm_token, d_inv_perm, d_dropped);
        return route_check_launch("mx_cuda_route", err);
    }
    int32_t *tile_counts = static_cast<int32_t *>(d_workspace);
    int32_t *tile_base = reinterpret_cast<int32_t *>(static_cast<char *>(d_workspace) +
                                                     align_up(size_t(n_tiles) * n_experts * sizeof(int32_t)));
    route_count_kernel<<<unsigned(n_tiles), kRouteThreads, n_experts * sizeof(int32_t), s>>>(d_top_k_index, n_pairs,
                                                                                             n_experts, tile_counts);
    route_scan_kernel<<<1, 1024, 0, s>>>(tile_counts, n_tiles, n_experts, n_shared, T, n_pairs, tile_base,
                                         d_row_offsets, d_dropped);
    const int64_t tail_blocks = (n_pairs + int64_t(n_shared) * T + kRouteThreads - 1) / kRouteThreads;
    route_permute_kernel<<<unsigned(n_tiles + tail_blocks), kRouteThreads,
                           (kRouteWarps + 1) * n_experts * sizeof(int32_t), s>>>(
        d_top_k_index, n_pairs, k, n_experts, n_shared, T, n_tiles, tile_base, d_row_offsets, d_perm_token,
        d_inv_perm);
    return route_check_launch("mx_cuda_route", err);
}

extern "C" enum mx_status mx_cuda_gather_quant(const uint16_t *d_hidden, int64_t ld_hidden, int64_t T, int64_t K,
                                               const int32_t *d_perm_token, int64_t n_rows,
                                               const int32_t *d_row_offsets, int32_t n_groups,
                                               const uint8_t *d_group_formats, const mx_cuda_act_buffers *out,
                                               void *stream, mx_error *err) {
    const char *fn = "mx_cuda_gather_quant";
    enum mx_status status = check_rows(K, "K", fn, err);
    if (status != MX_OK) return status;
    if ((status = check_act_buffers(out, K, fn, err)) != MX_OK) return status;
    if (T < 0 || n_rows < 0 || n_groups <= 0 || ld_hidden < K || ld_hidden % kChunk)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: T=%lld, n_rows=%lld, n_groups=%d, ld_hidden=%lld, K=%lld",
                           fn, (long long)T, (long long)n_rows, n_groups, (long long)ld_hidden, (long long)K);
    if (n_rows > 0 && (!d_hidden || !aligned16(d_hidden) || !d_perm_token || !d_row_offsets))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: hidden must be a 16-byte aligned device pointer and "
                           "perm_token / row_offsets non-NULL", fn);
    if (n_rows == 0) return MX_OK;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const dim3 grid(static_cast<unsigned>(n_rows));
    const int threads = row_threads_for(K, n_rows);
    switch (vpt_for(K, threads)) {
#define MX_GATHER_CASE(V)                                                                                         \
    case V:                                                                                                       \
        gather_quant_kernel<V><<<grid, threads, 0, s>>>(d_hidden, ld_hidden, K, d_perm_token, d_row_offsets,      \
                                                        n_groups, d_group_formats, *out);                        \
        break;
        MX_GATHER_CASE(1) MX_GATHER_CASE(2) MX_GATHER_CASE(4) MX_GATHER_CASE(8) MX_GATHER_CASE(16)
#undef MX_GATHER_CASE
    }
    return route_check_launch(fn, err);
}

extern "C" enum mx_status mx_cuda_act_mul_quant(const uint16_t *d_gate_up, int64_t ld_gate_up, int64_t n_rows,
                                                int64_t I, const int32_t *d_row_offsets, int32_t n_groups,
                                                const uint8_t *d_group_formats, const mx_cuda_hadamard *hadamard,
                                                const mx_cuda_act_buffers *out, void *stream, mx_error *err) {
    const char *fn = "mx_cuda_act_mul_quant";
    enum mx_status status = check_rows(I, "I", fn, err);
    if (status != MX_OK) return status;
    if ((status = check_act_buffers(out, I, fn, err)) != MX_OK) return status;
    if (n_rows < 0 || n_groups <= 0 || ld_gate_up < 2 * I || ld_gate_up % kChunk)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: n_rows=%lld, n_groups=%d, ld_gate_up=%lld, I=%lld", fn,
                           (long long)n_rows, n_groups, (long long)ld_gate_up, (long long)I);
    if (n_rows > 0 && (!d_gate_up || !aligned16(d_gate_up) || !d_row_offsets))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: gate_up must be a 16-byte aligned device pointer and "
                           "row_offsets non-NULL", fn);
    mx_cuda_hadamard had = {nullptr, nullptr, 1, nullptr};
    size_t smem = 0;
    if (hadamard) {
        had = *hadamard;
        if (had.m < 1 || had.m > 64 || I % had.m || ((I / had.m) & (I / had.m - 1)) || !had.d_signs ||
            (had.m > 1 && !had.d_base))
            return mx_error_set(err, MX_ERR_UNSUPPORTED, "%s: Hadamard of size I=%lld with base m=%d: I must be m "
                               "times a power of two, 1 <= m <= 64, signs (and base for m > 1) given", fn,
                               (long long)I, had.m);
        smem = sizeof(float) * size_t(I + int64_t(had.m) * had.m);
    }
    if (n_rows == 0) return MX_OK;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (!hadamard && formats_of(*out) == (1 << MX_CUDA_ACT_BF16)) {  // no row-wide step: spread rows over blocks
        const dim3 blocks(static_cast<unsigned>(n_rows),
                          static_cast<unsigned>((I + kRowThreads * kChunk - 1) / (kRowThreads * kChunk)));
        act_mul_bf16_kernel<<<blocks, kRowThreads, 0, s>>>(d_gate_up, ld_gate_up, I, d_row_offsets, n_groups,
                                                           d_group_formats, out->d_bf16, out->ld);
        return route_check_launch(fn, err);
    }
    const dim3 grid(static_cast<unsigned>(n_rows));
    // The Hadamard's butterflies keep 256 threads per row (a barrier per stage: fewer threads, longer rows)
    const int threads = hadamard ? kRowThreads : row_threads_for(I, n_rows);
    switch (vpt_for(I, threads)) {
#define MX_ACT_CASE(V)                                                                                            \
    case V:                                                                                                       \
        if (smem > 48 * 1024) { /* the Hadamard row of I > 12k floats: opt in to more shared memory */           \
            const cudaError_t code = cudaFuncSetAttribute(act_mul_quant_kernel<V>,                                \
                                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));\
            if (code != cudaSuccess)                                                                              \
                return mx_error_set(err, MX_ERR_CUDA, "%s: %zu bytes of shared memory for the Hadamard of I=%lld: %s",\
                                   fn, smem, (long long)I, cudaGetErrorString(code));                             \
        }                                                                                                         \
        act_mul_quant_kernel<V><<<grid, threads, smem, s>>>(d_gate_up, ld_gate_up, I, d_row_offsets,             \
                                                            n_groups, d_group_formats, had, hadamard != 0,       \
                                                            *out);                                               \
        break;
        MX_ACT_CASE(1) MX_ACT_CASE(2) MX_ACT_CASE(4) MX_ACT_CASE(8) MX_ACT_CASE(16)
#undef MX_ACT_CASE
    }
    return route_check_launch(fn, err);
}

extern "C" enum mx_status mx_cuda_combine(const uint16_t *d_y, int64_t ldy, int64_t T, int64_t H, int32_t k,
                                          const int32_t *d_inv_perm, const void *d_top_k_weights,
                                          enum mx_cuda_weight_dtype weights_dtype, const int32_t *d_row_offsets,
                                          int32_t n_experts, int32_t n_shared, const void *d_shared_gate,
                                          enum mx_cuda_weight_dtype shared_gate_dtype, int apply_sigmoid,
                                          uint16_t *d_out, int64_t ld_out, void *stream, mx_error *err) {
    const char *fn = "mx_cuda_combine";
    enum mx_status status = check_rows(H, "H", fn, err);
    if (status != MX_OK) return status;
    if (T < 0 || k <= 0 || n_experts <= 0 || n_shared < 0 || ldy < H || ldy % kChunk || ld_out < H ||
        ld_out % kChunk)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: T=%lld, k=%d, n_experts=%d, n_shared=%d, ldy=%lld, "
                           "ld_out=%lld, H=%lld", fn, (long long)T, k, n_experts, n_shared, (long long)ldy,
                           (long long)ld_out, (long long)H);
    if (int(weights_dtype) < 0 || int(weights_dtype) > 2 || int(shared_gate_dtype) < 0 || int(shared_gate_dtype) > 2)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: weights_dtype=%d / shared_gate_dtype=%d not in {0,1,2}", fn,
                           int(weights_dtype), int(shared_gate_dtype));
    if (T > 0 && (!d_y || !aligned16(d_y) || !d_out || !aligned16(d_out) || !d_inv_perm || !d_top_k_weights ||
                  (n_shared > 0 && !d_row_offsets)))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%s: y / out must be 16-byte aligned device pointers, inv_perm, "
                           "weights (and row_offsets with shared groups) non-NULL", fn);
    if (T == 0) return MX_OK;
    combine_kernel<<<unsigned(T), kRowThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        d_y, ldy, H, k, d_inv_perm, d_top_k_weights, int(weights_dtype), d_row_offsets, n_experts, n_shared,
        d_shared_gate, int(shared_gate_dtype), apply_sigmoid, d_out, ld_out);
    return route_check_launch(fn, err);
}
