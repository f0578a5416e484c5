/* ep_module_hooks.c: the Python face of the span buffer (ep_hooks.c) and the
 * libtorch shim (ep_torchshim.cpp): _core.SpanBuffer, _core.Hook,
 * _core.wrap_forward, _core.torchshim_load/torchshim_info/device_sync, and _core.module_tree (the
 * walk over a torch module tree that arch.describe's memory is keyed on).
 *
 * The hot path (Hook and the forward wrapper called by torch) creates no Python
 * object: it reads the clock, adjusts the activity level and appends 16 bytes to
 * the span buffer.  Every failure there is turned into a warning (once per
 * buffer) and a self-disable, never an exception into the model's forward.
 */
#include "ep_module.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <structmember.h>

#include "ep_activity.h"
#include "ep_clock.h"
#include "ep_errors.h"
#include "ep_hooks.h"
#include "ep_sampler.h"
#include "ep_stats.h"
#include "ep_torchshim.h"

/* ---------------------------------------------------------------- SpanBuffer */

typedef struct {
    PyObject_HEAD
    ep_spanbuf *buf;  /* owned */
    /* Warn once per buffer (a session), not once per hook: a failing device sync
     * or a faulty buffer would otherwise warn for every hooked module. */
    int sync_failed;  /* a device sync failed: every hook on this buffer stops syncing */
    int sync_warned;
    int error_warned;
} SpanBufferObject;

static PyTypeObject SpanBufferType;
static PyArray_Descr *event_descr; /* module-lifetime reference: EVENT_DTYPE */

static PyArray_Descr *make_event_descr(void)
{
    /* From offsetof, so the numpy view matches ep_event exactly. */
    PyArray_Descr *descr = NULL;
    PyObject *spec = Py_BuildValue("{s[sss]s[sss]s[nnn]sn}", "names", "t_ns", "span_id", "kind", "formats", "<i8",
                                   "<i4", "<i4", "offsets", (Py_ssize_t)offsetof(ep_event, t_ns),
                                   (Py_ssize_t)offsetof(ep_event, span_id), (Py_ssize_t)offsetof(ep_event, kind),
                                   "itemsize", (Py_ssize_t)sizeof(ep_event));
    if (!spec)
        goto error;
    if (!PyArray_DescrConverter(spec, &descr))
        descr = NULL;
error:
    Py_XDECREF(spec);
    return descr;
}

static PyObject *spanbuffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", NULL};
    long long capacity = (long long)EP_SPANBUF_DEFAULT_CAPACITY;
    SpanBufferObject *self = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|L:SpanBuffer", kwlist, &capacity))
        goto error;
    if (capacity < 1 || (unsigned long long)capacity > SIZE_MAX / sizeof(ep_event)) {
        PyErr_Format(PyExc_ValueError, "SpanBuffer: capacity must be >= 1 (events), got %lld", capacity);
        goto error;
    }
    self = (SpanBufferObject *)type->tp_alloc(type, 0);
    if (!self)
        goto error;
    int rc = ep_spanbuf_new((size_t)capacity, &self->buf);
    if (rc != EP_OK) {
        ep_module_raise(rc, "SpanBuffer");
        goto error;
    }
    return (PyObject *)self;
error:
    Py_XDECREF(self);
    return NULL;
}

