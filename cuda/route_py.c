/* route_py.c — Python binding of the routing / activation-quantization / combine kernels (cuda/route.cu).
 *
 * Thin by design: every entry takes device pointers and the CUDA stream as Python ints (torch's data_ptr() and
 * torch.cuda.current_stream().cuda_stream), releases the GIL around the launch and maps the status to an exception
 * (ValueError for arguments, RuntimeError for CUDA failures).  Shape / dtype / device checks of the tensors live in
 * mxmoe/cuda_ops.py, which owns the buffers; the C entry points re-check sizes, alignment and NULLs.
 *
 * Activation buffers are passed as one tuple (bf16, int8, fp8, int4, scale_int8, scale_fp8, scale_int4, ld[,
 * rowsum_int8]) of pointers (0 = format not produced), the row stride in elements and, optionally, an int32 [rows]
 * buffer for the int8 rows' code sums. */
#include "binding_cuda_py.h"
#include "route.cuh"

static void *as_ptr(unsigned long long value) { return (void *)(uintptr_t)value; }

/* (bf16, int8, fp8, int4, scale_int8, scale_fp8, scale_int4, ld[, rowsum_int8]) -> mx_cuda_act_buffers; 0 with an
 * exception. */
static int parse_act_buffers(PyObject *obj, mx_cuda_act_buffers *out) {
    unsigned long long p[8];
    long long ld;
    if (!mx_cuda_py_parse_act_tuple(obj, "buffers", p, &ld)) return 0;
    out->d_bf16 = (uint16_t *)as_ptr(p[0]);
    out->d_int8 = (int8_t *)as_ptr(p[1]);
    out->d_fp8 = (uint8_t *)as_ptr(p[2]);
    out->d_int4 = (uint8_t *)as_ptr(p[3]);
    out->d_scale_int8 = (float *)as_ptr(p[4]);
    out->d_scale_fp8 = (float *)as_ptr(p[5]);
    out->d_scale_int4 = (float *)as_ptr(p[6]);
    out->ld = ld;
    out->d_rowsum_int8 = (int32_t *)as_ptr(p[7]);
    return 1;
}

static PyObject *py_route_workspace_bytes(PyObject *self, PyObject *args) {
    long long T;
    int k, n_experts;
    if (!PyArg_ParseTuple(args, "Lii:route_workspace_bytes", &T, &k, &n_experts)) return NULL;
    return PyLong_FromSize_t(mx_cuda_route_workspace_bytes(T, k, n_experts));
}

