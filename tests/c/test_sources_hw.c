/* test_sources_hw.c: the hardware sources without Python: rapl on a fake powercap
 * tree, estimate's model and labels, nvml's missing-library error, ioreport's
 * delta math and its "macOS only" create. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_ioreport.h"
#include "ep_source.h"

static void write_text(const char *dir, const char *file, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void write_num(const char *dir, const char *file, long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld\n", v);
    write_text(dir, file, buf);
}

/* A zone directory with name, energy_uj and max_energy_range_uj. */
static void make_zone(const char *dir, const char *name, long long uj, long long range)
{
    mkdir(dir, 0755);
    write_text(dir, "name", name);
    write_num(dir, "energy_uj", uj);
    write_num(dir, "max_energy_range_uj", range);
}

static void rm_tree(const char *root)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "  (could not remove %s)\n", root);
}

static int create(const char *kind, const char *key, const char *value, ep_source **src, char *err)
{
    const char *keys[1] = {key}, *values[1] = {value};
    return ep_source_create(kind, keys, values, key ? 1 : 0, src, err, EP_SOURCE_MSG_LEN);
}

EP_TEST(rapl_two_packages_exact_and_wrap)
{
    char root[] = "/tmp/ep_rapl_XXXXXX", d[512];
    EP_CHECK(mkdtemp(root) != NULL);
    const long long range = 1000000000LL; /* 1 kJ */
    snprintf(d, sizeof d, "%s/intel-rapl:0", root);
    make_zone(d, "package-0", 100, range);
    snprintf(d, sizeof d, "%s/intel-rapl:0/intel-rapl:0:0", root);
    make_zone(d, "core", 50, range);
    snprintf(d, sizeof d, "%s/intel-rapl:0/intel-rapl:0:1", root);
    make_zone(d, "uncore", 7, range);
    snprintf(d, sizeof d, "%s/intel-rapl:0/intel-rapl:0:2", root);
    make_zone(d, "dram", 10, range);
    snprintf(d, sizeof d, "%s/intel-rapl:1", root);
    make_zone(d, "package-1", range - 1000, range); /* wraps in the second interval */
    snprintf(d, sizeof d, "%s/intel-rapl:1/intel-rapl:1:0", root);
    make_zone(d, "core", 0, range);
    snprintf(d, sizeof d, "%s/intel-rapl:1/intel-rapl:1:1", root);
    make_zone(d, "dram", 0, range);
    snprintf(d, sizeof d, "%s/intel-rapl:2", root);
    make_zone(d, "psys", 0, range); /* platform zone: must not be added to package */

    ep_source *src = NULL;
    char err[EP_SOURCE_MSG_LEN] = "";
    int rc = create("rapl", "root", root, &src, err);
    EP_CHECK(rc == EP_OK);
    if (rc != EP_OK) {
        fprintf(stderr, "  %s\n", err);
        rm_tree(root);
        return;
    }
    EP_CHECK(strstr(src->meta_json, "\"packages\":2") != NULL);
    EP_CHECK(src->start(src, 1000000000LL) == EP_OK);

    /* +20 J package-0, +10 J core-0, +1 J dram-0; package-1 +0.0005 J ... */
    snprintf(d, sizeof d, "%s/intel-rapl:0", root);
    write_num(d, "energy_uj", 100 + 20000000LL);
    snprintf(d, sizeof d, "%s/intel-rapl:0/intel-rapl:0:0", root);
    write_num(d, "energy_uj", 50 + 10000000LL);
    snprintf(d, sizeof d, "%s/intel-rapl:0/intel-rapl:0:2", root);
    write_num(d, "energy_uj", 10 + 1000000LL);
    snprintf(d, sizeof d, "%s/intel-rapl:1", root);
    write_num(d, "energy_uj", range - 500);
    snprintf(d, sizeof d, "%s/intel-rapl:1/intel-rapl:1:0", root);
    write_num(d, "energy_uj", 2000000LL);
    snprintf(d, sizeof d, "%s/intel-rapl:1/intel-rapl:1:1", root);
    write_num(d, "energy_uj", 3000000LL);
    snprintf(d, sizeof d, "%s/intel-rapl:2", root);
    write_num(d, "energy_uj", 999999);

    ep_sample s[4];
    size_t n = 0;
    EP_CHECK(src->poll(src, 3000000000LL, s, 4, &n) == EP_OK); /* 2 s */
    EP_CHECK(n == 1);
    EP_CHECK(s[0].kind == EP_KIND_INTERVAL);
    EP_CHECK(s[0].t_start_ns == 1000000000LL && s[0].t_end_ns == 3000000000LL);
    EP_CHECK(s[0].flags == 0);
    EP_CHECK_NEAR(s[0].power_w[EP_DOM_PACKAGE], (20.0 + 500e-6) / 2.0, 1e-12);
    EP_CHECK_NEAR(s[0].power_w[EP_DOM_CPU], (10.0 + 2.0) / 2.0, 1e-12);
    EP_CHECK_NEAR(s[0].power_w[EP_DOM_DRAM], (1.0 + 3.0) / 2.0, 1e-12);
    EP_CHECK(isnan(s[0].power_w[EP_DOM_GPU]) && isnan(s[0].power_w[EP_DOM_ANE]));

    /* package-1 wraps: range-500 -> 1500 is 2000 uJ. */
    snprintf(d, sizeof d, "%s/intel-rapl:1", root);
    write_num(d, "energy_uj", 1500);
    EP_CHECK(src->stop(src, 4000000000LL, s, 4, &n) == EP_OK);
    EP_CHECK(n == 1);
    EP_CHECK((s[0].flags & EP_SFLAG_WRAPPED) && (s[0].flags & EP_SFLAG_FINAL));
    EP_CHECK_NEAR(s[0].power_w[EP_DOM_PACKAGE], 2000e-6, 1e-15);
    EP_CHECK_NEAR(s[0].power_w[EP_DOM_CPU], 0.0, 0);
    ep_source_destroy(src);
    rm_tree(root);
}

