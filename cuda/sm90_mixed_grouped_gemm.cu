/* sm90_mixed_grouped_gemm.cu — ONE persistent launch computes every (expert, block) GEMM problem of a MoE layer,
 * whatever its quantization scheme.
 *
 *   Y[rows of expert e, out_col : out_col + n] = X[rows of e, :k] · W_pᵀ     for every problem p of the table
 *
 * Weights are read in the canonical packed layouts of csrc/mx_scheme.h, directly (no repack):
 * qweight u32 [N, K/32·W] (a 32-code pack of one row = W words), scales f16 [K/G', N], zeros u8 [K/G', N];
 * w16a16: u16 [N, K] bf16 bits; w8a8_fp8: e4m3 bytes.  Activations (mx_cuda_activations) are the permuted rows
 * of the routing step: bf16 [rows, ld], int8 / e4m3 [rows, ld] or int4 [rows, ld/2] with one fp32 scale per row.
 *
 * ---- scheduling: tiles -> CTAs -------------------------------------------------------------------------------
 *
 * The rows per expert live only on the device (d_row_offsets), so the tile list is built there, by a one-block
 * schedule kernel that runs first on the same stream:
 *
 *   problems (host-built table)      row_offsets (device)
 *        │  M_p = rows of p's expert, config = thin (M_p <= 16: decode) or fat (M_p > 16)
 *        ▼
 *   per-tile cost_p = bytes / (HBM share of one SM) + flops / (mma rate of p's family)
 *   rank problems by cost_p, heaviest first (ties: table order) -> tile_start[rank] = prefix sum of tiles
 *   counter := 0                                          (so the pair of launches replays inside a CUDA graph)
 *
 *   tile id:   0 ........ tile_start[1] ......... tile_start[2] ....................... total
 *              │ p_heavy: (m0,n0)(m0,n1)…(m1,n0)… │ p_next: …                     │ … lightest problem │
 *
 *   persistent grid (decode variant: 2 CTAs per SM; prefill variant, >= 96 rows per expert: 1 CTA per SM):
 *     CTA 0:  t = atomicAdd(counter) ─► tile 0  ─► t = atomicAdd ─► tile 7   ─► ...
 *     CTA 1:  t = atomicAdd(counter) ─► tile 1  ─► ...
 *     ...                                             until t >= total
 *   (a CTA claims its next tile when it starts the current one, so the atomic's latency is never waited for;
 *   tile_start is cached in shared memory for tables of <= 256 problems)
 *
 *   Heaviest tiles are claimed first (longest-processing-time-first), so the light tail balances the SMs.  Within
 *   a problem the n-tiles of one m-tile are consecutive: CTAs working at the same time share the A rows in L2.
 *   The last full round of tiles and the partial one after it are cut along K into one piece per CTA where they
 *   are decode stream tiles and the pieces come out much shorter than whole tiles would take ("Split tail" below).
 *   A two-stage launch (mx_cuda_gemm_fused_layer, decode) lists the layer's gate_up problems, then its down
 *   problems: a group's down tiles wait for the h rows the launch writes once the group's gate_up tiles are
 *   stored ("Two stages" below).
 *
 * ---- one tile -------------------------------------------------------------------------------------------------
 *
 *   BN = 128 output columns × BM rows (thin: BM = 16, 8 warps side by side, warp tile 16×16;
 *   fat: BM = 64, warps 2×4, warp tile 32×32; prefill variant's fat: BM = 128, warp tile 64×32), K walked in BK
 *   steps: BK = 128, except thin tiles of sub-8-bit weights, where BK = 1024 / W (256 for w4, 384 for w3, 512 for
 *   w2) so that every stage reads 128-144 contiguous bytes of each weight row (HBM serves 32-64 B runs scattered
 *   over 128 rows at half speed or worse).  Two micro-kernels leave this shared pipeline (sections below):
 *     - thin tiles of w4a16 / w2a16 (decode): warp-private weight streams, "decode stream micro-kernel";
 *     - on sm_90a, the prefill variant's fat tiles of w8a8 / w8a8_fp8: 128 × 256 wgmma tiles (the schedule gives
 *       those problems 256-column tiles), "wgmma fat tile".
 *
 *          k ───────────────────────────►            Each BK step is one pipeline stage in shared memory:
 *   rows  ┌──────┬──────┬──────┬──────┐                 A  [BM][BK] activations (bf16 / int8 / e4m3 / int4)
 *   of X  │ st 0 │ st 1 │ st 2 │ ...  │ (BM×K)          W  [BN][BK·W/8] packed codes, rows = output columns
 *         └──────┴──────┴──────┴──────┘                 S  [BK/128][BN] f16 scales, Z [BK/128][BN] u8 zeros (g128)
 *   W rows ┌──────┬──────┬──────┬──────┐              loaded with 16-byte cp.async (zero-filled past M, N, K),
 *   (BN×K) └──────┴──────┴──────┴──────┘              stages = min(8, shared budget / stage bytes): a w8a8
 *                                                     thin tile keeps 5 stages (~72 KB of weights) in flight.
 *
 *   Micro-kernels (one per family, chosen per tile by the problem's scheme id, all sharing the CTA shape):
 *     bf16 mma m16n8k16: w16a16 (ldmatrix of bf16 weights), wXa16 X in {8,4,3,2}: codes -> exact bf16 (u - z)
 *                        in registers (dequant.cuh); g128: the group's fp32 partial sum × s[group, n];
 *                        per-channel: × s[n] in the epilogue
 *     s8 mma m16n8k32:   w8a8 (u ^ 0x80), w4a8 (nibbles -> int8 (u - z)), w4a4 (int4 activations -> int8):
 *                        exact int32 sums, × s[n]·s_x[row] (g128: per group, converted exactly)
 *     e4m3 mma m16n8k32: w8a8_fp8, fp32 sums × s[n]·s_x[row]
 *
 *   Shared memory rows are padded by 16 bytes when their length is an even number of 16-byte chunks, so the 8 rows
 *   that an ldmatrix (or a warp's fragment loads) touch fall into different banks.
 *
 * Per call the host does O(1) work: validate scalars against the checked table's summary, two launches (the GEMM as
 * a programmatic dependent of the schedule kernel on sm_90, so its launch latency overlaps the schedule).
 * Tests: tests/test_cuda_gemm.py.  Benchmark: bench/bench_gemm.py. */
#include "sm90_mixed_grouped_gemm.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "bf16x8.cuh"
#include "dequant.cuh"
#include "mma.cuh"
#include "warp_scan.cuh"
#include "wgmma.cuh"

namespace mx {

constexpr int kThreads = 256;              // 8 warps per CTA, every micro-kernel
constexpr int kSmemDecode = 110 * 1024;    // dynamic shared memory per CTA, decode variant: 2 CTAs per SM
constexpr int kSmemPrefill = 220 * 1024;   // prefill variant: 1 CTA per SM (227 KB is the per-block limit)
constexpr int kBN = 128;                   // output columns per tile (wgmma fat tiles: kWgmmaBN)
constexpr int kGroup = 128;                // the weight group of the g128 schemes
constexpr int kThinMaxRows = 16;           // experts with at most this many rows use the thin (decode) tile

/* ---- the scheme table, as compile-time facts (keyed by enum mx_scheme_id) ---- */
enum class AKind { BF16, INT8, FP8, INT4 };
enum class MmaKind { BF16, S8, E4M3 };

template <int ID>
struct Scheme;
#define MX_SCHEME_FACTS(ID, W_, A_, G_, SYM_, MMA_)                                                                   \
    template <>                                                                                                   \
    struct Scheme<ID> {                                                                                           \
        static constexpr int W = W_;                   /* weight bits */                                          \
        static constexpr AKind A = AKind::A_;          /* activation format read */                               \
        static constexpr int G = G_;                   /* weight group (-1: per output channel) */                \
        static constexpr bool sym = SYM_;              /* z = 2^(W-1) implicit, else zeros[] */                   \
        static constexpr MmaKind mma = MmaKind::MMA_;  /* tensor-core instruction */                              \
    };
MX_SCHEME_FACTS(MX_SCHEME_W16A16, 16, BF16, -1, true, BF16)
MX_SCHEME_FACTS(MX_SCHEME_W8A16_GN1_SYM, 8, BF16, -1, true, BF16)
MX_SCHEME_FACTS(MX_SCHEME_W4A16_GN1_ASYM, 4, BF16, -1, false, BF16)
MX_SCHEME_FACTS(MX_SCHEME_W4A16_G128_ASYM, 4, BF16, 128, false, BF16)
MX_SCHEME_FACTS(MX_SCHEME_W3A16_G128_ASYM, 3, BF16, 128, false, BF16)
MX_SCHEME_FACTS(MX_SCHEME_W2A16_G128_ASYM, 2, BF16, 128, false, BF16)
MX_SCHEME_FACTS(MX_SCHEME_W8A8_GN1_SYM, 8, INT8, -1, true, S8)
MX_SCHEME_FACTS(MX_SCHEME_W8A8_GN1_SYM_FP8, 8, FP8, -1, true, E4M3)
MX_SCHEME_FACTS(MX_SCHEME_W4A8_GN1_SYM, 4, INT8, -1, true, S8)
MX_SCHEME_FACTS(MX_SCHEME_W4A8_G128_ASYM, 4, INT8, 128, false, S8)
MX_SCHEME_FACTS(MX_SCHEME_W4A4_GN1_SYM, 4, INT4, -1, true, S8)
MX_SCHEME_FACTS(MX_SCHEME_W4A4_G128_SYM, 4, INT4, 128, true, S8)
#undef MX_SCHEME_FACTS
static_assert(MX_SCHEME_COUNT == 12, "add the new scheme's facts above and to MX_FOR_EACH_SCHEME below");
// Every scheme id, for the dispatch switches (one instantiation per scheme and tile kind).
#define MX_FOR_EACH_SCHEME(X)                                                                                     \
    X(MX_SCHEME_W16A16) X(MX_SCHEME_W8A16_GN1_SYM) X(MX_SCHEME_W4A16_GN1_ASYM) X(MX_SCHEME_W4A16_G128_ASYM)       \
    X(MX_SCHEME_W3A16_G128_ASYM) X(MX_SCHEME_W2A16_G128_ASYM) X(MX_SCHEME_W8A8_GN1_SYM)                          \
    X(MX_SCHEME_W8A8_GN1_SYM_FP8) X(MX_SCHEME_W4A8_GN1_SYM) X(MX_SCHEME_W4A8_G128_ASYM) X(MX_SCHEME_W4A4_GN1_SYM) \
    X(MX_SCHEME_W4A4_G128_SYM)

/* ---- the two tile shapes (same CTA, same shared-memory budget) ---- */
template <int BM_, int WARPS_M_, int SMEM_>
struct Tile {
    static constexpr int BM = BM_, BN = kBN;
    static constexpr bool thin = BM_ <= 16;
    static constexpr int smem = SMEM_;  // the kernel variant's shared-memory budget: sets the pipeline depth
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = (kThreads / 32) / WARPS_M_;
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
    static constexpr int MT = WM / 16, NT = WN / 8;             // mma tiles per warp
    static_assert(WM % 16 == 0 && WN % 8 == 0, "warp tile must be whole mma tiles");
};
/* The two kernel variants (one launch uses one): the same micro-kernels, different fat tiles and occupancy.
 *   decode  (2 CTAs/SM, <= 128 registers): thin 16 × 128, fat  64 × 128 (warp tile 32 × 32)
 *   prefill (1 CTA/SM, <= 255 registers):  thin 16 × 128, fat 128 × 128 (warp tile 64 × 32: twice the mma per
 *                                          fragment load, for the tensor-core-bound large-M problems)
 * The host picks prefill when the launch averages >= kPrefillRowsPerGroup rows per expert. */
struct DecodeVariant {
    using Thin = Tile<16, 1, kSmemDecode>;
    using Fat = Tile<64, 2, kSmemDecode>;
    static constexpr int min_blocks = 2, smem = kSmemDecode;
};
struct PrefillVariant {
    using Thin = Tile<16, 1, kSmemPrefill>;
    using Fat = Tile<128, 2, kSmemPrefill>;
    static constexpr int min_blocks = 1, smem = kSmemPrefill;
};
constexpr int kPrefillRowsPerGroup = 96;  // 128-row fat tiles are then >= 75 % full on average

__host__ __device__ constexpr int pad_row(int bytes) { return (bytes / 16) % 2 == 0 ? bytes + 16 : bytes; }
__host__ __device__ constexpr int round16(int bytes) { return (bytes + 15) / 16 * 16; }
__host__ __device__ constexpr int cmin(int a, int b) { return a < b ? a : b; }
__host__ __device__ constexpr int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }
__host__ __device__ constexpr int a_bits_of(AKind a) { return a == AKind::BF16 ? 16 : a == AKind::INT4 ? 4 : 8; }

// k per stage.  A thin (decode) tile is weight-streaming: each stage must fetch >= 128 contiguous bytes of every
// weight row, because HBM serves short scattered runs (64 B or 32 B per row: w4 / w2 at k = 128) at a fraction of
// its bandwidth (measured on the H100: 1.1 and 0.6 TB/s vs 2.4 for 128-256 B).  Fat tiles keep k = 128: their A
// tile dominates the stage and they are bound by the tensor cores.
__host__ __device__ constexpr int stage_k(int w_bits, bool thin) {
    return !thin || w_bits >= 8 ? 128 : w_bits == 4 ? 256 : w_bits == 3 ? 384 : 512;
}

/* Byte layout of one pipeline stage of scheme ID with tile T (offsets into the stage's slot of shared memory). */
template <int ID, class T>
struct Stage {
    using S = Scheme<ID>;
    static constexpr int BK = stage_k(S::W, T::thin);      // k per stage
    static constexpr int groups = S::G > 0 ? BK / kGroup : 0;  // g128 groups per stage
    static constexpr int a_bits = a_bits_of(S::A);
    static constexpr int a_row = BK * a_bits / 8, a_stride = pad_row(a_row);  // A [BM][a_stride]
    static constexpr int w_row = BK * S::W / 8, w_stride = pad_row(w_row);    // W [BN][w_stride]
    static constexpr int a_off = 0;
    static constexpr int w_off = a_off + T::BM * a_stride;
    static constexpr int s_off = w_off + T::BN * w_stride;  // g128: f16 scales of the stage's groups [groups][BN]
    static constexpr int s_bytes = groups * T::BN * 2;
    static constexpr int z_off = s_off + s_bytes;  // g128 asym: u8 zeros [groups][BN]
    static constexpr int z_bytes = S::sym ? 0 : groups * T::BN;
    static constexpr int bytes = round16(z_off + z_bytes);
    static constexpr int stages = cmin(8, T::smem / bytes);
    static_assert(stages >= 2, "a stage does not fit twice in the shared-memory budget");
    static_assert(S::G < 0 || (S::G == kGroup && BK % kGroup == 0), "a g128 stage must hold whole groups");
};

/* ---- device-side schedule (workspace layout) ---- */
struct TileGroup {       // one problem, in rank order (heaviest first)
    int32_t problem;     // index into the problem table
    int32_t fat;         // 0: the variant's thin tile, 1: its fat tile
    int32_t rows;        // M of the problem's expert (clamped to [0, max_rows])
    int32_t tiles_n;     // ceil(n / bn)
    int64_t row0;        // first row of the expert in X and Y
    int32_t bn;          // output columns per tile: kBN, or kWgmmaBN for wgmma fat tiles
    int32_t chunks;      // k-chunks of one tile when its K can be split (decode stream tiles), else 0
    mx_cuda_problem copy;  // the problem record itself: a tile's lookup is one dependent load, not two
};
static_assert(sizeof(TileGroup) == 96, "TileGroup is a 96-byte record");

