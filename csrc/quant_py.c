/* quant_py.c — Python binding of the quant area (see binding_py.h for the shape every binding follows).
 *
 *   quantize_rtn(w f32 [N, K], scheme) -> (qweight, scales | None, zeros | None)
 *   dequantize(qweight, scales | None, zeros | None, N, K, scheme) -> w_hat f32 [N, K]
 *   pack_codes(codes u8 [N, K], scheme) -> qweight u32 [N, K/32*W];  unpack_codes(qweight, K, scheme) -> codes
 *   quantize_activations(x f32 [M, K], scheme) -> (values, scales f32 [M])
 *   dequantize_activations(values, scales f32 [M], K, scheme) -> x_hat f32 [M, K]
 *   e4m3_encode(x f32 [...]) -> u8 [...];  e4m3_decode(v u8 [...]) -> f32 [...]   (scalar conversions, for tests)
 */
#include "binding_py.h"
#include "mx_quant.h"

/* Check the packed buffers of an [N, K] weight against the scheme's layout (mx_scheme.h); ValueError naming the
 * buffer.  The arrays were already checked for dtype and contiguity. */
static int check_weight_arrays(PyArrayObject *qweight, PyArrayObject *scales, PyArrayObject *zeros, int64_t N,
                               int64_t K, const mx_scheme *s) {
    mx_error err = {MX_OK, ""};
    if (mx_check_weight_shape(N, K, s, &err) != MX_OK) {
        mx_py_raise(&err);
        return 0;
    }
    char name[64];
    mx_scheme_format(s, name, sizeof name);
    int64_t q_cols = s->w_bits == 16 ? K : K / 32 * s->w_bits;
    if (PyArray_DIM(qweight, 0) != N || PyArray_DIM(qweight, 1) != q_cols) {
        PyErr_Format(PyExc_ValueError, "qweight has shape (%lld, %lld), expected (%lld, %lld) for N=%lld, K=%lld, %s",
                     (long long)PyArray_DIM(qweight, 0), (long long)PyArray_DIM(qweight, 1), (long long)N,
                     (long long)q_cols, (long long)N, (long long)K, name);
        return 0;
    }
    int64_t rows = mx_scheme_scale_rows(s, K);
    if (s->w_bits != 16) {
        if (!scales) {
            PyErr_Format(PyExc_ValueError, "scales are required for %s", name);
            return 0;
        }
        if (PyArray_DIM(scales, 0) != rows || PyArray_DIM(scales, 1) != N) {
            PyErr_Format(PyExc_ValueError, "scales has shape (%lld, %lld), expected (%lld, %lld) for %s",
                         (long long)PyArray_DIM(scales, 0), (long long)PyArray_DIM(scales, 1), (long long)rows,
                         (long long)N, name);
            return 0;
        }
    }
    int needs_zeros = s->w_bits != 16 && !s->symmetric;
    if (needs_zeros) {
        if (!zeros) {
            PyErr_Format(PyExc_ValueError, "zeros are required for the asym scheme %s", name);
            return 0;
        }
        if (PyArray_DIM(zeros, 0) != rows || PyArray_DIM(zeros, 1) != N) {
            PyErr_Format(PyExc_ValueError, "zeros has shape (%lld, %lld), expected (%lld, %lld) for %s",
                         (long long)PyArray_DIM(zeros, 0), (long long)PyArray_DIM(zeros, 1), (long long)rows,
                         (long long)N, name);
            return 0;
        }
    }
    return 1;
}

