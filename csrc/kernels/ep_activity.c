/* ep_activity.c: activity level with the cumulative active time, under one mutex.
 * The mutex is uncontended in practice (one model thread), ~20 ns a call. */
#include "ep_activity.h"

#include <pthread.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int level = 0;
static int64_t active_since_ns = 0;   /* when level last went from 0 to > 0 */
static int64_t active_acc_ns = 0;     /* active time accumulated before active_since_ns */

static void set_locked(int n, int64_t t_ns)
{
    if (n < 0)
        n = 0;
    if (level <= 0 && n > 0)
        active_since_ns = t_ns;
    else if (level > 0 && n <= 0)
        active_acc_ns += t_ns - active_since_ns;
    level = n;
}

void ep_activity_add(int delta, int64_t t_ns)
{
    pthread_mutex_lock(&lock);
    set_locked(level + delta, t_ns);
    pthread_mutex_unlock(&lock);
}

void ep_activity_set(int n, int64_t t_ns)
{
    pthread_mutex_lock(&lock);
    set_locked(n, t_ns);
    pthread_mutex_unlock(&lock);
}

int ep_activity_level(void)
{
    pthread_mutex_lock(&lock);
    int n = level;
    pthread_mutex_unlock(&lock);
    return n;
}

int64_t ep_activity_active_ns_at(int64_t t_ns)
{
    pthread_mutex_lock(&lock);
    int64_t a = active_acc_ns;
    if (level > 0 && t_ns > active_since_ns)
        a += t_ns - active_since_ns;
    pthread_mutex_unlock(&lock);
    return a;
}
