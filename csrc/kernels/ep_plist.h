/* ep_plist.h: powermetrics plist documents -> interval samples (libplist), and
 * the incremental framer that cuts a byte stream into documents.
 *
 * powermetrics -f plist writes one XML document per sample, separated by NUL
 * bytes (the NUL arrives *before* the next document, not after the current one),
 * and libplist parses only the first document of a buffer, so the framing is ours:
 *   - leading NUL and whitespace are dropped;
 *   - an XML frame ends right after `</plist>` (we never wait for the newline or
 *     the NUL, which would make every sample one interval late), at a NUL, or where
 *     a new `<?xml` starts (a truncated document followed by a fresh one);
 *   - a binary frame (`bplist00`) has no length up front and contains NULs itself,
 *     so it ends where the next document starts (one separating NUL dropped) or at
 *     the end of the stream;
 *   - bytes that are no document (a shell error, a banner) are skipped and counted;
 *   - a frame larger than the bound is skipped and counted.
 * See docs/powermetrics-format.md for the format itself.
 *
 * No Python here: this file is fuzzed (tests/fuzz/fuzz_plist.c) and run under
 * valgrind on its own.
 */
#ifndef EP_PLIST_H
#define EP_PLIST_H
#include <stddef.h>
#include <stdint.h>

#include "ep_sample.h"

/* Default bound on one frame: real documents are 7-300 KiB (the largest carry the
 * per-task sampler); 8 MiB is far beyond any of them yet keeps a runaway stream
 * from growing the buffer without limit. */
#define EP_PLIST_MAX_FRAME_BYTES ((size_t)8 << 20)

/* Documents are converted to one interval sample plus these extras. */
#define EP_PLIST_MAX_CLUSTERS 16
#define EP_PLIST_NAME_LEN 32

typedef struct {
    char name[EP_PLIST_NAME_LEN];   /* opaque ("E-Cluster", "P0-Cluster", "S-Cluster"...) */
    double freq_hz;                 /* processor.clusters[i].freq_hz (already Hz)   */
    double idle_ratio;              /* share of elapsed time idle, NaN if missing    */
    double down_ratio;              /* share powered down (macOS 26), NaN if missing */
    double active_ratio;            /* 1 - idle_ratio - down_ratio (missing down = 0) */
} ep_plist_cluster;

typedef struct {
    int64_t elapsed_ns;             /* the real window length; -1 if missing        */
    double timestamp_s;             /* end of the window, Unix seconds; NaN if missing */
    int is_delta;                   /* 1/0; -1 if missing                           */
    /* processor.*_energy (mJ in the document), in J; NaN if missing.  package and
     * dram exist only before macOS 13. */
    double cpu_energy_j, gpu_energy_j, ane_energy_j, dram_energy_j, package_energy_j;
    /* gpu.gpu_energy: the gpu_power sampler's own (different) GPU measurement, J. */
    double gpu_sampler_energy_j;
    /* processor.*_power (mW in the document), in W; NaN if missing. */
    double cpu_power_w, gpu_power_w, ane_power_w, dram_power_w, package_power_w;
    double combined_power_w;        /* cpu + gpu + ane, not package power           */
    double gpu_freq_hz;             /* gpu.freq_hz is really MHz; converted to Hz   */
    double gpu_idle_ratio;
    char thermal_pressure[24];      /* "Nominal", "Moderate", ...; "" if missing    */
    char hw_model[64];              /* "" if missing                                */
    char kern_osversion[32];        /* "" if missing                                */
    int n_clusters;                 /* entries filled in clusters[]                 */
    ep_plist_cluster clusters[EP_PLIST_MAX_CLUSTERS];
    int nan_fields;                 /* extracted numbers whose raw value was not finite */
    int sanitized;                  /* 1: parsed on the retry with non-finite reals
                                       rewritten (a libplist that rejects nan)      */
} ep_plist_extras;

/* Parse one document (XML or binary, no leading NUL needed).  doc is borrowed.
 * On EP_OK fills *out (kind INTERVAL, t_start_ns = 0, t_end_ns = elapsed_ns or 0:
 * the caller places it on the clock; W per domain, NaN where unknown) and *extras
 * when non-NULL.  On EP_ERR_PARSE writes the reason to err (may be NULL).
 * Never reads past doc + len; leaks nothing on any path. */
int ep_plist_parse(const char *doc, size_t len, ep_sample *out, ep_plist_extras *extras, char *err,
                   size_t errlen);

/* Rewrite every `<real>` whose text is not a finite number as `<string>` with the
 * same text, so a libplist that rejects nan/inf still parses the document and the
 * value reads back as NaN.  On EP_OK *out is a new malloc'd buffer (caller frees)
 * of *out_len bytes and *n_replaced counts the rewrites (0: nothing to do). */
int ep_plist_sanitize_nonfinite(const char *doc, size_t len, char **out, size_t *out_len,
                                int *n_replaced);

/* On by default: cut the sections no field comes from (per-task, per-CPU, residency
 * tables) out of an XML document before libplist builds its tree.  0 parses the
 * whole document (tests and benchmarks compare the two). */
void ep_plist_set_prune(int on);

/* Tests only: 1 makes the first parse attempt fail on any non-finite `<real>`, as
 * libplist after 2.7 does, so the sanitising retry runs with this libplist too. */
void ep_plist_test_strict_reals(int on);

/* ---- framer ---------------------------------------------------------------- */

typedef struct ep_plist_framer ep_plist_framer;

typedef struct {
    const char *data;   /* borrowed from the framer; valid until the next feed/next/free */
    size_t len;
    int complete;       /* 0: the stream ended inside this (XML) document */
    int binary;         /* 1: starts with bplist00                          */
} ep_plist_frame;

/* New framer (caller frees with ep_plist_framer_free).  max_frame_bytes 0 = default. */
int ep_plist_framer_new(size_t max_frame_bytes, ep_plist_framer **out);
void ep_plist_framer_free(ep_plist_framer *f);

/* Append n bytes (copied).  EP_ERR_NOMEM leaves the framer usable. */
int ep_plist_framer_feed(ep_plist_framer *f, const char *data, size_t n);

/* Mark the end of the stream: what is left becomes the last frame (complete = 0
 * for an XML document without its `</plist>`). */
void ep_plist_framer_finish(ep_plist_framer *f);

/* Next frame: EP_OK with *frame filled (data borrowed, see above), or EP_ERR_EOF
 * when no complete frame is buffered (feed more, or the stream is over). */
int ep_plist_framer_next(ep_plist_framer *f, ep_plist_frame *frame);

typedef struct {
    int64_t frames;          /* frames returned by next                             */
    int64_t oversize;        /* frames skipped because larger than the bound        */
    int64_t garbage_runs;    /* stretches of non-document bytes skipped             */
    int64_t garbage_bytes;   /* bytes in them                                       */
    int64_t pending_bytes;   /* bytes buffered but not yet framed                   */
    char garbage_head[96];   /* the first non-document bytes seen (printable, for messages) */
} ep_plist_framer_stats;

void ep_plist_framer_stats_get(const ep_plist_framer *f, ep_plist_framer_stats *st);

#endif
