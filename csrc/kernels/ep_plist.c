/* ep_plist.c: the powermetrics document parser (libplist) and the stream framer.
 * See ep_plist.h for the framing rules and docs/powermetrics-format.md
 * for the format. */
#include "ep_plist.h"

#include <ctype.h>
#include <math.h>
#include <plist/plist.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"

/* Seconds from the Unix epoch to the Mac epoch (2001-01-01T00:00:00Z), the origin
 * of plist dates in libplist's date API and in binary plists. */
#define EP_PLIST_MAC_EPOCH_S 978307200.0

static int strict_reals_for_tests;

void ep_plist_test_strict_reals(int on)
{
    strict_reals_for_tests = on;
}

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

/* ---- sanitising non-finite reals ------------------------------------------------ */

/* 1 when the text of a <real> element is not a finite number.  Only short texts
 * are judged: a real number never needs more than a few dozen characters. */
static int real_text_nonfinite(const char *text, size_t n)
{
    char buf[64];
    while (n && isspace((unsigned char)*text)) {
        text++;
        n--;
    }
    while (n && isspace((unsigned char)text[n - 1]))
        n--;
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, text, n);
    buf[n] = '\0';
    char *end = NULL;
    double v = strtod(buf, &end);
    return end != buf && !isfinite(v);
}

/* Owner: *out is malloc'd here and owned by the caller on EP_OK. */
int ep_plist_sanitize_nonfinite(const char *doc, size_t len, char **out, size_t *out_len,
                                int *n_replaced)
{
    static const char open_tag[] = "<real>", close_tag[] = "</real>";
    const size_t open_len = sizeof open_tag - 1, close_len = sizeof close_tag - 1;
    /* "<string>" is 2 bytes longer than "<real>", "</string>" 2 longer than "</real>". */
    const size_t growth = 4;
    int rc = EP_ERR_NOMEM;
    size_t n_reals = 0, o = 0;
    char *buf = NULL;
    int replaced = 0;
    const char *p = doc, *end = doc + len;
    while ((p = memmem(p, (size_t)(end - p), open_tag, open_len)) != NULL) {
        n_reals++;
        p += open_len;
    }
    buf = malloc(len + growth * n_reals + 1);
    if (!buf)
        goto error;
    p = doc;
    while (p < end) {
        const char *tag = memmem(p, (size_t)(end - p), open_tag, open_len);
        if (!tag)
            break;
        const char *text = tag + open_len;
        const char *close = memmem(text, (size_t)(end - text), close_tag, close_len);
        if (!close)
            break;
        size_t text_len = (size_t)(close - text);
        int bad = real_text_nonfinite(text, text_len);
        memcpy(buf + o, p, (size_t)(tag - p));
        o += (size_t)(tag - p);
        if (bad) {
            memcpy(buf + o, "<string>", 8);
            o += 8;
            memcpy(buf + o, text, text_len);
            o += text_len;
            memcpy(buf + o, "</string>", 9);
            o += 9;
            replaced++;
        } else {
            size_t whole = (size_t)(close + close_len - tag);
            memcpy(buf + o, tag, whole);
            o += whole;
        }
        p = close + close_len;
    }
    memcpy(buf + o, p, (size_t)(end - p));
    o += (size_t)(end - p);
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    *n_replaced = replaced;
    return EP_OK;
error:
    free(buf);
    return rc;
}

/* ---- document -> tree ----------------------------------------------------------- */

static int is_binary(const char *doc, size_t len)
{
    return len >= 8 && memcmp(doc, "bplist00", 8) == 0;
}

static int prune_enabled = 1;

void ep_plist_set_prune(int on)
{
    prune_enabled = on;
}

/* Sections no field of ours comes from.  They are most of a document (per-CPU and
 * per-state residency, the per-task table: 90% of a 254 KiB capture) and libplist
 * spends its time allocating one node per element, so they are cut out of the
 * text before libplist sees it. */
static const char *const prune_keys[] = {"tasks", "all_tasks", "disk", "network", "interrupts",
                                         "dvfm_states", "cpus", "sw_requested_state", "sw_state", NULL};

