/* ep_calls.c: pairing hook events into calls, filling structured rows (see ep_calls.h). */
#include "ep_calls.h"

#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"

/* A closed begin's slot holds CLOSED_BASE - (its end's index): always below -1, so it
 * never reads as an open link (an event index, or -1 for none below it). */
#define CLOSED_BASE (-2)

static inline int64_t rd_i64(const unsigned char *p)
{
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline int32_t rd_i32(const unsigned char *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

int ep_pair_spans(const void *events, int64_t n, size_t stride, size_t t_off, size_t sid_off, size_t kind_off,
                  int32_t *span_out, int64_t *begin_ns_out, int64_t *end_ns_out, int64_t *end_pos_out,
                  int64_t *n_out, int *sorted_out, char *detail, size_t detail_len)
{
    int rc = EP_OK;
    int64_t *top = NULL;  /* per span id: the latest open begin, -1 none (owned here) */
    int64_t *slot = NULL; /* per event: a begin's link to the open begin below it, or its end once closed (owned here) */
    const unsigned char *ev = events;
    *n_out = 0;
    *sorted_out = 1;
    if (detail && detail_len)
        detail[0] = '\0';
    if (n < 0 || (n > 0 && !events) || stride < t_off + 8 || stride < sid_off + 4 || stride < kind_off + 4) {
        ep_err_format(detail, detail_len, "negative count, NULL events or fields outside the record");
        rc = EP_ERR_ARG;
        goto error;
    }
    if (n == 0)
        goto error; /* rc == EP_OK: no calls */
    int32_t max_sid = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t sid = rd_i32(ev + (size_t)i * stride + sid_off);
        if (sid < 0) {
            ep_err_format(detail, detail_len, "events[%lld]: span_id=%d is negative", (long long)i, (int)sid);
            rc = EP_ERR_ARG;
            goto error;
        }
        max_sid = sid > max_sid ? sid : max_sid;
    }
    top = malloc(sizeof(int64_t) * ((size_t)max_sid + 1));
    slot = malloc(sizeof(int64_t) * (size_t)n);
    if (!top || !slot) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    for (int64_t k = 0; k <= max_sid; k++)
        top[k] = -1;
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *e = ev + (size_t)i * stride;
        int32_t sid = rd_i32(e + sid_off);
        if (rd_i32(e + kind_off) == 0) {
            slot[i] = top[sid];
            top[sid] = i;
        } else {
            slot[i] = -1; /* an end: never read as a begin */
            int64_t b = top[sid];
            if (b >= 0) {
                top[sid] = slot[b];
                slot[b] = CLOSED_BASE - i;
            }
        }
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (slot[i] > CLOSED_BASE - 1 || rd_i32(ev + (size_t)i * stride + kind_off) != 0)
            continue; /* an end, or a begin never closed */
        int64_t j = CLOSED_BASE - slot[i];
        const unsigned char *e = ev + (size_t)i * stride;
        int64_t b_ns = rd_i64(e + t_off), e_ns = rd_i64(ev + (size_t)j * stride + t_off);
        if (k > 0 && *sorted_out) {
            int64_t pb = begin_ns_out[k - 1], pe = end_ns_out[k - 1];
            if (b_ns < pb || (b_ns == pb && (e_ns > pe || (e_ns == pe && j < end_pos_out[k - 1]))))
                *sorted_out = 0;
        }
        span_out[k] = rd_i32(e + sid_off);
        begin_ns_out[k] = b_ns;
        end_ns_out[k] = e_ns;
        end_pos_out[k] = j;
        k++;
    }
    *n_out = k;
error:
    free(top);
    free(slot);
    return rc;
}

int ep_call_parents(const int32_t *span_ids, const int64_t *begin_ns, const int64_t *end_ns, int64_t n,
                    const int64_t *parent_span, int64_t n_spans, int32_t *parent_out, char *detail,
                    size_t detail_len)
{
    int rc = EP_OK;
    int64_t *up = NULL;   /* per span: the nearest ancestor span with calls, -1 none (owned here) */
    int64_t *last = NULL; /* per span: its last call beginning at or before the current time (owned here) */
    if (detail && detail_len)
        detail[0] = '\0';
    if (n < 0 || n_spans < 0 || (n > 0 && (!span_ids || !begin_ns || !end_ns || !parent_out || !parent_span))) {
        ep_err_format(detail, detail_len, "negative count or NULL buffer");
        rc = EP_ERR_ARG;
        goto error;
    }
    for (int64_t q = 0; q < n; q++) {
        if (span_ids[q] < 0 || span_ids[q] >= n_spans) {
            ep_err_format(detail, detail_len, "calls[%lld]: span id %d outside [0, %lld)", (long long)q,
                          (int)span_ids[q], (long long)n_spans);
            rc = EP_ERR_ARG;
            goto error;
        }
        if (q > 0 && begin_ns[q] < begin_ns[q - 1]) {
            ep_err_format(detail, detail_len, "calls[%lld]: begin %lld before the previous call's", (long long)q,
                          (long long)begin_ns[q]);
            rc = EP_ERR_UNSORTED;
            goto error;
        }
    }
    if (n == 0)
        goto error;
    up = malloc(sizeof(int64_t) * (size_t)n_spans);
    last = malloc(sizeof(int64_t) * (size_t)n_spans);
    if (!up || !last) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    for (int64_t k = 0; k < n_spans; k++)
        last[k] = -1;
    for (int64_t q = 0; q < n; q++)
        last[span_ids[q]] = 0; /* present (reset below) */
    for (int64_t k = 0; k < n_spans; k++) {
        int64_t p = parent_span[k];
        for (int64_t hops = 0; p >= 0 && p < n_spans && last[p] < 0 && hops < n_spans; hops++)
            p = parent_span[p]; /* an ancestor never called: look further up */
        up[k] = (p >= 0 && p < n_spans && last[p] >= 0) ? p : -1;
    }
    for (int64_t k = 0; k < n_spans; k++)
        last[k] = -1;
    for (int64_t g = 0; g < n;) {
        int64_t h = g; /* calls g .. h-1 begin at the same time: all of them count as "at or before" */
        for (; h < n && begin_ns[h] == begin_ns[g]; h++)
            last[span_ids[h]] = h;
        for (int64_t q = g; q < h; q++) {
            int64_t ps = up[span_ids[q]], c = ps >= 0 ? last[ps] : -1;
            parent_out[q] = (c >= 0 && end_ns[c] >= end_ns[q]) ? (int32_t)c : -1;
        }
        g = h;
    }
error:
    free(up);
    free(last);
    return rc;
}

void ep_fill_rows(void *rows, int64_t n_rows, size_t row_size, const ep_column *cols, int n_cols)
{
    unsigned char *base = rows;
    for (int64_t i = 0; i < n_rows; i++) {
        unsigned char *row = base + (size_t)i * row_size;
        for (int c = 0; c < n_cols; c++) {
            const ep_column *col = &cols[c];
            size_t at = col->n_values == 1 ? 0 : (size_t)i;
            const unsigned char *src = (const unsigned char *)col->values + at * col->size;
            switch (col->size) { /* fixed sizes compile to one move */
            case 1:
                row[col->offset] = *src;
                break;
            case 4:
                memcpy(row + col->offset, src, 4);
                break;
            case 8:
                memcpy(row + col->offset, src, 8);
                break;
            default:
                memcpy(row + col->offset, src, col->size);
            }
        }
    }
}
