/* ep_source.h: the interface every power source implements, and the registry.
 *
 * A source is polled by the sampler thread (ep_sampler.c).  It never touches
 * Python or the GIL.  Parameters arrive as validated key=value strings (the Python
 * side, energyprof/sources.py, checks them first so the C code can trust their
 * shape; sources still reject values they cannot use with EP_ERR_ARG + message).
 *
 * Life cycle, all calls from one thread at a time:
 *   ep_source_create(kind, keys, values, n, &src, err, errlen)   (caller thread)
 *   src->start(src, t_now_ns)        (sampler thread, once, before the first poll)
 *   src->poll(src, t_now_ns, out, cap, &n_out)   (sampler thread, every interval)
 *   src->stop(src, t_now_ns, out, cap, &n_out)   (sampler thread, once: flush a final sample)
 *   ep_source_destroy(src)           (caller thread, after the sampler joined)
 */
#ifndef EP_SOURCE_H
#define EP_SOURCE_H
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ep_clock.h"
#include "ep_errors.h"
#include "ep_sample.h"

/* Source-level flags (copied into every sample's flags where relevant). */
enum {
    EP_SRC_SIMULATED = 1u << 0,  /* synthetic: every figure is labelled simulated */
    EP_SRC_ESTIMATED = 1u << 1,  /* estimate: every figure is labelled estimated  */
    EP_SRC_PACED     = 1u << 2,  /* the source paces itself (replay, subprocess): poll is only a check */
};

#define EP_SOURCE_MSG_LEN 256
#define EP_SOURCE_META_LEN 4096
/* The most samples one poll / boundary / stop call of any source writes (nvml: the sum and
 * one per device); callers give at least this much room. */
#define EP_SOURCE_READ_MAX 32

typedef struct ep_source ep_source;
struct ep_source {
    const char *kind;          /* static string: "synthetic", "plist", ...          */
    uint32_t flags;            /* EP_SRC_*                                          */
    int64_t period_ns;         /* preferred poll period; the sampler uses it when the
                                  caller gives none                                  */
    void *state;               /* owned by the source; freed by destroy              */

    /* Return EP_OK or an EP_ERR_*; on error write a message to src->message. */
    int (*start)(ep_source *src, int64_t t_now_ns);
    /* Write up to cap samples to out; *n_out = how many.  Non-blocking.
     * EP_ERR_EOF means the source has ended for good (replay done, child exited):
     * the samples written in the same call are still valid. */
    int (*poll)(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out);
    /* Final flush: a last (possibly short) sample up to t_now_ns; release devices. */
    int (*stop)(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out);
    /* Free state (may be NULL). */
    void (*destroy)(ep_source *src);
    /* Boundary read (NULL: unsupported): like poll, at t_now_ns, from another thread
     * than the sampler's (a hook), serialised with the sampler's calls by its source
     * lock; the sample it writes is flagged EP_SFLAG_BOUNDARY.  Counter sources use
     * ep_source_counter_boundary. */
    int (*boundary)(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out);
    /* Synchronised boundary read (NULL: unsupported), for counters that move in updates
     * (rapl), at a forward's start: called like boundary, under the same lock, it waits
     * for the counter to move and reads it then, moving *t_now_ns on to that instant (the
     * forward starts there), so the reading is fresh rather than up to one update stale.
     * Counter sources use ep_source_counter_sync. */
    int (*sync)(ep_source *src, int64_t *t_now_ns, ep_sample *out, size_t cap, size_t *n_out);

    /* Faults the source recovered from (skipped malformed documents, read errors);
     * written by the sampler thread only, read after join or under the sampler lock. */
    int64_t faults;
    char message[EP_SOURCE_MSG_LEN];   /* last fault or error, "" if none */
    /* JSON object text with facts for the run metadata (device name, driver, model
     * constants).  Filled by create or start; "" when the source has none. */
    char meta_json[EP_SOURCE_META_LEN];
    /* A counter source that skips stale reads (the counter had not moved since the last
     * reading) writes here the longest span it saw the counter unchanged, ns: a lower
     * bound on the counter's update period.  Written by the source calls (serialised by
     * the sampler's source lock); 0 when never seen. */
    int64_t counter_still_ns;
    /* Synchronised reads (src->sync), written under the sampler's source lock:
     * the counter's update period in use (ns: the source's nominal one, refined from the
     * moves seen), edges synchronised, waits that timed out (the counter did not move
     * within twice its period: that edge is a plain read), and the total time spent
     * waiting (ns). */
    int64_t sync_update_ns;
    int64_t sync_edges;
    int64_t sync_timeouts;
    int64_t sync_waited_ns;
};

