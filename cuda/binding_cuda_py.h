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

extern PyMethodDef mx_cuda_py_gemm_methods[];  /* cuda/gemm_py.c */
extern PyMethodDef mx_cuda_py_route_methods[]; /* cuda/route_py.c */

#endif /* MX_BINDING_CUDA_PY_H */
