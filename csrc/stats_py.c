/* stats_py.c — Python binding of the stats area (see binding_py.h for the shape every binding follows). */
#include "binding_py.h"
#include "mx_stats.h"

// H: [K, K] f64 (in place), x: [rows, K] f32, row_weights: [rows] f32 or None
static PyObject *py_stats_accumulate_xtx(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"H", "x", "row_weights", NULL};
    PyObject *h_obj, *x_obj, *w_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O", keywords, &h_obj, &x_obj, &w_obj)) return NULL;
    PyArrayObject *H = mx_py_array(h_obj, "H", NPY_FLOAT64, 2);
    if (!H) return NULL;
    PyArrayObject *x = mx_py_array(x_obj, "x", NPY_FLOAT32, 2);
    if (!x) return NULL;
    PyArrayObject *w = NULL;
    if (w_obj != Py_None && !(w = mx_py_array(w_obj, "row_weights", NPY_FLOAT32, 1))) return NULL;
    npy_intp rows = PyArray_DIM(x, 0), K = PyArray_DIM(x, 1);
    if (!PyArray_ISWRITEABLE(H)) {
        PyErr_SetString(PyExc_ValueError, "H must be writeable (it is updated in place)");
        return NULL;
    }
    if (PyArray_DIM(H, 0) != K || PyArray_DIM(H, 1) != K) {
        PyErr_Format(PyExc_ValueError, "H must be [K, K] = [%zd, %zd] for x of shape [%zd, %zd], got [%zd, %zd]",
                     K, K, rows, K, PyArray_DIM(H, 0), PyArray_DIM(H, 1));
        return NULL;
    }
    if (w && PyArray_DIM(w, 0) != rows) {
        PyErr_Format(PyExc_ValueError, "row_weights must have one entry per row of x (%zd), got %zd", rows,
                     PyArray_DIM(w, 0));
        return NULL;
    }
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    const float *x_data = (const float *)PyArray_DATA(x);
    const float *w_data = w ? (const float *)PyArray_DATA(w) : NULL;
    double *h_data = (double *)PyArray_DATA(H);
    Py_BEGIN_ALLOW_THREADS
    status = mx_stats_accumulate_xtx(x_data, rows, K, w_data, h_data, &err);
    Py_END_ALLOW_THREADS
    if (status != MX_OK) return mx_py_raise(&err);
    Py_RETURN_NONE;
}

PyMethodDef mx_py_stats_methods[] = {
    {"stats_accumulate_xtx", (PyCFunction)(void (*)(void))py_stats_accumulate_xtx, METH_VARARGS | METH_KEYWORDS,
     "stats_accumulate_xtx(H, x, row_weights=None) -> None: H += x^T diag(row_weights) x in place "
     "(H f64 [K, K], x f32 [rows, K], row_weights f32 [rows] >= 0)"},
    {NULL, NULL, 0, NULL},
};
