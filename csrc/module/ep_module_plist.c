/* ep_module_plist.c: the Python face of ep_plist: parse_plist and split_frames. */
#include "ep_module.h"

#include <math.h>
#include <string.h>

#include "ep_errors.h"
#include "ep_plist.h"
#include "ep_sample.h"

/* Set d[key] = v, stealing v; -1 with an exception on failure. */
static int put(PyObject *d, const char *key, PyObject *v)
{
    if (!v)
        return -1;
    int rc = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *str_or_none(const char *s)
{
    if (!s[0])
        Py_RETURN_NONE;
    /* Documents are UTF-8; "replace" keeps a truncated multi-byte tail harmless. */
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

static PyObject *extras_dict(const ep_plist_extras *x, const ep_sample *s)
{
    PyObject *d = PyDict_New(), *clusters = NULL;
    if (!d)
        return NULL;
    if (x->elapsed_ns >= 0) {
        if (put(d, "elapsed_ns", PyLong_FromLongLong(x->elapsed_ns)) < 0)
            goto error;
    } else if (PyDict_SetItemString(d, "elapsed_ns", Py_None) < 0) {
        goto error;
    }
    PyObject *is_delta = x->is_delta < 0 ? Py_None : (x->is_delta ? Py_True : Py_False);
    if (PyDict_SetItemString(d, "is_delta", is_delta) < 0)
        goto error;
    struct {
        const char *key;
        double v;
    } nums[] = {
        {"elapsed_s", x->elapsed_ns >= 0 ? (double)x->elapsed_ns / 1e9 : NAN},
        {"timestamp_s", x->timestamp_s},
        {"cpu_energy_j", x->cpu_energy_j},
        {"gpu_energy_j", x->gpu_energy_j},
        {"ane_energy_j", x->ane_energy_j},
        {"dram_energy_j", x->dram_energy_j},
        {"package_energy_j", x->package_energy_j},
        {"gpu_sampler_energy_j", x->gpu_sampler_energy_j},
        {"cpu_power_w", x->cpu_power_w},
        {"gpu_power_w", x->gpu_power_w},
        {"ane_power_w", x->ane_power_w},
        {"dram_power_w", x->dram_power_w},
        {"package_power_w", x->package_power_w},
        {"combined_power_w", x->combined_power_w},
        {"gpu_freq_hz", x->gpu_freq_hz},
        {"gpu_idle_ratio", x->gpu_idle_ratio},
    };
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++)
        if (put(d, nums[i].key, PyFloat_FromDouble(nums[i].v)) < 0)
            goto error;
    if (put(d, "thermal_pressure", str_or_none(x->thermal_pressure)) < 0 ||
        put(d, "hw_model", str_or_none(x->hw_model)) < 0 ||
        put(d, "kern_osversion", str_or_none(x->kern_osversion)) < 0 ||
        put(d, "nan_fields", PyLong_FromLong(x->nan_fields)) < 0 ||
        PyDict_SetItemString(d, "sanitized", x->sanitized ? Py_True : Py_False) < 0)
        goto error;
    clusters = PyList_New(0);
    if (!clusters)
        goto error;
    for (int i = 0; i < x->n_clusters; i++) {
        const ep_plist_cluster *c = &x->clusters[i];
        PyObject *cd = Py_BuildValue("{s:N,s:d,s:d,s:d,s:d}", "name", str_or_none(c->name), "freq_hz",
                                     c->freq_hz, "idle_ratio", c->idle_ratio, "down_ratio", c->down_ratio,
                                     "active_ratio", c->active_ratio);
        if (!cd || PyList_Append(clusters, cd) < 0) {
            Py_XDECREF(cd);
            goto error;
        }
        Py_DECREF(cd);
    }
    if (put(d, "clusters", clusters) < 0) {
        clusters = NULL;
        goto error;
    }
    clusters = NULL;
    if (put(d, "sample", ep_module_sample_array(s, 1)) < 0)
        goto error;
    return d;
error:
    Py_XDECREF(clusters);
    Py_DECREF(d);
    return NULL;
}

static PyObject *py_parse_plist(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    ep_sample s;
    ep_plist_extras x;
    char err[128] = "";
    int rc;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = ep_plist_parse((const char *)view.buf, (size_t)view.len, &s, &x, err, sizeof err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc != EP_OK)
        return ep_module_raise(rc, err);
    return extras_dict(&x, &s);
}

static PyObject *py_split_frames(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "max_frame_bytes", "strict", NULL};
    Py_buffer view;
    Py_ssize_t max_frame = 0;
    int strict = 0;
    ep_plist_framer *f = NULL;
    PyObject *frames = NULL;
    ep_plist_frame fr;
    ep_plist_framer_stats st;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|np:split_frames", kwlist, &view, &max_frame, &strict))
        return NULL;
    if (max_frame < 0) {
        ep_module_raise(EP_ERR_ARG, "max_frame_bytes must be >= 0");
        goto error;
    }
    rc = ep_plist_framer_new((size_t)max_frame, &f);
    if (rc != EP_OK) {
        ep_module_raise(rc, "framer");
        goto error;
    }
    rc = ep_plist_framer_feed(f, (const char *)view.buf, (size_t)view.len);
    if (rc != EP_OK) {
        ep_module_raise(rc, "framer buffer");
        goto error;
    }
    ep_plist_framer_finish(f);
    frames = PyList_New(0);
    if (!frames)
        goto error;
    while (ep_plist_framer_next(f, &fr) == EP_OK) {
        PyObject *b = PyBytes_FromStringAndSize(fr.data, (Py_ssize_t)fr.len);
        if (!b || PyList_Append(frames, b) < 0) {
            Py_XDECREF(b);
            goto error;
        }
        Py_DECREF(b);
    }
    ep_plist_framer_stats_get(f, &st);
    if (strict && (st.garbage_runs || st.oversize)) {
        char msg[256];
        snprintf(msg, sizeof msg, "%lld frame(s) over the size bound, %lld byte(s) of non-plist data (starting '%s')",
                 (long long)st.oversize, (long long)st.garbage_bytes, st.garbage_head);
        ep_module_raise(EP_ERR_PARSE, msg);
        goto error;
    }
    ep_plist_framer_free(f);
    PyBuffer_Release(&view);
    return frames;
error:
    ep_plist_framer_free(f);
    Py_XDECREF(frames);
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *py_plist_strict_reals(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    ep_plist_test_strict_reals(on);
    Py_RETURN_NONE;
}

static PyObject *py_plist_prune(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    ep_plist_set_prune(on);
    Py_RETURN_NONE;
}

static PyMethodDef plist_methods[] = {
    {"parse_plist", py_parse_plist, METH_O,
     "parse_plist(data: bytes) -> dict\n\n"
     "Parse one powermetrics plist document (XML or binary) with libplist.  Returns the\n"
     "fields in SI units (elapsed_ns, elapsed_s, timestamp_s, *_energy_j, *_power_w,\n"
     "gpu_freq_hz, ratios, strings, clusters, nan_fields, sanitized) and 'sample', a\n"
     "1-element SAMPLE_DTYPE array (interval sample, t_start_ns=0, t_end_ns=elapsed_ns).\n"
     "Raises ValueError on a malformed document."},
    {"split_frames", (PyCFunction)(void (*)(void))py_split_frames, METH_VARARGS | METH_KEYWORDS,
     "split_frames(data: bytes, max_frame_bytes: int = 0, strict: bool = False) -> list[bytes]\n\n"
     "Cut a powermetrics stream into documents with the C framer (NUL/`</plist>`\n"
     "boundaries, binary plists, garbage and frames over max_frame_bytes (0 = 8 MiB)\n"
     "skipped).  strict=True raises ValueError when anything was skipped."},
    {"_plist_strict_reals", py_plist_strict_reals, METH_O,
     "Tests only: make the first parse attempt reject non-finite reals (newer libplist)."},
    {"_plist_prune", py_plist_prune, METH_O,
     "Benchmarks/tests: False makes parse_plist hand libplist the whole document (default True:\n"
     "sections no field comes from are cut out first; the result is the same)."},
    {NULL, NULL, 0, NULL},
};

int ep_module_add_plist(PyObject *m)
{
    if (ep_module_add_functions(m, plist_methods) < 0)
        return -1;
    return PyModule_AddIntConstant(m, "PLIST_MAX_FRAME_BYTES", (long)EP_PLIST_MAX_FRAME_BYTES);
}