/* Split tail (stream-K where CTAs would idle).  Of N tiles on C CTAs, the first (floor(N / C) - 1)·C are claimed
 * whole, one by one; the rest (the "stretch": the last full round and the partial one, C + N % C tiles; all N when
 * N < 2C) would leave CTAs idle while others run one more tile.  Its decode stream tiles after the last problem
 * that cannot be split (the "tail": all of them, usually) are cut along K: their k-chunks are laid end to end (Q
 * chunks, tile after tile in rank order) and split into P = min(C - W, Q) equal pieces, W the whole tiles of the
 * stretch before the tail: those take the stretch's first W claims and the pieces the next P, one claim per CTA.
 * A piece may cover the end of one tile, whole tiles and the start of the next: one segment per tile it touches.
 *
 *   claim ids:  0 .... stretch start .... tail_start | tail_start ... tail_start + P   (= total)
 *               whole tiles                            pieces j: tail chunks [jQ/P, (j+1)Q/P)
 *
 * A segment that covers a whole tile stores it directly.  Otherwise it writes its fp32 partial tile to slot
 * (j + tail tile index) — unique per segment, < P + tail tiles < 3C — and increments the tile's arrival counter
 * (tail tiles < 2C); the last segment to arrive sums the tile's slots in piece order (the result does not depend on
 * timing) and runs the epilogue.  The schedule kernel zeroes the counters before every launch, so the slots need no
 * initialization.  The cost model keeps launches of equal tiles whole (their pieces lose: per-claim timestamps in
 * NOTES session 8); it splits where a few long tiles would finish far behind the rest. */
constexpr int kSlotFloats = kThreads * 8;  // one partial tile: 8 fp32 accumulators per thread
// A segment's start + a split tile's finish, in chunks of streaming (MXMOE_GEMM_SPLIT_COST overrides it: A/B
// measurements, tests of both sides of the threshold).
constexpr int kSplitCostChunks = 6;

struct Schedule {        // views into the caller's workspace
    int32_t *counter;    // next claim id
    int32_t *total;      // number of claim ids: whole tiles + pieces
    int32_t *tail_start; // first claim id that is a piece (= total when nothing is split)
    int32_t *pieces;     // P
    int32_t *tail_chunks;// Q
    TileGroup *groups;   // [n_problems]
    int32_t *tile_start; // [n_problems + 1] exclusive prefix sum of tiles in rank order
    int32_t *chunk_start;// [n_problems + 1] exclusive prefix sum of tail chunks in rank order
    int32_t *arrivals;   // [2 max_ctas] segments arrived per tail tile
    // Two-stage launches (see "Two stages" below), per expert group: its stage-0 tiles, those stored so far, and 1
    // once its h rows are written
    int32_t *group_expected, *group_done, *group_ready;  // [kMaxStageGroups] each
    float *slots;        // [3 max_ctas][kSlotFloats] partial tiles
};
constexpr int kMaxStageGroups = 1024;  // expert groups of a two-stage launch (= the routing's limit)

__host__ __device__ inline size_t schedule_bytes(int32_t n_problems, int32_t max_ctas) {
    const size_t tables = 64 + sizeof(TileGroup) * (size_t)n_problems + 8 * ((size_t)n_problems + 1) +
                          4 * 2 * (size_t)max_ctas + 3 * 4 * (size_t)kMaxStageGroups;
    return (tables + 255) / 256 * 256 + sizeof(float) * kSlotFloats * 3 * (size_t)max_ctas;
}

__host__ __device__ inline Schedule schedule_view(void *workspace, int32_t n_problems, int32_t max_ctas) {
    char *base = static_cast<char *>(workspace);
    Schedule s;
    s.counter = reinterpret_cast<int32_t *>(base);
    s.total = reinterpret_cast<int32_t *>(base + 4);
    s.tail_start = reinterpret_cast<int32_t *>(base + 8);
    s.pieces = reinterpret_cast<int32_t *>(base + 12);
    s.tail_chunks = reinterpret_cast<int32_t *>(base + 16);
    size_t off = 64;
    s.groups = reinterpret_cast<TileGroup *>(base + off);
    off += sizeof(TileGroup) * (size_t)n_problems;
    s.tile_start = reinterpret_cast<int32_t *>(base + off);
    off += 4 * ((size_t)n_problems + 1);
    s.chunk_start = reinterpret_cast<int32_t *>(base + off);
    off += 4 * ((size_t)n_problems + 1);
    s.arrivals = reinterpret_cast<int32_t *>(base + off);
    off += 4 * 2 * (size_t)max_ctas;
    s.group_expected = reinterpret_cast<int32_t *>(base + off);
    s.group_done = s.group_expected + kMaxStageGroups;
    s.group_ready = s.group_done + kMaxStageGroups;
    off += 3 * 4 * (size_t)kMaxStageGroups;
    s.slots = reinterpret_cast<float *>(base + (off + 255) / 256 * 256);
    return s;
}

/* One tile's work, decoded from the tile id. */
struct TileJob {
    const mx_cuda_problem *problem;
    int64_t row0;   // first row of this tile in X and Y
    int m_rows;     // valid rows (<= BM)
    int n0;         // first output column within the problem
};

/* The part of a decode stream tile's K that one call computes (see "Split tail" above). */
struct StreamSegment {
    int c_begin, c_end;    // k-chunks [c_begin, c_end) of the tile
    int segments;          // segments of the tile: 1 = this call computes it whole and stores it
    int ordinal;           // this segment's slot (segments > 1)
    int first_ordinal;     // the tile's first slot; its slots are first_ordinal .. first_ordinal + segments - 1
    int32_t *arrival;      // the tile's arrival counter
    float *slots;
};

/* ======================================== stage functions ======================================== */

template <int ID>
__device__ __forceinline__ const char *act_base(const mx_cuda_activations &acts) {
    constexpr AKind A = Scheme<ID>::A;
    return A == AKind::BF16   ? reinterpret_cast<const char *>(acts.d_bf16)
           : A == AKind::INT8 ? reinterpret_cast<const char *>(acts.d_int8)
           : A == AKind::FP8  ? reinterpret_cast<const char *>(acts.d_fp8)
                              : reinterpret_cast<const char *>(acts.d_int4);
}

template <int ID>
__device__ __forceinline__ const float *act_row_scale(const mx_cuda_activations &acts) {
    constexpr AKind A = Scheme<ID>::A;
    return A == AKind::INT8 ? acts.d_scale_int8 : A == AKind::FP8 ? acts.d_scale_fp8 : acts.d_scale_int4;
}

// Issue the cp.async of stage kt (A rows, W rows, and for g128 the group's scales / zeros) into `slot`.
template <int ID, class T>
__device__ __forceinline__ void load_stage(const TileJob &job, const mx_cuda_activations &acts, int kt,
                                           uint32_t slot) {
    using S = Scheme<ID>;
    using L = Stage<ID, T>;
    const mx_cuda_problem &p = *job.problem;
    const int k0 = kt * L::BK;
    const int k_valid = min(L::BK, p.k - k0);  // a multiple of 32

    // A: BM rows × a_row bytes; rows past the expert's M and k past K are zero-filled.
    const char *a = act_base<ID>(acts);
    const int64_t a_ld_bytes = acts.ld * L::a_bits / 8;
    constexpr int a_chunks = L::a_row / 16;
    const int a_valid_chunks = k_valid * L::a_bits / 128;
    for (int c = threadIdx.x; c < T::BM * a_chunks; c += kThreads) {
        const int r = c / a_chunks, ch = c % a_chunks;
        const bool ok = r < job.m_rows && ch < a_valid_chunks;
        const char *src = ok ? a + (job.row0 + r) * a_ld_bytes + (int64_t)k0 * L::a_bits / 8 + ch * 16 : a;
        cp_async16(slot + L::a_off + r * L::a_stride + ch * 16, src, ok ? 16 : 0);
    }

    // W: BN rows (output columns) × w_row bytes of packed codes.
    const char *w = static_cast<const char *>(p.qweight);
    const int64_t w_ld_bytes = (int64_t)p.k * S::W / 8;
    constexpr int w_chunks = L::w_row / 16;
    const int w_valid_chunks = k_valid * S::W / 128;
    for (int c = threadIdx.x; c < T::BN * w_chunks; c += kThreads) {
        const int r = c / w_chunks, ch = c % w_chunks;
        const bool ok = job.n0 + r < p.n && ch < w_valid_chunks;
        const char *src = ok ? w + (int64_t)(job.n0 + r) * w_ld_bytes + (int64_t)kt * L::w_row + ch * 16 : w;
        cp_async16(slot + L::w_off + r * L::w_stride + ch * 16, src, ok ? 16 : 0);
    }

    if constexpr (S::G > 0) {  // this stage's groups: scales[group, n0 : n0 + BN], zeros likewise
        const int group0 = k0 / kGroup, groups_valid = k_valid / kGroup;  // k_valid % 128 == 0 (k % 128 == 0)
        const char *s = static_cast<const char *>(p.scales);
        constexpr int s_chunks = T::BN * 2 / 16;
        for (int c = threadIdx.x; c < L::groups * s_chunks; c += kThreads) {
            const int gi = c / s_chunks, ch = c % s_chunks;
            const bool ok = gi < groups_valid && job.n0 + ch * 8 < p.n;
            const char *src = ok ? s + ((int64_t)(group0 + gi) * p.n + job.n0 + ch * 8) * 2 : s;
            cp_async16(slot + L::s_off + gi * T::BN * 2 + ch * 16, src, ok ? 16 : 0);
        }
        if constexpr (!S::sym) {
            const char *z = static_cast<const char *>(p.zeros);
            constexpr int z_chunks = T::BN / 16;
            for (int c = threadIdx.x; c < L::groups * z_chunks; c += kThreads) {
                const int gi = c / z_chunks, ch = c % z_chunks;
                const bool ok = gi < groups_valid && job.n0 + ch * 16 < p.n;
                const char *src = ok ? z + (int64_t)(group0 + gi) * p.n + job.n0 + ch * 16 : z;
                cp_async16(slot + L::z_off + gi * T::BN + ch * 16, src, ok ? 16 : 0);
            }
        }
    }
}

/* Registers of one warp's tile: fp32 results, and the per-stage (g128) or per-tile (per-channel int8) partial sums. */
template <int ID, class T>
struct Accum {
    static constexpr bool int_sums = Scheme<ID>::mma == MmaKind::S8;
    float acc[T::MT][T::NT][4];
    typename std::conditional<int_sums, int32_t, float>::type part[T::MT][T::NT][4];
};

// bf16-mma B fragments of one 32-code pack for weight row `row` (smem address of the row): b[k16 step][reg].
template <int ID, class T>
__device__ __forceinline__ void wxa16_b_frag(uint32_t (&b)[2][2], const char *row_ptr, int pack, int t,
                                             uint32_t z_magic) {
    using S = Scheme<ID>;
    if constexpr (S::W == 4) {
        const uint4 v = *reinterpret_cast<const uint4 *>(row_ptr + pack * 16);
        const int sh = 8 * t;
        b[0][0] = pair_minus_z(spread_nib_pair(v.x >> sh), z_magic);
        b[0][1] = pair_minus_z(spread_nib_pair(v.y >> sh), z_magic);
        b[1][0] = pair_minus_z(spread_nib_pair(v.z >> sh), z_magic);
        b[1][1] = pair_minus_z(spread_nib_pair(v.w >> sh), z_magic);
    } else if constexpr (S::W == 2) {
        const uint2 v = *reinterpret_cast<const uint2 *>(row_ptr + pack * 8);
        const int sh = 4 * t;
        b[0][0] = pair_minus_z(spread_crumb_pair(v.x >> sh), z_magic);
        b[0][1] = pair_minus_z(spread_crumb_pair(v.x >> (16 + sh)), z_magic);
        b[1][0] = pair_minus_z(spread_crumb_pair(v.y >> sh), z_magic);
        b[1][1] = pair_minus_z(spread_crumb_pair(v.y >> (16 + sh)), z_magic);
    } else if constexpr (S::W == 3) {
        const uint32_t *v = reinterpret_cast<const uint32_t *>(row_ptr + pack * 12);
        const uint32_t w0 = v[0], w1 = v[1], w2 = v[2];
        const int sh = 4 * t, c = 2 * t;  // the pair's first code c within each k16 half-pack
        b[0][0] = pair_minus_z(spread_w3_pair(w0 >> sh, w2 >> c), z_magic);
        b[0][1] = pair_minus_z(spread_w3_pair(w0 >> (16 + sh), w2 >> (8 + c)), z_magic);
        b[1][0] = pair_minus_z(spread_w3_pair(w1 >> sh, w2 >> (16 + c)), z_magic);
        b[1][1] = pair_minus_z(spread_w3_pair(w1 >> (16 + sh), w2 >> (24 + c)), z_magic);
    } else if constexpr (S::W == 8) {
        const uint16_t *v = reinterpret_cast<const uint16_t *>(row_ptr + pack * 32);
        b[0][0] = u8pair_minus_128(v[t]);       // bytes 2t, 2t+1
        b[0][1] = u8pair_minus_128(v[4 + t]);   // bytes 8+2t
        b[1][0] = u8pair_minus_128(v[8 + t]);   // bytes 16+2t
        b[1][1] = u8pair_minus_128(v[12 + t]);  // bytes 24+2t
    }
}

