/* fuzz_plist.c: libFuzzer target for the plist framer and parser (make fuzz).
 *
 * The input is treated as a powermetrics stream: it is fed to the framer in
 * chunks whose sizes come from the input's first bytes (so boundaries fall
 * everywhere), each frame is parsed, and the whole input is also parsed as one
 * document, with the strict-reals switch on or off (so the sanitising retry runs
 * too) and the section pruning on or off.  A crash, a sanitizer report or a leak is
 * a finding; any return code is fine.  One property is checked: without a size
 * bound, the frames do not depend on how the stream was chunked.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"
#include "ep_plist.h"

/* Frames of data fed `chunk` bytes at a time, concatenated into *out (malloc'd,
 * caller frees) with their lengths in lens (up to cap); returns the count. */
static size_t run_framer(const uint8_t *data, size_t size, size_t chunk, size_t max_frame, int parse, char **out,
                         size_t *lens, size_t cap)
{
    ep_plist_framer *f = NULL;
    ep_sample s;
    ep_plist_extras x;
    char err[96];
    size_t n = 0, used = 0, off = 0;
    char *buf = malloc(size + 1);
    *out = buf;
    if (!buf || ep_plist_framer_new(max_frame, &f) != EP_OK)
        return 0;
    for (;;) {
        ep_plist_frame fr;
        while (ep_plist_framer_next(f, &fr) == EP_OK) {
            if (fr.len == 0 || fr.data == NULL || used + fr.len > size)
                __builtin_trap(); /* frames are non-empty pieces of the input */
            if (parse)
                ep_plist_parse(fr.data, fr.len, &s, &x, err, sizeof err);
            memcpy(buf + used, fr.data, fr.len);
            used += fr.len;
            if (n < cap)
                lens[n] = fr.len;
            n++;
        }
        if (off >= size)
            break;
        size_t k = size - off < chunk ? size - off : chunk;
        ep_plist_framer_feed(f, (const char *)data + off, k);
        off += k;
        if (off >= size)
            ep_plist_framer_finish(f);
    }
    ep_plist_framer_stats st;
    ep_plist_framer_stats_get(f, &st);
    ep_plist_framer_free(f);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ep_sample s;
    ep_plist_extras x;
    char err[96];
    if (size < 2)
        return 0;
    size_t chunk = (size_t)data[0] + 1;
    /* Small bounds make the oversize paths reachable with small inputs. */
    size_t max_frame = (data[1] & 0x80) ? 64 + (size_t)(data[1] & 0x7c) * 16 : 0;
    ep_plist_test_strict_reals(data[1] & 1);
    ep_plist_set_prune(!(data[1] & 2));
    data += 2;
    size -= 2;
    if (size == 0)
        goto out;

    ep_plist_parse((const char *)data, size, &s, &x, err, sizeof err);

    enum { CAP = 256 };
    size_t lens_a[CAP], lens_b[CAP];
    char *a = NULL, *b = NULL;
    size_t na = run_framer(data, size, chunk, max_frame, 1, &a, lens_a, CAP);
    if (max_frame == 0) {
        size_t nb = run_framer(data, size, size, 0, 0, &b, lens_b, CAP);
        size_t total = 0;
        if (na != nb)
            __builtin_trap();
        for (size_t i = 0; i < na && i < CAP; i++) {
            if (lens_a[i] != lens_b[i])
                __builtin_trap();
            total += lens_a[i];
        }
        if (na <= CAP && memcmp(a, b, total) != 0)
            __builtin_trap();
    }
    free(a);
    free(b);
out:
    ep_plist_test_strict_reals(0);
    ep_plist_set_prune(1);
    return 0;
}
