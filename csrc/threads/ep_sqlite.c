/* ep_sqlite.c: the run store's writer thread (see ep_sqlite.h). */
#include "ep_sqlite.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ep_errors.h"
#include "ep_thread_name.h"

enum { JOB_INSERT = 0, JOB_EXEC = 1, JOB_CLOSE = 2 };

/* Statements are cached by their SQL text: an INSERT's text is a function of
 * (table, columns, constant columns), so the key is exactly what the brief asks. */
#define STMT_CACHE_MAX 64

struct ep_store_job {
    int kind;
    ep_store_job *next;
    char table[EP_STORE_NAME_MAX];
    char *sql; /* owned */
    /* INSERT */
    ep_store_col *cols; /* owned */
    int ncols;
    unsigned char *rows; /* owned copy of the rows */
    size_t nrows, itemsize;
    /* INSERT constants or EXEC parameters; text/blob copied into one block */
    ep_store_value *vals; /* owned */
    int nvals;
    char *valdata; /* owned: the bytes vals[i].data point into */
    size_t bytes;  /* row bytes, counted against the queue's byte bound */
};

typedef struct {
    char *sql; /* owned */
    sqlite3_stmt *stmt;
    uint64_t last_used;
} stmt_slot;

struct ep_store {
    sqlite3 *db;
    char path[1024];
    int busy_timeout_ms;
    int readonly;
    pid_t owner_pid; /* after fork() the child has the memory but not the thread */
    pthread_t thread;
    int thread_started;

    /* Queue: a FIFO under mu.  Lock order: only mu; the writer never holds mu
     * while it calls sqlite, so producers never wait on disk I/O except through
     * the bound. */
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full, done;
    ep_store_job *head, *tail;
    int n_jobs, cap_jobs;
    size_t queued_bytes, cap_bytes;
    int closing;
    uint64_t submitted, completed;
    int64_t rows_committed;

    /* First error since the last flush (under mu). */
    int err_code;
    int err_sqlite;
    int n_failed;
    char err_msg[EP_STORE_MSG_MAX];

    /* Writer-thread-only state. */
    stmt_slot cache[STMT_CACHE_MAX];
    uint64_t use_clock;
    sqlite3_stmt *begin_stmt, *commit_stmt, *rollback_stmt;
    const ep_store_job *cur_job; /* the INSERT job being run (writer thread only) */
    int wal_frames;              /* frames in the WAL after the last commit (writer thread only) */
    /* Allocated at open so that close never needs memory (and never hangs). */
    ep_store_job *close_job;
};

void ep_store_opts_default(ep_store_opts *opts)
{
    opts->busy_timeout_ms = 5000;
    opts->queue_jobs = 64;
    opts->queue_bytes = (size_t)256 << 20;
    opts->readonly = 0;
}

int ep_store_map_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW: return EP_OK;
    case SQLITE_NOMEM: return EP_ERR_NOMEM;
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN: return EP_ERR_IO;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH: return EP_ERR_PERM;
    case SQLITE_NOTADB: return EP_ERR_PARSE;
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG: return EP_ERR_ARG;
    default: return EP_ERR_SQLITE;
    }
}

/* Why: the writer thread's errors surface long after the call that caused them,
 * so the message names the database and the job, and says plainly what the
 * sqlite code means for the user (full disk, read-only, lock held elsewhere). */
static void set_error(ep_store *s, int rc, const char *what)
{
    char buf[EP_STORE_MSG_MAX];
    const char *plain;
    switch (rc & 0xff) {
    case SQLITE_FULL: plain = "database or disk is full"; break;
    case SQLITE_READONLY: plain = "the database is read-only (attempt to write a readonly database)"; break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: plain = "database is locked by another process"; break;
    case SQLITE_NOTADB: plain = "file is not an SQLite database"; break;
    default: plain = NULL; break;
    }
    const char *detail = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    if (plain && ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED))
        snprintf(buf, sizeof buf, "%s (gave up after %d ms) while %.160s in %.300s", plain, s->busy_timeout_ms,
                 what, s->path);
    else if (plain)
        snprintf(buf, sizeof buf, "%s while %.160s in %.300s (sqlite: %.200s)", plain, what, s->path, detail);
    else
        snprintf(buf, sizeof buf, "%.200s while %.160s in %.300s (sqlite code %d)", detail, what, s->path, rc);
    pthread_mutex_lock(&s->mu);
    s->n_failed++;
    if (s->err_code == EP_OK) {
        s->err_code = ep_store_map_sqlite(rc);
        if (s->err_code == EP_OK)
            s->err_code = EP_ERR_SQLITE;
        s->err_sqlite = rc;
        memcpy(s->err_msg, buf, sizeof buf);
    }
    pthread_mutex_unlock(&s->mu);
}

