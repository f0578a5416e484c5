/* ep_src_rapl.c: the 'rapl' power source (Intel RAPL / AMD Zen through Linux powercap).
 *
 * Spec: rapl[:root=/sys/class/powercap,update_ms=1]
 *       (root: else $ENERGYPROF_RAPL_ROOT, else /sys/class/powercap)
 *
 * update_ms is how often the hardware advances the counters: about 1 ms on Intel (the
 * SDM's "approximately 1 ms" update of the energy status MSRs) and AMD Zen.  A read sees
 * the value of the last update, so a reading taken at a forward's edge is stale by up to
 * that long; the source does not use it to read, it reports it in meta_json
 * ("counter_update_ms") so that the run judges and bounds its boundary reads by it.
 *
 * The powercap tree has one top-level zone per CPU package, intel-rapl:N, whose
 * `name` file reads package-N, and subzones intel-rapl:N:M named core, uncore,
 * dram (and, as a separate top-level zone on some laptops, psys).  AMD Zen kernels
 * expose the same intel-rapl tree, often with only the package zone.  Mapping:
 *
 *   package-N  -> package   (summed over packages)
 *   core       -> cpu       (summed; reported only when every package has one)
 *   dram       -> dram      (summed; reported only when every package has one)
 *   uncore, psys, others -> not read: uncore is the integrated GPU on client parts
 *   and psys covers the whole platform (it includes the package), so adding either
 *   would double count or mislabel.
 *
 * Each zone's energy_uj is a counter in microjoules that wraps to 0 when it reaches
 * max_energy_range_uj: a smaller reading than the last one means exactly one wrap,
 * delta = now + range - last (two wraps inside one poll cannot be seen: at 250 W a
 * 262 kJ range takes about 17 minutes, far longer than any poll period).
 * Counters are differenced into INTERVAL samples [t_last, t_now).
 *
 * A read that finds no zone moved since the last sample (a stale read: two reads inside
 * one counter update, e.g. a forward's boundary read just after a poll) gives no sample
 * and keeps t_last, so the next read that moves covers both stretches with their true
 * mean: never a 0 W sliver then twice the power.  The longest span the counter was seen
 * unchanged goes to src->counter_still_ns.  The final read at stop, when stale, waits for
 * the next update (at most two update periods + 1 ms) so the run's last stretch ends on a
 * real reading; if none comes the final sample is written as read.
 *
 * Since Linux 5.10 (CVE-2020-8694, "Platypus") energy_uj is readable by root only:
 * a permission error returns EP_ERR_PERM with the command that grants read access.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ep_errors.h"
#include "ep_source.h"

#define RAPL_MAX_ZONES 64
#define RAPL_DEFAULT_ROOT "/sys/class/powercap"

typedef struct {
    char energy_path[PATH_MAX];
    char label[48];          /* "intel-rapl:0:1 dram", for the metadata */
    int domain;              /* EP_DOM_PACKAGE, EP_DOM_CPU or EP_DOM_DRAM */
    int64_t range_uj;        /* max_energy_range_uj: the counter wraps to 0 here */
    int64_t last_uj;
} rapl_zone;

typedef struct {
    ep_source_counter counter; /* first: the shared poll/stop find it at src->state */
    char root[PATH_MAX];
    rapl_zone zones[RAPL_MAX_ZONES];
    size_t n_zones;
    int n_packages;
    int n_per_domain[EP_NDOMAINS];
    double update_ms;        /* the counters' update period (update_ms=, default 1 ms) */
    int64_t seen_uj;         /* the first zone's value when last seen to change, */
    int64_t t_seen_ns;       /* and when (for counter_still_ns) */
} rapl_state;

/* printf into src->message; truncation of long paths is acceptable there. */
static void set_msg(ep_source *src, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(src->message, sizeof src->message, fmt, ap);
    va_end(ap);
}

/* out = dir + "/" + leaf; EP_ERR_ARG when it does not fit (never a cut path). */
static int join_path(char *out, size_t cap, const char *dir, const char *leaf)
{
    size_t ld = strlen(dir), ll = strlen(leaf);
    if (ld + 1 + ll + 1 > cap)
        return EP_ERR_ARG;
    memcpy(out, dir, ld);
    out[ld] = '/';
    memcpy(out + ld + 1, leaf, ll + 1);
    return EP_OK;
}

