/* ep_sample.c: domain names of ep_sample.power_w. */
#include "ep_sample.h"

#include <math.h>

const char *const ep_domain_names[EP_NDOMAINS] = {"cpu", "gpu", "ane", "dram", "package"};

void ep_sample_init(ep_sample *s, int64_t t_start_ns, int64_t t_end_ns, int32_t kind, uint32_t flags)
{
    s->t_start_ns = t_start_ns;
    s->t_end_ns = t_end_ns;
    s->kind = kind;
    s->flags = flags;
    for (int d = 0; d < EP_NDOMAINS; d++)
        s->power_w[d] = NAN;
}