static void spanbuffer_dealloc(SpanBufferObject *self)
{
    ep_spanbuf_free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t spanbuffer_len(SpanBufferObject *self)
{
    return (Py_ssize_t)ep_spanbuf_len(self->buf);
}

static PyObject *spanbuffer_drain(SpanBufferObject *self, PyObject *noargs)
{
    /* Allocate outside the buffer's lock: numpy may run the GC, the GC may run
     * Python code, and that code may call a hook that appends to this buffer. */
    PyObject *arr = NULL, *res = NULL;
    npy_intp n = (npy_intp)ep_spanbuf_len(self->buf);
    Py_INCREF(event_descr);
    arr = PyArray_NewFromDescr(&PyArray_Type, event_descr, 1, &n, NULL, NULL, 0, NULL);
    if (!arr)
        goto error;
    size_t got = ep_spanbuf_drain(self->buf, (ep_event *)PyArray_DATA((PyArrayObject *)arr), (size_t)n);
    if ((npy_intp)got == n) {
        res = arr;
        arr = NULL;
    } else {
        /* Another thread drained or cleared in between: keep what we got. */
        res = PySequence_GetSlice(arr, 0, (Py_ssize_t)got);
    }
error:
    Py_XDECREF(arr);
    return res;
}

static PyObject *spanbuffer_clear(SpanBufferObject *self, PyObject *noargs)
{
    ep_spanbuf_clear(self->buf);
    self->sync_failed = 0;
    self->sync_warned = 0;
    self->error_warned = 0;
    Py_RETURN_NONE;
}

static PyObject *spanbuffer_append(SpanBufferObject *self, PyObject *args)
{
    long long t_ns;
    int span_id, kind;
    if (!PyArg_ParseTuple(args, "Lii:_append", &t_ns, &span_id, &kind))
        return NULL;
    int rc = ep_spanbuf_append(self->buf, (int64_t)t_ns, span_id, kind);
    if (rc == EP_OK)
        Py_RETURN_TRUE;
    if (rc == EP_ERR_FULL)
        Py_RETURN_FALSE;
    return ep_module_raise(rc, "SpanBuffer._append");
}

static PyObject *spanbuffer_inject_fault(SpanBufferObject *self, PyObject *arg)
{
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    ep_spanbuf_inject_fault(self->buf, (int)code);
    Py_RETURN_NONE;
}

static PyObject *spanbuffer_get_dropped(SpanBufferObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(ep_spanbuf_dropped(self->buf));
}

static PyObject *spanbuffer_get_capacity(SpanBufferObject *self, void *closure)
{
    return PyLong_FromSize_t(ep_spanbuf_capacity(self->buf));
}

static PyObject *spanbuffer_get_sync_failed(SpanBufferObject *self, void *closure)
{
    return PyBool_FromLong(self->sync_failed);
}

static PyMethodDef spanbuffer_methods[] = {
    {"drain", (PyCFunction)spanbuffer_drain, METH_NOARGS,
     "drain() -> numpy array of EVENT_DTYPE: every event, oldest first; the buffer is emptied."},
    {"clear", (PyCFunction)spanbuffer_clear, METH_NOARGS,
     "clear(): forget all events, reset `dropped` and the once-per-buffer warning state."},
    {"append", (PyCFunction)spanbuffer_append, METH_VARARGS,
     "append(t_ns, span_id, kind) -> bool (False: dropped because full): an event recorded by the caller,\n"
     "e.g. the marks of a run without hooks (ep.run(None): s.mark_prefill_end(), s.mark_token())."},
    {"_append", (PyCFunction)spanbuffer_append, METH_VARARGS,
     "Tests only: _append(t_ns, span_id, kind) -> bool (the same as append)."},
    {"_inject_fault", (PyCFunction)spanbuffer_inject_fault, METH_O,
     "Tests only: _inject_fault(code): every append fails with EP_ERR code (0 turns it off)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef spanbuffer_getset[] = {
    {"dropped", (getter)spanbuffer_get_dropped, NULL, "Events dropped because the buffer was full.", NULL},
    {"capacity", (getter)spanbuffer_get_capacity, NULL, "Maximum number of events held.", NULL},
    {"sync_failed", (getter)spanbuffer_get_sync_failed, NULL,
     "True once a device sync failed for a hook on this buffer (syncing stopped).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods spanbuffer_as_sequence = {
    .sq_length = (lenfunc)spanbuffer_len,
};

static PyTypeObject SpanBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "energyprof._core.SpanBuffer",
    .tp_doc = "SpanBuffer(capacity: int = 1 << 22)\n\n"
              "Thread-safe, growable buffer of hook events (t_ns, span_id, kind) holding at most "
              "`capacity` events; appends past it are dropped and counted in `dropped`.",
    .tp_basicsize = sizeof(SpanBufferObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = spanbuffer_new,
    .tp_dealloc = (destructor)spanbuffer_dealloc,
    .tp_methods = spanbuffer_methods,
    .tp_getset = spanbuffer_getset,
    .tp_as_sequence = &spanbuffer_as_sequence,
};

/* ---------------------------------------------------------------- the probe */

/* What Hook and the forward wrapper share: where to record and how to sync. */
typedef struct {
    SpanBufferObject *buffer; /* strong reference */
    PyObject *sync_fallback;  /* strong reference or NULL */
    int64_t sync_index;
    int64_t calls;
    int32_t span_id;
    int sync;                 /* EP_SYNC_*; set to EP_SYNC_NONE when syncing stopped */
    int activity;
    int comp;                 /* EP_COMP_*: the kind pushed on the component stack (with activity) */
    int boundary;             /* read the boundary target's source at each begin / end */
    int enabled;
} probe;

/* Warn with a RuntimeWarning without disturbing a pending exception.  If the
 * warning itself raises (warnings turned into errors), report it as unraisable:
 * the model's forward must not fail because of the profiler. */
static void probe_warn(PyObject *owner, const char *fmt, const char *detail)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, fmt, detail) < 0)
        PyErr_WriteUnraisable(owner);
    PyErr_Restore(et, ev, etb);
}

static int probe_init(probe *p, PyObject *buffer, int span_id, int activity, int comp, int sync,
                      long long sync_index, PyObject *sync_fallback)
{
    if (comp < EP_COMP_INHERIT || comp >= EP_NCOMP) {
        PyErr_Format(PyExc_ValueError,
                     "component must be COMP_INHERIT (-1), COMP_OTHER (0), COMP_ATTN (1) or COMP_MLP (2), got %d", comp);
        return -1;
    }
    if (!PyObject_TypeCheck(buffer, &SpanBufferType)) {
        PyErr_Format(PyExc_TypeError, "buffer must be an energyprof._core.SpanBuffer, not %.100s",
                     Py_TYPE(buffer)->tp_name);
        return -1;
    }
    if (sync != EP_SYNC_NONE && sync != EP_SYNC_CUDA && sync != EP_SYNC_MPS) {
        PyErr_Format(PyExc_ValueError, "sync must be SYNC_NONE (0), SYNC_CUDA (1) or SYNC_MPS (2), got %d", sync);
        return -1;
    }
    if (sync_fallback == Py_None)
        sync_fallback = NULL;
    if (sync_fallback && !PyCallable_Check(sync_fallback)) {
        PyErr_Format(PyExc_TypeError, "sync_fallback must be callable or None, not %.100s",
                     Py_TYPE(sync_fallback)->tp_name);
        return -1;
    }
    Py_INCREF(buffer);
    p->buffer = (SpanBufferObject *)buffer;
    Py_XINCREF(sync_fallback);
    p->sync_fallback = sync_fallback;
    p->span_id = (int32_t)span_id;
    p->activity = activity;
    p->comp = comp;
    p->sync = sync;
    p->sync_index = (int64_t)sync_index;
    p->enabled = 1;
    p->calls = 0;
    return 0;
}

