/* ep_module_sampler.c: the Python face of the sampler: _core.Sampler.
 *
 * A thin wrapper: argument checks, GIL release around the calls that block
 * (start runs the source's start on the sampler thread and waits for it; stop
 * joins), and drain, which copies the ring once, under its lock, straight into
 * the buffer of a new numpy array (owned by numpy).
 */
#include "ep_module.h"

#include <math.h>
#include <string.h>

#include "ep_errors.h"
#include "ep_sampler.h"
#include "ep_source.h"

#define ERR_LEN 512

typedef struct {
    PyObject_HEAD
    ep_sampler *sampler;   /* owned; NULL only while being built */
    PyObject *kind;        /* str */
} SamplerObject;

static PyObject *sample_dtype; /* cached SAMPLE_DTYPE (one reference held by this file) */

static PyObject *Sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "params", "interval_ms", "capacity", NULL};
    const char *kind = NULL;
    PyObject *params = NULL, *interval_obj = Py_None;
    Py_ssize_t capacity = 262144;
    const char **keys = NULL, **values = NULL;
    ep_source *src = NULL;
    SamplerObject *self = NULL;
    char err[ERR_LEN] = "";
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sO!|On:Sampler", kwlist, &kind, &PyDict_Type, &params,
                                     &interval_obj, &capacity))
        return NULL;
    int64_t interval_ns = 0; /* 0: the source's own period */
    if (interval_obj != Py_None) {
        double ms = PyFloat_AsDouble(interval_obj);
        if (ms == -1.0 && PyErr_Occurred())
            goto error;
        if (!(ms > 0.0) || !isfinite(ms) || ms > 1e9) {
            PyErr_Format(PyExc_ValueError, "interval_ms must be a positive number of ms, got %R", interval_obj);
            goto error;
        }
        interval_ns = llround(ms * 1e6);
    }
    if (capacity < 1) {
        PyErr_Format(PyExc_ValueError, "capacity must be >= 1, got %zd", capacity);
        goto error;
    }
    Py_ssize_t n = PyDict_Size(params), i = 0, pos = 0;
    PyObject *k, *v;
    keys = PyMem_Calloc((size_t)n + 1, sizeof *keys);
    values = PyMem_Calloc((size_t)n + 1, sizeof *values);
    if (!keys || !values) {
        PyErr_NoMemory();
        goto error;
    }
    /* The UTF-8 buffers are owned by the str objects, which params keeps alive. */
    while (PyDict_Next(params, &pos, &k, &v)) {
        if (!PyUnicode_Check(k) || !PyUnicode_Check(v)) {
            PyErr_Format(PyExc_TypeError, "source params must map str to str, got %R: %R", k, v);
            goto error;
        }
        Py_ssize_t klen, vlen;
        keys[i] = PyUnicode_AsUTF8AndSize(k, &klen);
        values[i] = PyUnicode_AsUTF8AndSize(v, &vlen);
        if (!keys[i] || !values[i])
            goto error;
        if ((Py_ssize_t)strlen(keys[i]) != klen || (Py_ssize_t)strlen(values[i]) != vlen) {
            PyErr_Format(PyExc_ValueError, "source param %R contains a NUL character", k);
            goto error;
        }
        i++;
    }
    rc = ep_source_create(kind, keys, values, (size_t)n, &src, err, sizeof err);
    if (rc != EP_OK) {
        ep_module_raise(rc, err);
        goto error;
    }
    self = (SamplerObject *)type->tp_alloc(type, 0);
    if (!self)
        goto error;
    self->kind = PyUnicode_FromString(src->kind ? src->kind : kind);
    if (!self->kind)
        goto error;
    rc = ep_sampler_create(src, interval_ns, (size_t)capacity, &self->sampler, err, sizeof err);
    src = NULL; /* owned by the sampler now, or already destroyed by it */
    if (rc != EP_OK) {
        ep_module_raise(rc, err);
        goto error;
    }
    PyMem_Free(keys);
    PyMem_Free(values);
    return (PyObject *)self;
