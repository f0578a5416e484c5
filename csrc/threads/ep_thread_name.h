/* ep_thread_name.h: give the calling thread a name that tools can see.
 *
 * energyprof's own threads are named "ep-<role>" (ep-sampler, ep-writer), so top -H,
 * gdb, py-spy and the tests (/proc/self/task/N/comm) can tell them from torch's or
 * Python's.  Names are at most 15 bytes (Linux's limit).  The string is copied by
 * the kernel; the caller keeps ownership.  Best effort: a failure is ignored.
 */
#ifndef EP_THREAD_NAME_H
#define EP_THREAD_NAME_H

#if defined(__linux__)
#include <sys/prctl.h>
static inline void ep_thread_set_name(const char *name)
{
    (void)prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}
#elif defined(__APPLE__)
#include <pthread.h>
static inline void ep_thread_set_name(const char *name)
{
    (void)pthread_setname_np(name);
}
#else
static inline void ep_thread_set_name(const char *name) { (void)name; }
#endif

#endif /* EP_THREAD_NAME_H */
