/* ep_src_nvml.c: the 'nvml' power source (NVIDIA GPUs through libnvidia-ml).
 *
 * Spec: nvml[:devices=0,1|all,lib=PATH]   (index=N: the one-device form, devices=N)
 *
 * The library is dlopen'ed at run time (lib=, else $ENERGYPROF_NVML_LIB, else
 * libnvidia-ml.so.1): no NVIDIA headers or link at build time, so the package
 * builds and imports on machines without a driver.  The few prototypes used are
 * declared here from NVML's documented C API.
 *
 * Several devices (devices=0,1 or all) are read in every poll, one handle each; the gpu
 * domain of each sample is their sum, and after it come one EP_SFLAG_DEVICE sample per
 * device (same times and kind, that device's power) when there is more than one device.
 *
 * Each device's reading kind is chosen once at start, per device, so one device never
 * mixes kinds:
 *  - counter: nvmlDeviceGetTotalEnergyConsumption (mJ since driver load, Volta and
 *    later) differenced into INTERVAL samples.  A failed read is counted as a fault and
 *    skipped; the next good read covers the gap, so no energy is lost.
 *    The counter advances only every 10-100 ms on real cards: a read that finds a
 *    device's counter unchanged (a stale read) gives no sample and keeps t_last, so the
 *    next read that sees every counter move covers both intervals with their true mean,
 *    never 0 W then 2x (nvml_stale_read); the longest unchanged span of any device goes to
 *    src->counter_still_ns.  With several devices one stuck counter holds the others at
 *    most NVML_HOLD_MAX_NS, then the sample is written anyway and flagged SUSPECT.
 *  - power: when the counter is NOT_SUPPORTED, the instantaneous power field
 *    (nvmlDeviceGetFieldValues, NVML_FI_DEV_POWER_INSTANT), and only where the driver
 *    lacks that field nvmlDeviceGetPowerUsage, which on Ampere and later (except GA100) is
 *    a 1-s average.  When every device reads power the samples are INSTANT (the
 *    integrator uses the trapezoid rule between them); when some device has a counter,
 *    the power devices' readings are integrated by the trapezoid rule over each poll
 *    into the INTERVAL samples.  meta_json "mode" (per device in "devices") says which:
 *    "energy_counter", "power_instant" or "power_usage".
 * Device name, driver version and power limit go to meta_json.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep_errors.h"
#include "ep_source.h"

/* NVML's ABI, declared from its public documentation (nvml.h is not needed). */
typedef int nvml_return;   /* nvmlReturn_t */
typedef void *nvml_device; /* nvmlDevice_t: an opaque pointer */
enum {
    NVML_OK = 0,
    NVML_ERR_INVALID_ARGUMENT = 2,
    NVML_ERR_NOT_SUPPORTED = 3,
    NVML_ERR_NO_PERMISSION = 4,
    NVML_ERR_NOT_FOUND = 6,
    NVML_ERR_DRIVER_NOT_LOADED = 9,
    NVML_ERR_LIBRARY_NOT_FOUND = 12,
};
#define NVML_NAME_LEN 96
#define NVML_DRIVER_LEN 80

typedef nvml_return (*fn_void)(void);
typedef nvml_return (*fn_count)(unsigned int *);
typedef nvml_return (*fn_handle)(unsigned int, nvml_device *);
typedef nvml_return (*fn_energy)(nvml_device, unsigned long long *);
typedef nvml_return (*fn_uint)(nvml_device, unsigned int *);
typedef nvml_return (*fn_name)(nvml_device, char *, unsigned int);
typedef nvml_return (*fn_driver)(char *, unsigned int);
typedef const char *(*fn_errstr)(nvml_return);

/* nvmlFieldValue_t, declared from NVML's documentation (40 bytes on LP64). */
#define NVML_FI_DEV_POWER_INSTANT 186
typedef struct {
    unsigned int field_id, scope_id;
    long long timestamp_us, latency_us;
    int value_type, nvml_return;
    union {
        double d;
        unsigned int ui;
        unsigned long ul;
        unsigned long long ull;
        long long sll;
    } value;
} nvml_field_value;
typedef nvml_return (*fn_fields)(nvml_device, int, nvml_field_value *);

