/* test_plist.c: the framer, the parser, the plist replay source and the
 * powermetrics source (driven with the fake executables in tests/fake_powermetrics).
 * Run from the repository root (make ctest), which holds the captures in tests/data/powermetrics. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ep_clock.h"
#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_plist.h"
#include "ep_source.h"

#define FIXDIR "tests/data/powermetrics/"
#define FAKEDIR "tests/fake_powermetrics/"

static const char *const xml_fixtures[] = {
    "matiasinsaurralde-battery-m4pro.plist", "matiasinsaurralde-gpu_power-m4pro.plist",
    "matiasinsaurralde-gpu_power_multiple_samples-m4pro.plist", "pause-monitor-m4max.plist",
    "pumas-m1-2.plist", "pumas-m1.plist", NULL};

/* Owner: returns a malloc'd buffer (caller frees), NUL-terminated, or NULL. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "  cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    return buf;
}

static char *fixture(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, FIXDIR "%s", name);
    return read_file(path, len);
}

/* Frames of data fed in chunks of `chunk` bytes (0 = all at once), as offsets
 * (frame start relative to data) and lengths; returns the count. */
static size_t frame_all(const char *data, size_t len, size_t chunk, size_t max_frame, const char **starts,
                        size_t *lens, size_t cap, ep_plist_framer_stats *stats, char **copies)
{
    ep_plist_framer *f = NULL;
    size_t n = 0, off = 0;
    if (ep_plist_framer_new(max_frame, &f) != EP_OK)
        return 0;
    if (chunk == 0)
        chunk = len ? len : 1;
    for (;;) {
        ep_plist_frame fr;
        while (ep_plist_framer_next(f, &fr) == EP_OK) {
            if (n < cap) {
                copies[n] = malloc(fr.len ? fr.len : 1);
                memcpy(copies[n], fr.data, fr.len);
                starts[n] = copies[n];
                lens[n] = fr.len;
            }
            n++;
        }
        if (off >= len)
            break;
        size_t k = len - off < chunk ? len - off : chunk;
        ep_plist_framer_feed(f, data + off, k);
        off += k;
        if (off >= len)
            ep_plist_framer_finish(f);
    }
    if (len == 0) {
        ep_plist_framer_finish(f);
    }
    if (stats)
        ep_plist_framer_stats_get(f, stats);
    ep_plist_framer_free(f);
    return n;
}

static void free_copies(char **copies, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(copies[i]);
}

/* Every XML capture splits exactly like split(b"\0") (leading/trailing whitespace
 * aside), whether it arrives whole, byte by byte or in odd chunks. */
EP_TEST(plist_framer_fixtures_match_nul_split)
{
    for (const char *const *name = xml_fixtures; *name; name++) {
        size_t len = 0;
        char *data = fixture(*name, &len);
        EP_CHECK(data != NULL);
        if (!data)
            continue;
        /* Reference: pieces between NULs, trimmed of whitespace. */
        const char *ref_s[16];
        size_t ref_l[16], n_ref = 0;
        const char *p = data, *end = data + len;
        while (p < end && n_ref < 16) {
            const char *z = memchr(p, 0, (size_t)(end - p));
            const char *q = z ? z : end;
            const char *a = p, *b = q;
            while (a < b && (*a == ' ' || *a == '\n'))
                a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\n'))
                b--;
            if (b > a) {
                ref_s[n_ref] = a;
                ref_l[n_ref++] = (size_t)(b - a);
            }
            p = q + 1;
        }
        size_t chunks[] = {0, 1, 7, 4093};
        for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
            if (chunks[c] == 1 && len > 40000)
                continue; /* byte by byte on the 260 KB capture is slow under valgrind */
            const char *s[16];
            size_t l[16];
            char *copies[16];
            size_t n = frame_all(data, len, chunks[c], 0, s, l, 16, NULL, copies);
            EP_CHECK(n == n_ref);
            for (size_t i = 0; i < n && i < n_ref; i++)
                EP_CHECK(l[i] == ref_l[i] && memcmp(s[i], ref_s[i], l[i]) == 0);
            free_copies(copies, n < 16 ? n : 16);
        }
        free(data);
    }
}

