/* ep_sqlite.h: the run store's writer: one native thread per open database.
 *
 * Producers (the sampler drain, the session) hand the writer *jobs* through a
 * bounded FIFO queue; the writer thread is the only user of its sqlite3
 * connection and runs each job as one transaction.  A job is either
 *   - INSERT: "insert these fixed-width rows into table T": a byte copy of the
 *     rows plus a column map (name, type, byte offset) and constant columns
 *     (e.g. run_id) bound once per job.  It runs as one cached
 *     INSERT INTO T (...) SELECT c0, c1, ..., ?1 FROM ep_rows, where ep_rows is a
 *     virtual table reading the job's buffer: one statement per job rather than a
 *     bind/step/reset round trip per row (about 2.5x fewer cycles per row); or
 *   - EXEC: one small SQL statement (or a parameterless script) with parameters.
 * Jobs run in submission order, so an EXEC submitted after an INSERT sees its rows.
 *
 * Errors of a job do not stop the writer: the first one since the last
 * ep_store_flush() is kept (EP_ERR_* code, sqlite extended code, message) and
 * returned by the next flush/close, with the number of failed jobs.  A failed job
 * is rolled back whole, so the database never holds half a batch.
 *
 * No Python here: ep_module_store.c is the Python face and releases the GIL
 * around every call that can block.
 */
#ifndef EP_SQLITE_H
#define EP_SQLITE_H

#include <stddef.h>
#include <stdint.h>

/* Longest table or column name (identifiers are [A-Za-z_][A-Za-z0-9_]*). */
#define EP_STORE_NAME_MAX 64
/* Most fields one INSERT job may carry (the ep_rows virtual table's width). */
#define EP_STORE_MAX_COLS 64
/* Longest error message kept by the store. */
#define EP_STORE_MSG_MAX 768

typedef enum {
    EP_COL_I64 = 0,
    EP_COL_I32,
    EP_COL_U32,
    EP_COL_I16,
    EP_COL_U16,
    EP_COL_I8,
    EP_COL_U8,
    EP_COL_F64,
    EP_COL_F32,
    EP_COL_BOOL,
    EP_COL_UCS4, /* numpy 'U<n>': n little-endian UCS4 code units, NUL padded */
} ep_col_type;

/* One column of a fixed-width row (a field of a numpy structured dtype). */
typedef struct {
    char name[EP_STORE_NAME_MAX];
    int type;      /* ep_col_type */
    size_t offset; /* byte offset of the field in a row */
    size_t size;   /* bytes of the field (UCS4: 4 * chars) */
} ep_store_col;

typedef enum { EP_VAL_NULL = 0, EP_VAL_INT, EP_VAL_REAL, EP_VAL_TEXT, EP_VAL_BLOB } ep_val_type;

/* A constant column of an INSERT (name set) or a parameter of an EXEC (name unused). */
typedef struct {
    char name[EP_STORE_NAME_MAX];
    int type; /* ep_val_type */
    int64_t i;
    double d;
    const char *data; /* TEXT (UTF-8) or BLOB bytes; borrowed by the job constructors, which copy it */
    size_t len;
} ep_store_value;

typedef struct {
    int busy_timeout_ms;  /* how long a write waits for another connection's lock */
    int queue_jobs;       /* queue bound in jobs (producers block beyond it)     */
    size_t queue_bytes;   /* queue bound in bytes of row data (one job always fits) */
    int readonly;         /* open read-only: every write fails with EP_ERR_PERM  */
} ep_store_opts;

/* Defaults: 5000 ms, 64 jobs, 256 MiB. */
void ep_store_opts_default(ep_store_opts *opts);

typedef struct ep_store ep_store;
typedef struct ep_store_job ep_store_job;

/* Open (create if missing, unless readonly) the database at path, set WAL,
 * synchronous=NORMAL, foreign_keys=ON and the busy timeout, and start the writer
 * thread.  *out is owned by the caller and released with ep_store_close().  On
 * failure *out is NULL and msg (may be NULL) holds why. */
int ep_store_open(const char *path, const ep_store_opts *opts, ep_store **out, char *msg, size_t msglen);

/* Build an INSERT job: copies table, cols, consts (their text) and nrows*itemsize
 * bytes of rows, so the caller keeps ownership of everything it passed.  The job
 * is owned by the caller until ep_store_submit() takes it. */
int ep_store_job_insert(const char *table, const ep_store_col *cols, int ncols, const ep_store_value *consts,
                        int nconsts, const void *rows, size_t nrows, size_t itemsize, ep_store_job **out,
                        char *msg, size_t msglen);

/* Build an EXEC job for one statement with nparams parameters (copied), or for a
 * parameterless script of several statements.  Ownership as ep_store_job_insert. */
int ep_store_job_exec(const char *sql, const ep_store_value *params, int nparams, ep_store_job **out);

/* Free a job that was never submitted. */
void ep_store_job_free(ep_store_job *job);

/* Queue a job (the store takes ownership, even on error).  Blocks while the
 * queue is full.  EP_ERR_STATE if the store is closing. */
int ep_store_submit(ep_store *s, ep_store_job *job);

/* Wait until every job submitted so far has run.  Returns EP_OK, or the first
 * error since the last flush (then cleared), its message in msg (may be NULL). */
int ep_store_flush(ep_store *s, char *msg, size_t msglen);

/* Flush, stop the writer thread, close the connection and free s (s is invalid
 * afterwards, even on error).  Returns the pending error like ep_store_flush. */
int ep_store_close(ep_store *s, char *msg, size_t msglen);

/* Counters (read under the queue lock). */
int64_t ep_store_rows_committed(ep_store *s);
int64_t ep_store_jobs_pending(ep_store *s);

/* The EP_ERR_* code for an sqlite3 result code (extended or primary). */
int ep_store_map_sqlite(int sqlite_code);

/* UTF-8 of nchars UCS4 code units at src (trailing NULs dropped, invalid code
 * points replaced by U+FFFD) written into dst (room for 4*nchars bytes, owned by
 * the caller).  Returns the byte length. */
size_t ep_store_ucs4_to_utf8(const unsigned char *src, size_t nchars, char *dst);

#endif