static int is_prune_key(const char *name, size_t n)
{
    for (const char *const *k = prune_keys; *k; k++)
        if (strlen(*k) == n && memcmp(*k, name, n) == 0)
            return 1;
    return 0;
}

/* End of the balanced <array>/<dict> element that starts at p, or NULL. */
static const char *element_end(const char *p, const char *end)
{
    const char *open, *close;
    size_t open_len, close_len;
    if ((size_t)(end - p) >= 7 && memcmp(p, "<array>", 7) == 0) {
        open = "<array>", close = "</array>", open_len = 7, close_len = 8;
    } else if ((size_t)(end - p) >= 6 && memcmp(p, "<dict>", 6) == 0) {
        open = "<dict>", close = "</dict>", open_len = 6, close_len = 7;
    } else {
        return NULL;
    }
    int depth = 1;
    const char *pos = p + open_len;
    const char *next_open = memmem(pos, (size_t)(end - pos), open, open_len);
    while (depth > 0) {
        const char *next_close = memmem(pos, (size_t)(end - pos), close, close_len);
        if (!next_close)
            return NULL;
        if (next_open && next_open < next_close) {
            depth++;
            pos = next_open + open_len;
            next_open = memmem(pos, (size_t)(end - pos), open, open_len);
        } else {
            depth--;
            pos = next_close + close_len;
            if (next_open && next_open < pos)
                next_open = memmem(pos, (size_t)(end - pos), open, open_len);
        }
    }
    return pos;
}

/* Copy doc to out (len + 1 bytes) without the prune_keys entries whose value is an
 * <array> or <dict>; returns the new length.  Anything unusual (a comment or CDATA
 * that could hide tags, an unbalanced element) gives a plain copy instead. */
static size_t copy_pruned(const char *doc, size_t len, char *out)
{
    const char *end = doc + len, *p = doc;
    size_t o = 0;
    if (!prune_enabled || memmem(doc, len, "<!--", 4) || memmem(doc, len, "<![CDATA[", 9))
        goto plain;
    for (;;) {
        const char *key = memmem(p, (size_t)(end - p), "<key>", 5);
        if (!key)
            break;
        const char *name = key + 5;
        const char *key_end = memmem(name, (size_t)(end - name), "</key>", 6);
        if (!key_end)
            goto plain;
        const char *after = key_end + 6;
        const char *cut_end = NULL;
        if (is_prune_key(name, (size_t)(key_end - name))) {
            const char *v = after;
            while (v < end && isspace((unsigned char)*v))
                v++;
            cut_end = element_end(v, end);
        }
        const char *upto = cut_end ? key : after;
        memcpy(out + o, p, (size_t)(upto - p));
        o += (size_t)(upto - p);
        p = cut_end ? cut_end : after;
    }
    memcpy(out + o, p, (size_t)(end - p));
    o += (size_t)(end - p);
    out[o] = '\0';
    return o;
plain:
    memcpy(out, doc, len);
    out[len] = '\0';
    return len;
}

/* Owner: on EP_OK *root is a new tree the caller frees with plist_free. */
static int parse_tree(const char *doc, size_t len, int strict, plist_t *root)
{
    int rc = EP_ERR_PARSE;
    char *copy = NULL;
    *root = NULL;
    if (len == 0 || len > UINT32_MAX)
        goto error;
    if (is_binary(doc, len)) {
        plist_from_bin(doc, (uint32_t)len, root);
    } else {
        if (strict) {
            /* Emulate a libplist that rejects non-finite reals (tests only). */
            char *tmp = NULL;
            size_t tmp_len = 0;
            int n_bad = 0;
            if (ep_plist_sanitize_nonfinite(doc, len, &tmp, &tmp_len, &n_bad) != EP_OK) {
                rc = EP_ERR_NOMEM;
                goto error;
            }
            free(tmp);
            if (n_bad > 0)
                goto error;
        }
        /* libplist converts numbers with C library calls that stop at a NUL, not at
         * our length: give it a terminated copy so it can never read past the frame. */
        copy = malloc(len + 1);
        if (!copy) {
            rc = EP_ERR_NOMEM;
            goto error;
        }
        size_t n = copy_pruned(doc, len, copy);
        plist_from_xml(copy, (uint32_t)n, root);
        if (!*root && n != len) {
            /* The cut went wrong somewhere: the whole document, as it came. */
            memcpy(copy, doc, len);
            copy[len] = '\0';
            plist_from_xml(copy, (uint32_t)len, root);
        }
    }
    if (!*root)
        goto error;
    free(copy);
    return EP_OK;
error:
    free(copy);
    return rc;
}