EP_TEST(plist_framer_garbage_binary_oversize)
{
    size_t len = 0;
    char *doc = fixture("pumas-m1-2.plist", &len);
    EP_CHECK(doc != NULL);
    if (!doc)
        return;
    /* garbage, doc, NUL, garbage, NUL, binary, NUL, doc, truncated doc */
    const char bin[] = "bplist00\xd1\x01\x02\x00\x51\x61\x08\x0b\x00\x00\x00\x00\x00\x00\x01\x01"
                       "\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                       "\x00\x00\x00\x00\x0d";
    size_t bin_len = sizeof bin - 1;
    size_t cap = 3 * len + 200 + bin_len;
    char *stream = malloc(cap);
    size_t o = 0;
    memcpy(stream + o, "sh: warning\n", 12), o += 12;
    memcpy(stream + o, doc, len), o += len;
    stream[o++] = '\0';
    memcpy(stream + o, "oops", 4), o += 4;
    stream[o++] = '\0';
    memcpy(stream + o, bin, bin_len), o += bin_len;
    stream[o++] = '\0';
    memcpy(stream + o, doc, len), o += len;
    memcpy(stream + o, doc, len / 2), o += len / 2;
    const char *s[8];
    size_t l[8];
    char *copies[8];
    ep_plist_framer_stats st;
    size_t n = frame_all(stream, o, 13, 0, s, l, 8, &st, copies);
    EP_CHECK(n == 4);
    size_t doc_trim = len;
    while (doc_trim && doc[doc_trim - 1] == '\n')
        doc_trim--;
    if (n == 4) {
        EP_CHECK(l[0] == doc_trim && memcmp(s[0], doc, l[0]) == 0);
        EP_CHECK(l[1] == bin_len && memcmp(s[1], bin, bin_len) == 0);
        EP_CHECK(l[2] == doc_trim && memcmp(s[2], doc, l[2]) == 0);
        EP_CHECK(l[3] == len / 2);
    }
    EP_CHECK(st.garbage_runs == 2);
    EP_CHECK(st.garbage_bytes == 12 + 4);
    EP_CHECK(strncmp(st.garbage_head, "sh: warning.oops", 16) == 0);
    free_copies(copies, n < 8 ? n : 8);

    /* A bound below one document: the documents are skipped and counted, nothing returned
     * but the small binary one, whether the stream arrives whole or in pieces. */
    size_t chunks[] = {0, 1000};
    for (int c = 0; c < 2; c++) {
        n = frame_all(stream, o, chunks[c], 1000, s, l, 8, &st, copies);
        EP_CHECK(n == 1);
        EP_CHECK(n >= 1 && l[0] == bin_len);
        EP_CHECK(st.oversize == 3);
        free_copies(copies, n < 8 ? n : 8);
    }
    free(stream);
    free(doc);
}

EP_TEST(plist_parse_fixtures)
{
    for (const char *const *name = xml_fixtures; *name; name++) {
        size_t len = 0;
        char *data = fixture(*name, &len);
        if (!data) {
            EP_CHECK(data != NULL);
            continue;
        }
        const char *s[16];
        size_t l[16];
        char *copies[16];
        size_t n = frame_all(data, len, 0, 0, s, l, 16, NULL, copies);
        EP_CHECK(n >= 1);
        for (size_t i = 0; i < n && i < 16; i++) {
            ep_sample smp;
            ep_plist_extras x;
            char err[96];
            int rc = ep_plist_parse(s[i], l[i], &smp, &x, err, sizeof err);
            EP_CHECK(rc == EP_OK);
            EP_CHECK(smp.kind == EP_KIND_INTERVAL);
            EP_CHECK(x.elapsed_ns > 0 && smp.t_end_ns == x.elapsed_ns && smp.t_start_ns == 0);
            EP_CHECK(x.is_delta == 1);
            EP_CHECK(x.hw_model[0] && x.kern_osversion[0]);
            EP_CHECK(x.timestamp_s > 1.6e9 && x.timestamp_s < 1.9e9);
            /* processor energy over the real window reproduces the rounded *_power. */
            if (!isnan(x.cpu_energy_j)) {
                EP_CHECK_NEAR(smp.power_w[EP_DOM_CPU], x.cpu_energy_j / (x.elapsed_ns / 1e9), 1e-9);
                EP_CHECK_NEAR(smp.power_w[EP_DOM_CPU], x.cpu_power_w, 1e-4 * x.cpu_power_w + 1e-9);
                EP_CHECK(x.n_clusters >= 2);
                EP_CHECK_NEAR(x.combined_power_w, x.cpu_power_w + x.gpu_power_w + x.ane_power_w, 1e-3);
            }
            EP_CHECK(isnan(smp.power_w[EP_DOM_DRAM]) && isnan(smp.power_w[EP_DOM_PACKAGE]));
        }
        free_copies(copies, n < 16 ? n : 16);
        free(data);
    }
}

