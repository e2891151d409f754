/* gptq_py.c — Python binding of the gptq area (see binding_py.h for the shape every binding follows).
 * mxmoe/gptq_solver.py converts dtypes and builds the QuantizedWeight; these functions take exact dtypes. */
#include "binding_py.h"
#include "mx_gptq.h"
#include "mx_quant.h"

// W: [N, K] f32, H: [K, K] f64, scheme, blocksize, damp, act_order, static_groups
// -> (qweight u32 [N, K/32*W] | u16 [N, K], scales f16 [K/G', N] | None, zeros u8 [K/G', N] | None,
//     flags, dead_columns, damp_used)
static PyObject *py_gptq(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *w_obj, *h_obj;
    mx_scheme s;
    mx_gptq_options o = mx_gptq_default_options();
    int act_order = 1, static_groups = 1;
    if (!PyArg_ParseTuple(args, "OOO&idpp", &w_obj, &h_obj, mx_py_scheme_converter, &s, &o.blocksize, &o.damp,
                          &act_order, &static_groups))
        return NULL;
    o.act_order = act_order;
    o.static_groups = static_groups;
    PyArrayObject *w = mx_py_array(w_obj, "W", NPY_FLOAT32, 2);
    if (!w) return NULL;
    PyArrayObject *H = mx_py_array(h_obj, "H", NPY_FLOAT64, 2);
    if (!H) return NULL;
    const npy_intp N = PyArray_DIM(w, 0), K = PyArray_DIM(w, 1);
    if (PyArray_DIM(H, 0) != K || PyArray_DIM(H, 1) != K)
        return PyErr_Format(PyExc_ValueError, "H must be [K, K] = [%zd, %zd] for W of shape [%zd, %zd], got "
                            "[%zd, %zd]", (Py_ssize_t)K, (Py_ssize_t)K, (Py_ssize_t)N, (Py_ssize_t)K,
                            (Py_ssize_t)PyArray_DIM(H, 0), (Py_ssize_t)PyArray_DIM(H, 1));
    mx_error err = {MX_OK, ""};
    if (mx_check_weight_shape(N, K, &s, &err) != MX_OK) return mx_py_raise(&err);

    PyArrayObject *qweight = NULL, *scales = NULL, *zeros = NULL;
    PyObject *result = NULL;
    const int w16 = s.w_bits == 16;
    const int has_zeros = !w16 && !s.symmetric && !(s.fmt == MX_FMT_FP8_E4M3 && s.w_bits == 8);
    const npy_intp scale_rows = s.group_size > 0 ? K / s.group_size : 1;
    npy_intp qshape[2] = {N, w16 ? K : K / 32 * s.w_bits}, sshape[2] = {scale_rows, N};
    qweight = mx_py_new_array(2, qshape, w16 ? NPY_UINT16 : NPY_UINT32);
    if (!qweight) goto cleanup;
    if (!w16 && !(scales = mx_py_new_array(2, sshape, NPY_FLOAT16))) goto cleanup;
    if (has_zeros && !(zeros = mx_py_new_array(2, sshape, NPY_UINT8))) goto cleanup;

    mx_gptq_report report;
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_gptq(PyArray_DATA(w), PyArray_DATA(H), N, K, &s, &o, PyArray_DATA(qweight),
                 scales ? PyArray_DATA(scales) : NULL, zeros ? PyArray_DATA(zeros) : NULL, &report, &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        mx_py_raise(&err);
        goto cleanup;
    }
    result = Py_BuildValue("(OOOiLd)", qweight, scales ? (PyObject *)scales : Py_None,
                           zeros ? (PyObject *)zeros : Py_None, (int)report.flags, (long long)report.dead_columns,
                           report.damp);
cleanup:
    Py_XDECREF(qweight);
    Py_XDECREF(scales);
    Py_XDECREF(zeros);
    return result;
}

// H: [K, K] f64, min_pivot -> U [K, K] f64 upper with H^-1 = U^T U.
static PyObject *py_gptq_inverse_cholesky(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *h_obj;
    double min_pivot = 0.0;
    if (!PyArg_ParseTuple(args, "O|d", &h_obj, &min_pivot)) return NULL;
    PyArrayObject *H = mx_py_array(h_obj, "H", NPY_FLOAT64, 2);
    if (!H) return NULL;
    const npy_intp K = PyArray_DIM(H, 0);
    if (PyArray_DIM(H, 1) != K)
        return PyErr_Format(PyExc_ValueError, "H must be square, got [%zd, %zd]", (Py_ssize_t)K,
                            (Py_ssize_t)PyArray_DIM(H, 1));
    npy_intp shape[2] = {K, K};
    PyArrayObject *U = mx_py_new_array(2, shape, NPY_FLOAT64);
    if (!U) return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_gptq_inverse_cholesky(PyArray_DATA(H), K, min_pivot, PyArray_DATA(U), &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        Py_DECREF(U);
        return mx_py_raise(&err);
    }
    return (PyObject *)U;
}

PyMethodDef mx_py_gptq_methods[] = {
    {"gptq", py_gptq, METH_VARARGS,
     "gptq(W f32 [N,K], H f64 [K,K], scheme, blocksize, damp, act_order, static_groups) -> (qweight, scales, "
     "zeros, flags, dead_columns, damp_used)"},
    {"gptq_inverse_cholesky", py_gptq_inverse_cholesky, METH_VARARGS,
     "gptq_inverse_cholesky(H f64 [K,K], min_pivot=0) -> U f64 [K,K] upper, H^-1 = U^T U"},
    {NULL, NULL, 0, NULL},
};
