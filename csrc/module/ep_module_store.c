/* ep_module_store.c: the Python face of the store writer (_core.Store).
 *
 * Validates arguments with the GIL held (so ep_sqlite.c can trust them), copies a
 * numpy structured array into a job, and releases the GIL around everything that
 * can wait: open (busy lock), submit (bounded queue), flush and close.  Errors go
 * through ep_module_raise with the writer's message.
 */
#include "ep_module.h"

#include <string.h>

#include "ep_errors.h"
#include "ep_sqlite.h"

typedef struct {
    PyObject_HEAD
    ep_store *s; /* owned; NULL once closed */
    PyObject *path;
    int users;   /* calls now waiting inside the store with the GIL released (changed under the GIL) */
} StoreObject;

static PyObject *raise_msg(int code, const char *msg)
{
    return ep_module_raise(code, msg);
}

static int store_check_open(StoreObject *self)
{
    if (!self->s) {
        PyErr_SetString(PyExc_ValueError, "the store is closed");
        return -1;
    }
    return 0;
}

/* ---- conversions ----------------------------------------------------------------- */

/* Fill *col from one numpy field; -1 with an exception naming the field. */
static int col_from_field(const char *name, PyArray_Descr *fd, Py_ssize_t offset, ep_store_col *col)
{
    npy_intp size = PyDataType_ELSIZE(fd);
    if (strlen(name) >= EP_STORE_NAME_MAX) {
        PyErr_Format(PyExc_ValueError, "field name %.80s is too long for a column", name);
        return -1;
    }
    if (PyDataType_HASSUBARRAY(fd) || PyDataType_HASFIELDS(fd)) {
        PyErr_Format(PyExc_TypeError, "field %s: nested or sub-array fields cannot be stored", name);
        return -1;
    }
    if (!PyArray_ISNBO(fd->byteorder)) {
        PyErr_Format(PyExc_TypeError, "field %s: non-native byte order; convert with .astype(dtype.newbyteorder('='))",
                     name);
        return -1;
    }
    int t = -1;
    switch (fd->kind) {
    case 'i': t = size == 8 ? EP_COL_I64 : size == 4 ? EP_COL_I32 : size == 2 ? EP_COL_I16 : size == 1 ? EP_COL_I8 : -1;
        break;
    case 'u': t = size == 4 ? EP_COL_U32 : size == 2 ? EP_COL_U16 : size == 1 ? EP_COL_U8 : -1; break;
    case 'f': t = size == 8 ? EP_COL_F64 : size == 4 ? EP_COL_F32 : -1; break;
    case 'b': t = EP_COL_BOOL; break;
    case 'U': t = size >= 4 ? EP_COL_UCS4 : -1; break;
    default: break;
    }
    if (t < 0) {
        PyErr_Format(PyExc_TypeError,
                     "field %s: dtype kind '%c' size %d cannot be stored (int8..int64, uint8..uint32, float32/64, "
                     "bool and fixed-width unicode are supported)",
                     name, fd->kind, (int)size);
        return -1;
    }
    memset(col, 0, sizeof *col);
    snprintf(col->name, sizeof col->name, "%s", name);
    col->type = t;
    col->offset = (size_t)offset;
    col->size = (size_t)size;
    return 0;
}

/* One Python value to an ep_store_value whose data borrows from obj (which must
 * outlive the value); -1 with an exception. */
