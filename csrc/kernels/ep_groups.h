/* ep_groups.h: which rows of a table hold the same bytes, in one pass.
 *
 * The views group a run's call rows by component name (a 128-byte U32 field), by layer and
 * by (layer, component) many times over; np.unique sorts every row for that (O(n log n) on
 * long strings).  ep_group_rows hashes each row once into a table that grows with the
 * groups, not the rows, so a run of millions of calls with a few hundred distinct names
 * costs one pass.  energyprof/_reference.py has the numpy twin (group_rows) the tests
 * check it with; energyprof.store.groups turns the first-seen numbering into np.unique's
 * sorted one.
 */
#ifndef EP_GROUPS_H
#define EP_GROUPS_H

#include <stdint.h>

/* Group n rows of `width` bytes each, row i at rows + i * stride (borrowed, read only;
 * width >= 1, stride may be anything that keeps each row inside the caller's buffer).
 * Rows are equal when their bytes are (memcmp).
 * inverse (caller-owned, n values): the group of each row, groups numbered 0, 1, ... in
 *   the order their first row occurs.
 * first (caller-owned, room for n values): first[g] = the first row of group g.
 * *n_groups = the number of groups (0 when n == 0).
 * EP_OK, EP_ERR_ARG (n < 0, width < 1, or a NULL pointer with n > 0) or EP_ERR_NOMEM (the
 * table could not grow; the outputs are then incomplete). */
int ep_group_rows(const unsigned char *rows, int64_t n, int64_t width, int64_t stride, int64_t *inverse,
                  int64_t *first, int64_t *n_groups);

#endif
