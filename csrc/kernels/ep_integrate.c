/* ep_integrate.c: cumulative energy F(t) over the samples, windows as F(b) - F(a).
 *
 * The samples are viewed as a sorted sequence of "knots": INTERVAL samples give
 * s0, e0, s1, e1, ... (sorted because samples may not overlap), INSTANT samples
 * give t0, t1, ...  Every question about a window endpoint t (which piece of F holds
 * t, how many samples start/end before t) is answered by two counts on that one
 * sequence: knots <= t and knots < t.  Those counts come from a galloping search
 * that starts at the previous window's answer, so windows visited by start walk the
 * samples once (O(N + M)); unsorted windows are visited in start order.
 */
#include "ep_integrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"

#define NS_PER_S 1e9
#define ALL_DOMAINS ((1u << EP_NDOMAINS) - 1u)
/* F is stored at every CHECKPOINT-th sample boundary only and rebuilt between them by
 * re-adding the same pieces in the same order (bitwise the same doubles as a full
 * cumulative sum): 1/16 of the memory, and the build pass mostly just reads samples. */
#define CHECKPOINT 16

/* A bit per unit (sample or segment) with a count every 64 bits: "any flagged unit in
 * [lo, hi)" in O(1) at n/4 bytes. */
typedef struct {
    uint64_t *bits;   /* n_words (owned) */
    int64_t *before;  /* set bits in the words before word w (owned) */
    int64_t n_units;
} bitrank;

typedef struct {
    const ep_sample *s;
    int64_t n;           /* samples */
    int interval;        /* 1: INTERVAL knots s0,e0,s1,..; 0: INSTANT knots t0,t1,.. */
    int64_t n_knots;
    int64_t n_units;     /* pieces of F: samples (INTERVAL) or segments between points (INSTANT) */
    unsigned measured;   /* bit d set: domain d is non-NaN in at least one sample */
    double *chk_wns;     /* F in W*ns at boundaries 0, CHECKPOINT, 2*CHECKPOINT, .. (owned) */
    bitrank nan_units;   /* units touching a NaN of a measured domain; bits NULL if none */
    bitrank gap_after;   /* INTERVAL: a gap follows sample j; bits NULL if none */
} integ;

/* Zeroed bit storage for n units (calloc: untouched pages cost nothing). */
static int bitrank_alloc(bitrank *r, int64_t n_units)
{
    size_t n_words = (size_t)(n_units / 64 + 1); /* +1: rank(n_units) reads one word past */
    r->n_units = n_units;
    r->bits = calloc(n_words, sizeof(uint64_t));
    r->before = malloc(n_words * sizeof(int64_t));
    return (r->bits && r->before) ? EP_OK : EP_ERR_NOMEM;
}

static void bitrank_free(bitrank *r)
{
    free(r->bits);
    free(r->before);
    r->bits = NULL;
    r->before = NULL;
}

static inline void bitrank_set(bitrank *r, int64_t j)
{
    r->bits[j >> 6] |= 1ull << (j & 63);
}

static void bitrank_finish(bitrank *r)
{
    int64_t acc = 0, n_words = r->n_units / 64 + 1;
    for (int64_t w = 0; w < n_words; w++) {
        r->before[w] = acc;
        acc += __builtin_popcountll(r->bits[w]);
    }
}

/* Set bits in [0, i), 0 <= i <= n_units. */
static inline int64_t bitrank_rank(const bitrank *r, int64_t i)
{
    uint64_t below = (1ull << (i & 63)) - 1ull;
    return r->before[i >> 6] + __builtin_popcountll(r->bits[i >> 6] & below);
}

/* Any set bit in [lo, hi) after clipping to [0, n_units]; 0 when nothing was set. */
static int bitrank_any(const bitrank *r, int64_t lo, int64_t hi)
{
    if (!r->bits)
        return 0;
    if (lo < 0)
        lo = 0;
    if (hi > r->n_units)
        hi = r->n_units;
    return hi > lo && bitrank_rank(r, hi) > bitrank_rank(r, lo);
}

