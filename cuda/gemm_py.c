/* gemm_py.c — Python binding of the fused mixed-precision grouped GEMM (cuda/sm90_mixed_grouped_gemm.cu).
 *
 * Torch-free: device pointers and the stream are Python ints (t.data_ptr(), torch.cuda.current_stream().cuda_stream);
 * 0 means NULL.  Two steps, as the C API:
 *   table, info = gemm_problems_pack(problems)      once per layer (host check of every problem -> ValueError)
 *   (copy `table` to the device once, e.g. torch.frombuffer(table, dtype=torch.uint8).cuda())
 *   gemm_fused(d_table, info, d_row_offsets, n_groups, max_rows, acts, d_y, ldy, d_workspace, workspace_bytes,
 *              stream[, part])                      per call: O(1) checks, two launches, no sync */
#include "binding_cuda_py.h"

#include <string.h>

/* One problem tuple (scheme, expert, n, k, out_col, qweight, scales, zeros) -> record; scheme is an id or name. */
static int parse_problem(PyObject *item, Py_ssize_t index, mx_cuda_problem *out) {
    PyObject *scheme_obj;
    int expert, n, k, out_col;
    unsigned long long qweight, scales, zeros;
    if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "OiiiiKKK", &scheme_obj, &expert, &n, &k, &out_col,
                                                  &qweight, &scales, &zeros)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "problem %zd must be a tuple (scheme, expert, n, k, out_col, qweight_ptr, "
                                      "scales_ptr, zeros_ptr) of ints (scheme: id or name)", index);
        return 0;
    }
    int scheme_id;
    if (PyUnicode_Check(scheme_obj)) {
        const char *name = PyUnicode_AsUTF8(scheme_obj);
        if (!name) return 0;
        mx_scheme parsed;
        mx_error err = {MX_OK, ""};
        if (mx_scheme_parse(name, &parsed, &err) != MX_OK) {
            mx_cuda_py_raise(&err);
            return 0;
        }
        scheme_id = mx_scheme_find(&parsed);
        if (scheme_id < 0) {
            PyErr_Format(PyExc_ValueError, "problem %zd: scheme %s has no GPU kernel (not a candidate scheme)",
                         index, name);
            return 0;
        }
    } else {
        scheme_id = (int)PyLong_AsLong(scheme_obj);
        if (scheme_id == -1 && PyErr_Occurred()) return 0;
    }
    memset(out, 0, sizeof *out);
    out->scheme_id = scheme_id;
    out->expert = expert;
    out->n = n;
    out->k = k;
    out->out_col = out_col;
    out->qweight = (const void *)(uintptr_t)qweight;
    out->scales = (const void *)(uintptr_t)scales;
    out->zeros = (const void *)(uintptr_t)zeros;
    return 1;
}

static PyObject *info_tuple(const mx_cuda_problems_info *info) {
    return Py_BuildValue("(iiiiL)", info->formats_mask, info->max_k, info->max_expert, info->n_problems,
                         (long long)info->max_out_col_end);
}

static int parse_info(PyObject *obj, mx_cuda_problems_info *info) {
    long long max_out_col_end;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "iiiiL", &info->formats_mask, &info->max_k,
                                                 &info->max_expert, &info->n_problems, &max_out_col_end)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "info must be the 5-tuple returned by gemm_problems_pack");
        return 0;
    }
    info->max_out_col_end = max_out_col_end;
    return 1;
}

// problems: sequence of tuples -> (bytes [n * 64], info)
static PyObject *py_gemm_problems_pack(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *seq_obj, *result = NULL, *seq = NULL;
    mx_cuda_problem *table = NULL;
    if (!PyArg_ParseTuple(args, "O", &seq_obj)) return NULL;
    seq = PySequence_Fast(seq_obj, "problems must be a sequence of tuples");
    if (!seq) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MX_CUDA_GEMM_MAX_PROBLEMS) {
        PyErr_Format(PyExc_ValueError, "%zd problems, at most %d per fused launch", n, MX_CUDA_GEMM_MAX_PROBLEMS);
        goto done;
    }
    table = (mx_cuda_problem *)PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *table);
    if (!table) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!parse_problem(PySequence_Fast_GET_ITEM(seq, i), i, &table[i])) goto done;
    mx_cuda_problems_info info;
    mx_error err = {MX_OK, ""};
    if (mx_cuda_gemm_problems_check(table, (int32_t)n, &info, &err) != MX_OK) {
        mx_cuda_py_raise(&err);
        goto done;
    }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)table, (Py_ssize_t)(n * sizeof *table));
    PyObject *info_obj = bytes ? info_tuple(&info) : NULL;
    if (bytes && info_obj) result = PyTuple_Pack(2, bytes, info_obj);
    Py_XDECREF(bytes);
    Py_XDECREF(info_obj);
