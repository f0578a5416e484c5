/* test_sqlite.c: the store writer without Python: inserts of every column type,
 * UCS4 -> UTF-8, statement order, queue bound, and the error paths (missing table,
 * full database, read-only, not a database). */
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "ep_ctest.h"
#include "ep_errors.h"
#include "ep_sqlite.h"

typedef struct {
    int64_t t_ns;
    int32_t layer;
    uint32_t flags;
    double energy_j;
    uint8_t resolved;
    uint32_t name[4]; /* like numpy 'U4' */
} row_t;

static void tmp_db(char *buf, size_t n)
{
    char dir[] = "/tmp/ep_ctest_sqlite_XXXXXX";
    char *d = mkdtemp(dir);
    snprintf(buf, n, "%s/t.db", d ? d : "/tmp");
}

static void set_col(ep_store_col *c, const char *name, int type, size_t offset, size_t size)
{
    snprintf(c->name, sizeof c->name, "%s", name);
    c->type = type, c->offset = offset, c->size = size;
}

static void cols_of_row(ep_store_col *c)
{
    memset(c, 0, sizeof(ep_store_col) * 6);
    set_col(&c[0], "t_ns", EP_COL_I64, offsetof(row_t, t_ns), 8);
    set_col(&c[1], "layer", EP_COL_I32, offsetof(row_t, layer), 4);
    set_col(&c[2], "flags", EP_COL_U32, offsetof(row_t, flags), 4);
    set_col(&c[3], "energy_j", EP_COL_F64, offsetof(row_t, energy_j), 8);
    set_col(&c[4], "resolved", EP_COL_BOOL, offsetof(row_t, resolved), 1);
    set_col(&c[5], "name", EP_COL_UCS4, offsetof(row_t, name), 16);
}

/* The first column of the first row of sql, read through a fresh connection to the
 * file at path; INT64_MIN when there is no row (the checks compare with real counts). */
