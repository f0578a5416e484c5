/* ep_sampler.c: the sampler thread: timed, interruptible polling of one source.
 *
 * Lock order: the sampler lock is never held while calling the source or pushing
 * to the ring (the ring has its own lock), so a slow source never blocks drain or
 * the getters.  Every source call and its push happen under src_lock (the thread's
 * polls and the boundary reads of the hooks), so readings reach the ring in time
 * order; the locks nest only as boundary_lock > src_lock > the ring's lock.
 */
#include "ep_sampler.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep_clock.h"
#include "ep_errors.h"
#include "ep_thread_name.h"
#include "ep_ring.h"

/* Samples one poll call may return.  A paced source with a backlog (replay at
 * speed=max) is polled again in the same tick while it fills the buffer, up to
 * POLL_ROUNDS times, so a burst is drained quickly without an unbounded loop. */
#define POLL_CAP 256
#define POLL_ROUNDS 64
/* Shortest poll interval: below this the thread would spend its time waking up. */
#define MIN_INTERVAL_NS 10000

enum { ST_IDLE = 0, ST_STARTING, ST_RUNNING, ST_STOPPING };

struct ep_sampler {
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* one condition for all waits: tick, start handshake, stop */
    pthread_t thread;
    ep_source *src;           /* owned */
    ep_ring *ring;            /* owned */
    int64_t interval_ns;
    pthread_mutex_t src_lock; /* every source call + its push */
    int src_live;             /* under src_lock: started and not yet stopped */
    int64_t boundary_reads;   /* under src_lock */
    ep_sample bbuf[EP_SOURCE_READ_MAX]; /* under src_lock: the boundary read's buffer */

    /* Under lock. */
    int state;                /* ST_*: who may start/stop/join */
    int stop_requested;
    int start_done;
    int start_rc;
    int launched;             /* ep_sampler_launch ran and no ep_sampler_await_start has taken it up */
    int ended;                /* source hit EP_ERR_EOF */
    int64_t polls, late_ticks, samples;
    int64_t own_faults;       /* failed polls / starts / stops */
    int64_t src_faults;       /* snapshot of src->faults (the source writes it unlocked) */
    int64_t cpu_prev_runs_ns; /* thread CPU of finished runs */
    int64_t thread_cpu_ns;    /* cpu_prev_runs_ns + the current run so far */
    char last_src_msg[EP_SOURCE_MSG_LEN];
    char log[EP_SAMPLER_LOG][EP_SOURCE_MSG_LEN];
    int64_t n_log;

    /* Only the sampler thread touches this: the poll buffer. */
    ep_sample buf[POLL_CAP];
};

/* The process-wide boundary target (ep_sampler_set_boundary_target). */
static pthread_mutex_t boundary_lock = PTHREAD_MUTEX_INITIALIZER;
static ep_sampler *boundary_target; /* borrowed; under boundary_lock */
static int64_t sync_left;           /* forward starts still to synchronise (ep_sampler_arm_sync); under boundary_lock */

/* The real monotonic clock, for deadlines: ep_now_ns() may be frozen by tests,
 * and a frozen clock must not stop the thread from waking up. */
static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Wait on s->cond until deadline_ns (mono_ns clock) or a signal.  Lock held. */
static void wait_until_locked(ep_sampler *s, int64_t deadline_ns)
{
#ifdef __APPLE__
    /* macOS has no pthread_condattr_setclock: wait for the relative time left. */
    int64_t left = deadline_ns - mono_ns();
    if (left <= 0)
        return;
    struct timespec rel = {(time_t)(left / 1000000000LL), (long)(left % 1000000000LL)};
    pthread_cond_timedwait_relative_np(&s->cond, &s->lock, &rel);
#else
    struct timespec abs = {(time_t)(deadline_ns / 1000000000LL), (long)(deadline_ns % 1000000000LL)};
    pthread_cond_timedwait(&s->cond, &s->lock, &abs);
#endif
}

/* Append msg to the log unless it repeats the last entry.  Lock held. */
static void log_locked(ep_sampler *s, const char *msg)
{
    if (!msg || !msg[0])
        return;
    if (s->n_log > 0 && strcmp(s->log[(s->n_log - 1) % EP_SAMPLER_LOG], msg) == 0)
        return;
    snprintf(s->log[s->n_log % EP_SAMPLER_LOG], EP_SOURCE_MSG_LEN, "%s", msg);
    s->n_log++;
}

