/* ep_src_synthetic.c: the 'synthetic' power source (placeholder until it lands). */
#include <stdio.h>

#include "ep_errors.h"
#include "ep_source.h"

int ep_src_synthetic_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    snprintf(src->message, sizeof src->message, "source 'synthetic' is not built yet");
    return EP_ERR_UNSUPPORTED;
}