static int64_t query_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = INT64_MIN;
    sqlite3_open(path, &db);
    sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (st && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int exec_sql(ep_store *s, const char *sql)
{
    ep_store_job *job = NULL;
    int rc = ep_store_job_exec(sql, NULL, 0, &job);
    if (rc == EP_OK)
        rc = ep_store_submit(s, job);
    return rc;
}

static int insert_rows(ep_store *s, const char *table, const row_t *rows, size_t n, int64_t run_id)
{
    ep_store_col cols[6];
    ep_store_value run;
    ep_store_job *job = NULL;
    cols_of_row(cols);
    memset(&run, 0, sizeof run);
    snprintf(run.name, sizeof run.name, "run_id");
    run.type = EP_VAL_INT;
    run.i = run_id;
    int rc = ep_store_job_insert(table, cols, 6, &run, 1, rows, n, sizeof(row_t), &job, NULL, 0);
    if (rc == EP_OK)
        rc = ep_store_submit(s, job);
    return rc;
}

EP_TEST(sqlite_ucs4_to_utf8)
{
    /* "aé✓🚀" + padding, and a lone surrogate and an out-of-range value */
    uint32_t in[8] = {'a', 0xE9, 0x2713, 0x1F680, 0xD800, 0x110000, 0, 0};
    char out[64];
    size_t n = ep_store_ucs4_to_utf8((const unsigned char *)in, 8, out);
    const char want[] = "a\xC3\xA9\xE2\x9C\x93\xF0\x9F\x9A\x80\xEF\xBF\xBD\xEF\xBF\xBD";
    EP_CHECK(n == sizeof want - 1);
    EP_CHECK(memcmp(out, want, sizeof want - 1) == 0);
    uint32_t empty[3] = {0, 0, 0};
    EP_CHECK(ep_store_ucs4_to_utf8((const unsigned char *)empty, 3, out) == 0);
}

EP_TEST(sqlite_insert_every_type_and_read_back)
{
    char path[256], msg[EP_STORE_MSG_MAX];
    ep_store *s = NULL;
    tmp_db(path, sizeof path);
    EP_CHECK(ep_store_open(path, NULL, &s, msg, sizeof msg) == EP_OK);
    if (!s)
        return;
    EP_CHECK(exec_sql(s, "CREATE TABLE m (run_id INTEGER, t_ns INTEGER, layer INTEGER, flags INTEGER, "
                         "energy_j REAL, resolved INTEGER, name TEXT)") == EP_OK);
    row_t rows[3];
    memset(rows, 0, sizeof rows);
    rows[0] = (row_t){INT64_MAX, -1, 0xFFFFFFFFu, 1.5, 1, {'q', 0, 0, 0}};
    rows[1] = (row_t){INT64_MIN, 7, 0x80000005u, NAN, 0, {0xE9, 0x1F680, 'x', 'y'}};
    rows[2] = (row_t){0, 0, 0, -2.25e-300, 1, {0, 0, 0, 0}};
    EP_CHECK(insert_rows(s, "m", rows, 3, 42) == EP_OK);
    EP_CHECK(ep_store_flush(s, msg, sizeof msg) == EP_OK);
    EP_CHECK(ep_store_rows_committed(s) == 3);
    EP_CHECK(ep_store_close(s, msg, sizeof msg) == EP_OK);

    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    EP_CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    EP_CHECK(sqlite3_prepare_v2(db, "SELECT run_id, t_ns, layer, flags, energy_j, typeof(energy_j), resolved, name "
                                    "FROM m ORDER BY rowid", -1, &st, NULL) == SQLITE_OK);
    int i = 0;
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        EP_CHECK(sqlite3_column_int64(st, 0) == 42);
        EP_CHECK(sqlite3_column_int64(st, 1) == rows[i].t_ns);
        EP_CHECK(sqlite3_column_int64(st, 2) == rows[i].layer);
        EP_CHECK(sqlite3_column_int64(st, 3) == (int64_t)rows[i].flags);
        if (i == 1)
            EP_CHECK(strcmp((const char *)sqlite3_column_text(st, 5), "null") == 0); /* NaN -> NULL */
        else
            EP_CHECK(sqlite3_column_double(st, 4) == rows[i].energy_j);
        EP_CHECK(sqlite3_column_int64(st, 6) == rows[i].resolved);
        const char *want = i == 0 ? "q" : i == 1 ? "\xC3\xA9\xF0\x9F\x9A\x80xy" : "";
        EP_CHECK(strcmp((const char *)sqlite3_column_text(st, 7), want) == 0);
        i++;
    }
    EP_CHECK(i == 3);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

EP_TEST(sqlite_order_and_bounded_queue)
{
    char path[256], msg[EP_STORE_MSG_MAX];
    ep_store *s = NULL;
    ep_store_opts o;
    ep_store_opts_default(&o);
    o.queue_jobs = 1; /* every submit waits for the previous job: the bound holds */
    o.queue_bytes = 1;
    tmp_db(path, sizeof path);
    EP_CHECK(ep_store_open(path, &o, &s, msg, sizeof msg) == EP_OK);
    if (!s)
        return;
    exec_sql(s, "CREATE TABLE m (run_id INTEGER, t_ns INTEGER, layer INTEGER, flags INTEGER, energy_j REAL, "
                "resolved INTEGER, name TEXT)");
    exec_sql(s, "CREATE TABLE total (n INTEGER)");
    row_t rows[50];
    memset(rows, 0, sizeof rows);
    for (int k = 0; k < 50; k++)
        rows[k].t_ns = k;
    for (int j = 0; j < 40; j++)
        EP_CHECK(insert_rows(s, "m", rows, 50, j) == EP_OK);
    exec_sql(s, "INSERT INTO total SELECT COUNT(*) FROM m");
    EP_CHECK(ep_store_flush(s, msg, sizeof msg) == EP_OK);
    EP_CHECK(ep_store_jobs_pending(s) == 0);
    EP_CHECK(ep_store_rows_committed(s) == 2000);
    /* a parameterised statement: the params are copied into the job */
    ep_store_value p[1];
    memset(p, 0, sizeof p);
    char text[] = "7";
    p[0].type = EP_VAL_TEXT, p[0].data = text, p[0].len = 1;
    ep_store_job *job = NULL;
    EP_CHECK(ep_store_job_exec("UPDATE total SET n = n + CAST(? AS INTEGER)", p, 1, &job) == EP_OK);
    text[0] = '9'; /* changing the caller's buffer after building the job changes nothing */
    EP_CHECK(ep_store_submit(s, job) == EP_OK);
    EP_CHECK(ep_store_close(s, msg, sizeof msg) == EP_OK);
    EP_CHECK(query_int(path, "SELECT n FROM total") == 2007);
}

EP_TEST(sqlite_errors_are_kept_until_flush)
{
    char path[256], msg[EP_STORE_MSG_MAX + 64];
    ep_store *s = NULL;
    tmp_db(path, sizeof path);
    EP_CHECK(ep_store_open(path, NULL, &s, msg, sizeof msg) == EP_OK);
    if (!s)
        return;
    row_t rows[2];
    memset(rows, 0, sizeof rows);
    EP_CHECK(insert_rows(s, "nosuch", rows, 2, 1) == EP_OK); /* queued fine: the error comes later */
    EP_CHECK(ep_store_flush(s, msg, sizeof msg) == EP_ERR_SQLITE);
    EP_CHECK(strstr(msg, "no such table: nosuch") != NULL);
    EP_CHECK(strstr(msg, "inserting 2 rows into nosuch") != NULL);
    EP_CHECK(ep_store_flush(s, msg, sizeof msg) == EP_OK); /* reported once */

    /* full: cap the file at its current size plus one page, then write a lot */
    exec_sql(s, "CREATE TABLE m (run_id INTEGER, t_ns INTEGER, layer INTEGER, flags INTEGER, energy_j REAL, "
                "resolved INTEGER, name TEXT)");
    EP_CHECK(insert_rows(s, "m", rows, 2, 1) == EP_OK);
    EP_CHECK(ep_store_flush(s, msg, sizeof msg) == EP_OK);
    exec_sql(s, "PRAGMA max_page_count = 4");
    static row_t many[20000];
    EP_CHECK(insert_rows(s, "m", many, 20000, 1) == EP_OK);
    EP_CHECK(ep_store_flush(s, msg, sizeof msg) == EP_ERR_IO);
    EP_CHECK(strstr(msg, "database or disk is full") != NULL);
    EP_CHECK(ep_store_close(s, msg, sizeof msg) == EP_OK);

    /* the full batch was rolled back whole */
    EP_CHECK(query_int(path, "SELECT COUNT(*) FROM m") == 2);

    /* read-only connection: writes fail with EP_ERR_PERM */
    ep_store_opts o;
    ep_store_opts_default(&o);
    o.readonly = 1;
    EP_CHECK(ep_store_open(path, &o, &s, msg, sizeof msg) == EP_OK);
    if (s) {
        EP_CHECK(insert_rows(s, "m", rows, 2, 1) == EP_OK);
        EP_CHECK(ep_store_close(s, msg, sizeof msg) == EP_ERR_PERM);
        EP_CHECK(strstr(msg, "read-only") != NULL);
    }
}

EP_TEST(sqlite_open_refuses_bad_input)
{
    char path[256], msg[EP_STORE_MSG_MAX];
    ep_store *s = NULL;
    tmp_db(path, sizeof path);
    FILE *f = fopen(path, "wb");
    for (int i = 0; f && i < 200; i++)
        fputs("not a database, just text\n", f);
    if (f)
        fclose(f);
    EP_CHECK(ep_store_open(path, NULL, &s, msg, sizeof msg) == EP_ERR_PARSE);
    EP_CHECK(s == NULL);
    EP_CHECK(strstr(msg, "not an SQLite database") != NULL);
    EP_CHECK(ep_store_open("", NULL, &s, msg, sizeof msg) == EP_ERR_ARG);
    EP_CHECK(ep_store_open("/nonexistent-dir/x/y.db", NULL, &s, msg, sizeof msg) == EP_ERR_IO);

    ep_store_col c[1];
    ep_store_job *job = NULL;
    memset(c, 0, sizeof c);
    snprintf(c[0].name, sizeof c[0].name, "x");
    c[0].type = EP_COL_I64, c[0].offset = 4, c[0].size = 8; /* does not fit an 8-byte row */
    int64_t v = 1;
    EP_CHECK(ep_store_job_insert("t", c, 1, NULL, 0, &v, 1, 8, &job, msg, sizeof msg) == EP_ERR_ARG);
    EP_CHECK(job == NULL);
    c[0].offset = 0;
    EP_CHECK(ep_store_job_insert("t\"; DROP", c, 1, NULL, 0, &v, 1, 8, &job, msg, sizeof msg) == EP_ERR_ARG);
    EP_CHECK(ep_store_job_insert("t", c, 1, NULL, 0, &v, 1, 8, &job, msg, sizeof msg) == EP_OK);
    ep_store_job_free(job);
}
