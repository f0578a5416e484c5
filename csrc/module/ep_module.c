/* ep_module.c: the energyprof._core module: init, the error mapper, the clock,
 * the activity level and the sample dtype.  The parts' functions are added by
 * ep_module_<part>.c. */
#define EP_MODULE_MAIN
#include "ep_module.h"

#include <stddef.h>
#include <string.h>

#include "ep_activity.h"
#include "ep_clock.h"
#include "ep_errors.h"
#include "ep_sample.h"
#include "ep_source.h"

PyObject *ep_module_raise(int code, const char *detail)
{
    if (PyErr_Occurred())
        return NULL; /* never clobber a pending exception */
    PyObject *type;
    switch (code) {
    case EP_ERR_NOMEM: return PyErr_NoMemory();
    case EP_ERR_ARG:
    case EP_ERR_PARSE:
    case EP_ERR_UNSORTED: type = PyExc_ValueError; break;
    case EP_ERR_IO: type = PyExc_OSError; break;
    case EP_ERR_PERM: type = PyExc_PermissionError; break;
    case EP_ERR_NOTFOUND: type = PyExc_FileNotFoundError; break;
    case EP_ERR_UNSUPPORTED: type = PyExc_NotImplementedError; break;
    case EP_ERR_EOF: type = PyExc_EOFError; break;
    default: type = PyExc_RuntimeError; break;
    }
    if (detail && detail[0])
        PyErr_Format(type, "%s: %s", ep_err_str(code), detail);
    else
        PyErr_SetString(type, ep_err_str(code));
    return NULL;
}

int ep_module_add_functions(PyObject *m, PyMethodDef *defs)
{
    return PyModule_AddFunctions(m, defs);
}

int ep_module_add_ref(PyObject *m, const char *name, PyObject *obj)
{
    /* PyModule_AddObjectRef is 3.10+; the package supports 3.9. */
    Py_INCREF(obj);
    if (PyModule_AddObject(m, name, obj) < 0) {
        Py_DECREF(obj);
        return -1;
    }
    return 0;
}

PyObject *ep_module_sample_array(const ep_sample *s, size_t n)
{
    PyObject *dt = ep_module_sample_dtype();
    if (!dt)
        return NULL;
    npy_intp dims[1] = {(npy_intp)n};
    /* PyArray_NewFromDescr steals the dtype reference. */
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, (PyArray_Descr *)dt, 1, dims, NULL, NULL, 0, NULL);
    if (!arr)
        return NULL;
    if (n)
        memcpy(PyArray_DATA((PyArrayObject *)arr), s, n * sizeof *s);
    return arr;
}

PyObject *ep_module_sample_dtype(void)
{
    /* Built from offsetof so the numpy view matches the C struct exactly. */
    PyObject *names = NULL, *formats = NULL, *offsets = NULL, *spec = NULL, *res = NULL;
    PyArray_Descr *descr = NULL;
    const char *fixed[] = {"t_start_ns", "t_end_ns", "kind", "flags"};
    const char *fixed_fmt[] = {"<i8", "<i8", "<i4", "<u4"};
    size_t fixed_off[] = {offsetof(ep_sample, t_start_ns), offsetof(ep_sample, t_end_ns),
                          offsetof(ep_sample, kind), offsetof(ep_sample, flags)};
    Py_ssize_t n = 4 + EP_NDOMAINS;
    names = PyList_New(n);
    formats = PyList_New(n);
    offsets = PyList_New(n);
    if (!names || !formats || !offsets)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *name, *fmt;
        size_t off;
        char buf[64];
        if (i < 4) {
            name = fixed[i];
            fmt = fixed_fmt[i];
            off = fixed_off[i];
        } else {
            snprintf(buf, sizeof buf, "%s_w", ep_domain_names[i - 4]);
            name = buf;
            fmt = "<f8";
            off = offsetof(ep_sample, power_w) + (size_t)(i - 4) * sizeof(double);
        }
        PyList_SET_ITEM(names, i, PyUnicode_FromString(name));
        PyList_SET_ITEM(formats, i, PyUnicode_FromString(fmt));
        PyList_SET_ITEM(offsets, i, PyLong_FromSize_t(off));
    }
    spec = Py_BuildValue("{sOsOsOsn}", "names", names, "formats", formats, "offsets", offsets,
                         "itemsize", (Py_ssize_t)sizeof(ep_sample));
    if (!spec)
        goto error;
    if (!PyArray_DescrConverter(spec, &descr))
        goto error;
    res = (PyObject *)descr;
error:
    Py_XDECREF(names);
    Py_XDECREF(formats);
    Py_XDECREF(offsets);
    Py_XDECREF(spec);
    return res;
}

static PyObject *py_now_ns(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLongLong(ep_now_ns());
}

