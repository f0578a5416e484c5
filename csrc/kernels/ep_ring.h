/* ep_ring.h: a bounded ring of ep_sample records between the sampler thread and
 * the drain.
 *
 * One mutex guards everything: the producer (sampler thread) pushes a few samples
 * per poll and the consumer drains a batch every ~200 ms, so contention is rare
 * and a lock is simpler to reason about than a lock-free queue.  When the ring is
 * full the NEWEST samples are dropped and counted in `dropped` (never silently):
 * keeping the oldest keeps the recorded timeline contiguous up to the gap.
 */
#ifndef EP_RING_H
#define EP_RING_H
#include <stddef.h>
#include <stdint.h>

#include "ep_sample.h"

typedef struct ep_ring ep_ring;

/* Make a ring holding up to capacity samples (capacity >= 1).  On success *out
 * owns a new ring (free with ep_ring_destroy); EP_ERR_ARG / EP_ERR_NOMEM otherwise. */
int ep_ring_create(size_t capacity, ep_ring **out);

/* Free a ring (NULL is fine).  No thread may use it any more. */
void ep_ring_destroy(ep_ring *ring);

/* Copy n samples (borrowed) into the ring.  Returns EP_OK when all fit, or
 * EP_ERR_FULL when some were dropped (the newest ones; counted in dropped). */
int ep_ring_push(ep_ring *ring, const ep_sample *samples, size_t n);

/* Move up to cap of the oldest samples into out (caller-owned, room for cap),
 * oldest first, in one critical section.  Returns how many were copied; the rest
 * stay in the ring for the next drain. */
size_t ep_ring_drain(ep_ring *ring, ep_sample *out, size_t cap);

/* Samples waiting to be drained (a snapshot: may grow right after). */
size_t ep_ring_count(ep_ring *ring);

/* Capacity given at create. */
size_t ep_ring_capacity(const ep_ring *ring);

/* Samples dropped because the ring was full, since create. */
int64_t ep_ring_dropped(ep_ring *ring);

/* Samples accepted by push, since create (drained or not). */
int64_t ep_ring_pushed(ep_ring *ring);

#endif
