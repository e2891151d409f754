/* gemm_py.c — Python binding of the gemm area (see binding_py.h for the shape every binding follows).
 *
 *   ref_group_gemm(problems, n_threads=0) -> list of Y f32 [M_i, N_i]
 *       problems: a sequence of (x f32 [M, K], qweight, scales | None, zeros | None, N, K, scheme) tuples,
 *       the buffers in the layouts of mx_scheme.h.
 */
#include "binding_py.h"
#include "mx_gemm_ref.h"

/* Shapes of one problem's buffers against its scheme; ValueError naming the problem and the buffer. */
static int check_problem_arrays(Py_ssize_t i, PyArrayObject *x, PyArrayObject *qweight, PyArrayObject *scales,
                                PyArrayObject *zeros, int64_t N, int64_t K, const mx_scheme *s) {
    char name[64];
    mx_scheme_format(s, name, sizeof name);
    if (N <= 0 || K <= 0) {
        PyErr_Format(PyExc_ValueError, "problem %zd: N=%lld, K=%lld must be positive (%s)", i, (long long)N,
                     (long long)K, name);
        return 0;
    }
    if (PyArray_DIM(x, 1) != K) {
        PyErr_Format(PyExc_ValueError, "problem %zd: X has %lld columns but the weight has in_features K=%lld (%s)",
                     i, (long long)PyArray_DIM(x, 1), (long long)K, name);
        return 0;
    }
    const int64_t q_cols = s->w_bits == 16 ? K : K / 32 * s->w_bits;
    if (PyArray_DIM(qweight, 0) != N || PyArray_DIM(qweight, 1) != q_cols) {
        PyErr_Format(PyExc_ValueError, "problem %zd: qweight has shape (%lld, %lld), expected (%lld, %lld) (%s)", i,
                     (long long)PyArray_DIM(qweight, 0), (long long)PyArray_DIM(qweight, 1), (long long)N,
                     (long long)q_cols, name);
        return 0;
    }
    if (s->w_bits == 16) return 1;
    const int64_t rows = mx_scheme_scale_rows(s, K);
    if (!scales || PyArray_DIM(scales, 0) != rows || PyArray_DIM(scales, 1) != N) {
        PyErr_Format(PyExc_ValueError, "problem %zd: scales must have shape (%lld, %lld) (%s)", i, (long long)rows,
                     (long long)N, name);
        return 0;
    }
    const int needs_zeros = !s->symmetric && !(s->fmt == MX_FMT_FP8_E4M3 && s->w_bits == 8);
    if (needs_zeros && (!zeros || PyArray_DIM(zeros, 0) != rows || PyArray_DIM(zeros, 1) != N)) {
        PyErr_Format(PyExc_ValueError, "problem %zd: zeros must have shape (%lld, %lld) (%s)", i, (long long)rows,
                     (long long)N, name);
        return 0;
    }
    return 1;
}

static PyObject *py_ref_group_gemm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *seq_obj, *seq = NULL, *outputs = NULL;
    int n_threads = 0;
    mx_gemm_problem *problems = NULL;
    if (!PyArg_ParseTuple(args, "O|i", &seq_obj, &n_threads)) return NULL;
    /* a private tuple: the items (and through them the arrays) stay alive while the GIL is released, even if
     * another thread mutates the caller's list */
    if (!PySequence_Check(seq_obj)) {
        PyErr_SetString(PyExc_TypeError, "problems must be a sequence of (x, qweight, scales, zeros, N, K, scheme)");
        return NULL;
    }
    seq = PySequence_Tuple(seq_obj);
    if (!seq) return NULL;
    const Py_ssize_t count = PyTuple_GET_SIZE(seq);
    problems = PyMem_Calloc((size_t)(count > 0 ? count : 1), sizeof *problems);
    outputs = PyList_New(count);
    if (!problems || !outputs) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i); /* borrowed; `seq` keeps it alive */
        PyObject *x_obj, *q_obj, *s_obj, *z_obj;
        long long N, K;
        mx_scheme scheme;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "OOOOLLO&", &x_obj, &q_obj, &s_obj, &z_obj, &N, &K,
                                                      mx_py_scheme_converter, &scheme)) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError, "problem %zd must be a (x, qweight, scales, zeros, N, K, scheme) tuple",
                             i);
            }
            goto fail;
        }
        PyArrayObject *x = mx_py_array(x_obj, "X", NPY_FLOAT32, 2);
        if (!x) goto fail;
        PyArrayObject *qweight = mx_py_array(q_obj, "qweight", scheme.w_bits == 16 ? NPY_UINT16 : NPY_UINT32, 2);
        if (!qweight) goto fail;
        PyArrayObject *scales = NULL, *zeros = NULL;
        if (s_obj != Py_None && !(scales = mx_py_array(s_obj, "scales", NPY_FLOAT16, 2))) goto fail;
        if (z_obj != Py_None && !(zeros = mx_py_array(z_obj, "zeros", NPY_UINT8, 2))) goto fail;
        if (!check_problem_arrays(i, x, qweight, scales, zeros, N, K, &scheme)) goto fail;
        npy_intp shape[2] = {PyArray_DIM(x, 0), (npy_intp)N};
        PyArrayObject *y = mx_py_new_array(2, shape, NPY_FLOAT32);
        if (!y) goto fail;
        PyList_SET_ITEM(outputs, i, (PyObject *)y); /* steals */
        problems[i] = (mx_gemm_problem){PyArray_DATA(x), PyArray_DIM(x, 0), N, K, scheme, PyArray_DATA(qweight),
                                        scales ? PyArray_DATA(scales) : NULL, zeros ? PyArray_DATA(zeros) : NULL,
                                        PyArray_DATA(y)};
    }
    mx_error err = {MX_OK, ""};
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_ref_group_gemm(problems, (int64_t)count, n_threads, &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        mx_py_raise(&err);
        goto fail;
    }
    PyMem_Free(problems);
    Py_DECREF(seq);
    return outputs;
fail:
    PyMem_Free(problems);
    Py_XDECREF(outputs);
    Py_XDECREF(seq);
    return NULL;
}

PyMethodDef mx_py_gemm_methods[] = {
    {"ref_group_gemm", py_ref_group_gemm, METH_VARARGS,
     "ref_group_gemm([(x, qweight, scales, zeros, N, K, scheme), ...], n_threads=0) -> [Y f32 [M, N], ...]"},
    {NULL, NULL, 0, NULL},
};
