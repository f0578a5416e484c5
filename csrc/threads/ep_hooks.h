/* ep_hooks.h: the span buffer that the forward hooks append to.
 *
 * One event per hook call: (t_ns, span_id, kind), kind 0 = begin, 1 = end.  The
 * record matches energyprof._dtypes.EVENT_DTYPE byte for byte (16 bytes, no
 * padding), so a drain is one memcpy into a numpy array.
 *
 * The buffer grows by doubling up to a maximum capacity fixed at creation.  An
 * append into a full buffer is dropped and counted (ep_spanbuf_dropped), never
 * silent and never an error for the caller: the profiler must not break the model.
 *
 * Thread safety: every function may be called from any thread.  One mutex guards
 * the buffer; see ep_hooks.c for why a mutex and not a lock-free ring.
 * This header includes no Python.h (the Python face is ep_module_hooks.c).
 */
#ifndef EP_HOOKS_H
#define EP_HOOKS_H
#include <stddef.h>
#include <stdint.h>

#define EP_SPAN_BEGIN 0
#define EP_SPAN_END 1

/* Default maximum capacity in events: 1<<22 events = 64 MiB, ~40 min of a
 * 12-layer model with ~15 hooked modules per layer at 20 tokens/s. */
#define EP_SPANBUF_DEFAULT_CAPACITY ((size_t)1 << 22)

typedef struct {
    int64_t t_ns;     /* ep_now_ns() of the hook call */
    int32_t span_id;  /* which module (the session's numbering) */
    int32_t kind;     /* EP_SPAN_BEGIN or EP_SPAN_END */
} ep_event;

typedef struct ep_spanbuf ep_spanbuf;

/* Create a buffer holding at most capacity_max events (>= 1).  On EP_OK the
 * caller owns *out and frees it with ep_spanbuf_free. */
int ep_spanbuf_new(size_t capacity_max, ep_spanbuf **out);
/* Free the buffer and its events (NULL is fine).  No other thread may use it. */
void ep_spanbuf_free(ep_spanbuf *b);

/* Append one event.  O(1) amortised (a doubling realloc now and then).
 * EP_OK, or EP_ERR_FULL when the event was dropped (full, or growth failed):
 * the drop is counted.  Any other code comes only from ep_spanbuf_inject_fault. */
int ep_spanbuf_append(ep_spanbuf *b, int64_t t_ns, int32_t span_id, int32_t kind);

/* Copy the oldest min(len, cap) events into dst (owned by the caller, room for
 * cap events) and remove them from the buffer; younger events stay, in order.
 * Returns the number copied. */
size_t ep_spanbuf_drain(ep_spanbuf *b, ep_event *dst, size_t cap);

/* Events currently held. */
size_t ep_spanbuf_len(ep_spanbuf *b);
/* Events dropped since creation or the last ep_spanbuf_clear. */
uint64_t ep_spanbuf_dropped(ep_spanbuf *b);
/* Maximum capacity (events). */
size_t ep_spanbuf_capacity(ep_spanbuf *b);
/* Forget all events and reset the dropped counter (keeps the allocation). */
void ep_spanbuf_clear(ep_spanbuf *b);

/* Tests only (apsw-style fault injection): while code != EP_OK every append
 * fails with that code, without storing or counting, so the error paths of the
 * callers (hooks disabling themselves) can be exercised.  EP_OK turns it off. */
void ep_spanbuf_inject_fault(ep_spanbuf *b, int code);

#endif
