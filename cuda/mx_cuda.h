/* mx_cuda.h — the host-callable C API of mxmoe's CUDA kernels (C and nvcc both include it).
 *
 * One MoE layer on the GPU, as mxmoe.cuda_ops drives it:
 *
 *   hidden [T, H] bf16, top_k_index [T, k] i64, top_k_weights [T, k] (bf16 | f32)
 *     │ mx_cuda_route_*        expert histogram -> row_offsets [E+1], permutation of the T·k (token, slot) pairs
 *     │                        grouped by expert (perm_token [T·k], inverse inv_perm [T·k]); no host sync
 *     │ mx_cuda_gather_*       gather rows in permuted order -> x_bf16 [T·k, H] and, where some problem of the
 *     │                        layer quantizes activations, per-token quantized copies (int8 / e4m3 / int4 + scales)
 *     │ mx_cuda_gemm_fused     ONE persistent launch: every (expert, gate|up) problem whatever its scheme
 *     │                        -> y_gate_up [T·k, 2I] bf16 (gate in columns [0, I), up in [I, 2I))
 *     │ mx_cuda_act_mul_*      SiLU(gate)·up (+ online Hadamard + activation quantization for down's inputs)
 *     │ mx_cuda_gemm_fused     ONE launch for all down problems -> y_down [T·k, H]
 *     │ mx_cuda_combine_*      out[t] = Σ_slot w[t,slot] · y_down[inv_perm[t·k+slot]]  -> [T, H]
 *
 * Shared experts are problems of the same launches whose "expert" index is E + j and whose rows are all T tokens
 * (the routing writes them after the routed rows; row_offsets then has E + S + 1 entries).
 *
 * Conventions: every function takes an explicit cudaStream_t (as void*), never allocates, never synchronises,
 * and returns enum mx_status (MX_ERR_CUDA with the runtime's message in err on a launch failure).  Scratch
 * memory is caller-owned: each op has a `*_workspace_bytes` query.  Device pointers are marked `d_`. */
#ifndef MX_CUDA_H
#define MX_CUDA_H

#include "mx_common.h"
#include "mx_scheme.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the current device can run the kernels (sm_80+): 1 and "name (sm_XY, N SMs, M GiB)" in message, or 0
 * and the reason (no driver, no device, too old).  Never crashes without a driver.  (cuda/device.cu) */
MX_API int mx_cuda_device_query(char *message, size_t message_bytes);

/* Activation formats a problem can read (one layer may need several at once). */
enum mx_cuda_act_format {
    MX_CUDA_ACT_BF16 = 0, /* x_bf16 [rows, K] */
    MX_CUDA_ACT_INT8 = 1, /* x_int8 [rows, K] + scale_int8 [rows] f32 */
    MX_CUDA_ACT_FP8 = 2,  /* x_fp8 [rows, K] e4m3 bytes + scale_fp8 [rows] f32 */
    MX_CUDA_ACT_INT4 = 3, /* x_int4 [rows, K/2] packed, low nibble = even k + scale_int4 [rows] f32 */
    MX_CUDA_ACT_FORMAT_COUNT = 4
};

/* One GEMM problem of a fused launch: Y[rows of `expert`, out_col : out_col + n] = X[rows of `expert`, :k] · Wᵀ.
 * Built once per layer at load time (a device array), never per call. 64 bytes, pinned. */
typedef struct mx_cuda_problem {
    int32_t scheme_id;   /* enum mx_scheme_id: selects the micro-kernel */
    int32_t expert;      /* row range [row_offsets[expert], row_offsets[expert + 1]) of X and Y */
    int32_t n;           /* output features of this block */
    int32_t k;           /* input features (K of X) */
    int32_t out_col;     /* first column of this problem's output in Y */
    int32_t reserved[3];
    const void *qweight; /* device, the scheme's packed layout (mx_scheme.h, or the repacked layout documented in
                            the kernel file) */
    const void *scales;  /* device f16 [K/G', N] (NULL for w16a16) */
    const void *zeros;   /* device u8 [K/G', N] (asym only, else NULL) */
    const void *unused;
} mx_cuda_problem;
#ifdef __cplusplus
static_assert(sizeof(mx_cuda_problem) == 64, "mx_cuda_problem is a pinned 64-byte record");
#else
_Static_assert(sizeof(mx_cuda_problem) == 64, "mx_cuda_problem is a pinned 64-byte record");
#endif