size_t ep_store_ucs4_to_utf8(const unsigned char *src, size_t nchars, char *dst)
{
    uint32_t cp;
    size_t n = nchars;
    /* numpy pads 'U<n>' fields with NUL code units; they are not part of the string. */
    while (n > 0) {
        memcpy(&cp, src + 4 * (n - 1), 4);
        if (cp != 0)
            break;
        n--;
    }
    unsigned char *p = (unsigned char *)dst;
    for (size_t i = 0; i < n; i++) {
        memcpy(&cp, src + 4 * i, 4);
        if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            cp = 0xFFFD; /* not a scalar value: UTF-8 cannot carry it */
        if (cp < 0x80) {
            *p++ = (unsigned char)cp;
        } else if (cp < 0x800) {
            *p++ = (unsigned char)(0xC0 | (cp >> 6));
            *p++ = (unsigned char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *p++ = (unsigned char)(0xE0 | (cp >> 12));
            *p++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            *p++ = (unsigned char)(0x80 | (cp & 0x3F));
        } else {
            *p++ = (unsigned char)(0xF0 | (cp >> 18));
            *p++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
            *p++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            *p++ = (unsigned char)(0x80 | (cp & 0x3F));
        }
    }
    return (size_t)(p - (unsigned char *)dst);
}

static int valid_ident(const char *name)
{
    if (!name || !name[0] || strlen(name) >= EP_STORE_NAME_MAX)
        return 0;
    for (const char *c = name; *c; c++) {
        int ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
                 (c != name && *c >= '0' && *c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* Copy nvals values and their text/blob bytes into job-owned memory. */
static int copy_values(ep_store_job *job, const ep_store_value *vals, int nvals)
{
    int rc = EP_ERR_NOMEM;
    size_t total = 0;
    if (nvals <= 0)
        return EP_OK;
    for (int i = 0; i < nvals; i++)
        if (vals[i].type == EP_VAL_TEXT || vals[i].type == EP_VAL_BLOB)
            total += vals[i].len + 1;
    job->vals = malloc(sizeof(ep_store_value) * (size_t)nvals);
    job->valdata = malloc(total ? total : 1);
    if (!job->vals || !job->valdata)
        goto error;
    size_t off = 0;
    for (int i = 0; i < nvals; i++) {
        job->vals[i] = vals[i];
        if (vals[i].type == EP_VAL_TEXT || vals[i].type == EP_VAL_BLOB) {
            if (vals[i].len)
                memcpy(job->valdata + off, vals[i].data, vals[i].len);
            job->valdata[off + vals[i].len] = '\0';
            job->vals[i].data = job->valdata + off;
            off += vals[i].len + 1;
        } else {
            job->vals[i].data = NULL;
            job->vals[i].len = 0;
        }
    }
    job->nvals = nvals;
    rc = EP_OK;
error:
    return rc;
}

void ep_store_job_free(ep_store_job *job)
{
    if (!job)
        return;
    free(job->sql);
    free(job->cols);
    free(job->rows);
    free(job->vals);
    free(job->valdata);
    free(job);
}

static int sql_append(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap * 2 : 256);
        while (nc < *len + n + 1)
            nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return EP_ERR_NOMEM;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
    return EP_OK;
}

int ep_store_job_insert(const char *table, const ep_store_col *cols, int ncols, const ep_store_value *consts,
                        int nconsts, const void *rows, size_t nrows, size_t itemsize, ep_store_job **out,
                        char *msg, size_t msglen)
{
    int rc = EP_ERR_ARG;
    ep_store_job *job = NULL;
    char *sql = NULL;
    size_t len = 0, cap = 0;
    *out = NULL;
    if (!valid_ident(table)) {
        if (msg)
            snprintf(msg, msglen, "table name %.80s is not a plain identifier", table ? table : "(null)");
        goto error;
    }
    if (ncols > EP_STORE_MAX_COLS) {
        if (msg)
            snprintf(msg, msglen, "an insert into %s has %d columns; at most %d are supported", table, ncols,
                     EP_STORE_MAX_COLS);
        goto error;
    }
    if (ncols + nconsts <= 0 || ncols < 0 || nconsts < 0) {
        if (msg)
            snprintf(msg, msglen, "an insert into %s needs at least one column", table);
        goto error;
    }
    for (int i = 0; i < ncols + nconsts; i++) {
        const char *name = i < ncols ? cols[i].name : consts[i - ncols].name;
        if (!valid_ident(name)) {
            if (msg)
                snprintf(msg, msglen, "column name %.80s is not a plain identifier", name);
            goto error;
        }
        if (i < ncols) {
            size_t need = cols[i].type == EP_COL_UCS4 ? 4 : 1;
            if (cols[i].offset + cols[i].size > itemsize || cols[i].size < need || cols[i].type < EP_COL_I64 ||
                cols[i].type > EP_COL_UCS4) {
                if (msg)
                    snprintf(msg, msglen, "column %s does not fit a %zu-byte row", name, itemsize);
                goto error;
            }
        }
    }
    rc = EP_ERR_NOMEM;
    job = calloc(1, sizeof *job);
    if (!job)
        goto error;
    job->kind = JOB_INSERT;
    snprintf(job->table, sizeof job->table, "%s", table);
    if (sql_append(&sql, &len, &cap, "INSERT INTO \"") || sql_append(&sql, &len, &cap, table) ||
        sql_append(&sql, &len, &cap, "\" ("))
        goto error;
    for (int i = 0; i < ncols + nconsts; i++) {
        const char *name = i < ncols ? cols[i].name : consts[i - ncols].name;
        if ((i && sql_append(&sql, &len, &cap, ", ")) || sql_append(&sql, &len, &cap, "\"") ||
            sql_append(&sql, &len, &cap, name) || sql_append(&sql, &len, &cap, "\""))
            goto error;
    }
    /* Rows come from the ep_rows virtual table (the job's buffer), constants from
     * parameters bound once: one INSERT ... SELECT statement per job instead of a
     * bind/step/reset round per row, which is most of sqlite's per-row cost. */
    if (sql_append(&sql, &len, &cap, ") SELECT "))
        goto error;
    for (int i = 0; i < ncols + nconsts; i++) {
        char item[32];
        if (i < ncols)
            snprintf(item, sizeof item, "%sc%d", i ? ", " : "", i);
        else
            snprintf(item, sizeof item, "%s?%d", i ? ", " : "", i - ncols + 1);
        if (sql_append(&sql, &len, &cap, item))
            goto error;
    }
    if (sql_append(&sql, &len, &cap, " FROM ep_rows"))
        goto error;
    job->sql = sql;
    sql = NULL;
    if (ncols) {
        job->cols = malloc(sizeof(ep_store_col) * (size_t)ncols);
        if (!job->cols)
            goto error;
        memcpy(job->cols, cols, sizeof(ep_store_col) * (size_t)ncols);
    }
    job->ncols = ncols;
    if (nrows && itemsize) {
        if (nrows > SIZE_MAX / itemsize)
            goto error;
        job->rows = malloc(nrows * itemsize);
        if (!job->rows)
            goto error;
        memcpy(job->rows, rows, nrows * itemsize);
    }
    job->nrows = nrows;
    job->itemsize = itemsize;
    job->bytes = nrows * itemsize;
    if (copy_values(job, consts, nconsts))
        goto error;
    *out = job;
    return EP_OK;
error:
    if (rc == EP_ERR_NOMEM && msg)
        snprintf(msg, msglen, "out of memory building an insert of %zu rows", nrows);
    free(sql);
    ep_store_job_free(job);
    return rc;
}

int ep_store_job_exec(const char *sql, const ep_store_value *params, int nparams, ep_store_job **out)
{
    int rc = EP_ERR_NOMEM;
    ep_store_job *job = NULL;
    *out = NULL;
    if (!sql || nparams < 0) {
        rc = EP_ERR_ARG;
        goto error;
    }
    job = calloc(1, sizeof *job);
    if (!job)
        goto error;
    job->kind = JOB_EXEC;
    snprintf(job->table, sizeof job->table, "%s", "(statement)");
    job->sql = strdup(sql);
    if (!job->sql)
        goto error;
    if (copy_values(job, params, nparams))
        goto error;
    *out = job;
    return EP_OK;
error:
    ep_store_job_free(job);
    return rc;
}

/* ---- writer thread ---------------------------------------------------------------- */

/* A cached prepared statement for sql (owned by the cache), or NULL with rc set. */
static sqlite3_stmt *cache_get(ep_store *s, const char *sql, int *rc)
{
    int free_slot = -1, lru = 0;
    for (int i = 0; i < STMT_CACHE_MAX; i++) {
        if (s->cache[i].sql && strcmp(s->cache[i].sql, sql) == 0) {
            s->cache[i].last_used = ++s->use_clock;
            return s->cache[i].stmt;
        }
        if (!s->cache[i].sql && free_slot < 0)
            free_slot = i;
        if (s->cache[i].last_used < s->cache[lru].last_used)
            lru = i;
    }
    sqlite3_stmt *stmt = NULL;
    *rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL);
    if (*rc != SQLITE_OK) {
        sqlite3_finalize(stmt);
        return NULL;
    }
    char *copy = strdup(sql);
    if (!copy) {
        sqlite3_finalize(stmt);
        *rc = SQLITE_NOMEM;
        return NULL;
    }
    int slot = free_slot >= 0 ? free_slot : lru;
    if (s->cache[slot].sql) { /* evict the least recently used statement */
        sqlite3_finalize(s->cache[slot].stmt);
        free(s->cache[slot].sql);
    }
    s->cache[slot].sql = copy;
    s->cache[slot].stmt = stmt;
    s->cache[slot].last_used = ++s->use_clock;
    return stmt;
}

static int bind_value(sqlite3_stmt *st, int idx, const ep_store_value *v)
{
    switch (v->type) {
    case EP_VAL_INT: return sqlite3_bind_int64(st, idx, v->i);
    case EP_VAL_REAL: return sqlite3_bind_double(st, idx, v->d);
    case EP_VAL_TEXT: return sqlite3_bind_text(st, idx, v->data, (int)v->len, SQLITE_STATIC);
    case EP_VAL_BLOB: return sqlite3_bind_blob(st, idx, v->data, (int)v->len, SQLITE_STATIC);
    default: return sqlite3_bind_null(st, idx);
    }
}

/* ---- ep_rows: the current job's rows as an eponymous virtual table --------------
 *
 * Columns c0..c63 read field i of the row under the cursor from the job the writer
 * thread is running (s->cur_job, set only by that thread around the INSERT).  Ints
 * and bools come back as INTEGER, floats as REAL (NaN becomes NULL, as with
 * binding), UCS4 text as UTF-8 TEXT without the NUL padding. */
typedef struct {
    sqlite3_vtab base;
    ep_store *s;
} rows_vtab;

typedef struct {
    sqlite3_vtab_cursor base;
    ep_store *s;
    size_t row;
    char *utf8; /* scratch for one text value, owned by the cursor */
    size_t utf8_cap;
} rows_cursor;

static int rows_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out, char **err)
{
    char decl[16 + 6 * EP_STORE_MAX_COLS];
    size_t n = (size_t)snprintf(decl, sizeof decl, "CREATE TABLE x(");
    for (int i = 0; i < EP_STORE_MAX_COLS; i++)
        n += (size_t)snprintf(decl + n, sizeof decl - n, "%sc%d", i ? "," : "", i);
    snprintf(decl + n, sizeof decl - n, ")");
    int rc = sqlite3_declare_vtab(db, decl);
    if (rc != SQLITE_OK)
        return rc;
    rows_vtab *v = sqlite3_malloc(sizeof *v);
    if (!v)
        return SQLITE_NOMEM;
    memset(v, 0, sizeof *v);
    v->s = aux;
    *out = &v->base;
    return SQLITE_OK;
}

static int rows_disconnect(sqlite3_vtab *v)
{
    sqlite3_free(v);
    return SQLITE_OK;
}

static int rows_best_index(sqlite3_vtab *v, sqlite3_index_info *info)
{
    info->estimatedCost = 1e6; /* always a full scan in row order */
    info->estimatedRows = 1000000;
    return SQLITE_OK;
}

static int rows_open(sqlite3_vtab *v, sqlite3_vtab_cursor **out)
{
    rows_cursor *c = sqlite3_malloc(sizeof *c);
    if (!c)
        return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    c->s = ((rows_vtab *)v)->s;
    *out = &c->base;
    return SQLITE_OK;
}

static int rows_close(sqlite3_vtab_cursor *cur)
{
    rows_cursor *c = (rows_cursor *)cur;
    free(c->utf8);
    sqlite3_free(c);
    return SQLITE_OK;
}

static int rows_filter(sqlite3_vtab_cursor *cur, int idx_num, const char *idx_str, int argc, sqlite3_value **argv)
{
    rows_cursor *c = (rows_cursor *)cur;
    const ep_store_job *job = c->s->cur_job;
    c->row = 0;
    size_t need = 1;
    for (int i = 0; job && i < job->ncols; i++)
        if (job->cols[i].type == EP_COL_UCS4 && job->cols[i].size + 1 > need)
            need = job->cols[i].size + 1; /* UTF-8 needs at most 4 bytes per UCS4 unit */
    if (need > c->utf8_cap) {
        char *b = realloc(c->utf8, need);
        if (!b)
            return SQLITE_NOMEM;
        c->utf8 = b;
        c->utf8_cap = need;
    }
    return SQLITE_OK;
}

static int rows_next(sqlite3_vtab_cursor *cur)
{
    ((rows_cursor *)cur)->row++;
    return SQLITE_OK;
}

static int rows_eof(sqlite3_vtab_cursor *cur)
{
    rows_cursor *c = (rows_cursor *)cur;
    return !c->s->cur_job || c->row >= c->s->cur_job->nrows;
}

static int rows_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
    *rowid = (sqlite3_int64)((rows_cursor *)cur)->row;
    return SQLITE_OK;
}

