/* test_sampler.c: the synthetic source against its closed forms (driven with
 * chosen times, no thread), and the sampler thread: start/stop cycles, overflow,
 * a source that ends, a source that cannot start. */
#include <string.h>
#include <time.h>

#include "ep_activity.h"
#include "ep_clock.h"
#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_sampler.h"
#include "ep_source.h"

static ep_source *synth(const char *const *keys, const char *const *values, size_t n)
{
    ep_source *src = NULL;
    char err[256];
    if (ep_source_create("synthetic", keys, values, n, &src, err, sizeof err) != EP_OK) {
        fprintf(stderr, "  create failed: %s\n", err);
        return NULL;
    }
    return src;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait until the sampler thread has produced n samples: a wait for an event, not for
 * a length of time.  The guard (30 s) only turns a hang into a failure. */
static int wait_for_samples(ep_sampler *s, int64_t n)
{
    ep_sampler_stats st;
    for (int i = 0; i < 300000; i++) {
        ep_sampler_get_stats(s, &st);
        if (st.samples >= n)
            return 1;
        struct timespec ts = {0, 100000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

EP_TEST(synthetic_square_ramp_exact)
{
    const char *k[] = {"power_w", "square_w", "square_period_ms", "ramp_w_per_s", "period_ms"};
    const char *v[] = {"10", "4", "3", "2.5", "1"};
    ep_source *src = synth(k, v, 5);
    EP_CHECK(src != NULL);
    if (!src)
        return;
    EP_CHECK(src->period_ns == 1000000);
    EP_CHECK(src->flags & EP_SRC_SIMULATED);
    const int64_t t0 = 1000000000;
    EP_CHECK(src->start(src, t0) == EP_OK);
    ep_sample s;
    size_t n = 0;
    /* [t0, t0 + 1 ms): square high the whole time (high for the first 1.5 ms). */
    EP_CHECK(src->poll(src, t0 + 1000000, &s, 1, &n) == EP_OK && n == 1);
    EP_CHECK(s.t_start_ns == t0 && s.t_end_ns == t0 + 1000000 && s.kind == EP_KIND_INTERVAL);
    EP_CHECK(s.flags == EP_SFLAG_SIMULATED);
    EP_CHECK_NEAR(s.power_w[EP_DOM_CPU], 10 + 4 + 2.5 * 0.0005, 1e-12);
    EP_CHECK(isnan(s.power_w[EP_DOM_GPU]) && isnan(s.power_w[EP_DOM_PACKAGE]));
    /* [1 ms, 4 ms): high in [1, 1.5) and [3, 4) = 1.5 ms of 3 ms. */
    EP_CHECK(src->poll(src, t0 + 4000000, &s, 1, &n) == EP_OK && n == 1);
    EP_CHECK_NEAR(s.power_w[EP_DOM_CPU], 10 + 4 * 0.5 + 2.5 * 0.0025, 1e-12);
    /* Same time again: no interval, no sample. */
    EP_CHECK(src->poll(src, t0 + 4000000, &s, 1, &n) == EP_OK && n == 0);
    /* Final flush [4 ms, 4.2 ms): square high in [3, 4.5) so high throughout. */
    EP_CHECK(src->stop(src, t0 + 4200000, &s, 1, &n) == EP_OK && n == 1);
    EP_CHECK(s.flags == (EP_SFLAG_SIMULATED | EP_SFLAG_FINAL));
    EP_CHECK_NEAR(s.power_w[EP_DOM_CPU], 10 + 4 + 2.5 * 0.0041, 1e-12);
    ep_source_destroy(src);
}

EP_TEST(synthetic_active_share_exact)
{
    const char *k[] = {"power_w", "active_w", "domain"};
    const char *v[] = {"3", "8", "gpu"};
    ep_source *src = synth(k, v, 3);
    if (!src)
        return;
    const int64_t t0 = 5000000000;
    ep_activity_set(0, t0 - 10);
    EP_CHECK(src->start(src, t0) == EP_OK);
    ep_activity_set(1, t0 + 250);
    ep_activity_set(0, t0 + 750);
    ep_sample s;
    size_t n = 0;
    EP_CHECK(src->poll(src, t0 + 1000, &s, 1, &n) == EP_OK && n == 1);
    EP_CHECK_NEAR(s.power_w[EP_DOM_GPU], 3 + 8 * 0.5, 1e-12);
    EP_CHECK(isnan(s.power_w[EP_DOM_CPU]));
    ep_activity_set(2, t0 + 1500);
    EP_CHECK(src->poll(src, t0 + 2000, &s, 1, &n) == EP_OK && n == 1);
    EP_CHECK_NEAR(s.power_w[EP_DOM_GPU], 3 + 8 * 0.5, 1e-12);
    EP_CHECK(src->poll(src, t0 + 3000, &s, 1, &n) == EP_OK && n == 1);
    EP_CHECK_NEAR(s.power_w[EP_DOM_GPU], 11, 1e-12);
    ep_activity_set(0, t0 + 3000);
    ep_source_destroy(src);
}

EP_TEST(synthetic_noise_reproducible)
{
    const char *k[] = {"noise_w", "seed", "power_w"};
    const char *v[] = {"2", "42", "0"};
    double first[20];
    for (int run = 0; run < 2; run++) {
        ep_source *src = synth(k, v, 3);
        if (!src)
            return;
        src->start(src, 100);
        double sum = 0, sum2 = 0;
        for (int i = 0; i < 2000; i++) {
            ep_sample s;
            size_t n = 0;
            src->poll(src, 100 + 10 * (i + 1), &s, 1, &n);
            double x = s.power_w[0];
            if (i < 20) {
                if (run == 0)
                    first[i] = x;
                else
                    EP_CHECK(first[i] == x);
            }
            sum += x;
            sum2 += x * x;
        }
        /* Mean 0 and sd 2: loose 5-sigma-ish bounds for 2000 draws. */
        EP_CHECK(fabs(sum / 2000) < 0.25);
        EP_CHECK(fabs(sqrt(sum2 / 2000) - 2.0) < 0.2);
        ep_source_destroy(src);
    }
}

EP_TEST(synthetic_rejects_bad_params)
{
    const char *bad[][2] = {{"power_w", "abc"}, {"period_ms", "0"}, {"domain", "tpu"}, {"seed", "-1"},
                            {"bogus", "1"}, {"noise_w", "-1"}, {"square_period_ms", "-5"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ep_source *src = NULL;
        char err[256] = "";
        const char *k[] = {bad[i][0]}, *v[] = {bad[i][1]};
        EP_CHECK(ep_source_create("synthetic", k, v, 1, &src, err, sizeof err) == EP_ERR_ARG);
        EP_CHECK(src == NULL);
        EP_CHECK(strstr(err, bad[i][0]) != NULL); /* the message names the key */
    }
}

EP_TEST(sampler_collects_contiguous_samples)
{
    const char *k[] = {"power_w", "period_ms"};
    const char *v[] = {"7", "1"};
    ep_source *src = synth(k, v, 2);
    ep_sampler *s = NULL;
    char err[256];
    EP_CHECK(ep_sampler_create(src, 0, 4096, &s, err, sizeof err) == EP_OK);
    if (!s)
        return;
    EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_ERR_STATE);
    EP_CHECK(wait_for_samples(s, 3));
    EP_CHECK(ep_sampler_stop(s) == EP_OK);
    EP_CHECK(ep_sampler_stop(s) == EP_OK);
    static ep_sample out[4096];
    size_t n = ep_sampler_drain(s, out, 4096);
    EP_CHECK(n >= 2);
    for (size_t i = 0; i < n; i++) {
        EP_CHECK(out[i].power_w[0] == 7.0);
        EP_CHECK(out[i].t_end_ns > out[i].t_start_ns);
        if (i)
            EP_CHECK(out[i].t_start_ns == out[i - 1].t_end_ns);
        EP_CHECK(((out[i].flags & EP_SFLAG_FINAL) != 0) == (i == n - 1));
    }
    ep_sampler_stats st;
    ep_sampler_get_stats(s, &st);
    EP_CHECK(st.samples == (int64_t)n && st.dropped == 0 && st.faults == 0 && !st.running);
    EP_CHECK(st.interval_ns == 1000000 && st.thread_cpu_ns > 0);
    ep_sampler_destroy(s);
}

EP_TEST(sampler_start_stop_1000_cycles)
{
    const char *k[] = {"period_ms"};
    const char *v[] = {"0.05"};
    ep_sampler *s = NULL;
    char err[256];
    EP_CHECK(ep_sampler_create(synth(k, v, 1), 0, 64, &s, err, sizeof err) == EP_OK);
    if (!s)
        return;
    ep_sample out[64];
    int64_t drained = 0;
    for (int i = 0; i < 1000; i++) {
        EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_OK);
        EP_CHECK(ep_sampler_stop(s) == EP_OK);
        drained += (int64_t)ep_sampler_drain(s, out, 64);
    }
    ep_sampler_stats st;
    ep_sampler_get_stats(s, &st);
    EP_CHECK(st.samples == drained + st.dropped);
    EP_CHECK(!st.running);
    ep_sampler_destroy(s);
    /* Fresh samplers too, some destroyed while running. */
    for (int i = 0; i < 200; i++) {
        s = NULL;
        EP_CHECK(ep_sampler_create(synth(k, v, 1), 0, 8, &s, err, sizeof err) == EP_OK);
        EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_OK);
        if (i % 2)
            EP_CHECK(ep_sampler_stop(s) == EP_OK);
        ep_sampler_destroy(s);
    }
}

EP_TEST(sampler_overflow_counted)
{
    const char *k[] = {"period_ms"};
    const char *v[] = {"0.1"};
    ep_sampler *s = NULL;
    char err[256];
    EP_CHECK(ep_sampler_create(synth(k, v, 1), 0, 3, &s, err, sizeof err) == EP_OK);
    if (!s)
        return;
    EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_OK);
    EP_CHECK(wait_for_samples(s, 10)); /* more than the ring's 3 */
    EP_CHECK(ep_sampler_stop(s) == EP_OK);
    ep_sampler_stats st;
    ep_sampler_get_stats(s, &st);
    EP_CHECK(st.pending == 3);
    EP_CHECK(st.dropped == st.samples - 3 && st.dropped > 0);
    ep_sampler_destroy(s);
}

/* A test source: emits `left` instant samples one per poll, then EP_ERR_EOF;
 * or fails to start when fail_start is set. */
typedef struct {
    int left;
    int fail_start;
    int stopped;
} fake_state;

static int fake_start(ep_source *src, int64_t t)
{
    fake_state *st = src->state;
    if (st->fail_start) {
        snprintf(src->message, sizeof src->message, "fake: device unplugged");
        return EP_ERR_DEVICE;
    }
    return EP_OK;
}

static int fake_poll(ep_source *src, int64_t t, ep_sample *out, size_t cap, size_t *n)
{
    fake_state *st = src->state;
    *n = 0;
    if (st->left <= 0) {
        snprintf(src->message, sizeof src->message, "fake: stream ended");
        return EP_ERR_EOF;
    }
    memset(out, 0, sizeof *out);
    out->t_start_ns = out->t_end_ns = t;
    st->left--;
    *n = 1;
    src->faults++; /* pretend each poll skipped one malformed document */
    return EP_OK;
}

static int fake_stop(ep_source *src, int64_t t, ep_sample *out, size_t cap, size_t *n)
{
    ((fake_state *)src->state)->stopped++;
    *n = 0;
    return EP_OK;
}

static ep_source *fake(fake_state *st)
{
    ep_source *src = calloc(1, sizeof *src);
    src->kind = "fake";
    src->period_ns = 200000;
    src->state = st; /* borrowed: the test owns it, so no destroy hook */
    src->start = fake_start;
    src->poll = fake_poll;
    src->stop = fake_stop;
    return src;
}

EP_TEST(sampler_source_eof_keeps_samples)
{
    fake_state st = {5, 0, 0};
    ep_sampler *s = NULL;
    char err[256];
    EP_CHECK(ep_sampler_create(fake(&st), 0, 100, &s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_OK);
    ep_sampler_stats stats;
    /* Wait (no timing assertion) for the end of the stream. */
    for (int i = 0; i < 5000; i++) {
        ep_sampler_get_stats(s, &stats);
        if (stats.ended)
            break;
        sleep_ms(1);
    }
    EP_CHECK(stats.ended && stats.running);
    EP_CHECK(ep_sampler_stop(s) == EP_OK);
    EP_CHECK(st.stopped == 1);
    ep_sampler_get_stats(s, &stats);
    EP_CHECK(stats.samples == 5 && stats.pending == 5 && stats.faults == 5);
    char msg[EP_SOURCE_MSG_LEN];
    ep_sampler_last_message(s, msg, sizeof msg);
    EP_CHECK(strcmp(msg, "fake: stream ended") == 0);
    ep_sampler_destroy(s);
}

EP_TEST(sampler_start_failure_reported)
{
    fake_state st = {5, 1, 0};
    ep_sampler *s = NULL;
    char err[256] = "";
    EP_CHECK(ep_sampler_create(fake(&st), 0, 100, &s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_ERR_DEVICE);
    EP_CHECK(strcmp(err, "fake: device unplugged") == 0);
    ep_sampler_stats stats;
    ep_sampler_get_stats(s, &stats);
    EP_CHECK(!stats.running && stats.faults == 1 && stats.n_messages == 1);
    EP_CHECK(ep_sampler_stop(s) == EP_OK);
    EP_CHECK(st.stopped == 0);
    ep_sampler_destroy(s);
}

/* start in two halves (launch, await_start) and a stop asked for before the join: the
 * same samples as start/stop (contiguous, the last one final), a stop right after a
 * launch finishes the start itself, a failed start is reported by await_start, and an
 * await with nothing launched is a state error. */
EP_TEST(sampler_launch_await_and_request_stop)
{
    const char *k[] = {"power_w", "period_ms"};
    const char *v[] = {"7", "1"};
    ep_sampler *s = NULL;
    char err[256] = "";
    EP_CHECK(ep_sampler_create(synth(k, v, 2), 0, 4096, &s, err, sizeof err) == EP_OK);
    if (!s)
        return;
    EP_CHECK(ep_sampler_await_start(s, err, sizeof err) == EP_ERR_STATE);
    EP_CHECK(ep_sampler_launch(s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_launch(s, err, sizeof err) == EP_ERR_STATE);
    EP_CHECK(ep_sampler_await_start(s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_await_start(s, err, sizeof err) == EP_OK); /* running: nothing left to finish */
    EP_CHECK(wait_for_samples(s, 3));
    ep_sampler_request_stop(s);
    ep_sampler_request_stop(s);
    EP_CHECK(ep_sampler_stop(s) == EP_OK);
    ep_sampler_request_stop(s); /* not running: no-op */
    static ep_sample out[4096];
    size_t n = ep_sampler_drain(s, out, 4096);
    EP_CHECK(n >= 3);
    for (size_t i = 0; i < n; i++) {
        EP_CHECK(out[i].power_w[0] == 7.0);
        if (i)
            EP_CHECK(out[i].t_start_ns == out[i - 1].t_end_ns);
        EP_CHECK(((out[i].flags & EP_SFLAG_FINAL) != 0) == (i == n - 1));
    }
    for (int i = 0; i < 200; i++) { /* a stop (or a destroy) right after the launch */
        EP_CHECK(ep_sampler_launch(s, err, sizeof err) == EP_OK);
        EP_CHECK(ep_sampler_stop(s) == EP_OK);
    }
    ep_sampler_stats stats;
    ep_sampler_get_stats(s, &stats);
    EP_CHECK(!stats.running);
    EP_CHECK(ep_sampler_launch(s, err, sizeof err) == EP_OK);
    ep_sampler_destroy(s);

    fake_state st = {5, 1, 0};
    s = NULL;
    EP_CHECK(ep_sampler_create(fake(&st), 0, 100, &s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_launch(s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_await_start(s, err, sizeof err) == EP_ERR_DEVICE);
    EP_CHECK(strcmp(err, "fake: device unplugged") == 0);
    EP_CHECK(ep_sampler_launch(s, err, sizeof err) == EP_OK); /* failed again, finished by the stop */
    EP_CHECK(ep_sampler_stop(s) == EP_OK);
    ep_sampler_get_stats(s, &stats);
    EP_CHECK(!stats.running && st.stopped == 0);
    ep_sampler_destroy(s);
}

EP_TEST(sampler_rejects_bad_args)
{
    ep_sampler *s = NULL;
    char err[256];
    fake_state st = {0, 0, 0};
    EP_CHECK(ep_sampler_create(fake(&st), 5, 10, &s, err, sizeof err) == EP_ERR_ARG); /* 5 ns */
    EP_CHECK(ep_sampler_create(fake(&st), 0, 0, &s, err, sizeof err) == EP_ERR_ARG);
    EP_CHECK(ep_sampler_create(NULL, 0, 10, &s, err, sizeof err) == EP_ERR_ARG);
    EP_CHECK(s == NULL);
}

/* Boundary reads from another thread than the sampler's: every reading reaches the ring in
 * time order, the samples still tile time, each boundary reading ends exactly at the time
 * asked for, and a reading at or before the sampler's last one gives no sample. */
EP_TEST(sampler_boundary_reads_tile_time)
{
    const char *k[] = {"period_ms", "power_w"};
    const char *v[] = {"0.5", "7"};
    ep_sampler *s = NULL;
    char err[256];
    EP_CHECK(ep_sampler_create(synth(k, v, 2), 0, 1 << 16, &s, err, sizeof err) == EP_OK);
    if (!s)
        return;
    EP_CHECK(ep_sampler_boundary_read(s, ep_now_ns()) == EP_ERR_STATE); /* not started */
    EP_CHECK(ep_sampler_start(s, err, sizeof err) == EP_OK);
    EP_CHECK(ep_sampler_set_boundary_target(s) == EP_OK);
    int64_t asked[200];
    for (int i = 0; i < 200; i++) {
        asked[i] = ep_now_ns();
        int64_t t = asked[i];
        ep_boundary_fire(&t, i % 2);
        EP_CHECK(t == asked[i]); /* a plain read (nothing armed) leaves the time as given */
        struct timespec nap = {0, 100000L};
        nanosleep(&nap, NULL);
    }
    EP_CHECK(ep_sampler_boundary_read(s, 1) == EP_OK);  /* long past: no sample */
    ep_sampler_set_boundary_target(NULL);
    int64_t t_none = ep_now_ns();
    ep_boundary_fire(&t_none, 0);                        /* no target: nothing */
    EP_CHECK(ep_sampler_arm_sync(s, 2) == EP_ERR_UNSUPPORTED); /* synthetic has no counter to wait on */
    ep_sampler_stop(s);
    static ep_sample out[1 << 16];
    size_t n = ep_sampler_drain(s, out, 1 << 16);
    int64_t reads = ep_sampler_boundary_reads(s);
    EP_CHECK(n > 200 && reads > 100 && reads <= 200);
    int ordered = 1, flagged = 0, exact = 1;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && out[i].t_start_ns != out[i - 1].t_end_ns)
            ordered = 0;
        if (out[i].flags & EP_SFLAG_BOUNDARY) {
            flagged++;
            while (j < 200 && asked[j] < out[i].t_end_ns)
                j++;
            if (j >= 200 || asked[j] != out[i].t_end_ns)
                exact = 0;
        }
        if (out[i].power_w[EP_DOM_CPU] != 7.0)
            exact = 0;
    }
    EP_CHECK(ordered && exact && flagged == reads);
    ep_sampler_destroy(s);
}
