/* test_groups.c: ep_group_rows numbers equal rows by first occurrence, tells rows apart by
 * every byte (also past the last whole 8-byte word), keeps its answers through the table's
 * and the hashes' growth, and refuses bad arguments.  Expected values worked by hand. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_groups.h"

EP_TEST(groups_hand_worked_first_seen)
{
    /* rows of 4 bytes: "mlp", "attn", "mlp", "norm", "attn" */
    const char rows[5][4] = {"mlp", "attn", "mlp", "norm", "attn"};
    int64_t inv[5], first[5], ng = -1;
    EP_CHECK(ep_group_rows((const unsigned char *)rows, 5, 4, 4, inv, first, &ng) == EP_OK);
    EP_CHECK(ng == 3);
    EP_CHECK(inv[0] == 0 && inv[1] == 1 && inv[2] == 0 && inv[3] == 2 && inv[4] == 1);
    EP_CHECK(first[0] == 0 && first[1] == 1 && first[2] == 3);
}

EP_TEST(groups_every_byte_counts)
{
    /* 13-byte rows (one whole word and a 5-byte tail) that differ only in byte 12, then
     * only in byte 0, and a stride of 16 that skips 3 bytes the grouping must not read. */
    unsigned char buf[4 * 16];
    memset(buf, 0xAB, sizeof buf); /* the skipped bytes differ from row to row below */
    for (int r = 0; r < 4; r++)
        memset(buf + r * 16, 7, 13);
    buf[1 * 16 + 12] = 8; /* row 1: last byte differs from row 0 */
    buf[3 * 16 + 0] = 9;  /* row 3: first byte differs */
    buf[2 * 16 + 14] = 0; /* row 2: equal to row 0 in its 13 bytes, not in the padding */
    int64_t inv[4], first[4], ng = 0;
    EP_CHECK(ep_group_rows(buf, 4, 13, 16, inv, first, &ng) == EP_OK);
    EP_CHECK(ng == 3);
    EP_CHECK(inv[0] == 0 && inv[1] == 1 && inv[2] == 0 && inv[3] == 2);
}

EP_TEST(groups_survive_growth)
{
    /* 5000 distinct 8-byte keys, each seen three times in the order k, k, ... then again:
     * past the first table (1024 slots, half full at 512) and the first hashes (512). */
    enum { K = 5000, N = 3 * K };
    int64_t *keys = malloc(N * sizeof *keys), *inv = malloc(N * sizeof *inv), *first = malloc(N * sizeof *first);
    EP_CHECK(keys && inv && first);
    if (!keys || !inv || !first)
        goto done;
    for (int64_t i = 0; i < N; i++)
        keys[i] = (i % K) * 2654435761LL; /* k = i mod K */
    int64_t ng = 0;
    EP_CHECK(ep_group_rows((const unsigned char *)keys, N, 8, 8, inv, first, &ng) == EP_OK);
    EP_CHECK(ng == K);
    int ok = 1;
    for (int64_t i = 0; i < N; i++)
        ok &= inv[i] == i % K;
    for (int64_t g = 0; g < K; g++)
        ok &= first[g] == g;
    EP_CHECK(ok);
done:
    free(keys);
    free(inv);
    free(first);
}

EP_TEST(groups_empty_and_bad_arguments)
{
    int64_t inv[1], first[1], ng = 5;
    EP_CHECK(ep_group_rows(NULL, 0, 4, 4, NULL, NULL, &ng) == EP_OK);
    EP_CHECK(ng == 0);
    const char row[4] = "abc";
    EP_CHECK(ep_group_rows((const unsigned char *)row, 1, 0, 4, inv, first, &ng) == EP_ERR_ARG);
    EP_CHECK(ep_group_rows((const unsigned char *)row, -1, 4, 4, inv, first, &ng) == EP_ERR_ARG);
    EP_CHECK(ep_group_rows(NULL, 1, 4, 4, inv, first, &ng) == EP_ERR_ARG);
    EP_CHECK(ep_group_rows((const unsigned char *)row, 1, 4, 4, inv, first, NULL) == EP_ERR_ARG);
}