/* Replace the first `<real>...</real>` after key `key` in doc by `<real>text</real>`. */
static char *with_real(const char *doc, size_t len, const char *key, const char *text, size_t *out_len)
{
    char k[64];
    snprintf(k, sizeof k, "<key>%s</key>", key);
    const char *p = memmem(doc, len, k, strlen(k));
    if (!p)
        return NULL;
    const char *a = memmem(p, len - (size_t)(p - doc), "<real>", 6);
    const char *b = a ? memmem(a, len - (size_t)(a - doc), "</real>", 7) : NULL;
    if (!b)
        return NULL;
    a += 6;
    size_t tl = strlen(text);
    char *out = malloc(len + tl + 1);
    size_t o = 0;
    memcpy(out, doc, (size_t)(a - doc)), o = (size_t)(a - doc);
    memcpy(out + o, text, tl), o += tl;
    memcpy(out + o, b, len - (size_t)(b - doc)), o += len - (size_t)(b - doc);
    out[o] = '\0';
    *out_len = o;
    return out;
}

/* nan in a cluster idle_ratio and in cpu_power: the frame survives, the value is NaN,
 * the sample is flagged; the same with a libplist that rejects nan (retry path). */
EP_TEST(plist_parse_nan_fields)
{
    size_t len = 0, l1 = 0, l2 = 0;
    char *doc = fixture("pumas-m1.plist", &len);
    if (!doc) {
        EP_CHECK(doc != NULL);
        return;
    }
    char *d1 = with_real(doc, len, "idle_ratio", "nan", &l1);
    char *d2 = d1 ? with_real(d1, l1, "gpu_power", "-nan", &l2) : NULL;
    EP_CHECK(d2 != NULL);
    if (d2) {
        ep_sample a, b, ref;
        ep_plist_extras xa, xb, xr;
        EP_CHECK(ep_plist_parse(doc, len, &ref, &xr, NULL, 0) == EP_OK);
        for (int strict = 0; strict < 2; strict++) {
            ep_plist_test_strict_reals(strict);
            EP_CHECK(ep_plist_parse(d2, l2, strict ? &b : &a, strict ? &xb : &xa, NULL, 0) == EP_OK);
        }
        ep_plist_test_strict_reals(0);
        EP_CHECK(xa.sanitized == 0 && xb.sanitized == 1);
        EP_CHECK(xa.nan_fields == 2 && xb.nan_fields == 2);
        EP_CHECK(isnan(xa.clusters[0].idle_ratio) && isnan(xb.clusters[0].idle_ratio));
        EP_CHECK(isnan(xa.gpu_power_w) && isnan(xb.gpu_power_w));
        EP_CHECK((a.flags & EP_SFLAG_NAN_FIELD) && (b.flags & EP_SFLAG_NAN_FIELD));
        EP_CHECK(!(ref.flags & EP_SFLAG_NAN_FIELD));
        /* Energies are integers: the sample's powers are unaffected. */
        for (int d = 0; d < EP_NDOMAINS; d++) {
            EP_CHECK((isnan(a.power_w[d]) && isnan(ref.power_w[d])) || a.power_w[d] == ref.power_w[d]);
            EP_CHECK((isnan(b.power_w[d]) && isnan(ref.power_w[d])) || b.power_w[d] == ref.power_w[d]);
        }
        EP_CHECK(xb.clusters[1].idle_ratio == xr.clusters[1].idle_ratio);
    }
    /* Strict mode on a clean document changes nothing. */
    ep_sample c;
    ep_plist_extras xc;
    ep_plist_test_strict_reals(1);
    EP_CHECK(ep_plist_parse(doc, len, &c, &xc, NULL, 0) == EP_OK && xc.sanitized == 0);
    ep_plist_test_strict_reals(0);
    free(d1);
    free(d2);
    free(doc);
}

