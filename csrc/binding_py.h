/* binding_py.h — shared by the *_py.c binding files (the only files that include Python.h).
 *
 * Each binding file owns one area (quant, hadamard, gptq, gemm, ilp, stats, ...) and exports a NULL-terminated
 * `PyMethodDef mx_py_<area>_methods[]`; module_py.c only concatenates them and registers the constants.
 * Binding functions follow one shape: parse -> validate arrays (mx_py_array) -> allocate outputs ->
 * release the GIL around the C call -> map the status with mx_py_raise -> one cleanup label. */
#ifndef MX_BINDING_PY_H
#define MX_BINDING_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL mxmoe_ARRAY_API
#ifndef MX_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#define NPY_NO_DEPRECATED_API NPY_1_20_API_VERSION
#include <numpy/arrayobject.h>

#include "mx_common.h"
#include "mx_scheme.h"

/* Raise the Python exception of `err->status` (ValueError, MemoryError or RuntimeError) with err->message.
 * Returns NULL so a binding can `return mx_py_raise(&err);`. */
PyObject *mx_py_raise(const mx_error *err);

/* Check that `obj` is a NumPy array of dtype `typenum`, C-contiguous and aligned, with `ndim` dimensions
 * (ndim < 0: any).  On failure raise TypeError (not an array, wrong dtype) or ValueError (layout, ndim) naming
 * `name`, and return NULL.  Returns a borrowed reference (the caller's object) on success. */
PyArrayObject *mx_py_array(PyObject *obj, const char *name, int typenum, int ndim);

/* Parse a scheme given as an mx_scheme tuple (w_bits, a_bits, group_size, symmetric, fmt) or a name string.
 * Returns 1 on success, 0 with an exception set.  Usable as an O& converter. */
int mx_py_scheme_converter(PyObject *obj, void *out_scheme);

/* A new NumPy array of the given shape and dtype (C order), or NULL with MemoryError set. */
PyArrayObject *mx_py_new_array(int ndim, const npy_intp *shape, int typenum);

extern PyMethodDef mx_py_scheme_methods[];
extern PyMethodDef mx_py_quant_methods[];
extern PyMethodDef mx_py_hadamard_methods[];
extern PyMethodDef mx_py_gptq_methods[];
extern PyMethodDef mx_py_gemm_methods[];
extern PyMethodDef mx_py_ilp_methods[];
extern PyMethodDef mx_py_stats_methods[];

#endif /* MX_BINDING_PY_H */