/* ---- tree -> numbers ---------------------------------------------------------------- */

/* A number field: integer or real (or, after sanitising, a string holding a
 * non-finite number).  Missing or another type -> NaN (not counted).  A
 * non-finite raw value is returned as it is and counted in *nan_count. */
static double number(plist_t node, int *nan_count)
{
    if (!node)
        return NAN;
    plist_type t = plist_get_node_type(node);
    if (t == PLIST_UINT) {
        uint64_t u = 0;
        plist_get_uint_val(node, &u);
        return (double)(int64_t)u;
    }
    if (t == PLIST_REAL) {
        double v = 0.0;
        plist_get_real_val(node, &v);
        if (!isfinite(v))
            (*nan_count)++;
        return v;
    }
    if (t == PLIST_STRING) {
        uint64_t n = 0;
        const char *s = plist_get_string_ptr(node, &n);
        if (s && real_text_nonfinite(s, (size_t)n)) {
            (*nan_count)++;
            return strtod(s, NULL);
        }
    }
    return NAN;
}

static plist_t dict_get(plist_t dict, const char *key)
{
    return dict ? plist_dict_get_item(dict, key) : NULL;
}

static plist_t dict_get_typed(plist_t dict, const char *key, plist_type type)
{
    plist_t v = dict_get(dict, key);
    return (v && plist_get_node_type(v) == type) ? v : NULL;
}

static void copy_string(plist_t node, char *dst, size_t cap)
{
    dst[0] = '\0';
    if (!node || plist_get_node_type(node) != PLIST_STRING)
        return;
    uint64_t n = 0;
    const char *s = plist_get_string_ptr(node, &n);
    if (!s)
        return;
    size_t k = (size_t)n < cap - 1 ? (size_t)n : cap - 1;
    memcpy(dst, s, k);
    dst[k] = '\0';
}

/* mJ over elapsed ns -> W: (1e-3 J) / (1e-9 s) = 1e6. */
static double mj_over_ns_to_w(double energy_mj, int64_t elapsed_ns)
{
    return energy_mj * 1e6 / (double)elapsed_ns;
}

/* Interval power of one domain: the exact energy over the real window when both
 * are known (the *_power field is that same ratio rounded to 6 digits), else the
 * rounded power, else NaN. */
static double domain_power_w(double energy_mj, double power_mw, int64_t elapsed_ns)
{
    double w = NAN;
    if (isfinite(energy_mj) && elapsed_ns > 0)
        w = mj_over_ns_to_w(energy_mj, elapsed_ns);
    else if (isfinite(power_mw))
        w = power_mw / 1e3;
    return isfinite(w) ? w : NAN;
}