/* After a source call: copy its faults and any new message, count a failure.
 * what names the call for a failure without a source message.  Lock held. */
static void note_source_locked(ep_sampler *s, const char *what, int rc)
{
    ep_source *src = s->src;
    s->src_faults = src->faults;
    if (src->message[0] && strcmp(src->message, s->last_src_msg) != 0) {
        snprintf(s->last_src_msg, sizeof s->last_src_msg, "%s", src->message);
        log_locked(s, src->message);
    }
    if (rc == EP_OK)
        return;
    if (rc == EP_ERR_EOF) {
        char msg[EP_SOURCE_MSG_LEN];
        snprintf(msg, sizeof msg, "%s source ended (%s)", src->kind, what);
        log_locked(s, src->message[0] ? src->message : msg);
        return;
    }
    s->own_faults++;
    if (!src->message[0]) {
        char msg[EP_SOURCE_MSG_LEN];
        snprintf(msg, sizeof msg, "%s %s failed: %s", src->kind, what, ep_err_str(rc));
        log_locked(s, msg);
    }
}

/* Push n polled samples; count them.  Called without the sampler lock. */
static void push_samples(ep_sampler *s, size_t n, int64_t *produced)
{
    if (n > POLL_CAP)
        n = POLL_CAP; /* a source that claims more than the room it had is clamped */
    if (n)
        ep_ring_push(s->ring, s->buf, n); /* overflow is counted by the ring */
    *produced += (int64_t)n;
}

static void *sampler_main(void *arg)
{
    ep_sampler *s = arg;
    ep_thread_set_name("ep-sampler");
    ep_source *src = s->src;
    int64_t cpu0 = thread_cpu_ns();
    pthread_mutex_lock(&s->src_lock);
    int rc = src->start ? src->start(src, ep_now_ns()) : EP_OK;
    s->src_live = rc == EP_OK;
    pthread_mutex_unlock(&s->src_lock);

    pthread_mutex_lock(&s->lock);
    note_source_locked(s, "start", rc);
    s->start_rc = rc;
    s->start_done = 1;
    pthread_cond_broadcast(&s->cond);
    if (rc != EP_OK)
        goto out_locked;

    int64_t next_ns = mono_ns() + s->interval_ns;
    while (!s->stop_requested) {
        if (s->ended)
            pthread_cond_wait(&s->cond, &s->lock); /* nothing to poll: wait for stop */
        else
            wait_until_locked(s, next_ns);
        if (s->stop_requested)
            break;
        int64_t wake_ns = mono_ns();
        if (s->ended || wake_ns < next_ns)
            continue; /* spurious wakeup */
        pthread_mutex_unlock(&s->lock);

        int64_t produced = 0, polls = 0;
        pthread_mutex_lock(&s->src_lock);
        int64_t t_ns = ep_now_ns(); /* under src_lock: after every boundary read so far */
        for (int round = 0; round < POLL_ROUNDS; round++) {
            size_t n = 0;
            rc = src->poll(src, t_ns, s->buf, POLL_CAP, &n);
            polls++;
            push_samples(s, n, &produced);
            if (rc != EP_OK || n < POLL_CAP)
                break;
        }
        pthread_mutex_unlock(&s->src_lock);
        int64_t cpu = thread_cpu_ns() - cpu0;

        pthread_mutex_lock(&s->lock);
        s->polls += polls;
        s->samples += produced;
        s->thread_cpu_ns = s->cpu_prev_runs_ns + cpu;
        note_source_locked(s, "poll", rc);
        if (rc == EP_ERR_EOF)
            s->ended = 1;
        /* Next tick on the grid; ticks already past are skipped, not replayed. */
        next_ns += s->interval_ns;
        if (next_ns <= wake_ns) {
            int64_t missed = (wake_ns - next_ns) / s->interval_ns + 1;
            s->late_ticks += missed;
            next_ns += missed * s->interval_ns;
        }
    }
    pthread_mutex_unlock(&s->lock);

    /* Final flush, on this thread like every other source call. */
    {
        size_t n = 0;
        int64_t produced = 0;
        pthread_mutex_lock(&s->src_lock);
        s->src_live = 0;
        rc = src->stop ? src->stop(src, ep_now_ns(), s->buf, POLL_CAP, &n) : EP_OK;
        push_samples(s, n, &produced);
        pthread_mutex_unlock(&s->src_lock);
        pthread_mutex_lock(&s->lock);
        s->samples += produced;
        note_source_locked(s, "stop", rc == EP_ERR_EOF ? EP_OK : rc);
    }
out_locked:
    s->cpu_prev_runs_ns += thread_cpu_ns() - cpu0;
    s->thread_cpu_ns = s->cpu_prev_runs_ns;
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int ep_sampler_create(ep_source *src, int64_t interval_ns, size_t capacity, ep_sampler **out,
                      char *err, size_t errlen)
{
    int rc = EP_ERR_ARG;
    ep_sampler *s = NULL;
    pthread_condattr_t attr;
    int attr_ok = 0, lock_ok = 0;
    if (!src || !src->poll) {
        snprintf(err, errlen, "sampler needs a source with a poll function");
        goto error;
    }
    if (interval_ns <= 0)
        interval_ns = src->period_ns;
    if (interval_ns < MIN_INTERVAL_NS) {
        snprintf(err, errlen, "poll interval %lld ns is below the minimum of %d ns",
                 (long long)interval_ns, MIN_INTERVAL_NS);
        goto error;
    }
    if (capacity == 0) {
        snprintf(err, errlen, "ring capacity must be at least 1");
        goto error;
    }
    rc = EP_ERR_NOMEM;
    s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "no memory for the sampler");
        goto error;
    }
    s->src = src;
    src = NULL; /* owned by s from here: freed by ep_sampler_destroy */
    s->interval_ns = interval_ns;
    rc = ep_ring_create(capacity, &s->ring);
    if (rc != EP_OK) {
        snprintf(err, errlen, "cannot allocate a ring of %zu samples", capacity);
        goto error;
    }
    rc = EP_ERR_THREAD;
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        snprintf(err, errlen, "pthread_mutex_init failed");
        goto error;
    }
    if (pthread_mutex_init(&s->src_lock, NULL) != 0) {
        pthread_mutex_destroy(&s->lock);
        snprintf(err, errlen, "pthread_mutex_init failed");
        goto error;
    }
    lock_ok = 1;
    if (pthread_condattr_init(&attr) != 0) {
        snprintf(err, errlen, "pthread_condattr_init failed");
        goto error;
    }
    attr_ok = 1;
