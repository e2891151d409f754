/* module_py.c — mxmoe._C: registers the method tables of every *_py.c file, the scheme table, and the
 * shared binding helpers declared in binding_py.h.  No computation here. */
#define MX_BINDING_MAIN
#include "binding_py.h"

#include <glpk.h>

#include "py_common.h"

PyObject *mx_py_raise(const mx_error *err) { return mx_py_raise_error(err); }

PyArrayObject *mx_py_array(PyObject *obj, const char *name, int typenum, int ndim) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *array = (PyArrayObject *)obj;
    if (PyArray_TYPE(array) != typenum) {
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(PyExc_TypeError, "%s must have dtype %S, got %S", name, (PyObject *)want,
                     (PyObject *)PyArray_DESCR(array));
        Py_XDECREF(want);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(array) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d dimensions", name, ndim,
                     PyArray_NDIM(array));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(array) || !PyArray_ISALIGNED(array)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned (use numpy.ascontiguousarray)", name);
        return NULL;
    }
    return array;
}

PyArrayObject *mx_py_new_array(int ndim, const npy_intp *shape, int typenum) {
    return (PyArrayObject *)PyArray_SimpleNew(ndim, (npy_intp *)shape, typenum);
}

int mx_py_scheme_converter(PyObject *obj, void *out) {
    mx_scheme *scheme = (mx_scheme *)out;
    mx_error err = {MX_OK, ""};
    if (PyUnicode_Check(obj)) {
        const char *name = PyUnicode_AsUTF8(obj);
        if (!name) return 0;
        if (mx_scheme_parse(name, scheme, &err) != MX_OK) {
            mx_py_raise(&err);
            return 0;
        }
        return 1;
    }
    int w, a, g, sym, fmt;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "iiiii", &w, &a, &g, &sym, &fmt)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "scheme must be a name or a (w_bits, a_bits, group_size, symmetric, fmt) "
                                      "tuple, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    mx_scheme parsed = {w, a, g, sym, fmt};
    if (mx_scheme_validate(&parsed, &err) != MX_OK) {
        mx_py_raise(&err);
        return 0;
    }
    *scheme = parsed;
    return 1;
}

/* ---- scheme area: parse/format/bits (the table itself is exported as a tuple in the module init) ---- */

static PyObject *scheme_tuple(const mx_scheme *s) {
    return Py_BuildValue("(iiiii)", s->w_bits, s->a_bits, s->group_size, s->symmetric, s->fmt);
}

static PyObject *py_scheme_parse(PyObject *self, PyObject *args) {
    (void)self;
    mx_scheme scheme;
    if (!PyArg_ParseTuple(args, "O&", mx_py_scheme_converter, &scheme)) return NULL;
    return scheme_tuple(&scheme);
}

static PyObject *py_scheme_format(PyObject *self, PyObject *args) {
    (void)self;
    mx_scheme scheme;
    if (!PyArg_ParseTuple(args, "O&", mx_py_scheme_converter, &scheme)) return NULL;
    char name[64];
    mx_scheme_format(&scheme, name, sizeof name);
    return PyUnicode_FromString(name);
}

static PyObject *py_scheme_bits_per_weight(PyObject *self, PyObject *args) {
    (void)self;
    mx_scheme scheme;
    long long in_features = 0;
    if (!PyArg_ParseTuple(args, "O&|L", mx_py_scheme_converter, &scheme, &in_features)) return NULL;
    return PyFloat_FromDouble(mx_scheme_bits_per_weight(&scheme, (int64_t)in_features));
}

static PyObject *py_glpk_version(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(glp_version());
}

PyMethodDef mx_py_scheme_methods[] = {
    {"scheme_parse", py_scheme_parse, METH_VARARGS, "scheme_parse(name) -> (w_bits, a_bits, group, sym, fmt)"},
    {"scheme_format", py_scheme_format, METH_VARARGS, "scheme_format(scheme) -> canonical name"},
    {"scheme_bits_per_weight", py_scheme_bits_per_weight, METH_VARARGS,
     "scheme_bits_per_weight(scheme, in_features=0) -> bits charged per weight"},
    {"glpk_version", py_glpk_version, METH_NOARGS, "glpk_version() -> the linked GLPK's version string"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *const area_tables[] = {
    mx_py_scheme_methods, mx_py_quant_methods, mx_py_hadamard_methods, mx_py_gptq_methods,
    mx_py_gemm_methods,   mx_py_ilp_methods,   mx_py_stats_methods,
};

static PyMethodDef all_methods[256];

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "mxmoe._C",
                                        "mxmoe C core (CPU): schemes, quantization, Hadamard, GPTQ, statistics, "
                                        "reference GroupGEMM and the GLPK allocator.",
                                        -1, all_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) {
    if (mx_py_merge_method_tables(area_tables, sizeof area_tables / sizeof area_tables[0], all_methods,
                                  sizeof all_methods / sizeof all_methods[0], "mxmoe._C") < 0)
        return NULL;

    import_array();
    PyObject *module = PyModule_Create(&module_def);
    if (!module) return NULL;

    PyObject *table = PyTuple_New(MX_SCHEME_COUNT);
    if (!table) goto fail;
    for (int i = 0; i < MX_SCHEME_COUNT; i++) {
        const mx_scheme_traits *t = &mx_scheme_table[i];
        PyObject *row = Py_BuildValue("(isNis)", (int)t->id, t->name, scheme_tuple(&t->scheme), t->fast_arch,
                                      t->kernel);
        if (!row) {
            Py_DECREF(table);
            goto fail;
        }
        PyTuple_SET_ITEM(table, i, row);
    }
    if (PyModule_AddObject(module, "SCHEME_TABLE", table) < 0) {
        Py_DECREF(table);
        goto fail;
    }
    if (PyModule_AddIntConstant(module, "ARCH_SM80", MX_ARCH_SM80) < 0 ||
        PyModule_AddIntConstant(module, "ARCH_SM89", MX_ARCH_SM89) < 0 ||
        PyModule_AddIntConstant(module, "ARCH_SM90", MX_ARCH_SM90) < 0 ||
        PyModule_AddIntConstant(module, "FMT_INT", MX_FMT_INT) < 0 ||
        PyModule_AddIntConstant(module, "FMT_FP8_E4M3", MX_FMT_FP8_E4M3) < 0)
        goto fail;
    return module;
fail:
    Py_DECREF(module);
    return NULL;
}