/* Cutting the unread sections out changes no extracted value. */
EP_TEST(plist_parse_pruned_equals_whole)
{
    for (const char *const *name = xml_fixtures; *name; name++) {
        size_t len = 0;
        char *data = fixture(*name, &len);
        if (!data) {
            EP_CHECK(data != NULL);
            continue;
        }
        char *z = memchr(data, 0, len);
        size_t n = z ? (size_t)(z - data) : len;
        ep_sample a, b;
        ep_plist_extras xa, xb;
        EP_CHECK(ep_plist_parse(data, n, &a, &xa, NULL, 0) == EP_OK);
        ep_plist_set_prune(0);
        EP_CHECK(ep_plist_parse(data, n, &b, &xb, NULL, 0) == EP_OK);
        ep_plist_set_prune(1);
        EP_CHECK(memcmp(&a, &b, sizeof a) == 0);
        EP_CHECK(xa.n_clusters == xb.n_clusters && xa.elapsed_ns == xb.elapsed_ns);
        for (int i = 0; i < xa.n_clusters; i++)
            EP_CHECK(strcmp(xa.clusters[i].name, xb.clusters[i].name) == 0 &&
                     xa.clusters[i].freq_hz == xb.clusters[i].freq_hz);
        EP_CHECK((isnan(xa.gpu_idle_ratio) && isnan(xb.gpu_idle_ratio)) || xa.gpu_idle_ratio == xb.gpu_idle_ratio);
        free(data);
    }
}

EP_TEST(plist_parse_malformed_never_crashes)
{
    size_t len = 0;
    char *doc = fixture("pumas-m1-2.plist", &len);
    if (!doc) {
        EP_CHECK(doc != NULL);
        return;
    }
    ep_sample s;
    ep_plist_extras x;
    char err[96];
    int ok = 0, bad = 0;
    for (size_t cut = 0; cut < len; cut += 211) {
        int rc = ep_plist_parse(doc, cut, &s, &x, err, sizeof err);
        EP_CHECK(rc == EP_OK || rc == EP_ERR_PARSE);
        if (rc == EP_OK)
            ok++;
        else
            bad++;
    }
    EP_CHECK(bad > 0);
    const char *junk[] = {"", "<", "<?xml version=\"1.0\"?><plist><array/></plist>", "bplist00", "bplist00xxxxxxxx",
                          "<plist><dict><key>elapsed_ns</key><string>x</string></dict></plist>", NULL};
    for (int i = 0; junk[i]; i++) {
        int rc = ep_plist_parse(junk[i], strlen(junk[i]), &s, &x, err, sizeof err);
        EP_CHECK(rc == EP_ERR_PARSE || (i == 5 && rc == EP_OK && x.elapsed_ns == -1));
    }
    free(doc);
}

/* ---- the plist source -------------------------------------------------------- */

static int make_source(const char *kind, const char **keys, const char **values, size_t n, ep_source **src)
{
    char err[256] = "";
    int rc = ep_source_create(kind, keys, values, n, src, err, sizeof err);
    if (rc != EP_OK)
        fprintf(stderr, "  create %s: %s\n", kind, err);
    return rc;
}