#ifndef __APPLE__
    /* Deadlines on CLOCK_MONOTONIC: a wall-clock jump must not stretch a wait. */
    if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0) {
        snprintf(err, errlen, "pthread_condattr_setclock(CLOCK_MONOTONIC) failed");
        goto error;
    }
#endif
    if (pthread_cond_init(&s->cond, &attr) != 0) {
        snprintf(err, errlen, "pthread_cond_init failed");
        goto error;
    }
    pthread_condattr_destroy(&attr);
    *out = s;
    return EP_OK;
error:
    if (attr_ok)
        pthread_condattr_destroy(&attr);
    if (lock_ok) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->src_lock);
    }
    if (s) {
        ep_ring_destroy(s->ring);
        ep_source_destroy(s->src);
        free(s);
    }
    ep_source_destroy(src);
    return rc;
}

void ep_sampler_destroy(ep_sampler *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&boundary_lock);
    if (boundary_target == s)
        boundary_target = NULL;
    pthread_mutex_unlock(&boundary_lock);
    ep_sampler_stop(s);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->src_lock);
    ep_ring_destroy(s->ring);
    ep_source_destroy(s->src);
    free(s);
}

int ep_sampler_launch(ep_sampler *s, char *err, size_t errlen)
{
    int rc = EP_ERR_STATE;
    pthread_mutex_lock(&s->lock);
    if (s->state != ST_IDLE) {
        pthread_mutex_unlock(&s->lock);
        snprintf(err, errlen, "sampler is already running");
        goto error;
    }
    s->state = ST_STARTING;
    s->stop_requested = 0;
    s->start_done = 0;
    s->start_rc = EP_OK;
    s->ended = 0;
    s->launched = 1;
    pthread_mutex_unlock(&s->lock);

    if (pthread_create(&s->thread, NULL, sampler_main, s) != 0) {
        rc = EP_ERR_THREAD;
        snprintf(err, errlen, "cannot create the sampler thread");
        pthread_mutex_lock(&s->lock);
        s->state = ST_IDLE;
        s->launched = 0;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        goto error;
    }
    return EP_OK;
error:
    return rc;
}