static PyObject *py_quantize_rtn(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *w_obj, *result = NULL;
    mx_scheme scheme;
    PyArrayObject *qweight = NULL, *scales = NULL, *zeros = NULL;
    if (!PyArg_ParseTuple(args, "OO&", &w_obj, mx_py_scheme_converter, &scheme)) return NULL;
    PyArrayObject *w = mx_py_array(w_obj, "W", NPY_FLOAT32, 2);
    if (!w) return NULL;
    int64_t N = PyArray_DIM(w, 0), K = PyArray_DIM(w, 1);
    mx_error err = {MX_OK, ""};
    if (mx_check_weight_shape(N, K, &scheme, &err) != MX_OK) return mx_py_raise(&err);

    npy_intp q_shape[2] = {(npy_intp)N, (npy_intp)(scheme.w_bits == 16 ? K : K / 32 * scheme.w_bits)};
    npy_intp s_shape[2] = {(npy_intp)mx_scheme_scale_rows(&scheme, K), (npy_intp)N};
    qweight = mx_py_new_array(2, q_shape, scheme.w_bits == 16 ? NPY_UINT16 : NPY_UINT32);
    if (!qweight) goto cleanup;
    if (scheme.w_bits != 16 && !(scales = mx_py_new_array(2, s_shape, NPY_FLOAT16))) goto cleanup;
    if (scheme.w_bits != 16 && !scheme.symmetric && !(zeros = mx_py_new_array(2, s_shape, NPY_UINT8))) goto cleanup;

    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_quantize_rtn(PyArray_DATA(w), N, K, &scheme, PyArray_DATA(qweight),
                         scales ? PyArray_DATA(scales) : NULL, zeros ? PyArray_DATA(zeros) : NULL, &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        mx_py_raise(&err);
        goto cleanup;
    }
    result = Py_BuildValue("(OOO)", qweight, scales ? (PyObject *)scales : Py_None,
                           zeros ? (PyObject *)zeros : Py_None);
cleanup:
    Py_XDECREF(qweight);
    Py_XDECREF(scales);
    Py_XDECREF(zeros);
    return result;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *q_obj, *s_obj, *z_obj;
    long long N, K;
    mx_scheme scheme;
    if (!PyArg_ParseTuple(args, "OOOLLO&", &q_obj, &s_obj, &z_obj, &N, &K, mx_py_scheme_converter, &scheme))
        return NULL;
    PyArrayObject *qweight = mx_py_array(q_obj, "qweight", scheme.w_bits == 16 ? NPY_UINT16 : NPY_UINT32, 2);
    if (!qweight) return NULL;
    PyArrayObject *scales = NULL, *zeros = NULL;
    if (s_obj != Py_None && !(scales = mx_py_array(s_obj, "scales", NPY_FLOAT16, 2))) return NULL;
    if (z_obj != Py_None && !(zeros = mx_py_array(z_obj, "zeros", NPY_UINT8, 2))) return NULL;
    if (!check_weight_arrays(qweight, scales, zeros, N, K, &scheme)) return NULL;
    npy_intp shape[2] = {(npy_intp)N, (npy_intp)K};
    PyArrayObject *w_hat = mx_py_new_array(2, shape, NPY_FLOAT32);
    if (!w_hat) return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_dequantize(PyArray_DATA(qweight), scales ? PyArray_DATA(scales) : NULL,
                       zeros ? PyArray_DATA(zeros) : NULL, N, K, &scheme, PyArray_DATA(w_hat), &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        Py_DECREF(w_hat);
        return mx_py_raise(&err);
    }
    return (PyObject *)w_hat;
}

static PyObject *py_pack_codes(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *c_obj;
    mx_scheme scheme;
    if (!PyArg_ParseTuple(args, "OO&", &c_obj, mx_py_scheme_converter, &scheme)) return NULL;
    PyArrayObject *codes = mx_py_array(c_obj, "codes", NPY_UINT8, 2);
    if (!codes) return NULL;
    int64_t N = PyArray_DIM(codes, 0), K = PyArray_DIM(codes, 1);
    mx_error err = {MX_OK, ""};
    if (mx_check_weight_shape(N, K, &scheme, &err) != MX_OK) return mx_py_raise(&err);
    if (scheme.w_bits == 16) {
        PyErr_SetString(PyExc_ValueError, "w16a16 weights are bf16, not packed codes");
        return NULL;
    }
    npy_intp shape[2] = {(npy_intp)N, (npy_intp)(K / 32 * scheme.w_bits)};
    PyArrayObject *qweight = mx_py_new_array(2, shape, NPY_UINT32);
    if (!qweight) return NULL;
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_pack_codes(PyArray_DATA(codes), N, K, &scheme, PyArray_DATA(qweight), &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        Py_DECREF(qweight);
        return mx_py_raise(&err);
    }
    return (PyObject *)qweight;
}