// Tensor-core work of one stage that sits in `slot` (generic pointer `stage`).  kt: the stage's k index.
template <int ID, class T>
__device__ __forceinline__ void compute_stage(Accum<ID, T> &r, const char *stage, const uint32_t slot,
                                              const TileJob &job, const int (&z_col)[T::NT]) {
    using S = Scheme<ID>;
    using L = Stage<ID, T>;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm0 = (warp / T::WARPS_N) * T::WM, wn0 = (warp % T::WARPS_N) * T::WN;
    constexpr bool grouped = S::G > 0;
    constexpr int packs_per_group = kGroup / 32;

#pragma unroll
    for (int pack = 0; pack < L::BK / 32; pack++) {
        const int gi = pack / packs_per_group;  // g128: the group of this pack within the stage
        if constexpr (grouped) {
            if (pack % packs_per_group == 0) {  // a fresh partial sum for each group
#pragma unroll
                for (int i = 0; i < T::MT; i++)
#pragma unroll
                    for (int j = 0; j < T::NT; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) r.part[i][j][e] = 0;
            }
        }
        if constexpr (S::mma == MmaKind::BF16) {
            // ---- bf16 micro-kernel (w16a16, wXa16): two k16 steps per pack ----
            uint32_t b[T::NT][2][2];
#pragma unroll
            for (int j = 0; j < T::NT; j++) {
                if constexpr (S::W == 16) {
                    // ldmatrix.x4 over the 8 weight rows of this n8 tile: matrices = k 0-7, 8-15, 16-23, 24-31.
                    const int row = wn0 + j * 8 + (lane & 7);
                    uint32_t q[4];
                    ldmatrix_x4(q, slot + L::w_off + row * L::w_stride + pack * 64 + (lane >> 3) * 16);
                    b[j][0][0] = q[0]; b[j][0][1] = q[1]; b[j][1][0] = q[2]; b[j][1][1] = q[3];
                } else {
                    const int row = wn0 + j * 8 + g;
                    int z;
                    if constexpr (S::sym) z = 1 << (S::W - 1);
                    else if constexpr (grouped) z = reinterpret_cast<const uint8_t *>(stage + L::z_off)[gi * T::BN + row];
                    else z = z_col[j];
                    wxa16_b_frag<ID, T>(b[j], stage + L::w_off + row * L::w_stride, pack, t, bf16x2_128_plus(z));
                }
            }
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
#pragma unroll
                for (int i = 0; i < T::MT; i++) {
                    uint32_t a[4];
                    const int row = wm0 + i * 16 + (lane & 15);
                    ldmatrix_x4(a, slot + L::a_off + row * L::a_stride + (pack * 32 + kk * 16) * 2 + (lane >> 4) * 16);
#pragma unroll
                    for (int j = 0; j < T::NT; j++) {
                        if constexpr (grouped) mma_bf16_16816(r.part[i][j], a, b[j][kk][0], b[j][kk][1]);
                        else mma_bf16_16816(r.acc[i][j], a, b[j][kk][0], b[j][kk][1]);
                    }
                }
            }
        } else {
            // ---- int8 / e4m3 micro-kernel (w8a8, w8a8_fp8, w4a8, w4a4): one k32 step per pack ----
            uint32_t b[T::NT][2];
#pragma unroll
            for (int j = 0; j < T::NT; j++) {
                const int row = wn0 + j * 8 + g;
                const char *rp = stage + L::w_off + row * L::w_stride;
                if constexpr (S::W == 8) {
                    const uint32_t w0 = *reinterpret_cast<const uint32_t *>(rp + pack * 32 + 4 * t);
                    const uint32_t w1 = *reinterpret_cast<const uint32_t *>(rp + pack * 32 + 16 + 4 * t);
                    const uint32_t flip = S::mma == MmaKind::S8 ? 0x80808080u : 0u;  // int: u - 128 = u ^ 0x80
                    b[j][0] = w0 ^ flip;
                    b[j][1] = w1 ^ flip;
                } else {  // W == 4: 16 bits at byte 2t and 8 + 2t of the 16-byte pack
                    const uint32_t w0 = *reinterpret_cast<const uint32_t *>(rp + pack * 16 + 4 * (t >> 1));
                    const uint32_t w1 = *reinterpret_cast<const uint32_t *>(rp + pack * 16 + 8 + 4 * (t >> 1));
                    const uint32_t sel = (t & 1) ? 0x3322u : 0x1100u;  // the word's low or high 16 bits
                    int z;
                    if constexpr (S::sym) z = 8;
                    else if constexpr (grouped) z = reinterpret_cast<const uint8_t *>(stage + L::z_off)[gi * T::BN + row];
                    else z = z_col[j];
                    const uint32_t z4 = 0x01010101u * static_cast<uint32_t>(z);
                    b[j][0] = u4x4_minus_z(w0, sel, z4);
                    b[j][1] = u4x4_minus_z(w1, sel, z4);
                }
            }
#pragma unroll
            for (int i = 0; i < T::MT; i++) {
                uint32_t a[4];
                if constexpr (S::A == AKind::INT4) {  // 16 packed bytes per row per pack; unpack to int8
                    const char *r0 = stage + L::a_off + (wm0 + i * 16 + g) * L::a_stride + pack * 16;
                    const char *r1 = r0 + 8 * L::a_stride;
                    const uint32_t sel = (t & 1) ? 0x3322u : 0x1100u;
                    const int off = 4 * (t >> 1);
                    a[0] = int4x4_to_int8x4(*reinterpret_cast<const uint32_t *>(r0 + off), sel);
                    a[1] = int4x4_to_int8x4(*reinterpret_cast<const uint32_t *>(r1 + off), sel);
                    a[2] = int4x4_to_int8x4(*reinterpret_cast<const uint32_t *>(r0 + 8 + off), sel);
                    a[3] = int4x4_to_int8x4(*reinterpret_cast<const uint32_t *>(r1 + 8 + off), sel);
                } else {
                    const int row = wm0 + i * 16 + (lane & 15);
                    ldmatrix_x4(a, slot + L::a_off + row * L::a_stride + pack * 32 + (lane >> 4) * 16);
                }
#pragma unroll
                for (int j = 0; j < T::NT; j++) {
                    if constexpr (S::mma == MmaKind::E4M3) mma_e4m3_16832(r.acc[i][j], a, b[j][0], b[j][1]);
                    else mma_s8_16832(r.part[i][j], a, b[j][0], b[j][1]);
                }
            }
        }

        if constexpr (grouped) {
            if (pack % packs_per_group == packs_per_group - 1) {  // fold the group: acc += part × s[group, column]
                const __half *sc = reinterpret_cast<const __half *>(stage + L::s_off) + gi * T::BN;
#pragma unroll
                for (int j = 0; j < T::NT; j++) {
                    const float2 s = __half22float2(*reinterpret_cast<const __half2 *>(sc + wn0 + j * 8 + 2 * t));
#pragma unroll
                    for (int i = 0; i < T::MT; i++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            float v;
                            if constexpr (Accum<ID, T>::int_sums) v = small_int_to_float(r.part[i][j][e]);
                            else v = r.part[i][j][e];
                            r.acc[i][j][e] = fmaf(v, (e & 1) ? s.y : s.x, r.acc[i][j][e]);
                        }
                }
            }
        }
    }
}

// Scale and store the warp's results: y[row, out_col + n] = bf16(acc × s[n] (per-channel) × s_x[row] (a8/a4)).
template <int ID, class T>
__device__ __forceinline__ void epilogue(Accum<ID, T> &r, const TileJob &job, const mx_cuda_activations &acts,
                                         uint16_t *y, int64_t ldy) {
    using S = Scheme<ID>;
    const mx_cuda_problem &p = *job.problem;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm0 = (warp / T::WARPS_N) * T::WM, wn0 = (warp % T::WARPS_N) * T::WN;
    const float *row_scale = S::A == AKind::BF16 ? nullptr : act_row_scale<ID>(acts);
    // Every scale this thread needs, loaded before the first store: inside the store loop each load waited for
    // its global round trip (the stores keep the compiler from hoisting them).
    float2 col_scale[T::NT];
#pragma unroll
    for (int j = 0; j < T::NT; j++) {
        const int col = job.n0 + wn0 + j * 8 + 2 * t;
        col_scale[j] = make_float2(1.f, 1.f);
        if constexpr (S::G < 0 && S::W < 16)
            if (col < p.n)
                col_scale[j] = __half22float2(
                    *reinterpret_cast<const __half2 *>(static_cast<const __half *>(p.scales) + col));
    }
    float row_factor[T::MT][2];
#pragma unroll
    for (int i = 0; i < T::MT; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = wm0 + i * 16 + g + 8 * h;
            row_factor[i][h] = 1.f;
            if constexpr (S::A != AKind::BF16)
                if (row < job.m_rows) row_factor[i][h] = row_scale[job.row0 + row];
        }
#pragma unroll
    for (int j = 0; j < T::NT; j++) {
        const int col = job.n0 + wn0 + j * 8 + 2 * t;
        if (col >= p.n) continue;  // n % 16 == 0: col < n implies col + 1 < n
        const float2 cs = col_scale[j];
#pragma unroll
        for (int i = 0; i < T::MT; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = wm0 + i * 16 + g + 8 * h;
                if (row >= job.m_rows) continue;
                float v0, v1;
                if constexpr (Accum<ID, T>::int_sums && S::G < 0) {  // per-channel int8: the whole-K int32 sum
                    v0 = __int2float_rn(r.part[i][j][2 * h]);
                    v1 = __int2float_rn(r.part[i][j][2 * h + 1]);
                } else {
                    v0 = r.acc[i][j][2 * h];
                    v1 = r.acc[i][j][2 * h + 1];
                }
                const float rs = row_factor[i][h];
                const __nv_bfloat162 out = __floats2bfloat162_rn(v0 * cs.x * rs, v1 * cs.y * rs);
                *reinterpret_cast<__nv_bfloat162 *>(y + (job.row0 + row) * ldy + p.out_col + col) = out;
            }
    }
}

/* ======================================== decode stream micro-kernel ========================================
 *
 * Thin tiles (<= 16 rows) of the 4- and 2-bit weight-only schemes take this path instead of run_tile.  At
 * decode a tile is pure weight streaming: 128 columns × K codes read once, a few activation rows re-read from L2.
 * run_tile keeps one CTA-wide pipeline (one __syncthreads per stage, every warp waiting for the slowest stage); here
 * every warp streams its own 16 weight rows through a private cp.async ring and never waits for another warp's
 * weights:
 *
 *   warp w: output columns n0 + 16w + [0, 16)  = rows g and 8 + g of two n8 mma tiles (g = lane / 4)
 *   chunk  = CK = 1024 / W codes of K (2 groups of 128 for w4, 4 for w2): 128 contiguous bytes of each
 *            of the warp's 16 rows, i.e. 2 KB per warp, in flight D = 2 chunks ahead
 *   lane (g, t) computes with, for each of its two rows and each group q of the chunk, the 32 codes
 *            k = chunk·CK + 128q + 32t + [0, 32)        (one pack: 4W bytes)
 *   which the warp copies as whole 128-byte lines (4 rows per cp.async instruction) into the places each lane
 *   reads, so a __syncwarp after each wait guards the warp's ring.
 *
 * The K order inside an mma is free (a dot product does not care), so each lane feeds the codes in the order that
 * is cheapest to unpack:
 *   w4: one LOP3 gives codes (i, i + 4) of a word, as the bf16 pair (128 + u_i, 128 + u_{i+4}), so the k16 steps of
 *       word j take codes {0,4 | 1,5} and {2,6 | 3,7}: a0 = (x_k0, x_k4), a2 = (x_k1, x_k5), ...
 *   w2: codes (i, i + 8) of a 16-code word.
 * The activations are put in that order once per CTA when their slice lands (stream_prepare_slice: 4 PRMT per
 * 16-byte unit), not by every warp for every mma (that was 2 PRMT per mma, repeated by the 8 warps).
 * Zero points leave the loop too: the weights enter the mma as 128 + u (one LOP3 per pair, no subtraction), and
 *   Σ_k x_k (u_k - z) = Σ_k x_k (128 + u_k) - (128 + z) Σ_k x_k
 * per 128-group, with Σ_k x_k per activation row and group summed by stream_prepare_slice as well.  (Session 5 got the
 * sums from one more mma per k16 step, which cost more than the 64 HSUB2 per chunk it saved.)  The fp32 partial sums
 * are then ~16x (w4) to ~100x (w2) larger than the result, so their rounding (2^-24 relative) grows by that factor:
 * still far below the bf16 output's (2^-9).
 * All four lanes t of an mma read the same 128-group (lane t's 32 codes lie in group q), so the group's scale
 * still multiplies whole fp32 partial sums, exactly as in run_tile.
 *
 * Activations, scales and zeros are shared by the 8 warps: the CTA copies them per slice of KA = 512 k
 * into one of NA slice buffers (rows >= M are never read back into results, so only the tile's M rows are
 * copied).  A slice rides in the same cp.async group as the first weight chunk that needs it, and the only CTA
 * barriers are at a slice's first chunk (one for the copy to land, one after stream_prepare_slice; a version with
 * slices one ahead and a single barrier measured no faster, NOTES session 7); NA = 1 + ceil(depth / chunks per
 * slice) buffers make the early copy safe.
 * Activation rows are 16-byte units XOR-swizzled (unit u of row r at u ^ (u >> 3 & 1) ^ (r & 1) << 1), so the 8
 * lanes of one LDS.128 phase (rows g, g + 1; t = 0..3 at 64-byte steps) hit 8 different bank quads.
 *
 *   shared memory: [slice 0: A 16×KA bf16 | scales KA/128×128 f16 | zeros KA/128×128 u8 | Σx KA/128×16 f32]
 *                  ... [slice NA-1]
 *                  [rings: 8 warps × ring_slots (>= D + 1) chunks × 2 KB, each chunk [row half j][group q][lane][pack]
 *                  so lanes read consecutive addresses] */

template <int ID>
struct StreamFacts {
    using S = Scheme<ID>;
    // w8 keeps run_tile: its fp32 byte conversion makes the stream path issue-bound (measured 1.4x slower at T=16)
    static constexpr bool enabled = S::mma == MmaKind::BF16 && (S::W == 4 || S::W == 2);
    static constexpr int W = enabled ? S::W : 4;    // (other schemes never take this path; keeps constants defined)
    static constexpr int GQ = 8 / W;                // 128-groups per chunk
    static constexpr int CK = GQ * kGroup;          // k per chunk
    static constexpr int pack_bytes = 4 * W;        // one lane's 32 codes of one row
    static constexpr int piece = pack_bytes;        // a lane's pack in the ring: 16 (w4) or 8 (w2) bytes
    // Weight chunks in flight per warp while it computes one, and k per activation slice.  (w4 with 3 chunks in
    // flight and 256-k slices, a barrier per chunk, measured 9-17 % slower at T=16; 3 in flight with these slices,
    // each riding one chunk late so that two buffers still suffice, 1-8 % slower (session 11); what bounds the
    // tile: bench/NOTES-gpu.md sessions 3-4 and 7, ~8 cycles per instruction spread over many stall reasons.)
    static constexpr int D = 2;
    static constexpr int KA = 512;
    static constexpr int C = KA / CK;                                 // chunks per slice
    static constexpr int NA = 1 + (D + C - 1) / C;                   // slice buffers
    static constexpr int warp_chunk_bytes = 32 * 2 * GQ * pack_bytes; // 2 KB
    static constexpr int a_row_bytes = KA * 2;
    static constexpr int a_bytes = 16 * a_row_bytes;
    static constexpr int slice_groups = KA / kGroup;
    static constexpr int s_bytes = S::G > 0 ? slice_groups * kBN * 2 : 0;
    static constexpr int z_bytes = S::G > 0 && !S::sym ? slice_groups * kBN : 0;
    static constexpr int sums_off = a_bytes + s_bytes + z_bytes;  // Σx per (group, activation row), f32 [group][16]
    static constexpr int slice_bytes = sums_off + slice_groups * 16 * 4;
    // stream_prepare_slice reorders the activations in items of one 16-byte unit (w4) or the two of a 16-code word (w2)
    static constexpr int item_units = W == 4 ? 1 : 2;
    static constexpr int ring_off = NA * slice_bytes;
    // D + 1 slots suffice; 4 where they fit (w4) turn the per-chunk slot arithmetic into a mask
    static constexpr int ring_slots = ring_off + (kThreads / 32) * 4 * warp_chunk_bytes <= kSmemDecode ? 4 : D + 1;
    static constexpr int smem = ring_off + (kThreads / 32) * ring_slots * warp_chunk_bytes;
    static_assert(!enabled || (C >= 1 && KA % CK == 0), "a slice must hold whole chunks");
    static_assert(!enabled || smem <= kSmemDecode, "2 CTAs per SM");
    static_assert(!enabled || warp_chunk_bytes == 2048, "one chunk = 128 bytes of each of a warp's 16 rows");
    static_assert(!enabled || S::G < 0 || S::G == kGroup, "g128 or per-channel");
};

__device__ __forceinline__ int stream_unit_swizzle(int unit, int row) {
    return unit ^ ((unit >> 3) & 1) ^ ((row & 1) << 1);
}

/* The slice functions run once per KA of K (every other chunk for w4, every chunk for w2) and are kept out of line,
 * so the hot loop's code stays small: with them inline and the group loop unrolled, waiting for instructions was a
 * fifth of the warps' stall cycles (Nsight Compute: 1.7 cycles per issued instruction, 0.5-0.9 since; NOTES
 * session 7). */

// Copy slice s of the tile's activations (its m rows), scales and zeros into slice buffer s % NA (all threads).
template <int ID>
__device__ __noinline__ void stream_issue_slice(uint32_t smem0, int s, const char *a_glob, int64_t a_ld_bytes,
                                                int64_t row0, int m, int k, int n, int n0, const char *scales,
                                                const uint8_t *zeros) {
    using S = Scheme<ID>;
    using F = StreamFacts<ID>;
    const uint32_t sb = smem0 + (s % F::NA) * F::slice_bytes;
    const int k0 = s * F::KA;
    constexpr int units = F::KA / 8;  // 16-byte units per activation row
    for (int id = threadIdx.x; id < m * units; id += kThreads) {
        const int r = id / units, u = id % units;
        const bool ok = k0 + 8 * u < k;
        const char *src = ok ? a_glob + (row0 + r) * a_ld_bytes + (int64_t)(k0 + 8 * u) * 2 : a_glob;
        cp_async16(sb + r * F::a_row_bytes + stream_unit_swizzle(u, r) * 16, src, ok ? 16 : 0);
    }
    if constexpr (S::G > 0) {
        const int group0 = k0 / kGroup, groups = k / kGroup;
        if (threadIdx.x < F::slice_groups * 16) {  // scales[group0 + gi, n0 : n0 + 128]
            const int gi = threadIdx.x / 16, ch = threadIdx.x % 16;
            const bool ok = group0 + gi < groups && n0 + 8 * ch < n;
            const char *src = scales;
            if (ok) src += ((int64_t)(group0 + gi) * n + n0 + 8 * ch) * 2;
            cp_async16(sb + F::a_bytes + gi * kBN * 2 + ch * 16, src, ok ? 16 : 0);
        }
        if constexpr (!S::sym) {
            const int i = threadIdx.x - F::slice_groups * 16;
            if (i >= 0 && i < F::slice_groups * 8) {  // zeros[group0 + gi, n0 : n0 + 128]
                const int gi = i / 8, ch = i % 8;
                const bool ok = group0 + gi < groups && n0 + 16 * ch < n;
                const char *src = reinterpret_cast<const char *>(zeros);
                if (ok) src += (int64_t)(group0 + gi) * n + n0 + 16 * ch;
                cp_async16(sb + F::a_bytes + F::s_bytes + gi * kBN + ch * 16, src, ok ? 16 : 0);
            }
        }
    }
}

