/* ep_integrate.c: cumulative energy F(t) over the samples, windows as F(b) - F(a).
 *
 * The samples are viewed as a sorted sequence of "knots": INTERVAL samples give
 * s0, e0, s1, e1, ... (sorted because samples may not overlap), INSTANT samples
 * give t0, t1, ...  Every question about a window endpoint t (which piece of F holds
 * t, how many samples start/end before t) is answered by two counts on that one
 * sequence: knots <= t ("le") and knots < t ("lt").
 *
 * One pass does everything: it walks the samples in order, validating each and adding
 * its energy to the running sum F, and merges into that walk the window endpoints in
 * time order (starts and ends as two sorted streams).  An endpoint is answered when the
 * walk reaches the first knot after it: le is the knot index there, lt follows from the
 * run of equal knots just passed, and F(t) is the running sum plus the part of the
 * current piece before t.  A start stores F(a) in the window's energy row and (le, lt)
 * in a scratch row; the end turns them into the energy, the count and the flags.
 * Windows sorted by start and by end (adjacent tokens, non-overlapping calls) are
 * streamed in place; any other order is radix-sorted by (start, end) first, into the
 * caller's energy rows (free until the results go there: no fresh scratch to fault in).
 * When the ends then come in order too (shuffled adjacent windows, equal starts) the walk
 * writes each result as one whole cache line at its window's place in a staging array
 * (a whole-line store past the caches reads nothing, where a write into the caller's rows
 * would read three lines first) and a last pass copies them into the rows in window
 * order; else the sorted rows move to scratch, the ends are sorted apart and each start
 * leaves F in its window's row.
 */
#include "ep_integrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "ep_errors.h"

#define NS_PER_S 1e9
#define ALL_DOMAINS ((1u << EP_NDOMAINS) - 1u)
/* How many events ahead the unsorted path prefetches the rows it will touch. */
#define PREFETCH_AHEAD 16
/* Radix sort digit width (bits): 512 buckets, so the scatter of a pass writes to few enough
 * places at once to stay in cache (measured fastest of 8..11 on 1M keys). */
#define RADIX_BITS 9
#define RADIX_SIZE (1 << RADIX_BITS)

/* A bit per unit (sample or segment), set while the walk goes, with a count every
 * SUPER_WORDS words filled lazily up to the block a query needs: "any flagged unit in
 * [lo, hi)" in O(1) at n/8 + n/64 bytes.  Allocated at the first bit set; bits == NULL
 * means none set.  Queries only reach units the walk has finished, so a filled count
 * never changes. */
#define SUPER_WORDS 8
typedef struct {
    uint64_t *bits;   /* n_units / 64 + 1 words (owned) */
    int64_t *before;  /* set bits in the words before word SUPER_WORDS * k, valid for k < n_before (owned) */
    int64_t n_before;
    int64_t n_units;
} bitrank;

/* F per domain in W*ns as two pairs and one (domains 0-1, 2-3, 4): GCC/Clang vector
 * extensions, SSE2 or NEON; each lane computes exactly what the scalar code would. */
typedef double v2d __attribute__((vector_size(16)));
typedef int64_t v2i __attribute__((vector_size(16)));
typedef struct {
    v2d d01, d23;
    double d4;
} fvec;

_Static_assert(EP_NDOMAINS == 5, "fvec holds five domains");

/* A window in start order: its times and the row its results go to (ends sorted apart
 * as copies: a_ns = b_ns = the end). */
typedef struct {
    int64_t a_ns, b_ns, w;
} win;

/* What the start of a window left for its end (ring slot of the in-order path). */
typedef struct {
    fvec f_wns;
    int64_t le, lt;
} open_start;

/* How a stream's rows are stored. */
enum {
    ROWS_CALLER, /* the caller's windows, row k = window k (already in start order) */
    ROWS_KEYS,   /* ends sorted apart as packed keys (t - t0) << wbits | window: 8 bytes a row */
    ROWS_COPY,   /* win copies sorted by start then end (ends apart: when keys do not fit 64 bits) */
};

/* The window endpoints as two streams merged by time: starts in start order, ends either
 * in the same order ("ordered": every window ends in the order it started, so the open
 * windows are a run of consecutive starts held in a ring) or sorted apart.  A start
 * comes before an end at the same time, so a window's start is always answered first. */
typedef struct {
    const int64_t *windows_ns; /* the caller's (M, 2) windows (borrowed) */
    int64_t first, last;       /* covered range: caller rows outside it are skipped */
    int mode, ends_mode;       /* ROWS_CALLER or ROWS_COPY (starts); ROWS_KEYS or ROWS_COPY (!ordered ends) */
    int64_t n, n_ends;         /* rows of each stream */
    const uint64_t *end_keys;  /* ROWS_KEYS (borrowed) */
    const win *copy, *end_copy; /* ROWS_COPY (borrowed) */
    int wbits;                 /* bits of the window index in an end key */
    uint64_t wmask;
    int64_t t0_b;              /* time origin of the end keys */
    int ordered;
    int64_t ia, ib;            /* next start row; next end row (ordered: a start row; else an end row) */
    open_start *ring;          /* ordered: start data of rows ib .. ia-1 at row & ring_mask (owned) */
    int64_t ring_mask;
    int64_t *start_le_lt;      /* !ordered: le and lt of each window's start, by window (owned) */
} events;

/* A window's results, staged at its window's place: one record of one cache line (64
 * bytes, padded), written whole past the caches. */
typedef struct {
    double energy_j[EP_NDOMAINS];
    uint32_t flags;
    int32_t samples_in_window;
    int64_t pad[2];
} staged;

/* What the walk knows: the running sum, the measured domains, the NaN/gap ranks. */
typedef struct {
    const ep_sample *s;
    int64_t n;
    int interval;
    unsigned measured;       /* domains non-NaN in some sample seen so far */
    int64_t ends_done;       /* end events answered (a later new domain forces a second walk) */
    int redo;                /* a domain first seen after some window had ended: walk again */
    fvec f;                  /* F (W*ns) at the boundary before the current piece (set before drain) */
    int64_t memo_t, memo_lt; /* last lt computed for an endpoint sitting on a knot */
    int memo_ok;
    bitrank nan_units;       /* units touching a NaN of a measured domain */
    bitrank gap_after;       /* INTERVAL: a gap follows sample j */
    /* outputs (borrowed): the caller's, or (sorted ordered rows) staging records by window */
    double *energy_j;
    uint32_t *flags;
    int32_t *samples_in_window;
    staged *stage;           /* when not NULL, ends answer here instead */
} walk;

/* A scratch buffer of n bytes, 64-byte aligned (free() releases it).  Large ones are asked for as huge
 * pages where the system offers them: a fresh 4 KiB page costs a fault on first touch,
 * which for tens of MB of scratch costs more than the sort that fills it. */