EP_TEST(plist_source_replay_max_integrates_to_capture)
{
    const char *keys[] = {"path", "speed"};
    const char *values[] = {FIXDIR "matiasinsaurralde-gpu_power_multiple_samples-m4pro.plist", "max"};
    ep_source *src = NULL;
    EP_CHECK(make_source("plist", keys, values, 2, &src) == EP_OK);
    if (!src)
        return;
    EP_CHECK(strstr(src->meta_json, "Mac16,8") != NULL);
    ep_sample out[16];
    size_t n = 0, total = 0;
    EP_CHECK(src->start(src, 1000) == EP_OK);
    int rc;
    ep_sample all[16];
    do {
        rc = src->poll(src, 2000, out, 2, &n); /* cap 2: bounded per poll */
        EP_CHECK(n <= 2);
        for (size_t i = 0; i < n && total < 16; i++)
            all[total++] = out[i];
    } while (rc == EP_OK);
    EP_CHECK(rc == EP_ERR_EOF);
    EP_CHECK(total == 5);
    EP_CHECK(strstr(src->message, "replay finished") != NULL);
    EP_CHECK(src->faults == 0);
    /* Contiguous from the start time; energy = sum of gpu.gpu_energy (mJ) in the file. */
    size_t len = 0;
    char *data = read_file(values[0], &len);
    double energy_mj = 0;
    /* memmem, not strstr: the capture has NULs between documents. */
    static const char tag[] = "<key>gpu_energy</key><integer>";
    for (const char *p = data; p && (p = memmem(p, len - (size_t)(p - data), tag, sizeof tag - 1)) != NULL; p++)
        energy_mj += strtod(p + sizeof tag - 1, NULL);
    free(data);
    double energy_j = 0;
    EP_CHECK(all[0].t_start_ns == 1000);
    for (size_t i = 0; i < total; i++) {
        if (i)
            EP_CHECK(all[i].t_start_ns == all[i - 1].t_end_ns);
        energy_j += all[i].power_w[EP_DOM_GPU] * (double)(all[i].t_end_ns - all[i].t_start_ns) / 1e9;
        EP_CHECK(isnan(all[i].power_w[EP_DOM_CPU]));
    }
    EP_CHECK(energy_mj > 0);
    EP_CHECK_NEAR(energy_j, energy_mj / 1e3, 1e-9 * energy_j);
    /* Restart replays from the beginning. */
    size_t again = 0;
    EP_CHECK(src->start(src, 5) == EP_OK);
    do {
        rc = src->poll(src, 10, out, 16, &n);
        again += n;
    } while (rc == EP_OK);
    EP_CHECK(again == 5);
    EP_CHECK(src->stop(src, 20, out, 16, &n) == EP_OK && n == 0);
    ep_source_destroy(src);
}

EP_TEST(plist_source_paced_by_speed)
{
    const char *keys[] = {"path", "speed"};
    const char *values[] = {FIXDIR "matiasinsaurralde-gpu_power_multiple_samples-m4pro.plist", "2"};
    ep_source *src = NULL;
    EP_CHECK(make_source("plist", keys, values, 2, &src) == EP_OK);
    if (!src)
        return;
    ep_sample out[8];
    size_t n = 0;
    const int64_t t0 = 1000000;
    EP_CHECK(src->start(src, t0) == EP_OK);
    EP_CHECK(src->poll(src, t0, out, 8, &n) == EP_OK && n == 0);
    /* The first document covers elapsed_ns; at speed 2 it is due after elapsed/2. */
    EP_CHECK(src->poll(src, t0 + 1000, out, 8, &n) == EP_OK && n == 0);
    int64_t e1 = 0;
    {
        /* Learn elapsed from a max-speed twin. */
        const char *v2[] = {values[0], "max"};
        ep_source *m = NULL;
        EP_CHECK(make_source("plist", keys, v2, 2, &m) == EP_OK);
        if (m) {
            m->start(m, 0);
            size_t k = 0;
            m->poll(m, 0, out, 1, &k);
            e1 = out[0].t_end_ns;
            ep_source_destroy(m);
        }
    }
    EP_CHECK(e1 > 0);
    EP_CHECK(src->poll(src, t0 + e1 / 2 - 1, out, 8, &n) == EP_OK && n == 0);
    EP_CHECK(src->poll(src, t0 + e1 / 2 + 1, out, 8, &n) == EP_OK && n == 1);
    EP_CHECK(n == 1 && out[0].t_start_ns == t0 && out[0].t_end_ns == t0 + e1);
    /* Far in the future: everything left, then EOF. */
    int rc = src->poll(src, t0 + (int64_t)1e12, out, 8, &n);
    EP_CHECK(rc == EP_ERR_EOF && n == 4);
    ep_source_destroy(src);
}

