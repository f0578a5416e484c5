/* ep_src_powermetrics.c: the 'powermetrics' power source (placeholder until it lands). */
#include <stdio.h>

#include "ep_errors.h"
#include "ep_source.h"

int ep_src_powermetrics_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    snprintf(src->message, sizeof src->message, "source 'powermetrics' is not built yet");
    return EP_ERR_UNSUPPORTED;
}