static PyObject *py_route_topk(PyObject *self, PyObject *args) {
    unsigned long long top_k_index, row_offsets, perm_token, inv_perm, dropped, workspace, stream;
    long long T, workspace_bytes;
    int k, n_experts, n_shared;
    if (!PyArg_ParseTuple(args, "KLiiiKKKKKLK:route_topk", &top_k_index, &T, &k, &n_experts, &n_shared,
                          &row_offsets, &perm_token, &inv_perm, &dropped, &workspace, &workspace_bytes, &stream))
        return NULL;
    if (workspace_bytes < 0) {
        PyErr_Format(PyExc_ValueError, "route_topk: workspace_bytes=%lld is negative", workspace_bytes);
        return NULL;
    }
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mx_cuda_route(as_ptr(top_k_index), T, k, n_experts, n_shared, as_ptr(row_offsets), as_ptr(perm_token),
                           as_ptr(inv_perm), as_ptr(dropped), as_ptr(workspace), (size_t)workspace_bytes,
                           as_ptr(stream), &err);
    Py_END_ALLOW_THREADS
    if (status != MX_OK) return mx_cuda_py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *py_route_gather_quant(PyObject *self, PyObject *args) {
    unsigned long long hidden, perm_token, row_offsets, group_formats, stream;
    long long ld_hidden, T, K, n_rows;
    int n_groups;
    PyObject *buffers_obj;
    if (!PyArg_ParseTuple(args, "KLLLKLKiKOK:route_gather_quant", &hidden, &ld_hidden, &T, &K, &perm_token, &n_rows,
                          &row_offsets, &n_groups, &group_formats, &buffers_obj, &stream))
        return NULL;
    mx_cuda_act_buffers buffers;
    if (!parse_act_buffers(buffers_obj, &buffers)) return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mx_cuda_gather_quant(as_ptr(hidden), ld_hidden, T, K, as_ptr(perm_token), n_rows, as_ptr(row_offsets),
                                  n_groups, as_ptr(group_formats), &buffers, as_ptr(stream), &err);
    Py_END_ALLOW_THREADS
    if (status != MX_OK) return mx_cuda_py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *py_route_act_mul_quant(PyObject *self, PyObject *args) {
    unsigned long long gate_up, row_offsets, group_formats, stream;
    long long ld_gate_up, n_rows, I;
    int n_groups;
    PyObject *hadamard_obj, *buffers_obj;
    if (!PyArg_ParseTuple(args, "KLLLKiKOOK:route_act_mul_quant", &gate_up, &ld_gate_up, &n_rows, &I, &row_offsets,
                          &n_groups, &group_formats, &hadamard_obj, &buffers_obj, &stream))
        return NULL;
    mx_cuda_act_buffers buffers;
    if (!parse_act_buffers(buffers_obj, &buffers)) return NULL;
    mx_cuda_hadamard hadamard = {NULL, NULL, 1, NULL};
    const mx_cuda_hadamard *hadamard_ptr = NULL;
    if (hadamard_obj != Py_None) {
        unsigned long long signs, base, group_mask = 0;
        if (!PyTuple_Check(hadamard_obj) ||
            !PyArg_ParseTuple(hadamard_obj, "KKi|K", &signs, &base, &hadamard.m, &group_mask)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "hadamard must be None or a tuple (signs_ptr, base_ptr, m[, "
                                             "group_mask_ptr])");
            return NULL;
        }
        hadamard.d_signs = (const float *)as_ptr(signs);
        hadamard.d_base = (const float *)as_ptr(base);
        hadamard.d_group_mask = (const uint8_t *)as_ptr(group_mask);
        hadamard_ptr = &hadamard;
    }
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mx_cuda_act_mul_quant(as_ptr(gate_up), ld_gate_up, n_rows, I, as_ptr(row_offsets), n_groups,
                                   as_ptr(group_formats), hadamard_ptr, &buffers, as_ptr(stream), &err);
    Py_END_ALLOW_THREADS
    if (status != MX_OK) return mx_cuda_py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *py_route_combine(PyObject *self, PyObject *args) {
    unsigned long long y, inv_perm, weights, row_offsets, shared_gate, out, stream;
    long long ldy, T, H, ld_out;
    int k, weights_dtype, n_experts, n_shared, shared_gate_dtype, apply_sigmoid;
    if (!PyArg_ParseTuple(args, "KLLLiKKiKiiKipKLK:route_combine", &y, &ldy, &T, &H, &k, &inv_perm, &weights,
                          &weights_dtype, &row_offsets, &n_experts, &n_shared, &shared_gate, &shared_gate_dtype,
                          &apply_sigmoid, &out, &ld_out, &stream))
        return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mx_cuda_combine(as_ptr(y), ldy, T, H, k, as_ptr(inv_perm), as_ptr(weights),
                             (enum mx_cuda_weight_dtype)weights_dtype, as_ptr(row_offsets), n_experts, n_shared,
                             as_ptr(shared_gate), (enum mx_cuda_weight_dtype)shared_gate_dtype, apply_sigmoid,
                             as_ptr(out), ld_out, as_ptr(stream), &err);
    Py_END_ALLOW_THREADS
    if (status != MX_OK) return mx_cuda_py_raise(&err);
    Py_RETURN_NONE;
}

PyMethodDef mx_cuda_py_route_methods[] = {
    {"route_workspace_bytes", py_route_workspace_bytes, METH_VARARGS,
     "route_workspace_bytes(T, k, n_experts) -> bytes of scratch route_topk needs"},
    {"route_topk", py_route_topk, METH_VARARGS,
     "route_topk(top_k_index, T, k, n_experts, n_shared, row_offsets, perm_token, inv_perm, dropped, workspace, "
     "workspace_bytes, stream): expert histogram, row_offsets [E+S+1], stable permutation and its inverse "
     "(cuda/route.cuh); pointers and stream are ints"},
    {"route_gather_quant", py_route_gather_quant, METH_VARARGS,
     "route_gather_quant(hidden, ld_hidden, T, K, perm_token, n_rows, row_offsets, n_groups, group_formats, "
     "buffers, stream): gather hidden rows in permuted order into bf16 / int8 / e4m3 / int4 (+ f32 scales, + int32 "
     "int8 row sums when buffers has a ninth element)"},
    {"route_act_mul_quant", py_route_act_mul_quant, METH_VARARGS,
     "route_act_mul_quant(gate_up, ld_gate_up, n_rows, I, row_offsets, n_groups, group_formats, hadamard, buffers, "
     "stream): SiLU(gate)*up (+ randomized Hadamard (signs, base, m[, group_mask])) and quantization for down's "
     "inputs"},
    {"route_combine", py_route_combine, METH_VARARGS,
     "route_combine(y, ldy, T, H, k, inv_perm, weights, weights_dtype, row_offsets, n_experts, n_shared, "
     "shared_gate, shared_gate_dtype, apply_sigmoid, out, ld_out, stream): out[t] = sum_slot w*y[inv_perm] "
     "+ gate(t) * sum of shared rows; dtypes 0 bf16, 1 f32, 2 f16"},
    {NULL, NULL, 0, NULL},
};
