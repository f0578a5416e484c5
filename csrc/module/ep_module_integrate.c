/* ep_module_integrate.c: the Python face of ep_integrate: _core.integrate and the
 * WIN_* flag constants.  Arguments are checked here (dtype, shape, contiguity) so the
 * kernel can trust its buffers; the outputs are allocated by numpy and the kernel
 * runs with the GIL released. */
#include "ep_module.h"

#include "ep_errors.h"
#include "ep_integrate.h"
#include "ep_sample.h"

/* 0 if arr is a 1-D, C-contiguous, aligned array of exactly the ep_sample dtype;
 * else -1 with ValueError set. */
static int check_samples(PyObject *obj)
{
    int rc = -1;
    PyObject *want = NULL;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_ValueError, "samples must be a numpy array of _core.SAMPLE_DTYPE, not %.100s",
                     Py_TYPE(obj)->tp_name);
        goto error;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    want = ep_module_sample_dtype();
    if (!want)
        goto error;
    if (PyArray_ITEMSIZE(arr) != (npy_intp)sizeof(ep_sample) ||
        !PyArray_EquivTypes(PyArray_DESCR(arr), (PyArray_Descr *)want)) {
        PyErr_SetString(PyExc_ValueError, "samples must have dtype _core.SAMPLE_DTYPE (the ep_sample record)");
        goto error;
    }
    if (PyArray_NDIM(arr) != 1) {
        PyErr_Format(PyExc_ValueError, "samples must be 1-D, got %d dimensions", PyArray_NDIM(arr));
        goto error;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_SetString(PyExc_ValueError, "samples must be C-contiguous and aligned (np.ascontiguousarray)");
        goto error;
    }
    rc = 0;
error:
    Py_XDECREF(want);
    return rc;
}

/* 0 if obj is an (M, 2) C-contiguous native int64 array; else -1 with ValueError. */
static int check_windows(PyObject *obj)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_ValueError, "windows must be a numpy int64 array of shape (M, 2), not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != NPY_INT64 || !PyArray_ISNOTSWAPPED(arr)) {
        PyErr_SetString(PyExc_ValueError, "windows must have dtype int64 (native byte order), in ns");
        return -1;
    }
    if (PyArray_NDIM(arr) != 2 || PyArray_DIM(arr, 1) != 2) {
        PyErr_SetString(PyExc_ValueError, "windows must have shape (M, 2): one [start_ns, end_ns) per row");
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_SetString(PyExc_ValueError, "windows must be C-contiguous and aligned (np.ascontiguousarray)");
        return -1;
    }
    return 0;
}

static PyObject *py_integrate(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"samples", "windows", NULL};
    PyObject *samples_obj, *windows_obj, *res = NULL;
    PyArrayObject *energy = NULL, *flags = NULL, *counts = NULL;
    char detail[256];
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:integrate", kwlist, &samples_obj, &windows_obj))
        goto error;
    if (check_samples(samples_obj) < 0 || check_windows(windows_obj) < 0)
        goto error;
    PyArrayObject *samples = (PyArrayObject *)samples_obj, *windows = (PyArrayObject *)windows_obj;
    npy_intp n = PyArray_DIM(samples, 0), m = PyArray_DIM(windows, 0);
    npy_intp dims_e[2] = {m, EP_NDOMAINS};
    energy = (PyArrayObject *)PyArray_SimpleNew(2, dims_e, NPY_FLOAT64);
    flags = (PyArrayObject *)PyArray_SimpleNew(1, &m, NPY_UINT32);
    counts = (PyArrayObject *)PyArray_SimpleNew(1, &m, NPY_INT32);
    if (!energy || !flags || !counts)
        goto error;
    const ep_sample *s = (const ep_sample *)PyArray_DATA(samples);
    const int64_t *w = (const int64_t *)PyArray_DATA(windows);
    double *e_j = (double *)PyArray_DATA(energy);
    uint32_t *fl = (uint32_t *)PyArray_DATA(flags);
    int32_t *c = (int32_t *)PyArray_DATA(counts);
    /* The kernel reads only the two input buffers (kept alive by our caller's
     * references) and writes arrays nobody else has seen yet: safe without the GIL. */
    Py_BEGIN_ALLOW_THREADS
    rc = ep_integrate(s, (int64_t)n, w, (int64_t)m, e_j, fl, c, detail, sizeof detail);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK) {
        ep_module_raise(rc, detail);
        goto error;
    }
    res = Py_BuildValue("(OOO)", energy, flags, counts);
error:
    Py_XDECREF(energy);
    Py_XDECREF(flags);
    Py_XDECREF(counts);
    return res;
}

/* For benchmarks/integrate.py only: the one streaming pass the integrator is measured
 * against (see ep_integrate_one_pass). */
static PyObject *py_integrate_one_pass(PyObject *self, PyObject *arg)
{
    if (check_samples(arg) < 0)
        return NULL;
    PyArrayObject *samples = (PyArrayObject *)arg;
    double e_wns[EP_NDOMAINS];
    const ep_sample *s = (const ep_sample *)PyArray_DATA(samples);
    npy_intp n = PyArray_DIM(samples, 0);
    Py_BEGIN_ALLOW_THREADS
    ep_integrate_one_pass(s, (int64_t)n, e_wns);
    Py_END_ALLOW_THREADS
    PyObject *res = PyTuple_New(EP_NDOMAINS);
    if (!res)
        return NULL;
    for (int d = 0; d < EP_NDOMAINS; d++) {
        PyObject *v = PyFloat_FromDouble(e_wns[d] / 1e9);
        if (!v) {
            Py_DECREF(res);
            return NULL;
        }
        PyTuple_SET_ITEM(res, d, v);
    }
    return res;
}

static PyMethodDef integrate_methods[] = {
    {"integrate", (PyCFunction)(void (*)(void))py_integrate, METH_VARARGS | METH_KEYWORDS,
     "integrate(samples, windows) -> (energy_j, flags, samples_in_window)\n\n"
     "Exact energy of each window [start_ns, end_ns) per domain.\n"
     "samples: 1-D C-contiguous array of SAMPLE_DTYPE, sorted, one kind.\n"
     "windows: (M, 2) C-contiguous int64 array.\n"
     "Returns energy_j float64 (M, 5) (NaN outside the sampled range or for an\n"
     "unmeasured domain), flags uint32 (M,) of WIN_* bits, samples_in_window int32 (M,).\n"
     "Raises ValueError for mixed kinds, unsorted/overlapping samples, end < start,\n"
     "or a wrong dtype/shape.  See docs/integration.md."},
    {"_integrate_one_pass", (PyCFunction)py_integrate_one_pass, METH_O,
     "_integrate_one_pass(samples) -> tuple of 5 J (benchmark reference, no validation)\n\n"
     "One pass reading every sample once: sum of power * duration per domain, NaN as 0.\n"
     "benchmarks/integrate.py times _core.integrate against it."},
    {NULL, NULL, 0, NULL},
};

int ep_module_add_integrate(PyObject *m)
{
    if (ep_module_add_functions(m, integrate_methods) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "WIN_OUTSIDE", EP_WIN_OUTSIDE) < 0 ||
        PyModule_AddIntConstant(m, "WIN_GAP", EP_WIN_GAP) < 0 ||
        PyModule_AddIntConstant(m, "WIN_NAN", EP_WIN_NAN) < 0 ||
        PyModule_AddIntConstant(m, "WIN_UNRESOLVED", EP_WIN_UNRESOLVED) < 0)
        return -1;
    return 0;
}
