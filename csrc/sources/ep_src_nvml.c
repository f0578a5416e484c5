/* ep_src_nvml.c: the 'nvml' power source (NVIDIA GPUs through libnvidia-ml).
 *
 * Spec: nvml[:index=0,lib=PATH]
 *
 * The library is dlopen'ed at run time (lib=, else $ENERGYPROF_NVML_LIB, else
 * libnvidia-ml.so.1): no NVIDIA headers or link at build time, so the package
 * builds and imports on machines without a driver.  The few prototypes used are
 * declared here from NVML's documented C API.
 *
 * Two modes, chosen once at start so one source never mixes sample kinds:
 *  - counter: nvmlDeviceGetTotalEnergyConsumption (mJ since driver load, Volta and
 *    later) differenced into INTERVAL samples in the gpu domain.  A failed read is
 *    counted as a fault and skipped; the next good read covers the gap, so no
 *    energy is lost.
 *    The counter advances only every 10-100 ms on real cards: a read that finds it
 *    unchanged (a stale read) gives no sample and keeps t_last, so the next read that
 *    sees it move covers both intervals with their true mean, never 0 W then 2x
 *    (nvml_stale_read); the longest unchanged span goes to src->counter_still_ns.
 *  - power: when the counter is NOT_SUPPORTED, INSTANT samples of the instantaneous
 *    power field (nvmlDeviceGetFieldValues, NVML_FI_DEV_POWER_INSTANT), and only where
 *    the driver lacks that field nvmlDeviceGetPowerUsage, which on Ampere and later
 *    (except GA100) is a 1-s average (the integrator uses the trapezoid rule between
 *    them); meta_json "mode" says which: "power_instant" or "power_usage".
 * Device name, driver version and power limit go to meta_json.
 */
#include <dlfcn.h>
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
    nvml_device dev;
    unsigned int index;
    int use_counter;           /* decided at start */
    int power_instant;         /* power mode: the instant field (1) or nvmlDeviceGetPowerUsage (0) */
    fn_fields fields;          /* optional: NULL on drivers without nvmlDeviceGetFieldValues */
    unsigned long long last_mj;
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

/* The instantaneous power (mW) through the field-values API; an NVML code otherwise
 * (NOT_SUPPORTED where the driver has no such field). */
static nvml_return nvml_read_instant_mw(nvml_state *st, unsigned int *mw)
{
    nvml_field_value fv;
    if (!st->fields)
        return NVML_ERR_NOT_SUPPORTED;
    memset(&fv, 0, sizeof fv);
    fv.field_id = NVML_FI_DEV_POWER_INSTANT;
    nvml_return r = st->fields(st->dev, 1, &fv);
    if (r != NVML_OK)
        return r;
    if (fv.nvml_return != NVML_OK)
        return fv.nvml_return;
    *mw = fv.value.ui;
    return NVML_OK;
}

/* The power mode's one read: instant field or nvmlDeviceGetPowerUsage, as chosen at start. */
static nvml_return nvml_read_power_mw(nvml_state *st, unsigned int *mw)
{
    return st->power_instant ? nvml_read_instant_mw(st, mw) : st->power(st->dev, mw);
}

/* A counter read that found the counter where the last one left it: no sample, t_last kept
 * (the next moving read spans both), and the unchanged span noted.  Returns 1 when stale. */
static int nvml_stale_read(ep_source *src, nvml_state *st, unsigned long long mj, int64_t t_now_ns)
{
    if (mj != st->last_mj)
        return 0;
    int64_t still = t_now_ns - st->counter.t_last_ns;
    if (still > src->counter_still_ns)
        src->counter_still_ns = still;
    return 1;
}

/* Wait (sleeping 1 ms at a time, at most cap_ns) for the counter to move past st->last_mj.
 * On a move *mj is the new reading and *t_now_ns is pushed on by the real time waited; 0.
 * -1 when it never moved. */