/* Create a source of the given kind.  keys/values: n parameter pairs (borrowed,
 * copied as needed).  On success *out owns a new source (free with
 * ep_source_destroy).  On failure returns EP_ERR_* and writes a message to err. */
int ep_source_create(const char *kind, const char *const *keys, const char *const *values,
                     size_t n, ep_source **out, char *err, size_t errlen);

/* Free a source made by ep_source_create (NULL is fine). */
void ep_source_destroy(ep_source *src);

/* Per-kind constructors, called by ep_source_create.  Each fills a zeroed *src
 * (already allocated by the registry) and returns EP_OK or an EP_ERR_* with the
 * message written to src->message. */
typedef int (*ep_source_ctor)(ep_source *src, const char *const *keys,
                              const char *const *values, size_t n);

/* Look up a parameter: value for key, or NULL when absent. */
const char *ep_source_param(const char *const *keys, const char *const *values, size_t n,
                            const char *key);

/* The first of the n keys that is not in known (a NULL-terminated list), or NULL when
 * every key is known.  Borrowed from keys.  The message naming it stays with each
 * source (synthetic, powermetrics, rapl). */
const char *ep_source_unknown_key(const char *const *keys, size_t n, const char *const *known);

/* Parse a whole parameter value as a finite double (no trailing text, no inf/nan):
 * EP_OK and *out set, or EP_ERR_ARG and *out untouched.  text is borrowed.  Range
 * and message stay with each source (synthetic, estimate), which differ there. */
int ep_source_parse_double(const char *text, double *out);

/* destroy for a source whose state is one calloc'ed block with nothing inside to
 * release (synthetic, estimate, rapl): frees src->state and clears it. */
void ep_source_free_state(ep_source *src);

/* Counter sources (estimate, rapl, nvml, ioreport) turn each reading and the one
 * before it into one sample over [t_last_ns, t_now_ns); poll and stop differ only
 * in the EP_SFLAG_FINAL flag and in stop ending the run.  Such a source puts an
 * ep_source_counter FIRST in its state (so src->state points at it), sets emit, ends
 * its start with ep_source_counter_begin, and uses ep_source_counter_poll /
 * ep_source_counter_stop as src->poll / src->stop. */
typedef int (*ep_source_emit_fn)(ep_source *src, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out,
                                 size_t cap, size_t *n_out);
typedef struct {
    /* One sampling step: called only when started and cap > 0, with *n_out already 0;
     * writes at most out[0].  extra_flags go into the sample's flags. */
    ep_source_emit_fn emit;
    int64_t t_last_ns; /* end of the last emitted interval (start time before the first) */
    int started;       /* set by ep_source_counter_begin, cleared by ep_source_counter_stop */
    /* For ep_source_counter_sync (NULL where unsupported): the raw counter now, one number
     * that changes whenever the counter moves (rapl: its first zone's uJ); EP_OK or an
     * EP_ERR_*. */
    int (*raw)(ep_source *src, int64_t *value);
    /* Moves seen by sync: the last one's time, and sums that refine the update period. */
    int64_t tick_last_ns, tick_sum_ns, tick_count;
} ep_source_counter;

/* The poll and stop below live here, static inline, rather than in ep_source.c so a
 * source file still links without the registry (tests/fake_ioreport/drive.c links
 * ep_src_ioreport.c alone).  The checks every counter step starts with: */
static inline int ep_source_counter_step(ep_source *src, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out,
                                         size_t cap, size_t *n_out)
{
    ep_source_counter *c = (ep_source_counter *)src->state;
    *n_out = 0;
    if (!c->started)
        return EP_ERR_STATE;
    if (cap == 0)
        return EP_OK;
    return c->emit(src, t_now_ns, extra_flags, out, cap, n_out);
}

/* The end of a counter source's start, once its first reading is taken: the first
 * interval begins at t_now_ns. */
static inline void ep_source_counter_begin(ep_source_counter *c, int64_t t_now_ns)
{
    c->t_last_ns = t_now_ns;
    c->started = 1;
}

/* src->poll of a counter source: EP_ERR_STATE before start, else emit with no extra flags. */
static inline int ep_source_counter_poll(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap,
                                         size_t *n_out)
{
    return ep_source_counter_step(src, t_now_ns, 0, out, cap, n_out);
}

/* src->boundary of a counter source: a reading at t_now_ns flagged EP_SFLAG_BOUNDARY (nothing
 * when t_now_ns is not after the last reading: the sampler read it first). */
