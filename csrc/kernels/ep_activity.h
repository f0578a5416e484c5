/* ep_activity.h: the process-wide activity level that hooks raise and lower.
 *
 * The synthetic source's active_w adds power while the level is > 0.  To make that
 * exactly computable, the level keeps the cumulative time it has been > 0
 * (ep_activity_active_ns_at): power in [a, b) is active_w * (A(b) - A(a)) / (b - a).
 */
#ifndef EP_ACTIVITY_H
#define EP_ACTIVITY_H
#include <stdint.h>

/* Add delta (+1 / -1) to the level at time t_ns (ep_now_ns()).  Thread-safe. */
void ep_activity_add(int delta, int64_t t_ns);
/* Set the level to n at time t_ns.  Thread-safe. */
void ep_activity_set(int n, int64_t t_ns);
/* Current level. */
int ep_activity_level(void);
/* Cumulative ns the level has been > 0 up to t_ns (t_ns must be >= the last change). */
int64_t ep_activity_active_ns_at(int64_t t_ns);

#endif
