/* ep_module_calls.c: the Python face of ep_calls: _core.pair_spans (hook events -> calls)
 * and _core.fill_rows (columns -> fields of structured rows, one pass over the rows).
 * Arrays are borrowed for the call only; pair_spans' results are new arrays. */
#include "ep_module.h"

#include "ep_calls.h"
#include "ep_errors.h"

/* Rows above which the kernels run with the GIL released (their arrays stay referenced). */
#define NOGIL_ABOVE 65536

/* Byte offset of field `name` of a structured dtype with the given numpy type number and
 * size, or -1 with ValueError naming it. */
static Py_ssize_t field_offset(PyArray_Descr *d, const char *name, int type_num)
{
    PyObject *fields = PyDataType_FIELDS(d);
    PyObject *f = fields ? PyDict_GetItemString(fields, name) : NULL; /* borrowed */
    if (!f || !PyTuple_Check(f) || PyTuple_GET_SIZE(f) < 2) {
        PyErr_Format(PyExc_ValueError, "events must have a field %s (EVENT_DTYPE)", name);
        return -1;
    }
    PyArray_Descr *fd = (PyArray_Descr *)PyTuple_GET_ITEM(f, 0);
    if (fd->type_num != type_num || !PyArray_ISNBO(fd->byteorder)) {
        PyErr_Format(PyExc_ValueError, "events field %s has the wrong type (EVENT_DTYPE)", name);
        return -1;
    }
    return PyLong_AsSsize_t(PyTuple_GET_ITEM(f, 1));
}

static PyObject *py_pair_spans(PyObject *self, PyObject *obj)
{
    PyObject *res = NULL;
    PyArrayObject *sid = NULL, *beg = NULL, *end = NULL, *pos = NULL;
    char detail[256];
    if (!PyArray_Check(obj) || PyArray_NDIM((PyArrayObject *)obj) != 1 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj) || !PyDataType_HASFIELDS(PyArray_DESCR((PyArrayObject *)obj))) {
        PyErr_SetString(PyExc_ValueError, "events must be a 1-D C-contiguous array of EVENT_DTYPE");
        return NULL;
    }
    PyArrayObject *ev = (PyArrayObject *)obj;
    Py_ssize_t t_off = field_offset(PyArray_DESCR(ev), "t_ns", NPY_INT64);
    Py_ssize_t sid_off = t_off < 0 ? -1 : field_offset(PyArray_DESCR(ev), "span_id", NPY_INT32);
    Py_ssize_t kind_off = sid_off < 0 ? -1 : field_offset(PyArray_DESCR(ev), "kind", NPY_INT32);
    if (kind_off < 0)
        return NULL;
    npy_intp n = PyArray_DIM(ev, 0), cap = n / 2;
    sid = (PyArrayObject *)PyArray_SimpleNew(1, &cap, NPY_INT32);
    beg = (PyArrayObject *)PyArray_SimpleNew(1, &cap, NPY_INT64);
    end = (PyArrayObject *)PyArray_SimpleNew(1, &cap, NPY_INT64);
    pos = (PyArrayObject *)PyArray_SimpleNew(1, &cap, NPY_INT64);
    if (!sid || !beg || !end || !pos)
        goto error;
    int64_t n_out = 0;
    int sorted = 1, rc;
    const void *data = PyArray_DATA(ev); /* borrowed: our caller holds ev */
    size_t stride = (size_t)PyArray_ITEMSIZE(ev);
    Py_BEGIN_ALLOW_THREADS
    rc = ep_pair_spans(data, (int64_t)n, stride, (size_t)t_off, (size_t)sid_off, (size_t)kind_off,
                       (int32_t *)PyArray_DATA(sid), (int64_t *)PyArray_DATA(beg), (int64_t *)PyArray_DATA(end),
                       (int64_t *)PyArray_DATA(pos), &n_out, &sorted, detail, sizeof detail);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK) {
        ep_module_raise(rc, detail);
        goto error;
    }
    /* Results: views of the first n_out rows (a slice keeps the buffers alive). */
    res = Py_BuildValue("(NNNNO)", PySequence_GetSlice((PyObject *)sid, 0, n_out),
                        PySequence_GetSlice((PyObject *)beg, 0, n_out), PySequence_GetSlice((PyObject *)end, 0, n_out),
                        PySequence_GetSlice((PyObject *)pos, 0, n_out), sorted ? Py_True : Py_False);
error:
    Py_XDECREF(sid);
    Py_XDECREF(beg);
    Py_XDECREF(end);
    Py_XDECREF(pos);
    return res;
}

/* A 1-D C-contiguous array of type_num (converted when it is not), or NULL with an exception. */
static PyArrayObject *as_vector(PyObject *obj, int type_num, const char *what)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type_num, 1, 1, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!a && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a 1-D array", what);
    }
    return a;
}

static PyObject *py_call_parents(PyObject *self, PyObject *args)
{
    PyObject *sid_o, *beg_o, *end_o, *par_o, *res = NULL;
    PyArrayObject *sid = NULL, *beg = NULL, *end = NULL, *par = NULL, *out = NULL;
    char detail[256];
    if (!PyArg_ParseTuple(args, "OOOO:call_parents", &sid_o, &beg_o, &end_o, &par_o))
        return NULL;
    sid = as_vector(sid_o, NPY_INT32, "span_ids");
    beg = sid ? as_vector(beg_o, NPY_INT64, "begin_ns") : NULL;
    end = beg ? as_vector(end_o, NPY_INT64, "end_ns") : NULL;
    par = end ? as_vector(par_o, NPY_INT64, "parent_span") : NULL;
    if (!par)
        goto error;
    npy_intp n = PyArray_DIM(sid, 0);
    if (PyArray_DIM(beg, 0) != n || PyArray_DIM(end, 0) != n) {
        PyErr_SetString(PyExc_ValueError, "span_ids, begin_ns and end_ns must have the same length");
        goto error;
    }
    out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32);
    if (!out)
        goto error;
    int rc = ep_call_parents((const int32_t *)PyArray_DATA(sid), (const int64_t *)PyArray_DATA(beg),
                             (const int64_t *)PyArray_DATA(end), (int64_t)n, (const int64_t *)PyArray_DATA(par),
                             (int64_t)PyArray_DIM(par, 0), (int32_t *)PyArray_DATA(out), detail, sizeof detail);
    if (rc != EP_OK) {
        ep_module_raise(rc, detail);
        goto error;
    }
    res = (PyObject *)out;
    out = NULL;