int ep_sampler_await_start(ep_sampler *s, char *err, size_t errlen)
{
    int rc = EP_ERR_STATE;
    pthread_mutex_lock(&s->lock);
    if (!s->launched) { /* nothing to finish here: another caller finished it, or none was launched */
        while (s->state == ST_STARTING)
            pthread_cond_wait(&s->cond, &s->lock);
        rc = s->state == ST_RUNNING ? EP_OK : EP_ERR_STATE;
        pthread_mutex_unlock(&s->lock);
        if (rc != EP_OK)
            snprintf(err, errlen, "sampler was not started");
        goto error;
    }
    s->launched = 0; /* this caller finishes the start */
    while (!s->start_done)
        pthread_cond_wait(&s->cond, &s->lock);
    rc = s->start_rc;
    if (rc == EP_OK) {
        s->state = ST_RUNNING;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        return EP_OK;
    }
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL); /* the thread exits right after a failed start */
    pthread_mutex_lock(&s->lock);
    snprintf(err, errlen, "%s", s->src->message[0] ? s->src->message : ep_err_str(rc));
    s->state = ST_IDLE;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
error:
    return rc;
}

int ep_sampler_start(ep_sampler *s, char *err, size_t errlen)
{
    int rc = ep_sampler_launch(s, err, errlen);
    return rc == EP_OK ? ep_sampler_await_start(s, err, errlen) : rc;
}

void ep_sampler_request_stop(ep_sampler *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->state == ST_RUNNING) {
        s->stop_requested = 1;
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
}

int ep_sampler_stop(ep_sampler *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->launched) { /* a launched start nobody finished: finish it (its failure leaves it idle) */
        char err[8];
        pthread_mutex_unlock(&s->lock);
        ep_sampler_await_start(s, err, sizeof err);
        pthread_mutex_lock(&s->lock);
    }
    /* Only one caller joins: others wait until the sampler is idle or running. */
    while (s->state == ST_STARTING || s->state == ST_STOPPING)
        pthread_cond_wait(&s->cond, &s->lock);
    if (s->state != ST_RUNNING) {
        pthread_mutex_unlock(&s->lock);
        return EP_OK;
    }
    s->state = ST_STOPPING;
    s->stop_requested = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);

    int rc = pthread_join(s->thread, NULL) == 0 ? EP_OK : EP_ERR_THREAD;

    pthread_mutex_lock(&s->lock);
    s->state = ST_IDLE;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

size_t ep_sampler_drain(ep_sampler *s, ep_sample *out, size_t cap)
{
    return ep_ring_drain(s->ring, out, cap);
}

size_t ep_sampler_pending(ep_sampler *s)
{
    return ep_ring_count(s->ring);
}

void ep_sampler_get_stats(ep_sampler *s, ep_sampler_stats *st)
{
    memset(st, 0, sizeof *st);
    st->dropped = ep_ring_dropped(s->ring);
    st->pending = (int64_t)ep_ring_count(s->ring);
    pthread_mutex_lock(&s->lock);
    st->running = s->state == ST_RUNNING || s->state == ST_STOPPING;
    st->ended = s->ended;
    st->interval_ns = s->interval_ns;
    st->polls = s->polls;
    st->late_ticks = s->late_ticks;
    st->samples = s->samples;
    st->faults = s->src_faults + s->own_faults;
    st->thread_cpu_ns = s->thread_cpu_ns;
    st->n_messages = s->n_log;
    pthread_mutex_unlock(&s->lock);
}

void ep_sampler_last_message(ep_sampler *s, char *buf, size_t len)
{
    pthread_mutex_lock(&s->lock);
    snprintf(buf, len, "%s", s->n_log ? s->log[(s->n_log - 1) % EP_SAMPLER_LOG] : "");
    pthread_mutex_unlock(&s->lock);
}