EP_TEST(rapl_missing_tree_and_bad_file)
{
    ep_source *src = NULL;
    char err[EP_SOURCE_MSG_LEN] = "";
    EP_CHECK(create("rapl", "root", "/nonexistent/powercap", &src, err) == EP_ERR_NOTFOUND);
    EP_CHECK(strstr(err, "/nonexistent/powercap") != NULL);
    EP_CHECK(create("rapl", "bogus", "1", &src, err) == EP_ERR_ARG);

    /* A tree without package zones. */
    char root[] = "/tmp/ep_rapl_XXXXXX", d[512];
    EP_CHECK(mkdtemp(root) != NULL);
    EP_CHECK(create("rapl", "root", root, &src, err) == EP_ERR_NOTFOUND);
    EP_CHECK(strstr(err, "package") != NULL);

    /* energy_uj that cannot be read (a directory: EISDIR even for root). */
    snprintf(d, sizeof d, "%s/intel-rapl:0", root);
    mkdir(d, 0755);
    write_text(d, "name", "package-0");
    write_num(d, "max_energy_range_uj", 1000);
    snprintf(d, sizeof d, "%s/intel-rapl:0/energy_uj", root);
    mkdir(d, 0755);
    EP_CHECK(create("rapl", "root", root, &src, err) == EP_ERR_IO);
    EP_CHECK(strstr(err, "energy_uj") != NULL);
    rm_tree(root);
}

