/* hadamard_py.c — Python binding of the hadamard area (see binding_py.h for the shape every binding follows).
 * mxmoe/hadamard.py moves the axis, copies and checks dtypes; these functions take C-contiguous 2-D rows. */
#include "binding_py.h"
#include "mx_hadamard.h"

// seed: None or an int in [0, 2^64) -> *has_seed, *seed.  Returns 0 with an exception set on failure.
static int parse_seed(PyObject *obj, int *has_seed, uint64_t *seed) {
    *has_seed = 0;
    *seed = 0;
    if (obj == NULL || obj == Py_None) return 1;
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "seed must be None or an int, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "seed must be an int in [0, 2**64), got %R", obj);
        return 0;
    }
    *has_seed = 1;
    *seed = (uint64_t)value;
    return 1;
}

// n: int -> the sign vector int8 [n] of `seed`, or NULL when seed is None (returns 0 with an exception on error).
static int make_signs(Py_ssize_t n, PyObject *seed_obj, int8_t **signs) {
    int has_seed;
    uint64_t seed;
    *signs = NULL;
    if (!parse_seed(seed_obj, &has_seed, &seed)) return 0;
    if (!has_seed || n <= 0) return 1;
    *signs = PyMem_Malloc((size_t)n);
    if (!*signs) {
        PyErr_NoMemory();
        return 0;
    }
    mx_hadamard_signs(n, seed, *signs);
    return 1;
}

// x: [rows, n] f32 or f64, C-contiguous, transformed in place; seed None or int.
static PyObject *py_hadamard_transform(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *x_obj, *seed_obj = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &x_obj, &seed_obj)) return NULL;
    if (!PyArray_Check(x_obj)) return PyErr_Format(PyExc_TypeError, "x must be a numpy.ndarray");
    int typenum = PyArray_TYPE((PyArrayObject *)x_obj) == NPY_FLOAT64 ? NPY_FLOAT64 : NPY_FLOAT32;
    PyArrayObject *x = mx_py_array(x_obj, "x", typenum, 2);
    if (!x) return NULL;
    if (!PyArray_ISWRITEABLE(x)) return PyErr_Format(PyExc_ValueError, "x must be writeable");
    int64_t rows = PyArray_DIM(x, 0), n = PyArray_DIM(x, 1);
    int8_t *signs = NULL;
    if (!make_signs((Py_ssize_t)n, seed_obj, &signs)) return NULL;
    mx_error err = {MX_OK, ""};
    enum mx_status st;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_FLOAT64) st = mx_hadamard_transform_f64(PyArray_DATA(x), rows, n, signs, &err);
    else st = mx_hadamard_transform_f32(PyArray_DATA(x), rows, n, signs, &err);
    Py_END_ALLOW_THREADS
    PyMem_Free(signs);
    if (st != MX_OK) return mx_py_raise(&err);
    Py_RETURN_NONE;
}

// n: int, seed -> f64 [n, n] = H_n D.
static PyObject *py_hadamard_matrix(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t n;
    PyObject *seed_obj = Py_None;
    if (!PyArg_ParseTuple(args, "n|O", &n, &seed_obj)) return NULL;
    mx_error err = {MX_OK, ""};
    int32_t m;
    if (mx_hadamard_base_order(n, &m, &err) != MX_OK) return mx_py_raise(&err);
    int8_t *signs = NULL;
    if (!make_signs(n, seed_obj, &signs)) return NULL;
    npy_intp shape[2] = {n, n};
    PyArrayObject *out = mx_py_new_array(2, shape, NPY_FLOAT64);
    enum mx_status st = MX_OK;
    if (!out) goto cleanup;
    Py_BEGIN_ALLOW_THREADS
    st = mx_hadamard_matrix(n, signs, PyArray_DATA(out), &err);
    Py_END_ALLOW_THREADS
    if (st != MX_OK) {
        Py_CLEAR(out);
        mx_py_raise(&err);
    }
cleanup:
    PyMem_Free(signs);
    return (PyObject *)out;
}

// n: int -> the base order m (n = m * 2^k).
static PyObject *py_hadamard_base_order(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    mx_error err = {MX_OK, ""};
    int32_t m;
    if (mx_hadamard_base_order(n, &m, &err) != MX_OK) return mx_py_raise(&err);
    return PyLong_FromLong(m);
}

// m: int -> int8 [m, m], the unnormalised base matrix.
static PyObject *py_hadamard_base_matrix(PyObject *self, PyObject *args) {
    (void)self;
    int m;
    if (!PyArg_ParseTuple(args, "i", &m)) return NULL;
    if (m < 1 || m > MX_HADAMARD_MAX_BASE)
        return PyErr_Format(PyExc_ValueError, "m=%d must be in [1, %d]", m, MX_HADAMARD_MAX_BASE);
    npy_intp shape[2] = {m, m};
    PyArrayObject *out = mx_py_new_array(2, shape, NPY_INT8);
    if (!out) return NULL;
    mx_error err = {MX_OK, ""};
    if (mx_hadamard_base_matrix(m, PyArray_DATA(out), &err) != MX_OK) {
        Py_DECREF(out);
        return mx_py_raise(&err);
    }
    return (PyObject *)out;
}

// n: int, seed: int -> int8 [n] signs (splitmix64).
static PyObject *py_hadamard_signs(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t n;
    PyObject *seed_obj;
    if (!PyArg_ParseTuple(args, "nO", &n, &seed_obj)) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "n=%zd must be >= 0", n);
    int has_seed;
    uint64_t seed;
    if (!parse_seed(seed_obj, &has_seed, &seed)) return NULL;
    if (!has_seed) return PyErr_Format(PyExc_ValueError, "seed must be an int");
    npy_intp shape[1] = {n};
    PyArrayObject *out = mx_py_new_array(1, shape, NPY_INT8);
    if (!out) return NULL;
    mx_hadamard_signs(n, seed, PyArray_DATA(out));
    return (PyObject *)out;
}

PyMethodDef mx_py_hadamard_methods[] = {
    {"hadamard_transform", py_hadamard_transform, METH_VARARGS,
     "hadamard_transform(x [rows, n] f32|f64 C-contiguous, seed=None) -> None; x <- H_n D x per row, in place"},
    {"hadamard_matrix", py_hadamard_matrix, METH_VARARGS, "hadamard_matrix(n, seed=None) -> f64 [n, n] = H_n D"},
    {"hadamard_base_order", py_hadamard_base_order, METH_VARARGS,
     "hadamard_base_order(n) -> m, the Paley/Sylvester base order with n = m * 2^k"},
    {"hadamard_base_matrix", py_hadamard_base_matrix, METH_VARARGS,
     "hadamard_base_matrix(m) -> int8 [m, m] unnormalised +-1 base matrix"},
    {"hadamard_signs", py_hadamard_signs, METH_VARARGS, "hadamard_signs(n, seed) -> int8 [n] splitmix64 signs"},
    {NULL, NULL, 0, NULL},
};