static void extract(plist_t root, ep_sample *out, ep_plist_extras *x)
{
    int nan_count = 0;
    plist_t v;
    memset(x, 0, sizeof *x);

    x->elapsed_ns = -1;
    v = dict_get_typed(root, "elapsed_ns", PLIST_UINT);
    if (v) {
        uint64_t u = 0;
        plist_get_uint_val(v, &u);
        x->elapsed_ns = (int64_t)u;
    }
    x->timestamp_s = NAN;
    v = dict_get_typed(root, "timestamp", PLIST_DATE);
    if (v) {
        int32_t sec = 0, usec = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        plist_get_date_val(v, &sec, &usec);
#pragma GCC diagnostic pop
        x->timestamp_s = (double)sec + EP_PLIST_MAC_EPOCH_S + (double)usec / 1e6;
    }
    x->is_delta = -1;
    v = dict_get_typed(root, "is_delta", PLIST_BOOLEAN);
    if (v) {
        uint8_t b = 0;
        plist_get_bool_val(v, &b);
        x->is_delta = b ? 1 : 0;
    }
    copy_string(dict_get(root, "hw_model"), x->hw_model, sizeof x->hw_model);
    copy_string(dict_get(root, "kern_osversion"), x->kern_osversion, sizeof x->kern_osversion);
    copy_string(dict_get(root, "thermal_pressure"), x->thermal_pressure, sizeof x->thermal_pressure);

    plist_t proc = dict_get_typed(root, "processor", PLIST_DICT);
    double e_mj[EP_NDOMAINS], p_mw[EP_NDOMAINS];
    static const char *const energy_keys[EP_NDOMAINS] = {"cpu_energy", "gpu_energy", "ane_energy",
                                                         "dram_energy", "package_energy"};
    static const char *const power_keys[EP_NDOMAINS] = {"cpu_power", "gpu_power", "ane_power",
                                                        "dram_power", "package_power"};
    for (int d = 0; d < EP_NDOMAINS; d++) {
        e_mj[d] = number(dict_get(proc, energy_keys[d]), &nan_count);
        p_mw[d] = number(dict_get(proc, power_keys[d]), &nan_count);
    }
    x->cpu_energy_j = e_mj[EP_DOM_CPU] / 1e3;
    x->gpu_energy_j = e_mj[EP_DOM_GPU] / 1e3;
    x->ane_energy_j = e_mj[EP_DOM_ANE] / 1e3;
    x->dram_energy_j = e_mj[EP_DOM_DRAM] / 1e3;
    x->package_energy_j = e_mj[EP_DOM_PACKAGE] / 1e3;
    x->cpu_power_w = p_mw[EP_DOM_CPU] / 1e3;
    x->gpu_power_w = p_mw[EP_DOM_GPU] / 1e3;
    x->ane_power_w = p_mw[EP_DOM_ANE] / 1e3;
    x->dram_power_w = p_mw[EP_DOM_DRAM] / 1e3;
    x->package_power_w = p_mw[EP_DOM_PACKAGE] / 1e3;
    x->combined_power_w = number(dict_get(proc, "combined_power"), &nan_count) / 1e3;

    plist_t clusters = dict_get_typed(proc, "clusters", PLIST_ARRAY);
    uint32_t n_cl = clusters ? plist_array_get_size(clusters) : 0;
    for (uint32_t i = 0; i < n_cl && x->n_clusters < EP_PLIST_MAX_CLUSTERS; i++) {
        plist_t c = plist_array_get_item(clusters, i);
        if (!c || plist_get_node_type(c) != PLIST_DICT)
            continue;
        ep_plist_cluster *cl = &x->clusters[x->n_clusters++];
        copy_string(dict_get(c, "name"), cl->name, sizeof cl->name);
        cl->freq_hz = number(dict_get(c, "freq_hz"), &nan_count);
        cl->idle_ratio = number(dict_get(c, "idle_ratio"), &nan_count);
        cl->down_ratio = number(dict_get(c, "down_ratio"), &nan_count);
        cl->active_ratio = 1.0 - cl->idle_ratio - (isnan(cl->down_ratio) ? 0.0 : cl->down_ratio);
    }

    plist_t gpu = dict_get_typed(root, "gpu", PLIST_DICT);
    /* gpu.freq_hz is named Hz but holds MHz (338, 714.836, 1360.85 in captures). */
    x->gpu_freq_hz = number(dict_get(gpu, "freq_hz"), &nan_count) * 1e6;
    x->gpu_idle_ratio = number(dict_get(gpu, "idle_ratio"), &nan_count);
    double gpu_sampler_mj = number(dict_get(gpu, "gpu_energy"), &nan_count);
    x->gpu_sampler_energy_j = gpu_sampler_mj / 1e3;
    x->nan_fields = nan_count;

    memset(out, 0, sizeof *out);
    out->kind = EP_KIND_INTERVAL;
    out->t_start_ns = 0;
    out->t_end_ns = x->elapsed_ns > 0 ? x->elapsed_ns : 0;
    for (int d = 0; d < EP_NDOMAINS; d++)
        out->power_w[d] = domain_power_w(e_mj[d], p_mw[d], x->elapsed_ns);
    /* With only the gpu_power sampler there is no processor dict: gpu.gpu_energy is
     * then the only GPU figure (a separate measurement, close to processor's). */
    if (isnan(out->power_w[EP_DOM_GPU]))
        out->power_w[EP_DOM_GPU] = domain_power_w(gpu_sampler_mj, NAN, x->elapsed_ns);
    out->flags = nan_count > 0 ? EP_SFLAG_NAN_FIELD : 0;
}