done:
    PyMem_Free(table);
    Py_XDECREF(seq);
    return result;
}

static PyObject *py_gemm_workspace_bytes(PyObject *self, PyObject *args) {
    (void)self;
    long long max_rows;
    int n_problems;
    if (!PyArg_ParseTuple(args, "Li", &max_rows, &n_problems)) return NULL;
    if (max_rows < 0 || n_problems < 0) {
        PyErr_Format(PyExc_ValueError, "max_rows=%lld and n_problems=%d must be >= 0", max_rows, n_problems);
        return NULL;
    }
    return PyLong_FromSize_t(mx_cuda_gemm_workspace_bytes((int64_t)max_rows, (int32_t)n_problems));
}

// acts: (bf16, int8, fp8, int4, scale_int8, scale_fp8, scale_int4, ld[, rowsum_int8]) device pointers (0 = absent) +
// row stride, and optionally the int8 rows' code sums
static int parse_acts(PyObject *obj, mx_cuda_activations *acts) {
    unsigned long long p[8];
    long long ld;
    if (!mx_cuda_py_parse_act_tuple(obj, "acts", p, &ld)) return 0;
    acts->d_bf16 = (const uint16_t *)(uintptr_t)p[0];
    acts->d_int8 = (const int8_t *)(uintptr_t)p[1];
    acts->d_fp8 = (const uint8_t *)(uintptr_t)p[2];
    acts->d_int4 = (const uint8_t *)(uintptr_t)p[3];
    acts->d_scale_int8 = (const float *)(uintptr_t)p[4];
    acts->d_scale_fp8 = (const float *)(uintptr_t)p[5];
    acts->d_scale_int4 = (const float *)(uintptr_t)p[6];
    acts->ld = ld;
    acts->d_rowsum_int8 = (const int32_t *)(uintptr_t)p[7];
    return 1;
}

static int parse_part(const char *part_name, mx_cuda_gemm_part *part) {
    if (strcmp(part_name, "all") == 0) *part = MX_CUDA_GEMM_ALL;
    else if (strcmp(part_name, "schedule") == 0) *part = MX_CUDA_GEMM_SCHEDULE;
    else if (strcmp(part_name, "compute") == 0) *part = MX_CUDA_GEMM_COMPUTE;
    else {
        PyErr_Format(PyExc_ValueError, "part='%s' must be 'all', 'schedule' or 'compute'", part_name);
        return 0;
    }
    return 1;
}