static inline int ep_source_counter_boundary(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap,
                                             size_t *n_out)
{
    return ep_source_counter_step(src, t_now_ns, EP_SFLAG_BOUNDARY, out, cap, n_out);
}

/* Note a move of the counter seen at t_ns; refine src->sync_update_ns from the gaps between
 * moves: a gap of k periods (k = the gap / the period in use, rounded, within a quarter
 * period of a whole number) adds gap / k to a running mean, once at least 4 periods are in. */
static inline void ep_source_counter_tick(ep_source *src, ep_source_counter *c, int64_t t_ns)
{
    if (c->tick_last_ns > 0 && src->sync_update_ns > 0) {
        int64_t gap = t_ns - c->tick_last_ns;
        int64_t k = (gap + src->sync_update_ns / 2) / src->sync_update_ns;
        int64_t off = gap - k * src->sync_update_ns;
        if (off < 0)
            off = -off;
        if (k >= 1 && k <= 100000 && off < src->sync_update_ns / 4) {
            c->tick_sum_ns += gap;
            c->tick_count += k;
            if (c->tick_count >= 4)
                src->sync_update_ns = c->tick_sum_ns / c->tick_count;
        }
    }
    c->tick_last_ns = t_ns;
}

/* Monotonic wall time for the wait's own deadline (ep_now_ns may be frozen by a test). */
static inline int64_t ep_source_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Wait (reading c->raw, GIL already released by the caller) until the counter differs from
 * `from`, at most 2 update periods + 1 ms.  Returns 1 and *t_ns = the time it was seen to
 * move, or 0 (timeout or a read error) with *t_ns = now. */
static inline int ep_source_counter_wait_move(ep_source *src, ep_source_counter *c, int64_t from, int64_t *t_ns)
{
    int64_t w0 = ep_source_wall_ns(), t0 = ep_now_ns(), t = t0, v = from;
    int64_t cap = 2 * src->sync_update_ns + 1000000;
    int moved = 0;
    while (ep_source_wall_ns() - w0 < cap) {
        if (c->raw(src, &v) != EP_OK)
            break;
        t = ep_now_ns();
        if (v != from) {
            moved = 1;
            break;
        }
    }
    if (!moved)
        t = ep_now_ns();
    src->sync_waited_ns += ep_source_wall_ns() - w0;
    if (moved)
        ep_source_counter_tick(src, c, t);
    else
        src->sync_timeouts++;
    *t_ns = t;
    return moved;
}

/* src->sync of a counter source with c->raw (see ep_source.sync): wait for the counter to
 * move, then read it there and move *t_now_ns on to that instant.  A wait that times out
 * (the counter did not move) is a plain boundary read at the time it gave up. */
static inline int ep_source_counter_sync(ep_source *src, int64_t *t_now_ns, ep_sample *out, size_t cap,
                                         size_t *n_out)
{
    ep_source_counter *c = (ep_source_counter *)src->state;
    int64_t v = 0, t_move = 0;
    *n_out = 0;
    if (!c->started)
        return EP_ERR_STATE;
    if (!c->raw)
        return EP_ERR_ARG;
    src->sync_edges++;
    if (c->raw(src, &v) != EP_OK)
        return ep_source_counter_step(src, *t_now_ns, EP_SFLAG_BOUNDARY, out, cap, n_out);
    int moved = ep_source_counter_wait_move(src, c, v, &t_move);
    *t_now_ns = t_move;
    return ep_source_counter_step(src, t_move, EP_SFLAG_BOUNDARY | (moved ? EP_SFLAG_SYNCED : 0), out, cap, n_out);
}

/* src->stop of a counter source: emit a final sample flagged EP_SFLAG_FINAL, then mark it stopped. */
static inline int ep_source_counter_stop(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap,
                                         size_t *n_out)
{
    int rc = ep_source_counter_step(src, t_now_ns, EP_SFLAG_FINAL, out, cap, n_out);
    ((ep_source_counter *)src->state)->started = 0;
    return rc;
}

/* Append s to the NUL-terminated string dst (cap bytes in all) as JSON string content:
 * '"' and '\\' backslash-escaped, control characters as a 6-byte u00XX escape.  Stops early rather
 * than cut an escape when dst fills.  dst is the caller's; s is borrowed.  Shared by
 * the sources that put paths and names into meta_json (plist, powermetrics, rapl). */
void ep_source_json_escape(char *dst, size_t cap, const char *s);

#endif