/* Read one integer file.  EP_ERR_PERM for EACCES/EPERM so callers can say how to
 * fix it; a directory or unreadable content is EP_ERR_IO / EP_ERR_PARSE. */
static int read_int_file(const char *path, int64_t *value, int *err_no)
{
    char buf[64];
    int rc = EP_ERR_IO;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *err_no = 0;
    if (fd < 0) {
        *err_no = errno;
        rc = (errno == EACCES || errno == EPERM) ? EP_ERR_PERM : errno == ENOENT ? EP_ERR_NOTFOUND : EP_ERR_IO;
        goto error;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n < 0) {
        *err_no = errno;
        rc = (errno == EACCES || errno == EPERM) ? EP_ERR_PERM : EP_ERR_IO;
        goto error;
    }
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (end == buf || errno != 0 || v < 0 || (*end != '\0' && *end != '\n')) {
        rc = EP_ERR_PARSE;
        goto error;
    }
    *value = v;
    close(fd);
    return EP_OK;
error:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Read a short text file (a zone's name) without the trailing newline. */
static int read_name_file(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return (errno == EACCES || errno == EPERM) ? EP_ERR_PERM : EP_ERR_NOTFOUND;
    if (!fgets(out, (int)cap, f))
        out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    return EP_OK;
}

/* The message for a permission error names the file and the exact fix; the
 * persistent variants (tmpfiles.d, udev) are in docs/sources.md. */
static void perm_message(ep_source *src, const char *path)
{
    set_msg(src, "permission denied reading %s: RAPL energy_uj is root-only since Linux 5.10; grant read access "
             "with: sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj",
             path);
}

static int read_zone(ep_source *src, rapl_zone *z, int64_t *uj)
{
    int err_no = 0;
    int rc = read_int_file(z->energy_path, uj, &err_no);
    if (rc == EP_ERR_PERM)
        perm_message(src, z->energy_path);
    else if (rc != EP_OK)
        set_msg(src, "cannot read %s: %s", z->energy_path,
                 err_no ? strerror(err_no) : ep_err_str(rc));
    return rc;
}

/* "intel-rapl:N" (top) or "intel-rapl:N:M" (sub); returns the colon count, 0 otherwise. */
static int zone_depth(const char *name)
{
    const char *prefix = "intel-rapl:";
    size_t lp = strlen(prefix);
    if (strncmp(name, prefix, lp) != 0)
        return 0;
    int depth = 1;
    const char *p = name + lp;
    if (!*p)
        return 0;
    for (; *p; p++) {
        if (*p == ':')
            depth++;
        else if (*p < '0' || *p > '9')
            return 0;
    }
    return depth;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* List the entries of dir with the given zone depth, sorted so the zone order (and
 * the metadata) is stable.  Caller owns *names and each string (free_names). */
static int list_zones(const char *dir, int depth, char ***names, size_t *n)
{
    DIR *d = opendir(dir);
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = EP_ERR_NOMEM;
    if (!d)
        return (errno == EACCES || errno == EPERM) ? EP_ERR_PERM : EP_ERR_NOTFOUND;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (zone_depth(e->d_name) != depth)
            continue;
        if (cnt == cap) {
            size_t nc = cap ? cap * 2 : 8;
            char **nv = realloc(v, nc * sizeof *nv);
            if (!nv)
                goto error;
            v = nv;
            cap = nc;
        }
        v[cnt] = strdup(e->d_name);
        if (!v[cnt])
            goto error;
        cnt++;
    }
    closedir(d);
    if (cnt)
        qsort(v, cnt, sizeof *v, cmp_names);
    *names = v;
    *n = cnt;
    return EP_OK;
error:
    closedir(d);
    for (size_t i = 0; i < cnt; i++)
        free(v[i]);
    free(v);
    return rc;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Add the zone in directory zdir (named zname) as domain dom; reads its range and
 * checks that energy_uj is readable now, so a permission problem shows at create. */
static int add_zone(ep_source *src, rapl_state *st, const char *zdir, const char *zname, const char *label,
                    int dom)
{
    rapl_zone *z;
    char path[PATH_MAX];
    int err_no = 0, rc;
    if (st->n_zones >= RAPL_MAX_ZONES) {
        set_msg(src, "rapl: more than %d zones under %s", RAPL_MAX_ZONES, st->root);
        return EP_ERR_ARG;
    }
    z = &st->zones[st->n_zones];
    z->domain = dom;
    snprintf(z->label, sizeof z->label, "%.20s %.20s", zname, label);
    if (join_path(z->energy_path, sizeof z->energy_path, zdir, "energy_uj") != EP_OK ||
        join_path(path, sizeof path, zdir, "max_energy_range_uj") != EP_OK) {
        set_msg(src, "rapl: path too long under %s", st->root);
        return EP_ERR_ARG;
    }
    rc = read_int_file(path, &z->range_uj, &err_no);
    if (rc == EP_ERR_PERM) {
        perm_message(src, path);
        return rc;
    }
    if (rc != EP_OK || z->range_uj <= 0) {
        set_msg(src, "rapl: cannot read a positive max_energy_range_uj at %s", path);
        return rc != EP_OK ? rc : EP_ERR_PARSE;
    }
    rc = read_zone(src, z, &z->last_uj);
    if (rc != EP_OK)
        return rc;
    st->n_zones++;
    st->n_per_domain[dom]++;
    return EP_OK;
}

static int scan_tree(ep_source *src, rapl_state *st)
{
    char **tops = NULL, **subs = NULL;
    size_t n_tops = 0, n_subs = 0;
    char zdir[PATH_MAX], sdir[PATH_MAX], path[PATH_MAX], name[64];
    int rc = list_zones(st->root, 1, &tops, &n_tops);
    if (rc == EP_ERR_PERM) {
        set_msg(src, "rapl: permission denied listing %s", st->root);
        goto error;
    }
    if (rc != EP_OK) {
        set_msg(src, "rapl: no powercap tree at %s (no RAPL driver: try 'sudo modprobe intel_rapl_msr'; "
                 "VMs and non-x86 CPUs have none)",
                 st->root);
        goto error;
    }
    for (size_t i = 0; i < n_tops; i++) {
        if (join_path(zdir, sizeof zdir, st->root, tops[i]) != EP_OK || join_path(path, sizeof path, zdir, "name") != EP_OK ||
            read_name_file(path, name, sizeof name) != EP_OK || strncmp(name, "package-", 8) != 0)
            continue; /* psys and anything unknown: not a package (see the header) */
        rc = add_zone(src, st, zdir, tops[i], name, EP_DOM_PACKAGE);
        if (rc != EP_OK)
            goto error;
        st->n_packages++;
        rc = list_zones(zdir, 2, &subs, &n_subs);
        if (rc != EP_OK) {
            rc = EP_OK; /* a package without readable subzones still gives package power */
            continue;
        }
        for (size_t j = 0; j < n_subs; j++) {
            if (join_path(sdir, sizeof sdir, zdir, subs[j]) != EP_OK || join_path(path, sizeof path, sdir, "name") != EP_OK ||
                read_name_file(path, name, sizeof name) != EP_OK)
                continue;
            int dom = strcmp(name, "core") == 0 ? EP_DOM_CPU : strcmp(name, "dram") == 0 ? EP_DOM_DRAM : -1;
            if (dom < 0)
                continue; /* uncore (integrated GPU) and unknown subzones are not read */
            rc = add_zone(src, st, sdir, subs[j], name, dom);
            if (rc != EP_OK)
                goto error;
        }
        free_names(subs, n_subs);
        subs = NULL;
        n_subs = 0;
    }
    if (st->n_packages == 0) {
        set_msg(src, "rapl: no intel-rapl:N zone named package-N under %s (no RAPL package counters)", st->root);
        rc = EP_ERR_NOTFOUND;
        goto error;
    }
    free_names(tops, n_tops);
    return EP_OK;
error:
    free_names(subs, n_subs);
    free_names(tops, n_tops);
    return rc;
}

static void write_meta(ep_source *src, rapl_state *st)
{
    char esc[PATH_MAX * 2];
    size_t cap = sizeof src->meta_json, k = 0;
    char *m = src->meta_json;
    esc[0] = '\0'; /* ep_source_json_escape appends */
    ep_source_json_escape(esc, sizeof esc, st->root);
    k += (size_t)snprintf(m + k, cap - k,
                          "{\"source\":\"rapl\",\"root\":\"%.400s\",\"packages\":%d,\"counter_update_ms\":%.6g,"
                          "\"zones\":[",
                          esc, st->n_packages, st->update_ms);
    for (size_t i = 0; i < st->n_zones && k + 80 < cap; i++)
        k += (size_t)snprintf(m + k, cap - k, "%s\"%s -> %s\"", i ? "," : "", st->zones[i].label,
                              ep_domain_names[st->zones[i].domain]);
    if (k + 2 < cap)
        snprintf(m + k, cap - k, "]}");
}

/* Read every zone's counter into now_uj; EP_OK or the first failing zone's error. */
static int rapl_read_all(ep_source *src, rapl_state *st, int64_t *now_uj)
{
    for (size_t i = 0; i < st->n_zones; i++) {
        int rc = read_zone(src, &st->zones[i], &now_uj[i]);
        if (rc != EP_OK)
            return rc;
    }
    return EP_OK;
}

/* Has any zone moved since the last sample?  Also notes how long the first zone's value
 * has stood still (the longest span goes to src->counter_still_ns). */
static int rapl_moved(ep_source *src, rapl_state *st, const int64_t *now_uj, int64_t t_now_ns)
{
    int moved = 0;
    if (now_uj[0] != st->seen_uj) {
        st->seen_uj = now_uj[0];
        st->t_seen_ns = t_now_ns;
    } else if (st->t_seen_ns > 0 && t_now_ns - st->t_seen_ns > src->counter_still_ns) {
        src->counter_still_ns = t_now_ns - st->t_seen_ns;
    }
    for (size_t i = 0; i < st->n_zones; i++)
        if (now_uj[i] != st->zones[i].last_uj)
            moved = 1;
    return moved;
}

/* The final read found every counter stale: read again (at most two update periods +
 * 1 ms of wall time) until one moves; on a move now_uj and *t_now_ns are that reading. */
static void rapl_final_wait(ep_source *src, rapl_state *st, int64_t *now_uj, int64_t *t_now_ns)
{
    int64_t cap = (int64_t)(2.0 * st->update_ms * 1e6) + 1000000, w0 = ep_source_wall_ns();
    int64_t again[RAPL_MAX_ZONES];
    while (ep_source_wall_ns() - w0 < cap) {
        if (rapl_read_all(src, st, again) != EP_OK)
            return;
        int64_t t = ep_now_ns();
        for (size_t i = 0; i < st->n_zones; i++) {
            if (again[i] != st->zones[i].last_uj) {
                memcpy(now_uj, again, st->n_zones * sizeof *now_uj);
                *t_now_ns = t;
                return;
            }
        }
    }
}

/* Difference every zone's counter into one sample over [t_last, t_now) (the counter's emit). */
static int rapl_sample(ep_source *src, int64_t t_now_ns, uint32_t extra_flags, ep_sample *out, size_t cap,
                       size_t *n_out)
{
    rapl_state *st = src->state;
    int64_t now_uj[RAPL_MAX_ZONES] = {0};
    double energy_j[EP_NDOMAINS] = {0};
    uint32_t flags = extra_flags;
    if (t_now_ns <= st->counter.t_last_ns)
        return EP_OK;
    if (rapl_read_all(src, st, now_uj) != EP_OK) {
        /* A transient read failure: skip this poll and keep t_last, so the next good
         * read covers the gap and no energy is lost. */
        src->faults++;
        return EP_OK;
    }
    if (!rapl_moved(src, st, now_uj, t_now_ns)) {
        if (!(extra_flags & EP_SFLAG_FINAL))
            return EP_OK; /* stale: no 0 W sample; the next read that moves covers this stretch */
        rapl_final_wait(src, st, now_uj, &t_now_ns);
    }
    for (size_t i = 0; i < st->n_zones; i++) {
        rapl_zone *z = &st->zones[i];
        int64_t d = now_uj[i] - z->last_uj;
        if (d < 0) {
            d += z->range_uj;
            flags |= EP_SFLAG_WRAPPED;
        }
        energy_j[z->domain] += (double)d * 1e-6;
        z->last_uj = now_uj[i];
    }
    double dt_s = (double)(t_now_ns - st->counter.t_last_ns) * 1e-9;
    ep_sample *s = &out[0];
    ep_sample_init(s, st->counter.t_last_ns, t_now_ns, EP_KIND_INTERVAL, flags);
    for (int d = 0; d < EP_NDOMAINS; d++) {
        /* A domain counts only when every package reports it, else the sum is partial. */
        int have = d == EP_DOM_PACKAGE ? st->n_per_domain[d] > 0 : st->n_per_domain[d] == st->n_packages;
        s->power_w[d] = have ? energy_j[d] / dt_s : NAN;
    }
    st->counter.t_last_ns = t_now_ns;
    *n_out = 1;
    return EP_OK;
}

/* The counter's raw value for synchronised reads: the first zone's uJ (a package zone: it
 * moves at every update), one file read. */
static int rapl_raw(ep_source *src, int64_t *value)
{
    rapl_state *st = src->state;
    return read_zone(src, &st->zones[0], value);
}

static int rapl_start(ep_source *src, int64_t t_now_ns)
{
    rapl_state *st = src->state;
    for (size_t i = 0; i < st->n_zones; i++) {
        int rc = read_zone(src, &st->zones[i], &st->zones[i].last_uj);
        if (rc != EP_OK)
            return rc;
    }
    st->seen_uj = st->zones[0].last_uj;
    st->t_seen_ns = t_now_ns;
    ep_source_counter_begin(&st->counter, t_now_ns);
    return EP_OK;
}

int ep_src_rapl_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    int rc = EP_ERR_NOMEM;
    rapl_state *st = calloc(1, sizeof *st);
    if (!st) {
        set_msg(src, "rapl: no memory");
        goto error;
    }
    static const char *const known[] = {"root", "update_ms", NULL};
    const char *unknown = ep_source_unknown_key(keys, n, known);
    if (unknown) {
        set_msg(src, "rapl: unknown parameter '%s' (known: root, update_ms)", unknown);
        rc = EP_ERR_ARG;
        goto error;
    }
    st->update_ms = 1.0;
    const char *update = ep_source_param(keys, values, n, "update_ms");
    if (update && (ep_source_parse_double(update, &st->update_ms) != EP_OK || !(st->update_ms > 0) ||
                   st->update_ms > 1000)) {
        set_msg(src, "rapl: update_ms must be a number of milliseconds in (0, 1000], got '%s'", update);
        rc = EP_ERR_ARG;
        goto error;
    }
    const char *root = ep_source_param(keys, values, n, "root");
    if (!root || !root[0])
        root = getenv("ENERGYPROF_RAPL_ROOT");
    if (!root || !root[0])
        root = RAPL_DEFAULT_ROOT;
    if (strlen(root) >= sizeof st->root - 64) {
        set_msg(src, "rapl: root path too long");
        rc = EP_ERR_ARG;
        goto error;
    }
    snprintf(st->root, sizeof st->root, "%s", root);
    src->kind = "rapl";
    src->flags = 0;
    src->period_ns = 100 * 1000 * 1000; /* counters update every ~1 ms; 10 Hz keeps the overhead negligible */
    st->counter.emit = rapl_sample;
    src->state = st;
    src->start = rapl_start;
    src->poll = ep_source_counter_poll;
    src->boundary = ep_source_counter_boundary;
    src->sync = ep_source_counter_sync;
    st->counter.raw = rapl_raw;
    src->sync_update_ns = (int64_t)(st->update_ms * 1e6);
    src->stop = ep_source_counter_stop;
    src->destroy = ep_source_free_state;
    rc = scan_tree(src, st);
    if (rc != EP_OK)
        goto error;
    write_meta(src, st);
    return EP_OK;
error:
    free(st);
    src->state = NULL;
    src->destroy = NULL;
    return rc;
}
