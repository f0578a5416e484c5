/* ep_groups.c: group equal rows by hashing their bytes (see ep_groups.h).
 *
 * Open addressing with linear probing over a power-of-two table of group numbers + 1
 * (0: empty), kept at most half full; each group's hash is kept beside it so that a
 * growth rehashes from the hashes, never from the rows, and a probe compares bytes only
 * when the hashes agree.  Memory: the table and the hashes, both growing with the groups;
 * everything the function allocates it frees before it returns. */
#include "ep_groups.h"

#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"

#define MIX 0x9E3779B97F4A7C15ULL

/* A 64-bit hash of len bytes: 8 at a time (memcpy: no alignment needed), a final mix. */
static uint64_t hash_bytes(const unsigned char *p, int64_t len)
{
    uint64_t h = (uint64_t)len * MIX;
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * MIX;
        h ^= h >> 29;
    }
    if (i < len) {
        uint64_t w = 0;
        memcpy(&w, p + i, (size_t)(len - i));
        h = (h ^ w) * MIX;
    }
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    h ^= h >> 32;
    return h;
}

/* Put group g (hash h) into table (mask + 1 slots, none holding g yet). */
static void table_put(int64_t *table, uint64_t mask, uint64_t h, int64_t g)
{
    uint64_t s = h & mask;
    while (table[s])
        s = (s + 1) & mask;
    table[s] = g + 1;
}

int ep_group_rows(const unsigned char *rows, int64_t n, int64_t width, int64_t stride, int64_t *inverse,
                  int64_t *first, int64_t *n_groups)
{
    int rc = EP_OK;
    int64_t *table = NULL;   /* owned: mask + 1 slots */
    uint64_t *hashes = NULL; /* owned: the hash of each group, hashes_cap of them */
    int64_t ng = 0, hashes_cap = 0;
    uint64_t mask = 1023;
    if (!n_groups || n < 0 || width < 1 || (n > 0 && (!rows || !inverse || !first)))
        return EP_ERR_ARG;
    *n_groups = 0;
    if (n == 0)
        return EP_OK;
    table = calloc(mask + 1, sizeof *table);
    hashes_cap = 512;
    hashes = malloc((size_t)hashes_cap * sizeof *hashes);
    if (!table || !hashes) {
        rc = EP_ERR_NOMEM;
        goto error;
    }
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *row = rows + i * stride;
        uint64_t h = hash_bytes(row, width);
        uint64_t s = h & mask;
        int64_t g = -1;
        while (table[s]) {
            int64_t c = table[s] - 1;
            if (hashes[c] == h && memcmp(rows + first[c] * stride, row, (size_t)width) == 0) {
                g = c;
                break;
            }
            s = (s + 1) & mask;
        }
        if (g < 0) { /* a new group at the empty slot s */
            g = ng++;
            if (g == hashes_cap) {
                uint64_t *grown = realloc(hashes, (size_t)(2 * hashes_cap) * sizeof *hashes);
                if (!grown) {
                    rc = EP_ERR_NOMEM;
                    goto error;
                }
                hashes = grown;
                hashes_cap *= 2;
            }
            hashes[g] = h;
            first[g] = i;
            table[s] = g + 1;
            if ((uint64_t)ng * 2 > mask + 1) { /* keep the table at most half full */
                uint64_t grown_mask = 2 * mask + 1;
                int64_t *grown = calloc(grown_mask + 1, sizeof *grown);
                if (!grown) {
                    rc = EP_ERR_NOMEM;
                    goto error;
                }
                for (int64_t k = 0; k < ng; k++)
                    table_put(grown, grown_mask, hashes[k], k);
                free(table);
                table = grown;
                mask = grown_mask;
            }
        }
        inverse[i] = g;
    }
error:
    *n_groups = ng;
    free(table);
    free(hashes);
    return rc;
}