static int rows_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int i)
{
    rows_cursor *c = (rows_cursor *)cur;
    const ep_store_job *job = c->s->cur_job;
    if (!job || i < 0 || i >= job->ncols || c->row >= job->nrows) {
        sqlite3_result_null(ctx);
        return SQLITE_OK;
    }
    const ep_store_col *col = &job->cols[i];
    const unsigned char *p = job->rows + c->row * job->itemsize + col->offset;
    /* Fields of a packed record may be unaligned: copy the bytes out into a C value of
     * the column's type, then hand it to sqlite as a 64-bit INTEGER or a REAL. */
#define RESULT_AS(ctype, result_fn, as_type) \
    do { \
        ctype v_; \
        memcpy(&v_, p, sizeof v_); \
        result_fn(ctx, (as_type)v_); \
    } while (0)
    switch (col->type) {
    case EP_COL_I64: RESULT_AS(int64_t, sqlite3_result_int64, int64_t); break;
    case EP_COL_I32: RESULT_AS(int32_t, sqlite3_result_int64, int64_t); break;
    case EP_COL_U32: RESULT_AS(uint32_t, sqlite3_result_int64, int64_t); break;
    case EP_COL_I16: RESULT_AS(int16_t, sqlite3_result_int64, int64_t); break;
    case EP_COL_U16: RESULT_AS(uint16_t, sqlite3_result_int64, int64_t); break;
    case EP_COL_I8: sqlite3_result_int64(ctx, (int8_t)p[0]); break;
    case EP_COL_U8: sqlite3_result_int64(ctx, p[0]); break;
    case EP_COL_BOOL: sqlite3_result_int64(ctx, p[0] != 0); break;
    case EP_COL_F64: RESULT_AS(double, sqlite3_result_double, double); break; /* NaN is stored as NULL by sqlite */
    case EP_COL_F32: RESULT_AS(float, sqlite3_result_double, double); break;
    case EP_COL_UCS4: {
        size_t n = ep_store_ucs4_to_utf8(p, col->size / 4, c->utf8);
        sqlite3_result_text(ctx, c->utf8, (int)n, SQLITE_TRANSIENT);
        break;
    }
    default: sqlite3_result_null(ctx); break;
    }
#undef RESULT_AS
    return SQLITE_OK;
}

