/* ep_module_ioreport.c: the Python face of the hardware sources' parts:
 *  - ioreport_delta(a, b, dt_ns, history=None) -> dict, over ep_ioreport_delta,
 *    and IOReportHistory (the state that the ALTERNATING check needs);
 *  - ioreport_classify(name) -> str;
 *  - SourceDriver(kind, params): one source driven step by step from Python
 *    (start/poll/stop at given times).  It is how energyprof.doctor probes a
 *    source and how tests check exact energies with chosen poll times; real runs
 *    use the sampler thread instead.
 */
#include "ep_module.h"

#include <string.h>

#include "ep_errors.h"
#include "ep_ioreport.h"
#include "ep_source.h"

/* ---- IOReportHistory --------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ep_ioreport_state state;
} HistoryObject;

static PyTypeObject HistoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "energyprof._core.IOReportHistory",
    .tp_basicsize = sizeof(HistoryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_doc = "IOReportHistory(): the last few intervals per domain, for ioreport_delta's "
              "alternating-reading check.  Pass the same object to consecutive calls.",
};

/* Convert a sequence of (name, unit, value) into a new array (caller frees with
 * PyMem_Free).  -1 with an exception set on bad input. */
static int parse_channels(PyObject *seq, const char *what, ep_ioreport_channel **out, size_t *n_out)
{
    PyObject *fast = PySequence_Fast(seq, "snapshot must be a sequence of (name, unit, value)");
    ep_ioreport_channel *v = NULL;
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    v = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *v);
    if (!v) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *name, *unit;
        long long value;
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyArg_ParseTuple(item, "ssL;each channel is (name: str, unit: str, value: int)", &name, &unit, &value))
            goto error;
        if (strlen(name) >= EP_IOREPORT_NAME_LEN || strlen(unit) >= EP_IOREPORT_UNIT_LEN) {
            PyErr_Format(PyExc_ValueError, "%s[%zd]: name must be < %d bytes and unit < %d bytes", what, i,
                         EP_IOREPORT_NAME_LEN, EP_IOREPORT_UNIT_LEN);
            goto error;
        }
        strcpy(v[i].name, name);
        strcpy(v[i].unit, unit);
        v[i].value = value;
    }
    Py_DECREF(fast);
    *out = v;
    *n_out = (size_t)n;
    return 0;
error:
    Py_DECREF(fast);
    PyMem_Free(v);
    return -1;
}

static const char *const fault_names[] = {"backwards", "channels", "unit", "unknown", "stuck_zero", "alternating"};

static PyObject *py_ioreport_delta(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"a", "b", "dt_ns", "history", NULL};
    PyObject *pa, *pb, *hist = Py_None, *res = NULL, *powers = NULL, *names = NULL;
    long long dt_ns;
    ep_ioreport_channel *a = NULL, *b = NULL;
    size_t n_a = 0, n_b = 0;
    ep_sample s;
    uint32_t faults = 0;
    char msg[EP_IOREPORT_MSG_LEN];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOL|O", kwlist, &pa, &pb, &dt_ns, &hist))
        return NULL;
    if (hist != Py_None && !PyObject_TypeCheck(hist, &HistoryType)) {
        PyErr_SetString(PyExc_TypeError, "history must be an IOReportHistory or None");
        return NULL;
    }
    if (parse_channels(pa, "a", &a, &n_a) < 0 || parse_channels(pb, "b", &b, &n_b) < 0)
        goto error;
    memset(&s, 0, sizeof s);
    int rc = ep_ioreport_delta(hist == Py_None ? NULL : &((HistoryObject *)hist)->state, a, n_a, b, n_b, dt_ns, &s,
                               &faults, msg, sizeof msg);
    if (rc != EP_OK) {
        ep_module_raise(rc, "ioreport_delta: dt_ns must be > 0");
        goto error;
    }
    powers = PyDict_New();
    names = PyList_New(0);
    if (!powers || !names)
        goto error;
    for (int d = 0; d < EP_NDOMAINS; d++) {
        PyObject *v = PyFloat_FromDouble(s.power_w[d]);
        if (!v || PyDict_SetItemString(powers, ep_domain_names[d], v) < 0) {
            Py_XDECREF(v);
            goto error;
        }
        Py_DECREF(v);
    }
    for (size_t k = 0; k < sizeof fault_names / sizeof fault_names[0]; k++) {
        if (faults & (1u << k)) {
            PyObject *t = PyUnicode_FromString(fault_names[k]);
            if (!t || PyList_Append(names, t) < 0) {
                Py_XDECREF(t);
                goto error;
            }
            Py_DECREF(t);
        }
    }
    res = Py_BuildValue("{sOsIsIsOss}", "power_w", powers, "flags", (unsigned int)s.flags, "faults",
                        (unsigned int)faults, "fault_names", names, "message", msg);
