/* binding_cuda_py.h — shared by the binding files (cuda/<area>_py.c) of mxmoe._cuda (torch-free: device pointers and the
 * stream arrive as Python ints, e.g. t.data_ptr() and torch.cuda.current_stream().cuda_stream).
 * No NumPy here: mxmoe._cuda is built without it. */
#ifndef MX_BINDING_CUDA_PY_H
#define MX_BINDING_CUDA_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "mx_cuda.h"

/* Raise the exception of err->status (ValueError / MemoryError / RuntimeError) with err->message; returns NULL. */
PyObject *mx_cuda_py_raise(const mx_error *err);

/* The activation tuple both the GEMM (acts) and the routing kernels (buffers) take: (bf16, int8, fp8, int4,
 * scale_int8, scale_fp8, scale_int4, ld[, rowsum_int8]) -> ptrs[0..6] = the first seven device pointers (0 = absent),
 * *ld = the row stride in elements, ptrs[7] = the int8 rows' code sums (0 when the tuple has 8 elements).  1, or 0
 * with a TypeError naming `what`. */
int mx_cuda_py_parse_act_tuple(PyObject *obj, const char *what, unsigned long long ptrs[8], long long *ld);

extern PyMethodDef mx_cuda_py_gemm_methods[];  /* cuda/gemm_py.c */
extern PyMethodDef mx_cuda_py_route_methods[]; /* cuda/route_py.c */

#endif /* MX_BINDING_CUDA_PY_H */
