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

/* Hand-worked: model [0, 1000) > layer [100, 900) > attn [200, 500) > q_proj [250, 300),
 * an inheriting op [320, 340) inside attn, then norm [500, 520), mlp [600, 800). */
EP_TEST(component_stack_innermost_kind)
{
    ep_activity_set(0, 0);
    int64_t a0 = ep_activity_comp_ns_at(EP_COMP_ATTN, 0), m0 = ep_activity_comp_ns_at(EP_COMP_MLP, 0);
    int64_t o0 = ep_activity_comp_ns_at(EP_COMP_OTHER, 0);
    ep_activity_comp_begin(EP_COMP_OTHER, 0);     /* model */
    ep_activity_comp_begin(EP_COMP_OTHER, 100);   /* layer */
    ep_activity_comp_begin(EP_COMP_ATTN, 200);    /* attn */
    ep_activity_comp_begin(EP_COMP_ATTN, 250);    /* q_proj */
    ep_activity_comp_end(300);
    ep_activity_comp_begin(EP_COMP_INHERIT, 320); /* a deep op: attention still */
    EP_CHECK(ep_activity_comp_current() == EP_COMP_ATTN);
    ep_activity_comp_end(340);
    ep_activity_comp_end(500);                    /* attn ends */
    ep_activity_comp_begin(EP_COMP_OTHER, 500);   /* norm */
    ep_activity_comp_end(520);
    ep_activity_comp_begin(EP_COMP_MLP, 600);
    EP_CHECK(ep_activity_comp_ns_at(EP_COMP_MLP, 700) - m0 == 100); /* mid-call */
    ep_activity_comp_end(800);
    ep_activity_comp_end(900);                    /* layer */
    ep_activity_comp_end(1000);                   /* model */
    ep_activity_comp_end(1100);                   /* nothing runs: ignored */
    EP_CHECK(ep_activity_comp_ns_at(EP_COMP_ATTN, 2000) - a0 == 300);
    EP_CHECK(ep_activity_comp_ns_at(EP_COMP_MLP, 2000) - m0 == 200);
    EP_CHECK(ep_activity_comp_ns_at(EP_COMP_OTHER, 2000) - o0 == 500);  /* 1000 running - 300 - 200 */
    EP_CHECK(ep_activity_comp_current() == EP_COMP_OTHER);
    EP_CHECK(ep_activity_comp_ns_at(7, 2000) == 0);
    /* A reset ends every running call. */
    ep_activity_set(1, 3000);
    ep_activity_comp_begin(EP_COMP_MLP, 3000);
    ep_activity_set(0, 3050);
    EP_CHECK(ep_activity_comp_ns_at(EP_COMP_MLP, 4000) - m0 == 250);
}

/* Hand-worked: the hooks' one-lock begin / end keep level, active time and kinds as the
 * separate calls do: model [1000, 1400) > attn [1100, 1300), then an end with nothing running. */
EP_TEST(call_begin_end_level_and_kind)
{
    ep_activity_set(0, 0);
    int64_t act0 = ep_activity_active_ns_at(1000);
    int64_t a0 = ep_activity_comp_ns_at(EP_COMP_ATTN, 1000), o0 = ep_activity_comp_ns_at(EP_COMP_OTHER, 1000);
    ep_activity_call_begin(EP_COMP_OTHER, 1000);
    ep_activity_call_begin(EP_COMP_ATTN, 1100);
    EP_CHECK(ep_activity_level() == 2);
    EP_CHECK(ep_activity_comp_current() == EP_COMP_ATTN);
    ep_activity_call_end(1300);
    EP_CHECK(ep_activity_level() == 1);
    EP_CHECK(ep_activity_comp_current() == EP_COMP_OTHER);
    ep_activity_call_end(1400);
    ep_activity_call_end(1500); /* nothing runs: level stays 0, no time counted */
    EP_CHECK(ep_activity_level() == 0);
    EP_CHECK(ep_activity_active_ns_at(2000) - act0 == 400);
    EP_CHECK(ep_activity_comp_ns_at(EP_COMP_ATTN, 2000) - a0 == 200);
    EP_CHECK(ep_activity_comp_ns_at(EP_COMP_OTHER, 2000) - o0 == 200);
}