static inline int64_t knot_ns(const integ *g, int64_t k)
{
    if (!g->interval)
        return g->s[k].t_start_ns;
    const ep_sample *x = &g->s[k >> 1];
    return (k & 1) ? x->t_end_ns : x->t_start_ns;
}

/* Add the energy (W*ns) of piece j to f: INTERVAL sample j, or the trapezoid of the
 * INSTANT segment from point j to j+1.  The one definition both the build and every
 * lookup use, so checkpoint + pieces reproduces the running sum exactly. */
static inline void add_piece(const integ *g, int64_t j, double *f)
{
    if (g->interval) {
        const ep_sample *x = &g->s[j];
        double dur_ns = (double)(x->t_end_ns - x->t_start_ns);
        for (int d = 0; d < EP_NDOMAINS; d++) {
            double p_w = isnan(x->power_w[d]) ? 0.0 : x->power_w[d];
            f[d] = f[d] + p_w * dur_ns;
        }
        return;
    }
    const ep_sample *x0 = &g->s[j], *x1 = &g->s[j + 1];
    double len_ns = (double)(x1->t_start_ns - x0->t_start_ns);
    for (int d = 0; d < EP_NDOMAINS; d++) {
        double p0 = x0->power_w[d], p1 = x1->power_w[d];
        f[d] = f[d] + ((isnan(p0) || isnan(p1)) ? 0.0 : (0.5 * (p0 + p1)) * len_ns);
    }
}

/* F at boundary i (the energy of pieces 0 .. i-1) into f. */
static void cum_boundary(const integ *g, int64_t i, double *f)
{
    int64_t c = i / CHECKPOINT;
    memcpy(f, g->chk_wns + c * EP_NDOMAINS, sizeof(double) * EP_NDOMAINS);
    for (int64_t j = c * CHECKPOINT; j < i; j++)
        add_piece(g, j, f);
}

/* Number of knots <= t, searched by galloping out from hint (any value in
 * [0, n_knots]); cost O(log |answer - hint|). */
