/* ep_clock.c: CLOCK_MONOTONIC nanoseconds (mach_absolute_time on macOS). */
#include "ep_clock.h"

#include <stdatomic.h>
#include <time.h>
#ifdef __APPLE__
#include <mach/mach_time.h>
#endif

static _Atomic int64_t fake_ns = 0;

int64_t ep_now_ns(void)
{
    int64_t fake = atomic_load_explicit(&fake_ns, memory_order_relaxed);
    if (fake)
        return fake;
#ifdef __APPLE__
    /* mach_absolute_time ticks are converted with the timebase; numer/denom is 1/1
     * on Intel and 125/3 on Apple Silicon.  Multiply in 128 bits: no overflow. */
    static mach_timebase_info_data_t tb;
    if (tb.denom == 0)
        mach_timebase_info(&tb);
    return (int64_t)((__uint128_t)mach_absolute_time() * tb.numer / tb.denom);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

void ep_clock_set_fake_ns(int64_t t_ns)
{
    atomic_store_explicit(&fake_ns, t_ns, memory_order_relaxed);
}

int64_t ep_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
