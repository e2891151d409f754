/* ilp_py.c — Python binding of the ilp area (see binding_py.h for the shape every binding follows). */
#include "binding_py.h"

PyMethodDef mx_py_ilp_methods[] = {
    {NULL, NULL, 0, NULL},
};