static int value_from_object(PyObject *obj, ep_store_value *v, const char *what)
{
    v->data = NULL;
    v->len = 0;
    if (obj == Py_None) {
        v->type = EP_VAL_NULL;
    } else if (PyBool_Check(obj) || PyLong_Check(obj) || PyArray_IsScalar(obj, Integer) ||
               PyArray_IsScalar(obj, Bool)) {
        PyObject *num = PyNumber_Index(obj);
        if (!num)
            return -1;
        long long x = PyLong_AsLongLong(num);
        Py_DECREF(num);
        if (x == -1 && PyErr_Occurred())
            return -1;
        v->type = EP_VAL_INT;
        v->i = x;
    } else if (PyFloat_Check(obj) || PyArray_IsScalar(obj, Floating)) {
        double d = PyFloat_AsDouble(obj);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
        v->type = EP_VAL_REAL;
        v->d = d;
    } else if (PyUnicode_Check(obj)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
        if (!s)
            return -1;
        v->type = EP_VAL_TEXT;
        v->data = s;
        v->len = (size_t)n;
    } else if (PyBytes_Check(obj)) {
        v->type = EP_VAL_BLOB;
        v->data = PyBytes_AS_STRING(obj);
        v->len = (size_t)PyBytes_GET_SIZE(obj);
    } else {
        PyErr_Format(PyExc_TypeError, "%s: cannot store a %.80s (use int, float, str, bytes or None)", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

/* ---- the type -------------------------------------------------------------------- */

static int store_init(StoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "busy_timeout_ms", "queue_jobs", "queue_bytes", "readonly", NULL};
    PyObject *pathbytes = NULL;
    int busy = 5000, qjobs = 64, readonly = 0;
    Py_ssize_t qbytes = (Py_ssize_t)256 << 20;
    char msg[EP_STORE_MSG_MAX] = "";
    int rc;
    ep_store *s = NULL;
    if (self->s) {
        PyErr_SetString(PyExc_RuntimeError, "Store is already open");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|iinp", kwlist, PyUnicode_FSConverter, &pathbytes, &busy,
                                     &qjobs, &qbytes, &readonly))
        return -1;
    if (busy < 0 || qjobs < 1 || qbytes < 1) {
        Py_DECREF(pathbytes);
        PyErr_SetString(PyExc_ValueError, "busy_timeout_ms must be >= 0, queue_jobs and queue_bytes >= 1");
        return -1;
    }
    ep_store_opts opts;
    ep_store_opts_default(&opts);
    opts.busy_timeout_ms = busy;
    opts.queue_jobs = qjobs;
    opts.queue_bytes = (size_t)qbytes;
    opts.readonly = readonly;
    const char *path = PyBytes_AS_STRING(pathbytes);
    Py_BEGIN_ALLOW_THREADS
    rc = ep_store_open(path, &opts, &s, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK) {
        Py_DECREF(pathbytes);
        raise_msg(rc, msg);
        return -1;
    }
    self->s = s;
    Py_XSETREF(self->path, PyUnicode_DecodeFSDefault(path));
    Py_DECREF(pathbytes);
    if (!self->path)
        return -1;
    return 0;
}

static void store_dealloc(StoreObject *self)
{
    if (self->s) {
        ep_store *s = self->s;
        self->s = NULL;
        Py_BEGIN_ALLOW_THREADS
        ep_store_close(s, NULL, 0); /* a dropped store still commits what it was given */
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Queue job on the writer with the GIL released; takes ownership of job (the store
 * frees it, also on failure).  0, or -1 with an exception set. */
static int submit_job(StoreObject *self, ep_store_job *job)
{
    int rc;
    self->users++; /* close() from another thread must wait for this call */
    Py_BEGIN_ALLOW_THREADS
    rc = ep_store_submit(self->s, job); /* takes the job, blocks while the queue is full */
    Py_END_ALLOW_THREADS
    self->users--;
    if (rc != EP_OK) {
        raise_msg(rc, "the store is closing, or was opened by another process (after fork() open a new one)");
        return -1;
    }
    return 0;
}

static PyObject *store_insert(StoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"table", "array", "constants", NULL};
    const char *table;
    PyObject *arrobj, *consts = Py_None, *res = NULL, *items = NULL;
    PyArrayObject *arr = NULL;
    ep_store_col *cols = NULL;
    ep_store_value *vals = NULL;
    ep_store_job *job = NULL;
    char msg[EP_STORE_MSG_MAX] = "";
    int ncols = 0, nconsts = 0, rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sO|O", kwlist, &table, &arrobj, &consts))
        return NULL;
    if (store_check_open(self) < 0)
        return NULL;
    arr = (PyArrayObject *)PyArray_FromAny(arrobj, NULL, 0, 0, NPY_ARRAY_C_CONTIGUOUS, NULL);
    if (!arr)
        goto error;
    PyArray_Descr *descr = PyArray_DESCR(arr);
    if (!PyDataType_HASFIELDS(descr)) {
        PyErr_Format(PyExc_TypeError, "insert into %s: need a numpy structured array, got dtype %R", table,
                     (PyObject *)descr);
        goto error;
    }
    if (PyArray_NDIM(arr) > 1) {
        PyErr_Format(PyExc_ValueError, "insert into %s: need a one-dimensional array", table);
        goto error;
    }
    PyObject *names = PyDataType_NAMES(descr), *fields = PyDataType_FIELDS(descr);
    ncols = (int)PyTuple_GET_SIZE(names);
    cols = PyMem_Calloc((size_t)(ncols ? ncols : 1), sizeof *cols);
    if (!cols) {
        PyErr_NoMemory();
        goto error;
    }
    for (int i = 0; i < ncols; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *info = PyDict_GetItem(fields, name); /* (descr, offset[, title]) */
        const char *cname = PyUnicode_AsUTF8(name);
        if (!cname || !info)
            goto error;
        Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(info, 1));
        if (off == -1 && PyErr_Occurred())
            goto error;
        if (col_from_field(cname, (PyArray_Descr *)PyTuple_GET_ITEM(info, 0), off, &cols[i]) < 0)
            goto error;
    }
    if (consts != Py_None) {
        if (!PyDict_Check(consts)) {
            PyErr_SetString(PyExc_TypeError, "constants must be a dict of column name -> value");
            goto error;
        }
        items = PyDict_Items(consts); /* keeps keys and values alive while vals borrow them */
        if (!items)
            goto error;
        nconsts = (int)PyList_GET_SIZE(items);
        vals = PyMem_Calloc((size_t)(nconsts ? nconsts : 1), sizeof *vals);
        if (!vals) {
            PyErr_NoMemory();
            goto error;
        }
        for (int k = 0; k < nconsts; k++) {
            PyObject *kv = PyList_GET_ITEM(items, k);
            PyObject *key = PyTuple_GET_ITEM(kv, 0);
            const char *kname = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
            if (!kname) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "constant column names must be str");
                goto error;
            }
            if (strlen(kname) >= EP_STORE_NAME_MAX) {
                PyErr_Format(PyExc_ValueError, "constant column name %.80s is too long", kname);
                goto error;
            }
            snprintf(vals[k].name, sizeof vals[k].name, "%s", kname);
            if (value_from_object(PyTuple_GET_ITEM(kv, 1), &vals[k], kname) < 0)
                goto error;
        }
    }
    npy_intp nrows = PyArray_SIZE(arr);
    if (nrows == 0) {
        Py_INCREF(Py_None);
        res = Py_None;
        goto error; /* nothing to write: no job, no transaction */
    }
    rc = ep_store_job_insert(table, cols, ncols, vals, nconsts, PyArray_DATA(arr), (size_t)nrows,
                             (size_t)PyArray_ITEMSIZE(arr), &job, msg, sizeof msg);
    if (rc != EP_OK) {
        raise_msg(rc, msg);
        goto error;
    }
    if (submit_job(self, job) < 0)
        goto error;
    Py_INCREF(Py_None);
    res = Py_None;