static PyObject *py_unpack_codes(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *q_obj;
    long long K;
    mx_scheme scheme;
    if (!PyArg_ParseTuple(args, "OLO&", &q_obj, &K, mx_py_scheme_converter, &scheme)) return NULL;
    PyArrayObject *qweight = mx_py_array(q_obj, "qweight", NPY_UINT32, 2);
    if (!qweight) return NULL;
    int64_t N = PyArray_DIM(qweight, 0);
    mx_error err = {MX_OK, ""};
    if (mx_check_weight_shape(N, K, &scheme, &err) != MX_OK) return mx_py_raise(&err);
    if (scheme.w_bits == 16) {
        PyErr_SetString(PyExc_ValueError, "w16a16 weights are bf16, not packed codes");
        return NULL;
    }
    if (PyArray_DIM(qweight, 1) != K / 32 * scheme.w_bits) {
        PyErr_Format(PyExc_ValueError, "qweight has %lld columns, expected K/32*W = %lld for K=%lld",
                     (long long)PyArray_DIM(qweight, 1), (long long)(K / 32 * scheme.w_bits), K);
        return NULL;
    }
    npy_intp shape[2] = {(npy_intp)N, (npy_intp)K};
    PyArrayObject *codes = mx_py_new_array(2, shape, NPY_UINT8);
    if (!codes) return NULL;
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_unpack_codes(PyArray_DATA(qweight), N, K, &scheme, PyArray_DATA(codes), &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        Py_DECREF(codes);
        return mx_py_raise(&err);
    }
    return (PyObject *)codes;
}

/* dtype and per-row width of quantized activation values */
static int activation_layout(const mx_scheme *s, int64_t K, int *typenum, int64_t *cols) {
    if (s->a_bits == 16) {
        char name[64];
        mx_scheme_format(s, name, sizeof name);
        PyErr_Format(PyExc_ValueError, "scheme %s keeps 16-bit activations: nothing to quantize", name);
        return 0;
    }
    *typenum = (s->a_bits == 8 && s->fmt == MX_FMT_INT) ? NPY_INT8 : NPY_UINT8;
    *cols = s->a_bits == 4 ? K / 2 : K;
    return 1;
}

static PyObject *py_quantize_activations(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *x_obj, *result = NULL;
    mx_scheme scheme;
    if (!PyArg_ParseTuple(args, "OO&", &x_obj, mx_py_scheme_converter, &scheme)) return NULL;
    PyArrayObject *x = mx_py_array(x_obj, "X", NPY_FLOAT32, 2);
    if (!x) return NULL;
    int64_t M = PyArray_DIM(x, 0), K = PyArray_DIM(x, 1), cols;
    int typenum;
    if (!activation_layout(&scheme, K, &typenum, &cols)) return NULL;
    npy_intp v_shape[2] = {(npy_intp)M, (npy_intp)cols}, s_shape[1] = {(npy_intp)M};
    PyArrayObject *values = mx_py_new_array(2, v_shape, typenum);
    PyArrayObject *scales = mx_py_new_array(1, s_shape, NPY_FLOAT32);
    if (!values || !scales) goto cleanup;
    mx_error err = {MX_OK, ""};
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_quantize_activations(PyArray_DATA(x), M, K, &scheme, PyArray_DATA(values), PyArray_DATA(scales), &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        mx_py_raise(&err);
        goto cleanup;
    }
    result = Py_BuildValue("(OO)", values, scales);
cleanup:
    Py_XDECREF(values);
    Py_XDECREF(scales);
    return result;
}