static int nvml_wait_move(nvml_state *st, int64_t cap, unsigned long long *mj, int64_t *t_now_ns)
{
    struct timespec a, b, nap = {0, 1000000L};
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (;;) {
        nanosleep(&nap, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        int64_t waited = (int64_t)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
        unsigned long long now_mj = 0;
        if (st->energy(st->dev, &now_mj) == NVML_OK && now_mj > st->last_mj) {
            *mj = now_mj;
            *t_now_ns += waited;
            return 0;
        }
        if (waited >= cap)
            return -1;
    }
}

/* The final flush found the counter stale: wait for it to move, at most twice the longest
 * unchanged span seen (at least 50 ms, at most 300 ms), so the last interval ends on a real
 * reading rather than on a 0 W one. */
static int nvml_final_wait(ep_source *src, nvml_state *st, unsigned long long *mj, int64_t *t_now_ns)
{
    int64_t cap = 2 * src->counter_still_ns;
    if (cap < 50000000LL)
        cap = 50000000LL;
    if (cap > 300000000LL)
        cap = 300000000LL;
    return nvml_wait_move(st, cap, mj, t_now_ns);
}

/* Keep what the device reports JSON-safe: drop quotes, backslashes and controls. */
static void json_safe(char *s)
{
    for (; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20)
            *s = '_';
}

static int open_device(ep_source *src, nvml_state *st)
{
    unsigned int count = 0, limit_mw = 0;
    char name[NVML_NAME_LEN] = "", driver[NVML_DRIVER_LEN] = "", limit_text[32] = "null";
    nvml_return r = st->init();
    if (r != NVML_OK)
        return nvml_fail(src, st, "nvmlInit_v2", r);
    st->initialised = 1;
    r = st->count(&count);
    if (r != NVML_OK)
        return nvml_fail(src, st, "nvmlDeviceGetCount_v2", r);
    if (st->index >= count) {
        snprintf(src->message, sizeof src->message, "nvml: GPU index %u does not exist (%u GPU%s found)", st->index,
                 count, count == 1 ? "" : "s");
        return count == 0 ? EP_ERR_NOTFOUND : EP_ERR_ARG;
    }
    r = st->handle(st->index, &st->dev);
    if (r != NVML_OK)
        return nvml_fail(src, st, "nvmlDeviceGetHandleByIndex_v2", r);
    /* Metadata is best effort: a GPU that hides its name still measures. */
    if (st->name(st->dev, name, sizeof name) != NVML_OK)
        snprintf(name, sizeof name, "unknown");
    if (st->driver(driver, sizeof driver) != NVML_OK)
        snprintf(driver, sizeof driver, "unknown");
    if (st->limit(st->dev, &limit_mw) == NVML_OK)
        snprintf(limit_text, sizeof limit_text, "%.3f", limit_mw / 1000.0);
    name[sizeof name - 1] = driver[sizeof driver - 1] = '\0';
    json_safe(name);
    json_safe(driver);
    snprintf(src->meta_json, sizeof src->meta_json,
             "{\"source\":\"nvml\",\"index\":%u,\"device_count\":%u,\"name\":\"%s\",\"driver_version\":\"%s\","
             "\"power_limit_w\":%s}",
             st->index, count, name, driver, limit_text);
    return EP_OK;
}

static int nvml_start(ep_source *src, int64_t t_now_ns)
{
    nvml_state *st = src->state;
    unsigned long long mj = 0;
    unsigned int mw = 0;
    nvml_return r = st->energy(st->dev, &mj);
    if (r == NVML_OK) {
        st->use_counter = 1;
        st->last_mj = mj;
        /* The first reading is as old as the counter's last update (up to 100 ms): start the
         * first interval at the counter's next move instead, so it does not take a whole
         * update's energy over a fraction of its time (at most 300 ms of waiting; a counter
         * that does not move by then starts where it is).  ENERGYPROF_NVML_ALIGN=0 skips it
         * (tests whose scripted counter moves on every read, not with time). */
        unsigned long long moved = 0;
        const char *align = getenv("ENERGYPROF_NVML_ALIGN");
        if (!(align && strcmp(align, "0") == 0) && nvml_wait_move(st, 300000000LL, &moved, &t_now_ns) == 0)
            st->last_mj = moved;
    } else if (r == NVML_ERR_NOT_SUPPORTED) {
        /* Pre-Volta GPUs: no energy counter, sample instantaneous power instead: the
         * instant field first (nvmlDeviceGetPowerUsage averages over 1 s on Ampere+). */
        st->use_counter = 0;
        st->power_instant = nvml_read_instant_mw(st, &mw) == NVML_OK;
        if (!st->power_instant) {
            r = st->power(st->dev, &mw);
            if (r != NVML_OK)
                return nvml_fail(src, st, "nvmlDeviceGetPowerUsage (energy counter not supported)", r);
        }
    } else {
        return nvml_fail(src, st, "nvmlDeviceGetTotalEnergyConsumption", r);
    }
    /* Append the chosen mode to the metadata object (replace its closing brace). */
    size_t k = strlen(src->meta_json);
    if (k > 0 && k + 40 < sizeof src->meta_json)
        snprintf(src->meta_json + k - 1, sizeof src->meta_json - (k - 1), ",\"mode\":\"%s\"}",
                 st->use_counter ? "energy_counter" : st->power_instant ? "power_instant" : "power_usage");
    ep_source_counter_begin(&st->counter, t_now_ns);
    return EP_OK;
}

static int nvml_emit(ep_source *src, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out, size_t cap,
                     size_t *n_out)
{
    nvml_state *st = src->state;
    ep_sample *s = &out[0];
    if (st->use_counter) {
        unsigned long long mj = 0;
        if (t_now_ns <= st->counter.t_last_ns)
            return EP_OK;
        nvml_return r = st->energy(st->dev, &mj);
        if (r != NVML_OK) {
            src->faults++;
            nvml_fail(src, st, "nvmlDeviceGetTotalEnergyConsumption", r);
            return EP_OK; /* keep t_last: the next good read covers the gap */
        }
        if (mj < st->last_mj) {
            /* The counter restarts when the driver reloads: the energy of this gap is
             * unknown, so rebase rather than emit a negative or made-up value. */
            src->faults++;
            snprintf(src->message, sizeof src->message,
                     "nvml: energy counter went backwards (%llu -> %llu mJ); interval dropped", st->last_mj, mj);
            st->last_mj = mj;
            st->counter.t_last_ns = t_now_ns;
            return EP_OK;
        }
        if (nvml_stale_read(src, st, mj, t_now_ns)) {
            if (!(extra_flags & EP_SFLAG_FINAL) || nvml_final_wait(src, st, &mj, &t_now_ns) != 0)
                return EP_OK; /* no 0 W sample: the next moving read (or none) covers it */
        }
        ep_sample_init(s, st->counter.t_last_ns, t_now_ns, EP_KIND_INTERVAL, extra_flags);
        s->power_w[EP_DOM_GPU] =
            (double)(mj - st->last_mj) * 1e-3 / ((double)(t_now_ns - st->counter.t_last_ns) * 1e-9);
        st->last_mj = mj;
    } else {
        unsigned int mw = 0;
        nvml_return r = nvml_read_power_mw(st, &mw);
        if (r != NVML_OK) {
            src->faults++;
            nvml_fail(src, st, st->power_instant ? "nvmlDeviceGetFieldValues (instant power)" : "nvmlDeviceGetPowerUsage",
                      r);
            return EP_OK;
        }
        ep_sample_init(s, t_now_ns, t_now_ns, EP_KIND_INSTANT, extra_flags);
        s->power_w[EP_DOM_GPU] = mw * 1e-3;
    }
    st->counter.t_last_ns = t_now_ns;
    *n_out = 1;
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

int ep_src_nvml_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    int rc = EP_ERR_NOMEM;
    nvml_state *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(src->message, sizeof src->message, "nvml: no memory");
        goto error;
    }
    src->state = st;
    src->destroy = nvml_destroy;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(keys[i], "lib") == 0)
            continue;
        if (strcmp(keys[i], "index") != 0) {
            snprintf(src->message, sizeof src->message, "nvml: unknown parameter '%s' (known: index, lib)", keys[i]);
            rc = EP_ERR_ARG;
            goto error;
        }
        char *end = NULL;
        unsigned long v = strtoul(values[i], &end, 10);
        if (end == values[i] || *end != '\0' || values[i][0] == '-' || v > 1024) {
            snprintf(src->message, sizeof src->message, "nvml: index must be a GPU number 0..1024, got '%s'",
                     values[i]);
            rc = EP_ERR_ARG;
            goto error;
        }
        st->index = (unsigned int)v;
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
    rc = open_device(src, st);
    if (rc != EP_OK)
        goto error;
    return EP_OK;
error:
    /* The registry calls ep_source_destroy on failure, which runs nvml_destroy
     * (shutdown + dlclose) through src->destroy. */
    return rc;
}
