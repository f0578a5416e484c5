/* ep_sampler.h: one native thread per sampler, polling a source into a ring.
 *
 * The thread never touches Python or the GIL.  It sleeps on a condition variable
 * with a timed wait on CLOCK_MONOTONIC (a relative wait on macOS), so stop wakes
 * it at once instead of after the current interval.  Ticks are scheduled on an
 * absolute grid (start + k * interval) so the poll rate does not drift; a tick
 * that is already past is skipped rather than replayed in a burst (the source
 * then reports one longer interval: nothing is lost).
 *
 * Threading: create/start/stop/destroy come from the owner (the Python face, with
 * the GIL released around the blocking parts); drain and the getters may be
 * called from any thread at any time.
 */
#ifndef EP_SAMPLER_H
#define EP_SAMPLER_H
#include <stddef.h>
#include <stdint.h>

#include "ep_sample.h"
#include "ep_source.h"

typedef struct ep_sampler ep_sampler;

/* How many recent messages ep_sampler_messages keeps. */
#define EP_SAMPLER_LOG 16

typedef struct {
    int running;            /* started and not yet stopped                              */
    int ended;              /* the source reported EP_ERR_EOF: polling has ended        */
    int64_t interval_ns;    /* the poll interval in use                                 */
    int64_t polls;          /* poll calls made, all runs                                */
    int64_t late_ticks;     /* ticks skipped because the thread woke after the next one */
    int64_t samples;        /* samples the source produced (pushed + dropped)           */
    int64_t dropped;        /* samples dropped because the ring was full                */
    int64_t pending;        /* samples waiting in the ring                              */
    int64_t faults;         /* source-reported faults + failed polls/starts/stops       */
    int64_t thread_cpu_ns;  /* CPU time of the sampler thread(s), all runs              */
    int64_t n_messages;     /* messages logged so far (the last EP_SAMPLER_LOG are kept) */
} ep_sampler_stats;

/* Make a sampler for src polling every interval_ns (<= 0: src->period_ns) into a
 * ring of capacity samples.  Takes ownership of src in every case (it is destroyed
 * on failure).  On success *out owns a new sampler (free with ep_sampler_destroy);
 * on failure returns EP_ERR_* and writes a message to err. */
int ep_sampler_create(ep_source *src, int64_t interval_ns, size_t capacity, ep_sampler **out,
                      char *err, size_t errlen);

/* Stop (if running), then free the sampler, its ring and its source (NULL is fine). */
void ep_sampler_destroy(ep_sampler *s);

/* Start the thread; it calls src->start(now) and then polls.  Blocks until
 * src->start has returned, so a source that cannot start fails here: the thread is
 * joined and its EP_ERR_* returned with the message in err.  EP_ERR_STATE when
 * already running.  A stopped sampler may be started again (same source). */
int ep_sampler_start(ep_sampler *s, char *err, size_t errlen);

/* ep_sampler_start in two halves, so the caller can work while the thread starts the
 * source: launch creates the thread (EP_ERR_STATE when already running, EP_ERR_THREAD);
 * await_start blocks until src->start has returned and gives what ep_sampler_start would
 * (EP_ERR_STATE when nothing was launched).  A stop before the await finishes the start
 * itself first. */
int ep_sampler_launch(ep_sampler *s, char *err, size_t errlen);
int ep_sampler_await_start(ep_sampler *s, char *err, size_t errlen);

/* Ask a running thread to stop without waiting: it takes the final flush and exits on its
 * own; ep_sampler_stop still joins it.  No-op unless running. */
void ep_sampler_request_stop(ep_sampler *s);

/* Signal the thread, join it; before exiting it calls src->stop(now) once and
 * pushes the final flush.  Blocks (release the GIL around it).  Idempotent:
 * EP_OK when not running.  A concurrent stop waits for the first one. */
int ep_sampler_stop(ep_sampler *s);

/* Move up to cap of the oldest samples into out (caller-owned), oldest first.
 * Returns how many. */
size_t ep_sampler_drain(ep_sampler *s, ep_sample *out, size_t cap);

/* Samples waiting in the ring (snapshot). */
size_t ep_sampler_pending(ep_sampler *s);

/* Snapshot of the counters into *st (caller-owned).  The ring and thread counters
 * are read under their own locks one after the other: exact once stopped. */
void ep_sampler_get_stats(ep_sampler *s, ep_sampler_stats *st);

/* Copy the most recent message (or "") into buf (caller-owned, len bytes). */
void ep_sampler_last_message(ep_sampler *s, char *buf, size_t len);

/* Copy up to cap of the most recent messages, oldest first, into out
 * (caller-owned array of cap buffers).  Returns how many were copied. */
size_t ep_sampler_messages(ep_sampler *s, char (*out)[EP_SOURCE_MSG_LEN], size_t cap);

/* Boundary reads: a reading of the source at t_ns taken from the calling thread (a
 * forward hook), pushed to the ring like a poll's, so windows that start or end there
 * are integrated from readings at their edges.  Never touches Python.
 * ep_sampler_boundary_read: EP_OK (a sample pushed, or none when the sampler read at or
 * after t_ns already), EP_ERR_UNSUPPORTED (the source has no boundary read),
 * EP_ERR_STATE (not started).  Serialised with the sampler thread's source calls. */
int ep_sampler_boundary_read(ep_sampler *s, int64_t t_ns);
/* The one process-wide target of ep_boundary_fire: s (NULL clears).  A sampler being
 * destroyed clears itself.  Returns EP_ERR_UNSUPPORTED (and sets nothing) when s's
 * source has no boundary read. */
int ep_sampler_set_boundary_target(ep_sampler *s);
/* A boundary read of the current target at *t_ns (nothing when there is none); end: 0 at a
 * forward's start, 1 at its end.  While forward starts are armed (ep_sampler_arm_sync) and
 * the source can, a start's read is synchronised instead (ep_sampler_boundary_sync) and
 * *t_ns moves on to the reading's time: the caller starts the forward there. */
void ep_boundary_fire(int64_t *t_ns, int end);
/* A synchronised boundary read (ep_source.sync): wait for the counter to move and read it
 * then; *t_ns moves on to that time.  EP_ERR_UNSUPPORTED without src->sync, EP_ERR_STATE
 * when not started.  Waits with the calling thread only (the GIL released by the caller),
 * at most two update periods and a millisecond. */
int ep_sampler_boundary_sync(ep_sampler *s, int64_t *t_ns);
/* Synchronise the boundary reads of the next n_starts forward starts (2 = a generate()'s
 * prefill: the first forward's start and the second's); 0 disarms.  Setting a new target
 * disarms.  EP_ERR_UNSUPPORTED when s's source has no synchronised read. */
int ep_sampler_arm_sync(ep_sampler *s, int64_t n_starts);
/* The source's sync_* figures under the source lock: out = {update period in use (ns),
 * starts synchronised, timeouts, total wait (ns)}. */
void ep_sampler_sync_stats(ep_sampler *s, int64_t out[4]);
/* Boundary reads that pushed a sample, since creation. */
int64_t ep_sampler_boundary_reads(ep_sampler *s);
/* The source's counter_still_ns (ep_source.h), read under the source lock. */
int64_t ep_sampler_counter_still_ns(ep_sampler *s);

/* The source (borrowed; owned by the sampler).  kind, flags, period_ns are fixed
 * at create; meta_json may be completed by src->start: read it after start. */
const ep_source *ep_sampler_source(const ep_sampler *s);

#endif
