/* ep_module_integrate.c: the Python face of the integrate part (placeholder until the part lands). */
#include "ep_module.h"

int ep_module_add_integrate(PyObject *m)
{
    return 0;
}