int ep_plist_parse(const char *doc, size_t len, ep_sample *out, ep_plist_extras *extras, char *err,
                   size_t errlen)
{
    int rc = EP_ERR_PARSE;
    plist_t root = NULL;
    char *clean = NULL;
    size_t clean_len = 0;
    int n_bad = 0, sanitized = 0;
    ep_plist_extras local;
    ep_plist_extras *x = extras ? extras : &local;

    if (!doc || len == 0) {
        set_err(err, errlen, "empty document");
        goto error;
    }
    rc = parse_tree(doc, len, strict_reals_for_tests, &root);
    if (rc == EP_ERR_PARSE && !is_binary(doc, len)) {
        /* A libplist that rejects nan/inf loses the whole frame for one idle_ratio:
         * retry once with those values rewritten as strings (read back as NaN). */
        rc = ep_plist_sanitize_nonfinite(doc, len, &clean, &clean_len, &n_bad);
        if (rc != EP_OK) {
            set_err(err, errlen, "out of memory");
            goto error;
        }
        rc = EP_ERR_PARSE;
        if (n_bad > 0) {
            rc = parse_tree(clean, clean_len, 0, &root);
            sanitized = rc == EP_OK;
        }
    }
    if (rc != EP_OK) {
        set_err(err, errlen, rc == EP_ERR_NOMEM ? "out of memory" : "not a well-formed plist document");
        goto error;
    }
    if (plist_get_node_type(root) != PLIST_DICT) {
        rc = EP_ERR_PARSE;
        set_err(err, errlen, "plist root is not a dict");
        goto error;
    }
    extract(root, out, x);
    x->sanitized = sanitized;
    if (sanitized)
        out->flags |= EP_SFLAG_NAN_FIELD;
    plist_free(root);
    free(clean);
    return EP_OK;
error:
    if (root)
        plist_free(root);
    free(clean);
    return rc;
}

/* ---- framer -------------------------------------------------------------------------- */

enum { MODE_NONE = 0, MODE_GARBAGE, MODE_SKIP_XML, MODE_SKIP_BIN };

struct ep_plist_framer {
    char *buf;            /* owned; bytes [start, len) are pending             */
    size_t cap, start, len;
    size_t scan_off;      /* resume the end-of-frame search at start + scan_off */
    size_t max_frame;
    int finished;
    int mode;
    size_t garbage_head_len;
    ep_plist_framer_stats st;
};

/* Owner: *out is new, freed by ep_plist_framer_free. */
int ep_plist_framer_new(size_t max_frame_bytes, ep_plist_framer **out)
{
    ep_plist_framer *f = calloc(1, sizeof *f);
    if (!f)
        return EP_ERR_NOMEM;
    f->max_frame = max_frame_bytes ? max_frame_bytes : EP_PLIST_MAX_FRAME_BYTES;
    *out = f;
    return EP_OK;
}

void ep_plist_framer_free(ep_plist_framer *f)
{
    if (!f)
        return;
    free(f->buf);
    free(f);
}