/* Activations of one fused launch (any pointer may be NULL if no problem reads that format). */
typedef struct mx_cuda_activations {
    const uint16_t *d_bf16;  /* [rows, K] bf16 */
    const int8_t *d_int8;    /* [rows, K] */
    const uint8_t *d_fp8;    /* [rows, K] e4m3 */
    const uint8_t *d_int4;   /* [rows, K/2] */
    const float *d_scale_int8, *d_scale_fp8, *d_scale_int4; /* [rows] */
    int64_t ld;              /* row stride in elements of K (bf16/int8/fp8); int4 rows are ld/2 bytes */
    const int32_t *d_rowsum_int8; /* [rows] Σ_k of each row's int8 codes, or NULL: the w8a8 (int8) wgmma tiles then
                                     sum them from their own stages (measured 17-35 % of those tiles' time) */
} mx_cuda_activations;

/* ---- fused mixed-precision grouped GEMM (cuda/sm90_mixed_grouped_gemm.cu) ----
 *
 * Problem table rules (checked on the HOST by mx_cuda_gemm_problems_check when the table is built, once per layer;
 * the per-call entry trusts a device table built from a checked host table):
 *   scheme_id a candidate (enum mx_scheme_id); n > 0, n % 16 == 0; k > 0, k % 32 == 0, k % 128 == 0 for g128 and
 *   3-/2-bit schemes; out_col >= 0, out_col % 16 == 0; expert >= 0; qweight (and scales for every quantized scheme,
 *   zeros for asym) non-NULL and 16-byte aligned; n_problems <= MX_CUDA_GEMM_MAX_PROBLEMS.
 * The summary it returns is passed to every fused call, which checks the call against it in O(1). */
#define MX_CUDA_GEMM_MAX_PROBLEMS 1024

typedef struct mx_cuda_problems_info {
    int32_t formats_mask;    /* bit f set: some problem reads activation format f (enum mx_cuda_act_format) */
    int32_t max_k;           /* activations must have ld >= max_k */
    int32_t max_expert;      /* n_groups must be > max_expert */
    int32_t n_problems;
    int64_t max_out_col_end; /* ldy must be >= max(out_col + n) */
} mx_cuda_problems_info;

/* problems: HOST [n_problems] -> *info; MX_ERR_INVALID_ARG naming the problem index, scheme, n, k. */
MX_API enum mx_status mx_cuda_gemm_problems_check(const mx_cuda_problem *problems, int32_t n_problems,
                                                  mx_cuda_problems_info *info, mx_error *err);

/* d_problems: device [n_problems] (a copy of a table that passed mx_cuda_gemm_problems_check with *info);
 * d_row_offsets: device i32 [n_groups + 1] (n_groups = E (+ S shared)), rows outside [0, max_rows] are clamped;
 * acts: host struct of device pointers; y: device bf16 [max_rows, ldy], each problem writes
 * y[rows of its expert, out_col : out_col + n]; workspace: device, mx_cuda_gemm_workspace_bytes(max_rows,
 * n_problems) bytes, 16-byte aligned, no initialization needed (its size depends on the current device's SM count:
 * the split tail's partial tiles; ~6.5 MB on an H100).  Two launches on `stream` (a one-block schedule kernel, then
 * the persistent GEMM), no host sync, no allocation: CUDA-graph capturable.  Results are deterministic: the split
 * tail sums its partial tiles in a fixed order.  Environment: MXMOE_GEMM_SPLIT_TAIL=0 runs every tile whole,
 * MXMOE_GEMM_SPLIT_COST=<chunks> overrides the split's cost model (A/B benchmarks, tests of both paths). */
