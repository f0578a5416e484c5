/* square_writer.c: a fake RAPL counter driven by a square wave of power, as punctual as
 * the hardware it stands for.
 *
 *     square_writer ZONE_DIR T0_NS LOW_W HIGH_W PERIOD_MS UPDATE_MS
 *
 * Writes ZONE_DIR/energy_uj (a new file renamed over the old one, so a reader never sees
 * half a number) on the grid t0 + k * update: the value for tick k is the exact energy of
 * the wave up to that tick, E(t_k) in whole microjoules, so a read at t sees E of the
 * latest tick written, as a real counter that updates every UPDATE_MS does.  Power is
 * HIGH_W during the first half of each period (from T0_NS), LOW_W in the second (the same
 * wave as energy_uj() in square_writer.py, the tests' oracle).
 *
 * Hardware updates its counter on time whatever the load; a Python writer on this shared
 * machine fell milliseconds behind, so this one is C, sleeps to absolute deadlines
 * (clock_nanosleep TIMER_ABSTIME on CLOCK_MONOTONIC, the clock of energyprof's
 * timestamps), and asks for a real-time priority where allowed (root).  A tick whose
 * value showed only after the next tick was due is logged to ZONE_DIR/late_ns ("due_ns
 * shown_ns" per line): there the fake failed to behave like hardware, and a test can see
 * it.  At exit it writes ZONE_DIR/latency_ns: the longest any tick's value took to show
 * after its due time (the fake's own write latency; hardware has none).  Exits when
 * ZONE_DIR/stop appears (checked every millisecond of ticks).
 *
 * Memory: fixed buffers on the stack only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Exact microjoules of the wave over [t0, t): LOW_W all along plus (HIGH_W - LOW_W) while high. */
static double energy_uj(int64_t t_ns, int64_t t0_ns, double low_w, double high_w, int64_t period_ns)
{
    int64_t u = t_ns > t0_ns ? t_ns - t0_ns : 0;
    int64_t k = u / period_ns, r = u % period_ns, half = period_ns / 2;
    int64_t high_ns = k * half + (r < half ? r : half);
    return (low_w * (double)u + (high_w - low_w) * (double)high_ns) * 1e-3;
}

static void sleep_until(int64_t t_ns)
{
    struct timespec ts = {(time_t)(t_ns / 1000000000LL), (long)(t_ns % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

int main(int argc, char **argv)
{
    char path[PATH_MAX], tmp[PATH_MAX], stop[PATH_MAX], late_path[PATH_MAX];
    if (argc != 7) {
        fprintf(stderr, "usage: %s ZONE_DIR T0_NS LOW_W HIGH_W PERIOD_MS UPDATE_MS\n", argv[0]);
        return 2;
    }
    const char *zone = argv[1];
    int64_t t0 = strtoll(argv[2], NULL, 10);
    double low = strtod(argv[3], NULL), high = strtod(argv[4], NULL);
    int64_t period_ns = (int64_t)(strtod(argv[5], NULL) * 1e6);
    int64_t update_ns = (int64_t)(strtod(argv[6], NULL) * 1e6);
    if (period_ns <= 0 || update_ns <= 0) {
        fprintf(stderr, "square_writer: PERIOD_MS and UPDATE_MS must be > 0\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/energy_uj", zone);
    snprintf(tmp, sizeof tmp, "%s/energy_uj.tmp", zone);
    snprintf(stop, sizeof stop, "%s/stop", zone);
    snprintf(late_path, sizeof late_path, "%s/late_ns", zone);
    FILE *late = fopen(late_path, "w");
    if (!late) {
        perror("square_writer: late_ns");
        return 1;
    }
    struct sched_param sp = {.sched_priority = 10};
    if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0)
        (void)setpriority(PRIO_PROCESS, 0, -10); /* not root: at least ahead of the model */

    int64_t k = (now_ns() - t0) / update_ns;
    if (k < 0)
        k = 0;
    int64_t checks_every = 1000000LL / update_ns + 1; /* about once a millisecond */
    int64_t max_latency_ns = 0;
    for (int64_t i = 0;; i++) {
        if (i % checks_every == 0 && access(stop, F_OK) == 0)
            break;
        int64_t due = t0 + k * update_ns;
        /* The value for the coming update is known ahead: write it aside, wake a little
         * early, spin to the due time and only then rename it into place, so it shows at
         * its update time (a rename takes microseconds; a wake-up can take a hundred). */
        FILE *f = fopen(tmp, "w");
        if (!f) {
            perror("square_writer: energy_uj.tmp");
            fclose(late);
            return 1;
        }
        fprintf(f, "%lld\n", (long long)energy_uj(due, t0, low, high, period_ns));
        fclose(f);
        sleep_until(due - (update_ns / 4 < 200000 ? update_ns / 4 : 200000));
        while (now_ns() < due)
            ;
        if (rename(tmp, path) != 0) {
            perror("square_writer: rename");
            fclose(late);
            return 1;
        }
        int64_t shown = now_ns();
        if (shown - due > max_latency_ns)
            max_latency_ns = shown - due;
        if (shown - due > update_ns) {
            fprintf(late, "%lld %lld\n", (long long)due, (long long)shown);
            fflush(late);
        }
        /* The next update on the grid; a writer that fell behind skips to the latest one due. */
        k++;
        int64_t behind = (shown - t0) / update_ns;
        if (behind >= k)
            k = behind + 1;
    }
    fclose(late);
    char lat_path[PATH_MAX];
    snprintf(lat_path, sizeof lat_path, "%s/latency_ns", zone);
    FILE *lat = fopen(lat_path, "w");
    if (lat) {
        fprintf(lat, "%lld\n", (long long)max_latency_ns);
        fclose(lat);
    }
    return 0;
}