error:
    PyMem_Free(cols);
    PyMem_Free(vals);
    Py_XDECREF(items);
    Py_XDECREF(arr);
    return res;
}

static PyObject *store_execute(StoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sql", "params", NULL};
    const char *sql;
    PyObject *params = NULL, *seq = NULL, *res = NULL;
    ep_store_value *vals = NULL;
    ep_store_job *job = NULL;
    Py_ssize_t n = 0;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s|O", kwlist, &sql, &params))
        return NULL;
    if (store_check_open(self) < 0)
        return NULL;
    if (params && params != Py_None) {
        seq = PySequence_Fast(params, "params must be a sequence");
        if (!seq)
            goto error;
        n = PySequence_Fast_GET_SIZE(seq);
        if (n > 32766) {
            PyErr_SetString(PyExc_ValueError, "too many parameters");
            goto error;
        }
    }
    vals = PyMem_Calloc((size_t)(n ? n : 1), sizeof *vals);
    if (!vals) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        if (value_from_object(PySequence_Fast_GET_ITEM(seq, k), &vals[k], "parameter") < 0)
            goto error;
    rc = ep_store_job_exec(sql, vals, (int)n, &job);
    if (rc != EP_OK) {
        raise_msg(rc, "building a statement");
        goto error;
    }
    if (submit_job(self, job) < 0)
        goto error;
    Py_INCREF(Py_None);
    res = Py_None;
error:
    PyMem_Free(vals);
    Py_XDECREF(seq);
    return res;
}

