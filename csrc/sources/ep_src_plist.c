/* ep_src_plist.c: the 'plist' power source: replays a captured powermetrics stream.
 *
 * Spec: plist:PATH[,speed=1.0|max]  (C keys: path, speed).
 *
 * Timeline: the first document starts at the source's start time and each one
 * covers its own elapsed_ns, back to back, so a replay integrates to exactly the
 * energy in the capture.  speed=F paces delivery in real time: a sample is handed
 * out once now >= start + (its end - start) / F (the sample's times stay on the
 * capture's own timeline).  speed=max hands everything out as fast as the sampler
 * polls (at most cap per poll), then the source ends with EP_ERR_EOF.
 * The file is read incrementally (64 KiB at a time) through the framer, so a long
 * capture never sits in memory whole.  Malformed documents are skipped and counted
 * in src->faults.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ep_errors.h"
#include "ep_plist.h"
#include "ep_source.h"

#define READ_CHUNK (64 * 1024)
/* Bytes read at create time to find the first document for the run metadata. */
#define PEEK_MAX ((size_t)1 << 20)

typedef struct {
    char *path;                /* owned */
    double speed;              /* > 0: real-time factor; 0: as fast as possible */
    int fd;                    /* -1 when closed */
    ep_plist_framer *framer;   /* owned */
    int read_eof;
    int ended;
    int have_pending;
    ep_sample pending;         /* parsed, not yet due */
    int64_t pending_elapsed_ns;
    int64_t t0_ns;             /* start of the replay timeline */
    int64_t done_ns;           /* capture time covered by samples handed out */
    int64_t n_docs, n_samples;
    int64_t framer_faults;     /* framer skips already added to src->faults */
} plist_state;

/* Add the framer's new skips to src->faults, with a message. */
static void note_framer_faults(ep_source *src, plist_state *st)
{
    ep_plist_framer_stats fs;
    ep_plist_framer_stats_get(st->framer, &fs);
    int64_t now = fs.oversize + fs.garbage_runs;
    if (now > st->framer_faults) {
        src->faults += now - st->framer_faults;
        snprintf(src->message, sizeof src->message,
                 "plist: skipped %lld frame(s) over %zu bytes and %lld byte(s) of non-plist data (starting '%.40s')",
                 (long long)fs.oversize, (size_t)EP_PLIST_MAX_FRAME_BYTES, (long long)fs.garbage_bytes,
                 fs.garbage_head);
        st->framer_faults = now;
    }
}

/* Read more of the file into the framer; EP_OK, or EP_ERR_IO. */
static int read_more(ep_source *src, plist_state *st)
{
    char buf[READ_CHUNK];
    for (;;) {
        ssize_t r = read(st->fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(src->message, sizeof src->message, "plist: read error on '%.150s': %s", st->path,
                     strerror(errno));
            return EP_ERR_IO;
        }
        if (r == 0) {
            st->read_eof = 1;
            ep_plist_framer_finish(st->framer);
            return EP_OK;
        }
        return ep_plist_framer_feed(st->framer, buf, (size_t)r);
    }
}

/* The next usable document as a sample: EP_OK, EP_ERR_EOF at the end of the
 * file, or EP_ERR_IO / EP_ERR_NOMEM. */
static int next_sample(ep_source *src, plist_state *st, ep_sample *out, int64_t *elapsed_ns)
{
    for (;;) {
        ep_plist_frame fr;
        int rc = ep_plist_framer_next(st->framer, &fr);
        note_framer_faults(src, st);
        if (rc == EP_ERR_EOF) {
            if (st->read_eof)
                return EP_ERR_EOF;
            rc = read_more(src, st);
            if (rc != EP_OK)
                return rc;
            continue;
        }
        st->n_docs++;
        ep_plist_extras x;
        char err[96] = "";
        rc = ep_plist_parse(fr.data, fr.len, out, &x, err, sizeof err);
        if (rc == EP_ERR_NOMEM)
            return rc;
        if (rc != EP_OK) {
            src->faults++;
            snprintf(src->message, sizeof src->message, "plist: document %lld skipped (%zu bytes%s): %s",
                     (long long)st->n_docs, fr.len, fr.complete ? "" : ", truncated", err);
            continue;
        }
        if (x.elapsed_ns <= 0) {
            src->faults++;
            snprintf(src->message, sizeof src->message,
                     "plist: document %lld skipped: no positive elapsed_ns, so it has no interval",
                     (long long)st->n_docs);
            continue;
        }
        *elapsed_ns = x.elapsed_ns;
        return EP_OK;
    }
}