error:
    Py_XDECREF(sid);
    Py_XDECREF(beg);
    Py_XDECREF(end);
    Py_XDECREF(par);
    Py_XDECREF(out);
    return res;
}

#define MAX_COLS 64

static PyObject *py_fill_rows(PyObject *self, PyObject *args)
{
    PyObject *rows_obj, *cols_obj, *seq = NULL, *res = NULL;
    ep_column cols[MAX_COLS];
    if (!PyArg_ParseTuple(args, "OO:fill_rows", &rows_obj, &cols_obj))
        return NULL;
    if (!PyArray_Check(rows_obj) || PyArray_NDIM((PyArrayObject *)rows_obj) != 1 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)rows_obj) || !PyArray_ISWRITEABLE((PyArrayObject *)rows_obj)) {
        PyErr_SetString(PyExc_ValueError, "rows must be a writeable 1-D C-contiguous numpy array");
        return NULL;
    }
    PyArrayObject *rows = (PyArrayObject *)rows_obj;
    npy_intp n_rows = PyArray_DIM(rows, 0);
    size_t row_size = (size_t)PyArray_ITEMSIZE(rows);
    seq = PySequence_Fast(cols_obj, "columns must be a sequence of (offset, array) pairs");
    if (!seq)
        return NULL;
    Py_ssize_t n_cols = PySequence_Fast_GET_SIZE(seq);
    if (n_cols > MAX_COLS) {
        PyErr_Format(PyExc_ValueError, "at most %d columns at once, got %zd", MAX_COLS, n_cols);
        goto error;
    }
    for (Py_ssize_t c = 0; c < n_cols; c++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, c); /* borrowed */
        Py_ssize_t offset;
        PyObject *arr;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "nO", &offset, &arr)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "columns[%zd] must be an (offset, array) pair", c);
            goto error;
        }
        if (!PyArray_Check(arr) || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)arr)) {
            PyErr_Format(PyExc_ValueError, "columns[%zd]: the values must be a C-contiguous numpy array", c);
            goto error;
        }
        PyArrayObject *a = (PyArrayObject *)arr;
        npy_intp n_values = PyArray_SIZE(a);
        size_t size = (size_t)PyArray_ITEMSIZE(a);
        if (offset < 0 || (size_t)offset + size > row_size) {
            PyErr_Format(PyExc_ValueError, "columns[%zd]: %zu bytes at offset %zd do not fit a %zu-byte row", c, size,
                         offset, row_size);
            goto error;
        }
        if (n_values != n_rows && n_values != 1) {
            PyErr_Format(PyExc_ValueError, "columns[%zd]: %zd values for %zd rows (need one or one per row)", c,
                         (Py_ssize_t)n_values, (Py_ssize_t)n_rows);
            goto error;
        }
        cols[c] = (ep_column){PyArray_DATA(a), (int64_t)n_values, size, (size_t)offset}; /* borrowed via seq */
    }
    void *data = PyArray_DATA(rows);
    if (n_rows > NOGIL_ABOVE) {
        Py_BEGIN_ALLOW_THREADS
        ep_fill_rows(data, (int64_t)n_rows, row_size, cols, (int)n_cols);
        Py_END_ALLOW_THREADS
    } else {
        ep_fill_rows(data, (int64_t)n_rows, row_size, cols, (int)n_cols);
    }
    res = Py_None;
    Py_INCREF(res);
error:
    Py_XDECREF(seq);
    return res;
}

static PyMethodDef calls_methods[] = {
    {"pair_spans", (PyCFunction)py_pair_spans, METH_O,
     "pair_spans(events) -> (span_id int32, begin_ns int64, end_ns int64, end_pos int64, sorted)\n\n"
     "Pair EVENT_DTYPE begin/end events per span id into calls (a stack per span id; an end with\n"
     "nothing open is ignored, a begin never closed gives no call), in the order of the begin\n"
     "events; sorted says whether that order is already (begin asc, end desc, end_pos asc)."},
    {"call_parents", (PyCFunction)py_call_parents, METH_VARARGS,
     "call_parents(span_ids, begin_ns, end_ns, parent_span) -> int32 parent call index per call (-1 none)\n\n"
     "Calls sorted by begin; parent_span: per span id its hooked ancestor span (-1 none).  The parent\n"
     "is the last call of the nearest ancestor span with calls that begins at or before the call\n"
     "and ends at or after it (energyprof.measure.attribution)."},
    {"fill_rows", (PyCFunction)py_fill_rows, METH_VARARGS,
     "fill_rows(rows, [(offset, values), ...]) -> None\n\n"
     "Copy each column's values (one per row, or one for all) to byte `offset` of every row of\n"
     "the 1-D structured array rows, in one pass over the rows.  The values' itemsize is the\n"
     "field's: the caller casts them to the field's dtype (energyprof.measure.attribution)."},
    {NULL, NULL, 0, NULL},
};

int ep_module_add_calls(PyObject *m)
{
    return ep_module_add_functions(m, calls_methods);
}
