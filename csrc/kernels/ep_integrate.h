/* ep_integrate.h: exact energy of time windows from power samples.
 *
 * The integrator turns a stream of ep_sample records into the energy of M windows
 * [start_ns, end_ns), per domain.  It builds the cumulative energy F(t) once and
 * answers each window as F(end) - F(start), so conservation holds by construction:
 * [a,b) + [b,c) == [a,c) up to one floating-point rounding of F.
 *
 * Samples (n, sorted by t_start_ns, all of ONE kind, else EP_ERR_ARG):
 *   INTERVAL  average power over [t_start_ns, t_end_ns); the energy is spread
 *             uniformly, so F is piecewise linear and exact.  t_end < t_start is
 *             EP_ERR_ARG; a sample starting before the previous one ends
 *             (unsorted or overlapping) is EP_ERR_UNSORTED.  Gaps between samples
 *             contribute 0 and flag the windows they touch EP_WIN_GAP.
 *   INSTANT   power at t_start_ns (== t_end_ns, else EP_ERR_ARG), non-decreasing
 *             (else EP_ERR_UNSORTED).  Power is linearly interpolated between
 *             consecutive points (trapezoid rule), so F is piecewise quadratic and a
 *             window inside one segment gets the interpolated power's exact integral.
 *
 * Windows: end_ns >= start_ns (else EP_ERR_ARG), any order.  A window that is not
 * wholly inside the covered range [first knot, last knot] (INTERVAL: first
 * t_start_ns .. last t_end_ns; INSTANT: first .. last point) gets NaN in every
 * domain, flags == EP_WIN_OUTSIDE and samples_in_window == 0: no extrapolation.
 *
 * "Touches": sample (or gap, or INSTANT segment) [s, e) touches window [a, b) when
 * s < b and e > a.
 *
 * NaN power: a domain that is NaN in EVERY sample is "not measured" and is NaN in
 * every window.  Otherwise a NaN contributes 0 for its domain (INTERVAL: that
 * sample; INSTANT: both segments next to that point) and flags every window that
 * touches such a sample/segment EP_WIN_NAN.  Unmeasured domains never set EP_WIN_NAN.
 *
 * samples_in_window: INTERVAL: samples with start <= t_start_ns and t_end_ns <= end;
 * INSTANT: whole segments [t_i, t_i+1] inside [start, end].  When it is 0 (a window
 * shorter than the sample period) the window is flagged EP_WIN_UNRESOLVED: its
 * energy is the interpolated / averaged power times its duration, which is exactly
 * what F gives.  Saturates at INT32_MAX.
 *
 * Precision: energy accumulates in double W*ns and is divided by 1e9 per window;
 * times stay int64 ns and only differences (never absolute times) become doubles,
 * so 1e18-ns timestamps lose nothing.  The covered span must fit in int64.
 *
 * Cost: ONE pass over the samples.  It validates each sample, adds its energy to the
 * running sum F and, merged into the same walk, answers the window endpoints in time
 * order (an endpoint when the walk reaches the first knot after it), so every sample
 * is read once and nothing per sample is kept.  Windows whose starts and ends are both
 * non-decreasing (adjacent or non-overlapping ones) are streamed in place: O(N + M),
 * scratch for the open windows only.  Any other order (and starts in order whose ends
 * are out of order only among equal starts) is first sorted by (start, end) with an
 * MSD radix sort of 24-byte window copies (the first level straight from the caller's
 * rows, each bucket then in cache).  If the ends then come in order, the results are
 * staged as one 64-byte line per window in sorted order and moved to the windows' rows
 * after the walk, each window reading its line (about 90 bytes of scratch per window);
 * else the ends are sorted too (8-byte keys: time offset and window index; copies when
 * those do not fit 64 bits) and each start leaves its F in the window's row.  NaN/gap
 * ranks take n/7 bytes, only when there are any.  Should a domain first turn non-NaN
 * after some window has ended, the walk is done a second time with the measured domains
 * known.  Results never depend on the order of the windows.
 */
#ifndef EP_INTEGRATE_H
#define EP_INTEGRATE_H
#include <stddef.h>
#include <stdint.h>

#include "ep_sample.h"

/* Window flags (bit set), one word per window. */
enum {
    EP_WIN_OUTSIDE = 1u << 0,    /* not wholly inside the sampled range: energy NaN      */
    EP_WIN_GAP = 1u << 1,        /* touches a gap between INTERVAL samples (counted as 0) */
    EP_WIN_NAN = 1u << 2,        /* touches a NaN value of a measured domain (counted 0) */
    EP_WIN_UNRESOLVED = 1u << 3, /* no whole sample inside: interpolated power x duration */
};

/* Energy of n_windows windows.
 * samples: n_samples records (borrowed, read only; may be NULL when n_samples == 0).
 * windows_ns: n_windows x 2 int64 {start_ns, end_ns} row-major (borrowed).
 * Outputs are caller-owned buffers, complete on EP_OK (on a window error nothing is
 * written; on any other error they may be partly written and must not be used):
 *   energy_j: n_windows x EP_NDOMAINS row-major, contiguous (windows out of order are
 *   sorted in it before the results go there); flags: n_windows;
 *   samples_in_window: n_windows.
 * detail: optional caller buffer (may be NULL) for a message naming the bad input.
 * Returns EP_OK, EP_ERR_ARG, EP_ERR_UNSORTED or EP_ERR_NOMEM.
 * Never touches Python: callable with the GIL released. */
int ep_integrate(const ep_sample *samples, int64_t n_samples, const int64_t *windows_ns,
                 int64_t n_windows, double *energy_j, uint32_t *flags, int32_t *samples_in_window,
                 char *detail, size_t detail_len);

/* The least work an energy total over the samples takes, for benchmarks/integrate.py to
 * measure the integrator against: one pass reading every sample once, summing
 * power * duration per domain (NaN as 0, no validation) into energy_wns[EP_NDOMAINS]
 * (W*ns, caller-owned).  samples: n_samples records (borrowed). */
void ep_integrate_one_pass(const ep_sample *samples, int64_t n_samples, double *energy_wns);

#endif
