/* ep_activity.c: activity level with the cumulative active time, under one mutex.
 * The mutex is uncontended in practice (one model thread), ~20 ns a call. */
#include "ep_activity.h"

#include <pthread.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int level = 0;
static int64_t active_since_ns = 0;   /* when level last went from 0 to > 0 */
static int64_t active_acc_ns = 0;     /* active time accumulated before active_since_ns */

/* The component stack: kinds of the running hooked calls, innermost last. */
static int comp_stack[EP_COMP_STACK_MAX];
static int comp_depth = 0;          /* calls running (may exceed EP_COMP_STACK_MAX) */
static int64_t comp_since_ns = 0;   /* when the current top kind took over */
static int64_t comp_acc_ns[EP_NCOMP];

static int comp_top_locked(void)
{
    if (comp_depth <= 0)
        return -1; /* nothing runs: no kind accumulates */
    int d = comp_depth < EP_COMP_STACK_MAX ? comp_depth : EP_COMP_STACK_MAX;
    return comp_stack[d - 1];
}

/* Close the current top's stretch at t_ns (before the stack changes). */
static void comp_close_locked(int64_t t_ns)
{
    int top = comp_top_locked();
    if (top >= 0 && t_ns > comp_since_ns)
        comp_acc_ns[top] += t_ns - comp_since_ns;
    comp_since_ns = t_ns;
}

static void set_locked(int n, int64_t t_ns)
{
    if (n < 0)
        n = 0;
    if (level <= 0 && n > 0)
        active_since_ns = t_ns;
    else if (level > 0 && n <= 0)
        active_acc_ns += t_ns - active_since_ns;
    level = n;
    if (n <= 0 && comp_depth > 0) { /* a reset (end of a session): nothing runs any more */
        comp_close_locked(t_ns);
        comp_depth = 0;
    }
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

static void comp_begin_locked(int comp, int64_t t_ns)
{
    int below = comp_top_locked();
    if (comp < EP_COMP_OTHER || comp >= EP_NCOMP) /* EP_COMP_INHERIT (or out of range) */
        comp = below >= 0 ? below : EP_COMP_OTHER;
    comp_close_locked(t_ns);
    if (comp_depth < EP_COMP_STACK_MAX)
        comp_stack[comp_depth] = comp;
    comp_depth++;
}

static void comp_end_locked(int64_t t_ns)
{
    if (comp_depth > 0) {
        comp_close_locked(t_ns);
        comp_depth--;
    }
}

void ep_activity_comp_begin(int comp, int64_t t_ns)
{
    pthread_mutex_lock(&lock);
    comp_begin_locked(comp, t_ns);
    pthread_mutex_unlock(&lock);
}

void ep_activity_comp_end(int64_t t_ns)
{
    pthread_mutex_lock(&lock);
    comp_end_locked(t_ns);
    pthread_mutex_unlock(&lock);
}

/* A hook's begin / end: ep_activity_add(+1 / -1) and comp_begin / comp_end under one lock
 * (one lock round instead of two on the hot path). */
void ep_activity_call_begin(int comp, int64_t t_ns)
{
    pthread_mutex_lock(&lock);
    set_locked(level + 1, t_ns);
    comp_begin_locked(comp, t_ns);
    pthread_mutex_unlock(&lock);
}

void ep_activity_call_end(int64_t t_ns)
{
    pthread_mutex_lock(&lock);
    set_locked(level - 1, t_ns);
    comp_end_locked(t_ns);
    pthread_mutex_unlock(&lock);
}

int64_t ep_activity_comp_ns_at(int comp, int64_t t_ns)
{
    if (comp < 0 || comp >= EP_NCOMP)
        return 0;
    pthread_mutex_lock(&lock);
    int64_t a = comp_acc_ns[comp];
    if (comp_top_locked() == comp && t_ns > comp_since_ns)
        a += t_ns - comp_since_ns;
    pthread_mutex_unlock(&lock);
    return a;
}

int ep_activity_comp_current(void)
{
    pthread_mutex_lock(&lock);
    int top = comp_top_locked();
    pthread_mutex_unlock(&lock);
    return top >= 0 ? top : EP_COMP_OTHER;
}
