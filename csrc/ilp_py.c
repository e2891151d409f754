/* ilp_py.c — Python binding of the ilp area (see binding_py.h for the shape every binding follows). */
#include "binding_py.h"
#include "mx_ilp.h"

#include <math.h>

static const char ilp_solve_doc[] =
    "ilp_solve(loss, time, bits, params, wbits, r, max_time, max_loss, tie, act_bits, abits, prune, solver=0)\n"
    "    -> (choice int64 [B], loss, time, frontier f64 [n, 2], n_milps)\n"
    "loss, time: f64 [B, S] (+inf = not allowed); bits: f64 [S] or [B, S]; act_bits: f64 [S] or None;\n"
    "params: f64 [B]; tie: int64 [B] or None; max_time / max_loss: +inf for no limit;\n"
    "solver: 0 = auto (knapsack search where only the budget binds), 1 = GLPK for every MILP.";

// loss, time: [B, S] f64; bits, act_bits: [S] f64; params: [B] f64; tie: [B] i64 -> choice [B] i64
static PyObject *py_ilp_solve(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *loss_obj, *time_obj, *bits_obj, *params_obj, *tie_obj, *act_obj;
    double wbits, r, max_time, max_loss, abits;
    int prune, solver = MX_ILP_SOLVER_AUTO;
    if (!PyArg_ParseTuple(args, "OOOOddddOOdp|i", &loss_obj, &time_obj, &bits_obj, &params_obj, &wbits, &r,
                          &max_time, &max_loss, &tie_obj, &act_obj, &abits, &prune, &solver))
        return NULL;
    PyArrayObject *loss = mx_py_array(loss_obj, "loss", NPY_FLOAT64, 2);
    if (!loss) return NULL;
    PyArrayObject *time = mx_py_array(time_obj, "time", NPY_FLOAT64, 2);
    if (!time) return NULL;
    PyArrayObject *bits = mx_py_array(bits_obj, "bits", NPY_FLOAT64, -1);
    if (!bits) return NULL;
    if (PyArray_NDIM(bits) != 1 && PyArray_NDIM(bits) != 2)
        return PyErr_Format(PyExc_ValueError, "bits must be 1- or 2-dimensional, got %d dimensions",
                            PyArray_NDIM(bits));
    PyArrayObject *params = mx_py_array(params_obj, "params", NPY_FLOAT64, 1);
    if (!params) return NULL;
    PyArrayObject *tie = NULL, *act_bits = NULL;
    if (tie_obj != Py_None && !(tie = mx_py_array(tie_obj, "tie", NPY_INT64, 1))) return NULL;
    if (act_obj != Py_None && !(act_bits = mx_py_array(act_obj, "act_bits", NPY_FLOAT64, 1))) return NULL;

    npy_intp n_blocks = PyArray_DIM(loss, 0), n_schemes = PyArray_DIM(loss, 1);
    if (PyArray_DIM(time, 0) != n_blocks || PyArray_DIM(time, 1) != n_schemes)
        return PyErr_Format(PyExc_ValueError, "time has shape (%zd, %zd), loss has (%zd, %zd): they must match",
                            (Py_ssize_t)PyArray_DIM(time, 0), (Py_ssize_t)PyArray_DIM(time, 1),
                            (Py_ssize_t)n_blocks, (Py_ssize_t)n_schemes);
    int bits_per_block = PyArray_NDIM(bits) == 2;
    if (bits_per_block ? (PyArray_DIM(bits, 0) != n_blocks || PyArray_DIM(bits, 1) != n_schemes)
                       : PyArray_DIM(bits, 0) != n_schemes)
        return PyErr_Format(PyExc_ValueError, "bits must have shape (%zd,) or (%zd, %zd) for %zd blocks and %zd "
                            "schemes", (Py_ssize_t)n_schemes, (Py_ssize_t)n_blocks, (Py_ssize_t)n_schemes,
                            (Py_ssize_t)n_blocks, (Py_ssize_t)n_schemes);
    if (act_bits && PyArray_DIM(act_bits, 0) != n_schemes)
        return PyErr_Format(PyExc_ValueError, "act_bits has %zd entries for %zd schemes",
                            (Py_ssize_t)PyArray_DIM(act_bits, 0), (Py_ssize_t)n_schemes);
    if (PyArray_DIM(params, 0) != n_blocks)
        return PyErr_Format(PyExc_ValueError, "params has %zd entries for %zd blocks",
                            (Py_ssize_t)PyArray_DIM(params, 0), (Py_ssize_t)n_blocks);
    if (tie && PyArray_DIM(tie, 0) != n_blocks)
        return PyErr_Format(PyExc_ValueError, "tie has %zd entries for %zd blocks", (Py_ssize_t)PyArray_DIM(tie, 0),
                            (Py_ssize_t)n_blocks);

    npy_intp choice_shape[1] = {n_blocks};
    PyArrayObject *choice = mx_py_new_array(1, choice_shape, NPY_INT64);
    PyArrayObject *frontier = NULL;
    PyObject *result = NULL;
    if (!choice) return NULL;
    mx_ilp_problem problem = {
        .n_blocks = n_blocks,
        .n_schemes = n_schemes,
        .loss = (const double *)PyArray_DATA(loss),
        .time = (const double *)PyArray_DATA(time),
        .bits = (const double *)PyArray_DATA(bits),
        .bits_per_block = bits_per_block,
        .params = (const double *)PyArray_DATA(params),
        .wbits = wbits,
        .act_bits = act_bits ? (const double *)PyArray_DATA(act_bits) : NULL,
        .abits = abits,
        .tie = tie ? (const int64_t *)PyArray_DATA(tie) : NULL,
        .r = r,
        .max_time = max_time,
        .max_loss = max_loss,
        .prune = prune,
        .solver = solver,
    };
    mx_ilp_solution sol = {.choice = (int64_t *)PyArray_DATA(choice)};
    mx_error err = {MX_OK, ""};
    enum mx_status status;
    Py_BEGIN_ALLOW_THREADS
    status = mx_ilp_solve(&problem, &sol, &err);
    Py_END_ALLOW_THREADS
    if (status != MX_OK) {
        mx_py_raise(&err);
        goto cleanup;
    }
    npy_intp frontier_shape[2] = {sol.n_frontier, 2};
    frontier = mx_py_new_array(2, frontier_shape, NPY_FLOAT64);
    if (!frontier) goto cleanup;
    if (sol.n_frontier) memcpy(PyArray_DATA(frontier), sol.frontier, sizeof(double) * 2 * (size_t)sol.n_frontier);
    result = Py_BuildValue("(OddOL)", (PyObject *)choice, sol.loss, sol.time, (PyObject *)frontier,
                           (long long)sol.n_milps);
cleanup:
    mx_ilp_solution_free(&sol);
    Py_XDECREF(choice);
    Py_XDECREF(frontier);
    return result;
}

PyMethodDef mx_py_ilp_methods[] = {
    {"ilp_solve", py_ilp_solve, METH_VARARGS, ilp_solve_doc},
    {NULL, NULL, 0, NULL},
};
