/* route_py.c — Python binding of the routing / activation-quantization / combine kernels (cuda/route.cu). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyMethodDef mx_cuda_py_route_methods[] = {
    {NULL, NULL, 0, NULL},
};
