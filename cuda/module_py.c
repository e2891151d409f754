/* module_py.c — mxmoe._cuda: registers the method tables of the cuda/ binding files and reports whether a device is usable.
 * No computation here.
 *
 * mxmoe._cuda is a shared object of its own (built without NumPy), so the one C unit both extensions need — the
 * scheme table, mx_error_set and mx_status_to_string of csrc/scheme.c (pure C11, no Python) — is compiled into
 * it here rather than duplicated. */
#include "binding_cuda_py.h"

#include <string.h>

#include "scheme.c"
#include "py_common.h"

PyObject *mx_cuda_py_raise(const mx_error *err) { return mx_py_raise_error(err); }

int mx_cuda_py_parse_act_tuple(PyObject *obj, const char *what, unsigned long long ptrs[8], long long *ld) {
    const Py_ssize_t size = PyTuple_Check(obj) ? PyTuple_GET_SIZE(obj) : -1;
    ptrs[7] = 0;
    if ((size != 8 && size != 9) || !PyArg_ParseTuple(obj, "KKKKKKKL|K", &ptrs[0], &ptrs[1], &ptrs[2], &ptrs[3],
                                                      &ptrs[4], &ptrs[5], &ptrs[6], ld, &ptrs[7])) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a tuple (bf16, int8, fp8, int4, scale_int8, scale_fp8, scale_int4, "
                                      "ld[, rowsum_int8]) of device pointers (0 = absent) and the row stride", what);
        return 0;
    }
    return 1;
}

/* device_status() -> (ok, message): whether the current CUDA device can run the kernels (sm_80+), never raises
 * and never crashes without a driver (cudaGetDeviceCount then just returns an error code). */
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
    if (mx_py_merge_method_tables(area_tables, sizeof area_tables / sizeof area_tables[0], all_methods,
                                  sizeof all_methods / sizeof all_methods[0], "mxmoe._cuda") < 0)
        return NULL;
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