#define NVML_MAX_DEVICES 16 /* EP_SOURCE_READ_MAX holds the sum and one sample per device */
#define NVML_HOLD_MAX_NS 1000000000LL

enum { MODE_COUNTER = 0, MODE_INSTANT, MODE_USAGE };
static const char *const mode_names[] = {"energy_counter", "power_instant", "power_usage"};

/* One device's handle and reading state. */
typedef struct {
    nvml_device dev;
    unsigned int index;
    int mode;                   /* MODE_*, decided at start */
    unsigned long long last_mj; /* counter: the reading at the end of the last sample */
    unsigned long long seen_mj; /* counter: the newest reading */
    int64_t t_seen_ns;          /* counter: when seen_mj was first read */
    double prev_w;              /* power modes: the last good reading and its time */
    int64_t t_prev_ns;
    double acc_j;               /* power modes beside a counter: trapezoid energy since the last sample */
    double out_w;               /* this device's power in the sample being written */
} nvml_dev;

typedef struct {
    ep_source_counter counter; /* first: the shared poll/stop find it at src->state */
    void *lib;
    int initialised;
    fn_void init, shutdown;
    fn_count count;
    fn_handle handle;
    fn_energy energy;
    fn_uint power, limit;
    fn_name name;
    fn_driver driver;
    fn_errstr errstr;
    fn_fields fields;          /* optional: NULL on drivers without nvmlDeviceGetFieldValues */
    int all;                   /* devices=all */
    size_t n;                  /* devices in use */
    int n_counter;             /* of them, how many read the energy counter */
    unsigned int want[NVML_MAX_DEVICES]; /* the indices asked for (before start: as parsed) */
    char asked[64];            /* "devices=0,1" as given, for messages ("" for index= or none) */
    nvml_dev d[NVML_MAX_DEVICES];
} nvml_state;
static const char *nvml_text(nvml_state *st, nvml_return r)
{
    const char *s = st->errstr ? st->errstr(r) : NULL;
    return s ? s : "unknown NVML error";
}

/* Map an NVML return code to EP_ERR_* and write "nvml: WHAT: <nvmlErrorString>". */
static int nvml_fail(ep_source *src, nvml_state *st, const char *what, nvml_return r)
{
    snprintf(src->message, sizeof src->message, "nvml: %s failed: %s (NVML error %d)", what, nvml_text(st, r), r);
    switch (r) {
    case NVML_ERR_INVALID_ARGUMENT: return EP_ERR_ARG;
    case NVML_ERR_NOT_SUPPORTED: return EP_ERR_UNSUPPORTED;
    case NVML_ERR_NO_PERMISSION: return EP_ERR_PERM;
    case NVML_ERR_NOT_FOUND:
    case NVML_ERR_DRIVER_NOT_LOADED:
    case NVML_ERR_LIBRARY_NOT_FOUND: return EP_ERR_NOTFOUND;
    default: return EP_ERR_DEVICE;
    }
}

static void *sym(void *lib, const char *name)
{
    return dlsym(lib, name);
}