static PyObject *py_dequantize_activations(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *v_obj, *s_obj;
    long long K;
    mx_scheme scheme;
    if (!PyArg_ParseTuple(args, "OOLO&", &v_obj, &s_obj, &K, mx_py_scheme_converter, &scheme)) return NULL;
    int64_t cols;
    int typenum;
    if (!activation_layout(&scheme, K, &typenum, &cols)) return NULL;
    PyArrayObject *values = mx_py_array(v_obj, "values", typenum, 2);
    if (!values) return NULL;
    PyArrayObject *scales = mx_py_array(s_obj, "scales", NPY_FLOAT32, 1);
    if (!scales) return NULL;
    int64_t M = PyArray_DIM(values, 0);
    if (PyArray_DIM(values, 1) != cols || PyArray_DIM(scales, 0) != M) {
        PyErr_Format(PyExc_ValueError, "values (%lld, %lld) and scales (%lld,) do not match M=%lld, K=%lld",
                     (long long)M, (long long)PyArray_DIM(values, 1), (long long)PyArray_DIM(scales, 0),
                     (long long)M, K);
        return NULL;
    }
    npy_intp shape[2] = {(npy_intp)M, (npy_intp)K};
    PyArrayObject *x_hat = mx_py_new_array(2, shape, NPY_FLOAT32);
    if (!x_hat) return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mx_dequantize_activations(PyArray_DATA(values), PyArray_DATA(scales), M, K, &scheme, PyArray_DATA(x_hat),
                                   &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        Py_DECREF(x_hat);
        return mx_py_raise(&err);
    }
    return (PyObject *)x_hat;
}

static PyObject *py_e4m3_encode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *x_obj;
    if (!PyArg_ParseTuple(args, "O", &x_obj)) return NULL;
    PyArrayObject *x = mx_py_array(x_obj, "x", NPY_FLOAT32, -1);
    if (!x) return NULL;
    PyArrayObject *out = mx_py_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_UINT8);
    if (!out) return NULL;
    const float *in = PyArray_DATA(x);
    uint8_t *o = PyArray_DATA(out);
    npy_intp n = PyArray_SIZE(x);
    for (npy_intp i = 0; i < n; i++) o[i] = mx_f32_to_e4m3(in[i]);
    return (PyObject *)out;
}

static PyObject *py_e4m3_decode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *v_obj;
    if (!PyArg_ParseTuple(args, "O", &v_obj)) return NULL;
    PyArrayObject *v = mx_py_array(v_obj, "v", NPY_UINT8, -1);
    if (!v) return NULL;
    PyArrayObject *out = mx_py_new_array(PyArray_NDIM(v), PyArray_DIMS(v), NPY_FLOAT32);
    if (!out) return NULL;
    const uint8_t *in = PyArray_DATA(v);
    float *o = PyArray_DATA(out);
    npy_intp n = PyArray_SIZE(v);
    for (npy_intp i = 0; i < n; i++) o[i] = mx_e4m3_to_f32(in[i]);
    return (PyObject *)out;
}

PyMethodDef mx_py_quant_methods[] = {
    {"quantize_rtn", py_quantize_rtn, METH_VARARGS, "quantize_rtn(W f32 [N,K], scheme) -> (qweight, scales, zeros)"},
    {"dequantize", py_dequantize, METH_VARARGS, "dequantize(qweight, scales, zeros, N, K, scheme) -> f32 [N,K]"},
    {"pack_codes", py_pack_codes, METH_VARARGS, "pack_codes(codes u8 [N,K], scheme) -> qweight u32"},
    {"unpack_codes", py_unpack_codes, METH_VARARGS, "unpack_codes(qweight u32, K, scheme) -> codes u8 [N,K]"},
    {"quantize_activations", py_quantize_activations, METH_VARARGS,
     "quantize_activations(X f32 [M,K], scheme) -> (values, scales f32 [M])"},
    {"dequantize_activations", py_dequantize_activations, METH_VARARGS,
     "dequantize_activations(values, scales, K, scheme) -> f32 [M,K]"},
    {"e4m3_encode", py_e4m3_encode, METH_VARARGS, "e4m3_encode(x f32) -> u8 e4m3fn bits (RNE, saturating)"},
    {"e4m3_decode", py_e4m3_decode, METH_VARARGS, "e4m3_decode(v u8) -> f32"},
    {NULL, NULL, 0, NULL},
};