static void probe_sync_failed(PyObject *owner, probe *p, const char *why)
{
    p->sync = EP_SYNC_NONE;
    p->buffer->sync_failed = 1;
    if (!p->buffer->sync_warned) {
        p->buffer->sync_warned = 1;
        probe_warn(owner, "energyprof: device synchronize failed (%s); timestamps are taken without sync from now on",
                   why);
    }
}

/* Call the device synchronize: the shim first (GIL released: it may block for
 * the whole queue of device work), the Python fallback when the shim lacks the
 * symbol.  Called with no exception pending. */
static void probe_sync(PyObject *owner, probe *p)
{
    char msg[512];
    int rc;
    if (ep_torchshim_origin(p->sync)) {
        Py_BEGIN_ALLOW_THREADS
        rc = ep_torchshim_sync(p->sync, p->sync_index, msg, sizeof msg);
        Py_END_ALLOW_THREADS
        if (rc == EP_OK)
            return;
        if (rc != EP_ERR_UNSUPPORTED) {
            probe_sync_failed(owner, p, msg);
            return;
        }
    }
    if (!p->sync_fallback) {
        probe_sync_failed(owner, p, "the libtorch symbol is not loaded and there is no fallback");
        return;
    }
    PyObject *r = PyObject_CallNoArgs(p->sync_fallback);
    if (r) {
        Py_DECREF(r);
        return;
    }
    /* Error path only: Python objects are fine here. */
    PyObject *et, *ev, *etb, *s = NULL;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    s = ev ? PyObject_Str(ev) : NULL;
    const char *text = s ? PyUnicode_AsUTF8(s) : NULL;
    PyErr_Clear(); /* from PyObject_Str / AsUTF8, if they failed */
    snprintf(msg, sizeof msg, "fallback %s: %s", et ? ((PyTypeObject *)et)->tp_name : "error",
             text ? text : "?");
    Py_XDECREF(s);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(etb);
    probe_sync_failed(owner, p, msg);
}

/* The hot path: optional sync, one clock read, the activity level, one append. */
static void probe_fire(PyObject *owner, probe *p, int32_t kind)
{
    if (p->sync != EP_SYNC_NONE) {
        if (p->buffer->sync_failed)
            p->sync = EP_SYNC_NONE; /* another hook on this buffer saw the sync fail */
        else
            probe_sync(owner, p);
    }
    int64_t t_ns = ep_now_ns();
    /* A counter read can take microseconds (sysfs, a driver call), a synchronised one up to
     * two counter updates: other threads run.  A synchronised start moves t_ns on to the
     * reading, so the forward (and its activity) begins where the reading is: at a start
     * the read comes first, at an end after the activity has ended. */
    if (p->boundary && kind == EP_SPAN_BEGIN) {
        Py_BEGIN_ALLOW_THREADS
        ep_boundary_fire(&t_ns, 0);
        Py_END_ALLOW_THREADS
    }
    if (p->activity) {
        if (kind == EP_SPAN_BEGIN)
            ep_activity_call_begin(p->comp, t_ns);
        else
            ep_activity_call_end(t_ns);
    }
    if (p->boundary && kind == EP_SPAN_END) {
        Py_BEGIN_ALLOW_THREADS
        ep_boundary_fire(&t_ns, 1);
        Py_END_ALLOW_THREADS
    }
    int rc = ep_spanbuf_append(p->buffer->buf, t_ns, p->span_id, kind);
    if (rc == EP_OK || rc == EP_ERR_FULL) /* a drop is counted by the buffer */
        return;
    p->enabled = 0;
    if (!p->buffer->error_warned) {
        p->buffer->error_warned = 1;
        probe_warn(owner, "energyprof: a hook failed (%s) and disabled itself; the model runs unprofiled there",
                   ep_err_str(rc));
    }
}

static int probe_traverse(probe *p, visitproc visit, void *arg)
{
    Py_VISIT(p->sync_fallback);
    Py_VISIT((PyObject *)p->buffer);
    return 0;
}

static void probe_clear(probe *p)
{
    Py_CLEAR(p->sync_fallback);
    Py_CLEAR(p->buffer);
}

/* ---------------------------------------------------------------- Hook */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    probe p;
    int32_t kind;
} HookObject;

static PyTypeObject HookType;

static PyObject *hook_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    /* Any arguments: (module, args), (module, args, output), with_kwargs variants. */
    HookObject *self = (HookObject *)op;
    self->p.calls++;
    if (self->p.enabled && self->p.buffer)
        probe_fire(op, &self->p, self->kind);
    Py_RETURN_NONE;
}

static PyObject *hook_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "span_id", "kind", "activity", "sync", "sync_index", "sync_fallback",
                             "component", "boundary", NULL};
    PyObject *buffer, *fallback = NULL;
    int span_id, kind, activity = 1, sync = EP_SYNC_NONE, comp = EP_COMP_INHERIT, boundary = 0;
    long long sync_index = 0;
    HookObject *self = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oii|piLOip:Hook", kwlist, &buffer, &span_id, &kind, &activity,
                                     &sync, &sync_index, &fallback, &comp, &boundary))
        goto error;
    if (kind != EP_SPAN_BEGIN && kind != EP_SPAN_END) {
        PyErr_Format(PyExc_ValueError, "Hook: kind must be 0 (begin) or 1 (end), got %d", kind);
        goto error;
    }
    self = (HookObject *)type->tp_alloc(type, 0);
    if (!self)
        goto error;
    self->vectorcall = hook_vectorcall;
    self->kind = kind;
    if (probe_init(&self->p, buffer, span_id, activity, comp, sync, sync_index, fallback) < 0)
        goto error;
    self->p.boundary = boundary;
    return (PyObject *)self;
