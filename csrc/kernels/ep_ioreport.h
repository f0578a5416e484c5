/* ep_ioreport.h: Apple IOReport "Energy Model" channels -> energyprof samples.
 *
 * Two parts:
 *  - ep_ioreport_delta (platform-independent, tested on Linux): turns two
 *    cumulative channel snapshots into one INTERVAL sample per domain, and flags
 *    the known faults instead of silently using them.
 *  - ep_ioreport_live_* (macOS only, #ifdef __APPLE__): dlopens IOReport and
 *    CoreFoundation and fills snapshots.  On other systems the open call returns
 *    EP_ERR_UNSUPPORTED.
 *
 * Channel -> domain mapping (names as IOReport reports them; a DIE_<n>_ prefix on
 * multi-die "Ultra" chips is accepted everywhere):
 *   cpu  : every "... CPU Energy" channel ("CPU Energy", "DIE_0_CPU Energy") summed;
 *          only when none exists, the cluster totals summed: E*CPU / P*CPU
 *          ("ECPU", "PCPU", "EACC_CPU", "PACC0_CPU") and M5's "MCPU<n>".
 *          Per-core channels (ECPU0, PACC0_CPU1, MCPU0_1, PACC_0) and the cluster
 *          managers (*CPM*) are never added: they are parts of the totals.
 *   gpu  : "GPU Energy"            (GPU SRAM* is not part of it and is ignored)
 *   ane  : "ANE" followed only by digits/underscores ("ANE", "ANE0", "ANE0_1"), summed
 *          ("ANE0_SRAM" and other SRAM rails / DTL leaves are never added)
 *   dram : every channel starting with "DRAM" summed
 *   package: not reported (IOReport has no package total).
 * Channels of other blocks (ISP, AVE, DISP, SOC_AON, PCIe, ...) are ignored.  A
 * channel whose name mentions CPU, GPU, ANE or DRAM but matches none of the rules
 * is "unknown" (probably renamed by a new chip or OS): it is never used, it is
 * listed in the message, and the sample is flagged EP_SFLAG_SUSPECT.
 *
 * Units per channel: "mJ", "uJ" (or "µJ"), "nJ".  Any other unit: the channel is
 * not used, its domain becomes NaN, and the sample is SUSPECT.
 *
 * Faults (each sets EP_SFLAG_SUSPECT and a bit in *faults):
 *   BACKWARDS   a mapped channel's counter decreased: its domain is NaN.
 *   CHANNELS    a mapped channel is in one snapshot and not the other (renamed or
 *               dropped mid-run): its domain is NaN.
 *   UNIT        unknown unit, or the unit changed between snapshots: domain NaN.
 *   UNKNOWN     an unknown channel (see above) exists; values still computed.
 *   STUCK_ZERO  cpu or dram (always drawing power on a running machine) used no
 *               energy while another domain did (seen on M5 / macOS 27 where all
 *               but the nJ GPU channel read 0).  The 0 is kept and flagged.
 *   ALTERNATING a domain's energy alternated zero / non-zero over the last
 *               EP_IOREPORT_HISTORY intervals (the "0, then double" readings seen
 *               on new chips).  Needs state; the value is kept and flagged.
 */
#ifndef EP_IOREPORT_H
#define EP_IOREPORT_H
#include <stddef.h>
#include <stdint.h>

#include "ep_sample.h"

#define EP_IOREPORT_NAME_LEN 64
#define EP_IOREPORT_UNIT_LEN 8
#define EP_IOREPORT_HISTORY 4
#define EP_IOREPORT_MSG_LEN 256
#define EP_IOREPORT_MAX_CHANNELS 512

typedef struct {
    char name[EP_IOREPORT_NAME_LEN];  /* channel name, e.g. "CPU Energy" */
    char unit[EP_IOREPORT_UNIT_LEN];  /* unit label: "mJ", "uJ", "nJ" */
    int64_t value;                    /* cumulative energy in that unit */
} ep_ioreport_channel;

enum {
    EP_IOREPORT_FAULT_BACKWARDS = 1u << 0,
    EP_IOREPORT_FAULT_CHANNELS = 1u << 1,
    EP_IOREPORT_FAULT_UNIT = 1u << 2,
    EP_IOREPORT_FAULT_UNKNOWN = 1u << 3,
    EP_IOREPORT_FAULT_STUCK_ZERO = 1u << 4,
    EP_IOREPORT_FAULT_ALTERNATING = 1u << 5,
};

/* History kept between consecutive deltas (zero-initialise before the first). */
typedef struct {
    double energy_j[EP_NDOMAINS][EP_IOREPORT_HISTORY]; /* [d][0] = most recent */
    int n_history;
} ep_ioreport_state;

/* Domain of one channel name: EP_DOM_* for a mapped channel, or one of these. */
enum {
    EP_IOREPORT_CPU_CLUSTER = 100,  /* cpu, used only without a "CPU Energy" total */
    EP_IOREPORT_IGNORED = -1,       /* known, not part of any domain */
    EP_IOREPORT_UNKNOWN = -2,       /* mentions a domain but matches no rule */
};
int ep_ioreport_classify(const char *name);

/* Energy per unit label in J (1e-3 for "mJ"), or 0 for an unknown label. */
double ep_ioreport_unit_j(const char *unit);

/* One interval from snapshot a (earlier) to b (later), dt_ns apart (> 0).
 * Borrows a and b; state may be NULL (no ALTERNATING check) and is updated.
 * Fills out->kind, flags and power_w (NaN where no channel); the caller sets the
 * times.  *faults gets EP_IOREPORT_FAULT_* bits; msg (may be NULL) gets a
 * description naming the channels at fault ("" when none).
 * Returns EP_OK, or EP_ERR_ARG for dt_ns <= 0. */
int ep_ioreport_delta(ep_ioreport_state *state, const ep_ioreport_channel *a, size_t n_a,
                      const ep_ioreport_channel *b, size_t n_b, int64_t dt_ns, ep_sample *out,
                      uint32_t *faults, char *msg, size_t msglen);

/* Live snapshots (macOS).  Opaque handle owned by the caller: free with
 * ep_ioreport_live_close.  On other systems open returns EP_ERR_UNSUPPORTED. */
typedef struct ep_ioreport_live ep_ioreport_live;
int ep_ioreport_live_open(ep_ioreport_live **out, char *msg, size_t msglen);
/* Fill up to cap channels of the "Energy Model" group; *n = how many. */
int ep_ioreport_live_snapshot(ep_ioreport_live *live, ep_ioreport_channel *out, size_t cap, size_t *n,
                              char *msg, size_t msglen);
void ep_ioreport_live_close(ep_ioreport_live *live);

#endif
