/* ep_clock.h: the one clock of energyprof.
 *
 * Every timestamp in the system is CLOCK_MONOTONIC nanoseconds (mach_absolute_time
 * converted on macOS).  Wall-clock time is read once per run and never mixed in.
 */
#ifndef EP_CLOCK_H
#define EP_CLOCK_H
#include <stdint.h>

/* Monotonic time in ns.  Thread-safe, lock-free. */
int64_t ep_now_ns(void);

/* Tests can freeze the clock: when set (non-zero), ep_now_ns returns this value.
 * 0 restores the real clock.  Only for tests (yappi-style fixed timings). */
void ep_clock_set_fake_ns(int64_t t_ns);

/* Wall-clock (UTC) time in ns since the Unix epoch; read once per run. */
int64_t ep_wall_ns(void);

#endif
