/* ep_sample.c: domain names of ep_sample.power_w. */
#include "ep_sample.h"

const char *const ep_domain_names[EP_NDOMAINS] = {"cpu", "gpu", "ane", "dram", "package"};
