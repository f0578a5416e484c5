/* ep_calls.h: the call rows of a run from its hook events, after the block.
 *
 * ep_pair_spans pairs the begin/end events of the hook span buffer into calls (one pass,
 * a stack per span id threaded through one index array); ep_fill_rows writes columns
 * into the fields of structured rows in one pass over the rows (numpy's per-field
 * assignment walks the rows once per field).  Twins in energyprof/_reference.py:
 * pair_span_events and fill_rows.
 */
#ifndef EP_CALLS_H
#define EP_CALLS_H

#include <stddef.h>
#include <stdint.h>

/* Pair n events into calls.  The events are records of `stride` bytes (borrowed, read only):
 * t_ns (int64) at byte t_off, span_id (int32) at sid_off, kind (int32, 0 begin, else end) at
 * kind_off.  Per span id a begin opens a call and an end closes the latest open one (calls
 * entered again nest like a stack); an end with nothing open is ignored, a begin never
 * closed (the forward raised) gives no call.
 * Outputs (caller-owned, room for n / 2 calls each): span_out, begin_ns_out, end_ns_out and
 * end_pos_out (the end event's index) of each call, in the order of their begin events;
 * *n_out calls; *sorted_out 1 when that order is already sorted by (begin asc, end desc,
 * end_pos asc), else 0 (the caller sorts).
 * EP_OK, EP_ERR_ARG (negative span id, bad sizes; detail names it) or EP_ERR_NOMEM.
 * Never touches Python. */
int ep_pair_spans(const void *events, int64_t n, size_t stride, size_t t_off, size_t sid_off, size_t kind_off,
                  int32_t *span_out, int64_t *begin_ns_out, int64_t *end_ns_out, int64_t *end_pos_out,
                  int64_t *n_out, int *sorted_out, char *detail, size_t detail_len);

/* The enclosing call of each of n calls (sorted by begin_ns, non-decreasing, else EP_ERR_UNSORTED):
 * call q's parent span is the nearest ancestor of its span (parent_span[], n_spans entries,
 * -1 = none; borrowed) that has calls in this run; its parent is the last call of that
 * span (in call order) beginning at or before q, if that call also ends at or after q;
 * else -1.  span_ids, begin_ns, end_ns: n each (borrowed); parent_out: n (caller-owned).
 * EP_OK, EP_ERR_ARG (a span id outside [0, n_spans)), EP_ERR_UNSORTED or EP_ERR_NOMEM. */
int ep_call_parents(const int32_t *span_ids, const int64_t *begin_ns, const int64_t *end_ns, int64_t n,
                    const int64_t *parent_span, int64_t n_spans, int32_t *parent_out, char *detail,
                    size_t detail_len);

/* One column for ep_fill_rows: n_values values of `size` bytes (borrowed; n_values 1 is
 * broadcast to every row) copied to byte `offset` of each row. */
typedef struct {
    const void *values;
    int64_t n_values;
    size_t size;
    size_t offset;
} ep_column;

/* Copy n_cols columns into n_rows rows of row_size bytes (rows: caller-owned, written only
 * at the columns' bytes; cols borrowed).  The caller checks that every column fits its row
 * (offset + size <= row_size) and has n_rows or 1 values. */
void ep_fill_rows(void *rows, int64_t n_rows, size_t row_size, const ep_column *cols, int n_cols);

#endif