error:
    Py_XDECREF(self);
    return NULL;
}

static int hook_traverse(HookObject *self, visitproc visit, void *arg)
{
    return probe_traverse(&self->p, visit, arg);
}

static int hook_clear(HookObject *self)
{
    probe_clear(&self->p);
    return 0;
}

static void hook_dealloc(HookObject *self)
{
    PyObject_GC_UnTrack(self);
    hook_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *hook_repr(HookObject *self)
{
    return PyUnicode_FromFormat("<energyprof Hook span_id=%d %s%s>", (int)self->p.span_id,
                                self->kind == EP_SPAN_BEGIN ? "begin" : "end",
                                self->p.enabled ? "" : " disabled");
}

/* Getters shared by Hook and the forward wrapper: both start with HEAD, vectorcall, probe. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    probe p;
} ProbeOwner;

static PyObject *owner_get_enabled(ProbeOwner *self, void *closure)
{
    return PyBool_FromLong(self->p.enabled);
}

static int owner_set_enabled(ProbeOwner *self, PyObject *value, void *closure)
{
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete 'enabled'");
        return -1;
    }
    int v = PyObject_IsTrue(value);
    if (v < 0)
        return -1;
    self->p.enabled = v;
    return 0;
}

static PyObject *owner_get_calls(ProbeOwner *self, void *closure)
{
    return PyLong_FromLongLong(self->p.calls);
}

static PyObject *owner_get_syncing(ProbeOwner *self, void *closure)
{
    return PyBool_FromLong(self->p.sync != EP_SYNC_NONE && self->p.buffer && !self->p.buffer->sync_failed);
}

static PyObject *owner_get_span_id(ProbeOwner *self, void *closure)
{
    return PyLong_FromLong(self->p.span_id);
}

static PyObject *owner_get_buffer(ProbeOwner *self, void *closure)
{
    PyObject *b = self->p.buffer ? (PyObject *)self->p.buffer : Py_None;
    Py_INCREF(b);
    return b;
}

static PyObject *hook_get_kind(HookObject *self, void *closure)
{
    return PyLong_FromLong(self->kind);
}

#define OWNER_GETSET                                                                                         \
    {"enabled", (getter)owner_get_enabled, (setter)owner_set_enabled,                                         \
     "False once the hook disabled itself after an internal error (settable).", NULL},                       \
        {"calls", (getter)owner_get_calls, NULL, "Times this object was called (enabled or not).", NULL},     \
        {"syncing", (getter)owner_get_syncing, NULL, "True while a device sync runs before each timestamp.", \
         NULL},                                                                                              \
        {"span_id", (getter)owner_get_span_id, NULL, "The span id recorded.", NULL},                          \
        {"buffer", (getter)owner_get_buffer, NULL, "The SpanBuffer recorded into.", NULL}

static PyGetSetDef hook_getset[] = {
    OWNER_GETSET,
    {"kind", (getter)hook_get_kind, NULL, "0 begin (pre-hook), 1 end (forward hook).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "energyprof._core.Hook",
    .tp_doc = "Hook(buffer, span_id, kind, activity=True, sync=0, sync_index=0, sync_fallback=None, component=-1, boundary=False)\n\n"
              "A C callable for register_forward_pre_hook (kind=0) / register_forward_hook (kind=1): "
              "takes any arguments, records (now, span_id, kind) in buffer, adjusts the activity level, "
              "returns None; with activity it also pushes/pops `component` (COMP_*) on the component stack that "
              "synthetic attn_w/mlp_w follow; boundary=True reads the boundary target's source (Sampler."
              "set_boundary_target) at each call, in C.  sync=SYNC_CUDA/SYNC_MPS synchronizes the device first (libtorch shim, else "
              "sync_fallback()).  Failures warn once and disable (the hook, or its sync).",
    .tp_basicsize = sizeof(HookObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = hook_new,
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
    .tp_vectorcall_offset = offsetof(HookObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)hook_repr,
    .tp_getset = hook_getset,
};

/* ---------------------------------------------------------------- wrap_forward */

/* mode="deep" activation statistics of the wrapped forward's output, taken by the wrapper
 * itself after the end event (no forward hook, so torch keeps its fast call path). */
typedef struct {
    int64_t every;           /* statistics on the 1st, (every+1)-th ... successful call; 0: none */
    int64_t seen;            /* successful calls so far */
    double small_below;
    PyTypeObject *tensor_type; /* strong reference (torch.Tensor) or NULL */
    PyObject *fallback;      /* strong reference or NULL: fallback(output) -> a record, where C has no path */
    PyObject *deferred;      /* strong reference or NULL: list of (row index, what fallback returned) */
    double *rows;            /* owned: n x EP_TENSOR_STATS, NaN where deferred or not a tensor */
    size_t n, cap;
    int warned;
} wstats;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    probe p;
    PyObject *forward; /* strong reference: the wrapped callable */
    wstats st;
} WrapperObject;

