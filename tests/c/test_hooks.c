/* test_hooks.c: the span buffer: order, growth up to the cap, counted drops,
 * partial drains, fault injection and concurrent appends from several threads. */
#include <pthread.h>
#include <stdlib.h>

#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_hooks.h"

EP_TEST(spanbuf_layout)
{
    /* EVENT_DTYPE is <i8 t_ns, <i4 span_id, <i4 kind: 16 bytes. */
    EP_CHECK(sizeof(ep_event) == 16);
}

EP_TEST(spanbuf_bad_capacity)
{
    ep_spanbuf *b = (ep_spanbuf *)1;
    EP_CHECK(ep_spanbuf_new(0, &b) == EP_ERR_ARG);
    EP_CHECK(b == NULL);
}

EP_TEST(spanbuf_grows_keeps_order_and_counts_drops)
{
    /* 10000 > the first allocation (4096): two doublings, then the cap. */
    const size_t cap = 10000, n = 12345;
    ep_spanbuf *b = NULL;
    EP_CHECK(ep_spanbuf_new(cap, &b) == EP_OK);
    if (!b)
        return;
    size_t full = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = ep_spanbuf_append(b, (int64_t)(1000 + i), (int32_t)(i % 7), (int32_t)(i & 1));
        if (rc == EP_ERR_FULL)
            full++;
        else
            EP_CHECK(rc == EP_OK);
    }
    EP_CHECK(full == n - cap);
    EP_CHECK(ep_spanbuf_dropped(b) == n - cap);
    EP_CHECK(ep_spanbuf_len(b) == cap);
    EP_CHECK(ep_spanbuf_capacity(b) == cap);
    ep_event *out = malloc(cap * sizeof *out);
    size_t got = ep_spanbuf_drain(b, out, cap);
    EP_CHECK(got == cap);
    int ok = 1;
    for (size_t i = 0; i < got; i++)
        ok &= out[i].t_ns == (int64_t)(1000 + i) && out[i].span_id == (int32_t)(i % 7) &&
              out[i].kind == (int32_t)(i & 1);
    EP_CHECK(ok);
    EP_CHECK(ep_spanbuf_len(b) == 0);
    /* After a drain there is room again; the drop count stays until clear. */
    EP_CHECK(ep_spanbuf_append(b, 1, 2, EP_SPAN_BEGIN) == EP_OK);
    EP_CHECK(ep_spanbuf_dropped(b) == n - cap);
    ep_spanbuf_clear(b);
    EP_CHECK(ep_spanbuf_len(b) == 0 && ep_spanbuf_dropped(b) == 0);
    free(out);
    ep_spanbuf_free(b);
}

EP_TEST(spanbuf_partial_drain_keeps_the_rest_in_order)
{
    ep_spanbuf *b = NULL;
    EP_CHECK(ep_spanbuf_new(100, &b) == EP_OK);
    if (!b)
        return;
    for (int i = 0; i < 10; i++)
        ep_spanbuf_append(b, i, i, 0);
    ep_event out[4];
    EP_CHECK(ep_spanbuf_drain(b, out, 4) == 4);
    EP_CHECK(out[0].t_ns == 0 && out[3].t_ns == 3);
    EP_CHECK(ep_spanbuf_len(b) == 6);
    ep_event rest[10];
    EP_CHECK(ep_spanbuf_drain(b, rest, 10) == 6);
    EP_CHECK(rest[0].t_ns == 4 && rest[5].t_ns == 9 && rest[5].span_id == 9);
    EP_CHECK(ep_spanbuf_drain(b, rest, 10) == 0);
    ep_spanbuf_free(b);
}

EP_TEST(spanbuf_fault_injection)
{
    ep_spanbuf *b = NULL;
    EP_CHECK(ep_spanbuf_new(8, &b) == EP_OK);
    if (!b)
        return;
    ep_spanbuf_inject_fault(b, EP_ERR_NOMEM);
    EP_CHECK(ep_spanbuf_append(b, 1, 1, 0) == EP_ERR_NOMEM);
    EP_CHECK(ep_spanbuf_len(b) == 0 && ep_spanbuf_dropped(b) == 0);
    ep_spanbuf_inject_fault(b, EP_OK);
    EP_CHECK(ep_spanbuf_append(b, 1, 1, 0) == EP_OK);
    ep_spanbuf_free(b);
}

#define N_THREADS 4
#define PER_THREAD 20000

typedef struct {
    ep_spanbuf *b;
    int32_t id;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    for (int i = 0; i < PER_THREAD; i++)
        ep_spanbuf_append(a->b, i, a->id, i & 1);
    return NULL;
}

EP_TEST(spanbuf_concurrent_appends_lose_nothing)
{
    /* Capacity below the total: stored + dropped must still add up exactly, and
     * each thread's own events must stay in its order. */
    const size_t cap = (size_t)N_THREADS * PER_THREAD - 1234;
    ep_spanbuf *b = NULL;
    EP_CHECK(ep_spanbuf_new(cap, &b) == EP_OK);
    if (!b)
        return;
    pthread_t th[N_THREADS];
    worker_arg args[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        args[t].b = b;
        args[t].id = t;
        pthread_create(&th[t], NULL, worker, &args[t]);
    }
    /* Drain while they append: a racing drain must not lose or reorder events. */
    ep_event *all = malloc((size_t)N_THREADS * PER_THREAD * sizeof *all);
    size_t total = 0;
    ep_event chunk[777];
    for (int k = 0; k < 50; k++)
        for (size_t got; (got = ep_spanbuf_drain(b, chunk, 777)) > 0;) {
            for (size_t i = 0; i < got; i++)
                all[total + i] = chunk[i];
            total += got;
        }
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(th[t], NULL);
    for (size_t got; (got = ep_spanbuf_drain(b, chunk, 777)) > 0;) {
        for (size_t i = 0; i < got; i++)
            all[total + i] = chunk[i];
        total += got;
    }
    EP_CHECK(total + ep_spanbuf_dropped(b) == (size_t)N_THREADS * PER_THREAD);
    int64_t last[N_THREADS] = {-1, -1, -1, -1};
    int ordered = 1;
    for (size_t i = 0; i < total; i++) {
        int32_t id = all[i].span_id;
        ordered &= id >= 0 && id < N_THREADS && all[i].t_ns > last[id];
        if (id >= 0 && id < N_THREADS)
            last[id] = all[i].t_ns;
    }
    EP_CHECK(ordered);
    free(all);
    ep_spanbuf_free(b);
}