error:
    PyMem_Free(keys);
    PyMem_Free(values);
    ep_source_destroy(src);
    Py_XDECREF(self);
    return NULL;
}

static void Sampler_dealloc(SamplerObject *self)
{
    if (self->sampler) {
        ep_sampler *s = self->sampler;
        self->sampler = NULL;
        /* Joining the thread may take up to one source call: let other threads run. */
        Py_BEGIN_ALLOW_THREADS
        ep_sampler_destroy(s);
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(self->kind);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One step of a start (ep_sampler_start, _launch or _await_start) with the GIL released:
 * None, or the step's error raised. */
static PyObject *start_step(SamplerObject *self, int (*step)(ep_sampler *, char *, size_t))
{
    char err[ERR_LEN] = "";
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = step(self->sampler, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK)
        return ep_module_raise(rc, err);
    Py_RETURN_NONE;
}

static PyObject *Sampler_start(SamplerObject *self, PyObject *noargs)
{
    return start_step(self, ep_sampler_start);
}

static PyObject *Sampler_launch(SamplerObject *self, PyObject *noargs)
{
    return start_step(self, ep_sampler_launch); /* creates the thread, never waits */
}

static PyObject *Sampler_await_start(SamplerObject *self, PyObject *noargs)
{
    return start_step(self, ep_sampler_await_start);
}

static PyObject *Sampler_request_stop(SamplerObject *self, PyObject *noargs)
{
    ep_sampler_request_stop(self->sampler); /* takes the sampler's lock for a moment only */
    Py_RETURN_NONE;
}

static PyObject *Sampler_stop(SamplerObject *self, PyObject *noargs)
{
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ep_sampler_stop(self->sampler);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK)
        return ep_module_raise(rc, "joining the sampler thread failed");
    Py_RETURN_NONE;
}

static PyObject *Sampler_drain(SamplerObject *self, PyObject *noargs)
{
    size_t n = ep_sampler_pending(self->sampler);
    npy_intp dims[1] = {(npy_intp)n};
    Py_INCREF(sample_dtype); /* PyArray_NewFromDescr steals one reference */
    PyArrayObject *arr = (PyArrayObject *)PyArray_NewFromDescr(
        &PyArray_Type, (PyArray_Descr *)sample_dtype, 1, dims, NULL, NULL, 0, NULL);
    if (!arr)
        return NULL;
    size_t got;
    void *data = PyArray_DATA(arr);
    /* The array is not visible to anyone yet, so the copy can run without the GIL. */
    Py_BEGIN_ALLOW_THREADS
    got = ep_sampler_drain(self->sampler, data, n);
    Py_END_ALLOW_THREADS
    if (got < n) {
        /* Another thread drained in between: shrink to what we got. */
        npy_intp shape[1] = {(npy_intp)got};
        PyArray_Dims newshape = {shape, 1};
        PyObject *res = PyArray_Resize(arr, &newshape, 0, NPY_CORDER);
        if (!res) {
            Py_DECREF(arr);
            return NULL;
        }
        Py_DECREF(res);
    }
    return (PyObject *)arr;
}

static PyObject *Sampler_stats(SamplerObject *self, PyObject *noargs)
{
    ep_sampler_stats st;
    ep_sampler_get_stats(self->sampler, &st);
    return Py_BuildValue("{sOsOsLsLsLsLsLsLsLsLsL}", "running", st.running ? Py_True : Py_False, "ended",
                         st.ended ? Py_True : Py_False, "interval_ns", (long long)st.interval_ns, "polls",
                         (long long)st.polls, "late_ticks", (long long)st.late_ticks, "samples",
                         (long long)st.samples, "dropped", (long long)st.dropped, "pending",
                         (long long)st.pending, "faults", (long long)st.faults, "thread_cpu_ns",
                         (long long)st.thread_cpu_ns, "n_messages", (long long)st.n_messages);
}

/* Getters: one stats snapshot each; cheap (two uncontended locks). */
#define STAT_GETTER(field, conv)                                          \
    static PyObject *Sampler_get_##field(SamplerObject *self, void *c)     \
    {                                                                     \
        ep_sampler_stats st;                                              \
        ep_sampler_get_stats(self->sampler, &st);                         \
        return conv(st.field);                                            \
    }
STAT_GETTER(running, PyBool_FromLong)
STAT_GETTER(ended, PyBool_FromLong)
STAT_GETTER(dropped, PyLong_FromLongLong)
STAT_GETTER(faults, PyLong_FromLongLong)
STAT_GETTER(thread_cpu_ns, PyLong_FromLongLong)
STAT_GETTER(interval_ns, PyLong_FromLongLong)
STAT_GETTER(polls, PyLong_FromLongLong)
STAT_GETTER(samples, PyLong_FromLongLong)
STAT_GETTER(pending, PyLong_FromLongLong)
STAT_GETTER(late_ticks, PyLong_FromLongLong)

static PyObject *Sampler_get_message(SamplerObject *self, void *c)
{
    char buf[EP_SOURCE_MSG_LEN];
    ep_sampler_last_message(self->sampler, buf, sizeof buf);
    return PyUnicode_DecodeUTF8(buf, (Py_ssize_t)strlen(buf), "replace");
}

static PyObject *Sampler_get_messages(SamplerObject *self, void *c)
{
    char buf[EP_SAMPLER_LOG][EP_SOURCE_MSG_LEN];
    size_t n = ep_sampler_messages(self->sampler, buf, EP_SAMPLER_LOG);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *s = PyUnicode_DecodeUTF8(buf[i], (Py_ssize_t)strlen(buf[i]), "replace");
        if (!s) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

static PyObject *Sampler_get_kind(SamplerObject *self, void *c)
{
    Py_INCREF(self->kind);
    return self->kind;
}

static PyObject *Sampler_get_source_flags(SamplerObject *self, void *c)
{
    return PyLong_FromUnsignedLong(ep_sampler_source(self->sampler)->flags);
}

static PyObject *Sampler_get_period_ns(SamplerObject *self, void *c)
{
    return PyLong_FromLongLong(ep_sampler_source(self->sampler)->period_ns);
}

static PyObject *Sampler_get_supports_boundary(SamplerObject *self, void *c)
{
    return PyBool_FromLong(ep_sampler_source(self->sampler)->boundary != NULL);
}

static PyObject *Sampler_get_boundary_reads(SamplerObject *self, void *c)
{
    return PyLong_FromLongLong(ep_sampler_boundary_reads(self->sampler));
}

static PyObject *Sampler_get_counter_still_ns(SamplerObject *self, void *c)
{
    return PyLong_FromLongLong(ep_sampler_counter_still_ns(self->sampler));
}

static PyObject *Sampler_set_boundary_target(SamplerObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    int rc = ep_sampler_set_boundary_target(on ? self->sampler : NULL);
    if (rc != EP_OK)
        return ep_module_raise(rc, "set_boundary_target: this source has no boundary read");
    Py_RETURN_NONE;
}

/* boundary_read / boundary_sync: one reading at the time in arg (ns), plain or synchronised,
 * with the GIL released; returns the reading's time (moved on by a synchronised one). */
static PyObject *sampler_boundary(SamplerObject *self, PyObject *arg, int sync)
{
    long long t = PyLong_AsLongLong(arg);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    int64_t t_ns = (int64_t)t;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sync ? ep_sampler_boundary_sync(self->sampler, &t_ns) : ep_sampler_boundary_read(self->sampler, t_ns);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK)
        return ep_module_raise(rc, sync ? "boundary_sync" : "boundary_read");
    return PyLong_FromLongLong(t_ns);
}

static PyObject *Sampler_boundary_read(SamplerObject *self, PyObject *arg)
{
    PyObject *t = sampler_boundary(self, arg, 0);
    if (!t)
        return NULL;
    Py_DECREF(t);
    Py_RETURN_NONE;
}

static PyObject *Sampler_get_supports_sync(SamplerObject *self, void *c)
{
    return PyBool_FromLong(ep_sampler_source(self->sampler)->sync != NULL);
}

static PyObject *Sampler_arm_sync(SamplerObject *self, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    int rc = ep_sampler_arm_sync(self->sampler, (int64_t)n);
    if (rc != EP_OK)
        return ep_module_raise(rc, "arm_sync: this source has no synchronised read");
    Py_RETURN_NONE;
}

static PyObject *Sampler_boundary_sync(SamplerObject *self, PyObject *arg)
{
    return sampler_boundary(self, arg, 1);
}

static PyObject *Sampler_get_sync_stats(SamplerObject *self, void *c)
{
    int64_t v[4];
    ep_sampler_sync_stats(self->sampler, v);
    return Py_BuildValue("{s:L,s:L,s:L,s:L}", "update_ns", (long long)v[0], "starts", (long long)v[1],
                         "timeouts", (long long)v[2], "waited_ns", (long long)v[3]);
}

static PyObject *Sampler_get_meta_json(SamplerObject *self, void *c)
{
    const char *meta = ep_sampler_source(self->sampler)->meta_json;
    return PyUnicode_DecodeUTF8(meta, (Py_ssize_t)strnlen(meta, EP_SOURCE_META_LEN), "replace");
}

static PyMethodDef Sampler_methods[] = {
    {"start", (PyCFunction)Sampler_start, METH_NOARGS,
     "start(): start the sampler thread; it runs the source's start and returns once that did.\n"
     "Raises (and the thread is gone) when the source cannot start; RuntimeError if running."},
    {"launch", (PyCFunction)Sampler_launch, METH_NOARGS,
     "launch(): start() in two halves, first: create the sampler thread and return at once (it starts the\n"
     "source meanwhile); RuntimeError if running."},
    {"await_start", (PyCFunction)Sampler_await_start, METH_NOARGS,
     "await_start(): the second half: wait until the source's start returned; raises what start() would.\n"
     "A stop() before it finishes the start itself."},
    {"request_stop", (PyCFunction)Sampler_request_stop, METH_NOARGS,
     "request_stop(): ask the thread to take its final sample and exit, without waiting (stop() joins it).\n"
     "No-op when not running."},
    {"stop", (PyCFunction)Sampler_stop, METH_NOARGS,
     "stop(): wake and join the thread (GIL released); the source's final sample is in the ring.\n"
     "No-op when not running."},
    {"drain", (PyCFunction)Sampler_drain, METH_NOARGS,
     "drain() -> numpy array of SAMPLE_DTYPE: every sample waiting in the ring, oldest first,\n"
     "copied once under the ring's lock into a new array owned by numpy."},
    {"stats", (PyCFunction)Sampler_stats, METH_NOARGS, "stats() -> dict: a snapshot of the counters (exact once stopped)."},
    {"set_boundary_target", (PyCFunction)Sampler_set_boundary_target, METH_O,
     "set_boundary_target(on): make this sampler the process-wide target of the hooks' boundary reads "
     "(False clears it); NotImplementedError when the source has no boundary read."},
    {"boundary_read", (PyCFunction)Sampler_boundary_read, METH_O,
     "boundary_read(t_ns): read the source at t_ns now, from this thread (tests; the hooks do it in C)."},
    {"arm_sync", (PyCFunction)Sampler_arm_sync, METH_O,
     "arm_sync(n_starts): synchronise the boundary reads of the next n_starts forward starts (2 = a "
     "generate()'s prefill edges); 0 disarms; NotImplementedError when the source has no synchronised read."},
    {"boundary_sync", (PyCFunction)Sampler_boundary_sync, METH_O,
     "boundary_sync(t_ns) -> t_ns: a synchronised boundary read from this thread (tests; the hooks do it in C): "
     "waits for the counter to move and returns the reading's time."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sampler_getset[] = {
    {"running", (getter)Sampler_get_running, NULL, "True between start() and stop().", NULL},
    {"ended", (getter)Sampler_get_ended, NULL, "True once the source reported end of stream.", NULL},
    {"dropped", (getter)Sampler_get_dropped, NULL, "Samples dropped because the ring was full.", NULL},
    {"faults", (getter)Sampler_get_faults, NULL, "Faults: source-reported + failed polls/starts/stops.", NULL},
    {"thread_cpu_ns", (getter)Sampler_get_thread_cpu_ns, NULL, "CPU time used by the sampler thread (ns).", NULL},
    {"interval_ns", (getter)Sampler_get_interval_ns, NULL, "Poll interval in use (ns).", NULL},
    {"polls", (getter)Sampler_get_polls, NULL, "Poll calls made.", NULL},
    {"samples", (getter)Sampler_get_samples, NULL, "Samples produced by the source (kept + dropped).", NULL},
    {"pending", (getter)Sampler_get_pending, NULL, "Samples waiting in the ring.", NULL},
    {"late_ticks", (getter)Sampler_get_late_ticks, NULL, "Ticks skipped because the thread woke late.", NULL},
    {"message", (getter)Sampler_get_message, NULL, "The most recent source/sampler message, '' if none.", NULL},
    {"messages", (getter)Sampler_get_messages, NULL, "The most recent messages (up to 16), oldest first.", NULL},
    {"kind", (getter)Sampler_get_kind, NULL, "The source kind.", NULL},
    {"source_flags", (getter)Sampler_get_source_flags, NULL, "EP_SRC_* flags of the source.", NULL},
    {"period_ns", (getter)Sampler_get_period_ns, NULL, "The source's own sample period (ns).", NULL},
    {"supports_boundary", (getter)Sampler_get_supports_boundary, NULL,
     "True when the source can be read at forward boundaries (counter sources, synthetic).", NULL},
    {"boundary_reads", (getter)Sampler_get_boundary_reads, NULL, "Boundary reads that gave a sample.", NULL},
    {"supports_sync", (getter)Sampler_get_supports_sync, NULL,
     "True when boundary reads can be synchronised with the counter's updates (rapl).", NULL},
    {"sync_stats", (getter)Sampler_get_sync_stats, NULL,
     "dict: update_ns (the counter's update period in use), starts (synchronised), timeouts, waited_ns.", NULL},
    {"counter_still_ns", (getter)Sampler_get_counter_still_ns, NULL,
     "Longest span (ns) a source that skips stale reads saw its counter unchanged (0: never).", NULL},
    {"meta_json", (getter)Sampler_get_meta_json, NULL, "JSON text: facts about the source for run metadata.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "energyprof._core.Sampler",
    .tp_basicsize = sizeof(SamplerObject),
    .tp_dealloc = (destructor)Sampler_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sampler(kind: str, params: dict[str, str], interval_ms: float | None = None, capacity: int = 262144)\n\n"
              "A native thread polling one power source into a bounded ring.  interval_ms=None uses the\n"
              "source's own period.  The thread never touches Python.",
    .tp_methods = Sampler_methods,
    .tp_getset = Sampler_getset,
    .tp_new = Sampler_new,
};

int ep_module_add_sampler(PyObject *m)
{
    if (!sample_dtype) {
        sample_dtype = ep_module_sample_dtype();
        if (!sample_dtype)
            return -1;
    }
    if (PyType_Ready(&SamplerType) < 0)
        return -1;
    if (ep_module_add_ref(m, "Sampler", (PyObject *)&SamplerType) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "SRC_SIMULATED", EP_SRC_SIMULATED) < 0 ||
        PyModule_AddIntConstant(m, "SRC_ESTIMATED", EP_SRC_ESTIMATED) < 0 ||
        PyModule_AddIntConstant(m, "SRC_PACED", EP_SRC_PACED) < 0)
        return -1;
    return 0;
}
