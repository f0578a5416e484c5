/* ep_src_synthetic.c: the 'synthetic' power source: programmable, exact power.
 *
 * Power at time t (s = seconds since the source started, t0):
 *   P(t) = power_w + ramp_w_per_s * s
 *        + square_w   during the first half of each square period (from t0)
 *        + active_w   while the activity level (ep_activity.h) is > 0
 *        + attn_w     while the innermost running hooked call is attention-kind
 *        + mlp_w      while it is MLP-kind (the component stack of ep_activity.h)
 * Each poll emits ONE interval sample [previous end, now) whose power is the exact
 * average of P over that interval, plus noise_w * N(0, 1) per sample from a
 * seeded generator.
 * Hole: with gap_ms > 0 the stream has no sample over [t0 + gap_at, t0 + gap_at + gap)
 * (a sensor that stopped answering, to test gap handling): the poll that crosses the
 * hole's start emits [previous end, hole start); polls inside the hole emit nothing; the
 * first poll after the hole emits [hole end, now).  P itself goes on as if there were
 * no hole, so the truth over the hole is known.  Every term's integral has a closed form, so tests can
 * recompute each value from (t_start_ns, t_end_ns) alone:
 *   ramp:   mean of s over [a, b) = ((a - t0) + (b - t0)) / 2 / 1e9
 *   square: twice the high time up to u = t - t0 is 2H(u) = k*P + min(2r, P), with
 *           k = u / P, r = u % P (integers: exact even for odd P)
 *   active: the cumulative active time A(t) kept by ep_activity: (A(b) - A(a)) / (b - a)
 *   attn, mlp: likewise with the cumulative innermost-kind times C_attn(t), C_mlp(t)
 * Noise: splitmix64 gives two 64-bit words, their top 53 bits give u1 in (0, 1] and
 * u2 in [0, 1), and z = sqrt(-2 ln u1) cos(2 pi u2) (Box-Muller, cosine branch only,
 * so sample k always uses words 2k and 2k+1 of the stream).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_activity.h"
#include "ep_errors.h"
#include "ep_sample.h"
#include "ep_source.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

typedef struct {
    double power_w, noise_w, square_w, ramp_w_per_s, active_w, attn_w, mlp_w;
    int64_t square_period_ns;
    int64_t gap_at_ns, gap_ns; /* the hole [t0 + gap_at_ns, t0 + gap_at_ns + gap_ns); gap_ns 0: none */
    uint64_t seed;
    int domain;               /* EP_DOM_* that receives the power */

    uint64_t prng;            /* splitmix64 state */
    int64_t t0_ns;            /* source start */
    int64_t t_prev_ns;        /* end of the last emitted sample */
    int64_t active_prev_ns;   /* A(t_prev_ns), carried so per-sample shares telescope */
    int64_t attn_prev_ns, mlp_prev_ns; /* C_attn(t_prev_ns), C_mlp(t_prev_ns), likewise */
} synth_state;