static PyObject *py_gemm_fused(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"problems", "info", "row_offsets", "n_groups", "max_rows", "acts", "y", "ldy",
                               "workspace", "workspace_bytes", "stream", "part", NULL};
    unsigned long long d_problems, d_row_offsets, d_y, d_workspace, stream;
    PyObject *info_obj, *acts_obj;
    int n_groups;
    long long max_rows, ldy;
    unsigned long long workspace_bytes;
    const char *part_name = "all";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KOKiLOKLKKK|s", keywords, &d_problems, &info_obj, &d_row_offsets,
                                     &n_groups, &max_rows, &acts_obj, &d_y, &ldy, &d_workspace, &workspace_bytes,
                                     &stream, &part_name))
        return NULL;
    mx_cuda_gemm_part part;
    if (!parse_part(part_name, &part)) return NULL;
    mx_cuda_problems_info info;
    mx_cuda_activations acts;
    if (!parse_info(info_obj, &info) || !parse_acts(acts_obj, &acts)) return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = mx_cuda_gemm_fused_part((const mx_cuda_problem *)(uintptr_t)d_problems, &info,
                                     (const int32_t *)(uintptr_t)d_row_offsets, n_groups, (int64_t)max_rows, &acts,
                                     (uint16_t *)(uintptr_t)d_y, (int64_t)ldy, (void *)(uintptr_t)d_workspace,
                                     (size_t)workspace_bytes, (void *)(uintptr_t)stream, part, &err);
    Py_END_ALLOW_THREADS;
    if (status != MX_OK) return mx_cuda_py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *py_gemm_fused_layer(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"problems", "info_gate_up", "info_down", "row_offsets", "n_groups", "max_rows", "x",
                               "gate_up", "ld_gate_up", "h", "ld_h", "I", "down", "ld_down", "workspace",
                               "workspace_bytes", "stream", "part", NULL};
    unsigned long long d_problems, d_row_offsets, d_gate_up, d_h, d_down, d_workspace, stream, workspace_bytes;
    PyObject *info_gu_obj, *info_down_obj, *x_obj;
    int n_groups;
    long long max_rows, ld_gate_up, ld_h, I, ld_down;
    const char *part_name = "all";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KOOKiLOKLKLLKLKKK|s", keywords, &d_problems, &info_gu_obj,
                                     &info_down_obj, &d_row_offsets, &n_groups, &max_rows, &x_obj, &d_gate_up,
                                     &ld_gate_up, &d_h, &ld_h, &I, &d_down, &ld_down, &d_workspace, &workspace_bytes,
                                     &stream, &part_name))
        return NULL;
    mx_cuda_gemm_part part;
    mx_cuda_problems_info info_gate_up, info_down;
    mx_cuda_activations x;
    if (!parse_part(part_name, &part) || !parse_info(info_gu_obj, &info_gate_up) ||
        !parse_info(info_down_obj, &info_down) || !parse_acts(x_obj, &x))
        return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = mx_cuda_gemm_fused_layer((const mx_cuda_problem *)(uintptr_t)d_problems, &info_gate_up, &info_down,
                                      (const int32_t *)(uintptr_t)d_row_offsets, n_groups, (int64_t)max_rows, &x,
                                      (uint16_t *)(uintptr_t)d_gate_up, (int64_t)ld_gate_up,
                                      (uint16_t *)(uintptr_t)d_h, (int64_t)ld_h, (int64_t)I,
                                      (uint16_t *)(uintptr_t)d_down, (int64_t)ld_down, (void *)(uintptr_t)d_workspace,
                                      (size_t)workspace_bytes, (void *)(uintptr_t)stream, part, &err);
    Py_END_ALLOW_THREADS;
    if (status != MX_OK) return mx_cuda_py_raise(&err);
    Py_RETURN_NONE;
}

PyMethodDef mx_cuda_py_gemm_methods[] = {
    {"gemm_problems_pack", py_gemm_problems_pack, METH_VARARGS,
     "gemm_problems_pack(problems) -> (table: bytes, info: tuple)\n"
     "problems: [(scheme id|name, expert, n, k, out_col, qweight_ptr, scales_ptr, zeros_ptr)], checked on the host "
     "(ValueError naming the problem, scheme, n, k). Copy `table` to the device once."},
    {"gemm_workspace_bytes", py_gemm_workspace_bytes, METH_VARARGS,
     "gemm_workspace_bytes(max_rows, n_problems) -> bytes of device workspace gemm_fused needs"},
    {"gemm_fused", (PyCFunction)(void (*)(void))py_gemm_fused, METH_VARARGS | METH_KEYWORDS,
     "gemm_fused(problems, info, row_offsets, n_groups, max_rows, acts, y, ldy, workspace, workspace_bytes, "
     "stream, part='all')\nOne fused launch of every problem (device table `problems` from gemm_problems_pack): "
     "y[rows of expert, out_col:out_col+n] = x[rows, :k] @ W.T in bf16. acts = (bf16, int8, fp8, int4, "
     "scale_int8, scale_fp8, scale_int4, ld[, rowsum_int8]): device pointers (0 = absent), the row stride and "
     "optionally the int8 rows' code sums (int32 [rows]). Asynchronous on `stream`. part='schedule' launches only the "
     "schedule kernel into `workspace`, part='compute' only the GEMM that consumes it (mx_cuda.h: "
     "mx_cuda_gemm_fused_part)."},
    {"gemm_fused_layer", (PyCFunction)(void (*)(void))py_gemm_fused_layer, METH_VARARGS | METH_KEYWORDS,
     "gemm_fused_layer(problems, info_gate_up, info_down, row_offsets, n_groups, max_rows, x, gate_up, ld_gate_up, "
     "h, ld_h, I, down, ld_down, workspace, workspace_bytes, stream, part='all')\nThe decode layer's gate_up and "
     "down GEMMs in one launch (device table `problems` = the gate_up table's bytes then the down table's): "
     "gate_up = x @ W_gate_up.T, per expert group h = bf16(SiLU(gate)·up) once its gate_up tiles are stored, "
     "down = h @ W_down.T; down problems must read bf16 (mx_cuda.h: mx_cuda_gemm_fused_layer)."},
    {NULL, NULL, 0, NULL},
};