int ep_plist_framer_feed(ep_plist_framer *f, const char *data, size_t n)
{
    if (n == 0)
        return EP_OK;
    if (f->start > 0 && (f->start >= f->len || f->len + n > f->cap)) {
        /* Compact first: frames handed out earlier are no longer borrowed. */
        memmove(f->buf, f->buf + f->start, f->len - f->start);
        f->len -= f->start;
        f->start = 0;
    }
    if (f->len + n > f->cap) {
        size_t cap = f->cap ? f->cap : 65536;
        while (cap < f->len + n)
            cap *= 2;
        char *nb = realloc(f->buf, cap);
        if (!nb)
            return EP_ERR_NOMEM;
        f->buf = nb;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, data, n);
    f->len += n;
    return EP_OK;
}

void ep_plist_framer_finish(ep_plist_framer *f)
{
    f->finished = 1;
}

static const char *find(const char *hay, size_t n, const char *needle)
{
    return n ? memmem(hay, n, needle, strlen(needle)) : NULL;
}

/* Does a document start at p (avail bytes)?  1 yes, 0 no, -1 cannot tell yet. */
static int doc_start_at(const char *p, size_t avail, int finished)
{
    static const char *const markers[] = {"<?xml", "<!DOCTYPE", "<plist", "bplist00"};
    int undecided = 0;
    for (size_t i = 0; i < sizeof markers / sizeof *markers; i++) {
        size_t m = strlen(markers[i]);
        if (avail >= m) {
            if (memcmp(p, markers[i], m) == 0)
                return 1;
        } else if (memcmp(p, markers[i], avail) == 0) {
            undecided = 1;
        }
    }
    return undecided && !finished ? -1 : 0;
}

static void note_garbage(ep_plist_framer *f, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (f->mode != MODE_GARBAGE) {
        f->st.garbage_runs++;
        f->mode = MODE_GARBAGE;
    }
    f->st.garbage_bytes += (int64_t)n;
    for (size_t i = 0; i < n && f->garbage_head_len + 1 < sizeof f->st.garbage_head; i++) {
        unsigned char c = (unsigned char)p[i];
        f->st.garbage_head[f->garbage_head_len++] = (c >= 32 && c < 127) ? (char)c : '.';
    }
    f->st.garbage_head[f->garbage_head_len] = '\0';
}

/* Earliest of several needles in [p, p + n), or NULL. */
static const char *earliest(const char *a, const char *b)
{
    if (!a)
        return b;
    if (!b)
        return a;
    return a < b ? a : b;
}

/* Keep enough of an unfinished search for a needle straddling two feeds. */
#define EP_PLIST_OVERLAP 9

static void rescan_later(ep_plist_framer *f, size_t min_off)
{
    size_t pending = f->len - f->start;
    f->scan_off = pending > EP_PLIST_OVERLAP ? pending - EP_PLIST_OVERLAP : 0;
    if (f->scan_off < min_off)
        f->scan_off = min_off;
}

static void consume_to(ep_plist_framer *f, size_t abs_pos)
{
    f->start = abs_pos;
    f->scan_off = 0;
}

