/* test_ring.c: the sample ring keeps order across wraparound, drains partially,
 * and counts every sample it drops (the newest ones) when full. */
#include <string.h>

#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_ring.h"

static ep_sample mk(int64_t i)
{
    ep_sample s;
    memset(&s, 0, sizeof s);
    s.t_start_ns = i;
    s.t_end_ns = i + 1;
    s.kind = EP_KIND_INTERVAL;
    s.power_w[0] = (double)i;
    return s;
}

EP_TEST(ring_rejects_zero_capacity)
{
    ep_ring *r = NULL;
    EP_CHECK(ep_ring_create(0, &r) == EP_ERR_ARG);
    EP_CHECK(r == NULL);
}

EP_TEST(ring_fifo_with_wraparound)
{
    ep_ring *r = NULL;
    EP_CHECK(ep_ring_create(5, &r) == EP_OK);
    ep_sample in[3], out[8];
    int64_t next_in = 0, next_out = 0;
    /* Push 3, drain 2, repeatedly: head and tail walk around the buffer many times. */
    for (int round = 0; round < 50; round++) {
        for (int k = 0; k < 3; k++)
            in[k] = mk(next_in++);
        EP_CHECK(ep_ring_push(r, in, 3) == EP_OK);
        size_t got = ep_ring_drain(r, out, 2);
        EP_CHECK(got == 2);
        for (size_t k = 0; k < got; k++)
            EP_CHECK(out[k].t_start_ns == next_out++);
        if (ep_ring_count(r) >= 3) {
            got = ep_ring_drain(r, out, 8);
            for (size_t k = 0; k < got; k++)
                EP_CHECK(out[k].t_start_ns == next_out++ && out[k].power_w[0] == (double)out[k].t_start_ns);
        }
    }
    EP_CHECK(ep_ring_dropped(r) == 0);
    EP_CHECK(ep_ring_pushed(r) == next_in);
    EP_CHECK((int64_t)ep_ring_count(r) == next_in - next_out);
    ep_ring_destroy(r);
}

EP_TEST(ring_overflow_drops_newest_and_counts)
{
    ep_ring *r = NULL;
    EP_CHECK(ep_ring_create(4, &r) == EP_OK);
    ep_sample in[10], out[10];
    for (int k = 0; k < 10; k++)
        in[k] = mk(k);
    EP_CHECK(ep_ring_push(r, in, 3) == EP_OK);
    EP_CHECK(ep_ring_push(r, in + 3, 7) == EP_ERR_FULL); /* room for 1 of 7 */
    EP_CHECK(ep_ring_dropped(r) == 6);
    EP_CHECK(ep_ring_pushed(r) == 4);
    EP_CHECK(ep_ring_capacity(r) == 4);
    size_t got = ep_ring_drain(r, out, 10);
    EP_CHECK(got == 4);
    for (size_t k = 0; k < got; k++)
        EP_CHECK(out[k].t_start_ns == (int64_t)k); /* the oldest are kept */
    EP_CHECK(ep_ring_push(r, NULL, 0) == EP_OK);
    EP_CHECK(ep_ring_drain(r, out, 10) == 0);
    ep_ring_destroy(r);
    ep_ring_destroy(NULL);
}
