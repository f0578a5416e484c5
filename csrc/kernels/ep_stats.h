/* ep_stats.h: the activation statistics of mode="deep", each in one pass over a tensor.
 *
 * energyprof.measure.deep hands CPU float32/float64 tensors (as numpy views) to these
 * instead of launching a torch kernel per statistic; energyprof/_reference.py has the
 * numpy twins (tensor_stats, token_variance, attention_stats) the tests check them with.
 * Sums are accumulated in double.  NaN propagates into the mean, std and max (as torch's
 * sum and max do) and never counts as small.
 */
#ifndef EP_STATS_H
#define EP_STATS_H

#include <stdint.h>

/* out[4] (caller-owned) = mean, unbiased std (0 when n <= 1), max |x|, share of |x| < small_below
 * (NaN for all four when n == 0).  x: n values (borrowed, read only). */
void ep_tensor_stats_f32(const float *x, int64_t n, double small_below, double out[4]);
void ep_tensor_stats_f64(const double *x, int64_t n, double small_below, double out[4]);

/* Mean over n_rows rows of the population variance of each row of dim values (NaN when
 * n_rows == 0 or dim == 0).  x: n_rows x dim row-major (borrowed). */
double ep_token_variance_f32(const float *x, int64_t n_rows, int64_t dim);
double ep_token_variance_f64(const double *x, int64_t n_rows, int64_t dim);

/* Per-head statistics of attention probabilities p (b x h x q x k row-major, borrowed).
 * allowed: NULL (every weight counts) or b x h_mask x q x k bytes, nonzero where the
 * mask lets the key through, h_mask 1 (shared by the heads) or h (borrowed).
 * heads_out (caller-owned, 4 x h row-major): per head the mean over (b, q) of the row
 * entropy sum(-p log p) (0 at p = 0), the mean of the row maximum, the share of the
 * allowed weights below small_below (of at least one), and b * q.
 * all_out (caller-owned, 4): ep_tensor_stats of all of p with the same small_below.
 * EP_OK, or EP_ERR_ARG for a zero size or h_mask not 1 or h. */
int ep_attention_stats_f32(const float *p, int64_t b, int64_t h, int64_t q, int64_t k, const uint8_t *allowed,
                           int64_t h_mask, double small_below, double *heads_out, double *all_out);

#endif
