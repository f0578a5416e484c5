/* ep_module.h: shared by the files that make up the Python face of _core.
 *
 * ep_module.c defines the module, the error mapper and the sample dtype; each
 * ep_module_<part>.c adds the functions and types of one C part (integrate,
 * sampler, plist, hooks, store) through ep_module_add_<part>().  Only these
 * files include Python.h; the parts themselves (ep_<part>.c) never do.
 */
#ifndef EP_MODULE_H
#define EP_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL ep_ARRAY_API
#ifndef EP_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "ep_sample.h"

/* Map an EP_ERR_* code to a Python exception with detail (may be NULL or "").
 * Never overwrites an exception that is already set.  Always returns NULL. */
PyObject *ep_module_raise(int code, const char *detail);

/* New reference to the numpy dtype matching ep_sample byte for byte. */
PyObject *ep_module_sample_dtype(void);

/* New reference: a SAMPLE_DTYPE array of n samples holding a copy of s[0..n)
 * (s borrowed; s may be NULL when n is 0). */
PyObject *ep_module_sample_array(const ep_sample *s, size_t n);

/* Each part adds its functions/types to the module; 0 on success, -1 with an
 * exception set. */
int ep_module_add_integrate(PyObject *m);
int ep_module_add_sampler(PyObject *m);
int ep_module_add_plist(PyObject *m);
int ep_module_add_hooks(PyObject *m);
int ep_module_add_store(PyObject *m);
int ep_module_add_ioreport(PyObject *m);
int ep_module_add_stats(PyObject *m);
int ep_module_add_calls(PyObject *m);
int ep_module_add_groups(PyObject *m);

/* ep_module_stats.c: the EP_TENSOR_STATS statistics of a torch tensor (or numpy array),
 * read in place through its numpy view; 0 with out (caller-owned, 5 doubles) filled, or 1
 * (no exception set) when it has no aligned C-contiguous float32/float64 view (another
 * device or dtype, a strided view, requires grad).  tensor is borrowed. */
int ep_module_stats_of(PyObject *tensor, double small_below, double *out);

/* Helper: add a PyMethodDef table (terminated by {NULL}) to module m. */
int ep_module_add_functions(PyObject *m, PyMethodDef *defs);

/* Helper: m.name = obj; obj is borrowed (the module takes a new reference of its own,
 * as for static types).  0, or -1 with an exception set and no reference taken. */
int ep_module_add_ref(PyObject *m, const char *name, PyObject *obj);

#endif
