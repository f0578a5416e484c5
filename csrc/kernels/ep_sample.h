/* ep_sample.h: the one record every power source produces.
 *
 * A sample is either INSTANT (power at t_start_ns == t_end_ns; integrated with the
 * trapezoid rule between samples) or INTERVAL (average power over
 * [t_start_ns, t_end_ns); its energy is power_w * duration, spread uniformly).
 * Counter sources (NVML energy, RAPL, powermetrics *_energy) difference their
 * counters into INTERVAL samples.  Power is always W, times are ep_now_ns() ns.
 * A domain the source does not know is NaN.
 *
 * The numpy dtype of energyprof (energyprof._core.SAMPLE_DTYPE) is built from the
 * offsetof() values of this struct, so it matches byte for byte.
 */
#ifndef EP_SAMPLE_H
#define EP_SAMPLE_H
#include <stdint.h>

enum { EP_DOM_CPU = 0, EP_DOM_GPU, EP_DOM_ANE, EP_DOM_DRAM, EP_DOM_PACKAGE, EP_NDOMAINS };

/* Names of the domains, indexed by EP_DOM_*. */
extern const char *const ep_domain_names[EP_NDOMAINS];

enum { EP_KIND_INSTANT = 0, EP_KIND_INTERVAL = 1 };

/* Sample flags (bit set). */
enum {
    EP_SFLAG_SIMULATED = 1u << 0,  /* synthetic source: ground truth, not a measurement */
    EP_SFLAG_ESTIMATED = 1u << 1,  /* modelled (estimate source), not measured         */
    EP_SFLAG_FINAL     = 1u << 2,  /* flushed at stop; may be shorter than the period  */
    EP_SFLAG_SUSPECT   = 1u << 3,  /* source flagged the value (stuck / inflated counter) */
    EP_SFLAG_WRAPPED   = 1u << 4,  /* a counter wrapped inside this interval           */
    EP_SFLAG_NAN_FIELD = 1u << 5,  /* the raw document had a NaN field                 */
    EP_SFLAG_BOUNDARY  = 1u << 6,  /* ends at a boundary read (a forward's start or end) */
    EP_SFLAG_SYNCED    = 1u << 7,  /* ends on a reading taken as the counter was seen to move */
    /* One device's share of the sample just before it (nvml:devices=0,1): its power in the
     * gpu domain, the device's index in bits EP_SFLAG_DEVICE_SHIFT.. (8 bits).  Never part of
     * the run's energy: energyprof.measure.sampler moves such samples to their own series
     * before anything integrates, so the gpu domain (their sum) is counted once. */
    EP_SFLAG_DEVICE    = 1u << 15,
};
#define EP_SFLAG_DEVICE_SHIFT 16
#define EP_SFLAG_DEVICE_MASK 0xffu

typedef struct {
    int64_t t_start_ns;              /* interval start (== t_end_ns for INSTANT)     */
    int64_t t_end_ns;                /* interval end / instant time                  */
    int32_t kind;                    /* EP_KIND_*                                    */
    uint32_t flags;                  /* EP_SFLAG_*                                   */
    double power_w[EP_NDOMAINS];     /* W per domain, NaN where unknown              */
} ep_sample;

/* Fill s's times, kind and flags and set every domain's power to NaN (unknown), for
 * the source to write the domains it measures.  s is the caller's. */
void ep_sample_init(ep_sample *s, int64_t t_start_ns, int64_t t_end_ns, int32_t kind, uint32_t flags);

#endif