error:
    Py_XDECREF(powers);
    Py_XDECREF(names);
    PyMem_Free(a);
    PyMem_Free(b);
    return res;
}

static PyObject *py_ioreport_classify(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    int c = ep_ioreport_classify(name);
    if (c >= 0 && c < EP_NDOMAINS)
        return PyUnicode_FromString(ep_domain_names[c]);
    return PyUnicode_FromString(c == EP_IOREPORT_CPU_CLUSTER ? "cpu_cluster"
                                : c == EP_IOREPORT_UNKNOWN   ? "unknown"
                                                             : "ignored");
}

/* ---- SourceDriver ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    ep_source *src;
    int busy;   /* a call is running with the GIL released */
} DriverObject;

static void driver_dealloc(DriverObject *self)
{
    ep_source_destroy(self->src);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int driver_init(DriverObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "params", NULL};
    const char *kind;
    PyObject *params = Py_None, *items = NULL;
    const char **keys = NULL, **values = NULL;
    char err[EP_SOURCE_MSG_LEN] = "";
    int result = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s|O", kwlist, &kind, &params))
        return -1;
    if (self->src) {
        PyErr_SetString(PyExc_RuntimeError, "SourceDriver is already initialised");
        return -1;
    }
    Py_ssize_t n = 0;
    if (params != Py_None) {
        if (!PyDict_Check(params)) {
            PyErr_SetString(PyExc_TypeError, "params must be a dict of str -> str");
            return -1;
        }
        items = PyDict_Items(params);
        if (!items)
            return -1;
        n = PyList_GET_SIZE(items);
    }
    keys = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *keys);
    values = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *values);
    if (!keys || !values) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        keys[i] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kv, 0));
        values[i] = keys[i] ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(kv, 1)) : NULL;
        if (!keys[i] || !values[i]) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "params must be a dict of str -> str");
            goto error;
        }
    }
    ep_source *src = NULL;
    int rc;
    /* Creation may dlopen a driver library: do it without the GIL. */
    Py_BEGIN_ALLOW_THREADS
    rc = ep_source_create(kind, keys, values, (size_t)n, &src, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK) {
        ep_module_raise(rc, err);
        goto error;
    }
    self->src = src;
    result = 0;
error:
    PyMem_Free(keys);
    PyMem_Free(values);
    Py_XDECREF(items);
    return result;
}

