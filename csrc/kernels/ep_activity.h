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

/* The kind of the innermost running hooked call, for synthetic:attn_w / mlp_w.
 * Each hooked call pushes its kind when it begins and pops it when it ends; the kind
 * on top of the stack is the one running now (EP_COMP_OTHER when nothing runs).  A
 * call of kind EP_COMP_INHERIT pushes the kind below it (a deep-mode op inside an
 * attention block is attention).  For each kind the tracker keeps the cumulative time
 * it was on top, so power in [a, b) is attn_w * (C(b) - C(a)) / (b - a), exactly. */
enum {
    EP_COMP_INHERIT = -1, /* take the enclosing call's kind */
    EP_COMP_OTHER = 0,    /* norms, embeddings, decoder layers, the model: no extra power */
    EP_COMP_ATTN = 1,     /* attention and its q/k/v/o projections */
    EP_COMP_MLP = 2,      /* the MLP and its gate/up/down projections */
    EP_NCOMP = 3,
};
/* Deepest nesting tracked exactly; deeper calls count as their enclosing call's kind. */
#define EP_COMP_STACK_MAX 64

/* A hooked call of kind comp (EP_COMP_*) begins / ends at t_ns.  Thread-safe.  An end
 * with nothing running is ignored. */
void ep_activity_comp_begin(int comp, int64_t t_ns);
void ep_activity_comp_end(int64_t t_ns);
/* The same as ep_activity_add(+1, t_ns) then ep_activity_comp_begin(comp, t_ns) (begin), or
 * ep_activity_add(-1, t_ns) then ep_activity_comp_end(t_ns) (end), under one lock. */
void ep_activity_call_begin(int comp, int64_t t_ns);
void ep_activity_call_end(int64_t t_ns);
/* Cumulative ns kind comp (EP_COMP_OTHER..EP_COMP_MLP) was the innermost kind up to t_ns
 * (OTHER counts only time with a call running).  0 for an unknown kind. */
int64_t ep_activity_comp_ns_at(int comp, int64_t t_ns);
/* The kind on top now (EP_COMP_OTHER when nothing runs). */
int ep_activity_comp_current(void);

#endif