EP_TEST(estimate_model_and_labels)
{
    ep_source *src = NULL;
    char err[EP_SOURCE_MSG_LEN] = "";
    const char *keys[] = {"watts_per_core", "idle_w"}, *values[] = {"10", "2.5"};
    EP_CHECK(ep_source_create("estimate", keys, values, 2, &src, err, sizeof err) == EP_OK);
    if (!src)
        return;
    EP_CHECK(src->flags & EP_SRC_ESTIMATED);
    EP_CHECK(strstr(src->meta_json, "\"watts_per_core\":10") != NULL);
    EP_CHECK(strstr(src->meta_json, "\"idle_w\":2.5") != NULL);
    EP_CHECK(src->start(src, 1000) == EP_OK);
    ep_sample s[2];
    size_t n = 0;
    EP_CHECK(src->poll(src, 1000 + 1000000000LL, s, 2, &n) == EP_OK);
    EP_CHECK(n == 1);
    EP_CHECK(s[0].flags & EP_SFLAG_ESTIMATED);
    /* A process that slept has ~0 CPU time: the estimate is at least idle_w and at
     * most idle_w + n_cpu * 10. */
    EP_CHECK(s[0].power_w[EP_DOM_CPU] >= 2.5);
    EP_CHECK(isnan(s[0].power_w[EP_DOM_GPU]));
    EP_CHECK(src->stop(src, 2000 + 1000000000LL, s, 2, &n) == EP_OK);
    EP_CHECK(n == 1 && (s[0].flags & EP_SFLAG_FINAL) && (s[0].flags & EP_SFLAG_ESTIMATED));
    ep_source_destroy(src);

    EP_CHECK(create("estimate", "watts_per_core", "-1", &src, err) == EP_ERR_ARG);
    EP_CHECK(strstr(err, "watts_per_core") != NULL);
    EP_CHECK(create("estimate", "tdp", "1", &src, err) == EP_ERR_ARG);
}

EP_TEST(nvml_library_missing)
{
    ep_source *src = NULL;
    char err[EP_SOURCE_MSG_LEN] = "";
    const char *old = getenv("ENERGYPROF_NVML_LIB");
    char *saved = old ? strdup(old) : NULL;
    setenv("ENERGYPROF_NVML_LIB", "/nonexistent/libnvidia-ml.so.1", 1);
    EP_CHECK(create("nvml", NULL, NULL, &src, err) == EP_ERR_NOTFOUND);
    EP_CHECK(strstr(err, "libnvidia-ml.so.1") != NULL);
    EP_CHECK(strstr(err, "driver") != NULL);
    EP_CHECK(create("nvml", "index", "x", &src, err) == EP_ERR_ARG);
    /* a device list is checked before the library is loaded, each error naming its entry */
    EP_CHECK(create("nvml", "devices", "0,x", &src, err) == EP_ERR_ARG);
    EP_CHECK(strstr(err, "'x'") != NULL);
    EP_CHECK(create("nvml", "devices", "1,1", &src, err) == EP_ERR_ARG);
    EP_CHECK(strstr(err, "GPU 1 twice") != NULL);
    EP_CHECK(create("nvml", "devices", "0,", &src, err) == EP_ERR_ARG);
    EP_CHECK(create("nvml", "index", "0,1", &src, err) == EP_ERR_ARG);
    EP_CHECK(strstr(err, "devices=0,1") != NULL);
    EP_CHECK(create("nvml", "devices", "all", &src, err) == EP_ERR_NOTFOUND); /* well formed: the library is missing */
    if (saved) {
        setenv("ENERGYPROF_NVML_LIB", saved, 1);
        free(saved);
    } else {
        unsetenv("ENERGYPROF_NVML_LIB");
    }
}

EP_TEST(ioreport_create_is_macos_only)
{
    ep_source *src = NULL;
    char err[EP_SOURCE_MSG_LEN] = "";
#ifndef __APPLE__
    EP_CHECK(create("ioreport", NULL, NULL, &src, err) == EP_ERR_UNSUPPORTED);
    EP_CHECK(strstr(err, "macOS only") != NULL);
#endif
    EP_CHECK(create("ioreport", "x", "1", &src, err) == EP_ERR_ARG);
}

static ep_ioreport_channel ch(const char *name, const char *unit, int64_t v)
{
    ep_ioreport_channel c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "%s", name);
    snprintf(c.unit, sizeof c.unit, "%s", unit);
    c.value = v;
    return c;
}

