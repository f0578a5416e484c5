/* drive.c: runs the ioreport source's macOS code path on Linux against
 * fake_ioreport.c.  Built by tests/test_ioreport.py with
 *   gcc -DEP_IOREPORT_COMPILE_LIVE -Icsrc/kernels -Icsrc/sources tests/fake_ioreport/drive.c
 *       csrc/kernels/ep_ioreport.c csrc/sources/ep_src_ioreport.c csrc/kernels/ep_errors.c
 *       csrc/kernels/ep_sample.c -ldl -lm
 *
 *   drive snapshot N      N live snapshots, one channel per line "name|unit|value", "--" between
 *   drive source T0 T1..  create/start at T0, poll at each T (the last one is stop); one line per
 *                         sample "t_start t_end kind flags cpu gpu ane dram package", then
 *                         "faults N", "message TEXT"
 * Both end with "live_objects N": fake objects still alive after everything was closed.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"
#include "ep_ioreport.h"
#include "ep_source.h"

int ep_src_ioreport_create(ep_source *src, const char *const *keys, const char *const *values, size_t n);

static void print_sample(const ep_sample *s)
{
    printf("%lld %lld %d %u", (long long)s->t_start_ns, (long long)s->t_end_ns, s->kind, s->flags);
    for (int d = 0; d < EP_NDOMAINS; d++)
        printf(" %.17g", s->power_w[d]);
    printf("\n");
}

int main(int argc, char **argv)
{
    /* Hold the fake library open so its object counter survives the reader's dlclose. */
    void *fake = dlopen(getenv("ENERGYPROF_IOREPORT_LIB"), RTLD_NOW);
    long (*live_objects)(void) = fake ? (long (*)(void))dlsym(fake, "fake_live_objects") : NULL;
    char msg[256] = "";
    int rc = 0;
    if (argc >= 3 && strcmp(argv[1], "snapshot") == 0) {
        ep_ioreport_live *live = NULL;
        rc = ep_ioreport_live_open(&live, msg, sizeof msg);
        if (rc != EP_OK) {
            printf("error %d %s\n", rc, msg);
        } else {
            static ep_ioreport_channel ch[EP_IOREPORT_MAX_CHANNELS];
            for (int k = 0; k < atoi(argv[2]); k++) {
                size_t n = 0;
                rc = ep_ioreport_live_snapshot(live, ch, EP_IOREPORT_MAX_CHANNELS, &n, msg, sizeof msg);
                if (rc != EP_OK) {
                    printf("error %d %s\n", rc, msg);
                    break;
                }
                for (size_t i = 0; i < n; i++)
                    printf("%s|%s|%lld\n", ch[i].name, ch[i].unit, (long long)ch[i].value);
                printf("--\n");
            }
            ep_ioreport_live_close(live);
        }
    } else if (argc >= 4 && strcmp(argv[1], "source") == 0) {
        ep_source *src = calloc(1, sizeof *src);
        rc = ep_src_ioreport_create(src, NULL, NULL, 0);
        if (rc != EP_OK) {
            printf("error %d %s\n", rc, src->message);
        } else if ((rc = src->start(src, atoll(argv[2]))) != EP_OK) {
            printf("error %d %s\n", rc, src->message);
        } else {
            for (int k = 3; k < argc; k++) {
                ep_sample out[4];
                size_t n = 0;
                rc = k == argc - 1 ? src->stop(src, atoll(argv[k]), out, 4, &n)
                                   : src->poll(src, atoll(argv[k]), out, 4, &n);
                for (size_t i = 0; i < n; i++)
                    print_sample(&out[i]);
            }
            printf("faults %lld\nmessage %s\n", (long long)src->faults, src->message);
        }
        if (src->destroy)
            src->destroy(src);
        free(src);
    }
    printf("live_objects %ld\n", live_objects ? live_objects() : -1L);
    return rc == EP_OK ? 0 : 1;
}