int ep_plist_framer_next(ep_plist_framer *f, ep_plist_frame *frame)
{
    for (;;) {
        char *base = f->buf;
        if (f->mode == MODE_SKIP_XML || f->mode == MODE_SKIP_BIN) {
            /* An oversize frame: drop bytes up to the next boundary. */
            const char *s = base + f->start + f->scan_off;
            size_t n = f->len - f->start - f->scan_off;
            const char *hit_next = earliest(find(s, n, "<?xml"), find(s, n, "bplist00"));
            const char *hit = hit_next;
            size_t skip_after = 0;
            if (f->mode == MODE_SKIP_XML) {
                const char *e = find(s, n, "</plist>");
                const char *z = n ? memchr(s, 0, n) : NULL;
                const char *b = earliest(e, z);
                if (b && (!hit || b < hit)) {
                    hit = b;
                    skip_after = (b == e) ? 8 : 1;
                }
            }
            if (hit) {
                consume_to(f, (size_t)(hit - base) + skip_after);
                f->mode = MODE_NONE;
                continue;
            }
            if (f->finished) {
                consume_to(f, f->len);
                f->mode = MODE_NONE;
                return EP_ERR_EOF;
            }
            /* Nothing to keep but a possible straddling needle. */
            size_t pending = f->len - f->start;
            if (pending > EP_PLIST_OVERLAP)
                consume_to(f, f->len - EP_PLIST_OVERLAP);
            return EP_ERR_EOF;
        }

        if (f->mode != MODE_GARBAGE) {
            size_t was = f->start;
            while (f->start < f->len && (base[f->start] == '\0' || isspace((unsigned char)base[f->start])))
                f->start++;
            if (f->start != was)
                f->scan_off = 0; /* a new frame begins: its search starts afresh */
        }
        if (f->start >= f->len) {
            if (f->finished)
                f->mode = MODE_NONE;
            return EP_ERR_EOF;
        }
        const char *p = base + f->start;
        size_t avail = f->len - f->start;

        if (f->mode == MODE_GARBAGE || (p[0] != '<' && doc_start_at(p, avail, f->finished) != 1)) {
            /* Not a document: skip to the next NUL or document start. */
            if (doc_start_at(p, avail, f->finished) == -1)
                return EP_ERR_EOF; /* "bpli..." may still become bplist00 */
            size_t i = 0;
            int found = 0;
            for (; i < avail; i++) {
                if (p[i] == '\0') {
                    found = 1;
                    break;
                }
                int d = doc_start_at(p + i, avail - i, f->finished);
                if (d == 1) {
                    found = 1;
                    break;
                }
                if (d == -1)
                    break;
            }
            note_garbage(f, p, i);
            consume_to(f, f->start + i);
            if (found || f->finished) {
                f->mode = MODE_NONE;
                if (!found)
                    return EP_ERR_EOF;
                continue;
            }
            return EP_ERR_EOF;
        }

        int binary = avail >= 8 && memcmp(p, "bplist00", 8) == 0;
        size_t from = f->scan_off ? f->scan_off : (binary ? 8 : 1);
        const char *s = p + from;
        size_t n = avail > from ? avail - from : 0;
        size_t frame_len = 0, next_start = 0;
        int complete = 0, found = 0;
        if (binary) {
            const char *hit = earliest(find(s, n, "bplist00"), find(s, n, "<?xml"));
            if (hit) {
                frame_len = (size_t)(hit - p);
                if (frame_len > 8 && p[frame_len - 1] == '\0')
                    frame_len--; /* the separating NUL */
                next_start = (size_t)(hit - p);
                complete = 1;
                found = 1;
            }
        } else {
            const char *e = find(s, n, "</plist>");
            const char *z = n ? memchr(s, 0, n) : NULL;
            const char *x = find(s, n, "<?xml");
            const char *hit = earliest(earliest(e, z), x);
            if (hit) {
                found = 1;
                if (hit == e) {
                    frame_len = (size_t)(e - p) + 8;
                    next_start = frame_len;
                    complete = 1;
                } else if (hit == z) {
                    frame_len = (size_t)(z - p);
                    next_start = frame_len + 1;
                } else {
                    frame_len = (size_t)(x - p);
                    next_start = frame_len;
                }
            }
        }
        if (!found) {
            if (avail > f->max_frame) {
                f->st.oversize++;
                f->mode = binary ? MODE_SKIP_BIN : MODE_SKIP_XML;
                consume_to(f, f->start + 1);
                continue;
            }
            if (!f->finished) {
                rescan_later(f, from);
                return EP_ERR_EOF;
            }
            frame_len = avail;
            next_start = avail;
            complete = binary;
        }
        size_t frame_start = f->start;
        consume_to(f, f->start + next_start);
        if (frame_len > f->max_frame) {
            f->st.oversize++;
            continue;
        }
        frame->data = base + frame_start;
        frame->len = frame_len;
        frame->complete = complete;
        frame->binary = binary;
        f->st.frames++;
        return EP_OK;
    }
}

void ep_plist_framer_stats_get(const ep_plist_framer *f, ep_plist_framer_stats *st)
{
    *st = f->st;
    st->pending_bytes = (int64_t)(f->len - f->start);
}