EP_TEST(ioreport_delta_units_and_mapping)
{
    /* M1-Max-like names: the CPU total wins over clusters and cores; GPU in nJ. */
    ep_ioreport_channel a[] = {ch("EACC_CPU", "mJ", 0),  ch("PACC0_CPU0", "mJ", 0), ch("CPU Energy", "mJ", 1000),
                               ch("GPU Energy", "nJ", 0), ch("GPU SRAM0", "mJ", 0),  ch("ANE0", "mJ", 5),
                               ch("DRAM0", "mJ", 10),     ch("ISP0", "mJ", 0),       ch("PCIe Port 0 Energy", "uJ", 0)};
    ep_ioreport_channel b[] = {ch("EACC_CPU", "mJ", 999), ch("PACC0_CPU0", "mJ", 999), ch("CPU Energy", "mJ", 3000),
                               ch("GPU Energy", "nJ", 500000000), ch("GPU SRAM0", "mJ", 77), ch("ANE0", "mJ", 5),
                               ch("DRAM0", "mJ", 410), ch("ISP0", "mJ", 9), ch("PCIe Port 0 Energy", "uJ", 99)};
    ep_sample s;
    uint32_t faults = 99;
    char msg[EP_IOREPORT_MSG_LEN];
    EP_CHECK(ep_ioreport_delta(NULL, a, 9, b, 9, 500000000LL, &s, &faults, msg, sizeof msg) == EP_OK);
    EP_CHECK(faults == 0 && s.flags == 0 && msg[0] == '\0');
    EP_CHECK_NEAR(s.power_w[EP_DOM_CPU], 2.0 / 0.5, 1e-12);
    EP_CHECK_NEAR(s.power_w[EP_DOM_GPU], 0.5 / 0.5, 1e-12);
    EP_CHECK_NEAR(s.power_w[EP_DOM_ANE], 0.0, 0);
    EP_CHECK_NEAR(s.power_w[EP_DOM_DRAM], 0.4 / 0.5, 1e-12);
    EP_CHECK(isnan(s.power_w[EP_DOM_PACKAGE]));
    EP_CHECK(ep_ioreport_delta(NULL, a, 9, b, 9, 0, &s, &faults, msg, sizeof msg) == EP_ERR_ARG);
}

EP_TEST(ioreport_delta_faults)
{
    ep_sample s;
    uint32_t faults = 0;
    char msg[EP_IOREPORT_MSG_LEN];
    /* Clusters summed when there is no total; a backwards GPU counter; an unknown name. */
    ep_ioreport_channel a[] = {ch("ECPU", "mJ", 0), ch("PCPU", "mJ", 0), ch("PCPU0", "mJ", 0),
                               ch("GPU Energy", "nJ", 100), ch("CPU Turbo Energy", "mJ", 0)};
    ep_ioreport_channel b[] = {ch("ECPU", "mJ", 100), ch("PCPU", "mJ", 300), ch("PCPU0", "mJ", 250),
                               ch("GPU Energy", "nJ", 50), ch("CPU Turbo Energy", "mJ", 7)};
    EP_CHECK(ep_ioreport_delta(NULL, a, 5, b, 5, 1000000000LL, &s, &faults, msg, sizeof msg) == EP_OK);
    EP_CHECK_NEAR(s.power_w[EP_DOM_CPU], 0.4, 1e-12);
    EP_CHECK(isnan(s.power_w[EP_DOM_GPU]));
    EP_CHECK(faults == (EP_IOREPORT_FAULT_BACKWARDS | EP_IOREPORT_FAULT_UNKNOWN));
    EP_CHECK(s.flags & EP_SFLAG_SUSPECT);
    EP_CHECK(strstr(msg, "CPU Turbo Energy") && strstr(msg, "GPU Energy"));

    /* Stuck at zero: CPU reads 0 while the GPU moves (the M5 report). */
    ep_ioreport_channel c[] = {ch("CPU Energy", "mJ", 5), ch("GPU Energy", "nJ", 0)};
    ep_ioreport_channel d[] = {ch("CPU Energy", "mJ", 5), ch("GPU Energy", "nJ", 1000000)};
    EP_CHECK(ep_ioreport_delta(NULL, c, 2, d, 2, 1000000000LL, &s, &faults, msg, sizeof msg) == EP_OK);
    EP_CHECK(faults == EP_IOREPORT_FAULT_STUCK_ZERO);
    EP_CHECK_NEAR(s.power_w[EP_DOM_CPU], 0.0, 0);

    /* Alternating 0 / double readings, flagged from the fourth interval on. */
    ep_ioreport_state st;
    memset(&st, 0, sizeof st);
    int64_t ane[] = {0, 0, 20, 20, 40, 40};
    ep_ioreport_channel prev = ch("ANE", "mJ", ane[0]);
    for (int k = 1; k < 6; k++) {
        ep_ioreport_channel cur = ch("ANE", "mJ", ane[k]);
        EP_CHECK(ep_ioreport_delta(&st, &prev, 1, &cur, 1, 1000000000LL, &s, &faults, msg, sizeof msg) == EP_OK);
        EP_CHECK(((faults & EP_IOREPORT_FAULT_ALTERNATING) != 0) == (k >= 4));
        prev = cur;
    }

    /* A channel that vanished and a unit nobody knows. */
    ep_ioreport_channel e[] = {ch("DRAM", "mJ", 0), ch("ANE", "mJ", 0)};
    ep_ioreport_channel f[] = {ch("ANE", "kWh", 1)};
    EP_CHECK(ep_ioreport_delta(NULL, e, 2, f, 1, 1000000000LL, &s, &faults, msg, sizeof msg) == EP_OK);
    EP_CHECK(faults == (EP_IOREPORT_FAULT_CHANNELS | EP_IOREPORT_FAULT_UNIT));
    EP_CHECK(isnan(s.power_w[EP_DOM_DRAM]) && isnan(s.power_w[EP_DOM_ANE]));
}

