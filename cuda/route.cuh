/* route.cuh — routing, activation gather/quantization, SiLU·mul and combine of one MoE layer on the GPU
 * (cuda/route.cu).  C-callable (gcc compiles cuda/route_py.c against this header); see mx_cuda.h for the pipeline.
 *
 * Row layout of one layer's permuted activations (n_rows = T·k + S·T rows, S = shared groups):
 *
 *     rows [0, n_valid)                        routed (token, slot) pairs grouped by expert, expert 0 first;
 *                                              within an expert in increasing pair index t·k + slot (stable)
 *     rows [n_valid + j·T, n_valid + (j+1)·T)  shared group j, token t at offset t          (j < S)
 *     rows [n_valid + S·T, n_rows)             pairs whose expert index was out of [0, E): "dropped", their
 *                                              rows are zero-filled and the combine skips them
 *
 *   row_offsets i32 [E + S + 1]: group g covers rows [row_offsets[g], row_offsets[g + 1]); n_valid = row_offsets[E].
 *   perm_token  i32 [n_rows]:    source token of each row (-1 for dropped rows).
 *   inv_perm    i32 [T·k]:       row of pair t·k + slot (-1 if dropped).
 *
 * Every function takes an explicit stream (cudaStream_t as void*), never allocates, never synchronises, and is
 * therefore CUDA-graph capturable; pointers prefixed d_ are device memory.  Errors: MX_ERR_INVALID_ARG /
 * MX_ERR_UNSUPPORTED for arguments (checked before any launch), MX_ERR_CUDA when a launch fails. */
#ifndef MX_ROUTE_CUH
#define MX_ROUTE_CUH

#include "mx_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest number of experts (+ shared groups) the routing kernels handle (shared-memory histograms). */
#define MX_ROUTE_MAX_GROUPS 1024
/* Largest row length (hidden size or intermediate size) the gather / act-mul / combine kernels handle. */
#define MX_ROUTE_MAX_K 32768

/* Activation buffers written by the gather and act-mul kernels (any pointer NULL = that format not produced).
 * Quantized formats are per token, symmetric: int8 and int4 codes q with x ≈ q·scale, scale = max|x| / qmax
 * (127, 7), fp8 e4m3 values with scale = max|x| / 448; an all-zero row gets scale 1 (mx_quant.h semantics). */
typedef struct mx_cuda_act_buffers {
    uint16_t *d_bf16;    /* [n_rows, ld] bf16 */
    int8_t *d_int8;      /* [n_rows, ld] */
    uint8_t *d_fp8;      /* [n_rows, ld] e4m3 bytes */
    uint8_t *d_int4;     /* [n_rows, ld/2] two codes per byte, low nibble = even k, two's complement */
    float *d_scale_int8; /* [n_rows] */
    float *d_scale_fp8;  /* [n_rows] */
    float *d_scale_int4; /* [n_rows] */
    int64_t ld;          /* row stride in elements (>= K, even) */
    int32_t *d_rowsum_int8; /* [n_rows] Σ_k of the row's int8 codes, or NULL (needs d_int8): the zero-point term
                               of the w8a8 GEMM's wgmma tiles, summed once per row here instead of once per tile */
} mx_cuda_act_buffers;

/* Online randomized Hadamard transform of a row of n = m·2^p values: y = (B_m ⊗ H_{2^p}) · diag(signs) · x / √n,
 * with x indexed as x[a·2^p + b] (a < m, b < 2^p), H_{2^p} the Sylvester matrix (H[i][j] = (-1)^popcount(i&j)) and
 * B_m an m×m ±1 Hadamard matrix (1×1 [1] for powers of two).  Orthonormal. */
typedef struct mx_cuda_hadamard {
    const float *d_signs;       /* [n] ±1, the random diagonal D */
    const float *d_base;        /* [m, m] ±1, row-major (may be NULL when m == 1) */
    int32_t m;                  /* 1 <= m <= 64 */
    const uint8_t *d_group_mask; /* [n_groups]: rotate the rows of group g only if mask[g] != 0 (NULL: every group);
                                    dropped rows are zero either way */
} mx_cuda_hadamard;