static int plist_start(ep_source *src, int64_t t_now_ns)
{
    plist_state *st = src->state;
    int rc = EP_OK;
    /* A sampler may be started again after a stop: replay from the beginning. */
    if (lseek(st->fd, 0, SEEK_SET) < 0) {
        snprintf(src->message, sizeof src->message, "plist: cannot rewind '%.150s': %s", st->path,
                 strerror(errno));
        return EP_ERR_IO;
    }
    ep_plist_framer_free(st->framer);
    st->framer = NULL;
    rc = ep_plist_framer_new(0, &st->framer);
    if (rc != EP_OK)
        return rc;
    st->read_eof = st->ended = st->have_pending = 0;
    st->t0_ns = t_now_ns;
    st->done_ns = 0;
    st->n_docs = st->n_samples = st->framer_faults = 0;
    return EP_OK;
}

static int plist_poll(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out)
{
    plist_state *st = src->state;
    size_t n = 0;
    int rc = EP_OK;
    *n_out = 0;
    if (!st->framer) {
        snprintf(src->message, sizeof src->message, "plist: poll before start");
        return EP_ERR_STATE;
    }
    if (st->ended)
        return EP_ERR_EOF;
    while (n < cap) {
        if (!st->have_pending) {
            rc = next_sample(src, st, &st->pending, &st->pending_elapsed_ns);
            if (rc != EP_OK)
                break;
            st->have_pending = 1;
        }
        int64_t end_ns = st->done_ns + st->pending_elapsed_ns;
        /* Due when the scaled capture time has passed on our clock. */
        if (st->speed > 0 && (double)(t_now_ns - st->t0_ns) < (double)end_ns / st->speed)
            break;
        ep_sample *s = &out[n++];
        *s = st->pending;
        s->t_start_ns = st->t0_ns + st->done_ns;
        s->t_end_ns = st->t0_ns + end_ns;
        st->done_ns = end_ns;
        st->have_pending = 0;
        st->n_samples++;
    }
    *n_out = n;
    if (rc == EP_ERR_EOF) {
        st->ended = 1;
        snprintf(src->message, sizeof src->message,
                 "plist: replay finished: %lld sample(s) from %lld document(s), %lld fault(s)",
                 (long long)st->n_samples, (long long)st->n_docs, (long long)src->faults);
    }
    return rc;
}

static int plist_stop(ep_source *src, int64_t t_now_ns, ep_sample *out, size_t cap, size_t *n_out)
{
    /* Only whole documents are ever handed out: nothing to flush. */
    *n_out = 0;
    return EP_OK;
}

static void plist_destroy(ep_source *src)
{
    plist_state *st = src->state;
    if (!st)
        return;
    if (st->fd >= 0)
        close(st->fd);
    ep_plist_framer_free(st->framer);
    free(st->path);
    free(st);
    src->state = NULL;
}

/* Read the first parseable document (within PEEK_MAX bytes) for the metadata. */
static void peek_first(plist_state *st, ep_plist_extras *x, int *found)
{
    ep_plist_framer *f = NULL;
    char buf[READ_CHUNK];
    size_t total = 0;
    *found = 0;
    if (ep_plist_framer_new(0, &f) != EP_OK)
        return;
    int eof = 0;
    while (!*found && total < PEEK_MAX) {
        ep_plist_frame fr;
        if (ep_plist_framer_next(f, &fr) == EP_OK) {
            ep_sample s;
            if (ep_plist_parse(fr.data, fr.len, &s, x, NULL, 0) == EP_OK)
                *found = 1;
            continue;
        }
        if (eof)
            break;
        ssize_t r = read(st->fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            eof = 1;
            ep_plist_framer_finish(f);
            continue;
        }
        total += (size_t)r;
        if (ep_plist_framer_feed(f, buf, (size_t)r) != EP_OK)
            break;
    }
    ep_plist_framer_free(f);
    lseek(st->fd, 0, SEEK_SET);
}