EP_TEST(ioreport_classify_names)
{
    EP_CHECK(ep_ioreport_classify("CPU Energy") == EP_DOM_CPU);
    EP_CHECK(ep_ioreport_classify("DIE_1_CPU Energy") == EP_DOM_CPU);
    EP_CHECK(ep_ioreport_classify("GPU Energy") == EP_DOM_GPU);
    EP_CHECK(ep_ioreport_classify("ANE0_1") == EP_DOM_ANE);
    EP_CHECK(ep_ioreport_classify("ANE0_SRAM") == EP_IOREPORT_IGNORED);
    EP_CHECK(ep_ioreport_classify("DRAM0") == EP_DOM_DRAM);
    EP_CHECK(ep_ioreport_classify("PACC1_CPU") == EP_IOREPORT_CPU_CLUSTER);
    EP_CHECK(ep_ioreport_classify("DIE_0_EACC_CPU") == EP_IOREPORT_CPU_CLUSTER);
    EP_CHECK(ep_ioreport_classify("MCPU1") == EP_IOREPORT_CPU_CLUSTER);
    EP_CHECK(ep_ioreport_classify("MCPU1_3") == EP_IOREPORT_IGNORED);
    EP_CHECK(ep_ioreport_classify("PACC_2") == EP_IOREPORT_IGNORED);
    EP_CHECK(ep_ioreport_classify("PACC0_CPU3") == EP_IOREPORT_IGNORED);
    EP_CHECK(ep_ioreport_classify("PCPUDTL0a") == EP_IOREPORT_IGNORED);
    EP_CHECK(ep_ioreport_classify("GPU0") == EP_IOREPORT_IGNORED);
    EP_CHECK(ep_ioreport_classify("AMCC0") == EP_IOREPORT_IGNORED);
    EP_CHECK(ep_ioreport_classify("MYSTERY_ACC_CPU") == EP_IOREPORT_UNKNOWN);
    EP_CHECK(ep_ioreport_classify("GPU Energy 2") == EP_IOREPORT_UNKNOWN);
}

/* The shared meta_json escaper: appends, escapes quote/backslash/controls, and stops
 * before an escape that would not fit (never a cut escape, always terminated). */
EP_TEST(source_json_escape_appends_and_bounds)
{
    char buf[32] = "{\"p\": \"";
    ep_source_json_escape(buf, sizeof buf, "a\"b\\c\n");
    EP_CHECK(strcmp(buf, "{\"p\": \"a\\\"b\\\\c\\u000a") == 0);
    char small[10] = "";
    ep_source_json_escape(small, sizeof small, "\x01xyz");
    /* "\u0001" (6) fits with room to spare (0 + 7 < 10); after it 6 + 7 >= 10 stops. */
    EP_CHECK(strcmp(small, "\\u0001") == 0);
    char full[8] = "abcdefg";
    ep_source_json_escape(full, sizeof full, "zz");
    EP_CHECK(strcmp(full, "abcdefg") == 0);
}
