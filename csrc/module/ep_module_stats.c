/* ep_module_stats.c: the Python face of ep_stats: _core.tensor_stats, _core.token_variance
 * and _core.attention_stats over C-contiguous float32/float64 numpy arrays (the numpy
 * views of CPU tensors that energyprof.measure.deep hands over).  Arrays are borrowed for
 * the call only; results are new Python objects. */
#include "ep_module.h"

#include "ep_errors.h"
#include "ep_stats.h"

/* Tensors larger than this are worked on with the GIL released. */
#define NOGIL_ABOVE 65536

/* 0 if obj is an aligned, C-contiguous, native float32 or float64 array (and float32
 * when f32_only); else -1 with ValueError naming `what`. */
static int check_float_array(PyObject *obj, const char *what, int f32_only)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_ValueError, "%s must be a numpy array, not %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int t = PyArray_TYPE(a);
    if (!(t == NPY_FLOAT32 || (!f32_only && t == NPY_FLOAT64)) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must have dtype float32%s (native byte order)", what,
                     f32_only ? "" : " or float64");
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned (np.ascontiguousarray)", what);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- torch tensors
 * A CPU tensor is read through its numpy view (Tensor.numpy(): no copy, no PyTorch
 * headers); anything else (another device, bfloat16/float16, a strided view, a tensor
 * that requires grad) has no C path here and goes back to the caller's Python fallback. */

static PyObject *str_numpy; /* interned "numpy", module lifetime */

/* New reference to an aligned, C-contiguous, native float32/float64 numpy view of obj (a
 * torch tensor or a numpy array), or NULL with no exception set when there is none. */
static PyArrayObject *float_view(PyObject *obj)
{
    PyObject *v = NULL;
    if (PyArray_Check(obj)) {
        Py_INCREF(obj);
        v = obj;
    } else {
        v = PyObject_CallMethodNoArgs(obj, str_numpy); /* owned */
        if (!v) {
            PyErr_Clear();
            goto error;
        }
        if (!PyArray_Check(v))
            goto error;
    }
    PyArrayObject *a = (PyArrayObject *)v;
    int t = PyArray_TYPE(a);
    if ((t != NPY_FLOAT32 && t != NPY_FLOAT64) || !PyArray_ISNOTSWAPPED(a) || !PyArray_IS_C_CONTIGUOUS(a) ||
        !PyArray_ISALIGNED(a))
        goto error;
    return a;
error:
    Py_XDECREF(v);
    return NULL;
}

static void stats_of_array(PyArrayObject *a, double small_below, double out[EP_TENSOR_STATS])
{
    const void *x = PyArray_DATA(a); /* borrowed from a, which the caller holds */
    int64_t n = (int64_t)PyArray_SIZE(a);
    int f32 = PyArray_TYPE(a) == NPY_FLOAT32;
    if (n > NOGIL_ABOVE) {
        Py_BEGIN_ALLOW_THREADS
        if (f32)
            ep_tensor_stats_f32((const float *)x, n, small_below, out);
        else
            ep_tensor_stats_f64((const double *)x, n, small_below, out);
        Py_END_ALLOW_THREADS
    } else if (f32) {
        ep_tensor_stats_f32((const float *)x, n, small_below, out);
    } else {
        ep_tensor_stats_f64((const double *)x, n, small_below, out);
    }
}

int ep_module_stats_of(PyObject *tensor, double small_below, double *out)
{
    PyArrayObject *a = float_view(tensor); /* owned */
    if (!a)
        return 1;
    stats_of_array(a, small_below, out);
    Py_DECREF(a);
    return 0;
}