// Once slice s has landed (all threads, between two barriers): each of its m activation rows in the lanes' k order
// (see above), and Σx of each 128-group of each row.  Thread (row, quad) takes 4 consecutive 16-byte units of a
// row, so any m <= 16 takes one pass of independent loads (a first version looped over single units: up to 4 rounds
// of load, reorder and 4 shuffles per thread at 16 rows), and the 4 quads of a group meet in 2 shuffles.
template <int ID>
__device__ __noinline__ void stream_prepare_slice(char *smem, int s, int m) {
    using F = StreamFacts<ID>;
    constexpr int IU = F::item_units;      // units per reordered item: 1 (w4) or the 2 of a 16-code word (w2)
    constexpr int quads = F::KA / 8 / 4;   // quads per row
    static_assert(quads * kThinMaxRows <= kThreads && kGroup / 8 / 4 == 4, "one pass, 4 quads per group");
    char *sb = smem + (s % F::NA) * F::slice_bytes;
    const int row = threadIdx.x / quads, quad = threadIdx.x % quads;
    float sum = 0.f;
    if (row < m) {
        uint4 *unit[4];
        uint32_t x[16];  // word i = (x_2i, x_2i+1) of the quad's 32 activations
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int unit_index = stream_unit_swizzle(4 * quad + i, row);
            unit[i] = reinterpret_cast<uint4 *>(sb + row * F::a_row_bytes + unit_index * 16);
            const uint4 v = *unit[i];
            x[4 * i] = v.x, x[4 * i + 1] = v.y, x[4 * i + 2] = v.z, x[4 * i + 3] = v.w;
        }
        float unit_sum[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            unit_sum[i] = 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++)
                unit_sum[i] += __uint_as_float(x[4 * i + j] << 16) + __uint_as_float(x[4 * i + j] & 0xFFFF0000u);
        }
        sum = (unit_sum[0] + unit_sum[1]) + (unit_sum[2] + unit_sum[3]);
        // item it (the 4·IU words w = x + 4·IU·it): new word j = (x_j, x_{j + 4·IU}) of its 8·IU activations, the
        // pair that one LOP3 of the weight word pairs with
#pragma unroll
        for (int it = 0; it < 4 / IU; it++) {
            const uint32_t *w = x + 4 * IU * it;
            uint32_t y[4 * IU];
#pragma unroll
            for (int j = 0; j < 4 * IU; j++) y[j] = __byte_perm(w[j / 2], w[j / 2 + 2 * IU], (j & 1) ? 0x7632 : 0x5410);
#pragma unroll
            for (int i = 0; i < IU; i++)
                *unit[IU * it + i] = make_uint4(y[4 * i], y[4 * i + 1], y[4 * i + 2], y[4 * i + 3]);
        }
    }
    sum += __shfl_xor_sync(~0u, sum, 1);
    sum += __shfl_xor_sync(~0u, sum, 2);
    if (row < m && quad % 4 == 0) reinterpret_cast<float *>(sb + F::sums_off)[(quad / 4) * 16 + row] = sum;
}

// Returns whether this call stored the tile's results (false: a segment whose partial sums another CTA finishes).
template <int ID, class T, bool TWO_HALVES>
__device__ __noinline__ bool run_thin_stream(const TileJob job, const StreamSegment seg,
                                             const mx_cuda_activations &acts, uint16_t *y, int64_t ldy, char *smem) {
    using S = Scheme<ID>;
    using F = StreamFacts<ID>;
    const mx_cuda_problem &p = *job.problem;
    // The problem's fields in registers: every cp.async asm statement clobbers memory, so a p.k inside the loops
    // would be reloaded from global memory each time (measured: four dependent loads per chunk).
    const int k = p.k, n = p.n;
    const char *const scales = static_cast<const char *>(p.scales);
    const uint8_t *const zeros = static_cast<const uint8_t *>(p.zeros);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    // The job's fields in registers too.  job and seg come by value: by reference they lived in the kernel's
    // local-memory frame (the decode kernel's frame 184 -> 176 bytes, the prefill kernel's 128 -> 0; the decode
    // layer 1-7 % faster, NOTES session 11).
    const int m = job.m_rows, n0 = job.n0;
    const int64_t row0 = job.row0;
    const int c_begin = seg.c_begin, c_end = seg.c_end;
    const int col0 = n0 + 16 * warp;  // n % 16 == 0: a warp's 16 columns are all valid or all past n
    const bool warp_active = col0 < n;
    // Byte offsets of the lane's four activation units within a 16-unit block: unit U + 4t + u (U a multiple of 16)
    // swizzles to U + ((4t + u) ^ (t >> 1) ^ (g & 1) << 1), the same as stream_unit_swizzle, hoisted out of the loop.
    int a_unit_off[4];
#pragma unroll
    for (int u = 0; u < 4; u++) a_unit_off[u] = ((4 * t + u) ^ (t >> 1) ^ ((g & 1) << 1)) * 16;
    const uint32_t smem0 = smem_u32(smem);
    const char *w = static_cast<const char *>(p.qweight);
    const int64_t w_ld = (int64_t)k * S::W / 8;
    // The lane's copies, see issue_chunk: bytes [b, b + 16) of chunk c of rows 4i + lane / 8 of the warp's 16 rows
    // (i = 0..3) at w_copy + c·128 + i·4·w_ld, into ring slot + copy_dst + the constant offset of piece i.
    constexpr int group_bytes = kGroup * S::W / 8;  // one row's bytes of one 128-group: 64 (w4), 32 (w2)
    const int copy_b = (lane & 7) * 16;
    const int copy_code = copy_b * 8 / S::W;  // the lane's first code within a chunk
    const char *w_copy = w + (int64_t)(warp_active ? col0 + (lane >> 3) : 0) * w_ld + copy_b;
    const uint32_t copy_dst =
        ((copy_b / group_bytes) * 32 + (lane >> 3) * 4 + (copy_b % group_bytes) / F::pack_bytes) * F::piece;
    const uint32_t ring = smem0 + F::ring_off + warp * F::ring_slots * F::warp_chunk_bytes;
    const char *a_glob = reinterpret_cast<const char *>(acts.d_bf16);
    const int64_t a_ld_bytes = acts.ld * 2;

    // ---- copies ----
    auto issue_chunk = [&](int c) {
        if (c >= c_end) return;
        if (warp_active) {
            // One cp.async instruction covers 4 whole rows × 128 bytes (8 lanes per row: 4 full 128-byte lines, 16
            // bytes per lane).  Copying the lane's own packs instead took 8 half lines per instruction, and 8-byte
            // copies for w2, measured 7-23 % slower on w2 tiles.  Lane (row, b) writes the bytes where the lane that
            // computes with them (row % 8, t) expects its pack of group q, so the ring is shared within the warp:
            // hence the __syncwarp after each wait in the pipeline.
            // k % 32 == 0: a pack is all in or all out, a w2 piece (two packs) may be half in.  Past K (valid = 0)
            // nothing is read, and every piece points at the tensor's first byte.
            const int valid = min(16, max(0, (k - c * F::CK - copy_code) * S::W / 8));
            const char *src = valid > 0 ? w_copy + c * 128 : w;
            const int64_t src_step = valid > 0 ? 4 * w_ld : 0;
            const uint32_t dst = ring + (c % F::ring_slots) * F::warp_chunk_bytes + copy_dst;
#pragma unroll
            for (int i = 0; i < 4; i++)  // row 4i + lane / 8: row half i / 2, row 4 (i % 2) + lane / 8 within it
                cp_async16(dst + ((i / 2) * F::GQ * 32 + (i % 2) * 16) * F::piece, src + i * src_step, valid);
        }
        if (c % F::C == 0 || c == c_begin)  // a segment may start inside a slice
            stream_issue_slice<ID>(smem0, c / F::C, a_glob, a_ld_bytes, row0, m, k, n, n0, scales, zeros);
    };

    // ---- registers ----
    Accum<ID, T> r;
    float part[2][2][4];  // [n8 tile][k16 step parity][mma accumulator]: two chains halve the mma dependency
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            r.acc[0][j][e] = 0.f;
            part[j][0][e] = part[j][1][e] = 0.f;
        }
    // 128 + z of the lane's columns, [j][i]: <= 8 rows, column 8j + g (i unused); TWO_HALVES, column 8j + 2t + i.
    // Per-channel zeros are fixed for the tile, g128 zeros are read per group.
    float zf[2][2];
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            zf[j][i] = 128.f + (1 << (S::W - 1));
            if constexpr (!S::sym && S::G < 0)
                if (warp_active) zf[j][i] = 128.f + zeros[col0 + 8 * j + (TWO_HALVES ? 2 * t + i : g)];
        }
    float sum_x_total[2] = {0.f, 0.f};  // per-channel: Σx over the segment's K of the lane's two activation rows

    auto compute_chunk = [&](int c) {
        const char *ring_ptr = smem + F::ring_off + (warp * F::ring_slots + c % F::ring_slots) * F::warp_chunk_bytes;
        const char *sb = smem + ((c / F::C) % F::NA) * F::slice_bytes;
        const char *a_row_g = sb + g * F::a_row_bytes, *a_row_g8 = a_row_g + 8 * F::a_row_bytes;
        const float *sums = reinterpret_cast<const float *>(sb + F::sums_off);
        const int unit0 = (c % F::C) * (F::CK / 8);
        // Not unrolled: one group's code (~110 instructions) instead of GQ copies keeps the loop in the instruction
        // cache; the group's mma chains are independent of the next group's anyway.
#pragma unroll 1
        for (int q = 0; q < F::GQ; q++) {
            const int gs = (c % F::C) * F::GQ + q;  // group within the slice
            uint32_t wv[2][S::W];  // the lane's pack of each row: W words
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const char *src = ring_ptr + ((j * F::GQ + q) * 32 + lane) * F::piece;
                if constexpr (F::piece == 16) {
                    const uint4 v = *reinterpret_cast<const uint4 *>(src);
                    wv[j][0] = v.x; wv[j][1] = v.y; wv[j][2] = v.z; wv[j][3] = v.w;
                } else {
                    const uint2 v = *reinterpret_cast<const uint2 *>(src);
                    wv[j][0] = v.x; wv[j][1] = v.y;
                }
            }
            const int block16 = (unit0 + q * (kGroup / 8)) * 16;  // this group's 16 units, in bytes
            // xg[u] / x8[u] = unit u of rows g / g + 8, already in the lanes' k order: word i feeds pair i
            uint4 xg[4], x8[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                xg[u] = *reinterpret_cast<const uint4 *>(a_row_g + block16 + a_unit_off[u]);
                if constexpr (TWO_HALVES)
                    x8[u] = *reinterpret_cast<const uint4 *>(a_row_g8 + block16 + a_unit_off[u]);
            }
            auto comp = [](const uint4 &v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; };
            // One k16 step: the activation pairs (lo, hi) of rows g (and g + 8), the weight pairs of the lane's two
            // rows.  <= 8 rows: weights are the 16-row operand, tokens the 8 columns (one mma instead of two,
            // C[n][token]); else activations are the 16-row operand of two n8 mmas.
            auto step = [&](int h, uint32_t xlo, uint32_t xhi, uint32_t xlo8, uint32_t xhi8, uint32_t w0lo,
                            uint32_t w0hi, uint32_t w1lo, uint32_t w1hi) {
                if constexpr (TWO_HALVES) {
                    const uint32_t a[4] = {xlo, xlo8, xhi, xhi8};
                    mma_bf16_16816(part[0][h], a, w0lo, w0hi);
                    mma_bf16_16816(part[1][h], a, w1lo, w1hi);
                } else {
                    const uint32_t a[4] = {w0lo, w1lo, w0hi, w1hi};
                    mma_bf16_16816(part[0][h], a, xlo, xhi);
                }
            };
            if constexpr (S::W == 4) {
#pragma unroll
                for (int u = 0; u < 4; u++)  // word u of the pack = unit u: codes 8u .. 8u + 7
#pragma unroll
                    for (int h = 0; h < 2; h++) {  // k order of step h: (2h, 2h+4) then (2h+1, 2h+5) of the unit
                        constexpr uint32_t M = 0x000F000Fu;
                        step(h, comp(xg[u], 2 * h), comp(xg[u], 2 * h + 1),
                             TWO_HALVES ? comp(x8[u], 2 * h) : 0u, TWO_HALVES ? comp(x8[u], 2 * h + 1) : 0u,
                             magic_pair<M>(wv[0][u] >> (8 * h)), magic_pair<M>(wv[0][u] >> (8 * h + 4)),
                             magic_pair<M>(wv[1][u] >> (8 * h)), magic_pair<M>(wv[1][u] >> (8 * h + 4)));
                    }
            } else {  // W == 2
                auto comp8 = [&](const uint4 *v, int wd, int i) { return comp(v[2 * wd + i / 4], i % 4); };
#pragma unroll
                for (int wd = 0; wd < 2; wd++)  // word wd = units 2wd (codes 0-7) and 2wd + 1 (codes 8-15)
#pragma unroll
                    for (int h = 0; h < 4; h++) {  // k order of step h: (2h, 2h+8) then (2h+1, 2h+9) of the word
                        constexpr uint32_t M = 0x00030003u;
                        step(h & 1, comp8(xg, wd, 2 * h), comp8(xg, wd, 2 * h + 1),
                             TWO_HALVES ? comp8(x8, wd, 2 * h) : 0u, TWO_HALVES ? comp8(x8, wd, 2 * h + 1) : 0u,
                             magic_pair<M>(wv[0][wd] >> (4 * h)), magic_pair<M>(wv[0][wd] >> (4 * h + 2)),
                             magic_pair<M>(wv[1][wd] >> (4 * h)), magic_pair<M>(wv[1][wd] >> (4 * h + 2)));
                    }
            }
            // Σx of the group for the lane's two activation rows: tokens 2t, 2t + 1 (<= 8 rows) or rows g, g + 8
            const float sum_x[2] = {sums[gs * 16 + (TWO_HALVES ? g : 2 * t)],
                                    sums[gs * 16 + (TWO_HALVES ? g + 8 : 2 * t + 1)]};
            if constexpr (S::G > 0) {  // fold the group: acc += (both chains - (128 + z)·Σx) × s[group, column]
                if constexpr (!S::sym) {
                    const uint8_t *zg =
                        reinterpret_cast<const uint8_t *>(sb + F::a_bytes + F::s_bytes) + gs * kBN + 16 * warp;
#pragma unroll
                    for (int j = 0; j < 2; j++)
#pragma unroll
                        for (int i = 0; i < 2; i++) zf[j][i] = 128.f + zg[8 * j + (TWO_HALVES ? 2 * t + i : g)];
                }
                const __half *sc = reinterpret_cast<const __half *>(sb + F::a_bytes) + gs * kBN + 16 * warp;
                if constexpr (TWO_HALVES) {  // C[row][n]: columns 8j + 2t, 8j + 2t + 1 of rows g (e < 2), g + 8
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        const float2 s = __half22float2(*reinterpret_cast<const __half2 *>(sc + 8 * j + 2 * t));
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const float v = fmaf(-zf[j][e & 1], sum_x[e >> 1], part[j][0][e] + part[j][1][e]);
                            r.acc[0][j][e] = fmaf(v, (e & 1) ? s.y : s.x, r.acc[0][j][e]);
                            part[j][0][e] = part[j][1][e] = 0.f;
                        }
                    }
                } else {  // C[n][token]: columns g (e = 0, 1) and 8 + g (e = 2, 3) of tokens 2t + (e & 1)
                    const float s0 = __half2float(sc[g]), s1 = __half2float(sc[8 + g]);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const float v = fmaf(-zf[e >> 1][0], sum_x[e & 1], part[0][0][e] + part[0][1][e]);
                        r.acc[0][0][e] = fmaf(v, e < 2 ? s0 : s1, r.acc[0][0][e]);
                        part[0][0][e] = part[0][1][e] = 0.f;
                    }
                }
            } else {
                sum_x_total[0] += sum_x[0];
                sum_x_total[1] += sum_x[1];
            }
        }
    };

    // ---- pipeline: D chunks ahead; CTA barriers only where a slice starts ----