/* Bytes of scratch mx_cuda_route needs for T tokens of k slots over n_experts experts. */
MX_API size_t mx_cuda_route_workspace_bytes(int64_t T, int32_t k, int32_t n_experts);

/* top_k_index: [T, k] i64 device -> row_offsets [E+S+1], perm_token [T·k + S·T], inv_perm [T·k], dropped [1]
 * (count of out-of-range expert indices; the host may read it after the stream to report bad routing). */
MX_API enum mx_status mx_cuda_route(const int64_t *d_top_k_index, int64_t T, int32_t k, int32_t n_experts,
                                    int32_t n_shared, int32_t *d_row_offsets, int32_t *d_perm_token,
                                    int32_t *d_inv_perm, int32_t *d_dropped, void *d_workspace,
                                    size_t workspace_bytes, void *stream, mx_error *err);

/* hidden: [T, ld_hidden] bf16 -> out rows r = hidden[perm_token[r], :K] in every format `out` names.
 * group_formats: device u8 [n_groups] bit mask (1 << enum mx_cuda_act_format) of the formats the problems of
 * group g read (NULL = every format `out` names, for every row); rows of other groups' formats are left untouched,
 * dropped rows (and rows past row_offsets[n_groups]) are zero-filled in every format. */
MX_API enum mx_status mx_cuda_gather_quant(const uint16_t *d_hidden, int64_t ld_hidden, int64_t T, int64_t K,
                                           const int32_t *d_perm_token, int64_t n_rows,
                                           const int32_t *d_row_offsets, int32_t n_groups,
                                           const uint8_t *d_group_formats, const mx_cuda_act_buffers *out,
                                           void *stream, mx_error *err);

/* gate_up: [n_rows, ld_gate_up] bf16 with gate in columns [0, I) and up in [I, 2I) ->
 * h = bf16(SiLU(gate)·up) (optionally rotated: h = bf16(Hadamard(SiLU(gate)·up))) written to out in the formats it
 * names; quantized formats are computed from the bf16-rounded h, so they equal mx_quantize_activations(out bf16).
 * Group masks and dropped rows as in mx_cuda_gather_quant. */
MX_API enum mx_status mx_cuda_act_mul_quant(const uint16_t *d_gate_up, int64_t ld_gate_up, int64_t n_rows,
                                            int64_t I, const int32_t *d_row_offsets, int32_t n_groups,
                                            const uint8_t *d_group_formats, const mx_cuda_hadamard *hadamard,
                                            const mx_cuda_act_buffers *out, void *stream, mx_error *err);

/* Routing weights / shared gate dtypes. */
enum mx_cuda_weight_dtype { MX_CUDA_WEIGHT_BF16 = 0, MX_CUDA_WEIGHT_F32 = 1, MX_CUDA_WEIGHT_F16 = 2 };

/* out[t, :H] = Σ_slot w[t, slot] · y[inv_perm[t·k + slot], :H]
 *            + g(t) · Σ_{j < n_shared} y[row_offsets[n_experts + j] + t, :H]
 * with g(t) = 1 (shared_gate NULL), shared_gate[t], or sigmoid(shared_gate[t]) (apply_sigmoid), f32 accumulation in
 * slot order then shared order (deterministic), rounded once to bf16.  y: [rows, ldy] bf16, out: [T, ld_out] bf16,
 * top_k_weights [T, k] and shared_gate [T] in the dtypes given. */
MX_API enum mx_status mx_cuda_combine(const uint16_t *d_y, int64_t ldy, int64_t T, int64_t H, int32_t k,
                                      const int32_t *d_inv_perm, const void *d_top_k_weights,
                                      enum mx_cuda_weight_dtype weights_dtype, const int32_t *d_row_offsets,
                                      int32_t n_experts, int32_t n_shared, const void *d_shared_gate,
                                      enum mx_cuda_weight_dtype shared_gate_dtype, int apply_sigmoid,
                                      uint16_t *d_out, int64_t ld_out, void *stream, mx_error *err);

#ifdef __cplusplus
}
#endif
#endif /* MX_ROUTE_CUH */