static sqlite3_module rows_module = {
    .iVersion = 0,
    .xCreate = NULL, /* eponymous-only: "FROM ep_rows" works without CREATE VIRTUAL TABLE */
    .xConnect = rows_connect,
    .xBestIndex = rows_best_index,
    .xDisconnect = rows_disconnect,
    .xDestroy = NULL,
    .xOpen = rows_open,
    .xClose = rows_close,
    .xFilter = rows_filter,
    .xNext = rows_next,
    .xEof = rows_eof,
    .xColumn = rows_column,
    .xRowid = rows_rowid,
};

static int step_done(sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ; /* a statement may return rows (e.g. a PRAGMA); the writer discards them */
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void rollback_if_open(ep_store *s)
{
    if (!sqlite3_get_autocommit(s->db))
        step_done(s->rollback_stmt);
}

/* The job's cached statement in *st (borrowed from the cache) with the job's values
 * bound.  *st is set as soon as it exists, so after a failed bind the caller still
 * clears its bindings in fail_job. */
static int bind_job(ep_store *s, ep_store_job *job, sqlite3_stmt **st)
{
    int rc = SQLITE_OK;
    *st = cache_get(s, job->sql, &rc);
    if (!*st)
        return rc;
    for (int k = 0; k < job->nvals; k++)
        if ((rc = bind_value(*st, k + 1, &job->vals[k])) != SQLITE_OK)
            return rc;
    return SQLITE_OK;
}

/* A job failed: keep the error, release st's bindings (st may be NULL), end the
 * transaction if one is open. */
static void fail_job(ep_store *s, sqlite3_stmt *st, int rc, const char *what)
{
    set_error(s, rc, what); /* before the rollback, which would replace sqlite3_errmsg */
    if (st)
        sqlite3_clear_bindings(st);
    rollback_if_open(s);
}

static void run_insert(ep_store *s, ep_store_job *job)
{
    int rc = SQLITE_OK;
    char what[160];
    sqlite3_stmt *st = NULL;
    snprintf(what, sizeof what, "inserting %zu rows into %s", job->nrows, job->table);
    if ((rc = bind_job(s, job, &st)) != SQLITE_OK)
        goto error;
    if ((rc = step_done(s->begin_stmt)) != SQLITE_OK)
        goto error;
    s->cur_job = job; /* what ep_rows reads while the statement runs */
    rc = step_done(st);
    s->cur_job = NULL;
    if (rc != SQLITE_OK)
        goto error;
    if ((rc = step_done(s->commit_stmt)) != SQLITE_OK)
        goto error;
    sqlite3_clear_bindings(st);
    pthread_mutex_lock(&s->mu);
    s->rows_committed += (int64_t)job->nrows;
    pthread_mutex_unlock(&s->mu);
    return;
error:
    fail_job(s, st, rc, what);
}

static void run_exec(ep_store *s, ep_store_job *job)
{
    int rc = SQLITE_OK;
    char what[160];
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    snprintf(what, sizeof what, "running \"%.100s\"", job->sql);
    if (job->nvals > 0) {
        if ((rc = bind_job(s, job, &st)) != SQLITE_OK)
            goto error;
        rc = step_done(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_OK)
            goto error;
        return;
    }
    /* A parameterless script: run each statement in turn (not cached). */
    const char *sql = job->sql;
    while (sql && *sql) {
        sqlite3_stmt *one = NULL;
        rc = sqlite3_prepare_v2(s->db, sql, -1, &one, &tail);
        if (rc != SQLITE_OK)
            goto error;
        if (one) {
            rc = step_done(one);
            sqlite3_finalize(one);
            if (rc != SQLITE_OK)
                goto error;
        }
        sql = tail;
    }
    return;
error:
    fail_job(s, st, rc, what);
}

/* Why the writer checkpoints itself: sqlite's automatic checkpoint runs inside the
 * COMMIT that crosses the threshold, so one batch in a few would wait for pages to
 * be copied into the main file.  The writer instead copies them when its queue is
 * empty (a flush returns as soon as the batch is durable in the WAL), and also when
 * the WAL grows large under a queue that never empties, so the WAL stays bounded. */
#define WAL_IDLE_CHECKPOINT_FRAMES 1000
#define WAL_BUSY_CHECKPOINT_FRAMES 16000

static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames)
{
    ((ep_store *)arg)->wal_frames = frames; /* writer thread: it runs every commit */
    return SQLITE_OK;
}