static PyTypeObject WrapperType;

/* One statistics record of a successful call's output (its first element for a tuple or
 * list).  Never raises: a failure warns once and leaves NaN. */
static void wrapper_stats(WrapperObject *self, PyObject *res)
{
    wstats *st = &self->st;
    int64_t k = st->seen++;
    if (k % st->every)
        return;
    if (st->n == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 64;
        double *rows = realloc(st->rows, cap * EP_TENSOR_STATS * sizeof(double));
        if (!rows) {
            st->every = 0;
            probe_warn((PyObject *)self, "energyprof: activation statistics stopped (%s)", "out of memory");
            return;
        }
        st->rows = rows;
        st->cap = cap;
    }
    size_t idx = st->n++;
    double *row = st->rows + idx * EP_TENSOR_STATS;
    for (int i = 0; i < EP_TENSOR_STATS; i++)
        row[i] = NAN;
    PyObject *out = res; /* borrowed */
    if (PyTuple_Check(out))
        out = PyTuple_GET_SIZE(out) ? PyTuple_GET_ITEM(out, 0) : NULL;
    else if (PyList_Check(out))
        out = PyList_GET_SIZE(out) ? PyList_GET_ITEM(out, 0) : NULL;
    if (!out || !PyObject_TypeCheck(out, st->tensor_type))
        return;
    if (ep_module_stats_of(out, st->small_below, row) == 0)
        return;
    PyObject *r = PyObject_CallOneArg(st->fallback, out); /* owned */
    PyObject *item = r ? Py_BuildValue("(nN)", (Py_ssize_t)idx, r) : NULL; /* steals r */
    if (!item || PyList_Append(st->deferred, item) < 0) {
        PyErr_Clear();
        if (!st->warned) {
            st->warned = 1;
            probe_warn((PyObject *)self, "energyprof: activation statistics of a call failed (%s); left NaN",
                       "stats_fallback");
        }
    }
    Py_XDECREF(item);
}

static PyObject *wrapper_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WrapperObject *self = (WrapperObject *)op;
    self->p.calls++;
    if (!self->p.enabled || !self->p.buffer || !self->forward) {
        if (!self->forward) {
            PyErr_SetString(PyExc_RuntimeError, "energyprof forward wrapper was cleared");
            return NULL;
        }
        PyObject *res = PyObject_Vectorcall(self->forward, args, nargsf, kwnames);
        if (res && self->st.every)
            wrapper_stats(self, res);
        return res;
    }
    probe_fire(op, &self->p, EP_SPAN_BEGIN);
    PyObject *res = PyObject_Vectorcall(self->forward, args, nargsf, kwnames);
    if (res) {
        probe_fire(op, &self->p, EP_SPAN_END);
        if (self->st.every)
            wrapper_stats(self, res);
    } else {
        /* Record the end (and lower the activity level) also when forward raised,
         * then let its exception through unchanged. */
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        if (self->p.enabled)
            probe_fire(op, &self->p, EP_SPAN_END);
        PyErr_Restore(et, ev, etb);
    }
    return res;
}

static PyObject *py_wrap_forward(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "span_id", "forward", "activity", "sync", "sync_index", "sync_fallback",
                             "component", "boundary", "stats_every", "small_below", "tensor_type", "stats_fallback",
                             NULL};
    PyObject *buffer, *forward, *fallback = NULL, *tensor_type = Py_None, *stats_fallback = Py_None;
    int span_id, activity = 1, sync = EP_SYNC_NONE, comp = EP_COMP_INHERIT, boundary = 0;
    long long sync_index = 0, stats_every = 0;
    double small_below = 1e-3;
    WrapperObject *self = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiO|piLOipLdOO:wrap_forward", kwlist, &buffer, &span_id, &forward,
                                     &activity, &sync, &sync_index, &fallback, &comp, &boundary, &stats_every,
                                     &small_below, &tensor_type, &stats_fallback))
        goto error;
    if (!PyCallable_Check(forward)) {
        PyErr_Format(PyExc_TypeError, "wrap_forward: forward must be callable, not %.100s", Py_TYPE(forward)->tp_name);
        goto error;
    }
    if (stats_every < 0) {
        PyErr_Format(PyExc_ValueError, "wrap_forward: stats_every must be >= 0 (0: no statistics), got %lld",
                     stats_every);
        goto error;
    }
    if (stats_every > 0 && (!PyType_Check(tensor_type) || !PyCallable_Check(stats_fallback))) {
        PyErr_SetString(PyExc_TypeError, "wrap_forward: stats_every > 0 needs tensor_type (a type, torch.Tensor) and "
                                         "stats_fallback (a callable)");
        goto error;
    }
    self = PyObject_GC_New(WrapperObject, &WrapperType);
    if (!self)
        goto error;
    self->vectorcall = wrapper_vectorcall;
    memset(&self->p, 0, sizeof self->p);
    memset(&self->st, 0, sizeof self->st);
    Py_INCREF(forward);
    self->forward = forward;
    PyObject_GC_Track(self);
    if (probe_init(&self->p, buffer, span_id, activity, comp, sync, sync_index, fallback) < 0)
        goto error;
    self->p.boundary = boundary;
    if (stats_every > 0) {
        self->st.deferred = PyList_New(0);
        if (!self->st.deferred)
            goto error;
        Py_INCREF(tensor_type);
        self->st.tensor_type = (PyTypeObject *)tensor_type;
        Py_INCREF(stats_fallback);
        self->st.fallback = stats_fallback;
        self->st.small_below = small_below;
        self->st.every = (int64_t)stats_every;
    }
    return (PyObject *)self;
