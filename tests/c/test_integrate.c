/* test_integrate.c: ep_integrate against closed forms, without Python.
 * Constant power, a ramp of instant samples, gaps and NaN flags, windows outside,
 * conservation, window order, and every error code. */
#include <stdint.h>
#include <string.h>

#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_integrate.h"

static void fill(ep_sample *s, int64_t t0_ns, int64_t t1_ns, int kind, double cpu_w)
{
    memset(s, 0, sizeof *s);
    s->t_start_ns = t0_ns;
    s->t_end_ns = t1_ns;
    s->kind = kind;
    for (int d = 0; d < EP_NDOMAINS; d++)
        s->power_w[d] = NAN;
    s->power_w[EP_DOM_CPU] = cpu_w;
}

EP_TEST(integrate_constant_interval_exact)
{
    enum { N = 100, M = 6 };
    const int64_t base = 1000000000000000000LL, period = 5000000; /* 1e18 ns: precision check */
    ep_sample s[N];
    for (int i = 0; i < N; i++)
        fill(&s[i], base + i * period, base + (i + 1) * period, EP_KIND_INTERVAL, 20.0);
    int64_t w[2 * M] = {base, base + N * period,           /* everything      */
                        base + 3, base + 3 + 7,             /* 7 ns, unresolved */
                        base + period, base + 3 * period,   /* 2 whole samples */
                        base + 1, base + 1,                 /* degenerate      */
                        base - 1, base + 10,                /* starts before   */
                        base, base + N * period + 1};       /* ends after      */
    double e[M * EP_NDOMAINS];
    uint32_t f[M];
    int32_t c[M];
    EP_CHECK(ep_integrate(s, N, w, M, e, f, c, NULL, 0) == EP_OK);
    EP_CHECK_NEAR(e[0], 20.0 * N * period / 1e9, 1e-12);
    EP_CHECK_NEAR(e[1 * EP_NDOMAINS], 20.0 * 7e-9, 1e-20);
    EP_CHECK_NEAR(e[2 * EP_NDOMAINS], 20.0 * 2 * period / 1e9, 1e-12);
    EP_CHECK(e[3 * EP_NDOMAINS] == 0.0);
    EP_CHECK(isnan(e[4 * EP_NDOMAINS]) && isnan(e[5 * EP_NDOMAINS]));
    EP_CHECK(isnan(e[EP_DOM_GPU])); /* never measured */
    EP_CHECK(f[0] == 0 && c[0] == N);
    EP_CHECK(f[1] == EP_WIN_UNRESOLVED && c[1] == 0);
    EP_CHECK(f[2] == 0 && c[2] == 2);
    EP_CHECK(f[3] == EP_WIN_UNRESOLVED && c[3] == 0);
    EP_CHECK(f[4] == EP_WIN_OUTSIDE && f[5] == EP_WIN_OUTSIDE && c[4] == 0);
}

EP_TEST(integrate_instant_ramp_exact)
{
    /* p(t) = 3 + 2 t_s sampled every 10 ms: the trapezoid rule is exact. */
    enum { N = 50 };
    const int64_t step = 10000000;
    ep_sample s[N];
    for (int i = 0; i < N; i++)
        fill(&s[i], i * step, i * step, EP_KIND_INSTANT, 3.0 + 2.0 * (i * step) / 1e9);
    int64_t w[6] = {0, (N - 1) * step, 12345678, 13345678, 5 * step + 1, 17 * step - 1};
    double e[3 * EP_NDOMAINS];
    uint32_t f[3];
    int32_t c[3];
    EP_CHECK(ep_integrate(s, N, w, 3, e, f, c, NULL, 0) == EP_OK);
    for (int k = 0; k < 3; k++) {
        double a = w[2 * k] / 1e9, b = w[2 * k + 1] / 1e9;
        EP_CHECK_NEAR(e[k * EP_NDOMAINS], 3.0 * (b - a) + (b * b - a * a), 1e-12);
    }
    EP_CHECK(c[0] == N - 1 && f[0] == 0);
    EP_CHECK(c[1] == 0 && f[1] == EP_WIN_UNRESOLVED); /* inside one segment */
    EP_CHECK(c[2] == 10);                             /* segments 6..15 whole */
}