static void maybe_checkpoint(ep_store *s, int idle)
{
    if (s->wal_frames < (idle ? WAL_IDLE_CHECKPOINT_FRAMES : WAL_BUSY_CHECKPOINT_FRAMES))
        return;
    /* PASSIVE: never waits for readers; what it cannot copy now is copied next time. */
    sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    s->wal_frames = 0;
}

static void *writer_main(void *arg)
{
    ep_store *s = arg;
    ep_thread_set_name("ep-writer");
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->head)
            pthread_cond_wait(&s->not_empty, &s->mu);
        ep_store_job *job = s->head;
        s->head = job->next;
        if (!s->head)
            s->tail = NULL;
        s->n_jobs--;
        s->queued_bytes -= job->bytes;
        pthread_cond_broadcast(&s->not_full);
        pthread_mutex_unlock(&s->mu);

        int kind = job->kind;
        if (kind == JOB_INSERT)
            run_insert(s, job);
        else if (kind == JOB_EXEC)
            run_exec(s, job);
        ep_store_job_free(job);

        pthread_mutex_lock(&s->mu);
        s->completed++;
        int idle = s->head == NULL;
        pthread_cond_broadcast(&s->done);
        pthread_mutex_unlock(&s->mu);
        if (kind == JOB_CLOSE)
            break; /* closing the connection checkpoints the WAL */
        if (!s->readonly)
            maybe_checkpoint(s, idle);
    }
    return NULL;
}

