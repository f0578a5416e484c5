/* ep_source.c: the registry of source kinds and parameter lookup. */
#include "ep_source.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_errors.h"

/* Constructors of each kind, defined in ep_src_<kind>.c.  A kind whose file has
 * not landed is simply absent from the table. */
typedef struct {
    const char *kind;
    ep_source_ctor ctor;
} registry_entry;

/* One X(name) per ep_src_<name>.c. */
#define EP_SOURCE_KINDS(X) X(synthetic) X(plist) X(powermetrics) X(nvml) X(rapl) X(estimate) X(ioreport)

#define DECLARE(name) int ep_src_##name##_create(ep_source *, const char *const *, const char *const *, size_t);
EP_SOURCE_KINDS(DECLARE)
#define ENTRY(name) {#name, ep_src_##name##_create},
static const registry_entry registry[] = {EP_SOURCE_KINDS(ENTRY){NULL, NULL}};

const char *ep_source_param(const char *const *keys, const char *const *values, size_t n,
                            const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(keys[i], key) == 0)
            return values[i];
    return NULL;
}

const char *ep_source_unknown_key(const char *const *keys, size_t n, const char *const *known)
{
    for (size_t i = 0; i < n; i++) {
        const char *const *k = known;
        while (*k && strcmp(*k, keys[i]) != 0)
            k++;
        if (!*k)
            return keys[i];
    }
    return NULL;
}

int ep_source_parse_double(const char *text, double *out)
{
    char *end = NULL;
    double v = strtod(text, &end);
    /* ERANGE on underflow still gives a usable (tiny or zero) finite value, and
     * overflow gives HUGE_VAL, which isfinite rejects. */
    if (end == text || *end != '\0' || !isfinite(v))
        return EP_ERR_ARG;
    *out = v;
    return EP_OK;
}

void ep_source_free_state(ep_source *src)
{
    free(src->state);
    src->state = NULL;
}

void ep_source_json_escape(char *dst, size_t cap, const char *s)
{
    size_t o = strlen(dst);
    /* 7 bytes of room: the longest escape (a 6-byte u00XX one) plus the terminating NUL. */
    for (; *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", c);
        } else {
            dst[o++] = (char)c;
        }
    }
    dst[o] = '\0';
}

int ep_source_create(const char *kind, const char *const *keys, const char *const *values,
                     size_t n, ep_source **out, char *err, size_t errlen)
{
    ep_source *src = NULL;
    int rc = EP_ERR_ARG;
    const registry_entry *e = registry;
    while (e->kind && strcmp(e->kind, kind) != 0)
        e++;
    if (!e->kind) {
        snprintf(err, errlen, "unknown source kind '%s'", kind);
        goto error;
    }
    src = calloc(1, sizeof *src);
    if (!src) {
        rc = EP_ERR_NOMEM;
        snprintf(err, errlen, "no memory for source");
        goto error;
    }
    rc = e->ctor(src, keys, values, n);
    if (rc != EP_OK) {
        snprintf(err, errlen, "%s", src->message[0] ? src->message : ep_err_str(rc));
        goto error;
    }
    *out = src;
    return EP_OK;
error:
    ep_source_destroy(src);
    return rc;
}

void ep_source_destroy(ep_source *src)
{
    if (!src)
        return;
    if (src->destroy)
        src->destroy(src);
    free(src);
}
