/* ep_module_store.c: the Python face of the store part (placeholder until the part lands). */
#include "ep_module.h"

int ep_module_add_store(PyObject *m)
{
    return 0;
}
