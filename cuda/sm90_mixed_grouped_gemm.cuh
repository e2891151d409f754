/* sm90_mixed_grouped_gemm.cuh — the fused mixed-precision grouped GEMM (host side of sm90_mixed_grouped_gemm.cu).
 * The C API is in mx_cuda.h: mx_cuda_gemm_problems_check, mx_cuda_gemm_workspace_bytes, mx_cuda_gemm_fused. */
#ifndef MX_SM90_MIXED_GROUPED_GEMM_CUH
#define MX_SM90_MIXED_GROUPED_GEMM_CUH
#include "mx_cuda.h"
#endif
