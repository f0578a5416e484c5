/* ep_ioreport.c: IOReport energy channels -> samples (see ep_ioreport.h for the
 * mapping and the fault rules), and the macOS-only live snapshot reader. */
#include "ep_ioreport.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ep_errors.h"

static int starts_with(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* digits and underscores only (may be empty): the ANE0_1 / DRAM0 style suffixes. */
static int digits_underscores(const char *s)
{
    for (; *s; s++)
        if ((*s < '0' || *s > '9') && *s != '_')
            return 0;
    return 1;
}

/* "DIE_<n>_" prefix of multi-die chips: skip it. */
static const char *strip_die(const char *name)
{
    if (!starts_with(name, "DIE_"))
        return name;
    const char *p = name + 4;
    if (*p < '0' || *p > '9')
        return name;
    while (*p >= '0' && *p <= '9')
        p++;
    return *p == '_' ? p + 1 : name;
}

int ep_ioreport_classify(const char *name)
{
    const char *s = strip_die(name);
    if (ends_with(s, "CPU Energy"))
        return EP_DOM_CPU;
    if (strcmp(s, "GPU Energy") == 0)
        return EP_DOM_GPU;
    /* SRAM rails and DTL leaves are parts of the totals (ANE0_SRAM, ECPU0_SRAM,
     * PCPUDTL0a, GPU SRAM0): never added on their own. */
    if (strstr(s, "SRAM") || strstr(s, "DTL"))
        return EP_IOREPORT_IGNORED;
    if (starts_with(s, "ANE"))
        return digits_underscores(s + 3) ? EP_DOM_ANE : EP_IOREPORT_UNKNOWN;
    if (starts_with(s, "DRAM"))
        return EP_DOM_DRAM;
    if (starts_with(s, "GPU") && all_digits(s + 3))
        return EP_IOREPORT_IGNORED; /* GPU0: a sub-channel already inside "GPU Energy" */
    if (strstr(s, "CPM"))
        return EP_IOREPORT_IGNORED; /* cluster power managers: ECPM, PACC0_CPM, MCPM0 */
    if ((s[0] == 'E' || s[0] == 'P') && ends_with(s, "CPU"))
        return EP_IOREPORT_CPU_CLUSTER; /* ECPU, PCPU, EACC_CPU, PACC1_CPU */
    if (starts_with(s, "MCPU")) {
        if (all_digits(s + 4))
            return EP_IOREPORT_CPU_CLUSTER; /* M5: MCPU0 */
        const char *u = s + 4;
        while (*u >= '0' && *u <= '9')
            u++;
        if (u > s + 4 && *u == '_' && all_digits(u + 1))
            return EP_IOREPORT_IGNORED; /* M5 core: MCPU0_1 */
        return EP_IOREPORT_UNKNOWN;
    }
    if (s[0] == 'E' || s[0] == 'P') {
        const char *c = strstr(s, "CPU"), *last = NULL;
        while (c) {
            last = c;
            c = strstr(c + 1, "CPU");
        }
        if (last && all_digits(last + 3))
            return EP_IOREPORT_IGNORED; /* a core: ECPU0, PACC0_CPU3 */
    }
    if (starts_with(s, "PACC_") && all_digits(s + 5))
        return EP_IOREPORT_IGNORED; /* M5 performance core: PACC_0 */
    if (strstr(s, "CPU") || strstr(s, "GPU") || strstr(s, "ANE") || strstr(s, "DRAM"))
        return EP_IOREPORT_UNKNOWN;
    return EP_IOREPORT_IGNORED; /* ISP, AVE, DISP, PCIe, AMCC, ...: outside our domains */
}

double ep_ioreport_unit_j(const char *unit)
{
    if (strcmp(unit, "mJ") == 0)
        return 1e-3;
    if (strcmp(unit, "uJ") == 0 || strcmp(unit, "\xc2\xb5J") == 0)
        return 1e-6;
    if (strcmp(unit, "nJ") == 0)
        return 1e-9;
    return 0.0;
}

/* A bounded message builder: each fault kind gets a "kind: a, b" group. */
typedef struct {
    char *buf;
    size_t cap, len;
    uint32_t open_kind;
} msgbuf;

static void msg_add(msgbuf *m, uint32_t kind, const char *label, const char *name)
{
    if (!m->buf || m->cap == 0 || m->len + 1 >= m->cap)
        return;
    int w;
    if (m->open_kind != kind)
        w = snprintf(m->buf + m->len, m->cap - m->len, "%s%s: %s", m->len ? "; " : "", label, name);
    else
        w = snprintf(m->buf + m->len, m->cap - m->len, ", %s", name);
    m->open_kind = kind;
    if (w > 0)
        m->len = (size_t)w >= m->cap - m->len ? m->cap - 1 : m->len + (size_t)w;
}

static const ep_ioreport_channel *find_channel(const ep_ioreport_channel *v, size_t n, size_t hint,
                                               const char *name)
{
    /* Snapshots of one subscription list channels in the same order: try the same
     * index first, so the usual case is O(1) per channel. */
    if (hint < n && strcmp(v[hint].name, name) == 0)
        return &v[hint];
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            return &v[i];
    return NULL;
}

/* The domain a channel contributes to in these snapshots, or -1 for none. */
static int channel_domain(const char *name, int cpu_total_present)
{
    int cls = ep_ioreport_classify(name);
    if (cls == EP_IOREPORT_CPU_CLUSTER)
        return cpu_total_present ? -1 : EP_DOM_CPU;
    return cls >= 0 && cls < EP_NDOMAINS ? cls : -1;
}

int ep_ioreport_delta(ep_ioreport_state *state, const ep_ioreport_channel *a, size_t n_a,
                      const ep_ioreport_channel *b, size_t n_b, int64_t dt_ns, ep_sample *out,
                      uint32_t *faults, char *msg, size_t msglen)
{
    double energy_j[EP_NDOMAINS] = {0};
    int have[EP_NDOMAINS] = {0}, bad[EP_NDOMAINS] = {0};
    uint32_t f = 0;
    msgbuf m = {msg, msglen, 0, 0};
    if (msg && msglen)
        msg[0] = '\0';
    *faults = 0;
    if (dt_ns <= 0)
        return EP_ERR_ARG;
    int cpu_total = 0;
    for (size_t i = 0; i < n_b && !cpu_total; i++)
        cpu_total = ep_ioreport_classify(b[i].name) == EP_DOM_CPU;
    for (size_t i = 0; i < n_a && !cpu_total; i++)
        cpu_total = ep_ioreport_classify(a[i].name) == EP_DOM_CPU;

    for (size_t i = 0; i < n_b; i++) {
        if (ep_ioreport_classify(b[i].name) == EP_IOREPORT_UNKNOWN) {
            f |= EP_IOREPORT_FAULT_UNKNOWN;
            msg_add(&m, EP_IOREPORT_FAULT_UNKNOWN, "unknown channels (not used)", b[i].name);
        }
    }
    for (size_t i = 0; i < n_b; i++) {
        int d = channel_domain(b[i].name, cpu_total);
        if (d < 0)
            continue;
        const ep_ioreport_channel *pa = find_channel(a, n_a, i, b[i].name);
        double unit_j = ep_ioreport_unit_j(b[i].unit);
        if (!pa) {
            f |= EP_IOREPORT_FAULT_CHANNELS;
            bad[d] = 1;
            msg_add(&m, EP_IOREPORT_FAULT_CHANNELS, "channel appeared", b[i].name);
        } else if (unit_j == 0.0 || strcmp(pa->unit, b[i].unit) != 0) {
            f |= EP_IOREPORT_FAULT_UNIT;
            bad[d] = 1;
            msg_add(&m, EP_IOREPORT_FAULT_UNIT, "unknown or changed unit", b[i].name);
        } else if (b[i].value < pa->value) {
            f |= EP_IOREPORT_FAULT_BACKWARDS;
            bad[d] = 1;
            msg_add(&m, EP_IOREPORT_FAULT_BACKWARDS, "counter went backwards", b[i].name);
        } else {
            energy_j[d] += (double)(b[i].value - pa->value) * unit_j;
            have[d] = 1;
        }
    }
    for (size_t i = 0; i < n_a; i++) {
        int d = channel_domain(a[i].name, cpu_total);
        if (d >= 0 && !find_channel(b, n_b, i, a[i].name)) {
            f |= EP_IOREPORT_FAULT_CHANNELS;
            bad[d] = 1;
            msg_add(&m, EP_IOREPORT_FAULT_CHANNELS, "channel vanished", a[i].name);
        }
    }

    /* cpu and dram always draw power on a running machine: a zero next to a moving
     * domain is the stuck-channel bug, not idleness (ane and gpu may really be 0). */
    int any_moving = 0;
    for (int d = 0; d < EP_NDOMAINS; d++)
        any_moving |= have[d] && !bad[d] && energy_j[d] > 0;
    const int always_on[] = {EP_DOM_CPU, EP_DOM_DRAM};
    for (size_t k = 0; k < 2; k++) {
        int d = always_on[k];
        if (have[d] && !bad[d] && energy_j[d] == 0 && any_moving) {
            f |= EP_IOREPORT_FAULT_STUCK_ZERO;
            msg_add(&m, EP_IOREPORT_FAULT_STUCK_ZERO, "stuck at 0", ep_domain_names[d]);
        }
    }

    double dt_s = (double)dt_ns * 1e-9;
    for (int d = 0; d < EP_NDOMAINS; d++)
        out->power_w[d] = (have[d] && !bad[d]) ? energy_j[d] / dt_s : NAN;

    if (state) {
        for (int d = 0; d < EP_NDOMAINS; d++) {
            memmove(&state->energy_j[d][1], &state->energy_j[d][0],
                    (EP_IOREPORT_HISTORY - 1) * sizeof state->energy_j[d][0]);
            state->energy_j[d][0] = (have[d] && !bad[d]) ? energy_j[d] : NAN;
        }
        if (state->n_history < EP_IOREPORT_HISTORY)
            state->n_history++;
        for (int d = 0; d < EP_NDOMAINS && state->n_history == EP_IOREPORT_HISTORY; d++) {
            int alternating = 1;
            for (int k = 0; k < EP_IOREPORT_HISTORY && alternating; k++)
                alternating = !isnan(state->energy_j[d][k]) &&
                              (k == 0 || (state->energy_j[d][k] == 0) != (state->energy_j[d][k - 1] == 0));
            if (alternating) {
                f |= EP_IOREPORT_FAULT_ALTERNATING;
                msg_add(&m, EP_IOREPORT_FAULT_ALTERNATING, "alternating 0/non-zero", ep_domain_names[d]);
            }
        }
    }
    out->kind = EP_KIND_INTERVAL;
    out->flags = f ? EP_SFLAG_SUSPECT : 0;
    *faults = f;
    return EP_OK;
}

/* ------------------------------------------------------------------------- */
/* Live snapshots.  Compiled on macOS; EP_IOREPORT_COMPILE_LIVE compiles the same
 * code elsewhere (it only needs dlfcn) so a Linux build can at least check it. */
#if defined(__APPLE__) || defined(EP_IOREPORT_COMPILE_LIVE)
#include <dlfcn.h>
#include <stdlib.h>

/* CoreFoundation's types as the ABI sees them; declared here because the
 * libraries are opened at run time and their headers are not needed. */
typedef const void *cf_type;
typedef const void *cf_string;
typedef const void *cf_dict;
typedef void *cf_mdict;
typedef const void *cf_array;
typedef long cf_index;
typedef uint32_t cf_encoding;
#define CF_UTF8 ((cf_encoding)0x08000100)

struct ep_ioreport_live {
    void *cf_lib, *ior_lib;
    cf_string (*str_create)(const void *alloc, const char *s, cf_encoding enc);
    unsigned char (*str_get)(cf_string s, char *buf, cf_index size, cf_encoding enc);
    void (*release)(cf_type t);
    const void *(*dict_get)(cf_dict d, const void *key);
    cf_index (*dict_count)(cf_dict d);
    cf_mdict (*dict_mcopy)(const void *alloc, cf_index cap, cf_dict d);
    cf_index (*arr_count)(cf_array a);
    const void *(*arr_get)(cf_array a, cf_index i);
    cf_dict (*copy_group)(cf_string group, cf_string subgroup, uint64_t a, uint64_t b, uint64_t c);
    void *(*subscribe)(const void *a, cf_mdict desired, cf_mdict *subbed, uint64_t id, cf_type b);
    cf_dict (*samples)(void *sub, cf_mdict channels, cf_type a);
    cf_string (*ch_name)(cf_dict ch);
    cf_string (*ch_unit)(cf_dict ch);
    int64_t (*ch_int)(cf_dict ch, int32_t idx);
    cf_mdict channels;
    void *sub;
    cf_string key_channels;
};

void ep_ioreport_live_close(ep_ioreport_live *live)
{
    if (!live)
        return;
    if (live->release) {
        if (live->key_channels)
            live->release(live->key_channels);
        if (live->channels)
            live->release(live->channels);
        if (live->sub)
            live->release(live->sub);
    }
    if (live->ior_lib)
        dlclose(live->ior_lib);
    if (live->cf_lib)
        dlclose(live->cf_lib);
    free(live);
}

int ep_ioreport_live_open(ep_ioreport_live **out, char *msg, size_t msglen)
{
    int rc = EP_ERR_NOMEM;
    cf_string group = NULL;
    cf_dict chans = NULL;
    cf_mdict subbed = NULL;
    ep_ioreport_live *l = calloc(1, sizeof *l);
    if (!l)
        goto error;
    rc = EP_ERR_NOTFOUND;
    /* The environment overrides exist for tests: a fake pair of libraries lets the
     * Linux build (EP_IOREPORT_COMPILE_LIVE) run this code. */
    const char *cf_path = getenv("ENERGYPROF_COREFOUNDATION_LIB");
    const char *ior_path = getenv("ENERGYPROF_IOREPORT_LIB");
    if (!cf_path || !cf_path[0])
        cf_path = "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation";
    if (!ior_path || !ior_path[0])
        ior_path = "/usr/lib/libIOReport.dylib";
    l->cf_lib = dlopen(cf_path, RTLD_NOW | RTLD_LOCAL);
    l->ior_lib = dlopen(ior_path, RTLD_NOW | RTLD_LOCAL);
    if (!l->cf_lib || !l->ior_lib) {
        ep_err_format(msg, msglen, "ioreport: cannot load %s", !l->cf_lib ? cf_path : ior_path);
        goto error;
    }
    struct {
        void *lib;
        const char *name;
        void **slot;
    } table[] = {
        {l->cf_lib, "CFStringCreateWithCString", (void **)&l->str_create},
        {l->cf_lib, "CFStringGetCString", (void **)&l->str_get},
        {l->cf_lib, "CFRelease", (void **)&l->release},
        {l->cf_lib, "CFDictionaryGetValue", (void **)&l->dict_get},
        {l->cf_lib, "CFDictionaryGetCount", (void **)&l->dict_count},
        {l->cf_lib, "CFDictionaryCreateMutableCopy", (void **)&l->dict_mcopy},
        {l->cf_lib, "CFArrayGetCount", (void **)&l->arr_count},
        {l->cf_lib, "CFArrayGetValueAtIndex", (void **)&l->arr_get},
        {l->ior_lib, "IOReportCopyChannelsInGroup", (void **)&l->copy_group},
        {l->ior_lib, "IOReportCreateSubscription", (void **)&l->subscribe},
        {l->ior_lib, "IOReportCreateSamples", (void **)&l->samples},
        {l->ior_lib, "IOReportChannelGetChannelName", (void **)&l->ch_name},
        {l->ior_lib, "IOReportChannelGetUnitLabel", (void **)&l->ch_unit},
        {l->ior_lib, "IOReportSimpleGetIntegerValue", (void **)&l->ch_int},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        *table[i].slot = dlsym(table[i].lib, table[i].name);
        if (!*table[i].slot) {
            ep_err_format(msg, msglen, "ioreport: symbol %s not found (macOS too old or too new?)", table[i].name);
            goto error;
        }
    }
    rc = EP_ERR_UNSUPPORTED;
    group = l->str_create(NULL, "Energy Model", CF_UTF8);
    l->key_channels = l->str_create(NULL, "IOReportChannels", CF_UTF8);
    if (!group || !l->key_channels) {
        ep_err_format(msg, msglen, "ioreport: CFStringCreateWithCString failed");
        goto error;
    }
    chans = l->copy_group(group, NULL, 0, 0, 0);
    if (!chans || l->dict_count(chans) == 0) {
        ep_err_format(msg, msglen, "ioreport: no 'Energy Model' channels (Intel Mac, or a virtual machine)");
        goto error;
    }
    l->channels = l->dict_mcopy(NULL, l->dict_count(chans), chans);
    if (!l->channels) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    /* subbed is filled by IOReport and not documented as caller-owned, so it is
     * left alone rather than risk a double release. */
    l->sub = l->subscribe(NULL, l->channels, &subbed, 0, NULL);
    if (!l->sub) {
        rc = EP_ERR_DEVICE;
        ep_err_format(msg, msglen, "ioreport: IOReportCreateSubscription failed");
        goto error;
    }
    l->release(group);
    l->release(chans);
    *out = l;
    return EP_OK;
error:
    if (l && l->release) {
        if (group)
            l->release(group);
        if (chans)
            l->release(chans);
    }
    ep_ioreport_live_close(l);
    return rc;
}

static void cf_text(ep_ioreport_live *l, cf_string s, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (!s || !l->str_get(s, buf, (cf_index)cap, CF_UTF8))
        buf[0] = '\0';
}

int ep_ioreport_live_snapshot(ep_ioreport_live *l, ep_ioreport_channel *out, size_t cap, size_t *n, char *msg,
                              size_t msglen)
{
    *n = 0;
    cf_dict s = l->samples(l->sub, l->channels, NULL);
    if (!s) {
        ep_err_format(msg, msglen, "ioreport: IOReportCreateSamples failed");
        return EP_ERR_DEVICE;
    }
    cf_array arr = l->dict_get(s, l->key_channels);
    cf_index count = arr ? l->arr_count(arr) : 0;
    for (cf_index i = 0; i < count && *n < cap; i++) {
        cf_dict ch = l->arr_get(arr, i);
        ep_ioreport_channel *c = &out[*n];
        cf_text(l, l->ch_name(ch), c->name, sizeof c->name);
        cf_text(l, l->ch_unit(ch), c->unit, sizeof c->unit);
        /* Unit labels come padded with spaces on some releases. */
        size_t k = strlen(c->unit);
        while (k > 0 && c->unit[k - 1] == ' ')
            c->unit[--k] = '\0';
        size_t lead = strspn(c->unit, " ");
        if (lead)
            memmove(c->unit, c->unit + lead, strlen(c->unit + lead) + 1);
        c->value = l->ch_int(ch, 0);
        (*n)++;
    }
    l->release(s);
    return EP_OK;
}

#else /* not macOS */

struct ep_ioreport_live {
    int unused;
};

int ep_ioreport_live_open(ep_ioreport_live **out, char *msg, size_t msglen)
{
    if (msg && msglen)
        snprintf(msg, msglen,
                 "ioreport: macOS only (Apple's IOReport energy channels); on this system use nvml, rapl or "
                 "estimate");
    *out = NULL;
    return EP_ERR_UNSUPPORTED;
}

int ep_ioreport_live_snapshot(ep_ioreport_live *live, ep_ioreport_channel *out, size_t cap, size_t *n, char *msg,
                              size_t msglen)
{
    *n = 0;
    return EP_ERR_UNSUPPORTED;
}

void ep_ioreport_live_close(ep_ioreport_live *live)
{
}

#endif