static int64_t count_le(const integ *g, int64_t t, int64_t hint)
{
    int64_t nk = g->n_knots, lo, hi, step = 1;
    if (hint < 0)
        hint = 0;
    if (hint > nk)
        hint = nk;
    if (hint < nk && knot_ns(g, hint) <= t) {
        /* answer > hint: double the step until a knot > t bounds it */
        lo = hint + 1;
        while (lo + step - 1 < nk && knot_ns(g, lo + step - 1) <= t) {
            lo += step;
            step <<= 1;
        }
        hi = lo + step - 1 < nk ? lo + step - 1 : nk;
    } else {
        /* answer <= hint: double the step backwards until a knot <= t bounds it */
        hi = hint;
        while (hi - step >= 0 && knot_ns(g, hi - step) > t) {
            hi -= step;
            step <<= 1;
        }
        lo = hi - step + 1 > 0 ? hi - step + 1 : 0;
    }
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (knot_ns(g, mid) <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Number of knots < t (t - 1 is safe: integer times, INT64_MIN handled). */
static int64_t count_lt(const integ *g, int64_t t, int64_t hint)
{
    return t == INT64_MIN ? 0 : count_le(g, t - 1, hint);
}

/* F(t) per domain in W*ns into f; le = count_le(t); t inside the covered range. */
static void cum_at(const integ *g, int64_t t, int64_t le, double *f)
{
    if (g->interval) {
        /* le even: the last knot <= t is an end (or t sits in a gap), F is flat here */
        cum_boundary(g, le >> 1, f);
        if (!(le & 1))
            return;
        const ep_sample *x = &g->s[le >> 1];
        double dt_ns = (double)(t - x->t_start_ns); /* a difference: exact at 1e18 ns */
        for (int d = 0; d < EP_NDOMAINS; d++) {
            double p_w = isnan(x->power_w[d]) ? 0.0 : x->power_w[d];
            f[d] = f[d] + p_w * dt_ns;
        }
        return;
    }
    int64_t k = le - 1;
    cum_boundary(g, k, f);
    if (k >= g->n - 1)
        return;
    const ep_sample *x0 = &g->s[k], *x1 = &g->s[k + 1];
    /* k is the last point <= t, so t < t_{k+1} and the segment has length > 0 */
    double dt_ns = (double)(t - x0->t_start_ns);
    double len_ns = (double)(x1->t_start_ns - x0->t_start_ns);
    for (int d = 0; d < EP_NDOMAINS; d++) {
        double p0 = x0->power_w[d], p1 = x1->power_w[d];
        if (!(isnan(p0) || isnan(p1))) /* integral of the linear interpolation from t_k to t */
            f[d] = f[d] + dt_ns * (p0 + (0.5 * (p1 - p0)) * (dt_ns / len_ns));
    }
}

/* Check sample i (kind, order, interval shape); EP_OK or an error with detail. */
static int check_sample(const integ *g, int64_t i, int32_t kind, char *detail, size_t detail_len)
{
    const ep_sample *x = &g->s[i];
    if (x->kind != kind) {
        ep_err_format(detail, detail_len,
                   "samples[%lld].kind=%d differs from samples[0].kind=%d: integrate one kind per call",
                   (long long)i, (int)x->kind, (int)kind);
        return EP_ERR_ARG;
    }
    if (g->interval) {
        if (x->t_end_ns < x->t_start_ns) {
            ep_err_format(detail, detail_len, "samples[%lld]: t_end_ns=%lld < t_start_ns=%lld", (long long)i,
                       (long long)x->t_end_ns, (long long)x->t_start_ns);
            return EP_ERR_ARG;
        }
        if (i > 0 && x->t_start_ns < x[-1].t_end_ns) {
            ep_err_format(detail, detail_len,
                       "samples[%lld].t_start_ns=%lld < samples[%lld].t_end_ns: interval samples must be "
                       "sorted and must not overlap",
                       (long long)i, (long long)x->t_start_ns, (long long)(i - 1));
            return EP_ERR_UNSORTED;
        }
        return EP_OK;
    }
    if (x->t_end_ns != x->t_start_ns) {
        ep_err_format(detail, detail_len, "samples[%lld]: INSTANT sample with t_end_ns=%lld != t_start_ns=%lld",
                   (long long)i, (long long)x->t_end_ns, (long long)x->t_start_ns);
        return EP_ERR_ARG;
    }
    if (i > 0 && x->t_start_ns < x[-1].t_start_ns) {
        ep_err_format(detail, detail_len,
                   "samples[%lld].t_start_ns=%lld < samples[%lld].t_start_ns: instant samples must be sorted",
                   (long long)i, (long long)x->t_start_ns, (long long)(i - 1));
        return EP_ERR_UNSORTED;
    }
    return EP_OK;
}

/* Validate the samples and build the F checkpoints and the NaN / gap bit ranks in one
 * pass.  On error g's arrays may be allocated: the caller frees them (integ_free). */
static int integ_build(integ *g, const ep_sample *s, int64_t n, char *detail, size_t detail_len)
{
    int rc = EP_OK;
    unsigned char *mask = NULL; /* per sample: its NaN domains (owned here) */
    memset(g, 0, sizeof *g);
    g->s = s;
    g->n = n;
    if (n == 0)
        return EP_OK;
    int32_t kind = s[0].kind;
    if (kind != EP_KIND_INSTANT && kind != EP_KIND_INTERVAL) {
        ep_err_format(detail, detail_len, "samples[0].kind=%d is neither INSTANT (0) nor INTERVAL (1)", (int)kind);
        rc = EP_ERR_ARG;
        goto error;
    }
    g->interval = kind == EP_KIND_INTERVAL;
    g->n_knots = g->interval ? 2 * n : n;
    g->n_units = g->interval ? n : n - 1;
    /* boundaries 0 .. n_units, one checkpoint row per CHECKPOINT of them */
    g->chk_wns = malloc(sizeof(double) * (size_t)(g->n_units / CHECKPOINT + 1) * EP_NDOMAINS);
    mask = calloc((size_t)n, 1);
    if (!g->chk_wns || !mask) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    if (g->interval && (rc = bitrank_alloc(&g->gap_after, g->n_units)) != EP_OK)
        goto error;
    unsigned all_nan = ALL_DOMAINS, any_nan = 0;
    int any_gap = 0;
    double f[EP_NDOMAINS] = {0};
    memcpy(g->chk_wns, f, sizeof f);
    for (int64_t i = 0; i < n; i++) {
        const ep_sample *x = &s[i];
        if ((rc = check_sample(g, i, kind, detail, detail_len)) != EP_OK)
            goto error;
        unsigned nan_bits = 0;
        for (int d = 0; d < EP_NDOMAINS; d++)
            nan_bits |= (unsigned)(isnan(x->power_w[d]) != 0) << d;
        if (nan_bits) /* mask stays untouched (zero pages) on a clean stream */
            mask[i] = (unsigned char)nan_bits;
        all_nan &= nan_bits;
        any_nan |= nan_bits;
        if (g->interval && i > 0 && x->t_start_ns > x[-1].t_end_ns) {
            bitrank_set(&g->gap_after, i - 1);
            any_gap = 1;
        }
        /* piece j ends at boundary j + 1: INTERVAL sample i, INSTANT segment i-1..i */
        int64_t j = g->interval ? i : i - 1;
        if (j < 0)
            continue;
        add_piece(g, j, f);
        if ((j + 1) % CHECKPOINT == 0)
            memcpy(g->chk_wns + ((j + 1) / CHECKPOINT) * EP_NDOMAINS, f, sizeof f);
    }
    {
        /* Every in-range endpoint is measured from a knot; the whole span must fit
         * in int64 so those differences cannot overflow. */
        int64_t first = knot_ns(g, 0), last = knot_ns(g, g->n_knots - 1);
        if (first < 0 && last > INT64_MAX + first) {
            ep_err_format(detail, detail_len, "samples span %lld .. %lld ns, wider than int64 allows",
                       (long long)first, (long long)last);
            rc = EP_ERR_ARG;
            goto error;
        }
    }
    g->measured = ALL_DOMAINS & ~all_nan;
    if (any_gap)
        bitrank_finish(&g->gap_after);
    else
        bitrank_free(&g->gap_after);
    if (any_nan & g->measured) {
        if ((rc = bitrank_alloc(&g->nan_units, g->n_units)) != EP_OK)
            goto error;
        for (int64_t j = 0; j < g->n_units; j++) {
            unsigned bits = g->interval ? mask[j] : (unsigned)(mask[j] | mask[j + 1]);
            if (bits & g->measured)
                bitrank_set(&g->nan_units, j);
        }
        bitrank_finish(&g->nan_units);
    }
error:
    free(mask);
    return rc;
}

static void integ_free(integ *g)
{
    free(g->chk_wns);
    g->chk_wns = NULL;
    bitrank_free(&g->nan_units);
    bitrank_free(&g->gap_after);
}

/* One window [a, b) -> its energy row, flags and count.  hint_a / hint_b carry the
 * finger from the previous window (they change speed, never results). */
static void integ_window(const integ *g, int64_t a, int64_t b, int64_t *hint_a, int64_t *hint_b, double *e_j,
                         uint32_t *flags, int32_t *samples_in_window)
{
    if (g->n_knots == 0 || a < knot_ns(g, 0) || b > knot_ns(g, g->n_knots - 1)) {
        for (int d = 0; d < EP_NDOMAINS; d++)
            e_j[d] = NAN;
        *flags = EP_WIN_OUTSIDE;
        *samples_in_window = 0;
        return;
    }
    int64_t le_a = count_le(g, a, *hint_a), lt_a = count_lt(g, a, le_a);
    int64_t le_b = count_le(g, b, *hint_b), lt_b = count_lt(g, b, le_b);
    *hint_a = le_a;
    *hint_b = le_b;
    double fa[EP_NDOMAINS], fb[EP_NDOMAINS];
    cum_at(g, a, le_a, fa);
    cum_at(g, b, le_b, fb);
    for (int d = 0; d < EP_NDOMAINS; d++)
        e_j[d] = (g->measured >> d & 1u) ? (fb[d] - fa[d]) / NS_PER_S : NAN;
    uint32_t fl = 0;
    int64_t count;
    if (g->interval) {
        /* knots <= t are s0,e0,..: (le+1)/2 starts and le/2 ends among them */
        count = le_b / 2 - (lt_a + 1) / 2;                         /* s_i >= a and e_i <= b */
        if (bitrank_any(&g->nan_units, le_a / 2, (lt_b + 1) / 2))    /* e_i > a, s_i < b */
            fl |= EP_WIN_NAN;
        if (bitrank_any(&g->gap_after, (le_a + 1) / 2 - 1, lt_b / 2)) /* s_j+1 > a, e_j < b */
            fl |= EP_WIN_GAP;
    } else {
        count = (le_b - 1) - lt_a;                     /* t_i >= a and t_i+1 <= b */
        if (bitrank_any(&g->nan_units, le_a - 1, lt_b)) /* t_j+1 > a, t_j < b */
            fl |= EP_WIN_NAN;
    }
    if (count <= 0) {
        count = 0;
        fl |= EP_WIN_UNRESOLVED;
    }
    *flags = fl;
    *samples_in_window = count > INT32_MAX ? INT32_MAX : (int32_t)count;
}

typedef struct {
    int64_t start_ns;
    int64_t index;
} win_key;

static int win_key_cmp(const void *x, const void *y)
{
    const win_key *p = x, *q = y;
    if (p->start_ns != q->start_ns)
        return p->start_ns < q->start_ns ? -1 : 1;
    return p->index < q->index ? -1 : p->index > q->index;
}

int ep_integrate(const ep_sample *samples, int64_t n_samples, const int64_t *windows_ns,
                 int64_t n_windows, double *energy_j, uint32_t *flags, int32_t *samples_in_window,
                 char *detail, size_t detail_len)
{
    int rc = EP_OK;
    integ g;
    win_key *order = NULL; /* visiting order for unsorted windows (owned here) */
    memset(&g, 0, sizeof g);
    if (detail && detail_len)
        detail[0] = '\0';
    if (n_samples < 0 || n_windows < 0 || (n_samples > 0 && !samples) ||
        (n_windows > 0 && (!windows_ns || !energy_j || !flags || !samples_in_window))) {
        ep_err_format(detail, detail_len, "negative count or NULL buffer");
        rc = EP_ERR_ARG;
        goto error;
    }
    /* Validate every window before anything is written: all or nothing. */
    int sorted = 1;
    for (int64_t w = 0; w < n_windows; w++) {
        if (windows_ns[2 * w + 1] < windows_ns[2 * w]) {
            ep_err_format(detail, detail_len, "windows[%lld]: end_ns=%lld < start_ns=%lld", (long long)w,
                       (long long)windows_ns[2 * w + 1], (long long)windows_ns[2 * w]);
            rc = EP_ERR_ARG;
            goto error;
        }
        if (w > 0 && windows_ns[2 * w] < windows_ns[2 * w - 2])
            sorted = 0;
    }
    rc = integ_build(&g, samples, n_samples, detail, detail_len);
    if (rc != EP_OK)
        goto error;
    /* Windows out of order would make the finger jump across the whole sample array
     * (a cache miss per probe); visiting them by start keeps the walk local.  Each
     * window's numbers do not depend on the order. */
    if (!sorted && n_samples > 0) {
        order = malloc(sizeof(win_key) * (size_t)n_windows);
        if (!order) {
            rc = EP_ERR_NOMEM;
            goto error;
        }
        for (int64_t w = 0; w < n_windows; w++) {
            order[w].start_ns = windows_ns[2 * w];
            order[w].index = w;
        }
        qsort(order, (size_t)n_windows, sizeof(win_key), win_key_cmp);
    }
    int64_t hint_a = 0, hint_b = 0; /* the finger: previous window's positions */
    for (int64_t i = 0; i < n_windows; i++) {
        int64_t w = order ? order[i].index : i;
        integ_window(&g, windows_ns[2 * w], windows_ns[2 * w + 1], &hint_a, &hint_b, energy_j + w * EP_NDOMAINS,
                     &flags[w], &samples_in_window[w]);
    }
error:
    free(order);
    integ_free(&g);
    return rc;
}