static int load_library(ep_source *src, nvml_state *st, const char *lib_param)
{
    const char *path = lib_param && lib_param[0] ? lib_param : getenv("ENERGYPROF_NVML_LIB");
    if (!path || !path[0])
        path = "libnvidia-ml.so.1";
    st->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!st->lib) {
        const char *why = dlerror();
        snprintf(src->message, sizeof src->message,
                 "nvml: cannot load %s (it ships with the NVIDIA driver; install the driver or set "
                 "ENERGYPROF_NVML_LIB): %.120s",
                 path, why ? why : "dlopen failed");
        return EP_ERR_NOTFOUND;
    }
    /* Each symbol name as NVML exports it; the _v2 entry points exist since driver 325. */
    struct {
        const char *name;
        void **slot;
    } table[] = {
        {"nvmlInit_v2", (void **)&st->init},
        {"nvmlShutdown", (void **)&st->shutdown},
        {"nvmlDeviceGetCount_v2", (void **)&st->count},
        {"nvmlDeviceGetHandleByIndex_v2", (void **)&st->handle},
        {"nvmlDeviceGetTotalEnergyConsumption", (void **)&st->energy},
        {"nvmlDeviceGetPowerUsage", (void **)&st->power},
        {"nvmlDeviceGetPowerManagementLimit", (void **)&st->limit},
        {"nvmlDeviceGetName", (void **)&st->name},
        {"nvmlSystemGetDriverVersion", (void **)&st->driver},
        {"nvmlErrorString", (void **)&st->errstr},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        *table[i].slot = sym(st->lib, table[i].name);
        if (!*table[i].slot) {
            snprintf(src->message, sizeof src->message,
                     "nvml: %s has no symbol %s (driver too old? update the NVIDIA driver)", path, table[i].name);
            return EP_ERR_NOTFOUND;
        }
    }
    /* Optional entry point (drivers before R450 lack it): the instant-power fallback. */
    st->fields = (fn_fields)sym(st->lib, "nvmlDeviceGetFieldValues");
    return EP_OK;
}

/* The instantaneous power (mW) of d through the field-values API; an NVML code otherwise
 * (NOT_SUPPORTED where the driver has no such field). */
static nvml_return nvml_read_instant_mw(nvml_state *st, nvml_dev *d, unsigned int *mw)
{
    nvml_field_value fv;
    if (!st->fields)
        return NVML_ERR_NOT_SUPPORTED;
    memset(&fv, 0, sizeof fv);
    fv.field_id = NVML_FI_DEV_POWER_INSTANT;
    nvml_return r = st->fields(d->dev, 1, &fv);
    if (r != NVML_OK)
        return r;
    if (fv.nvml_return != NVML_OK)
        return fv.nvml_return;
    *mw = fv.value.ui;
    return NVML_OK;
}

/* A power device's one read: instant field or nvmlDeviceGetPowerUsage, as chosen at start. */
static nvml_return nvml_read_power_mw(nvml_state *st, nvml_dev *d, unsigned int *mw)
{
    return d->mode == MODE_INSTANT ? nvml_read_instant_mw(st, d, mw) : st->power(d->dev, mw);
}

/* Note a counter reading of d at t_now_ns: a new value restarts d's unchanged span; an
 * unchanged one extends it (the longest span of any device goes to counter_still_ns).
 * Returns 1 when d's counter has not moved since the last sample (a stale read). */
static int nvml_stale_read(ep_source *src, nvml_dev *d, unsigned long long mj, int64_t t_now_ns)
{
    if (mj != d->seen_mj) {
        d->seen_mj = mj;
        d->t_seen_ns = t_now_ns;
    } else {
        int64_t still = t_now_ns - d->t_seen_ns;
        if (still > src->counter_still_ns)
            src->counter_still_ns = still;
    }
    return mj == d->last_mj;
}

/* Wait (sleeping 1 ms at a time, at most cap_ns) for d's counter to move past d->last_mj.
 * On a move *mj is the new reading and *t_now_ns is pushed on by the real time waited; 0.
 * -1 when it never moved. */