error:
    Py_XDECREF(self);
    return NULL;
}

static int wrapper_traverse(WrapperObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->forward);
    Py_VISIT((PyObject *)self->st.tensor_type);
    Py_VISIT(self->st.fallback);
    Py_VISIT(self->st.deferred);
    return probe_traverse(&self->p, visit, arg);
}

static int wrapper_clear(WrapperObject *self)
{
    self->st.every = 0; /* no statistics without the fallback and the list */
    Py_CLEAR(self->forward);
    Py_CLEAR(self->st.tensor_type);
    Py_CLEAR(self->st.fallback);
    Py_CLEAR(self->st.deferred);
    probe_clear(&self->p);
    return 0;
}

static void wrapper_dealloc(WrapperObject *self)
{
    PyObject_GC_UnTrack(self);
    wrapper_clear(self);
    free(self->st.rows);
    PyObject_GC_Del(self);
}

static PyObject *wrapper_act_stats(WrapperObject *self, PyObject *noargs)
{
    /* A copy: the wrapper goes on recording into its own rows. */
    PyObject *arr = NULL, *deferred = NULL, *res = NULL;
    npy_intp dims[2] = {(npy_intp)self->st.n, EP_TENSOR_STATS};
    arr = PyArray_SimpleNew(2, dims, NPY_FLOAT64); /* owned until returned */
    if (!arr)
        goto error;
    if (self->st.n)
        memcpy(PyArray_DATA((PyArrayObject *)arr), self->st.rows, self->st.n * EP_TENSOR_STATS * sizeof(double));
    deferred = self->st.deferred ? PyList_GetSlice(self->st.deferred, 0, PY_SSIZE_T_MAX) : PyList_New(0);
    if (!deferred)
        goto error;
    res = PyTuple_Pack(2, arr, deferred);
error:
    Py_XDECREF(arr);
    Py_XDECREF(deferred);
    return res;
}

static PyObject *wrapper_get_stats_every(WrapperObject *self, void *closure)
{
    return PyLong_FromLongLong(self->st.every);
}

static PyMethodDef wrapper_methods[] = {
    {"act_stats", (PyCFunction)wrapper_act_stats, METH_NOARGS,
     "act_stats() -> (rows, deferred): the activation statistics taken so far (stats_every > 0).\n"
     "rows: float64 (records, 5) (mean, std, max |x|, share of |x| < small_below, mean |x|) of the\n"
     "output of the 1st, (stats_every+1)-th ... successful call; NaN where the output is not a tensor\n"
     "and where C had no path: for those, deferred lists (row index, stats_fallback(output))."},
    {NULL, NULL, 0, NULL},
};

static PyObject *wrapper_repr(WrapperObject *self)
{
    return PyUnicode_FromFormat("<energyprof forward wrapper span_id=%d of %R>", (int)self->p.span_id,
                                self->forward ? self->forward : Py_None);
}

static PyObject *wrapper_get_wrapped(WrapperObject *self, void *closure)
{
    PyObject *f = self->forward ? self->forward : Py_None;
    Py_INCREF(f);
    return f;
}

