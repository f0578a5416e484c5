/* ep_module_groups.c: the Python face of ep_groups: _core.group_rows(a) groups the equal
 * rows of a numpy array by their bytes.  The array is borrowed for the call (read with the
 * GIL released when large: do not write to it from another thread meanwhile); the two
 * result arrays are new. */
#include "ep_module.h"

#include <string.h>

#include "ep_errors.h"
#include "ep_groups.h"

/* Arrays of more rows than this are grouped with the GIL released. */
#define NOGIL_ABOVE 65536

static PyObject *py_group_rows(PyObject *self, PyObject *arg)
{
    PyArrayObject *inverse = NULL, *first = NULL; /* owned until returned */
    PyObject *res = NULL;
    if (!PyArray_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "group_rows: a must be a numpy array, not %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)arg; /* borrowed */
    int nd = PyArray_NDIM(a);
    if (nd != 1 && nd != 2) {
        PyErr_Format(PyExc_ValueError, "group_rows: a must have 1 or 2 dimensions, got %d", nd);
        return NULL;
    }
    if (PyDataType_REFCHK(PyArray_DESCR(a))) {
        PyErr_SetString(PyExc_ValueError, "group_rows: a must not hold Python objects (their bytes are pointers)");
        return NULL;
    }
    npy_intp n = PyArray_DIM(a, 0);
    int64_t itemsize = (int64_t)PyArray_ITEMSIZE(a);
    int64_t width = itemsize;
    if (nd == 2) {
        if (PyArray_DIM(a, 1) > 1 && PyArray_STRIDE(a, 1) != itemsize) {
            PyErr_SetString(PyExc_ValueError, "group_rows: the rows of a 2-D a must be contiguous (np.ascontiguousarray)");
            return NULL;
        }
        width = itemsize * (int64_t)PyArray_DIM(a, 1);
    }
    if (width < 1) {
        PyErr_SetString(PyExc_ValueError, "group_rows: rows of zero bytes cannot be told apart");
        return NULL;
    }
    npy_intp dims[1] = {n};
    inverse = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_INT64);
    first = inverse ? (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_INT64) : NULL;
    if (!first)
        goto error;
    const unsigned char *rows = (const unsigned char *)PyArray_DATA(a); /* borrowed from a */
    int64_t stride = (int64_t)PyArray_STRIDE(a, 0);
    int64_t ng = 0;
    int rc;
    if (n > NOGIL_ABOVE) {
        Py_BEGIN_ALLOW_THREADS
        rc = ep_group_rows(rows, (int64_t)n, width, stride, (int64_t *)PyArray_DATA(inverse),
                           (int64_t *)PyArray_DATA(first), &ng);
        Py_END_ALLOW_THREADS
    } else {
        rc = ep_group_rows(rows, (int64_t)n, width, stride, (int64_t *)PyArray_DATA(inverse),
                           (int64_t *)PyArray_DATA(first), &ng);
    }
    if (rc != EP_OK) {
        ep_module_raise(rc, "group_rows");
        goto error;
    }
    /* keep the first ng values in an array of their own (the n-long one goes with the cleanup) */
    npy_intp keep[1] = {(npy_intp)ng};
    PyObject *cut = PyArray_SimpleNew(1, keep, NPY_INT64);
    if (!cut)
        goto error;
    if (ng)
        memcpy(PyArray_DATA((PyArrayObject *)cut), PyArray_DATA(first), (size_t)ng * sizeof(int64_t));
    res = Py_BuildValue("(NN)", (PyObject *)inverse, cut); /* steals both */
    inverse = NULL;
error:
    Py_XDECREF(inverse);
    Py_XDECREF(first);
    return res;
}

static PyMethodDef groups_methods[] = {
    {"group_rows", py_group_rows, METH_O,
     "group_rows(a) -> (inverse, first)\n\n"
     "Group the equal rows of a (1-D: its elements; 2-D: its rows, contiguous) by their bytes,\n"
     "in one hashed pass.  inverse (int64, len(a)): each row's group, groups numbered in the\n"
     "order their first row occurs; first (int64, one per group): that first row.\n"
     "Equal bytes, not equal values: -0.0 and 0.0 differ, NaNs with other bits differ (the\n"
     "Python layer energyprof.store.groups uses it only where bytes and values agree)."},
    {NULL, NULL, 0, NULL}};

int ep_module_add_groups(PyObject *m)
{
    return ep_module_add_functions(m, groups_methods);
}