size_t ep_sampler_messages(ep_sampler *s, char (*out)[EP_SOURCE_MSG_LEN], size_t cap)
{
    pthread_mutex_lock(&s->lock);
    int64_t kept = s->n_log < EP_SAMPLER_LOG ? s->n_log : EP_SAMPLER_LOG;
    size_t n = (size_t)kept < cap ? (size_t)kept : cap;
    for (size_t i = 0; i < n; i++) {
        int64_t idx = s->n_log - (int64_t)n + (int64_t)i;
        memcpy(out[i], s->log[idx % EP_SAMPLER_LOG], EP_SOURCE_MSG_LEN);
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

const ep_source *ep_sampler_source(const ep_sampler *s)
{
    return s->src;
}

/* One boundary reading under the source lock, plain (sync == 0: src->boundary at *t_ns) or
 * synchronised (src->sync, which may move *t_ns on), pushed to the ring and counted. */
static int sampler_boundary(ep_sampler *s, int64_t *t_ns, int sync)
{
    int rc = EP_OK;
    size_t n = 0;
    int64_t produced = 0;
    if (!(sync ? (void *)s->src->sync : (void *)s->src->boundary))
        return EP_ERR_UNSUPPORTED;
    pthread_mutex_lock(&s->src_lock);
    if (!s->src_live) {
        rc = EP_ERR_STATE;
        goto error;
    }
    if (sync)
        rc = s->src->sync(s->src, t_ns, s->bbuf, sizeof s->bbuf / sizeof s->bbuf[0], &n);
    else
        rc = s->src->boundary(s->src, *t_ns, s->bbuf, sizeof s->bbuf / sizeof s->bbuf[0], &n);
    if (n > sizeof s->bbuf / sizeof s->bbuf[0])
        n = sizeof s->bbuf / sizeof s->bbuf[0];
    if (n) {
        ep_ring_push(s->ring, s->bbuf, n);
        produced = (int64_t)n;
        s->boundary_reads++;
    }
    pthread_mutex_unlock(&s->src_lock);
    if (produced) {
        pthread_mutex_lock(&s->lock);
        s->samples += produced;
        pthread_mutex_unlock(&s->lock);
    }
    return rc;
error:
    pthread_mutex_unlock(&s->src_lock);
    return rc;
}

int ep_sampler_boundary_read(ep_sampler *s, int64_t t_ns)
{
    return sampler_boundary(s, &t_ns, 0);
}

int ep_sampler_boundary_sync(ep_sampler *s, int64_t *t_ns)
{
    return sampler_boundary(s, t_ns, 1);
}

int ep_sampler_arm_sync(ep_sampler *s, int64_t n_starts)
{
    if (!s->src->sync)
        return EP_ERR_UNSUPPORTED;
    pthread_mutex_lock(&boundary_lock);
    sync_left = n_starts > 0 ? n_starts : 0;
    pthread_mutex_unlock(&boundary_lock);
    return EP_OK;
}

void ep_sampler_sync_stats(ep_sampler *s, int64_t out[4])
{
    pthread_mutex_lock(&s->src_lock);
    out[0] = s->src->sync_update_ns;
    out[1] = s->src->sync_edges;
    out[2] = s->src->sync_timeouts;
    out[3] = s->src->sync_waited_ns;
    pthread_mutex_unlock(&s->src_lock);
}

int ep_sampler_set_boundary_target(ep_sampler *s)
{
    if (s && !s->src->boundary)
        return EP_ERR_UNSUPPORTED;
    pthread_mutex_lock(&boundary_lock);
    boundary_target = s;
    sync_left = 0;
    pthread_mutex_unlock(&boundary_lock);
    return EP_OK;
}

void ep_boundary_fire(int64_t *t_ns, int end)
{
    pthread_mutex_lock(&boundary_lock);
    if (boundary_target) {
        /* not started / too late: no sample */
        if (!end && sync_left > 0 && boundary_target->src->sync) {
            sync_left--;
            (void)ep_sampler_boundary_sync(boundary_target, t_ns);
        } else {
            (void)ep_sampler_boundary_read(boundary_target, *t_ns);
        }
    }
    pthread_mutex_unlock(&boundary_lock);
}

int64_t ep_sampler_boundary_reads(ep_sampler *s)
{
    pthread_mutex_lock(&s->src_lock);
    int64_t n = s->boundary_reads;
    pthread_mutex_unlock(&s->src_lock);
    return n;
}

int64_t ep_sampler_counter_still_ns(ep_sampler *s)
{
    pthread_mutex_lock(&s->src_lock);
    int64_t n = s->src->counter_still_ns;
    pthread_mutex_unlock(&s->src_lock);
    return n;
}