static PyObject *py_wall_ns(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLongLong(ep_wall_ns());
}

static PyObject *py_set_fake_clock(PyObject *self, PyObject *arg)
{
    long long t = PyLong_AsLongLong(arg);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    ep_clock_set_fake_ns(t);
    Py_RETURN_NONE;
}

static PyObject *py_set_activity(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    ep_activity_set((int)n, ep_now_ns());
    Py_RETURN_NONE;
}

static PyObject *py_activity(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(ep_activity_level());
}

static PyObject *py_active_ns_at(PyObject *self, PyObject *arg)
{
    long long t = PyLong_AsLongLong(arg);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLongLong(ep_activity_active_ns_at(t));
}

static PyObject *py_comp_ns_at(PyObject *self, PyObject *args)
{
    int comp;
    long long t;
    if (!PyArg_ParseTuple(args, "iL:comp_ns_at", &comp, &t))
        return NULL;
    if (comp < EP_COMP_OTHER || comp >= EP_NCOMP)
        return PyErr_Format(PyExc_ValueError, "comp_ns_at: comp must be COMP_OTHER, COMP_ATTN or COMP_MLP, got %d",
                            comp);
    return PyLong_FromLongLong(ep_activity_comp_ns_at(comp, (int64_t)t));
}

static PyMethodDef core_methods[] = {
    {"now_ns", py_now_ns, METH_NOARGS, "now_ns() -> int: CLOCK_MONOTONIC ns, the one clock of energyprof."},
    {"wall_ns", py_wall_ns, METH_NOARGS, "wall_ns() -> int: wall-clock ns since the Unix epoch."},
    {"_set_fake_clock", py_set_fake_clock, METH_O, "Tests only: freeze now_ns() at t (0 = real clock)."},
    {"set_activity", py_set_activity, METH_O,
     "set_activity(n): set the process-wide activity level (synthetic active_w follows it)."},
    {"activity", py_activity, METH_NOARGS, "activity() -> int: the current activity level."},
    {"active_ns_at", py_active_ns_at, METH_O,
     "active_ns_at(t_ns) -> int: cumulative ns the activity level was > 0 up to t_ns."},
    {"comp_ns_at", py_comp_ns_at, METH_VARARGS,
     "comp_ns_at(comp, t_ns) -> int: cumulative ns a call of kind comp (COMP_*) was the innermost running "
     "hooked call, up to t_ns (synthetic attn_w / mlp_w follow it)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "energyprof._core",
    "energyprof's C core: clock, sampler, sources, integrator, hooks, store.", -1, core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    PyObject *dt = ep_module_sample_dtype();
    if (!dt || PyModule_AddObject(m, "SAMPLE_DTYPE", dt) < 0) {
        Py_XDECREF(dt);
        goto error;
    }
    PyObject *doms = PyTuple_New(EP_NDOMAINS);
    if (!doms)
        goto error;
    for (int i = 0; i < EP_NDOMAINS; i++)
        PyTuple_SET_ITEM(doms, i, PyUnicode_FromString(ep_domain_names[i]));
    if (PyModule_AddObject(m, "DOMAINS", doms) < 0) {
        Py_DECREF(doms);
        goto error;
    }
    if (PyModule_AddIntConstant(m, "KIND_INSTANT", EP_KIND_INSTANT) < 0 ||
        PyModule_AddIntConstant(m, "KIND_INTERVAL", EP_KIND_INTERVAL) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_SIMULATED", EP_SFLAG_SIMULATED) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_ESTIMATED", EP_SFLAG_ESTIMATED) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_FINAL", EP_SFLAG_FINAL) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_SUSPECT", EP_SFLAG_SUSPECT) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_WRAPPED", EP_SFLAG_WRAPPED) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_NAN_FIELD", EP_SFLAG_NAN_FIELD) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_BOUNDARY", EP_SFLAG_BOUNDARY) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_SYNCED", EP_SFLAG_SYNCED) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_DEVICE", EP_SFLAG_DEVICE) < 0 ||
        PyModule_AddIntConstant(m, "SFLAG_DEVICE_SHIFT", EP_SFLAG_DEVICE_SHIFT) < 0 ||
        PyModule_AddIntConstant(m, "SOURCE_READ_MAX", EP_SOURCE_READ_MAX) < 0)
        goto error;
    if (ep_module_add_integrate(m) < 0 || ep_module_add_sampler(m) < 0 || ep_module_add_plist(m) < 0 ||
        ep_module_add_hooks(m) < 0 || ep_module_add_store(m) < 0 ||
        ep_module_add_ioreport(m) < 0 || ep_module_add_stats(m) < 0 || ep_module_add_calls(m) < 0 ||
        ep_module_add_groups(m) < 0)
        goto error;
    return m;
error:
    Py_DECREF(m);
    return NULL;
}
