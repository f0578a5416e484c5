/* ep_stats.c: one-pass activation statistics for mode="deep" (see ep_stats.h). */
#include "ep_stats.h"

#include <math.h>

#include "ep_errors.h"

/* Running sums of one tensor: sum, sum of squares, max |x| (NaN sticks), small count. */
typedef struct {
    double s1, s2, amax;
    int64_t n_small;
} acc4;

static inline void acc_add(acc4 *a, double v, double small_below)
{
    double av = fabs(v);
    a->s1 += v;
    a->s2 += v * v;
    if (av > a->amax || av != av)
        a->amax = (a->amax != a->amax) ? a->amax : av;
    a->n_small += av < small_below;
}

static void acc_finish(const acc4 *a, int64_t n, double out[4])
{
    if (n <= 0) {
        out[0] = out[1] = out[2] = out[3] = NAN;
        return;
    }
    double mean = a->s1 / (double)n;
    double var = n > 1 ? (a->s2 - a->s1 * mean) / (double)(n - 1) : 0.0;
    out[0] = mean;
    out[1] = var > 0 ? sqrt(var) : (var != var ? NAN : 0.0);
    out[2] = a->amax;
    out[3] = (double)a->n_small / (double)n;
}

void ep_tensor_stats_f32(const float *x, int64_t n, double small_below, double out[4])
{
    acc4 a = {0.0, 0.0, 0.0, 0};
    for (int64_t i = 0; i < n; i++)
        acc_add(&a, (double)x[i], small_below);
    acc_finish(&a, n, out);
}

void ep_tensor_stats_f64(const double *x, int64_t n, double small_below, double out[4])
{
    acc4 a = {0.0, 0.0, 0.0, 0};
    for (int64_t i = 0; i < n; i++)
        acc_add(&a, x[i], small_below);
    acc_finish(&a, n, out);
}

#define TOKEN_VARIANCE(T, x, n_rows, dim)                                                                   \
    do {                                                                                                    \
        if ((n_rows) <= 0 || (dim) <= 0)                                                                    \
            return NAN;                                                                                     \
        double total = 0.0;                                                                                 \
        for (int64_t r = 0; r < (n_rows); r++) {                                                            \
            const T *row = (x) + r * (dim);                                                                 \
            double s1 = 0.0, s2 = 0.0;                                                                      \
            for (int64_t j = 0; j < (dim); j++) {                                                           \
                double v = (double)row[j];                                                                  \
                s1 += v;                                                                                    \
                s2 += v * v;                                                                                \
            }                                                                                               \
            double m = s1 / (double)(dim), v = s2 / (double)(dim) - m * m;                                 \
            total += v > 0 ? v : (v != v ? v : 0.0); /* clamp at 0 as the torch path, NaN kept */          \
        }                                                                                                   \
        return total / (double)(n_rows);                                                                    \
    } while (0)

double ep_token_variance_f32(const float *x, int64_t n_rows, int64_t dim)
{
    TOKEN_VARIANCE(float, x, n_rows, dim);
}

double ep_token_variance_f64(const double *x, int64_t n_rows, int64_t dim)
{
    TOKEN_VARIANCE(double, x, n_rows, dim);
}

/* -p log p with entr's conventions: 0 at 0, -inf below 0, NaN for NaN. */
static inline double entr(double p)
{
    if (p > 0)
        return -p * log(p);
    if (p == 0)
        return 0.0;
    return p < 0 ? -INFINITY : p;
}

int ep_attention_stats_f32(const float *p, int64_t b, int64_t h, int64_t q, int64_t k, const uint8_t *allowed,
                           int64_t h_mask, double small_below, double *heads_out, double *all_out)
{
    int rc = EP_OK;
    if (b <= 0 || h <= 0 || q <= 0 || k <= 0 || (allowed && h_mask != 1 && h_mask != h)) {
        rc = EP_ERR_ARG;
        goto error;
    }
    acc4 all = {0.0, 0.0, 0.0, 0};
    for (int64_t hd = 0; hd < h; hd++) {
        double ent = 0.0, rmax = 0.0;
        int64_t n_small = 0, n_allowed = 0;
        for (int64_t bi = 0; bi < b; bi++) {
            for (int64_t qi = 0; qi < q; qi++) {
                const float *row = p + ((bi * h + hd) * q + qi) * k;
                const uint8_t *ok =
                    allowed ? allowed + ((bi * h_mask + (h_mask == 1 ? 0 : hd)) * q + qi) * k : NULL;
                double e = 0.0, m = -INFINITY;
                for (int64_t j = 0; j < k; j++) {
                    double v = (double)row[j];
                    e += entr(v);
                    if (v > m || v != v)
                        m = (m != m) ? m : v;
                    int counts = ok ? ok[j] != 0 : 1;
                    n_allowed += counts;
                    n_small += counts && v < small_below;
                    acc_add(&all, v, small_below);
                }
                ent += e;
                rmax += m;
            }
        }
        double n_rows = (double)(b * q);
        heads_out[0 * h + hd] = ent / n_rows;
        heads_out[1 * h + hd] = rmax / n_rows;
        heads_out[2 * h + hd] = (double)n_small / (double)(n_allowed > 0 ? n_allowed : 1);
        heads_out[3 * h + hd] = n_rows;
    }
    acc_finish(&all, b * h * q * k, all_out);
error:
    return rc;
}
