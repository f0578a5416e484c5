/* ep_ring.c: bounded sample ring, one mutex, overflow counted. */
#include "ep_ring.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"

struct ep_ring {
    pthread_mutex_t lock;
    ep_sample *buf;      /* owned: capacity records */
    size_t capacity;
    size_t head;         /* index of the oldest sample */
    size_t count;        /* samples stored */
    int64_t dropped;     /* samples refused because the ring was full */
    int64_t pushed;      /* samples accepted */
};

int ep_ring_create(size_t capacity, ep_ring **out)
{
    int rc = EP_ERR_ARG;
    ep_ring *ring = NULL;
    /* The upper bound keeps capacity * sizeof(ep_sample) far from SIZE_MAX. */
    if (capacity == 0 || capacity > ((size_t)1 << 32))
        goto error;
    rc = EP_ERR_NOMEM;
    ring = calloc(1, sizeof *ring);
    if (!ring)
        goto error;
    ring->buf = malloc(capacity * sizeof *ring->buf);
    if (!ring->buf)
        goto error;
    if (pthread_mutex_init(&ring->lock, NULL) != 0) {
        rc = EP_ERR_THREAD;
        goto error;
    }
    ring->capacity = capacity;
    *out = ring;
    return EP_OK;
error:
    if (ring)
        free(ring->buf);
    free(ring);
    return rc;
}

void ep_ring_destroy(ep_ring *ring)
{
    if (!ring)
        return;
    pthread_mutex_destroy(&ring->lock);
    free(ring->buf);
    free(ring);
}

int ep_ring_push(ep_ring *ring, const ep_sample *samples, size_t n)
{
    pthread_mutex_lock(&ring->lock);
    size_t room = ring->capacity - ring->count;
    size_t take = n < room ? n : room;
    size_t tail = (ring->head + ring->count) % ring->capacity;
    /* At most two memcpy: up to the end of the buffer, then from its start. */
    size_t first = ring->capacity - tail;
    if (first > take)
        first = take;
    /* take == 0 skips memcpy: samples may be NULL when n == 0. */
    if (take) {
        memcpy(ring->buf + tail, samples, first * sizeof *samples);
        memcpy(ring->buf, samples + first, (take - first) * sizeof *samples);
    }
    ring->count += take;
    ring->pushed += (int64_t)take;
    ring->dropped += (int64_t)(n - take);
    pthread_mutex_unlock(&ring->lock);
    return take == n ? EP_OK : EP_ERR_FULL;
}

size_t ep_ring_drain(ep_ring *ring, ep_sample *out, size_t cap)
{
    pthread_mutex_lock(&ring->lock);
    size_t take = ring->count < cap ? ring->count : cap;
    size_t first = ring->capacity - ring->head;
    if (first > take)
        first = take;
    if (take) {
        memcpy(out, ring->buf + ring->head, first * sizeof *out);
        memcpy(out + first, ring->buf, (take - first) * sizeof *out);
    }
    ring->head = (ring->head + take) % ring->capacity;
    ring->count -= take;
    pthread_mutex_unlock(&ring->lock);
    return take;
}

size_t ep_ring_count(ep_ring *ring)
{
    pthread_mutex_lock(&ring->lock);
    size_t n = ring->count;
    pthread_mutex_unlock(&ring->lock);
    return n;
}

size_t ep_ring_capacity(const ep_ring *ring)
{
    return ring->capacity;
}

int64_t ep_ring_dropped(ep_ring *ring)
{
    pthread_mutex_lock(&ring->lock);
    int64_t d = ring->dropped;
    pthread_mutex_unlock(&ring->lock);
    return d;
}

int64_t ep_ring_pushed(ep_ring *ring)
{
    pthread_mutex_lock(&ring->lock);
    int64_t p = ring->pushed;
    pthread_mutex_unlock(&ring->lock);
    return p;
}
