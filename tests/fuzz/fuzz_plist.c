/* fuzz_plist.c: libFuzzer target for the plist framer and parser (make fuzz).
 *
 * The input is treated as a powermetrics stream: it is fed to the framer in
 * chunks whose sizes come from the input's first bytes (so boundaries fall
 * everywhere), each frame is parsed, and the whole input is also parsed as one
 * document, with the strict-reals switch on or off (so the sanitising retry runs
 * too) and the section pruning on or off.  A crash, a sanitizer report or a leak is a finding; any return code is fine.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ep_errors.h"
#include "ep_plist.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ep_plist_framer *f = NULL;
    ep_sample s;
    ep_plist_extras x;
    char err[96];
    if (size < 2)
        return 0;
    size_t chunk = (size_t)data[0] + 1;
    /* Small bounds make the oversize paths reachable with small inputs. */
    size_t max_frame = (data[1] & 0x80) ? 64 + (size_t)(data[1] & 0x7f) * 16 : 0;
    ep_plist_test_strict_reals(data[1] & 1);
    ep_plist_set_prune(!(data[1] & 2));
    data += 2;
    size -= 2;

    ep_plist_parse((const char *)data, size, &s, &x, err, sizeof err);

    if (ep_plist_framer_new(max_frame, &f) != EP_OK)
        return 0;
    size_t off = 0;
    for (;;) {
        ep_plist_frame fr;
        while (ep_plist_framer_next(f, &fr) == EP_OK) {
            if (fr.len == 0 || fr.data == NULL)
                __builtin_trap(); /* the framer never yields an empty frame */
            ep_plist_parse(fr.data, fr.len, &s, &x, err, sizeof err);
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
    ep_plist_test_strict_reals(0);
    ep_plist_set_prune(1);
    return 0;
}
