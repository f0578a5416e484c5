/* ep_hooks.c: the span buffer (see ep_hooks.h).
 *
 * Why a mutex: appends come from hook calls on the model's thread(s).  With the
 * GIL they never truly race, but free-threaded Python and C callers without the
 * GIL (a device-event callback thread, later) can append concurrently, and drain
 * must see a consistent (array, length) pair while the buffer may be realloc'ed.
 * An uncontended pthread mutex costs ~20 ns, two orders of magnitude below
 * torch's own hook dispatch (~1 us), so a lock-free ring would buy nothing
 * measurable and would need a fixed size (no growth).
 */
#include "ep_hooks.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"

/* First allocation: 4096 events = 64 KiB, enough for a few decode steps of a small
 * model; larger runs double from there (about 10 reallocs to reach 1<<22). */
#define INITIAL_EVENTS ((size_t)4096)

struct ep_spanbuf {
    pthread_mutex_t lock;
    ep_event *events;     /* owned; allocated_n slots, len used */
    size_t len;
    size_t allocated_n;
    size_t capacity_max;
    uint64_t dropped;
    int fault;            /* ep_spanbuf_inject_fault: non-zero fails every append */
};

_Static_assert(sizeof(ep_event) == 16, "ep_event must match EVENT_DTYPE (16 bytes)");
_Static_assert(offsetof(ep_event, t_ns) == 0, "EVENT_DTYPE t_ns at 0");
_Static_assert(offsetof(ep_event, span_id) == 8, "EVENT_DTYPE span_id at 8");
_Static_assert(offsetof(ep_event, kind) == 12, "EVENT_DTYPE kind at 12");

int ep_spanbuf_new(size_t capacity_max, ep_spanbuf **out)
{
    int rc = EP_OK;
    ep_spanbuf *b = NULL;
    *out = NULL;
    /* SIZE_MAX / sizeof(ep_event) keeps allocated_n * sizeof(ep_event) from overflowing. */
    if (capacity_max < 1 || capacity_max > SIZE_MAX / sizeof(ep_event)) {
        rc = EP_ERR_ARG;
        goto error;
    }
    b = calloc(1, sizeof *b);
    if (!b) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    if (pthread_mutex_init(&b->lock, NULL) != 0) {
        free(b);
        b = NULL;
        rc = EP_ERR_THREAD;
        goto error;
    }
    b->capacity_max = capacity_max;
    /* Allocate up front so the first hook calls do not pay for a malloc. */
    b->allocated_n = capacity_max < INITIAL_EVENTS ? capacity_max : INITIAL_EVENTS;
    b->events = malloc(b->allocated_n * sizeof(ep_event));
    if (!b->events) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    *out = b;
    return EP_OK;
error:
    ep_spanbuf_free(b);
    return rc;
}

void ep_spanbuf_free(ep_spanbuf *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->lock);
    free(b->events);
    free(b);
}

/* Called with the lock held: make room for one more event.  0 on success. */
static int grow_locked(ep_spanbuf *b)
{
    if (b->allocated_n >= b->capacity_max)
        return -1;
    size_t n = b->allocated_n * 2;
    if (n > b->capacity_max)
        n = b->capacity_max;
    ep_event *p = realloc(b->events, n * sizeof(ep_event));
    if (!p)
        return -1; /* the old block is intact; the event is dropped and counted */
    b->events = p;
    b->allocated_n = n;
    return 0;
}

int ep_spanbuf_append(ep_spanbuf *b, int64_t t_ns, int32_t span_id, int32_t kind)
{
    int rc = EP_OK;
    pthread_mutex_lock(&b->lock);
    if (b->fault) {
        rc = b->fault;
        goto error;
    }
    if (b->len == b->allocated_n && grow_locked(b) != 0) {
        b->dropped++;
        rc = EP_ERR_FULL;
        goto error;
    }
    ep_event *e = &b->events[b->len++];
    e->t_ns = t_ns;
    e->span_id = span_id;
    e->kind = kind;
    pthread_mutex_unlock(&b->lock);
    return EP_OK;
error:
    pthread_mutex_unlock(&b->lock);
    return rc;
}

size_t ep_spanbuf_drain(ep_spanbuf *b, ep_event *dst, size_t cap)
{
    pthread_mutex_lock(&b->lock);
    size_t n = b->len < cap ? b->len : cap;
    if (n)
        memcpy(dst, b->events, n * sizeof(ep_event));
    /* Only when a concurrent append raced between the caller's len() and this
     * drain: keep the younger events at the front, in order. */
    if (n < b->len)
        memmove(b->events, b->events + n, (b->len - n) * sizeof(ep_event));
    b->len -= n;
    pthread_mutex_unlock(&b->lock);
    return n;
}

size_t ep_spanbuf_len(ep_spanbuf *b)
{
    pthread_mutex_lock(&b->lock);
    size_t n = b->len;
    pthread_mutex_unlock(&b->lock);
    return n;
}

uint64_t ep_spanbuf_dropped(ep_spanbuf *b)
{
    pthread_mutex_lock(&b->lock);
    uint64_t n = b->dropped;
    pthread_mutex_unlock(&b->lock);
    return n;
}

size_t ep_spanbuf_capacity(ep_spanbuf *b)
{
    return b->capacity_max; /* fixed at creation: no lock needed */
}

void ep_spanbuf_clear(ep_spanbuf *b)
{
    pthread_mutex_lock(&b->lock);
    b->len = 0;
    b->dropped = 0;
    pthread_mutex_unlock(&b->lock);
}

void ep_spanbuf_inject_fault(ep_spanbuf *b, int code)
{
    pthread_mutex_lock(&b->lock);
    b->fault = code;
    pthread_mutex_unlock(&b->lock);
}
