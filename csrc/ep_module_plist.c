/* ep_module_plist.c: the Python face of the plist part (placeholder until the part lands). */
#include "ep_module.h"

int ep_module_add_plist(PyObject *m)
{
    return 0;
}
