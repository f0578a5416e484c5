/* ep_src_ioreport.c: the 'ioreport' power source: Apple Silicon energy without sudo.
 *
 * Spec: ioreport   (no parameters)
 *
 * Each poll takes a cumulative snapshot of IOReport's "Energy Model" channels
 * (ep_ioreport_live_snapshot, macOS only) and turns it and the previous one into
 * one INTERVAL sample with ep_ioreport_delta, which maps channels to the cpu, gpu,
 * ane and dram domains and flags faulty readings EP_SFLAG_SUSPECT (counted in
 * src->faults, described in src->message).  On other systems create returns
 * EP_ERR_UNSUPPORTED ("macOS only").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"
#include "ep_ioreport.h"
#include "ep_source.h"

typedef struct {
    ep_source_counter counter; /* first: the shared poll/stop find it at src->state */
    ep_ioreport_live *live;
    ep_ioreport_channel *prev, *cur; /* EP_IOREPORT_MAX_CHANNELS each, owned */
    size_t n_prev;
    ep_ioreport_state history;
} ior_state;

static int ior_start(ep_source *src, int64_t t_now_ns)
{
    ior_state *st = src->state;
    int rc = ep_ioreport_live_snapshot(st->live, st->prev, EP_IOREPORT_MAX_CHANNELS, &st->n_prev, src->message,
                                       sizeof src->message);
    if (rc != EP_OK)
        return rc;
    memset(&st->history, 0, sizeof st->history);
    ep_source_counter_begin(&st->counter, t_now_ns);
    return EP_OK;
}

static int ior_emit(ep_source *src, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out, size_t cap,
                    size_t *n_out)
{
    ior_state *st = src->state;
    size_t n_cur = 0;
    uint32_t faults = 0;
    char msg[EP_IOREPORT_MSG_LEN];
    if (t_now_ns <= st->counter.t_last_ns)
        return EP_OK;
    if (ep_ioreport_live_snapshot(st->live, st->cur, EP_IOREPORT_MAX_CHANNELS, &n_cur, src->message,
                                  sizeof src->message) != EP_OK) {
        src->faults++; /* keep the previous snapshot: the next one covers the gap */
        return EP_OK;
    }
    int rc = ep_ioreport_delta(&st->history, st->prev, st->n_prev, st->cur, n_cur, t_now_ns - st->counter.t_last_ns, &out[0],
                               &faults, msg, sizeof msg);
    if (rc != EP_OK)
        return rc;
    if (faults) {
        src->faults++;
        snprintf(src->message, sizeof src->message, "%s", msg);
    }
    out[0].t_start_ns = st->counter.t_last_ns;
    out[0].t_end_ns = t_now_ns;
    out[0].flags |= extra_flags;
    ep_ioreport_channel *tmp = st->prev;
    st->prev = st->cur;
    st->cur = tmp;
    st->n_prev = n_cur;
    st->counter.t_last_ns = t_now_ns;
    *n_out = 1;
    return EP_OK;
}

static void ior_destroy(ep_source *src)
{
    ior_state *st = src->state;
    if (!st)
        return;
    ep_ioreport_live_close(st->live);
    free(st->prev);
    free(st->cur);
    free(st);
    src->state = NULL;
}

int ep_src_ioreport_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    int rc = EP_ERR_ARG;
    ior_state *st = NULL;
    if (n > 0) {
        snprintf(src->message, sizeof src->message, "ioreport: unknown parameter '%s' (it takes none)", keys[0]);
        goto error;
    }
    rc = EP_ERR_NOMEM;
    st = calloc(1, sizeof *st);
    if (!st)
        goto error;
    src->state = st;
    src->destroy = ior_destroy;
    st->prev = calloc(EP_IOREPORT_MAX_CHANNELS, sizeof *st->prev);
    st->cur = calloc(EP_IOREPORT_MAX_CHANNELS, sizeof *st->cur);
    if (!st->prev || !st->cur)
        goto error;
    rc = ep_ioreport_live_open(&st->live, src->message, sizeof src->message);
    if (rc != EP_OK)
        goto error;
    src->kind = "ioreport";
    src->flags = 0;
    src->period_ns = 100 * 1000 * 1000; /* the Energy Model counters tick at ~1 ms; 10 Hz as powermetrics -i 100 */
    st->counter.emit = ior_emit;
    src->start = ior_start;
    src->poll = ep_source_counter_poll;
    src->boundary = ep_source_counter_boundary;
    src->stop = ep_source_counter_stop;
    snprintf(src->meta_json, sizeof src->meta_json,
             "{\"source\":\"ioreport\",\"group\":\"Energy Model\",\"label\":\"measured (Apple's energy model "
             "estimates, as powermetrics)\"}");
    return EP_OK;
error:
    if (rc == EP_ERR_NOMEM && !src->message[0])
        snprintf(src->message, sizeof src->message, "ioreport: no memory");
    /* ep_source_destroy runs ior_destroy through src->destroy. */
    return rc;
}
