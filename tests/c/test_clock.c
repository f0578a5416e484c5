/* test_clock.c: the clock is monotonic; the activity level accumulates active time. */
#include "ep_activity.h"
#include "ep_clock.h"
#include "ep_ctest.h"

EP_TEST(clock_monotonic)
{
    int64_t a = ep_now_ns();
    for (int i = 0; i < 1000; i++) {
        int64_t b = ep_now_ns();
        EP_CHECK(b >= a);
        a = b;
    }
    ep_clock_set_fake_ns(42);
    EP_CHECK(ep_now_ns() == 42);
    ep_clock_set_fake_ns(0);
    EP_CHECK(ep_now_ns() > 42);
}

EP_TEST(activity_accumulates)
{
    ep_activity_set(0, 0);
    int64_t base = ep_activity_active_ns_at(100);
    ep_activity_add(1, 100);
    ep_activity_add(1, 150);  /* nested: still one active span */
    ep_activity_add(-1, 180);
    ep_activity_add(-1, 200);
    EP_CHECK(ep_activity_active_ns_at(300) - base == 100);
    ep_activity_add(1, 400);
    EP_CHECK(ep_activity_active_ns_at(450) - base == 150);
    ep_activity_set(0, 500);
    EP_CHECK(ep_activity_level() == 0);
    EP_CHECK(ep_activity_active_ns_at(600) - base == 200);
}