EP_TEST(integrate_gap_and_nan_flags)
{
    ep_sample s[4];
    fill(&s[0], 0, 10, EP_KIND_INTERVAL, 1e9);
    fill(&s[1], 10, 20, EP_KIND_INTERVAL, 2e9);
    fill(&s[2], 30, 40, EP_KIND_INTERVAL, 3e9); /* gap [20, 30) */
    fill(&s[3], 40, 50, EP_KIND_INTERVAL, 4e9);
    for (int i = 0; i < 4; i++)
        s[i].power_w[EP_DOM_GPU] = 1e9;
    s[1].power_w[EP_DOM_GPU] = NAN;
    int64_t w[8] = {0, 50, 0, 10, 20, 30, 5, 15};
    double e[4 * EP_NDOMAINS];
    uint32_t f[4];
    int32_t c[4];
    EP_CHECK(ep_integrate(s, 4, w, 4, e, f, c, NULL, 0) == EP_OK);
    EP_CHECK_NEAR(e[EP_DOM_CPU], 100.0, 1e-12);
    EP_CHECK_NEAR(e[EP_DOM_GPU], 30.0, 1e-12); /* the NaN sample counts 0 */
    EP_CHECK(f[0] == (EP_WIN_GAP | EP_WIN_NAN) && c[0] == 4);
    EP_CHECK(f[1] == 0 && c[1] == 1);
    EP_CHECK(f[2] == (EP_WIN_GAP | EP_WIN_UNRESOLVED) && e[2 * EP_NDOMAINS] == 0.0);
    EP_CHECK(f[3] == (EP_WIN_NAN | EP_WIN_UNRESOLVED));
    EP_CHECK_NEAR(e[3 * EP_NDOMAINS], 15.0, 1e-12);
    EP_CHECK_NEAR(e[3 * EP_NDOMAINS + EP_DOM_GPU], 5.0, 1e-12);
    EP_CHECK(isnan(e[EP_DOM_ANE]));
}

EP_TEST(integrate_conservation_and_order)
{
    /* Adjacent windows sum to their union; reversed window order gives the same numbers. */
    enum { N = 20000, M = 1000 };
    ep_sample *s = malloc(sizeof(ep_sample) * N);
    int64_t *w = malloc(sizeof(int64_t) * 2 * M), *wr = malloc(sizeof(int64_t) * 2 * M);
    double *e = malloc(sizeof(double) * M * EP_NDOMAINS), *er = malloc(sizeof(double) * M * EP_NDOMAINS);
    uint32_t *f = malloc(sizeof(uint32_t) * M), *fr = malloc(sizeof(uint32_t) * M);
    int32_t *c = malloc(sizeof(int32_t) * M), *cr = malloc(sizeof(int32_t) * M);
    EP_CHECK(s && w && wr && e && er && f && fr && c && cr);
    uint64_t rng = 12345;
    int64_t t = 0;
    for (int i = 0; i < N; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        int64_t dur = 1000000 + (int64_t)(rng >> 44);
        fill(&s[i], t, t + dur, EP_KIND_INTERVAL, 5.0 + (double)(rng >> 56));
        t += dur;
    }
    for (int k = 0; k < M; k++) {
        w[2 * k] = (int64_t)((double)t * k / M);
        w[2 * k + 1] = (int64_t)((double)t * (k + 1) / M);
        wr[2 * (M - 1 - k)] = w[2 * k];
        wr[2 * (M - 1 - k) + 1] = w[2 * k + 1];
    }
    w[2 * M - 1] = t;
    wr[1] = t;
    EP_CHECK(ep_integrate(s, N, w, M, e, f, c, NULL, 0) == EP_OK);
    EP_CHECK(ep_integrate(s, N, wr, M, er, fr, cr, NULL, 0) == EP_OK);
    double sum = 0.0, total = 0.0;
    for (int k = 0; k < M; k++) {
        sum += e[k * EP_NDOMAINS];
        EP_CHECK(e[k * EP_NDOMAINS] == er[(M - 1 - k) * EP_NDOMAINS]);
        EP_CHECK(f[k] == fr[M - 1 - k] && c[k] == cr[M - 1 - k]);
    }
    for (int i = 0; i < N; i++)
        total += s[i].power_w[0] * (double)(s[i].t_end_ns - s[i].t_start_ns) / 1e9;
    EP_CHECK_NEAR(sum, total, 1e-9 * total);
    free(s);
    free(w);
    free(wr);
    free(e);
    free(er);
    free(f);
    free(fr);
    free(c);
    free(cr);
}