static int driver_ready(DriverObject *self)
{
    if (!self->src) {
        PyErr_SetString(PyExc_RuntimeError, "SourceDriver is not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "SourceDriver is in use by another thread");
        return 0;
    }
    return 1;
}

static PyObject *driver_start(DriverObject *self, PyObject *args)
{
    long long t_ns;
    int rc;
    if (!PyArg_ParseTuple(args, "L", &t_ns) || !driver_ready(self))
        return NULL;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = self->src->start(self->src, t_ns);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (rc != EP_OK)
        return ep_module_raise(rc, self->src->message);
    Py_RETURN_NONE;
}

static PyObject *driver_step(DriverObject *self, PyObject *args, int is_stop)
{
    long long t_ns;
    Py_ssize_t cap = EP_SOURCE_READ_MAX;
    size_t n_out = 0;
    int rc;
    if (!PyArg_ParseTuple(args, "L|n", &t_ns, &cap) || !driver_ready(self))
        return NULL;
    if (cap < 1 || cap > 4096) {
        PyErr_SetString(PyExc_ValueError, "cap must be in 1..4096");
        return NULL;
    }
    ep_sample *buf = PyMem_Calloc((size_t)cap, sizeof *buf);
    if (!buf)
        return PyErr_NoMemory();
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = is_stop ? self->src->stop(self->src, t_ns, buf, (size_t)cap, &n_out)
                 : self->src->poll(self->src, t_ns, buf, (size_t)cap, &n_out);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyObject *res = NULL;
    if (rc != EP_OK && rc != EP_ERR_EOF)
        ep_module_raise(rc, self->src->message);
    else
        res = ep_module_sample_array(buf, n_out);
    PyMem_Free(buf);
    return res;
}

static PyObject *driver_poll(DriverObject *self, PyObject *args)
{
    return driver_step(self, args, 0);
}

static PyObject *driver_stop(DriverObject *self, PyObject *args)
{
    return driver_step(self, args, 1);
}

static PyObject *driver_get(DriverObject *self, void *which)
{
    if (!self->src) {
        PyErr_SetString(PyExc_RuntimeError, "SourceDriver is not initialised");
        return NULL;
    }
    switch ((int)(intptr_t)which) {
    case 0: return PyUnicode_FromString(self->src->kind ? self->src->kind : "");
    case 1: return PyLong_FromUnsignedLong(self->src->flags);
    case 2: return PyLong_FromLongLong(self->src->faults);
    case 3: return PyUnicode_DecodeUTF8(self->src->message, (Py_ssize_t)strlen(self->src->message), "replace");
    case 4: return PyUnicode_DecodeUTF8(self->src->meta_json, (Py_ssize_t)strlen(self->src->meta_json), "replace");
    default: return PyLong_FromLongLong(self->src->period_ns);
    }
}

static PyMethodDef driver_methods[] = {
    {"start", (PyCFunction)driver_start, METH_VARARGS, "start(t_ns): the source's start at time t_ns."},
    {"poll", (PyCFunction)driver_poll, METH_VARARGS,
     "poll(t_ns, cap=32) -> ndarray[SAMPLE_DTYPE]: one poll at time t_ns."},
    {"stop", (PyCFunction)driver_stop, METH_VARARGS,
     "stop(t_ns, cap=32) -> ndarray[SAMPLE_DTYPE]: the final flush at time t_ns."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef driver_getset[] = {
    {"kind", (getter)driver_get, NULL, "source kind", (void *)0},
    {"flags", (getter)driver_get, NULL, "EP_SRC_* flags (1 simulated, 2 estimated, 4 paced)", (void *)1},
    {"faults", (getter)driver_get, NULL, "faults the source recovered from", (void *)2},
    {"message", (getter)driver_get, NULL, "last fault or error message", (void *)3},
    {"meta_json", (getter)driver_get, NULL, "JSON text of the source's metadata", (void *)4},
    {"period_ns", (getter)driver_get, NULL, "preferred poll period in ns", (void *)5},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DriverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "energyprof._core.SourceDriver",
    .tp_basicsize = sizeof(DriverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)driver_init,
    .tp_dealloc = (destructor)driver_dealloc,
    .tp_methods = driver_methods,
    .tp_getset = driver_getset,
    .tp_doc = "SourceDriver(kind, params=None): one power source driven step by step at chosen times "
              "(start/poll/stop), without the sampler thread.  Used by energyprof.doctor and tests.",
};

static PyMethodDef ioreport_methods[] = {
    {"ioreport_delta", (PyCFunction)(void (*)(void))py_ioreport_delta, METH_VARARGS | METH_KEYWORDS,
     "ioreport_delta(a, b, dt_ns, history=None) -> dict: power per domain (W) between two cumulative "
     "IOReport snapshots [(name, unit, value), ...], with flags, fault bits/names and a message."},
    {"ioreport_classify", py_ioreport_classify, METH_O,
     "ioreport_classify(name) -> str: the domain of an IOReport channel name, or 'cpu_cluster', "
     "'ignored', 'unknown'."},
    {NULL, NULL, 0, NULL},
};

int ep_module_add_ioreport(PyObject *m)
{
    if (PyType_Ready(&HistoryType) < 0 || PyType_Ready(&DriverType) < 0)
        return -1;
    if (ep_module_add_ref(m, "IOReportHistory", (PyObject *)&HistoryType) < 0)
        return -1;
    if (ep_module_add_ref(m, "SourceDriver", (PyObject *)&DriverType) < 0)
        return -1;
    /* SourceDriver.flags uses the SRC_* constants: ep_module_add_sampler adds them. */
    return ep_module_add_functions(m, ioreport_methods);
}