#pragma unroll
    for (int i = 0; i < F::D; i++) {
        issue_chunk(c_begin + i);
        cp_async_commit();
    }
    for (int c = c_begin; c < c_end; c++) {
        cp_async_wait<F::D - 1>();
        // chunk c visible to the whole warp, every lane done with chunk c - 1 (whose slot the copy below may reuse)
        __syncwarp();
        const bool slice_start = c % F::C == 0 || c == c_begin;
        // slice c / C landed (every thread's part of it); every warp is past slice c / C - 1
        if (slice_start) __syncthreads();
        issue_chunk(c + F::D);
        cp_async_commit();
        if (slice_start) {  // reorder and sum slice c / C while the copies above fly; then every warp may read it
            stream_prepare_slice<ID>(smem, c / F::C, m);
            __syncthreads();
        }
        if (warp_active) compute_chunk(c);
    }
    cp_async_wait<0>();
    __syncthreads();  // the next tile may overwrite every buffer
    if constexpr (S::G < 0) {  // per-channel: the zero points' share of the whole segment at once
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                r.acc[0][j][e] = TWO_HALVES ? fmaf(-zf[j][e & 1], sum_x_total[e >> 1], part[j][0][e] + part[j][1][e])
                                 : j == 0   ? fmaf(-zf[e >> 1][0], sum_x_total[e & 1], part[0][0][e] + part[0][1][e])
                                            : 0.f;
    }
    if (seg.segments > 1) {  // a partial tile: publish it; the last segment to arrive finishes the tile
        float4 *mine = reinterpret_cast<float4 *>(seg.slots + (size_t)seg.ordinal * kSlotFloats + threadIdx.x * 8);
        mine[0] = make_float4(r.acc[0][0][0], r.acc[0][0][1], r.acc[0][0][2], r.acc[0][0][3]);
        mine[1] = make_float4(r.acc[0][1][0], r.acc[0][1][1], r.acc[0][1][2], r.acc[0][1][3]);
        __threadfence();  // the slot is visible device-wide before the arrival is counted
        __syncthreads();
        __shared__ int finisher;
        if (threadIdx.x == 0) finisher = atomicAdd(seg.arrival, 1) == seg.segments - 1;
        __syncthreads();
        if (!finisher) return false;  // uniform over the CTA
        __threadfence();
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) r.acc[0][j][e] = 0.f;
        for (int o = seg.first_ordinal; o < seg.first_ordinal + seg.segments; o++) {  // fixed order: deterministic
            const float4 *slot = reinterpret_cast<const float4 *>(seg.slots + (size_t)o * kSlotFloats + threadIdx.x * 8);
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const float4 v = __ldcg(slot + j);  // L2: written by other SMs during this launch
                r.acc[0][j][0] += v.x, r.acc[0][j][1] += v.y, r.acc[0][j][2] += v.z, r.acc[0][j][3] += v.w;
            }
        }
    }
    if constexpr (TWO_HALVES) {
        epilogue<ID, T>(r, job, acts, y, ldy);
    } else if (warp_active) {  // C[n][token]: lane (g, t) holds columns col0 + g, col0 + 8 + g of tokens 2t, 2t + 1
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int col = col0 + 8 * half + g;
            const float cs = S::G < 0 ? __half2float(static_cast<const __half *>(p.scales)[col]) : 1.f;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int token = 2 * t + e;
                if (token < m)
                    y[(row0 + token) * ldy + p.out_col + col] = __bfloat16_as_ushort(__float2bfloat16_rn(r.acc[0][0][2 * half + e] * cs));
            }
        }
    }
    return true;
}

// One tile of scheme ID with tile shape T: a stages-deep cp.async pipeline over K, then the epilogue.
template <int ID, class T>
__device__ __noinline__ void run_tile(const TileJob job, const mx_cuda_activations &acts, uint16_t *y, int64_t ldy,
                         char *smem) {
    using S = Scheme<ID>;
    using L = Stage<ID, T>;
    constexpr int stages = L::stages;
    const mx_cuda_problem &p = *job.problem;
    const int k_tiles = (p.k + L::BK - 1) / L::BK;
    const uint32_t smem0 = smem_u32(smem);

    Accum<ID, T> r;
#pragma unroll
    for (int i = 0; i < T::MT; i++)
#pragma unroll
        for (int j = 0; j < T::NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                r.acc[i][j][e] = 0.f;
                r.part[i][j][e] = 0;
            }

    // Per-channel asym zero points of the lane's weight rows (g128 zeros come with each stage).
    int z_col[T::NT];
#pragma unroll
    for (int j = 0; j < T::NT; j++) {
        z_col[j] = 0;
        if constexpr (!S::sym && S::G < 0) {
            const int warp = threadIdx.x >> 5;
            const int n = job.n0 + (warp % T::WARPS_N) * T::WN + j * 8 + ((threadIdx.x & 31) >> 2);
            z_col[j] = n < p.n ? static_cast<const uint8_t *>(p.zeros)[n] : 0;
        }
    }

    // Prologue: stages - 1 stages in flight.
#pragma unroll
    for (int s = 0; s < stages - 1; s++) {
        if (s < k_tiles) load_stage<ID, T>(job, acts, s, smem0 + s * L::bytes);
        cp_async_commit();
    }
    // Main loop: wait for stage kt, refill the slot freed by stage kt - 1, compute stage kt.
    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<stages - 2>();
        __syncthreads();  // stage kt visible to all warps; every warp is done with stage kt - 1
        const int next = kt + stages - 1;
        if (next < k_tiles) load_stage<ID, T>(job, acts, next, smem0 + (next % stages) * L::bytes);
        cp_async_commit();
        const int slot = kt % stages;
        compute_stage<ID, T>(r, smem + slot * L::bytes, smem0 + slot * L::bytes, job, z_col);
    }
    cp_async_wait<0>();
    __syncthreads();  // the next tile may overwrite every slot
    epilogue<ID, T>(r, job, acts, y, ldy);
}

/* ======================================== wgmma fat tile (sm_90a) ========================================
 *
 * The prefill variant's fat tiles of w8a8 (int8 and fp8) run on Hopper's warpgroup MMA instead of mma.sync (which
 * tops out near 30 % of the tensor cores' throughput at these shapes, see bench/NOTES-gpu.md), on tiles of 128 rows
 * × kWgmmaBN = 256 columns (171 ops per byte copied into shared memory instead of 128 for 128 × 128; measured 7 %
 * faster than 128 × 128 with 6 stages).
 *
 *   warpgroup 0 (warps 0-3): rows 0-63, warpgroup 1 (warps 4-7): rows 64-127; each computes its 64 × 256 block
 *   with four wgmma.m64n256k32 per 128-byte K stage, both operands read from shared memory by descriptor.
 *   stage  = A [128 rows][128 B] + W [256 n][128 B], each in the 128-byte swizzle (wgmma.cuh), 48 KB;
 *            4 stages in the 220 KB budget.
 *   pipeline (all 8 warps load and compute; one barrier per stage; stages - 2 = 2 stages of loads in flight):
 *     wait for stage kt's cp.async, fence.proxy.async, __syncthreads
 *     -> refill the slot of stage kt - 2 with stage kt + stages - 2 (retired: every warp waited for it below)
 *     -> issue stage kt's 4 wgmma, commit, wait until only this group is in flight
 *   so the tensor cores work on stage kt while the warps already wait for stage kt + 1.  Each thread's source
 *   pointers for its 12 chunks per stage are computed once per tile: recomputing them per stage cost a third of
 *   the run time (measured 1043 -> 686 us, Qwen1.5-MoE gate_up at 8192 tokens).  A variant with 3 stages in flight
 *   (a second barrier per stage) measured the same or slower; the remaining gap to the tensor cores' peak (32 %
 *   tensor-pipe activity under Nsight Compute, warps stalled on shared-memory and cp.async waits) needs a TMA
 *   producer warp with mbarriers instead of every warp issuing cp.async (bench/NOTES-gpu.md).
 *
 * int8: the weight codes are u8 with the implicit zero point 128 and go to wgmma as unsigned (s8 × u8 -> s32):
 * Σ x·(u - 128) = Σ x·u - 128·Σ x.  The row sums Σ x come with the activations (mx_cuda_activations.d_rowsum_int8,
 * written by the quantizing gather / act-mul kernels) and ride into shared memory with the row scales; without them
 * the tile takes them from its A stages on the side (2 threads per row, dp4a), which measured 17-35 % of the int8
 * tile's time (shared-memory reads beside the wgmma operand reads: without the sums it ran at the fp8 tile's
 * speed).  Exact in int32 (wrap-around cancels), then × s[n] × s_x[row] as in run_tile.
 * fp8 (e4m3 × e4m3 -> f32): no correction.
 *
 * Epilogue: the tile's 256 column scales and 128 row scales ride into shared memory with stage 0's copies, and
 * the scaled bf16 tile is staged in the (then idle) stage buffers, rows padded to 528 bytes so that the fragment
 * writes of a warp hit 32 different banks, and written out as whole 16-byte row chunks (a warp writes 512
 * contiguous bytes).  Reading the scales from global memory inside the fragment loop and storing the fragments'
 * 4-byte pieces directly made the epilogue about half of the tile's time (Nsight Compute source counters: each
 * of the 32 column steps waited for its scale loads; Qwen1.5-MoE gate_up at 8192 tokens, fp8). */
constexpr int kWgmmaBN = 256;  // output columns of a wgmma fat tile
static_assert(kWgmmaBN % kBN == 0 && kWgmmaBN <= 256, "a whole number of kBN tiles, one wgmma n256");

template <int ID, class V>
constexpr bool kFatWgmma = V::Fat::BM == 128 && (ID == MX_SCHEME_W8A8_GN1_SYM || ID == MX_SCHEME_W8A8_GN1_SYM_FP8);

template <int ID, class T>
__device__ __forceinline__ void run_fat_wgmma(const TileJob &job, const mx_cuda_activations &acts, uint16_t *y,
                                           int64_t ldy, char *smem) {
    using S = Scheme<ID>;
    static_assert(T::BM == 128 && S::W == 8 && S::G < 0, "128-row tiles of per-channel w8a8");
    constexpr int BN = kWgmmaBN;
    constexpr bool is_int = S::mma == MmaKind::S8;
    constexpr int BK = 128, a_bytes = 128 * BK, stage_bytes = a_bytes + BN * BK;
    constexpr int rowsum_bytes = 128 * 4, col_scale_bytes = BN * 2, row_scale_bytes = 128 * 4;
    constexpr int epilogue_bytes = rowsum_bytes + col_scale_bytes + row_scale_bytes;
    constexpr int stages = cmin(8, (T::smem - 1024 - epilogue_bytes) / stage_bytes);
    static_assert(stages >= 3, "the pipeline keeps stages - 2 loads and one wgmma group in flight");
    constexpr int out_row_bytes = BN * 2 + 16;  // staged output rows: +16 B, so 8 rows start in 8 bank quads
    static_assert(128 * out_row_bytes <= stages * stage_bytes, "the staged output tile fits in the stage buffers");
    const mx_cuda_problem &p = *job.problem;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wg = warp >> 2, wl = warp & 3;
    const int k_tiles = (p.k + BK - 1) / BK;
    const uint32_t raw = smem_u32(smem);
    const uint32_t base = (raw + 1023u) & ~1023u;  // the 128-byte swizzle is address-based: 1024-aligned tiles
    char *base_ptr = smem + (base - raw);
    // after the stages: the epilogue's per-row code sums (int8), column scales and row scales
    int32_t *rowsum_smem = reinterpret_cast<int32_t *>(base_ptr + stages * stage_bytes);
    const __half2 *cs_smem = reinterpret_cast<const __half2 *>(base_ptr + stages * stage_bytes + rowsum_bytes);
    const float *rs_smem =
        reinterpret_cast<const float *>(base_ptr + stages * stage_bytes + rowsum_bytes + col_scale_bytes);
    const char *a = act_base<ID>(acts);
    const char *w = static_cast<const char *>(p.qweight);
    const float *row_scale = act_row_scale<ID>(acts);
    // int8: the rows' code sums, when the activations come with them (gather / act-mul quantization writes them)
    const int32_t *const rowsum_given = is_int ? acts.d_rowsum_int8 : nullptr;

    // Copy assignment, fixed for the whole tile: thread tid moves 16-byte chunk tid % 8 of rows tid / 8 + 32i of the
    // stage (rows 0-127: A, 128-383: W), so its source pointers and row checks are computed once per tile.
    constexpr int copies = (128 + BN) / 32;
    const int ch = tid & 7, row_q = tid >> 3;
    const uint32_t dst0 = row_q * 128 + ((ch ^ (row_q & 7)) << 4);  // + 4096 i: the swizzle phase repeats every 8 rows
    const char *src[copies];
    uint32_t valid_rows = 0;
#pragma unroll
    for (int i = 0; i < copies; i++) {
        const int r = row_q + 32 * i;
        const bool is_a = r < 128;
        const bool ok = is_a ? r < job.m_rows : job.n0 + r - 128 < p.n;
        valid_rows |= (ok ? 1u : 0u) << i;
        src[i] = !ok ? a : is_a ? a + (job.row0 + r) * acts.ld + ch * 16 : w + (int64_t)(job.n0 + r - 128) * p.k + ch * 16;
    }
    auto load = [&](int kt) {
        const uint32_t slot = base + (kt % stages) * stage_bytes + dst0;
        const int k0 = kt * BK;
        const bool k_ok = k0 + ch * 16 < p.k;  // k % 32 == 0: a chunk is all in or all out
#pragma unroll
        for (int i = 0; i < copies; i++) {
            const bool ok = k_ok && ((valid_rows >> i) & 1u);
            cp_async16(slot + 4096 * i, ok ? src[i] + k0 : a, ok ? 16 : 0);
        }
    };

    typename std::conditional<is_int, int32_t, float>::type acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) acc[i] = 0;
    int32_t row_sum = 0;  // Σ x over this thread's half of row tid / 2 (int8 only)

    // The epilogue's scales join stage 0's group: visible after the first stage's barrier (k_tiles >= 1).
    if (tid < col_scale_bytes / 16) {  // 8 columns per chunk; n % 16 == 0: a chunk is all in or all out
        const bool ok = job.n0 + 8 * tid < p.n;
        cp_async16(smem_u32(cs_smem) + 16 * tid,
                   ok ? static_cast<const void *>(static_cast<const __half *>(p.scales) + job.n0 + 8 * tid) : a,
                   ok ? 16 : 0);
    } else if (tid < col_scale_bytes / 16 + 128) {
        const int r = tid - col_scale_bytes / 16;
        const bool ok = r < job.m_rows;
        cp_async4(smem_u32(rs_smem + r), ok ? row_scale + job.row0 + r : row_scale, ok ? 4 : 0);
        if (rowsum_given)
            cp_async4(smem_u32(rowsum_smem + r), ok ? rowsum_given + job.row0 + r : rowsum_given, ok ? 4 : 0);
    }