/* ---- open / submit / flush / close ---------------------------------------------- */

static int exec_simple(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static void free_store(ep_store *s)
{
    for (int i = 0; i < STMT_CACHE_MAX; i++) {
        if (s->cache[i].stmt)
            sqlite3_finalize(s->cache[i].stmt);
        free(s->cache[i].sql);
    }
    sqlite3_finalize(s->begin_stmt);
    sqlite3_finalize(s->commit_stmt);
    sqlite3_finalize(s->rollback_stmt);
    if (s->db)
        sqlite3_close_v2(s->db);
    while (s->head) {
        ep_store_job *j = s->head;
        s->head = j->next;
        ep_store_job_free(j);
    }
    ep_store_job_free(s->close_job);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->not_empty);
    pthread_cond_destroy(&s->not_full);
    pthread_cond_destroy(&s->done);
    free(s);
}

int ep_store_open(const char *path, const ep_store_opts *opts, ep_store **out, char *msg, size_t msglen)
{
    int rc = EP_ERR_NOMEM, src = SQLITE_OK;
    ep_store_opts o;
    ep_store *s = NULL;
    *out = NULL;
    if (opts)
        o = *opts;
    else
        ep_store_opts_default(&o);
    if (!path || !path[0] || strlen(path) >= sizeof s->path) {
        rc = EP_ERR_ARG;
        if (msg)
            snprintf(msg, msglen, "database path is empty or too long");
        goto error;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        goto error;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->not_empty, NULL);
    pthread_cond_init(&s->not_full, NULL);
    pthread_cond_init(&s->done, NULL);
    snprintf(s->path, sizeof s->path, "%s", path);
    s->busy_timeout_ms = o.busy_timeout_ms < 0 ? 0 : o.busy_timeout_ms;
    s->cap_jobs = o.queue_jobs < 1 ? 1 : o.queue_jobs;
    s->cap_bytes = o.queue_bytes ? o.queue_bytes : 1;
    s->readonly = o.readonly;
    s->owner_pid = getpid();
    s->close_job = calloc(1, sizeof *s->close_job);
    if (!s->close_job)
        goto error;
    s->close_job->kind = JOB_CLOSE;
    /* NOMUTEX: the connection is used by one thread at a time (this one to open,
     * then only the writer thread, then this one again after the join). */
    int flags = (o.readonly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) |
                SQLITE_OPEN_NOMUTEX;
    src = sqlite3_open_v2(path, &s->db, flags, NULL);
    if (src != SQLITE_OK)
        goto sqlerror;
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, s->busy_timeout_ms);
    /* The first statement reads the header: a non-database file fails here. */
    if ((src = exec_simple(s->db, "PRAGMA schema_version")) != SQLITE_OK)
        goto sqlerror;
    if (!o.readonly) {
        /* WAL: readers never block the writer and a killed writer leaves committed
         * batches intact; NORMAL is durable across process death in WAL mode. */
        if ((src = exec_simple(s->db, "PRAGMA journal_mode=WAL")) != SQLITE_OK)
            goto sqlerror;
        if ((src = exec_simple(s->db, "PRAGMA synchronous=NORMAL")) != SQLITE_OK)
            goto sqlerror;
    }
    if ((src = exec_simple(s->db, "PRAGMA foreign_keys=ON")) != SQLITE_OK)
        goto sqlerror;
    if ((src = sqlite3_create_module_v2(s->db, "ep_rows", &rows_module, s, NULL)) != SQLITE_OK)
        goto sqlerror;
    if (!o.readonly)
        sqlite3_wal_hook(s->db, on_wal_commit, s); /* replaces the automatic checkpoint */
    /* IMMEDIATE takes the write lock at BEGIN, so a lock held elsewhere shows up
     * (after the busy timeout) before any row is bound, never as a deadlock mid-batch. */
    if ((src = sqlite3_prepare_v2(s->db, "BEGIN IMMEDIATE", -1, &s->begin_stmt, NULL)) != SQLITE_OK ||
        (src = sqlite3_prepare_v2(s->db, "COMMIT", -1, &s->commit_stmt, NULL)) != SQLITE_OK ||
        (src = sqlite3_prepare_v2(s->db, "ROLLBACK", -1, &s->rollback_stmt, NULL)) != SQLITE_OK)
        goto sqlerror;
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        rc = EP_ERR_THREAD;
        if (msg)
            snprintf(msg, msglen, "could not start the writer thread for %s", path);
        goto error;
    }
    s->thread_started = 1;
    *out = s;
    return EP_OK;
