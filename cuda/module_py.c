/* module_py.c — mxmoe._cuda: registers the method tables of the cuda/ binding files and reports whether a device is usable.
 * No computation here.
 *
 * mxmoe._cuda is a shared object of its own (built without NumPy), so the one C unit both extensions need — the
 * scheme table, mx_error_set and mx_status_to_string of csrc/scheme.c (pure C11, no Python) — is compiled into
 * it here rather than duplicated. */
#include "binding_cuda_py.h"

#include <string.h>

#include "scheme.c"

_Static_assert(MX_STATUS_COUNT == 9, "extend the status -> exception mapping");

PyObject *mx_cuda_py_raise(const mx_error *err) {
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

/* device_status() -> (ok, message): whether the current CUDA device can run the kernels (sm_80+), never raises
 * and never crashes without a driver (cudaGetDeviceCount then just returns an error code). */
/* device_status() -> (ok, message): whether the current CUDA device can run the kernels (sm_80+); never raises. */
static PyObject *py_device_status(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    char message[512];
    int ok;
    Py_BEGIN_ALLOW_THREADS;
    ok = mx_cuda_device_query(message, sizeof message);
    Py_END_ALLOW_THREADS;
    return Py_BuildValue("(Os)", ok ? Py_True : Py_False, message);
}

static PyMethodDef module_methods[] = {
    {"device_status", py_device_status, METH_NOARGS,
     "device_status() -> (ok: bool, message: str): can the current CUDA device run mxmoe's kernels"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *const area_tables[] = {module_methods, mx_cuda_py_gemm_methods, mx_cuda_py_route_methods};

static PyMethodDef all_methods[128];

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "mxmoe._cuda",
                                        "mxmoe GPU kernels: routing, activation quantization, the fused "
                                        "mixed-precision grouped GEMM. Device pointers and streams are ints.",
                                        -1, all_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cuda(void) {
    size_t count = 0;
    for (size_t t = 0; t < sizeof area_tables / sizeof area_tables[0]; t++)
        for (PyMethodDef *m = area_tables[t]; m->ml_name; m++) {
            if (count + 1 >= sizeof all_methods / sizeof all_methods[0]) {
                PyErr_SetString(PyExc_RuntimeError, "mxmoe._cuda: too many methods for the registry");
                return NULL;
            }
            all_methods[count++] = *m;
        }
    memset(&all_methods[count], 0, sizeof all_methods[0]);
    PyObject *module = PyModule_Create(&module_def);
    if (!module) return NULL;
    if (PyModule_AddIntConstant(module, "ACT_BF16", MX_CUDA_ACT_BF16) < 0 ||
        PyModule_AddIntConstant(module, "ACT_INT8", MX_CUDA_ACT_INT8) < 0 ||
        PyModule_AddIntConstant(module, "ACT_FP8", MX_CUDA_ACT_FP8) < 0 ||
        PyModule_AddIntConstant(module, "ACT_INT4", MX_CUDA_ACT_INT4) < 0 ||
        PyModule_AddIntConstant(module, "GEMM_MAX_PROBLEMS", MX_CUDA_GEMM_MAX_PROBLEMS) < 0 ||
        PyModule_AddIntConstant(module, "PROBLEM_BYTES", (long)sizeof(mx_cuda_problem)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