#pragma unroll
    for (int s = 0; s < stages - 2; s++) {
        if (s < k_tiles) load(s);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<stages - 3>();
        fence_proxy_async_shared();
        __syncthreads();  // stage kt visible to every warp (and to the async proxy); stage kt - 2 retired in all
        if (kt + stages - 2 < k_tiles) load(kt + stages - 2);  // into the slot of stage kt - 2
        cp_async_commit();
        const uint32_t slot = base + (kt % stages) * stage_bytes;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 32; kk++) {
            const uint64_t da = wgmma_desc_sw128(slot + wg * 64 * 128 + kk * 32);
            const uint64_t db = wgmma_desc_sw128(slot + a_bytes + kk * 32);
            if constexpr (is_int) wgmma_m64n256k32_s8u8(acc, da, db);
            else wgmma_m64n256k32_e4m3(acc, da, db);
        }
        wgmma_commit();
        // this thread's half row of the stage's Σ x, while the tensor cores work on the same stage (both only read it)
        if (is_int && !rowsum_given) {
            const uint4 *row = reinterpret_cast<const uint4 *>(base_ptr + (kt % stages) * stage_bytes +
                                                               (tid >> 1) * 128 + (tid & 1) * 64);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint4 v = row[i];
                row_sum = __dp4a(static_cast<int>(v.x), 0x01010101, row_sum);
                row_sum = __dp4a(static_cast<int>(v.y), 0x01010101, row_sum);
                row_sum = __dp4a(static_cast<int>(v.z), 0x01010101, row_sum);
                row_sum = __dp4a(static_cast<int>(v.w), 0x01010101, row_sum);
            }
        }
        wgmma_wait<1>();  // stage kt - 1 retired in this warp; stage kt stays queued on the tensor cores
    }
    wgmma_wait<0>();
    cp_async_wait<0>();
    if (is_int && !rowsum_given) {
        row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
        if ((tid & 1) == 0) rowsum_smem[tid >> 1] = row_sum;
    }
    __syncthreads();  // row sums visible; every warp is done with the stages: they now hold the output tile

    // Scale into bf16 and stage the tile in shared memory: thread (wg, wl, g, t) holds rows 64wg + 16wl + g (+ 8)
    // and columns 8j + 2t (+ 1).
    float row_factor[2];
    int32_t correction[2] = {0, 0};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int row = 64 * wg + 16 * wl + g + 8 * h;
        row_factor[h] = rs_smem[row];
        if constexpr (is_int) correction[h] = 128 * rowsum_smem[row];
    }
    char *out_row[2];
#pragma unroll
    for (int h = 0; h < 2; h++) out_row[h] = base_ptr + (64 * wg + 16 * wl + g + 8 * h) * out_row_bytes + 4 * t;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const float2 cs = __half22float2(cs_smem[4 * j + t]);  // columns 8j + 2t, 8j + 2t + 1
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float v0, v1;
            if constexpr (is_int) {
                v0 = __int2float_rn(acc[4 * j + 2 * h] - correction[h]);
                v1 = __int2float_rn(acc[4 * j + 2 * h + 1] - correction[h]);
            } else {
                v0 = acc[4 * j + 2 * h];
                v1 = acc[4 * j + 2 * h + 1];
            }
            *reinterpret_cast<__nv_bfloat162 *>(out_row[h] + 16 * j) =
                __floats2bfloat162_rn(v0 * cs.x * row_factor[h], v1 * cs.y * row_factor[h]);
        }
    }
    __syncthreads();  // the staged tile is complete

    // Write out whole 16-byte row chunks: 32 chunks per 256-column row, a warp covers one row per instruction.
    // y rows are 16-byte aligned when y is and ldy % 8 == 0 (out_col % 16 == 0 always); else 4-byte pieces.
    const bool vec16 = ((reinterpret_cast<uintptr_t>(y) & 15u) == 0) && (ldy % 8 == 0);
    const int chunks_n = min(BN, p.n - job.n0) / 8;  // n % 16 == 0: whole chunks
    for (int id = tid; id < 128 * (BN / 8); id += kThreads) {
        const int row = id / (BN / 8), chunk = id % (BN / 8);
        if (row >= job.m_rows || chunk >= chunks_n) continue;
        const uint4 v = *reinterpret_cast<const uint4 *>(base_ptr + row * out_row_bytes + 16 * chunk);
        uint16_t *dst = y + (job.row0 + row) * ldy + p.out_col + job.n0 + 8 * chunk;
        if (vec16) {
            *reinterpret_cast<uint4 *>(dst) = v;
        } else {
            uint32_t *dst4 = reinterpret_cast<uint32_t *>(dst);
            dst4[0] = v.x, dst4[1] = v.y, dst4[2] = v.z, dst4[3] = v.w;
        }
    }
    __syncthreads();  // every thread is done reading the staged tile before the next tile's copies land there
}

// A decode stream tile, or one segment of it (the schedule splits only problems with stream_chunk_k > 0).
// Whether this call stored the tile (a whole tile, or the last segment of a split one to arrive).
template <int ID, class V>
__device__ __forceinline__ bool run_stream_segment(const TileJob &job, const StreamSegment &seg,
                                                   const mx_cuda_activations &acts, uint16_t *y, int64_t ldy,
                                                   char *smem) {
    if constexpr (StreamFacts<ID>::enabled && StreamFacts<ID>::smem <= V::smem) {
        // rows 8..15 of the mma exist only above 8 rows: else their fragments are constant zeros
        if (job.m_rows > 8) return run_thin_stream<ID, typename V::Thin, true>(job, seg, acts, y, ldy, smem);
        return run_thin_stream<ID, typename V::Thin, false>(job, seg, acts, y, ldy, smem);
    }
    return false;  // unreachable: only stream schemes are split
}

template <int ID, class V>
__device__ __forceinline__ void run_tile_any(bool fat, const TileJob &job, const mx_cuda_activations &acts,
                                             uint16_t *y, int64_t ldy, char *smem) {
    if (fat) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (kFatWgmma<ID, V>) run_fat_wgmma<ID, typename V::Fat>(job, acts, y, ldy, smem);
        else
#endif
            run_tile<ID, typename V::Fat>(job, acts, y, ldy, smem);
    } else if constexpr (StreamFacts<ID>::enabled && StreamFacts<ID>::smem <= V::smem) {
        StreamSegment whole{};
        whole.c_end = (job.problem->k + StreamFacts<ID>::CK - 1) / StreamFacts<ID>::CK;
        whole.segments = 1;
        run_stream_segment<ID, V>(job, whole, acts, y, ldy, smem);
    } else {
        run_tile<ID, typename V::Thin>(job, acts, y, ldy, smem);
    }
}

// k per chunk of the decode stream micro-kernel for this scheme, 0 where its thin tiles take run_tile (not split).
__device__ __forceinline__ int stream_chunk_k(int scheme_id) {
    switch (scheme_id) {
#define MX_CASE(ID) case ID: return StreamFacts<ID>::enabled ? StreamFacts<ID>::CK : 0;
        MX_FOR_EACH_SCHEME(MX_CASE)
#undef MX_CASE
    default: return 0;
    }
}

/* ======================================== kernels ======================================== */

// The persistent GEMM: claim tiles heaviest-first until the list is exhausted, then the pieces of the split tail.
// Thread 0 claims a CTA's next id as it starts the current one, so the atomic's round trip never stalls the CTA; the
// tile -> problem lookup is a binary search over tile_start, cached in shared memory when the table is small.
constexpr int kCachedTileStarts = 256;

/* Two stages (the decode layer, mx_cuda_gemm_fused_layer): problems [0, n_stage0) are the gate_up problems
 * (activations x -> y = [gate | up], I columns each) and the rest the down problems, whose bf16 activations
 * h = SiLU(gate)·up this launch writes itself, expert group by expert group.  The schedule ranks every stage-0
 * problem before every stage-1 one, so an expert's down tiles start while the last gate_up tiles of other experts
 * still run (in two launches the second waited for the first one's last tile, and the act·up kernel sat between).
 * A stored stage-0 tile is counted for its group (one acq_rel atomic of thread 0 after the CTA's barrier: the
 * release covers every thread's stores of the tile); the CTA whose count completes the group writes the group's h
 * rows (SiLU(gate)·up, the act·up kernel's arithmetic: bf16x8.cuh) and releases the group's flag, which a stage-1
 * tile acquires before it starts.  The schedule kernel derives the counts from the table, so a table that misses
 * columns cannot hang the launch.  (h in 128-column blocks, each written by the CTA completing its gate and up
 * tiles, cost every gate_up tile a count and half of them an h block: the layer ran 1-20 % slower, session 10.)
 * No deadlock: a tile only ever waits for tiles with smaller claim ids, which CTAs that are running already hold
 * (claims are handed out in order, and a CTA claims only after finishing its previous tile); a piece of the split
 * tail finishes its stage-0 segments before it reaches a stage-1 one. */
struct StageIO {  // the second stage's inputs and output (the first stage's are the kernel's acts, y, ldy)
    mx_cuda_activations acts;
    uint16_t *y;
    int64_t ldy;
};
struct LaunchArgs {  // the host's description of a launch
    int32_t n_problems;
    int32_t n_stage0;          // == n_problems: a one-stage launch
    int32_t formats_mask;      // activation formats any problem reads (fp8 needs sm_89+)
    mx_cuda_activations acts;  // the first stage's inputs and output
    uint16_t *y;
    int64_t ldy;
    StageIO stage1;            // two stages: the second's (h, down)
    int64_t act_I;             // two stages: the intermediate size
};

// h rows [row0, row0 + rows) = bf16(SiLU(y[:, :I]) · y[:, I:2I]) (all threads of the CTA).  The gate_up outputs
// were stored by other CTAs in this launch: read through L2 (.cg), never from this SM's L1.  Each thread issues
// the loads of 4 units before using any (one round trip per 4: Mixtral's I = 14336 is 1792 units per row).
__device__ __noinline__ void act_mul_rows(const uint16_t *y, int64_t ldy, uint16_t *h, int64_t ld_h, int64_t I,
                                          int64_t row0, int rows) {
    constexpr int U = 4;
    const int64_t units = I / kChunk, total = rows * units;
    for (int64_t base = threadIdx.x; base < total; base += U * kThreads) {
        uint4 g[U], u[U];
#pragma unroll
        for (int v = 0; v < U; v++) {
            const int64_t i = base + v * kThreads;
            g[v] = u[v] = make_uint4(0, 0, 0, 0);
            if (i < total) {
                const uint16_t *src = y + (row0 + i / units) * ldy + (i % units) * kChunk;
                g[v] = __ldcg(reinterpret_cast<const uint4 *>(src));
                u[v] = __ldcg(reinterpret_cast<const uint4 *>(src + I));
            }
        }
#pragma unroll
        for (int v = 0; v < U; v++) {
            const int64_t i = base + v * kThreads;
            if (i >= total) break;
            float x[kChunk];
            silu_mul8(g[v], u[v], x);
            *reinterpret_cast<uint4 *>(h + (row0 + i / units) * ld_h + (i % units) * kChunk) = pack8(x);
        }
    }
}

template <class V>
__global__ void __launch_bounds__(kThreads, V::min_blocks)
    fused_grouped_gemm_kernel(const mx_cuda_problem *__restrict__ problems, Schedule sched,
                              const mx_cuda_activations acts, uint16_t *__restrict__ y, int64_t ldy,
                              int32_t n_problems, int32_t n_stage0, const StageIO stage1, int64_t act_I) {
    extern __shared__ __align__(128) char smem[];
    __shared__ int claimed;
    __shared__ int tile_start_cache[kCachedTileStarts + 1];
    // Each stage's activation pointers, which the tile functions take by reference: a reference to a kernel
    // parameter would make every thread copy the struct to local memory.
    __shared__ mx_cuda_activations stage_acts[2];
    if (threadIdx.x == 0) stage_acts[0] = acts, stage_acts[1] = stage1.acts;
    grid_dependency_wait();  // launched early (programmatic dependent launch): wait for the schedule kernel
    const int total = *sched.total, tail_start = *sched.tail_start;
    const int pieces = *sched.pieces, tail_chunks = *sched.tail_chunks;
    const bool cached = n_problems <= kCachedTileStarts;
    if (cached)
        for (int i = threadIdx.x; i <= n_problems; i += kThreads) tile_start_cache[i] = sched.tile_start[i];
    if (threadIdx.x == 0) claimed = atomicAdd(sched.counter, 1);
    __syncthreads();
    auto tile_start = [&](int rank) { return cached ? tile_start_cache[rank] : sched.tile_start[rank]; };
    // The TileJob of tile `tile` of the problem at `rank`.
    auto job_of = [&](int rank, int tile) {
        const TileGroup &grp = sched.groups[rank];
        const int local = tile - tile_start(rank);
        const int bm = grp.fat ? V::Fat::BM : V::Thin::BM;
        const int m_tile = local / grp.tiles_n, n_tile = local % grp.tiles_n;
        TileJob job;
        job.problem = &grp.copy;
        job.row0 = grp.row0 + (int64_t)m_tile * bm;
        job.m_rows = min(bm, grp.rows - m_tile * bm);
        job.n0 = n_tile * grp.bn;
        return job;
    };
    // The last rank r with start(r) <= x: a binary search over the n_problems + 1 non-decreasing entries of a prefix
    // sum in rank order (tile_start for a tile id, chunk_start for a tail chunk).
    auto last_rank_at_most = [&](auto start, int x) {
        int lo = 0, hi = n_problems;
        while (hi - lo > 1) {
            const int mid = (lo + hi) >> 1;
            if (start(mid) <= x) lo = mid;
            else hi = mid;
        }
        return lo;
    };
    // The piece that holds tail chunk x: the last j with floor(jQ / P) <= x.
    auto piece_of = [&](int x) { return (int)(((int64_t)(x + 1) * pieces - 1) / tail_chunks); };
    // Two stages (see above), around each tile or segment of the problem at `rank`: a stage-1 one first waits for
    // its group's h; a stored stage-0 one is counted, and the CTA storing a group's last one writes the group's h.
    const bool two_stage = n_stage0 < n_problems;
    __shared__ int writes_h;
    auto stage_of = [&](int rank) { return two_stage && sched.groups[rank].problem >= n_stage0 ? 1 : 0; };
    auto stage1_wait = [&](int rank) {
        if (threadIdx.x == 0) {
            const int32_t *ready = sched.group_ready + sched.groups[rank].copy.expert;
            while (ld_acquire_gpu(ready) == 0) __nanosleep(64);
        }
        __syncthreads();  // h of the group is visible to the whole CTA (the acquire, then the barrier)
    };
    auto stage0_stored = [&](int rank) {
        const TileGroup &grp = sched.groups[rank];
        const int group = grp.copy.expert;
        __syncthreads();  // every thread's stores of the tile precede thread 0's release below
        if (threadIdx.x == 0)
            writes_h = atom_add_acq_rel_gpu(sched.group_done + group, 1) == sched.group_expected[group] - 1;
        __syncthreads();
        if (!writes_h) return;  // uniform over the CTA
        act_mul_rows(y, ldy, const_cast<uint16_t *>(stage1.acts.d_bf16), stage1.acts.ld, act_I, grp.row0, grp.rows);
        __syncthreads();
        if (threadIdx.x == 0) st_release_gpu(sched.group_ready + group, 1);
    };
    int tile = claimed;
    while (tile < total) {
        int next = 0;
        if (threadIdx.x == 0) next = atomicAdd(sched.counter, 1);  // awaited only after this tile

        if (tile < tail_start) {  // a whole tile
            const int rank = last_rank_at_most(tile_start, tile);
            const TileJob job = job_of(rank, tile);
            const bool fat = sched.groups[rank].fat != 0;
            const int stage = stage_of(rank);
            if (stage) stage1_wait(rank);
            uint16_t *const out = stage ? stage1.y : y;
            const int64_t ld_out = stage ? stage1.ldy : ldy;
            switch (job.problem->scheme_id) {  // the fixed instantiation list: every candidate scheme × both tiles
#define MX_CASE(ID) case ID: run_tile_any<ID, V>(fat, job, stage_acts[stage], out, ld_out, smem); break;
                MX_FOR_EACH_SCHEME(MX_CASE)
#undef MX_CASE
            default: break;  // unreachable: the host checked the table
            }
            if (two_stage && !stage) stage0_stored(rank);
        } else {  // piece j of the split tail: tail chunks [jQ/P, (j+1)Q/P), one segment per tile it touches
            const int j = tile - tail_start;
            const int x_end = (int)((int64_t)(j + 1) * tail_chunks / pieces);
            for (int x = (int)((int64_t)j * tail_chunks / pieces); x < x_end;) {
                const int rank = last_rank_at_most([&](int r) { return sched.chunk_start[r]; }, x);
                const int chunks = sched.groups[rank].chunks;
                const int rel = x - sched.chunk_start[rank];  // tail chunks of this rank before x
                const int tail_tile = max(tile_start(rank), tail_start) + rel / chunks;
                const int tile_x0 = x - rel % chunks;  // the tile's first tail chunk
                const int seg_end = min(x_end, tile_x0 + chunks);
                const int tt = tail_tile - tail_start;
                const int j0 = piece_of(tile_x0);
                StreamSegment seg;
                seg.c_begin = x - tile_x0;
                seg.c_end = seg_end - tile_x0;
                seg.segments = piece_of(tile_x0 + chunks - 1) - j0 + 1;
                seg.ordinal = j + tt;
                seg.first_ordinal = j0 + tt;
                seg.arrival = sched.arrivals + tt;
                seg.slots = sched.slots;
                const TileJob job = job_of(rank, tail_tile);
                const int stage = stage_of(rank);
                if (stage) stage1_wait(rank);
                uint16_t *const out = stage ? stage1.y : y;
                const int64_t ld_out = stage ? stage1.ldy : ldy;
                bool stored = false;
                switch (job.problem->scheme_id) {
#define MX_CASE(ID) case ID: stored = run_stream_segment<ID, V>(job, seg, stage_acts[stage], out, ld_out, smem); break;
                    MX_FOR_EACH_SCHEME(MX_CASE)
#undef MX_CASE
                default: break;
                }
                if (two_stage && !stage && stored) stage0_stored(rank);
                x = seg_end;
            }
        }
        // Every tile function ends with a __syncthreads after which no thread reads `claimed`: safe to overwrite.
        if (threadIdx.x == 0) claimed = next;
        __syncthreads();
        tile = claimed;
    }
}