static void *big_alloc(size_t n)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    enum { HUGE_SIZE = 2 << 20 };
    if (n >= 2 * HUGE_SIZE) {
        void *p = NULL;
        if (posix_memalign(&p, HUGE_SIZE, n) != 0)
            return NULL;
        (void)madvise(p, n, MADV_HUGEPAGE); /* advice only: 4 KiB pages still work */
        return p;
    }
#endif
    void *p = NULL; /* cache-line aligned: a staging record is one line */
    return posix_memalign(&p, 64, n ? n : 1) == 0 ? p : NULL;
}

/* hi - lo for hi >= lo, as a double, with no signed overflow whatever the values (the
 * covered span is checked to fit int64 after the walk; this keeps the walk defined). */
static inline double diff_ns(int64_t hi, int64_t lo)
{
    return (double)((uint64_t)hi - (uint64_t)lo);
}

static void bitrank_free(bitrank *r)
{
    free(r->bits);
    free(r->before);
    r->bits = NULL;
    r->before = NULL;
}

/* Set bit j (j < n_units); allocates on first use.  EP_OK or EP_ERR_NOMEM. */
static int bitrank_set(bitrank *r, int64_t j)
{
    if (!r->bits) {
        size_t n_words = (size_t)(r->n_units / 64 + 1); /* +1: a rank at n_units reads one word past */
        r->bits = calloc(n_words, sizeof(uint64_t));
        r->before = malloc((n_words / SUPER_WORDS + 1) * sizeof(int64_t));
        if (!r->bits || !r->before) {
            bitrank_free(r);
            return EP_ERR_NOMEM;
        }
        r->before[0] = 0;
        r->n_before = 1;
    }
    r->bits[j >> 6] |= 1ull << (j & 63);
    return EP_OK;
}

/* Set bits of a word (portable: no popcnt instruction needed). */
static inline int64_t popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (int64_t)((x * 0x0101010101010101ull) >> 56);
}

/* Set bits in [0, i), 0 <= i <= n_units; the words below i >> 6 must be final. */
static int64_t bitrank_rank(bitrank *r, int64_t i)
{
    int64_t w = i >> 6, blk = w / SUPER_WORDS;
    while (r->n_before <= blk) {
        int64_t acc = r->before[r->n_before - 1];
        for (int64_t k = (r->n_before - 1) * SUPER_WORDS; k < r->n_before * SUPER_WORDS; k++)
            acc += popcount64(r->bits[k]);
        r->before[r->n_before++] = acc;
    }
    int64_t acc = r->before[blk];
    for (int64_t k = blk * SUPER_WORDS; k < w; k++)
        acc += popcount64(r->bits[k]);
    return acc + popcount64(r->bits[w] & ((1ull << (i & 63)) - 1ull));
}

/* Any set bit in [lo, hi) after clipping to [0, n_units]; 0 when nothing was set.
 * Nearby bounds (most windows span a few samples) read the words directly. */
static inline int bitrank_any(bitrank *r, int64_t lo, int64_t hi)
{
    if (!r->bits)
        return 0;
    if (lo < 0)
        lo = 0;
    if (hi > r->n_units)
        hi = r->n_units;
    if (hi <= lo)
        return 0;
    int64_t wl = lo >> 6, wh = (hi - 1) >> 6;
    if (wh - wl > SUPER_WORDS)
        return bitrank_rank(r, hi) > bitrank_rank(r, lo);
    uint64_t first = ~0ull << (lo & 63), last = ~0ull >> (63 - ((hi - 1) & 63));
    if (wl == wh)
        return (r->bits[wl] & first & last) != 0;
    uint64_t any = (r->bits[wl] & first) | (r->bits[wh] & last);
    for (int64_t k = wl + 1; k < wh; k++)
        any |= r->bits[k];
    return any != 0;
}

