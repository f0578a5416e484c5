/* ep_src_estimate.c: the 'estimate' source: CPU power modelled from the process's
 * real CPU time, for machines without a readable sensor.  Never a measurement:
 * the source carries EP_SRC_ESTIMATED and every sample EP_SFLAG_ESTIMATED.
 *
 * Spec: estimate[:watts_per_core=W,tdp_w=W,idle_w=W]
 *
 * Model, over each poll interval [t_last, t_now):
 *   utilisation = (CPU time of this process, user + system) / wall time   (in cores)
 *   power_w     = idle_w + min(utilisation, n_cpu) * watts_per_core, capped at tdp_w
 * Defaults: watts_per_core = tdp_w / n_cpu when tdp_w is given, else
 * EP_ESTIMATE_DEFAULT_W_PER_CORE; idle_w = 0 (the process's own share only; the
 * platform's idle draw is unknown without a sensor); tdp_w = no cap.
 * CPU time comes from getrusage(RUSAGE_SELF), which covers every thread of the
 * process (the sampler thread's own few microseconds included).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ep_errors.h"
#include "ep_source.h"

/* A middle-of-the-road figure for one busy modern x86/ARM core (laptop cores draw
 * ~2-5 W, desktop/server cores ~5-15 W): the estimate is only good to a factor of
 * about two without a value for this machine (docs/sources.md). */
#define EP_ESTIMATE_DEFAULT_W_PER_CORE 5.0

typedef struct {
    ep_source_counter counter; /* first: the shared poll/stop find it at src->state */
    double watts_per_core;
    double idle_w;
    double tdp_w;            /* 0 = no cap */
    int n_cpu;
    int64_t cpu_last_ns;
} est_state;

/* Process CPU time (user + system, all threads) in ns. */
static int cpu_time_ns(int64_t *out)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return EP_ERR_IO;
    *out = ((int64_t)ru.ru_utime.tv_sec + (int64_t)ru.ru_stime.tv_sec) * 1000000000LL +
           ((int64_t)ru.ru_utime.tv_usec + (int64_t)ru.ru_stime.tv_usec) * 1000LL;
    return EP_OK;
}

static int parse_watts(ep_source *src, const char *key, const char *text, double *out)
{
    double v = 0;
    if (ep_source_parse_double(text, &v) != EP_OK || v < 0) {
        snprintf(src->message, sizeof src->message, "estimate: %s must be a number of watts >= 0, got '%s'", key,
                 text);
        return EP_ERR_ARG;
    }
    *out = v;
    return EP_OK;
}

static int est_emit(ep_source *src, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out, size_t cap,
                    size_t *n_out)
{
    est_state *st = src->state;
    int64_t cpu_ns;
    if (t_now_ns <= st->counter.t_last_ns)
        return EP_OK;
    if (cpu_time_ns(&cpu_ns) != EP_OK) {
        src->faults++;
        snprintf(src->message, sizeof src->message, "estimate: getrusage failed");
        return EP_OK;
    }
    double util = (double)(cpu_ns - st->cpu_last_ns) / (double)(t_now_ns - st->counter.t_last_ns);
    if (util < 0)
        util = 0;
    if (util > st->n_cpu)
        util = st->n_cpu;
    double power_w = st->idle_w + util * st->watts_per_core;
    if (st->tdp_w > 0 && power_w > st->tdp_w)
        power_w = st->tdp_w;
    ep_sample *s = &out[0];
    ep_sample_init(s, st->counter.t_last_ns, t_now_ns, EP_KIND_INTERVAL, EP_SFLAG_ESTIMATED | extra_flags);
    s->power_w[EP_DOM_CPU] = power_w;
    st->counter.t_last_ns = t_now_ns;
    st->cpu_last_ns = cpu_ns;
    *n_out = 1;
    return EP_OK;
}

static int est_start(ep_source *src, int64_t t_now_ns)
{
    est_state *st = src->state;
    if (cpu_time_ns(&st->cpu_last_ns) != EP_OK) {
        snprintf(src->message, sizeof src->message, "estimate: getrusage failed");
        return EP_ERR_IO;
    }
    ep_source_counter_begin(&st->counter, t_now_ns);
    return EP_OK;
}

int ep_src_estimate_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    int rc = EP_ERR_NOMEM;
    int have_wpc = 0;
    est_state *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(src->message, sizeof src->message, "estimate: no memory");
        goto error;
    }
    for (size_t i = 0; i < n; i++) {
        double *dst = strcmp(keys[i], "watts_per_core") == 0 ? &st->watts_per_core
                      : strcmp(keys[i], "tdp_w") == 0        ? &st->tdp_w
                      : strcmp(keys[i], "idle_w") == 0       ? &st->idle_w
                                                             : NULL;
        if (!dst) {
            snprintf(src->message, sizeof src->message,
                     "estimate: unknown parameter '%s' (known: watts_per_core, tdp_w, idle_w)", keys[i]);
            rc = EP_ERR_ARG;
            goto error;
        }
        rc = parse_watts(src, keys[i], values[i], dst);
        if (rc != EP_OK)
            goto error;
        if (dst == &st->watts_per_core)
            have_wpc = 1;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    st->n_cpu = ncpu > 0 ? (int)ncpu : 1;
    if (!have_wpc)
        st->watts_per_core = st->tdp_w > 0 ? st->tdp_w / st->n_cpu : EP_ESTIMATE_DEFAULT_W_PER_CORE;
    src->kind = "estimate";
    src->flags = EP_SRC_ESTIMATED;
    src->period_ns = 100 * 1000 * 1000; /* getrusage is per-tick accurate; 10 Hz is plenty */
    st->counter.emit = est_emit;
    src->state = st;
    src->start = est_start;
    src->poll = ep_source_counter_poll;
    src->boundary = ep_source_counter_boundary;
    src->stop = ep_source_counter_stop;
    src->destroy = ep_source_free_state;
    char tdp_text[32] = "null"; /* no cap */
    if (st->tdp_w > 0)
        snprintf(tdp_text, sizeof tdp_text, "%.17g", st->tdp_w);
    snprintf(src->meta_json, sizeof src->meta_json,
             "{\"source\":\"estimate\",\"label\":\"estimated\",\"model\":\"idle_w + min(cpu_time/wall_time, "
             "n_cpu) * watts_per_core, capped at tdp_w\",\"watts_per_core\":%.17g,\"idle_w\":%.17g,"
             "\"tdp_w\":%s,\"n_cpu\":%d,\"cpu_time\":\"getrusage(RUSAGE_SELF)\",\"watts_per_core_from\":\"%s\"}",
             st->watts_per_core, st->idle_w, tdp_text, st->n_cpu,
             have_wpc ? "parameter" : st->tdp_w > 0 ? "tdp_w / n_cpu" : "default");
    return EP_OK;
error:
    free(st);
    src->state = NULL;
    src->destroy = NULL;
    return rc;
}