sqlerror:
    rc = ep_store_map_sqlite(src);
    if (rc == EP_OK)
        rc = EP_ERR_SQLITE;
    if (msg) {
        const char *plain = (src & 0xff) == SQLITE_NOTADB   ? "file is not an SQLite database"
                            : (src & 0xff) == SQLITE_BUSY    ? "database is locked by another process"
                            : (src & 0xff) == SQLITE_CANTOPEN ? "cannot open the database file"
                                                              : "cannot open the database";
        snprintf(msg, msglen, "%s: %.300s (sqlite: %.200s)", plain, path,
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
    }
error:
    if (s)
        free_store(s);
    return rc;
}

int ep_store_submit(ep_store *s, ep_store_job *job)
{
    int rc = EP_OK;
    if (s->owner_pid != getpid()) { /* a forked child: no writer thread would ever run it */
        ep_store_job_free(job);
        return EP_ERR_STATE;
    }
    pthread_mutex_lock(&s->mu);
    if (s->closing && job->kind != JOB_CLOSE) {
        rc = EP_ERR_STATE;
        goto error;
    }
    /* One oversized job may enter an empty queue; otherwise producers wait so the
     * queue's memory stays bounded however far the disk falls behind. */
    while (s->n_jobs >= s->cap_jobs || (s->n_jobs > 0 && s->queued_bytes + job->bytes > s->cap_bytes))
        pthread_cond_wait(&s->not_full, &s->mu);
    job->next = NULL;
    if (s->tail)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    s->n_jobs++;
    s->queued_bytes += job->bytes;
    s->submitted++;
    if (job->kind == JOB_CLOSE)
        s->closing = 1;
    pthread_cond_signal(&s->not_empty);
    pthread_mutex_unlock(&s->mu);
    return EP_OK;
error:
    pthread_mutex_unlock(&s->mu);
    ep_store_job_free(job);
    return rc;
}