// Output columns of a tile of this scheme: the wgmma fat tiles of the prefill variant (fat_bm == 128) are wider.
// Must agree with kFatWgmma and the #if in run_tile_any (same compilation target).
__device__ __forceinline__ int tile_bn(int scheme_id, bool fat, int fat_bm) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (fat && fat_bm == 128 && (scheme_id == MX_SCHEME_W8A8_GN1_SYM || scheme_id == MX_SCHEME_W8A8_GN1_SYM_FP8))
        return kWgmmaBN;
#else
    (void)scheme_id, (void)fat, (void)fat_bm;
#endif
    return kBN;
}

// Predicted time of one tile in ns on one SM (sorting key only): bytes at an SM's share of HBM + mma time.
__device__ float tile_cost_ns(const mx_cuda_problem &p, int bm, int bn) {
    int w_bits = 16, a_bits = 16;
    bool int_mma = false;
    switch (p.scheme_id) {
    case MX_SCHEME_W16A16: break;
    case MX_SCHEME_W8A16_GN1_SYM: w_bits = 8; break;
    case MX_SCHEME_W4A16_GN1_ASYM:
    case MX_SCHEME_W4A16_G128_ASYM: w_bits = 4; break;
    case MX_SCHEME_W3A16_G128_ASYM: w_bits = 3; break;
    case MX_SCHEME_W2A16_G128_ASYM: w_bits = 2; break;
    case MX_SCHEME_W8A8_GN1_SYM:
    case MX_SCHEME_W8A8_GN1_SYM_FP8: w_bits = 8; a_bits = 8; int_mma = true; break;
    case MX_SCHEME_W4A8_GN1_SYM:
    case MX_SCHEME_W4A8_G128_ASYM: w_bits = 4; a_bits = 8; int_mma = true; break;
    default: w_bits = 4; a_bits = 4; int_mma = true; break;
    }
    const float bytes = (float)p.k * (bn * w_bits + bm * a_bits) / 8.f;
    const float flops = 2.f * bm * bn * p.k;
    const float bytes_per_ns = 23.f;                          // ~3 TB/s over 132 SMs
    const float flops_per_ns = int_mma ? 7000.f : 3500.f;     // mma.sync s8 / bf16 per SM, ~70% of peak
    return bytes / bytes_per_ns + flops / flops_per_ns;
}

// One block: rows per problem from the device row offsets, rank by per-tile cost, prefix-sum the tile counts,
// lay out the split tail (see "Split tail"), reset the claim counter and the tail's arrival counters.
// n_problems <= 1024 = blockDim.x.  fat_bm: the launched variant's fat tile rows; ctas: its grid (0: split nothing).
__global__ void __launch_bounds__(1024)
    schedule_kernel(const mx_cuda_problem *__restrict__ problems, int32_t n_problems, int32_t n_stage0,
                    int32_t n_groups, const int32_t *__restrict__ row_offsets, int64_t max_rows, int fat_bm,
                    int ctas, int split_cost, Schedule sched) {
    __shared__ float cost[MX_CUDA_GEMM_MAX_PROBLEMS];
    __shared__ int tiles_of_rank[MX_CUDA_GEMM_MAX_PROBLEMS];
    __shared__ int chunks_of_rank[MX_CUDA_GEMM_MAX_PROBLEMS];
    __shared__ int rank_of[MX_CUDA_GEMM_MAX_PROBLEMS];
    __shared__ int warp_sums[32];
    __shared__ int last_unsplit_rank, split_from, max_tail_tile_chunks;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    __shared__ int stage0_tiles[kMaxStageGroups];  // two stages: stage-0 tiles per expert group
    const bool two_stage = n_stage0 < n_problems;
    if (two_stage)
        for (int g = tid; g < n_groups; g += blockDim.x) stage0_tiles[g] = 0;
    launch_dependents();  // let the GEMM's CTAs start now; they wait in grid_dependency_wait for our results
    if (tid == 0) last_unsplit_rank = -1, split_from = 0, max_tail_tile_chunks = 0;
    TileGroup mine{};
    int my_tiles = 0;
    if (tid < n_problems) {
        const mx_cuda_problem &p = problems[tid];
        const int64_t lo = clamp64(row_offsets[p.expert], 0, max_rows);
        const int64_t hi = clamp64(row_offsets[p.expert + 1], lo, max_rows);
        mine.problem = tid;
        mine.rows = (int32_t)(hi - lo);
        mine.row0 = lo;
        mine.fat = mine.rows > kThinMaxRows;
        const int bm = mine.fat ? fat_bm : kThinMaxRows;
        mine.bn = tile_bn(p.scheme_id, mine.fat != 0, fat_bm);
        mine.tiles_n = (p.n + mine.bn - 1) / mine.bn;
        const int chunk_k = mine.fat ? 0 : stream_chunk_k(p.scheme_id);
        mine.chunks = chunk_k > 0 ? (p.k + chunk_k - 1) / chunk_k : 0;
        my_tiles = (mine.rows + bm - 1) / bm * mine.tiles_n;
        cost[tid] = my_tiles > 0 ? tile_cost_ns(p, bm, mine.bn) : 0.f;
    }
    __syncthreads();  // (also orders the zeroing of stage0_tiles before the counts)
    if (two_stage && tid < n_stage0 && my_tiles > 0) atomicAdd(&stage0_tiles[problems[tid].expert], my_tiles);
    // rank[p] = #{q : cost_q > cost_p, or equal and q < p}: one warp per problem, its lanes compare 32 q at a time
    // (ballot + popc), ~n/32 steps per problem instead of n per thread.  Two stages: every stage-0 problem first.
    for (int pp = warp; pp < n_problems; pp += blockDim.x / 32) {
        const float c = cost[pp];
        const bool p_first = pp < n_stage0;
        int r = 0;
        for (int q0 = 0; q0 < n_problems; q0 += 32) {
            const int q = q0 + lane;
            const bool q_first = q < n_stage0;
            const bool before = q < n_problems && (q_first != p_first ? q_first
                                                    : cost[q] > c || (cost[q] == c && q < pp));
            r += __popc(__ballot_sync(0xffffffffu, before));
        }
        if (lane == 0) rank_of[pp] = r;
    }
    __syncthreads();
    if (tid < n_problems) {
        const int rank = rank_of[tid];
        TileGroup &out = sched.groups[rank];
        out.problem = mine.problem, out.fat = mine.fat, out.rows = mine.rows, out.tiles_n = mine.tiles_n;
        out.row0 = mine.row0, out.bn = mine.bn, out.chunks = mine.chunks;
        out.copy = problems[tid];  // re-read (cached) rather than held in registers across the ranking
        tiles_of_rank[rank] = my_tiles;
        chunks_of_rank[rank] = mine.chunks;
        if (my_tiles > 0 && mine.chunks == 0) atomicMax(&last_unsplit_rank, rank);
    }
    if (two_stage)  // (stage0_tiles complete: synced after the ranking) the launch before ours has finished
        for (int g = tid; g < n_groups; g += blockDim.x) {
            sched.group_expected[g] = stage0_tiles[g];
            sched.group_done[g] = 0;
            sched.group_ready[g] = stage0_tiles[g] == 0;  // no gate_up tiles (a table missing them): never wait
        }
    __syncthreads();
    // Exclusive prefix sum of tiles_of_rank (thread tid = rank tid from here on).
    const int rank_tiles = tid < n_problems ? tiles_of_rank[tid] : 0;
    const int tiles_end = block_inclusive_sum(rank_tiles, warp_sums);
    const int total_tiles = warp_sums[31];
    if (tid < n_problems) sched.tile_start[tid + 1] = tiles_end;
    if (tid == last_unsplit_rank) split_from = tiles_end;  // only the ranks after it may be split
    __syncthreads();
    // Whole tiles for every full round but the last; the last full round and the partial one after it (the
    // "stretch": C + total % C tiles, or all of them below 2C) are cut into one piece per CTA, from the first tile
    // after the last problem that cannot be split.  Cutting only the partial round measured slower (Qwen1.5-MoE
    // gate_up at 16 tokens, 550 tiles on 264 CTAs: 66.9 -> 71.4 µs: its 22 tiles became 264 pieces of < 1 chunk).
    const int stretch_start = ctas > 0 ? max(0, total_tiles / ctas - 1) * ctas : total_tiles;
    const int tail_start = max(split_from, stretch_start);
    const int tiles_begin = tiles_end - rank_tiles;
    const int rank_tail_tiles = max(0, tiles_end - max(tiles_begin, tail_start));
    const int rank_chunks = tid < n_problems ? chunks_of_rank[tid] : 0;
    if (rank_tail_tiles > 0) atomicMax(&max_tail_tile_chunks, rank_chunks);
    const int tail_chunks_end = block_inclusive_sum(rank_tail_tiles * rank_chunks, warp_sums);  // syncs the block
    const int tail_chunks = warp_sums[31];
    if (tid < n_problems) sched.chunk_start[tid + 1] = tail_chunks_end;
    for (int i = tid; i < total_tiles - tail_start; i += blockDim.x) sched.arrivals[i] = 0;  // < 2 ctas tiles
    // One piece per CTA that no whole tile of the stretch keeps busy: the claims before tail_start take the whole
    // tiles, the next ones the pieces, so every CTA makes one claim in the stretch and no piece queues behind a
    // whole tile (cutting the tail into `ctas` pieces did, and measured slower than no split on Mixtral's mixed
    // decode plans: down projection at 16 tokens 244 -> 276 µs).
    const int pieces = min(ctas - (tail_start - stretch_start), tail_chunks), tail_tiles = total_tiles - tail_start;
    // Worth it only when a piece is much shorter than what the stretch takes unsplit (its rounds of average tail
    // tiles, at least its longest tile): a segment pays a tile start (first chunks' memory latency, the activation
    // slice: 4-7 µs per tile start under load, NOTES session 8) and a split tile a finish (slots written, fenced,
    // summed), together ~split_cost chunks of streaming, and the predicted time must drop by a fifth at least
    // (measured on the H100: splitting the 6-8-chunk tiles of Qwen1.5-MoE / DeepSeek-V2-Lite at 1 token lost up to
    // 25 %, the 56-chunk tiles of Mixtral's down projection at 1 and 4 tokens ran 1.6x and 1.3x faster, and at 16
    // tokens, pieces of 48 + 6 chunks for tiles of 56, the layer ran ~10 % slower; a launch mixing 16 tiles of 22
    // chunks into 400 of 6 ran 85 -> 58 µs).
    const int64_t stretch_rounds = (total_tiles - stretch_start + ctas - 1) / max(ctas, 1);
    const int64_t unsplit = max(stretch_rounds * tail_chunks, (int64_t)max_tail_tile_chunks * tail_tiles);
    const int64_t piece_cost = pieces > 0 ? (tail_chunks + pieces - 1) / pieces + split_cost : 0;
    const bool worth_it = pieces > 0 && 5 * piece_cost * tail_tiles <= 4 * unsplit;
    if (tid == 0) {
        sched.tile_start[0] = 0;
        sched.chunk_start[0] = 0;
        *sched.counter = 0;
        *sched.tail_start = worth_it ? tail_start : total_tiles;
        *sched.pieces = worth_it ? pieces : 0;
        *sched.tail_chunks = worth_it ? tail_chunks : 0;
        *sched.total = worth_it ? tail_start + pieces : total_tiles;
    }
}

}  // namespace mx

/* ======================================== host API (mx_cuda.h) ======================================== */

static int act_format_of(int scheme_id) {
    const mx_scheme *s = &mx_scheme_table[scheme_id].scheme;
    if (s->a_bits == 16) return MX_CUDA_ACT_BF16;
    if (s->a_bits == 4) return MX_CUDA_ACT_INT4;
    return s->fmt == MX_FMT_FP8_E4M3 ? MX_CUDA_ACT_FP8 : MX_CUDA_ACT_INT8;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

extern "C" enum mx_status mx_cuda_gemm_problems_check(const mx_cuda_problem *problems, int32_t n_problems,
                                                      mx_cuda_problems_info *info, mx_error *err) {
    if (!info) return mx_error_set(err, MX_ERR_INVALID_ARG, "info must not be NULL");
    if (n_problems < 0 || n_problems > MX_CUDA_GEMM_MAX_PROBLEMS)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "n_problems=%d must be in [0, %d]", n_problems,
                            MX_CUDA_GEMM_MAX_PROBLEMS);
    if (n_problems > 0 && !problems) return mx_error_set(err, MX_ERR_INVALID_ARG, "problems must not be NULL");
    mx_cuda_problems_info out = {0, 0, -1, n_problems, 0};
    for (int32_t i = 0; i < n_problems; i++) {
        const mx_cuda_problem *p = &problems[i];
        if (p->scheme_id < 0 || p->scheme_id >= MX_SCHEME_COUNT)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d: scheme_id=%d is not a candidate scheme "
                                "(0..%d)", i, p->scheme_id, MX_SCHEME_COUNT - 1);
        const mx_scheme *s = &mx_scheme_table[p->scheme_id].scheme;
        const char *name = mx_scheme_table[p->scheme_id].name;
        if (p->n <= 0 || p->n % 16 != 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d (%s): n=%d must be a positive multiple of 16",
                                i, name, p->n);
        const int k_multiple = (s->group_size > 0 || s->w_bits < 4) ? 128 : 32;
        if (p->k <= 0 || p->k % k_multiple != 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d (%s): k=%d must be a positive multiple of %d",
                                i, name, p->k, k_multiple);
        if (p->expert < 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d (%s): expert=%d is negative", i, name,
                                p->expert);
        if (p->out_col < 0 || p->out_col % 16 != 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d (%s): out_col=%d must be a non-negative "
                                "multiple of 16", i, name, p->out_col);
        if (!p->qweight || !aligned16(p->qweight))
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d (%s, n=%d, k=%d): qweight must be a non-NULL "
                                "16-byte aligned device pointer", i, name, p->n, p->k);
        const bool quantized = s->w_bits < 16;
        if (quantized && (!p->scales || !aligned16(p->scales)))
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d (%s, n=%d, k=%d): scales must be a non-NULL "
                                "16-byte aligned device pointer", i, name, p->n, p->k);
        if (quantized && !s->symmetric && (!p->zeros || !aligned16(p->zeros)))
            return mx_error_set(err, MX_ERR_INVALID_ARG, "problem %d (%s, n=%d, k=%d): zeros must be a non-NULL "
                                "16-byte aligned device pointer (asymmetric scheme)", i, name, p->n, p->k);
        out.formats_mask |= 1 << act_format_of(p->scheme_id);
        if (p->k > out.max_k) out.max_k = p->k;
        if (p->expert > out.max_expert) out.max_expert = p->expert;
        if ((int64_t)p->out_col + p->n > out.max_out_col_end) out.max_out_col_end = (int64_t)p->out_col + p->n;
    }
    *info = out;
    return MX_OK;
}

// CTAs of the largest grid (the decode variant's) on the current device; the split tail's slots scale with it.
static int max_ctas_of_device() {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
        (void)cudaGetLastError();
        sms = 160;  // no device to ask: room for any current GPU (the launch asks again and checks)
    }
    return sms * mx::DecodeVariant::min_blocks;
}