EP_TEST(integrate_errors)
{
    ep_sample s[2];
    int64_t w[2] = {0, 20};
    double e[EP_NDOMAINS];
    uint32_t f[1];
    int32_t c[1];
    char msg[256];
    fill(&s[0], 0, 10, EP_KIND_INTERVAL, 1.0);
    fill(&s[1], 10, 20, EP_KIND_INSTANT, 1.0);
    EP_CHECK(ep_integrate(s, 2, w, 1, e, f, c, msg, sizeof msg) == EP_ERR_ARG);
    EP_CHECK(strstr(msg, "kind") != NULL);
    fill(&s[1], 5, 20, EP_KIND_INTERVAL, 1.0); /* overlaps s[0] */
    EP_CHECK(ep_integrate(s, 2, w, 1, e, f, c, msg, sizeof msg) == EP_ERR_UNSORTED);
    EP_CHECK(strstr(msg, "overlap") != NULL);
    fill(&s[1], 30, 20, EP_KIND_INTERVAL, 1.0); /* ends before it starts */
    EP_CHECK(ep_integrate(s, 2, w, 1, e, f, c, msg, sizeof msg) == EP_ERR_ARG);
    fill(&s[0], 10, 10, EP_KIND_INSTANT, 1.0);
    fill(&s[1], 5, 5, EP_KIND_INSTANT, 1.0);
    EP_CHECK(ep_integrate(s, 2, w, 1, e, f, c, msg, sizeof msg) == EP_ERR_UNSORTED);
    fill(&s[1], 15, 16, EP_KIND_INSTANT, 1.0);
    EP_CHECK(ep_integrate(s, 2, w, 1, e, f, c, msg, sizeof msg) == EP_ERR_ARG);
    fill(&s[1], 15, 15, 7, 1.0);
    s[0].kind = 7;
    EP_CHECK(ep_integrate(s, 2, w, 1, e, f, c, msg, sizeof msg) == EP_ERR_ARG);
    fill(&s[0], 0, 10, EP_KIND_INTERVAL, 1.0);
    int64_t bad[2] = {9, 8};
    f[0] = 77;
    EP_CHECK(ep_integrate(s, 1, bad, 1, e, f, c, msg, sizeof msg) == EP_ERR_ARG);
    EP_CHECK(strstr(msg, "windows[0]") != NULL && f[0] == 77); /* nothing written */
    /* a span wider than int64 cannot be differenced */
    fill(&s[0], INT64_MIN + 1, 0, EP_KIND_INTERVAL, 1.0);
    fill(&s[1], 0, INT64_MAX, EP_KIND_INTERVAL, 1.0);
    EP_CHECK(ep_integrate(s, 2, w, 1, e, f, c, NULL, 0) == EP_ERR_ARG);
    /* no samples: every window is outside */
    EP_CHECK(ep_integrate(NULL, 0, w, 1, e, f, c, NULL, 0) == EP_OK);
    EP_CHECK(f[0] == EP_WIN_OUTSIDE && isnan(e[0]) && c[0] == 0);
}