static int nvml_wait_move(nvml_state *st, nvml_dev *d, int64_t cap, unsigned long long *mj, int64_t *t_now_ns)
{
    struct timespec a, b, nap = {0, 1000000L};
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (;;) {
        nanosleep(&nap, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        int64_t waited = (int64_t)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
        unsigned long long now_mj = 0;
        if (st->energy(d->dev, &now_mj) == NVML_OK && now_mj > d->last_mj) {
            *mj = now_mj;
            *t_now_ns += waited;
            return 0;
        }
        if (waited >= cap)
            return -1;
    }
}

/* The final flush found a counter stale: wait for it to move, at most twice the longest
 * unchanged span seen (at least 50 ms, at most 300 ms), so the last interval ends on a real
 * reading rather than on a 0 W one. */
static int nvml_final_wait(ep_source *src, nvml_state *st, nvml_dev *d, unsigned long long *mj, int64_t *t_now_ns)
{
    int64_t cap = 2 * src->counter_still_ns;
    if (cap < 50000000LL)
        cap = 50000000LL;
    if (cap > 300000000LL)
        cap = 300000000LL;
    return nvml_wait_move(st, d, cap, mj, t_now_ns);
}

/* Keep what the device reports JSON-safe: drop quotes, backslashes and controls. */
static void json_safe(char *s)
{
    for (; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20)
            *s = '_';
}

/* Append printf text to the NUL-terminated dst (cap bytes); stops at the end of dst. */
static void meta_add(char *dst, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void meta_add(char *dst, size_t cap, const char *fmt, ...)
{
    size_t k = strlen(dst);
    va_list ap;
    if (k + 1 >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(dst + k, cap - k, fmt, ap);
    va_end(ap);
}

/* Init NVML, check the devices asked for against the count, take one handle each. */
static int open_devices(ep_source *src, nvml_state *st)
{
    unsigned int count = 0;
    nvml_return r = st->init();
    if (r != NVML_OK)
        return nvml_fail(src, st, "nvmlInit_v2", r);
    st->initialised = 1;
    r = st->count(&count);
    if (r != NVML_OK)
        return nvml_fail(src, st, "nvmlDeviceGetCount_v2", r);
    if (st->all) {
        if (count == 0) {
            snprintf(src->message, sizeof src->message, "nvml: devices=all found no GPU (0 GPUs found)");
            return EP_ERR_NOTFOUND;
        }
        if (count > NVML_MAX_DEVICES) {
            snprintf(src->message, sizeof src->message,
                     "nvml: devices=all found %u GPUs; at most %d are read by one source (list them: devices=0,1,...)",
                     count, NVML_MAX_DEVICES);
            return EP_ERR_ARG;
        }
        st->n = count;
        for (unsigned int i = 0; i < count; i++)
            st->want[i] = i;
    }
    for (size_t i = 0; i < st->n; i++) {
        if (st->want[i] >= count) {
            char valid[32] = "";
            if (count > 0)
                snprintf(valid, sizeof valid, count == 1 ? "; valid: 0" : "; valid: 0..%u", count - 1);
            snprintf(src->message, sizeof src->message, "nvml: %s%sGPU index %u does not exist (%u GPU%s found%s)",
                     st->asked, st->asked[0] ? ": " : "", st->want[i], count, count == 1 ? "" : "s", valid);

            return count == 0 ? EP_ERR_NOTFOUND : EP_ERR_ARG;
        }
        st->d[i].index = st->want[i];
        r = st->handle(st->d[i].index, &st->d[i].dev);
        if (r != NVML_OK)
            return nvml_fail(src, st, "nvmlDeviceGetHandleByIndex_v2", r);
    }
    return EP_OK;
}

/* meta_json: the driver, the device count, each device (index, name, power limit, reading
 * kind) and, for the one-device form kept by older readers, the first device's fields at the
 * top level ("power_limit_w" there is the sum over the devices: the gpu domain's limit).
 * Metadata is best effort: a GPU that hides its name still measures. */
static void write_meta(ep_source *src, nvml_state *st, int with_mode)
{
    char name[NVML_NAME_LEN] = "", first[NVML_NAME_LEN] = "", driver[NVML_DRIVER_LEN] = "", limit[32];
    char devs[EP_SOURCE_META_LEN] = "";
    unsigned int count = 0, mw = 0;
    double limit_sum = 0.0;
    int all_limits = 1, same_mode = 1;
    if (st->count(&count) != NVML_OK)
        count = (unsigned int)st->n;
    if (st->driver(driver, sizeof driver) != NVML_OK)
        snprintf(driver, sizeof driver, "unknown");
    driver[sizeof driver - 1] = '\0';
    json_safe(driver);
    for (size_t i = 0; i < st->n; i++) {
        nvml_dev *d = &st->d[i];
        if (st->name(d->dev, name, sizeof name) != NVML_OK)
            snprintf(name, sizeof name, "unknown");
        name[sizeof name - 1] = '\0';
        json_safe(name);
        if (i == 0)
            memcpy(first, name, sizeof first);
        snprintf(limit, sizeof limit, "null");
        if (st->limit(d->dev, &mw) == NVML_OK) {
            snprintf(limit, sizeof limit, "%.3f", mw / 1000.0);
            limit_sum += mw / 1000.0;
        } else {
            all_limits = 0;
        }
        if (d->mode != st->d[0].mode)
            same_mode = 0;
        meta_add(devs, sizeof devs, "%s{\"index\":%u,\"name\":\"%s\",\"power_limit_w\":%s", i ? "," : "", d->index,
                 name, limit);
        if (with_mode)
            meta_add(devs, sizeof devs, ",\"mode\":\"%s\"", mode_names[d->mode]);
        meta_add(devs, sizeof devs, "}");
    }
    snprintf(limit, sizeof limit, "null");
    if (all_limits)
        snprintf(limit, sizeof limit, "%.3f", limit_sum);
    snprintf(src->meta_json, sizeof src->meta_json,
             "{\"source\":\"nvml\",\"index\":%u,\"device_count\":%u,\"name\":\"%s%s\",\"driver_version\":\"%s\","
             "\"power_limit_w\":%s,%s%s%s\"devices\":[%s]}",
             st->d[0].index, count, st->n > 1 ? "several: " : "", st->n > 1 ? "see devices" : first, driver, limit,
             with_mode ? "\"mode\":\"" : "", !with_mode ? "" : same_mode ? mode_names[st->d[0].mode] : "mixed",
             with_mode ? "\"," : "", devs);
}

/* Decide d's reading kind at t_now_ns and take its first reading. */
static int start_device(ep_source *src, nvml_state *st, nvml_dev *d, int64_t t_now_ns)
{
    unsigned long long mj = 0;
    unsigned int mw = 0;
    nvml_return r = st->energy(d->dev, &mj);
    if (r == NVML_OK) {
        d->mode = MODE_COUNTER;
        d->last_mj = d->seen_mj = mj;
        d->t_seen_ns = t_now_ns;
        st->n_counter++;
        return EP_OK;
    }
    if (r != NVML_ERR_NOT_SUPPORTED)
        return nvml_fail(src, st, "nvmlDeviceGetTotalEnergyConsumption", r);
    /* Pre-Volta GPUs: no energy counter, sample instantaneous power instead: the
     * instant field first (nvmlDeviceGetPowerUsage averages over 1 s on Ampere+). */
    d->mode = MODE_INSTANT;
    if (nvml_read_instant_mw(st, d, &mw) != NVML_OK) {
        d->mode = MODE_USAGE;
        r = st->power(d->dev, &mw);
        if (r != NVML_OK)
            return nvml_fail(src, st, "nvmlDeviceGetPowerUsage (energy counter not supported)", r);
    }
    d->prev_w = mw * 1e-3;
    d->t_prev_ns = t_now_ns;
    d->acc_j = 0.0;
    return EP_OK;
}

static int nvml_start(ep_source *src, int64_t t_now_ns)
{
    nvml_state *st = src->state;
    st->n_counter = 0;
    for (size_t i = 0; i < st->n; i++) {
        int rc = start_device(src, st, &st->d[i], t_now_ns);
        if (rc != EP_OK)
            return rc;
    }
    /* The first reading is as old as the counter's last update (up to 100 ms): start the
     * first interval at the counter's next move instead, so it does not take a whole
     * update's energy over a fraction of its time (at most 300 ms of waiting; a counter
     * that does not move by then starts where it is).  With several counters, at the first
     * device's move (the others' phases differ anyway).  ENERGYPROF_NVML_ALIGN=0 skips it
     * (tests whose scripted counter moves on every read, not with time). */
    const char *align = getenv("ENERGYPROF_NVML_ALIGN");
    for (size_t i = 0; i < st->n && !(align && strcmp(align, "0") == 0); i++) {
        nvml_dev *d = &st->d[i];
        unsigned long long moved = 0;
        if (d->mode != MODE_COUNTER)
            continue;
        if (nvml_wait_move(st, d, 300000000LL, &moved, &t_now_ns) == 0) {
            for (size_t j = 0; j < st->n; j++) { /* every device starts at the same instant */
                nvml_dev *e = &st->d[j];
                unsigned long long mj = moved;
                if (e->mode == MODE_COUNTER && (j == i || st->energy(e->dev, &mj) == NVML_OK)) {
                    e->last_mj = e->seen_mj = mj;
                    e->t_seen_ns = t_now_ns;
                }
                e->t_prev_ns = t_now_ns;
            }
        }
        break;
    }
    write_meta(src, st, 1);
    ep_source_counter_begin(&st->counter, t_now_ns);
    return EP_OK;
}

/* Every device's power read, none emitted: 1 when a power device's read failed (a fault;
 * the caller writes no sample), else 0.  With counters beside, the power devices'
 * trapezoid energy since the last sample grows by the stretch since their last read. */
static int read_power_devices(ep_source *src, nvml_state *st, int64_t t_now_ns)
{
    int failed = 0;
    for (size_t i = 0; i < st->n; i++) {
        nvml_dev *d = &st->d[i];
        unsigned int mw = 0;
        if (d->mode == MODE_COUNTER)
            continue;
        nvml_return r = nvml_read_power_mw(st, d, &mw);
        if (r != NVML_OK) {
            src->faults++;
            nvml_fail(src, st,
                      d->mode == MODE_INSTANT ? "nvmlDeviceGetFieldValues (instant power)" : "nvmlDeviceGetPowerUsage", r);
            failed = 1;
            continue;
        }
        double w = mw * 1e-3;
        if (t_now_ns > d->t_prev_ns)
            d->acc_j += 0.5 * (d->prev_w + w) * (double)(t_now_ns - d->t_prev_ns) * 1e-9;
        d->prev_w = d->out_w = w;
        d->t_prev_ns = t_now_ns;
    }
    return failed;
}

/* Write the sum sample and (several devices) one EP_SFLAG_DEVICE sample per device from
 * each device's out_w: *n_out of them into out. */
static void write_samples(ep_source *src, nvml_state *st, int64_t t0, int64_t t1, int32_t kind, uint32_t flags,
                          ep_sample *out, size_t cap, size_t *n_out)
{
    double sum = 0.0;
    for (size_t i = 0; i < st->n; i++)
        sum += st->d[i].out_w;
    ep_sample_init(&out[0], t0, t1, kind, flags);
    out[0].power_w[EP_DOM_GPU] = sum;
    *n_out = 1;
    if (st->n < 2)
        return;
    if (cap < 1 + st->n) {
        /* the gpu total is kept; only the breakdown of this reading is lost, and said so */
        src->faults++;
        snprintf(src->message, sizeof src->message, "nvml: room for %zu samples, %zu needed: per-device reading dropped",
                 cap, 1 + st->n);
        return;
    }
    for (size_t i = 0; i < st->n; i++) {
        ep_sample *s = &out[1 + i];
        ep_sample_init(s, t0, t1, kind, flags | EP_SFLAG_DEVICE | ((st->d[i].index & EP_SFLAG_DEVICE_MASK) << EP_SFLAG_DEVICE_SHIFT));
        s->power_w[EP_DOM_GPU] = st->d[i].out_w;
    }
    *n_out = 1 + st->n;
}

/* Every device reads power: one INSTANT sample at t_now_ns (none when a read failed). */
static int emit_power_only(ep_source *src, nvml_state *st, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out,
                           size_t cap, size_t *n_out)
{
    if (read_power_devices(src, st, t_now_ns))
        return EP_OK;
    for (size_t i = 0; i < st->n; i++)
        st->d[i].acc_j = 0.0;
    write_samples(src, st, t_now_ns, t_now_ns, EP_KIND_INSTANT, extra_flags, out, cap, n_out);
    st->counter.t_last_ns = t_now_ns;
    return EP_OK;
}

static int nvml_emit(ep_source *src, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out, size_t cap,
                     size_t *n_out)
{
    nvml_state *st = src->state;
    unsigned long long mj[NVML_MAX_DEVICES] = {0};
    int backwards = 0, stale = 0;
    if (st->n_counter == 0)
        return emit_power_only(src, st, t_now_ns, extra_flags, out, cap, n_out);
    if (t_now_ns <= st->counter.t_last_ns)
        return EP_OK;
    for (size_t i = 0; i < st->n; i++) {
        nvml_dev *d = &st->d[i];
        if (d->mode != MODE_COUNTER)
            continue;
        nvml_return r = st->energy(d->dev, &mj[i]);
        if (r != NVML_OK) {
            src->faults++;
            nvml_fail(src, st, "nvmlDeviceGetTotalEnergyConsumption", r);
            return EP_OK; /* keep t_last: the next good read covers the gap */
        }
        if (mj[i] < d->last_mj)
            backwards = 1;
    }
    if (backwards) {
        /* A counter restarts when the driver reloads: the energy of this gap is unknown, so
         * rebase every device rather than emit a negative or made-up value. */
        src->faults++;
        snprintf(src->message, sizeof src->message, "nvml: an energy counter went backwards; interval dropped");
        for (size_t i = 0; i < st->n; i++) {
            nvml_dev *d = &st->d[i];
            if (d->mode == MODE_COUNTER) {
                d->last_mj = d->seen_mj = mj[i];
                d->t_seen_ns = t_now_ns;
            }
        }
        read_power_devices(src, st, t_now_ns);
        for (size_t i = 0; i < st->n; i++)
            st->d[i].acc_j = 0.0;
        st->counter.t_last_ns = t_now_ns;
        return EP_OK;
    }
    for (size_t i = 0; i < st->n; i++)
        if (st->d[i].mode == MODE_COUNTER && nvml_stale_read(src, &st->d[i], mj[i], t_now_ns))
            stale++;
    uint32_t flags = extra_flags;
    if (stale && (extra_flags & EP_SFLAG_FINAL)) {
        for (size_t i = 0; i < st->n; i++) {
            nvml_dev *d = &st->d[i];
            if (d->mode == MODE_COUNTER && mj[i] == d->last_mj && nvml_final_wait(src, st, d, &mj[i], &t_now_ns) == 0)
                stale--;
        }
        if (stale)
            return EP_OK; /* no 0 W sample: nothing covers the last stretch, as with one device */
    } else if (stale) {
        int64_t held = t_now_ns - st->counter.t_last_ns;
        if (st->n == 1 || held < NVML_HOLD_MAX_NS) {
            read_power_devices(src, st, t_now_ns); /* their trapezoid goes on under the hold */
            return EP_OK; /* no 0 W sample: the next moving read covers it */
        }
        flags |= EP_SFLAG_SUSPECT; /* one counter stood still for a second: written anyway */
    }
    if (read_power_devices(src, st, t_now_ns))
        return EP_OK; /* a power device has no reading at t_now: the next poll covers it */
    double dt_s = (double)(t_now_ns - st->counter.t_last_ns) * 1e-9;
    for (size_t i = 0; i < st->n; i++) {
        nvml_dev *d = &st->d[i];
        if (d->mode == MODE_COUNTER) {
            d->out_w = (double)(mj[i] - d->last_mj) * 1e-3 / dt_s;
            d->last_mj = mj[i];
        } else {
            d->out_w = d->acc_j / dt_s;
            d->acc_j = 0.0;
        }
    }
    write_samples(src, st, st->counter.t_last_ns, t_now_ns, EP_KIND_INTERVAL, flags, out, cap, n_out);
    st->counter.t_last_ns = t_now_ns;
    return EP_OK;
}

static void nvml_destroy(ep_source *src)
{
    nvml_state *st = src->state;
    if (!st)
        return;
    if (st->initialised && st->shutdown)
        st->shutdown();
    if (st->lib)
        dlclose(st->lib);
    free(st);
    src->state = NULL;
}

/* One GPU number of index= or devices=: EP_OK and *out, or EP_ERR_ARG with the message
 * naming the entry (text is borrowed). */
static int parse_index(ep_source *src, const char *key, const char *text, size_t len, unsigned int *out)
{
    char buf[32];
    char *end = NULL;
    if (len == 0 || len >= sizeof buf || text[0] == '-' || text[0] == '+')
        goto error;
    memcpy(buf, text, len);
    buf[len] = '\0';
    unsigned long v = strtoul(buf, &end, 10);
    if (end == buf || *end != '\0' || v > 1024)
        goto error;
    *out = (unsigned int)v;
    return EP_OK;
error:
    snprintf(src->message, sizeof src->message, "nvml: %s must list GPU numbers 0..1024 (or all), got '%.*s'", key,
             (int)(len < 64 ? len : 64), text);
    return EP_ERR_ARG;
}

/* devices=all or a comma-separated list of GPU numbers, no repeats, at most NVML_MAX_DEVICES. */
static int parse_devices(ep_source *src, nvml_state *st, const char *key, const char *value)
{
    if (strcmp(value, "all") == 0) {
        st->all = 1;
        return EP_OK;
    }
    st->n = 0;
    for (const char *p = value;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        unsigned int idx = 0;
        int rc = parse_index(src, key, p, len, &idx);
        if (rc != EP_OK)
            return rc;
        for (size_t i = 0; i < st->n; i++)
            if (st->want[i] == idx) {
                snprintf(src->message, sizeof src->message, "nvml: %s lists GPU %u twice", key, idx);
                return EP_ERR_ARG;
            }
        if (st->n == NVML_MAX_DEVICES) {
            snprintf(src->message, sizeof src->message, "nvml: %s lists more than %d GPUs", key, NVML_MAX_DEVICES);
            return EP_ERR_ARG;
        }
        st->want[st->n++] = idx;
        if (!comma)
            return EP_OK;
        p = comma + 1;
    }
}

int ep_src_nvml_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    static const char *const known[] = {"devices", "index", "lib", NULL};
    int rc = EP_ERR_NOMEM;
    nvml_state *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(src->message, sizeof src->message, "nvml: no memory");
        goto error;
    }
    src->state = st;
    src->destroy = nvml_destroy;
    st->n = 1; /* GPU 0 when neither devices= nor index= is given */
    const char *bad = ep_source_unknown_key(keys, n, known);
    if (bad) {
        snprintf(src->message, sizeof src->message, "nvml: unknown parameter '%s' (known: devices, index, lib)", bad);
        rc = EP_ERR_ARG;
        goto error;
    }
    const char *devices = ep_source_param(keys, values, n, "devices");
    const char *index = ep_source_param(keys, values, n, "index");
    if (devices && index) {
        snprintf(src->message, sizeof src->message, "nvml: give devices= or index=, not both");
        rc = EP_ERR_ARG;
        goto error;
    }
    if (devices)
        snprintf(st->asked, sizeof st->asked, "devices=%s", devices);
    if (devices || index) {
        rc = parse_devices(src, st, devices ? "devices" : "index", devices ? devices : index);
        if (rc == EP_OK && index && (st->all || st->n != 1)) {
            snprintf(src->message, sizeof src->message, "nvml: index takes one GPU number (for several: devices=%s)",
                     index);
            rc = EP_ERR_ARG;
        }
        if (rc != EP_OK)
            goto error;
    }
    src->kind = "nvml";
    src->flags = 0;
    src->period_ns = 50 * 1000 * 1000; /* NVML refreshes power about every 20-100 ms */
    st->counter.emit = nvml_emit;
    src->start = nvml_start;
    src->poll = ep_source_counter_poll;
    src->boundary = ep_source_counter_boundary;
    src->stop = ep_source_counter_stop;
    rc = load_library(src, st, ep_source_param(keys, values, n, "lib"));
    if (rc != EP_OK)
        goto error;
    rc = open_devices(src, st);
    if (rc != EP_OK)
        goto error;
    write_meta(src, st, 0); /* start adds each device's reading kind */
    return EP_OK;
error:
    /* The registry calls ep_source_destroy on failure, which runs nvml_destroy
     * (shutdown + dlclose) through src->destroy. */
    return rc;
}