int ep_src_plist_create(ep_source *src, const char *const *keys, const char *const *values, size_t n)
{
    int rc = EP_ERR_ARG;
    plist_state *st = NULL;
    const char *path = ep_source_param(keys, values, n, "path");
    const char *speed = ep_source_param(keys, values, n, "speed");
    for (size_t i = 0; i < n; i++) {
        if (strcmp(keys[i], "path") != 0 && strcmp(keys[i], "speed") != 0) {
            snprintf(src->message, sizeof src->message, "plist: unknown parameter '%.60s' (known: path, speed)",
                     keys[i]);
            goto error;
        }
    }
    if (!path || !path[0]) {
        snprintf(src->message, sizeof src->message, "plist: needs a file: plist:PATH[,speed=1.0|max]");
        goto error;
    }
    st = calloc(1, sizeof *st);
    if (!st) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    st->fd = -1;
    st->speed = 1.0;
    if (speed && strcmp(speed, "max") == 0) {
        st->speed = 0.0;
    } else if (speed) {
        char *end = NULL;
        errno = 0;
        double v = strtod(speed, &end);
        if (end == speed || *end || errno || !isfinite(v) || v <= 0) {
            snprintf(src->message, sizeof src->message, "plist: 'speed' must be a positive number or 'max', got '%.60s'",
                     speed);
            goto error;
        }
        st->speed = v;
    }
    st->path = strdup(path);
    if (!st->path) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    st->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (st->fd < 0) {
        rc = errno == ENOENT ? EP_ERR_NOTFOUND : errno == EACCES ? EP_ERR_PERM : EP_ERR_IO;
        snprintf(src->message, sizeof src->message, "plist: cannot open '%.150s': %s", path, strerror(errno));
        goto error;
    }

    ep_plist_extras x;
    int found = 0;
    peek_first(st, &x, &found);
    snprintf(src->meta_json, sizeof src->meta_json, "{\"source\": \"plist\", \"path\": \"");
    ep_source_json_escape(src->meta_json, sizeof src->meta_json, path);
    size_t o = strlen(src->meta_json);
    if (st->speed > 0)
        snprintf(src->meta_json + o, sizeof src->meta_json - o, "\", \"speed\": %.17g", st->speed);
    else
        snprintf(src->meta_json + o, sizeof src->meta_json - o, "\", \"speed\": \"max\"");
    if (found) {
        strncat(src->meta_json, ", \"hw_model\": \"", sizeof src->meta_json - strlen(src->meta_json) - 1);
        ep_source_json_escape(src->meta_json, sizeof src->meta_json, x.hw_model);
        strncat(src->meta_json, "\", \"kern_osversion\": \"", sizeof src->meta_json - strlen(src->meta_json) - 1);
        ep_source_json_escape(src->meta_json, sizeof src->meta_json, x.kern_osversion);
        strncat(src->meta_json, "\"", sizeof src->meta_json - strlen(src->meta_json) - 1);
    }
    strncat(src->meta_json, "}", sizeof src->meta_json - strlen(src->meta_json) - 1);

    src->kind = "plist";
    src->flags = EP_SRC_PACED;
    src->period_ns = 10 * 1000 * 1000; /* a check every 10 ms keeps real-time replay within 10 ms */
    src->state = st;
    src->start = plist_start;
    src->poll = plist_poll;
    src->stop = plist_stop;
    src->destroy = plist_destroy;
    return EP_OK;
error:
    if (st) {
        if (st->fd >= 0)
            close(st->fd);
        free(st->path);
        free(st);
    }
    return rc;
}