EP_TEST(plist_source_bad_params_and_damaged_file)
{
    ep_source *src = NULL;
    char err[256];
    const char *k1[] = {"path"}, *v1[] = {"/nonexistent/capture.plist"};
    EP_CHECK(ep_source_create("plist", k1, v1, 1, &src, err, sizeof err) == EP_ERR_NOTFOUND);
    EP_CHECK(strstr(err, "/nonexistent/capture.plist") != NULL);
    const char *k2[] = {"path", "speed"}, *v2[] = {FIXDIR "pumas-m1.plist", "fast"};
    EP_CHECK(ep_source_create("plist", k2, v2, 2, &src, err, sizeof err) == EP_ERR_ARG);
    EP_CHECK(strstr(err, "speed") != NULL);

    /* A capture with a broken document and garbage in the middle and a truncated end. */
    size_t len = 0;
    char *doc = fixture("pumas-m1-2.plist", &len);
    if (!doc)
        return;
    char path[] = "/tmp/ep_test_plist_XXXXXX";
    int fd = mkstemp(path);
    EP_CHECK(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    fwrite(doc, 1, len, f);
    fputc(0, f);
    fputs("<?xml version=\"1.0\"?><plist><dict><key>x</key></plist>", f); /* malformed */
    fputc(0, f);
    fputs("Error: something\n", f); /* garbage */
    fputc(0, f);
    fwrite(doc, 1, len, f);
    fputc(0, f);
    fwrite(doc, 1, len / 3, f); /* truncated */
    fclose(f);
    const char *v3[] = {path, "max"};
    EP_CHECK(ep_source_create("plist", k2, v3, 2, &src, err, sizeof err) == EP_OK);
    if (src) {
        ep_sample out[8];
        size_t n = 0, total = 0;
        src->start(src, 0);
        int rc;
        do {
            rc = src->poll(src, 0, out, 8, &n);
            total += n;
        } while (rc == EP_OK);
        EP_CHECK(rc == EP_ERR_EOF);
        EP_CHECK(total == 2);
        EP_CHECK(src->faults == 3);
        ep_source_destroy(src);
    }
    unlink(path);
    free(doc);
}

/* ---- the powermetrics source, with the fake executables ----------------------- */

static int count_open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Poll until EOF, `want` samples or a 20 s safety deadline (a hang fails the test
 * instead of blocking the suite).  Returns the last poll's rc. */
static int run_until(ep_source *src, size_t want, ep_sample *all, size_t cap, size_t *total)
{
    int rc = EP_OK;
    int64_t deadline = ep_now_ns() + 20 * 1000000000LL;
    while (*total < want && ep_now_ns() < deadline) {
        ep_sample out[16];
        size_t n = 0;
        rc = src->poll(src, ep_now_ns(), out, 16, &n);
        for (size_t i = 0; i < n; i++)
            if (*total < cap)
                all[(*total)++] = out[i];
        if (rc != EP_OK)
            break;
        sleep_ms(5);
    }
    return rc;
}

/* Children of this process, live or zombie (Linux /proc; elsewhere: can we reap one?). */
static int child_count(void)
{
#ifdef __linux__
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        long pid;
        while (fscanf(f, "%ld", &pid) == 1)
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
#else
    int status;
    return (waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD) ? 0 : 1;
#endif
}

static int children_before;

/* No child of ours is left running or unreaped (compared with children_before). */
static int no_children_left(void)
{
    return child_count() == children_before;
}

/* Every powermetrics test's opening: note the children already there (for
 * no_children_left), create the source on a fake binary and start it at t_start_ns.
 * The source is the caller's to destroy; NULL when create failed (a failed check). */
static ep_source *start_fake_pm(int *ep_failed_, const char **keys, const char **values, size_t n,
                                int64_t t_start_ns)
{
    ep_source *src = NULL;
    children_before = child_count();
    EP_CHECK(make_source("powermetrics", keys, values, n, &src) == EP_OK);
    if (!src)
        return NULL;
    EP_CHECK(src->start(src, t_start_ns) == EP_OK);
    return src;
}

EP_TEST(powermetrics_streams_and_stops_cleanly)
{
    char argv_file[] = "/tmp/ep_test_pm_argv_XXXXXX";
    int afd = mkstemp(argv_file);
    close(afd);
    setenv("FAKE_POWERMETRICS_ARGV_FILE", argv_file, 1);
    int fds_before = count_open_fds();
    const char *keys[] = {"binary", "interval_ms"};
    const char *values[] = {FAKEDIR "powermetrics", "30"};
    int64_t t0 = ep_now_ns();
    ep_source *src = start_fake_pm(ep_failed_, keys, values, 2, t0);
    if (!src)
        return;
    ep_sample all[16];
    size_t total = 0;
    int rc = run_until(src, 3, all, 16, &total);
    EP_CHECK(rc == EP_OK);
    EP_CHECK(total >= 3);
    ep_sample out[16];
    size_t n = 0;
    EP_CHECK(src->stop(src, ep_now_ns(), out, 16, &n) == EP_OK);
    EP_CHECK(src->faults == 0);
    /* Each sample ends at its receive time and spans its elapsed_ns (the fake reports
     * 30 ms), cut short only where that would reach before the previous end. */
    int64_t prev_end = t0;
    for (size_t i = 0; i < total; i++) {
        EP_CHECK(all[i].t_end_ns > all[i].t_start_ns && all[i].t_start_ns >= prev_end);
        EP_CHECK(all[i].t_end_ns - all[i].t_start_ns == 30000000 || all[i].t_start_ns == prev_end);
        EP_CHECK(all[i].power_w[EP_DOM_CPU] > 0 && all[i].power_w[EP_DOM_GPU] > 0);
        prev_end = all[i].t_end_ns;
    }
    EP_CHECK(no_children_left());
    /* Started again: a fresh child, then destroy without stop also reaps it. */
    EP_CHECK(src->start(src, ep_now_ns()) == EP_OK);
    ep_source_destroy(src);
    EP_CHECK(no_children_left());
    EP_CHECK(count_open_fds() == fds_before);
    unsetenv("FAKE_POWERMETRICS_ARGV_FILE");
    size_t alen = 0;
    char *args = read_file(argv_file, &alen);
    EP_CHECK(args && strstr(args, "[\"-f\", \"plist\", \"-i\", \"30\", \"--samplers\", \"cpu_power,gpu_power,thermal\"]"));
    free(args);
    unlink(argv_file);
}

EP_TEST(powermetrics_killed_mid_document_keeps_samples)
{
    const char *keys[] = {"binary", "interval_ms"};
    const char *values[] = {FAKEDIR "powermetrics-dies-mid-document", "20"};
    ep_source *src = start_fake_pm(ep_failed_, keys, values, 2, ep_now_ns());
    if (!src)
        return;
    ep_sample all[16];
    size_t total = 0;
    int rc = run_until(src, 16, all, 16, &total);
    EP_CHECK(rc == EP_ERR_EOF);
    EP_CHECK(total == 2);
    EP_CHECK(src->faults == 1);
    EP_CHECK(strstr(src->message, "killed by signal 9") != NULL);
    EP_CHECK(strstr(src->message, "after 2 sample(s)") != NULL);
    ep_sample out[4];
    size_t n = 0;
    EP_CHECK(src->stop(src, ep_now_ns(), out, 4, &n) == EP_OK && n == 0);
    EP_CHECK(src->poll(src, ep_now_ns(), out, 4, &n) == EP_ERR_EOF);
    ep_source_destroy(src);
    EP_CHECK(no_children_left());
}

EP_TEST(powermetrics_garbage_and_exit_status)
{
    const char *keys[] = {"binary", "interval_ms"};
    const char *values[] = {FAKEDIR "powermetrics-garbage", "20"};
    ep_source *src = start_fake_pm(ep_failed_, keys, values, 2, ep_now_ns());
    if (!src)
        return;
    ep_sample all[16];
    size_t total = 0;
    int rc = run_until(src, 16, all, 16, &total);
    EP_CHECK(rc == EP_ERR_EOF);
    EP_CHECK(total == 1);
    EP_CHECK(src->faults >= 1);
    EP_CHECK(strstr(src->message, "exited with status 3") != NULL);
    EP_CHECK(strstr(src->message, "byte(s) of garbage") != NULL);
    ep_source_destroy(src);
    EP_CHECK(no_children_left());
}

EP_TEST(powermetrics_not_root_says_sudo)
{
    const char *keys[] = {"binary"};
    const char *values[] = {FAKEDIR "powermetrics-not-root"};
    ep_source *src = start_fake_pm(ep_failed_, keys, values, 1, ep_now_ns());
    if (!src)
        return;
    ep_sample all[4];
    size_t total = 0;
    EP_CHECK(run_until(src, 4, all, 4, &total) == EP_ERR_EOF);
    EP_CHECK(total == 0);
    EP_CHECK(strstr(src->message, "needs root") != NULL && strstr(src->message, "sudo") != NULL);
    EP_CHECK(strstr(src->message, "superuser") != NULL);
    ep_source_destroy(src);
    EP_CHECK(no_children_left());
}

EP_TEST(powermetrics_ignoring_sigint_gets_sigkill)
{
    const char *keys[] = {"binary", "interval_ms", "stop_timeout_ms"};
    const char *values[] = {FAKEDIR "powermetrics-ignores-sigint", "20", "200"};
    ep_source *src = start_fake_pm(ep_failed_, keys, values, 3, ep_now_ns());
    if (!src)
        return;
    ep_sample all[4];
    size_t total = 0;
    EP_CHECK(run_until(src, 1, all, 4, &total) == EP_OK);
    EP_CHECK(total == 1);
    ep_sample out[16];
    size_t n = 0;
    EP_CHECK(src->stop(src, ep_now_ns(), out, 16, &n) == EP_OK);
    EP_CHECK(no_children_left());
    ep_source_destroy(src);
}

EP_TEST(powermetrics_bad_params)
{
    ep_source *src = NULL;
    char err[256];
    const char *k1[] = {"binary"}, *v1[] = {"/nonexistent/powermetrics"};
    EP_CHECK(ep_source_create("powermetrics", k1, v1, 1, &src, err, sizeof err) == EP_ERR_NOTFOUND);
    EP_CHECK(strstr(err, "/nonexistent/powermetrics") != NULL);
    const char *k2[] = {"binary", "interval_ms"}, *v2[] = {FAKEDIR "powermetrics", "0"};
    EP_CHECK(ep_source_create("powermetrics", k2, v2, 2, &src, err, sizeof err) == EP_ERR_ARG);
    EP_CHECK(strstr(err, "interval_ms") != NULL);
    const char *k3[] = {"binary", "samplers"}, *v3[] = {FAKEDIR "powermetrics", "cpu_power;rm"};
    EP_CHECK(ep_source_create("powermetrics", k3, v3, 2, &src, err, sizeof err) == EP_ERR_ARG);
    const char *k4[] = {"bogus"}, *v4[] = {"1"};
    EP_CHECK(ep_source_create("powermetrics", k4, v4, 1, &src, err, sizeof err) == EP_ERR_ARG);
    EP_CHECK(strstr(err, "bogus") != NULL);
#ifndef __APPLE__
    /* No binary= on Linux: the default /usr/bin/powermetrics is missing. */
    EP_CHECK(ep_source_create("powermetrics", NULL, NULL, 0, &src, err, sizeof err) == EP_ERR_NOTFOUND);
    EP_CHECK(strstr(err, "macOS") != NULL);
#endif
}