extern "C" size_t mx_cuda_gemm_workspace_bytes(int64_t max_rows, int32_t n_problems) {
    (void)max_rows;  // the schedule is per problem, not per row
    if (n_problems < 0) n_problems = 0;
    return mx::schedule_bytes(n_problems, max_ctas_of_device());
}

// Launch one variant of the persistent kernel: one grid of min_blocks CTAs per SM, optionally as a programmatic
// dependent of the schedule kernel before it on the stream.
template <class V>
static cudaError_t launch_fused(const mx_cuda_problem *d_problems, mx::Schedule sched, const mx::LaunchArgs &args,
                                int sms, cudaStream_t s, bool pdl) {
    cudaError_t e = cudaFuncSetAttribute(mx::fused_grouped_gemm_kernel<V>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         V::smem);
    if (e != cudaSuccess) return e;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(sms * V::min_blocks);
    config.blockDim = dim3(mx::kThreads);
    config.dynamicSmemBytes = V::smem;
    config.stream = s;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = pdl ? 1 : 0;
    e = cudaLaunchKernelEx(&config, mx::fused_grouped_gemm_kernel<V>, d_problems, sched, args.acts, args.y, args.ldy,
                           args.n_problems, args.n_stage0, args.stage1, args.act_I);
    return e != cudaSuccess ? e : cudaGetLastError();
}

// The checks of one stage's call against its table's summary: output, activations in every format it reads.
static enum mx_status check_stage(const char *stage, const mx_cuda_problems_info *info, const mx_cuda_activations *acts,
                                  const uint16_t *d_y, int64_t ldy, mx_error *err) {
    if (!info || !acts) return mx_error_set(err, MX_ERR_INVALID_ARG, "%sinfo and acts must not be NULL", stage);
    if (info->n_problems < 0 || info->n_problems > MX_CUDA_GEMM_MAX_PROBLEMS)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%sn_problems=%d must be in [0, %d]", stage, info->n_problems,
                            MX_CUDA_GEMM_MAX_PROBLEMS);
    if (!d_y) return mx_error_set(err, MX_ERR_INVALID_ARG, "%sy must be a device pointer, got NULL", stage);
    if (ldy < info->max_out_col_end || ldy % 2 != 0 || ((uintptr_t)d_y & 3u))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%sldy=%lld must be even and >= max(out_col + n)=%lld, y "
                            "4-byte aligned", stage, (long long)ldy, (long long)info->max_out_col_end);
    if (acts->ld < info->max_k)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%sactivations ld=%lld < k=%d of a problem", stage,
                            (long long)acts->ld, info->max_k);
    static const char *const format_names[MX_CUDA_ACT_FORMAT_COUNT] = {"bf16", "int8", "fp8", "int4"};
    const void *act_ptr[MX_CUDA_ACT_FORMAT_COUNT] = {acts->d_bf16, acts->d_int8, acts->d_fp8, acts->d_int4};
    const float *act_scale[MX_CUDA_ACT_FORMAT_COUNT] = {NULL, acts->d_scale_int8, acts->d_scale_fp8,
                                                        acts->d_scale_int4};
    const int ld_multiple[MX_CUDA_ACT_FORMAT_COUNT] = {8, 16, 16, 32};  // 16-byte aligned rows
    for (int f = 0; f < MX_CUDA_ACT_FORMAT_COUNT; f++) {
        if (!(info->formats_mask & (1 << f))) continue;
        if (!act_ptr[f] || !aligned16(act_ptr[f]) || (f > 0 && !act_scale[f]))
            return mx_error_set(err, MX_ERR_INVALID_ARG, "%sa problem reads %s activations: their values (16-byte "
                                "aligned) and per-row scales must be given", stage, format_names[f]);
        if (f == MX_CUDA_ACT_INT8 && ((uintptr_t)acts->d_rowsum_int8 & 3u))
            return mx_error_set(err, MX_ERR_INVALID_ARG, "%sint8 activations: the row-sum buffer %p is not 4-byte "
                                "aligned", stage, (const void *)acts->d_rowsum_int8);
        if (acts->ld % ld_multiple[f] != 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "%sactivations ld=%lld must be a multiple of %d for %s "
                                "rows", stage, (long long)acts->ld, ld_multiple[f], format_names[f]);
    }
    return MX_OK;
}

// Both entry points: args holds the stages (already checked), n_problems of them in all; max_expert the largest
// expert index of any problem.
static enum mx_status gemm_launch(const mx_cuda_problem *d_problems, mx::LaunchArgs args, int32_t max_expert,
                                  const int32_t *d_row_offsets, int32_t n_groups, int64_t max_rows, void *d_workspace,
                                  size_t workspace_bytes, void *stream, mx_cuda_gemm_part part, mx_error *err) {
    if (part != MX_CUDA_GEMM_ALL && part != MX_CUDA_GEMM_SCHEDULE && part != MX_CUDA_GEMM_COMPUTE)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "part=%d must be MX_CUDA_GEMM_ALL, _SCHEDULE or _COMPUTE",
                            (int)part);
    const int32_t n_problems = args.n_problems;
    if (n_problems < 0 || n_problems > MX_CUDA_GEMM_MAX_PROBLEMS)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "n_problems=%d must be in [0, %d]", n_problems,
                            MX_CUDA_GEMM_MAX_PROBLEMS);
    if (max_rows < 0 || max_rows > INT32_MAX)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "max_rows=%lld must be in [0, 2^31)", (long long)max_rows);
    if (n_problems == 0 || max_rows == 0) return MX_OK;  // nothing to compute
    if (!d_problems || !d_row_offsets || !d_workspace)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "problems, row_offsets and workspace must be device pointers, "
                            "got NULL");
    if (n_groups <= max_expert)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "n_groups=%d but a problem names expert %d", n_groups,
                            max_expert);
    if (workspace_bytes < mx_cuda_gemm_workspace_bytes(max_rows, n_problems) || !aligned16(d_workspace))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "workspace: %zu bytes at %p, need %zu bytes, 16-byte "
                            "aligned", workspace_bytes, d_workspace,
                            mx_cuda_gemm_workspace_bytes(max_rows, n_problems));
    // Measurement switches (mx_cuda.h): MXMOE_GEMM_SPLIT_TAIL=0 runs every tile whole; MXMOE_GEMM_SPLIT_COST=<chunks>
    // replaces the split's cost model constant (values above 2^24 mean "never split").
    const char *split_env = getenv("MXMOE_GEMM_SPLIT_TAIL");
    const bool split_tail = !(split_env && strcmp(split_env, "0") == 0);
    long split_cost = mx::kSplitCostChunks;
    if (const char *cost_env = getenv("MXMOE_GEMM_SPLIT_COST")) {
        char *end = nullptr;
        split_cost = strtol(cost_env, &end, 10);
        if (end == cost_env || *end != '\0' || split_cost < 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "MXMOE_GEMM_SPLIT_COST=%s must be a non-negative integer "
                                "(chunks)", cost_env);
        if (split_cost > (1 << 24)) split_cost = 1 << 24;
    }
    int device = 0, sms = 0, major = 0, minor = 0, smem_optin = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    if (e != cudaSuccess) return mx_error_set(err, MX_ERR_CUDA, "device query: %s", cudaGetErrorString(e));
    if (major * 10 + minor < 80)
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "the fused GEMM needs sm_80 or newer, device is sm_%d%d", major,
                            minor);
    if ((args.formats_mask & (1 << MX_CUDA_ACT_FP8)) && major * 10 + minor < 89)
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "w8a8_g-1_sym_fp8 needs fp8 tensor cores (sm_89+), device is "
                            "sm_%d%d", major, minor);
    if (smem_optin < mx::DecodeVariant::smem)
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "the fused GEMM needs %d bytes of shared memory per block, device "
                            "sm_%d%d offers %d", mx::DecodeVariant::smem, major, minor, smem_optin);

    // ---- launch: schedule (1 block), then the persistent GEMM (2 CTAs per SM); `part` may ask for one of them.
    // Both derive the variant and the grid from (max_rows, n_groups, device) alone, so separate calls agree. ----
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    mx::Schedule sched = mx::schedule_view(d_workspace, n_problems, sms * mx::DecodeVariant::min_blocks);
    // Variant: prefill (big fat tiles, 1 CTA/SM) when the launch averages many rows per expert and the device has
    // the shared memory for it (Hopper; an A100 runs the decode variant throughout), else decode.
    const bool prefill = max_rows >= (int64_t)mx::kPrefillRowsPerGroup * n_groups &&
                         smem_optin >= mx::PrefillVariant::smem;
    const int fat_bm = prefill ? mx::PrefillVariant::Fat::BM : mx::DecodeVariant::Fat::BM;
    const int ctas = sms * (prefill ? mx::PrefillVariant::min_blocks : mx::DecodeVariant::min_blocks);
    if (part & MX_CUDA_GEMM_SCHEDULE) {
        mx::schedule_kernel<<<1, 1024, 0, s>>>(d_problems, n_problems, args.n_stage0, n_groups, d_row_offsets,
                                               max_rows, fat_bm, split_tail ? ctas : 0, (int)split_cost, sched);
        e = cudaGetLastError();
        if (e != cudaSuccess)
            return mx_error_set(err, MX_ERR_CUDA, "schedule kernel launch: %s", cudaGetErrorString(e));
    }
    if (!(part & MX_CUDA_GEMM_COMPUTE)) return MX_OK;
    // Programmatic dependent launch on sm_90+ right behind our schedule kernel outside graph capture (a replayed
    // graph has little launch latency to hide: enabling it under capture measured no change on the whole-layer
    // benchmark); a runtime that refuses the attribute gets the plain launch.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    e = cudaStreamIsCapturing(s, &capture);
    if (e != cudaSuccess) return mx_error_set(err, MX_ERR_CUDA, "stream query: %s", cudaGetErrorString(e));
    const bool pdl = major >= 9 && capture == cudaStreamCaptureStatusNone && (part & MX_CUDA_GEMM_SCHEDULE);
    e = prefill ? launch_fused<mx::PrefillVariant>(d_problems, sched, args, sms, s, pdl)
                : launch_fused<mx::DecodeVariant>(d_problems, sched, args, sms, s, pdl);
    if (e != cudaSuccess && pdl) {
        (void)cudaGetLastError();
        e = prefill ? launch_fused<mx::PrefillVariant>(d_problems, sched, args, sms, s, false)
                    : launch_fused<mx::DecodeVariant>(d_problems, sched, args, sms, s, false);
    }
    if (e != cudaSuccess)
        return mx_error_set(err, MX_ERR_CUDA, "fused GEMM launch (%d problems, max_rows=%lld): %s", n_problems,
                            (long long)max_rows, cudaGetErrorString(e));
    return MX_OK;
}

extern "C" enum mx_status mx_cuda_gemm_fused_part(const mx_cuda_problem *d_problems, const mx_cuda_problems_info *info,
                                                  const int32_t *d_row_offsets, int32_t n_groups, int64_t max_rows,
                                                  const mx_cuda_activations *acts, uint16_t *d_y, int64_t ldy,
                                                  void *d_workspace, size_t workspace_bytes, void *stream,
                                                  mx_cuda_gemm_part part, mx_error *err) {
    if (!info || !acts) return mx_error_set(err, MX_ERR_INVALID_ARG, "info and acts must not be NULL");
    if (info->n_problems == 0 || max_rows == 0)  // nothing to compute (after the checks of these scalars)
        return gemm_launch(d_problems, mx::LaunchArgs{info->n_problems, info->n_problems}, -1, d_row_offsets,
                           n_groups, max_rows, d_workspace, workspace_bytes, stream, part, err);
    const enum mx_status status = check_stage("", info, acts, d_y, ldy, err);
    if (status != MX_OK) return status;
    mx::LaunchArgs args{};
    args.n_problems = args.n_stage0 = info->n_problems;
    args.formats_mask = info->formats_mask;
    args.acts = *acts;
    args.y = d_y;
    args.ldy = ldy;
    return gemm_launch(d_problems, args, info->max_expert, d_row_offsets, n_groups, max_rows, d_workspace,
                       workspace_bytes, stream, part, err);
}

extern "C" enum mx_status mx_cuda_gemm_fused(const mx_cuda_problem *d_problems, const mx_cuda_problems_info *info,
                                             const int32_t *d_row_offsets, int32_t n_groups, int64_t max_rows,
                                             const mx_cuda_activations *acts, uint16_t *d_y, int64_t ldy,
                                             void *d_workspace, size_t workspace_bytes, void *stream,
                                             mx_error *err) {
    return mx_cuda_gemm_fused_part(d_problems, info, d_row_offsets, n_groups, max_rows, acts, d_y, ldy, d_workspace,
                                   workspace_bytes, stream, MX_CUDA_GEMM_ALL, err);
}

extern "C" enum mx_status mx_cuda_gemm_fused_layer(const mx_cuda_problem *d_problems,
                                                   const mx_cuda_problems_info *info_gate_up,
                                                   const mx_cuda_problems_info *info_down,
                                                   const int32_t *d_row_offsets, int32_t n_groups, int64_t max_rows,
                                                   const mx_cuda_activations *x, uint16_t *d_gate_up,
                                                   int64_t ld_gate_up, uint16_t *d_h, int64_t ld_h, int64_t I,
                                                   uint16_t *d_down, int64_t ld_down, void *d_workspace,
                                                   size_t workspace_bytes, void *stream, mx_cuda_gemm_part part,
                                                   mx_error *err) {
    if (!info_gate_up || !info_down)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "info_gate_up and info_down must not be NULL");
    if (info_down->formats_mask != (1 << MX_CUDA_ACT_BF16))
        return mx_error_set(err, MX_ERR_UNSUPPORTED, "a two-stage launch computes down's activations in bf16 only; "
                            "its down problems read formats 0x%x", (unsigned)info_down->formats_mask);
    if (I <= 0 || I % kChunk || ld_gate_up < 2 * I || ld_gate_up % kChunk || ld_h < I || ld_h % kChunk)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "I=%lld must be a positive multiple of %d, ld_gate_up=%lld >= "
                            "2I and ld_h=%lld >= I multiples of %d", (long long)I, kChunk, (long long)ld_gate_up,
                            (long long)ld_h, kChunk);
    if (n_groups > mx::kMaxStageGroups)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "n_groups=%d exceeds %d for a two-stage launch", n_groups,
                            mx::kMaxStageGroups);
    if (info_down->max_k > I)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "a down problem reads k=%d > I=%lld", info_down->max_k,
                            (long long)I);
    if (info_gate_up->max_out_col_end > 2 * I)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "a gate_up problem writes column %lld >= 2I=%lld",
                            (long long)info_gate_up->max_out_col_end - 1, (long long)(2 * I));
    if (!d_h || !aligned16(d_h) || !d_gate_up || !aligned16(d_gate_up))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "gate_up and h must be 16-byte aligned device pointers");
    mx_cuda_activations h = {};
    h.d_bf16 = d_h;
    h.ld = ld_h;
    enum mx_status status = check_stage("gate_up: ", info_gate_up, x, d_gate_up, ld_gate_up, err);
    if (status == MX_OK) status = check_stage("down: ", info_down, &h, d_down, ld_down, err);
    if (status != MX_OK) return status;
    mx::LaunchArgs args{};
    args.n_stage0 = info_gate_up->n_problems;
    args.n_problems = info_gate_up->n_problems + info_down->n_problems;
    args.formats_mask = info_gate_up->formats_mask | info_down->formats_mask;
    args.acts = *x, args.y = d_gate_up, args.ldy = ld_gate_up;
    args.stage1 = mx::StageIO{h, d_down, ld_down};
    args.act_I = I;
    if (args.n_stage0 == 0 || info_down->n_problems == 0)  // one stage is empty: h is never computed
        return mx_error_set(err, MX_ERR_INVALID_ARG, "a two-stage launch needs gate_up and down problems (%d, %d)",
                            args.n_stage0, info_down->n_problems);
    return gemm_launch(d_problems, args, info_gate_up->max_expert > info_down->max_expert ? info_gate_up->max_expert
                                                                                          : info_down->max_expert,
                       d_row_offsets, n_groups, max_rows, d_workspace, workspace_bytes, stream, part, err);
}