static PyObject *store_flush(StoreObject *self, PyObject *noargs)
{
    char msg[EP_STORE_MSG_MAX + 64] = "";
    int rc;
    if (store_check_open(self) < 0)
        return NULL;
    self->users++;
    Py_BEGIN_ALLOW_THREADS
    rc = ep_store_flush(self->s, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    self->users--;
    if (rc != EP_OK)
        return raise_msg(rc, msg);
    Py_RETURN_NONE;
}

static PyObject *store_close(StoreObject *self, PyObject *noargs)
{
    char msg[EP_STORE_MSG_MAX + 64] = "";
    int rc;
    ep_store *s = self->s;
    if (!s)
        Py_RETURN_NONE;
    if (self->users > 0) {
        /* freeing the store under a thread blocked in it would be a use after free */
        PyErr_SetString(PyExc_RuntimeError,
                        "the store is in use by another thread (insert/execute/flush); close it after that returns");
        return NULL;
    }
    self->s = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = ep_store_close(s, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK)
        return raise_msg(rc, msg);
    Py_RETURN_NONE;
}

static PyObject *store_enter(StoreObject *self, PyObject *noargs)
{
    if (store_check_open(self) < 0)
        return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *store_exit(StoreObject *self, PyObject *args)
{
    PyObject *r = store_close(self, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *store_get_rows(StoreObject *self, void *closure)
{
    if (store_check_open(self) < 0)
        return NULL;
    return PyLong_FromLongLong(ep_store_rows_committed(self->s));
}

static PyObject *store_get_pending(StoreObject *self, void *closure)
{
    if (store_check_open(self) < 0)
        return NULL;
    return PyLong_FromLongLong(ep_store_jobs_pending(self->s));
}

static PyObject *store_get_users(StoreObject *self, void *closure)
{
    return PyLong_FromLong(self->users);
}

static PyObject *store_get_closed(StoreObject *self, void *closure)
{
    return PyBool_FromLong(self->s == NULL);
}

static PyObject *store_get_path(StoreObject *self, void *closure)
{
    PyObject *p = self->path ? self->path : Py_None;
    Py_INCREF(p);
    return p;
}

static PyMethodDef store_methods[] = {
    {"insert", (PyCFunction)(void (*)(void))store_insert, METH_VARARGS | METH_KEYWORDS,
     "insert(table, array, constants=None): queue the rows of a numpy structured array (one column per field,\n"
     "plus the constant columns) as one transaction.  The data is copied; blocks (GIL released) while the\n"
     "queue is full.  Errors of the write surface at the next flush() or close()."},
    {"execute", (PyCFunction)(void (*)(void))store_execute, METH_VARARGS | METH_KEYWORDS,
     "execute(sql, params=()): queue one statement (or a parameterless script), in order with the inserts."},
    {"flush", (PyCFunction)store_flush, METH_NOARGS,
     "flush(): wait until everything queued is committed; raise the first writer error since the last flush."},
    {"close", (PyCFunction)store_close, METH_NOARGS, "close(): flush, stop the writer thread, close the database."},
    {"__enter__", (PyCFunction)store_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)store_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef store_getset[] = {
    {"rows_committed", (getter)store_get_rows, NULL, "rows committed by insert jobs so far", NULL},
    {"pending", (getter)store_get_pending, NULL, "jobs queued or running", NULL},
    {"closed", (getter)store_get_closed, NULL, "True once close() ran", NULL},
    {"users", (getter)store_get_users, NULL,
     "calls (insert/execute/flush) now waiting inside the store with the GIL released, from any thread", NULL},
    {"path", (getter)store_get_path, NULL, "the database path", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "energyprof._core.Store",
    .tp_basicsize = sizeof(StoreObject),
    .tp_dealloc = (destructor)store_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Store(path, busy_timeout_ms=5000, queue_jobs=64, queue_bytes=256 MiB, readonly=False)\n\n"
              "The native writer of one SQLite database: one thread, a bounded job queue, one transaction per\n"
              "job, WAL, synchronous=NORMAL, foreign_keys=ON.  The schema is energyprof.schema's business.",
    .tp_methods = store_methods,
    .tp_getset = store_getset,
    .tp_init = (initproc)store_init,
    .tp_new = PyType_GenericNew,
};

int ep_module_add_store(PyObject *m)
{
    if (PyType_Ready(&StoreType) < 0)
        return -1;
    if (ep_module_add_ref(m, "Store", (PyObject *)&StoreType) < 0)
        return -1;
    return 0;
}