static const char *const known_keys[] = {"power_w", "period_ms", "noise_w", "seed", "square_w",
                                         "square_period_ms", "ramp_w_per_s", "active_w", "domain", "gap_at_ms",
                                         "gap_ms", "attn_w", "mlp_w", NULL};

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double gaussian(uint64_t *state)
{
    /* 2^-53: the top 53 bits are exactly representable in a double. */
    double u1 = (double)((splitmix64(state) >> 11) + 1) * 0x1.0p-53;
    double u2 = (double)(splitmix64(state) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Twice the time the square wave was high in [t0, t0 + u): integer, exact. */
static int64_t square_high2(int64_t u_ns, int64_t period_ns)
{
    if (u_ns <= 0)
        return 0;
    int64_t k = u_ns / period_ns, r = u_ns % period_ns;
    int64_t tail = 2 * r < period_ns ? 2 * r : period_ns;
    return k * period_ns + tail;
}

/* Average power over [a, b), b > a, without noise.  active_ns = A(b) - A(a);
 * attn_ns, mlp_ns likewise for the innermost-kind times. */
static double average_power_w(const synth_state *st, int64_t a, int64_t b, int64_t active_ns, int64_t attn_ns,
                              int64_t mlp_ns)
{
    double dur = (double)(b - a);
    double p = st->power_w;
    if (st->ramp_w_per_s != 0.0)
        p += st->ramp_w_per_s * ((double)((a - st->t0_ns) + (b - st->t0_ns)) * 0.5e-9);
    if (st->square_w != 0.0) {
        int64_t h2 = square_high2(b - st->t0_ns, st->square_period_ns) -
                     square_high2(a - st->t0_ns, st->square_period_ns);
        p += st->square_w * ((double)h2 / (2.0 * dur));
    }
    if (st->active_w != 0.0)
        p += st->active_w * ((double)active_ns / dur);
    if (st->attn_w != 0.0)
        p += st->attn_w * ((double)attn_ns / dur);
    if (st->mlp_w != 0.0)
        p += st->mlp_w * ((double)mlp_ns / dur);
    return p;
}

/* Emit [t_prev, t_ns) into out[0] if it has a length; returns 1 or 0.  The hole cuts
 * the interval at its start, and the stream resumes at its end. */
static size_t emit(synth_state *st, int64_t t_ns, ep_sample *out, uint32_t extra_flags)
{
    if (st->gap_ns > 0) {
        int64_t hole_a = st->t0_ns + st->gap_at_ns, hole_b = hole_a + st->gap_ns;
        if (st->t_prev_ns >= hole_a && st->t_prev_ns < hole_b) {
            if (t_ns <= hole_b)
                return 0; /* inside the hole: the sensor says nothing */
            st->t_prev_ns = hole_b;
            st->active_prev_ns = ep_activity_active_ns_at(hole_b);
            st->attn_prev_ns = ep_activity_comp_ns_at(EP_COMP_ATTN, hole_b);
            st->mlp_prev_ns = ep_activity_comp_ns_at(EP_COMP_MLP, hole_b);
        } else if (st->t_prev_ns < hole_a && t_ns > hole_a) {
            t_ns = hole_a; /* the last sample before the hole ends where the hole starts */
        }
    }
    if (t_ns <= st->t_prev_ns)
        return 0; /* a frozen (test) clock or a repeated poll: no interval yet */
    int64_t active_now = ep_activity_active_ns_at(t_ns);
    int64_t attn_now = ep_activity_comp_ns_at(EP_COMP_ATTN, t_ns);
    int64_t mlp_now = ep_activity_comp_ns_at(EP_COMP_MLP, t_ns);
    ep_sample *s = &out[0];
    ep_sample_init(s, st->t_prev_ns, t_ns, EP_KIND_INTERVAL, EP_SFLAG_SIMULATED | extra_flags);
    double p = average_power_w(st, st->t_prev_ns, t_ns, active_now - st->active_prev_ns, attn_now - st->attn_prev_ns,
                               mlp_now - st->mlp_prev_ns);
    if (st->noise_w != 0.0)
        p += st->noise_w * gaussian(&st->prng);
    s->power_w[st->domain] = p;
    st->t_prev_ns = t_ns;
    st->active_prev_ns = active_now;
    st->attn_prev_ns = attn_now;
    st->mlp_prev_ns = mlp_now;
    return 1;
}

static int synth_start(ep_source *src, int64_t t_now_ns)
{
    synth_state *st = src->state;
    /* A restart begins a new signal: time origin, noise stream and activity share. */
    st->t0_ns = t_now_ns;
    st->t_prev_ns = t_now_ns;
    st->active_prev_ns = ep_activity_active_ns_at(t_now_ns);
    st->attn_prev_ns = ep_activity_comp_ns_at(EP_COMP_ATTN, t_now_ns);
    st->mlp_prev_ns = ep_activity_comp_ns_at(EP_COMP_MLP, t_now_ns);
    st->prng = st->seed;
    return EP_OK;
}

static int synth_poll(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out)
{
    *n_out = cap ? emit(src->state, t_now_ns, out, 0) : 0;
    return EP_OK;
}

static int synth_boundary(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out)
{
    *n_out = cap ? emit(src->state, t_now_ns, out, EP_SFLAG_BOUNDARY) : 0;
    return EP_OK;
}

static int synth_stop(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out)
{
    *n_out = cap ? emit(src->state, t_now_ns, out, EP_SFLAG_FINAL) : 0;
    return EP_OK;
}

int ep_src_synthetic_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    int rc = EP_ERR_ARG;
    synth_state *st = NULL;
    double period_ms = 10.0, square_period_ms = 1000.0, gap_at_ms = 0.0, gap_ms = 0.0;
    const char *unknown = ep_source_unknown_key(keys, n, known_keys);
    if (unknown) {
        snprintf(src->message, sizeof src->message, "synthetic: unknown key '%s'", unknown);
        goto error;
    }
    rc = EP_ERR_NOMEM;
    st = calloc(1, sizeof *st);
    if (!st)
        goto error;
    rc = EP_ERR_ARG;
    st->power_w = 10.0;
    st->seed = 1;
    st->domain = EP_DOM_CPU;
    struct {
        const char *key;
        double *dst;
    } nums[] = {{"power_w", &st->power_w},   {"period_ms", &period_ms},
                {"noise_w", &st->noise_w},   {"square_w", &st->square_w},
                {"square_period_ms", &square_period_ms}, {"ramp_w_per_s", &st->ramp_w_per_s},
                {"active_w", &st->active_w},   {"gap_at_ms", &gap_at_ms},
                {"gap_ms", &gap_ms},           {"attn_w", &st->attn_w},
                {"mlp_w", &st->mlp_w}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        const char *v = ep_source_param(keys, values, n, nums[i].key);
        if (v && ep_source_parse_double(v, nums[i].dst) != EP_OK) {
            snprintf(src->message, sizeof src->message, "synthetic: '%s' must be a number, got '%s'",
                     nums[i].key, v);
            goto error;
        }
    }
    const char *seed = ep_source_param(keys, values, n, "seed");
    if (seed) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(seed, &end, 10);
        if (end == seed || *end != '\0' || errno == ERANGE || seed[0] == '-') {
            snprintf(src->message, sizeof src->message,
                     "synthetic: 'seed' must be a non-negative integer, got '%s'", seed);
            goto error;
        }
        st->seed = (uint64_t)v;
    }
    const char *domain = ep_source_param(keys, values, n, "domain");
    if (domain) {
        st->domain = -1;
        for (int d = 0; d < EP_NDOMAINS; d++)
            if (strcmp(domain, ep_domain_names[d]) == 0)
                st->domain = d;
        if (st->domain < 0) {
            snprintf(src->message, sizeof src->message,
                     "synthetic: 'domain' must be one of cpu, gpu, ane, dram, package, got '%s'", domain);
            goto error;
        }
    }
    /* Periods in ns must be >= 1 ns and fit comfortably in int64 (< ~100 days). */
    if (!(period_ms > 0.0) || period_ms > 1e10) {
        snprintf(src->message, sizeof src->message, "synthetic: 'period_ms' must be in (0, 1e10], got %g", period_ms);
        goto error;
    }
    if (!(square_period_ms > 0.0) || square_period_ms > 1e10) {
        snprintf(src->message, sizeof src->message, "synthetic: 'square_period_ms' must be in (0, 1e10], got %g",
                 square_period_ms);
        goto error;
    }
    if (st->noise_w < 0.0) {
        snprintf(src->message, sizeof src->message, "synthetic: 'noise_w' must be >= 0, got %g", st->noise_w);
        goto error;
    }
    if (!(gap_at_ms >= 0.0) || gap_at_ms > 1e10 || !(gap_ms >= 0.0) || gap_ms > 1e10) {
        snprintf(src->message, sizeof src->message,
                 "synthetic: 'gap_at_ms' and 'gap_ms' must be in [0, 1e10], got %g and %g", gap_at_ms, gap_ms);
        goto error;
    }
    st->gap_at_ns = llround(gap_at_ms * 1e6);
    st->gap_ns = llround(gap_ms * 1e6);
    st->square_period_ns = llround(square_period_ms * 1e6);
    if (st->square_period_ns < 1)
        st->square_period_ns = 1;
    src->kind = "synthetic";
    src->flags = EP_SRC_SIMULATED;
    src->period_ns = llround(period_ms * 1e6);
    if (src->period_ns < 1)
        src->period_ns = 1;
    src->state = st;
    src->start = synth_start;
    src->poll = synth_poll;
    src->stop = synth_stop;
    src->boundary = synth_boundary;
    src->destroy = ep_source_free_state;
    snprintf(src->meta_json, sizeof src->meta_json,
             "{\"power_w\": %.17g, \"period_ns\": %lld, \"noise_w\": %.17g, \"seed\": %llu, "
             "\"square_w\": %.17g, \"square_period_ns\": %lld, \"ramp_w_per_s\": %.17g, "
             "\"active_w\": %.17g, \"domain\": \"%s\", \"gap_at_ns\": %lld, \"gap_ns\": %lld, "
             "\"attn_w\": %.17g, \"mlp_w\": %.17g}",
             st->power_w, (long long)src->period_ns, st->noise_w, (unsigned long long)st->seed, st->square_w,
             (long long)st->square_period_ns, st->ramp_w_per_s, st->active_w, ep_domain_names[st->domain],
             (long long)st->gap_at_ns, (long long)st->gap_ns, st->attn_w, st->mlp_w);
    return EP_OK;
error:
    free(st);
    return rc;
}
