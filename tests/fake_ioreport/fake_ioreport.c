/* fake_ioreport.c: a stand-in for CoreFoundation + libIOReport, so the macOS live
 * reader of csrc/kernels/ep_ioreport.c (compiled on Linux with -DEP_IOREPORT_COMPILE_LIVE)
 * can run in tests.  Built by tests/test_ioreport.py:
 *   gcc -shared -fPIC -o DIR/libfakeioreport.so tests/fake_ioreport/fake_ioreport.c
 * and selected with ENERGYPROF_COREFOUNDATION_LIB and ENERGYPROF_IOREPORT_LIB.
 *
 * Objects are reference-counted structs; fake_live_objects() tells how many are
 * alive so the test can check that the reader releases what it creates.
 * FAKE_IOREPORT_SCRIPT names a file with one snapshot per line:
 *   name|unit|value;name|unit|value;...
 * Each IOReportCreateSamples call returns the next line (the last one repeats); a
 * line "NULL" makes that call fail (return NULL).
 * FAKE_IOREPORT_GROUP, when set, is the only group name that has channels.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T_STR = 1, T_DICT, T_ARRAY, T_CHAN, T_SUB };

typedef struct obj {
    int type, refs;
    char text[96];           /* T_STR */
    struct obj **items;      /* T_ARRAY elements (owned references) */
    long n_items;
    struct obj *array;       /* T_DICT: its "IOReportChannels" array */
    struct obj *name, *unit; /* T_CHAN: owned strings */
    int64_t value;           /* T_CHAN */
} obj;

static long live_objects;
static char lines[64][4096];
static int n_lines, next_line, loaded;

static obj *new_obj(int type)
{
    obj *o = calloc(1, sizeof *o);
    o->type = type;
    o->refs = 1;
    live_objects++;
    return o;
}

static obj *new_str(const char *s)
{
    obj *o = new_obj(T_STR);
    snprintf(o->text, sizeof o->text, "%s", s);
    return o;
}

long fake_live_objects(void)
{
    return live_objects;
}

void CFRelease(const void *p)
{
    obj *o = (obj *)p;
    if (!o || --o->refs > 0)
        return;
    for (long i = 0; i < o->n_items; i++)
        CFRelease(o->items[i]);
    free(o->items);
    if (o->array)
        CFRelease(o->array);
    if (o->name)
        CFRelease(o->name);
    if (o->unit)
        CFRelease(o->unit);
    free(o);
    live_objects--;
}

const void *CFStringCreateWithCString(const void *alloc, const char *s, uint32_t enc)
{
    return new_str(s);
}

unsigned char CFStringGetCString(const void *p, char *buf, long size, uint32_t enc)
{
    const obj *o = p;
    if (!o || o->type != T_STR || (long)strlen(o->text) >= size)
        return 0;
    strcpy(buf, o->text);
    return 1;
}

const void *CFDictionaryGetValue(const void *d, const void *key)
{
    const obj *o = d, *k = key;
    if (o && o->type == T_DICT && k && strcmp(k->text, "IOReportChannels") == 0)
        return o->array;
    return NULL;
}

long CFDictionaryGetCount(const void *d)
{
    const obj *o = d;
    return o && o->array ? o->array->n_items : 0;
}

void *CFDictionaryCreateMutableCopy(const void *alloc, long cap, const void *d)
{
    obj *o = new_obj(T_DICT);
    const obj *src = d;
    if (src->array) {
        o->array = src->array;
        o->array->refs++;
    }
    return o;
}

long CFArrayGetCount(const void *a)
{
    return ((const obj *)a)->n_items;
}

const void *CFArrayGetValueAtIndex(const void *a, long i)
{
    return ((const obj *)a)->items[i];
}

static void load(void)
{
    if (loaded)
        return;
    loaded = 1;
    const char *path = getenv("FAKE_IOREPORT_SCRIPT");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return;
    while (n_lines < 64 && fgets(lines[n_lines], sizeof lines[0], f)) {
        lines[n_lines][strcspn(lines[n_lines], "\n")] = '\0';
        n_lines++;
    }
    fclose(f);
}

/* A dict whose array holds the channels of one script line. */
static obj *snapshot_dict(const char *line)
{
    obj *d = new_obj(T_DICT);
    obj *a = new_obj(T_ARRAY);
    d->array = a;
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", line);
    for (char *save = NULL, *tok = strtok_r(buf, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        char name[96] = "", unit[16] = "";
        long long v = 0;
        char *p1 = strchr(tok, '|'), *p2 = p1 ? strchr(p1 + 1, '|') : NULL;
        if (!p1 || !p2)
            continue;
        snprintf(name, sizeof name, "%.*s", (int)(p1 - tok), tok);
        snprintf(unit, sizeof unit, "%.*s", (int)(p2 - p1 - 1), p1 + 1);
        v = atoll(p2 + 1);
        obj *c = new_obj(T_CHAN);
        c->name = new_str(name);
        c->unit = new_str(unit);
        c->value = v;
        a->items = realloc(a->items, (size_t)(a->n_items + 1) * sizeof *a->items);
        a->items[a->n_items++] = c;
    }
    return d;
}

const void *IOReportCopyChannelsInGroup(const void *group, const void *subgroup, uint64_t a, uint64_t b,
                                        uint64_t c)
{
    const char *want = getenv("FAKE_IOREPORT_GROUP");
    load();
    if (want && strcmp(((const obj *)group)->text, want) != 0)
        return NULL;
    return snapshot_dict(n_lines ? lines[0] : "");
}

void *IOReportCreateSubscription(const void *a, void *desired, void **subbed, uint64_t id, const void *b)
{
    if (subbed)
        *subbed = NULL;
    return new_obj(T_SUB);
}

const void *IOReportCreateSamples(void *sub, void *channels, const void *a)
{
    load();
    if (n_lines == 0)
        return NULL;
    int i = next_line < n_lines ? next_line : n_lines - 1;
    next_line++;
    if (strcmp(lines[i], "NULL") == 0)
        return NULL; /* a failing sample call */
    return snapshot_dict(lines[i]);
}

const void *IOReportChannelGetChannelName(const void *ch)
{
    return ((const obj *)ch)->name;
}

const void *IOReportChannelGetUnitLabel(const void *ch)
{
    return ((const obj *)ch)->unit;
}

int64_t IOReportSimpleGetIntegerValue(const void *ch, int32_t idx)
{
    return ((const obj *)ch)->value;
}