/* Take the pending error (caller holds mu). */
static int take_error(ep_store *s, char *msg, size_t msglen)
{
    int rc = s->err_code;
    if (rc != EP_OK && msg) {
        if (s->n_failed > 1)
            snprintf(msg, msglen, "%s (%d jobs failed since the last flush)", s->err_msg, s->n_failed);
        else
            snprintf(msg, msglen, "%s", s->err_msg);
    }
    s->err_code = EP_OK;
    s->err_sqlite = 0;
    s->n_failed = 0;
    s->err_msg[0] = '\0';
    return rc;
}

int ep_store_flush(ep_store *s, char *msg, size_t msglen)
{
    if (s->owner_pid != getpid()) {
        if (msg)
            snprintf(msg, msglen, "this store was opened by process %d; after fork() open a new one", (int)s->owner_pid);
        return EP_ERR_STATE;
    }
    pthread_mutex_lock(&s->mu);
    uint64_t target = s->submitted;
    while (s->completed < target)
        pthread_cond_wait(&s->done, &s->mu);
    int rc = take_error(s, msg, msglen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int ep_store_close(ep_store *s, char *msg, size_t msglen)
{
    int rc = EP_OK;
    if (!s)
        return EP_OK;
    if (s->owner_pid != getpid()) {
        /* A forked child must not touch the parent's connection or wait for a thread
         * it does not have: it leaves everything as it is (a small leak in the child). */
        return EP_OK;
    }
    if (s->thread_started) {
        ep_store_job *job = s->close_job;
        s->close_job = NULL; /* the writer thread frees it */
        ep_store_submit(s, job);
        pthread_join(s->thread, NULL);
        s->thread_started = 0;
    }
    pthread_mutex_lock(&s->mu);
    rc = take_error(s, msg, msglen);
    pthread_mutex_unlock(&s->mu);
    free_store(s);
    return rc;
}

int64_t ep_store_rows_committed(ep_store *s)
{
    pthread_mutex_lock(&s->mu);
    int64_t n = s->rows_committed;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int64_t ep_store_jobs_pending(ep_store *s)
{
    pthread_mutex_lock(&s->mu);
    int64_t n = (int64_t)(s->submitted - s->completed);
    pthread_mutex_unlock(&s->mu);
    return n;
}