static PyGetSetDef wrapper_getset[] = {
    OWNER_GETSET,
    /* inspect.signature() follows __wrapped__, and transformers inspects forward's signature. */
    {"__wrapped__", (getter)wrapper_get_wrapped, NULL, "The wrapped forward callable.", NULL},
    {"stats_every", (getter)wrapper_get_stats_every, NULL,
     "Activation statistics on every stats_every-th call (0: none, or stopped).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "energyprof._core.ForwardWrapper",
    .tp_doc = "A C callable made by wrap_forward: records begin, calls forward(*args, **kwargs), records end.",
    .tp_basicsize = sizeof(WrapperObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_dealloc = (destructor)wrapper_dealloc,
    .tp_traverse = (traverseproc)wrapper_traverse,
    .tp_clear = (inquiry)wrapper_clear,
    .tp_vectorcall_offset = offsetof(WrapperObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)wrapper_repr,
    .tp_getset = wrapper_getset,
    .tp_methods = wrapper_methods,
};

/* ---------------------------------------------------------------- the shim */

static int parse_device(const char *kind)
{
    if (strcmp(kind, "cuda") == 0)
        return EP_SYNC_CUDA;
    if (strcmp(kind, "mps") == 0)
        return EP_SYNC_MPS;
    return EP_SYNC_NONE;
}

static PyObject *shim_info(void)
{
    const char *cuda = ep_torchshim_origin(EP_SYNC_CUDA);
    const char *mps = ep_torchshim_origin(EP_SYNC_MPS);
    return Py_BuildValue("{szsz}", "cuda", cuda, "mps", mps);
}

static PyObject *py_torchshim_load(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "search", NULL};
    PyObject *path_obj = Py_None, *path_bytes = NULL, *res = NULL;
    char err[512];
    int rc, search = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Op:torchshim_load", kwlist, &path_obj, &search))
        goto error;
    if (path_obj != Py_None && !PyUnicode_FSConverter(path_obj, &path_bytes))
        goto error;
    const char *path = path_bytes ? PyBytes_AS_STRING(path_bytes) : NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = ep_torchshim_load(path, search, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK) {
        ep_module_raise(rc, err);
        goto error;
    }
    res = shim_info();
error:
    Py_XDECREF(path_bytes);
    return res;
}

static PyObject *py_torchshim_info(PyObject *module, PyObject *noargs)
{
    return shim_info();
}

static PyObject *py_device_sync(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "index", NULL};
    const char *kind;
    long long index = 0;
    char err[512];
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s|L:device_sync", kwlist, &kind, &index))
        return NULL;
    int device = parse_device(kind);
    if (device == EP_SYNC_NONE)
        return PyErr_Format(PyExc_ValueError, "device_sync: kind must be 'cuda' or 'mps', got '%s'", kind);
    Py_BEGIN_ALLOW_THREADS
    rc = ep_torchshim_sync(device, (int64_t)index, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (rc != EP_OK) /* EP_ERR_DEVICE -> RuntimeError, EP_ERR_UNSUPPORTED -> NotImplementedError (a RuntimeError) */
        return ep_module_raise(rc, err);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- module_tree */

/* Append obj to list (borrowed); 0, or -1 with an exception set. */
static int append_borrowed(PyObject *list, PyObject *obj)
{
    return PyList_Append(list, obj);
}

/* Append a new reference to list and drop it; 0, or -1 (obj NULL or the append failed). */
static int append_owned(PyObject *list, PyObject *obj)
{
    if (!obj)
        return -1;
    int rc = PyList_Append(list, obj);
    Py_DECREF(obj);
    return rc;
}

/* add(set, id(obj)): 1 when it was new, 0 when seen, -1 with an exception set. */
static int add_id(PyObject *set, PyObject *obj)
{
    PyObject *id = PyLong_FromVoidPtr(obj); /* owned */
    if (!id)
        return -1;
    int had = PySet_Contains(set, id);
    int rc = had < 0 ? -1 : had ? 0 : (PySet_Add(set, id) < 0 ? -1 : 1);
    Py_DECREF(id);
    return rc;
}

/* The twin of energyprof._reference.module_tree (see its docstring).  root is borrowed;
 * returns a new (key, n_params, pinned) tuple or NULL with an exception set. */
static PyObject *str_modules, *str_parameters, *str_numel; /* interned, module lifetime */

static PyObject *py_module_tree(PyObject *self, PyObject *root)
{
    PyObject *key = PyList_New(0), *pinned = PyList_New(0), *stack = PyList_New(0); /* owned */
    PyObject *seen = PySet_New(NULL), *seen_params = PySet_New(NULL);              /* owned */
    PyObject *subs = NULL, *params = NULL, *out = NULL, *key_t = NULL, *pin_t = NULL;
    long long n_params = 0;
    if (!key || !pinned || !stack || !seen || !seen_params)
        goto error;
    if (!str_modules && !(str_modules = PyUnicode_InternFromString("_modules")))
        goto error;
    if (!str_parameters && !(str_parameters = PyUnicode_InternFromString("_parameters")))
        goto error;
    if (!str_numel && !(str_numel = PyUnicode_InternFromString("numel")))
        goto error;
    if (append_borrowed(stack, root) < 0)
        goto error;
    while (PyList_GET_SIZE(stack)) {
        Py_ssize_t top = PyList_GET_SIZE(stack) - 1;
        PyObject *m = PyList_GET_ITEM(stack, top); /* borrowed from stack ... */
        Py_INCREF(m);                              /* ... owned from here */
        if (PyList_SetSlice(stack, top, top + 1, NULL) < 0) {
            Py_DECREF(m);
            goto error;
        }
        int fresh_m = add_id(seen, m); /* marked when walked, as named_modules() does */
        if (fresh_m <= 0 || (m != root && append_borrowed(pinned, m) < 0)) {
            Py_DECREF(m);
            if (fresh_m == 0)
                continue; /* reached before through another parent */
            goto error;
        }
        subs = PyObject_GetAttr(m, str_modules);
        params = subs ? PyObject_GetAttr(m, str_parameters) : NULL;
        int rc = params ? append_borrowed(key, (PyObject *)Py_TYPE(m)) : -1;
        Py_DECREF(m);
        if (rc < 0)
            goto error;
        if (!PyDict_Check(subs) || !PyDict_Check(params)) {
            PyErr_SetString(PyExc_TypeError, "module_tree: a module's _modules and _parameters must be dicts");
            goto error;
        }
        PyObject *name, *child; /* borrowed */
        Py_ssize_t pos = 0;
        while (PyDict_Next(subs, &pos, &name, &child)) {
            if (append_borrowed(key, name) < 0)
                goto error;
            if (child == Py_None ? append_borrowed(key, Py_None) < 0 : append_owned(key, PyLong_FromVoidPtr(child)) < 0)
                goto error;
        }
        PyObject *p; /* borrowed */
        pos = 0;
        while (PyDict_Next(params, &pos, &name, &p)) {
            if (p == Py_None)
                continue;
            int fresh = add_id(seen_params, p);
            if (fresh < 0)
                goto error;
            if (!fresh)
                continue;
            PyObject *numel = PyObject_CallMethodNoArgs(p, str_numel); /* owned */
            long long v = numel ? PyLong_AsLongLong(numel) : -1;
            Py_XDECREF(numel);
            if (v == -1 && PyErr_Occurred())
                goto error;
            n_params += v;
        }
        /* children last to first onto the stack: the first child is walked next */
        PyObject *children = PyDict_Values(subs); /* owned */
        if (!children)
            goto error;
        for (Py_ssize_t i = PyList_GET_SIZE(children) - 1; i >= 0; i--) {
            PyObject *c = PyList_GET_ITEM(children, i); /* borrowed */
            if (c != Py_None && append_borrowed(stack, c) < 0) {
                Py_DECREF(children);
                goto error;
            }
        }
        Py_DECREF(children);
        Py_CLEAR(subs);
        Py_CLEAR(params);
    }
    key_t = PyList_AsTuple(key);
    pin_t = key_t ? PyList_AsTuple(pinned) : NULL;
    if (!pin_t)
        goto error;
    out = Py_BuildValue("(OLO)", key_t, n_params, pin_t);
error:
    Py_XDECREF(key_t);
    Py_XDECREF(pin_t);
    Py_XDECREF(subs);
    Py_XDECREF(params);
    Py_XDECREF(key);
    Py_XDECREF(pinned);
    Py_XDECREF(stack);
    Py_XDECREF(seen);
    Py_XDECREF(seen_params);
    return out;
}

static PyMethodDef hooks_methods[] = {
    {"wrap_forward", (PyCFunction)(void (*)(void))py_wrap_forward, METH_VARARGS | METH_KEYWORDS,
     "wrap_forward(buffer, span_id, forward, activity=True, sync=0, sync_index=0, sync_fallback=None, component=-1, boundary=False,\n"
     "             stats_every=0, small_below=1e-3, tensor_type=None, stats_fallback=None)\n"
     "-> a C callable that records begin, calls forward(*args, **kwargs), records end (also when forward "
     "raises; the exception propagates).  Install it as module.forward (instance attribute).\n"
     "stats_every=N > 0 (mode=\"deep\"): after every N-th successful call, the statistics of the output\n"
     "(its first element for a tuple) in C when it is a CPU float32/float64 C-contiguous tensor_type,\n"
     "else stats_fallback(output) kept as is; read them with act_stats()."},
    {"module_tree", (PyCFunction)py_module_tree, METH_O,
     "module_tree(module) -> (key, n_params, pinned): one walk over a torch module tree (each module once, "
     "in named_modules() order): key = for every module its class, then (name, id(child) or None) per child; n_params = "
     "the numel() of every distinct parameter; pinned = every module reached but the root.  Twin: "
     "energyprof._reference.module_tree."},
    {"torchshim_load", (PyCFunction)(void (*)(void))py_torchshim_load, METH_VARARGS | METH_KEYWORDS,
     "torchshim_load(path=None, search=True) -> dict {'cuda': origin|None, 'mps': origin|None}: resolve "
     "torch::cuda::synchronize / torch::mps::synchronize (path first when given, then -- when search -- the "
     "process and the loaded libtorch* libraries).  origin is the defining file.  Replaces an earlier load; "
     "torchshim_load(None, search=False) unloads."},
    {"torchshim_info", (PyCFunction)py_torchshim_info, METH_NOARGS,
     "torchshim_info() -> dict: what the last torchshim_load found (no loading)."},
    {"device_sync", (PyCFunction)(void (*)(void))py_device_sync, METH_VARARGS | METH_KEYWORDS,
     "device_sync(kind: 'cuda'|'mps', index=0): synchronize through the shim; RuntimeError on failure "
     "(NotImplementedError, a RuntimeError, when the symbol is not loaded)."},
    {NULL, NULL, 0, NULL},
};

int ep_module_add_hooks(PyObject *m)
{
    if (PyType_Ready(&SpanBufferType) < 0 || PyType_Ready(&HookType) < 0 || PyType_Ready(&WrapperType) < 0)
        return -1;
    if (!event_descr) {
        event_descr = make_event_descr();
        if (!event_descr)
            return -1;
    }
    if (ep_module_add_ref(m, "EVENT_DTYPE", (PyObject *)event_descr) < 0)
        return -1;
    if (ep_module_add_ref(m, "SpanBuffer", (PyObject *)&SpanBufferType) < 0)
        return -1;
    if (ep_module_add_ref(m, "Hook", (PyObject *)&HookType) < 0)
        return -1;
    if (ep_module_add_ref(m, "ForwardWrapper", (PyObject *)&WrapperType) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "SYNC_NONE", EP_SYNC_NONE) < 0 ||
        PyModule_AddIntConstant(m, "SYNC_CUDA", EP_SYNC_CUDA) < 0 ||
        PyModule_AddIntConstant(m, "SYNC_MPS", EP_SYNC_MPS) < 0 ||
        PyModule_AddIntConstant(m, "SPAN_BEGIN", EP_SPAN_BEGIN) < 0 ||
        PyModule_AddIntConstant(m, "SPAN_END", EP_SPAN_END) < 0 ||
        PyModule_AddIntConstant(m, "COMP_INHERIT", EP_COMP_INHERIT) < 0 ||
        PyModule_AddIntConstant(m, "COMP_OTHER", EP_COMP_OTHER) < 0 ||
        PyModule_AddIntConstant(m, "COMP_ATTN", EP_COMP_ATTN) < 0 ||
        PyModule_AddIntConstant(m, "COMP_MLP", EP_COMP_MLP) < 0 ||
        PyModule_AddIntConstant(m, "ERR_FULL", EP_ERR_FULL) < 0 ||
        PyModule_AddIntConstant(m, "ERR_NOMEM", EP_ERR_NOMEM) < 0)
        return -1;
    return ep_module_add_functions(m, hooks_methods);
}