static PyObject *py_tensor_stats_of(PyObject *self, PyObject *args)
{
    PyObject *obj;
    double small_below, out[EP_TENSOR_STATS];
    if (!PyArg_ParseTuple(args, "Od:tensor_stats_of", &obj, &small_below))
        return NULL;
    if (ep_module_stats_of(obj, small_below, out) != 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(ddddd)", out[0], out[1], out[2], out[3], out[4]);
}

static double token_variance_of_array(PyArrayObject *a)
{
    int nd = PyArray_NDIM(a);
    int64_t dim = nd ? (int64_t)PyArray_DIM(a, nd - 1) : 1;
    int64_t rows = dim ? (int64_t)PyArray_SIZE(a) / dim : 0;
    if (PyArray_TYPE(a) == NPY_FLOAT32)
        return ep_token_variance_f32((const float *)PyArray_DATA(a), rows, dim);
    return ep_token_variance_f64((const double *)PyArray_DATA(a), rows, dim);
}

static PyObject *py_variance_ratio_of(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo, *res = NULL;
    PyArrayObject *x = NULL, *o = NULL; /* owned */
    if (!PyArg_ParseTuple(args, "OO:variance_ratio_of", &xo, &oo))
        goto error;
    x = float_view(xo);
    o = x ? float_view(oo) : NULL;
    if (!x || !o) {
        Py_INCREF(Py_None);
        res = Py_None;
        goto error;
    }
    res = PyFloat_FromDouble(token_variance_of_array(o) / token_variance_of_array(x));
error:
    Py_XDECREF(x);
    Py_XDECREF(o);
    return res;
}

static PyObject *py_tensor_stats(PyObject *self, PyObject *args)
{
    PyObject *obj;
    double small_below, out[EP_TENSOR_STATS];
    if (!PyArg_ParseTuple(args, "Od:tensor_stats", &obj, &small_below))
        return NULL;
    if (check_float_array(obj, "x", 0) < 0)
        return NULL;
    stats_of_array((PyArrayObject *)obj, small_below, out);
    return Py_BuildValue("(ddddd)", out[0], out[1], out[2], out[3], out[4]);
}

static PyObject *py_token_variance(PyObject *self, PyObject *obj)
{
    if (check_float_array(obj, "x", 0) < 0)
        return NULL;
    return PyFloat_FromDouble(token_variance_of_array((PyArrayObject *)obj));
}

static PyObject *py_attention_stats(PyObject *self, PyObject *args)
{
    PyObject *pobj, *mobj, *heads = NULL, *res = NULL;
    double small_below;
    if (!PyArg_ParseTuple(args, "OOd:attention_stats", &pobj, &mobj, &small_below))
        goto error;
    if (check_float_array(pobj, "p", 1) < 0)
        goto error;
    PyArrayObject *p = (PyArrayObject *)pobj;
    if (PyArray_NDIM(p) != 4) {
        PyErr_Format(PyExc_ValueError, "p must have shape (batch, heads, queries, keys), got %d dimensions",
                     PyArray_NDIM(p));
        goto error;
    }
    npy_intp b = PyArray_DIM(p, 0), h = PyArray_DIM(p, 1), q = PyArray_DIM(p, 2), k = PyArray_DIM(p, 3);
    const uint8_t *allowed = NULL; /* borrowed from mobj */
    npy_intp h_mask = 1;
    if (mobj != Py_None) {
        PyArrayObject *m = (PyArrayObject *)mobj;
        if (!PyArray_Check(mobj) || (PyArray_TYPE(m) != NPY_BOOL && PyArray_TYPE(m) != NPY_UINT8) ||
            !PyArray_IS_C_CONTIGUOUS(m) || PyArray_NDIM(m) != 4) {
            PyErr_SetString(PyExc_ValueError, "allowed must be None or a C-contiguous bool array (batch, 1 or heads, "
                                              "queries, keys)");
            goto error;
        }
        h_mask = PyArray_DIM(m, 1);
        if (PyArray_DIM(m, 0) != b || PyArray_DIM(m, 2) != q || PyArray_DIM(m, 3) != k || (h_mask != 1 && h_mask != h)) {
            PyErr_SetString(PyExc_ValueError, "allowed must have the shape of p, with 1 or all heads");
            goto error;
        }
        allowed = (const uint8_t *)PyArray_DATA(m);
    }
    npy_intp dims[2] = {4, h};
    heads = PyArray_SimpleNew(2, dims, NPY_FLOAT64); /* owned here until returned */
    if (!heads)
        goto error;
    double all[EP_TENSOR_STATS];
    int rc = ep_attention_stats_f32((const float *)PyArray_DATA(p), b, h, q, k, allowed, h_mask, small_below,
                                    (double *)PyArray_DATA((PyArrayObject *)heads), all);
    if (rc != EP_OK) {
        ep_module_raise(rc, "attention_stats: p has a zero dimension");
        goto error;
    }
    res = Py_BuildValue("(O(ddddd))", heads, all[0], all[1], all[2], all[3], all[4]);
error:
    Py_XDECREF(heads);
    return res;
}

static PyMethodDef stats_methods[] = {
    {"tensor_stats", py_tensor_stats, METH_VARARGS,
     "tensor_stats(x, small_below) -> (mean, std, max_abs, small_share, abs_mean)\n\n"
     "One pass over a C-contiguous float32/float64 array: mean, unbiased std, max |x|, the\n"
     "share of |x| < small_below and mean |x| (sums in double; NaN for an empty array).\n"
     "See docs/deep.md."},
    {"token_variance", py_token_variance, METH_O,
     "token_variance(x) -> float\n\n"
     "Mean over the rows (every dimension but the last) of the population variance along the\n"
     "last dimension of a C-contiguous float32/float64 array."},
    {"attention_stats", py_attention_stats, METH_VARARGS,
     "attention_stats(p, allowed, small_below) -> (heads (4, H) float64, (mean, std, max_abs, small_share, abs_mean))\n\n"
     "p: float32 (B, H, Q, K) attention probabilities; allowed: None or bool (B, 1|H, Q, K).\n"
     "heads rows: mean row entropy, mean row max, share of allowed weights < small_below, B*Q."},
    {"tensor_stats_of", py_tensor_stats_of, METH_VARARGS,
     "tensor_stats_of(t, small_below) -> (mean, std, max_abs, small_share, abs_mean) or None\n\n"
     "tensor_stats of a CPU torch tensor (or numpy array) read in place through its numpy view;\n"
     "None when it has no C-contiguous float32/float64 view (another device or dtype, a strided\n"
     "view, requires grad): the caller computes those itself."},
    {"variance_ratio_of", py_variance_ratio_of, METH_VARARGS,
     "variance_ratio_of(x, out) -> token_variance(out) / token_variance(x), or None\n\n"
     "Both read in place as tensor_stats_of does; None when either has no such view."},
    {NULL, NULL, 0, NULL},
};

int ep_module_add_stats(PyObject *m)
{
    if (!str_numpy) {
        str_numpy = PyUnicode_InternFromString("numpy");
        if (!str_numpy)
            return -1;
    }
    return ep_module_add_functions(m, stats_methods);
}