MX_API size_t mx_cuda_gemm_workspace_bytes(int64_t max_rows, int32_t n_problems);
MX_API enum mx_status mx_cuda_gemm_fused(const mx_cuda_problem *d_problems, const mx_cuda_problems_info *info,
                                         const int32_t *d_row_offsets, int32_t n_groups, int64_t max_rows,
                                         const mx_cuda_activations *acts, uint16_t *d_y, int64_t ldy,
                                         void *d_workspace, size_t workspace_bytes, void *stream, mx_error *err);

/* mx_cuda_gemm_fused's two launches one at a time, for callers that take the schedule off the critical path
 * (mxmoe.cuda_ops computes both GEMMs' schedules on two side streams while the activations are gathered).  Same
 * arguments and checks.  MX_CUDA_GEMM_SCHEDULE launches only the one-block schedule kernel, which writes the tile
 * schedule into `workspace` and reads only the problems and the row offsets; MX_CUDA_GEMM_COMPUTE launches only the
 * GEMM, which claims that schedule's tiles.  The caller orders every COMPUTE after one SCHEDULE with the same
 * problems, row offsets (their values too), n_groups and max_rows into the same workspace (same stream, or an
 * event), and runs no second COMPUTE on it: the GEMM consumes the schedule's claim counter. */
typedef enum mx_cuda_gemm_part {
    MX_CUDA_GEMM_SCHEDULE = 1,
    MX_CUDA_GEMM_COMPUTE = 2,
    MX_CUDA_GEMM_ALL = 3 /* = mx_cuda_gemm_fused */
} mx_cuda_gemm_part;
MX_API enum mx_status mx_cuda_gemm_fused_part(const mx_cuda_problem *d_problems, const mx_cuda_problems_info *info,
                                              const int32_t *d_row_offsets, int32_t n_groups, int64_t max_rows,
                                              const mx_cuda_activations *acts, uint16_t *d_y, int64_t ldy,
                                              void *d_workspace, size_t workspace_bytes, void *stream,
                                              mx_cuda_gemm_part part, mx_error *err);

/* The decode layer's two GEMMs in ONE launch (the act·up step folded in): d_problems = a device copy of the gate_up
 * table (checked: *info_gate_up) followed by the down table (*info_down), every down problem reading bf16.  The
 * gate_up problems read x and write gate_up [rows, ld_gate_up] (gate in columns [0, I), up in [I, 2I): together
 * they must cover both for every expert group that has down problems); once an expert group's gate_up tiles are
 * all stored, the launch writes the group's rows of h [rows, ld_h] = bf16(SiLU(gate)·up) — the values
 * mx_cuda_act_mul_quant writes for a bf16 output without Hadamard — and runs the group's down problems on h into
 * down [rows, ld_down].  Same schedule/compute parts, workspace (mx_cuda_gemm_workspace_bytes of the two tables'
 * problem count together) and checks as mx_cuda_gemm_fused_part; n_groups <= 1024.  Worth it at decode, where
 * down's tiles would otherwise wait for the last gate_up tile (mxmoe.cuda_ops decides when). */
MX_API enum mx_status mx_cuda_gemm_fused_layer(const mx_cuda_problem *d_problems,
                                               const mx_cuda_problems_info *info_gate_up,
                                               const mx_cuda_problems_info *info_down,
                                               const int32_t *d_row_offsets, int32_t n_groups, int64_t max_rows,
                                               const mx_cuda_activations *x, uint16_t *d_gate_up, int64_t ld_gate_up,
                                               uint16_t *d_h, int64_t ld_h, int64_t I, uint16_t *d_down,
                                               int64_t ld_down, void *d_workspace, size_t workspace_bytes,
                                               void *stream, mx_cuda_gemm_part part, mx_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MX_CUDA_H */
