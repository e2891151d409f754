/* py_common.h — the two pieces both extension modules (mxmoe._C from csrc/, mxmoe._cuda from cuda/) need in their
 * bindings: the one status -> exception table, and the merge of per-area method tables into a module's table.
 * Header-only (static inline) because the two modules are separate shared objects; include after Python.h. */
#ifndef MX_PY_COMMON_H
#define MX_PY_COMMON_H

#include <string.h>

#include "mx_common.h"

_Static_assert(MX_STATUS_COUNT == 9, "extend the status -> exception table");

/* Set the exception of err->status (ValueError for argument problems, MemoryError, RuntimeError for failures of
 * the library, GLPK or CUDA) with err->message.  Returns NULL so a binding can `return mx_py_raise_error(&err);`. */
static inline PyObject *mx_py_raise_error(const mx_error *err) {
    PyObject *exception_class;
    switch (err->status) {
    case MX_ERR_INVALID_ARG:
    case MX_ERR_UNSUPPORTED:
    case MX_ERR_NONFINITE:
    case MX_ERR_INFEASIBLE: exception_class = PyExc_ValueError; break;
    case MX_ERR_NOMEM: exception_class = PyExc_MemoryError; break;
    default: exception_class = PyExc_RuntimeError; break;
    }
    PyErr_SetString(exception_class, err->message[0] ? err->message : mx_status_to_string(err->status));
    return NULL;
}

/* Concatenate NULL-terminated method tables into `out` (capacity entries, NULL-terminated on success).
 * Returns 0, or -1 with RuntimeError set when `out` is too small. */
static inline int mx_py_merge_method_tables(PyMethodDef *const *tables, size_t n_tables, PyMethodDef *out,
                                            size_t capacity, const char *module_name) {
    size_t count = 0;
    for (size_t t = 0; t < n_tables; t++)
        for (PyMethodDef *m = tables[t]; m->ml_name; m++) {
            if (count + 1 >= capacity) {
                PyErr_Format(PyExc_RuntimeError, "%s: too many methods for the registry", module_name);
                return -1;
            }
            out[count++] = *m;
        }
    memset(&out[count], 0, sizeof out[0]);
    return 0;
}

#endif /* MX_PY_COMMON_H */
