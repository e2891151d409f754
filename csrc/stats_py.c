/* stats_py.c — Python binding of the stats area (see binding_py.h for the shape every binding follows). */
#include "binding_py.h"

PyMethodDef mx_py_stats_methods[] = {
    {NULL, NULL, 0, NULL},
};