/* Check sample i (kind, order, interval shape); EP_OK or an error with detail. */
static int check_sample(const ep_sample *s, int64_t i, int interval, int32_t kind, char *detail, size_t detail_len)
{
    const ep_sample *x = &s[i];
    if (x->kind != kind) {
        ep_err_format(detail, detail_len,
                      "samples[%lld].kind=%d differs from samples[0].kind=%d: integrate one kind per call",
                      (long long)i, (int)x->kind, (int)kind);
        return EP_ERR_ARG;
    }
    if (interval) {
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

/* ------------------------------------------------------------------ the endpoint streams */

static inline int64_t key_time(int64_t t0, uint64_t key, int wbits)
{
    return (int64_t)((uint64_t)t0 + (key >> wbits));
}

/* Window of start row k. */
static inline int64_t row_w(const events *q, int64_t k)
{
    return q->mode == ROWS_COPY ? q->copy[k].w : k;
}

/* Start of start row k. */
static inline int64_t row_a(const events *q, int64_t k)
{
    return q->mode == ROWS_COPY ? q->copy[k].a_ns : q->windows_ns[2 * k];
}

/* End of start row k (ordered streams end in start-row order). */
static inline int64_t row_b(const events *q, int64_t k)
{
    return q->mode == ROWS_COPY ? q->copy[k].b_ns : q->windows_ns[2 * k + 1];
}

/* End time and window of end row j of a stream sorted apart. */
static inline int64_t end_b(const events *q, int64_t j)
{
    return q->ends_mode == ROWS_KEYS ? key_time(q->t0_b, q->end_keys[j], q->wbits) : q->end_copy[j].b_ns;
}

static inline int64_t end_w(const events *q, int64_t j)
{
    return q->ends_mode == ROWS_KEYS ? (int64_t)(q->end_keys[j] & q->wmask) : q->end_copy[j].w;
}

static inline int window_outside(const events *q, int64_t w)
{
    return q->windows_ns[2 * w] < q->first || q->windows_ns[2 * w + 1] > q->last;
}

/* Move a start-row cursor past rows outside the covered range (only the caller's rows
 * can be: the sorted ones hold in-range windows only). */
static inline int64_t skip_outside(const events *q, int64_t k)
{
    if (q->mode != ROWS_CALLER)
        return k;
    while (k < q->n && window_outside(q, k))
        k++;
    return k;
}

/* Make room in the ring for one more open window (doubling, in row order). */
static int ring_reserve(events *q)
{
    int64_t cap = q->ring_mask + 1;
    if (q->ia - q->ib < cap)
        return EP_OK;
    open_start *grown = malloc(sizeof(open_start) * (size_t)(2 * cap));
    if (!grown)
        return EP_ERR_NOMEM;
    for (int64_t k = q->ib; k < q->ia; k++)
        grown[k & (2 * cap - 1)] = q->ring[k & q->ring_mask];
    free(q->ring);
    q->ring = grown;
    q->ring_mask = 2 * cap - 1;
    return EP_OK;
}

/* ------------------------------------------------------------------ answering endpoints */

/* How F continues past the last boundary up to an endpoint inside the current piece. */
typedef struct {
    int kind;               /* 0: flat (t at or after the boundary, before the next piece starts) */
                            /* 1: INTERVAL sample x0 holds t; 2: INSTANT segment x0..x1 holds t */
    const ep_sample *x0, *x1;
} partial;

static inline fvec fvec_load(const double *x)
{
    fvec f;
    memcpy(&f.d01, x, sizeof f.d01);
    memcpy(&f.d23, x + 2, sizeof f.d23);
    f.d4 = x[4];
    return f;
}

static inline void fvec_store(double *x, fvec f)
{
    x[0] = f.d01[0];
    x[1] = f.d01[1];
    x[2] = f.d23[0];
    x[3] = f.d23[1];
    x[4] = f.d4;
}

/* f + p * dt per domain with a NaN power counted as 0 (the INTERVAL piece). */
static inline fvec fvec_add_power(fvec f, const double *power_w, double dt_ns)
{
    v2d p01, p23, dt2 = {dt_ns, dt_ns};
    memcpy(&p01, power_w, sizeof p01);
    memcpy(&p23, power_w + 2, sizeof p23);
    p01 = (v2d)((v2i)p01 & ~(p01 != p01)); /* NaN -> +0.0 */
    p23 = (v2d)((v2i)p23 & ~(p23 != p23));
    f.d01 = f.d01 + p01 * dt2;
    f.d23 = f.d23 + p23 * dt2;
    f.d4 = f.d4 + (isnan(power_w[4]) ? 0.0 : power_w[4]) * dt_ns;
    return f;
}

/* F(t) per domain in W*ns: the running sum plus the part of the current piece before t. */
static inline fvec f_at(const walk *g, const partial *p, int64_t t)
{
    if (p->kind == 1)
        return fvec_add_power(g->f, p->x0->power_w, diff_ns(t, p->x0->t_start_ns)); /* a difference: exact at 1e18 ns */
    if (p->kind != 2)
        return g->f;
    /* x0 is the last point <= t, so t < t(x1) and the segment has length > 0 */
    double f[EP_NDOMAINS];
    fvec_store(f, g->f);
    double dt_ns = diff_ns(t, p->x0->t_start_ns);
    double len_ns = diff_ns(p->x1->t_start_ns, p->x0->t_start_ns);
    for (int d = 0; d < EP_NDOMAINS; d++) {
        double p0 = p->x0->power_w[d], p1 = p->x1->power_w[d];
        if (!(isnan(p0) || isnan(p1))) /* integral of the linear interpolation from t0 to t */
            f[d] = f[d] + dt_ns * (p0 + (0.5 * (p1 - p0)) * (dt_ns / len_ns));
    }
    return fvec_load(f);
}

static inline int64_t knot_ns(const walk *g, int64_t k)
{
    if (!g->interval)
        return g->s[k].t_start_ns;
    const ep_sample *x = &g->s[k >> 1];
    return (k & 1) ? x->t_end_ns : x->t_start_ns;
}

/* Knots < t, given le = knots <= t (t >= every one of them): le less the run of knots
 * equal to t just before it.  Each run is walked once (the answer is kept for t). */
static inline int64_t count_lt(walk *g, int64_t t, int64_t le)
{
    if (le == 0 || knot_ns(g, le - 1) != t)
        return le;
    if (g->memo_ok && g->memo_t == t)
        return g->memo_lt;
    int64_t k = le - 1;
    while (k > 0 && knot_ns(g, k - 1) == t)
        k--;
    g->memo_t = t;
    g->memo_lt = k;
    g->memo_ok = 1;
    return k;
}

/* A staging record written past the caches where the processor offers it (SSE2): the
 * windows come in random order, and a whole line stored this way is not read first, so
 * the walk writes each result once without waiting on memory.  Line-aligned (big_alloc). */
static inline void stage_store(staged *r, fvec e, uint32_t fl, int32_t n_in)
{
#if defined(__SSE2__)
    _Static_assert(sizeof(staged) == 64, "four 16-byte stores: one whole line");
    double *x = r->energy_j;
    _mm_stream_pd(x, (__m128d)e.d01);
    _mm_stream_pd(x + 2, (__m128d)e.d23);
    int64_t e4;
    memcpy(&e4, &e.d4, sizeof e4);
    _mm_stream_si128((__m128i *)(x + 4), _mm_set_epi32(n_in, (int)fl, (int)(e4 >> 32), (int)e4));
    _mm_stream_si128((__m128i *)r->pad, _mm_setzero_si128());
#else
    fvec_store(r->energy_j, e);
    r->flags = fl;
    r->samples_in_window = n_in;
#endif
}

/* The end of a window: energy, count and flags from its start's F, le, lt and its own. */
static void answer_end(walk *g, fvec fa, int64_t le_a, int64_t lt_a, int64_t w, fvec fb, int64_t le_b,
                       int64_t lt_b)
{
    v2d ns2 = {NS_PER_S, NS_PER_S};
    fvec e;
    e.d01 = (fb.d01 - fa.d01) / ns2;
    e.d23 = (fb.d23 - fa.d23) / ns2;
    e.d4 = (fb.d4 - fa.d4) / NS_PER_S;
    if (g->measured != ALL_DOMAINS) {
        double e_j[EP_NDOMAINS];
        fvec_store(e_j, e);
        for (int d = 0; d < EP_NDOMAINS; d++)
            if (!(g->measured >> d & 1u))
                e_j[d] = NAN;
        e = fvec_load(e_j);
    }
    uint32_t fl = 0;
    int64_t count;
    if (g->interval) {
        /* knots <= t are s0,e0,..: (le+1)/2 starts and le/2 ends among them */
        count = le_b / 2 - (lt_a + 1) / 2;                           /* s_i >= a and e_i <= b */
        if (bitrank_any(&g->nan_units, le_a / 2, (lt_b + 1) / 2))    /* e_i > a, s_i < b */
            fl |= EP_WIN_NAN;
        if (bitrank_any(&g->gap_after, (le_a + 1) / 2 - 1, lt_b / 2)) /* s_j+1 > a, e_j < b */
            fl |= EP_WIN_GAP;
    } else {
        count = (le_b - 1) - lt_a;                      /* t_i >= a and t_i+1 <= b */
        if (bitrank_any(&g->nan_units, le_a - 1, lt_b)) /* t_j+1 > a, t_j < b */
            fl |= EP_WIN_NAN;
    }
    if (count <= 0) {
        count = 0;
        fl |= EP_WIN_UNRESOLVED;
    }
    int32_t n_in = count > INT32_MAX ? INT32_MAX : (int32_t)count;
    if (g->stage) {
        stage_store(&g->stage[w], e, fl, n_in);
    } else {
        fvec_store(g->energy_j + w * EP_NDOMAINS, e);
        g->flags[w] = fl;
        g->samples_in_window[w] = n_in;
    }
    g->ends_done++;
}

static inline void prefetch_out(const walk *g, int64_t w)
{
    __builtin_prefetch(g->energy_j + w * EP_NDOMAINS, 1);
    __builtin_prefetch(g->flags + w, 1);
    __builtin_prefetch(g->samples_in_window + w, 1);
}

/* Answer every endpoint before `before_ns` (all of them when all == 1); the walk is at
 * knot index le and p says how F goes on from g->f.  Returns 1 and the next endpoint's
 * time in *t_next while endpoints remain, else 0; EP_ERR_NOMEM as a negative value. */
static int drain(walk *g, events *q, const partial *p, int64_t le, int64_t before_ns, int all, int64_t *t_next)
{
    fvec f_t = g->f;                  /* F at t_f: endpoints at one time (an end and the next start) share it */
    int64_t t_f = 0, lt = 0;
    int have_f = 0;
    int64_t n_b = q->ordered ? q->n : q->n_ends;
    int scattered = q->mode != ROWS_CALLER; /* rows are not window order: prefetch what they touch */
    for (;;) {
        int has_a = q->ia < q->n, has_b = q->ib < n_b;
        if (!has_a && !has_b)
            return 0;
        int64_t ta = has_a ? row_a(q, q->ia) : 0;
        int64_t tb = has_b ? (q->ordered ? row_b(q, q->ib) : end_b(q, q->ib)) : 0;
        int start = has_a && (!has_b || ta <= tb);
        int64_t t = start ? ta : tb;
        if (!all && t >= before_ns) {
            *t_next = t;
            return 1;
        }
        if (!have_f || t != t_f) {
            lt = count_lt(g, t, le);
            f_t = f_at(g, p, t);
            t_f = t;
            have_f = 1;
        }
        if (start) {
            int64_t k = q->ia;
            if (scattered && !q->ordered && k + PREFETCH_AHEAD < q->n) {
                int64_t wn = row_w(q, k + PREFETCH_AHEAD);
                __builtin_prefetch(g->energy_j + wn * EP_NDOMAINS, 1);
                __builtin_prefetch(q->start_le_lt + 2 * wn, 1);
            }
            if (q->ordered) {
                if (ring_reserve(q) != EP_OK)
                    return -1;
                open_start *o = &q->ring[k & q->ring_mask];
                o->f_wns = f_t;
                o->le = le;
                o->lt = lt;
            } else {
                int64_t w = row_w(q, k);
                fvec_store(g->energy_j + w * EP_NDOMAINS, f_t);
                q->start_le_lt[2 * w] = le;
                q->start_le_lt[2 * w + 1] = lt;
            }
            q->ia = skip_outside(q, k + 1);
        } else if (q->ordered) {
            int64_t k = q->ib;
            const open_start *o = &q->ring[k & q->ring_mask];
            /* sorted rows answer into their windows' staging records (copied to the
             * windows' rows after the walk, in order) */
            answer_end(g, o->f_wns, o->le, o->lt, g->stage ? row_w(q, k) : k, f_t, le, lt);
            q->ib = skip_outside(q, k + 1);
        } else {
            int64_t j = q->ib, w = end_w(q, j);
            if (j + PREFETCH_AHEAD < q->n_ends) {
                int64_t wn = end_w(q, j + PREFETCH_AHEAD);
                prefetch_out(g, wn);
                __builtin_prefetch(q->start_le_lt + 2 * wn, 0);
            }
            answer_end(g, fvec_load(g->energy_j + w * EP_NDOMAINS), q->start_le_lt[2 * w], q->start_le_lt[2 * w + 1], w, f_t,
                       le, lt);
            q->ib++;
        }
    }
}

/* A domain first non-NaN at sample i joins the measured set.  Every unit before i touches
 * a sample where it was NaN, so all of them are flagged; no window has ended yet (else the
 * walk is redone with the final set), so no count has been read. */
static int grow_measured(walk *g, unsigned new_domains, int64_t i)
{
    g->measured |= new_domains;
    if (g->ends_done > 0) {
        g->redo = 1;
        return EP_OK;
    }
    int rc = EP_OK;
    for (int64_t j = 0; j < i && j < g->nan_units.n_units && rc == EP_OK; j++)
        rc = bitrank_set(&g->nan_units, j);
    return rc;
}

/* The rare per-sample work: NaNs other than the unmeasured domains' (a new domain, a
 * flagged unit).  unit: the unit that touches sample i and ends with it (-1: none). */
static int sample_nans(walk *g, unsigned nan_bits, unsigned unit_bits, int64_t i, int64_t unit)
{
    int rc = EP_OK;
    unsigned new_domains = ~nan_bits & ALL_DOMAINS & ~g->measured;
    if (new_domains && (rc = grow_measured(g, new_domains, i)) != EP_OK)
        return rc;
    if (unit >= 0 && (unit_bits & g->measured))
        rc = bitrank_set(&g->nan_units, unit);
    return rc;
}

/* Walk the samples once, answering every endpoint of q.  On error the outputs may be
 * partly written. */
static int walk_samples(walk *g, events *q, char *detail, size_t detail_len)
{
    const ep_sample *s = g->s;
    int64_t n = g->n;
    int32_t kind = s[0].kind;
    int rc = EP_OK;
    int64_t t_next = 0;
    int pending;
    partial flat = {0, NULL, NULL};
    memset(&g->f, 0, sizeof g->f);
    /* the first endpoint (the earliest start) */
    q->ia = skip_outside(q, 0);
    q->ib = q->ordered ? skip_outside(q, 0) : 0;
    pending = drain(g, q, &flat, 0, INT64_MIN, 0, &t_next);
    if (g->interval) {
        fvec f = g->f; /* the running sum, in registers between endpoints */
        int64_t prev_end = INT64_MIN;
        v2i e01 = {0, 0}, e23 = {0, 0};   /* NaN mask expected in every sample: the unmeasured domains */
        int e4 = 0;
        unsigned expected = ~0u;
        for (int64_t i = 0; i < n; i++) {
            const ep_sample *x = &s[i];
            if (x->kind != kind || x->t_end_ns < x->t_start_ns || x->t_start_ns < prev_end)
                return check_sample(s, i, 1, kind, detail, detail_len);
            if (expected != (ALL_DOMAINS & ~g->measured)) {
                expected = ALL_DOMAINS & ~g->measured;
                e01 = (v2i){-(int64_t)(expected & 1u), -(int64_t)(expected >> 1 & 1u)};
                e23 = (v2i){-(int64_t)(expected >> 2 & 1u), -(int64_t)(expected >> 3 & 1u)};
                e4 = (int)(expected >> 4 & 1u);
            }
            v2d p01, p23;
            memcpy(&p01, &x->power_w[0], sizeof p01);
            memcpy(&p23, &x->power_w[2], sizeof p23);
            double p4 = x->power_w[4];
            v2i n01 = p01 != p01, n23 = p23 != p23; /* -1 where NaN */
            int n4 = isnan(p4) != 0;
            v2i odd = (n01 ^ e01) | (n23 ^ e23);
            if ((odd[0] | odd[1]) || n4 != e4) {
                unsigned nan_bits = (unsigned)(n01[0] & 1) | (unsigned)(n01[1] & 2) | (unsigned)(n23[0] & 4) |
                                    (unsigned)(n23[1] & 8) | (unsigned)n4 << 4;
                if ((rc = sample_nans(g, nan_bits, nan_bits, i, i)) != EP_OK)
                    return rc;
            }
            if (x->t_start_ns > prev_end && i > 0 && (rc = bitrank_set(&g->gap_after, i - 1)) != EP_OK)
                return rc;
            if (pending && t_next < x->t_end_ns) {
                g->f = f;
                if (t_next < x->t_start_ns) /* knot 2i = s_i: before it F is flat */
                    pending = drain(g, q, &flat, 2 * i, x->t_start_ns, 0, &t_next);
                if (pending > 0 && t_next < x->t_end_ns) { /* knot 2i+1 = e_i: inside sample i */
                    partial p = {1, x, NULL};
                    pending = drain(g, q, &p, 2 * i + 1, x->t_end_ns, 0, &t_next);
                }
                if (pending < 0)
                    return EP_ERR_NOMEM;
            }
            double dur_ns = diff_ns(x->t_end_ns, x->t_start_ns);
            v2d dur2 = {dur_ns, dur_ns};
            p01 = (v2d)((v2i)p01 & ~n01); /* NaN -> +0.0, as fvec_add_power */
            p23 = (v2d)((v2i)p23 & ~n23);
            f.d01 = f.d01 + p01 * dur2;
            f.d23 = f.d23 + p23 * dur2;
            f.d4 = f.d4 + (n4 ? 0.0 : p4) * dur_ns;
            prev_end = x->t_end_ns;
        }
        g->f = f;
    } else {
        double f[EP_NDOMAINS] = {0}; /* the running sum */
        unsigned prev_nan = 0;
        for (int64_t i = 0; i < n; i++) {
            const ep_sample *x = &s[i];
            if (x->kind != kind || x->t_end_ns != x->t_start_ns || (i > 0 && x->t_start_ns < x[-1].t_start_ns))
                return check_sample(s, i, 0, kind, detail, detail_len);
            unsigned nan_bits = 0;
            for (int d = 0; d < EP_NDOMAINS; d++)
                nan_bits |= (unsigned)(isnan(x->power_w[d]) != 0) << d;
            if ((nan_bits != (ALL_DOMAINS & ~g->measured) || prev_nan != nan_bits) &&
                (rc = sample_nans(g, nan_bits, nan_bits | prev_nan, i, i - 1)) != EP_OK)
                return rc;
            if (i > 0) {
                const ep_sample *x0 = &s[i - 1];
                if (pending && t_next < x->t_start_ns) { /* knot i = t_i: inside segment i-1 */
                    g->f = fvec_load(f);
                    partial p = {2, x0, x};
                    pending = drain(g, q, &p, i, x->t_start_ns, 0, &t_next);
                    if (pending < 0)
                        return EP_ERR_NOMEM;
                }
                double len_ns = diff_ns(x->t_start_ns, x0->t_start_ns);
                for (int d = 0; d < EP_NDOMAINS; d++) {
                    double p0 = x0->power_w[d], p1 = x->power_w[d];
                    f[d] = f[d] + ((isnan(p0) || isnan(p1)) ? 0.0 : (0.5 * (p0 + p1)) * len_ns);
                }
            }
            prev_nan = nan_bits;
        }
        g->f = fvec_load(f);
    }
    /* the endpoints at the last knot (every remaining one: none lies past it) */
    if (drain(g, q, &flat, g->interval ? 2 * n : n, 0, 1, &t_next) < 0)
        return EP_ERR_NOMEM;
    return EP_OK;
}

/* ------------------------------------------------------------------ sorting the windows */

#define RADIX_PASSES ((64 + RADIX_BITS - 1) / RADIX_BITS)

/* A radix pass's histogram turned into the first output slot of each bucket. */
static void bucket_starts(int64_t *count, int64_t size)
{
    int64_t acc = 0;
    for (int64_t b = 0; b < size; b++) {
        int64_t c = count[b];
        count[b] = acc;
        acc += c;
    }
}

static int bits_of(uint64_t x)
{
    return x ? 64 - __builtin_clzll(x) : 0;
}

/* Windows are sorted by start, then end, with a most-significant-digit radix sort of win
 * rows: each level takes the highest bits where the rows' times still differ (the starts;
 * rows whose starts are all equal, the ends), as many as make about one row per bucket
 * (at most SORT_BITS), moves the rows into their buckets and sorts each bucket the same
 * way; a bucket of SORT_SMALL rows or fewer is insertion-sorted where it lies.  So the
 * rows are moved about twice, the second time within a bucket that fits in cache, and
 * windows with equal starts come out in end order.  A level below the first knows its
 * rows' range from its bucket (no pass to find it).  A level with n > SORT_SMALL rows
 * takes at least 5 bits (bits_of(17)), or every bit left of its time: at most 13 levels
 * for the starts and 13 for the ends, levels 0 .. 25. */
#define SORT_BITS 11
#define SORT_SIZE (1 << SORT_BITS)
#define SORT_SMALL 16
#define SORT_LEVELS 26

static inline int win_before(const win *x, const win *y)
{
    return x->a_ns < y->a_ns || (x->a_ns == y->a_ns && x->b_ns < y->b_ns);
}

static void insertion_sort(win *x, int64_t n)
{
    for (int64_t i = 1; i < n; i++) {
        win v = x[i];
        int64_t j = i;
        for (; j > 0 && win_before(&v, &x[j - 1]); j--)
            x[j] = x[j - 1];
        x[j] = v;
    }
}

/* The digit of a level: which time it reads (0: start, 1: end), the least value, the
 * shift and width of the bits taken (width 0: every row has the same start and end). */
typedef struct {
    int by_end, shift, width;
    int64_t lo;
} digit;

/* The digit for n rows whose times lie in lo + [0, 2^bits) (by_end: the ends; else the
 * starts, which differ unless bits == 0). */
static digit level_digit(int64_t n, int by_end, int64_t lo, int bits)
{
    int width = bits_of((uint64_t)n);
    width = width > SORT_BITS ? SORT_BITS : width;
    width = width > bits ? bits : width;
    return (digit){by_end, bits - width, width, lo};
}

static inline int64_t digit_of(const digit *d, const win *x)
{
    return (int64_t)(((uint64_t)(d->by_end ? x->b_ns : x->a_ns) - (uint64_t)d->lo) >> d->shift);
}

/* The end digit of rows with one start: from their least and greatest end. */
static digit end_digit(const win *x, int64_t n)
{
    int64_t lo = x[0].b_ns, hi = lo;
    for (int64_t i = 1; i < n; i++) {
        lo = x[i].b_ns < lo ? x[i].b_ns : lo;
        hi = x[i].b_ns > hi ? x[i].b_ns : hi;
    }
    return level_digit(n, 1, lo, bits_of((uint64_t)hi - (uint64_t)lo));
}

/* Move the n rows of x into the buckets of digit d (y: scratch of n rows) and sort each
 * bucket where it lies: large ones by the next level, the rest by one insertion pass over
 * all n (rows only move within their bucket).  count[level]: this level's histogram. */
static void sort_level(win *x, win *y, int64_t n, digit d, int64_t (*count)[SORT_SIZE], int level);

/* Sort the n rows of x by (start, end) where they lie, given their times in lo + [0,
 * 2^bits) of the time d says; y: scratch of n rows; count: SORT_LEVELS histograms (all
 * borrowed). */
static void sort_rows(win *x, win *y, int64_t n, digit d, int64_t (*count)[SORT_SIZE], int level)
{
    if (!d.by_end && d.width == 0)
        d = end_digit(x, n); /* one start: by end */
    if (d.width == 0)
        return; /* all alike: any order is sorted */
    sort_level(x, y, n, d, count, level);
}

static void sort_level(win *x, win *y, int64_t n, digit d, int64_t (*count)[SORT_SIZE], int level)
{
    int64_t size = (int64_t)1 << d.width, *c = count[level];
    memset(c, 0, sizeof(int64_t) * (size_t)size);
    for (int64_t i = 0; i < n; i++)
        c[digit_of(&d, &x[i])]++;
    bucket_starts(c, size);
    for (int64_t i = 0; i < n; i++)
        y[c[digit_of(&d, &x[i])]++] = x[i]; /* c[k] ends at bucket k's end */
    memcpy(x, y, sizeof(win) * (size_t)n);
    for (int64_t k = 0, off = 0; k < size; off = c[k++]) {
        int64_t m = c[k] - off;
        if (m > SORT_SMALL)
            sort_rows(x + off, y + off, m, level_digit(m, d.by_end, d.lo + (int64_t)((uint64_t)k << d.shift), d.shift),
                      count, level + 1);
    }
    insertion_sort(x, n);
}

/* Sorted rows r[0 .. m-1] of the whole (sort_windows): note whether their ends keep in
 * order after *last_b, while they are in cache. */
static void finish_rows(const win *r, int64_t m, int64_t *last_b, int *ends_in_order)
{
    int in_order = *ends_in_order;
    int64_t b = *last_b;
    for (int64_t i = 0; i < m; i++) {
        in_order &= r[i].b_ns >= b;
        b = r[i].b_ns;
    }
    *ends_in_order = in_order;
    *last_b = b;
}

/* The caller's in-range windows into rows, sorted by (start, end), or (ends != 0) as
 * rows {end, end, w} sorted by end.  The first level reads the caller's rows directly
 * into their buckets; each bucket is then sorted with a scratch as large as the largest
 * (owned here: a few KB when the times spread, so it stays in cache).  lo/hi: least and
 * greatest start and end of the in-range windows.  rows: n_in rows, count: SORT_LEVELS
 * histograms (both borrowed).  Returns whether the ends of the sorted rows are in order
 * (1 or 0), or -1 (EP_ERR_NOMEM). */
static int sort_windows(const events *q, int64_t n_windows, int ends, int64_t n_in, int64_t lo_a, int64_t hi_a,
                        int64_t lo_b, int64_t hi_b, win *rows, int64_t (*count)[SORT_SIZE])
{
    const int64_t *wn = q->windows_ns;
    int oa = ends ? 1 : 0; /* where a row's first time comes from */
    int64_t last_b = INT64_MIN;
    int in_order = 1;
    if (ends) {
        lo_a = lo_b;
        hi_a = hi_b;
    }
    digit d = lo_a == hi_a ? level_digit(n_in, 1, lo_b, bits_of((uint64_t)hi_b - (uint64_t)lo_b))
                           : level_digit(n_in, 0, lo_a, bits_of((uint64_t)hi_a - (uint64_t)lo_a));
    if (d.width == 0 || n_in <= SORT_SMALL) {
        int64_t j = 0;
        for (int64_t w = 0; w < n_windows; w++)
            if (!window_outside(q, w))
                rows[j++] = (win){wn[2 * w + oa], wn[2 * w + 1], w};
        insertion_sort(rows, n_in);
        finish_rows(rows, n_in, &last_b, &in_order);
        return in_order;
    }
    int64_t size = (int64_t)1 << d.width, *c = count[0];
    memset(c, 0, sizeof(int64_t) * (size_t)size);
    for (int64_t w = 0; w < n_windows; w++)
        if (!window_outside(q, w)) {
            win r = {wn[2 * w + oa], wn[2 * w + 1], w};
            c[digit_of(&d, &r)]++;
        }
    int64_t most = 0;
    for (int64_t k = 0; k < size; k++)
        most = c[k] > most ? c[k] : most;
    win *x = big_alloc(sizeof(win) * (size_t)most);
    if (!x)
        return -1;
    bucket_starts(c, size);
    for (int64_t w = 0; w < n_windows; w++)
        if (!window_outside(q, w)) {
            win r = {wn[2 * w + oa], wn[2 * w + 1], w};
            rows[c[digit_of(&d, &r)]++] = r;
        }
    for (int64_t k = 0, off = 0; k < size; off = c[k++]) {
        int64_t m = c[k] - off;
        if (m > SORT_SMALL)
            sort_rows(rows + off, x, m, level_digit(m, d.by_end, d.lo + (int64_t)((uint64_t)k << d.shift), d.shift),
                      count, 1);
        else
            insertion_sort(rows + off, m);
        finish_rows(rows + off, m, &last_b, &in_order);
    }
    free(x);
    return in_order;
}

/* Sort keys (n) by bits [shift, shift + bits) with an LSD radix sort (stable; the bits
 * below shift, the window index, keep the input order); tmp is scratch of n, count
 * scratch of RADIX_PASSES * RADIX_SIZE (both borrowed).  Returns whichever of a / tmp
 * holds the result. */
static uint64_t *radix_sort_keys(uint64_t *a, uint64_t *tmp, int64_t n, int shift, int bits,
                                 int64_t (*count)[RADIX_SIZE])
{
    int passes = (bits + RADIX_BITS - 1) / RADIX_BITS;
    if (n < 2 || passes == 0)
        return a;
    memset(count, 0, sizeof(int64_t) * RADIX_PASSES * RADIX_SIZE);
    for (int64_t i = 0; i < n; i++) {
        uint64_t key = a[i] >> shift;
        for (int p = 0; p < passes; p++)
            count[p][(key >> (p * RADIX_BITS)) & (RADIX_SIZE - 1)]++;
    }
    uint64_t *src = a, *dst = tmp;
    for (int p = 0; p < passes; p++) {
        int sh = shift + p * RADIX_BITS;
        if (count[p][(src[0] >> sh) & (RADIX_SIZE - 1)] == n)
            continue; /* every key has the same digit here */
        bucket_starts(count[p], RADIX_SIZE);
        for (int64_t i = 0; i < n; i++)
            dst[count[p][(src[i] >> sh) & (RADIX_SIZE - 1)]++] = src[i];
        uint64_t *sw = src;
        src = dst;
        dst = sw;
    }
    return src;
}

/* ------------------------------------------------------------------ entry points */

int ep_integrate(const ep_sample *samples, int64_t n_samples, const int64_t *windows_ns,
                 int64_t n_windows, double *energy_j, uint32_t *flags, int32_t *samples_in_window,
                 char *detail, size_t detail_len)
{
    int rc = EP_OK;
    walk g;
    events q;
    void *buf[3] = {NULL, NULL, NULL}; /* staging records, sorted start rows, sorted ends (owned here) */
    int64_t (*count)[SORT_SIZE] = NULL;      /* sort histograms (owned here) */
    staged *stage = NULL;                    /* staging records of sorted ordered windows (in buf[0]) */
    memset(&g, 0, sizeof g);
    memset(&q, 0, sizeof q);
    if (detail && detail_len)
        detail[0] = '\0';
    if (n_samples < 0 || n_windows < 0 || (n_samples > 0 && !samples) ||
        (n_windows > 0 && (!windows_ns || !energy_j || !flags || !samples_in_window))) {
        ep_err_format(detail, detail_len, "negative count or NULL buffer");
        rc = EP_ERR_ARG;
        goto error;
    }
    /* Validate every window before anything is written. */
    for (int64_t w = 0; w < n_windows; w++) {
        if (windows_ns[2 * w + 1] < windows_ns[2 * w]) {
            ep_err_format(detail, detail_len, "windows[%lld]: end_ns=%lld < start_ns=%lld", (long long)w,
                          (long long)windows_ns[2 * w + 1], (long long)windows_ns[2 * w]);
            rc = EP_ERR_ARG;
            goto error;
        }
    }
    int32_t kind = n_samples > 0 ? samples[0].kind : EP_KIND_INTERVAL;
    if (kind != EP_KIND_INSTANT && kind != EP_KIND_INTERVAL) {
        ep_err_format(detail, detail_len, "samples[0].kind=%d is neither INSTANT (0) nor INTERVAL (1)", (int)kind);
        rc = EP_ERR_ARG;
        goto error;
    }
    g.interval = kind == EP_KIND_INTERVAL;
    /* covered range [first knot, last knot]; empty (first > last) without samples */
    q.first = n_samples > 0 ? samples[0].t_start_ns : 1;
    q.last = n_samples > 0 ? (g.interval ? samples[n_samples - 1].t_end_ns : samples[n_samples - 1].t_start_ns) : 0;
    q.windows_ns = windows_ns;
    q.mode = ROWS_CALLER;
    q.n = n_windows;
    /* Windows outside get their answer now; note the order and span of the others. */
    int64_t n_in = 0, prev_a = INT64_MIN, prev_b = INT64_MIN;
    int64_t min_a = INT64_MAX, max_a = INT64_MIN, min_b = INT64_MAX, max_b = INT64_MIN;
    /* ties_only (read when the starts are in order): each end >= every end of the runs of
     * equal starts before its own */
    int64_t run_max_b = INT64_MIN, before_max_b = INT64_MIN;
    int sorted_a = 1, sorted_b = 1, ties_only = 1;
    for (int64_t w = 0; w < n_windows; w++) {
        int64_t a = windows_ns[2 * w], b = windows_ns[2 * w + 1];
        if (!window_outside(&q, w)) {
            sorted_a &= a >= prev_a;
            sorted_b &= b >= prev_b;
            if (a != prev_a) {
                before_max_b = run_max_b > before_max_b ? run_max_b : before_max_b;
                run_max_b = b;
            }
            run_max_b = b > run_max_b ? b : run_max_b;
            ties_only &= b >= before_max_b;
            prev_a = a;
            prev_b = b;
            min_a = a < min_a ? a : min_a;
            max_a = a > max_a ? a : max_a;
            min_b = b < min_b ? b : min_b;
            max_b = b > max_b ? b : max_b;
            n_in++;
            continue;
        }
        for (int d = 0; d < EP_NDOMAINS; d++)
            energy_j[w * EP_NDOMAINS + d] = NAN;
        flags[w] = EP_WIN_OUTSIDE;
        samples_in_window[w] = 0;
    }
    if (n_samples == 0)
        goto error; /* rc == EP_OK: every window is outside */
    /* Windows not in order are sorted by start, then end (win rows).  Starts already in
     * order whose ends are out of order only within runs of equal starts are sorted too:
     * in (start, end) order their ends come in order. */
    int sort_starts = !sorted_a || (!sorted_b && ties_only);
    if (sort_starts) {
        /* The sorted rows go in the caller's energy rows (n_in * 24 <= n_windows * 40
         * bytes), written only after the walk when the results are staged.  The outside
         * windows' NaN rows are written again then. */
        win *rows = (win *)energy_j;
        _Static_assert(sizeof(win) <= sizeof(double) * EP_NDOMAINS, "a window's rows hold its sorted row");
        count = malloc(sizeof(int64_t) * SORT_LEVELS * SORT_SIZE);
        if (!count) {
            rc = EP_ERR_NOMEM;
            goto error;
        }
        sorted_b = sort_windows(&q, n_windows, 0, n_in, min_a, max_a, min_b, max_b, rows, count);
        if (sorted_b < 0) {
            rc = EP_ERR_NOMEM;
            goto error;
        }
        if (!sorted_b) {
            /* the starts will leave F in the energy rows: the sorted rows move out (buf[1]) */
            if (!(buf[1] = big_alloc(sizeof(win) * (size_t)n_in))) {
                rc = EP_ERR_NOMEM;
                goto error;
            }
            memcpy(buf[1], rows, sizeof(win) * (size_t)n_in);
            rows = buf[1];
            if (n_in < n_windows)
                for (int64_t w = 0; w < n_windows; w++)
                    if (window_outside(&q, w))
                        for (int d = 0; d < EP_NDOMAINS; d++)
                            energy_j[w * EP_NDOMAINS + d] = NAN;
        }
        q.copy = rows;
        q.mode = ROWS_COPY;
        q.n = n_in;
    }
    q.ordered = sorted_b;
    if (q.ordered && sort_starts) {
        stage = buf[0] = big_alloc(sizeof(staged) * (size_t)n_windows);
        if (!stage) {
            rc = EP_ERR_NOMEM;
            goto error;
        }
    }
    if (q.ordered) {
        q.ring = malloc(sizeof(open_start) * 64);
        if (!q.ring) {
            rc = EP_ERR_NOMEM;
            goto error;
        }
        q.ring_mask = 63;
    } else {
        /* ends sorted apart, as packed keys (end offset, window index) when both fit 64
         * bits, else as rows.  Each start leaves its F in the energy row and (le, lt) here. */
        q.wbits = bits_of((uint64_t)(n_windows - 1));
        q.wmask = q.wbits ? (~0ull >> (64 - q.wbits)) : 0;
        q.t0_b = min_b;
        int bits_b = bits_of((uint64_t)max_b - (uint64_t)min_b);
        if (bits_b + q.wbits <= 64) {
            uint64_t *keys = buf[2] = big_alloc(2 * sizeof(uint64_t) * (size_t)n_in);
            if (!keys) {
                rc = EP_ERR_NOMEM;
                goto error;
            }
            if (!count && !(count = malloc(sizeof(int64_t) * SORT_LEVELS * SORT_SIZE))) { /* > RADIX_PASSES * RADIX_SIZE */
                rc = EP_ERR_NOMEM;
                goto error;
            }
            int64_t j = 0;
            for (int64_t w = 0; w < n_windows; w++)
                if (!window_outside(&q, w))
                    keys[j++] = ((uint64_t)windows_ns[2 * w + 1] - (uint64_t)min_b) << q.wbits | (uint64_t)w;
            q.end_keys = radix_sort_keys(keys, keys + n_in, n_in, q.wbits, bits_b, (int64_t(*)[RADIX_SIZE])count);
            q.ends_mode = ROWS_KEYS;
        } else {
            buf[2] = big_alloc(sizeof(win) * (size_t)n_in);
            if (!count)
                count = malloc(sizeof(int64_t) * SORT_LEVELS * SORT_SIZE);
            if (!buf[2] || !count ||
                sort_windows(&q, n_windows, 1, n_in, min_a, max_a, min_b, max_b, buf[2], count) < 0) {
                rc = EP_ERR_NOMEM;
                goto error;
            }
            q.end_copy = buf[2];
            q.ends_mode = ROWS_COPY;
        }
        q.n_ends = n_in;
        q.start_le_lt = big_alloc(sizeof(int64_t) * 2 * (size_t)n_windows);
        if (!q.start_le_lt) {
            rc = EP_ERR_NOMEM;
            goto error;
        }
    }
    g.s = samples;
    g.n = n_samples;
    g.energy_j = energy_j;
    g.flags = flags;
    g.samples_in_window = samples_in_window;
    g.stage = stage;
    g.nan_units.n_units = g.interval ? n_samples : n_samples - 1;
    g.gap_after.n_units = g.nan_units.n_units;
    unsigned measured = 0;
    for (int d = 0; d < EP_NDOMAINS; d++)
        measured |= (unsigned)(!isnan(samples[0].power_w[d])) << d;
    for (int pass = 0; pass < 2; pass++) {
        /* the first walk learns the measured domains as it goes; it is redone (with the
         * final set known from the start) only when a domain first appears after some
         * window has already ended */
        bitrank_free(&g.nan_units);
        bitrank_free(&g.gap_after);
        g.measured = pass == 0 ? measured : g.measured;
        g.ends_done = 0;
        g.redo = 0;
        g.memo_ok = 0;
        if ((rc = walk_samples(&g, &q, detail, detail_len)) != EP_OK)
            goto error;
        if (!g.redo)
            break;
    }
#if defined(__SSE2__)
    if (stage)
        _mm_sfence(); /* the streamed records are complete before they are read */
#endif
    if (stage) {
        /* Every window's results from its staging record, in window order (the sorted
         * rows in the energy rows are done with); an outside window's record was never
         * written: its energy is NaN again. */
        int all_in = n_in == n_windows;
        for (int64_t w = 0; w < n_windows; w++) {
            double *e_j = energy_j + w * EP_NDOMAINS;
            if (!all_in && window_outside(&q, w)) {
                for (int d = 0; d < EP_NDOMAINS; d++)
                    e_j[d] = NAN;
                continue;
            }
            memcpy(e_j, stage[w].energy_j, sizeof(double) * EP_NDOMAINS);
            flags[w] = stage[w].flags;
            samples_in_window[w] = stage[w].samples_in_window;
        }
    }
    {
        /* Every in-range endpoint was measured from a knot; the whole span must fit in
         * int64 so those differences cannot overflow. */
        int64_t first = q.first, last = q.last;
        if (first < 0 && last > INT64_MAX + first) {
            ep_err_format(detail, detail_len, "samples span %lld .. %lld ns, wider than int64 allows",
                          (long long)first, (long long)last);
            rc = EP_ERR_ARG;
            goto error;
        }
    }
error:
    for (int k = 0; k < 3; k++)
        free(buf[k]);
    free(count);
    free(q.ring);
    free(q.start_le_lt);
    bitrank_free(&g.nan_units);
    bitrank_free(&g.gap_after);
    return rc;
}

void ep_integrate_one_pass(const ep_sample *samples, int64_t n_samples, double *energy_wns)
{
    double acc[EP_NDOMAINS] = {0};
    for (int64_t i = 0; i < n_samples; i++) {
        const ep_sample *x = &samples[i];
        double dur_ns = diff_ns(x->t_end_ns, x->t_start_ns);
        for (int d = 0; d < EP_NDOMAINS; d++) {
            double p_w = isnan(x->power_w[d]) ? 0.0 : x->power_w[d];
            acc[d] = acc[d] + p_w * dur_ns;
        }
    }
    memcpy(energy_wns, acc, sizeof acc);
}
