/* ep_errors.h: the named error codes every part of the C core returns.
 *
 * A function that can fail returns an ep_err (0 = EP_OK).  Only ep_module.c maps
 * codes to Python exceptions (ep_module_raise), so kernels stay free of Python.h.
 */
#ifndef EP_ERRORS_H
#define EP_ERRORS_H
#include <stddef.h>

typedef enum {
    EP_OK = 0,
    EP_ERR_NOMEM = 1,        /* malloc failed                                  -> MemoryError */
    EP_ERR_ARG = 2,          /* bad argument (caller's fault)                   -> ValueError  */
    EP_ERR_PARSE = 3,        /* malformed input document                        -> ValueError  */
    EP_ERR_IO = 4,           /* read/write/open failed (errno kept by caller)   -> OSError     */
    EP_ERR_PERM = 5,         /* permission denied                              -> PermissionError */
    EP_ERR_NOTFOUND = 6,     /* file, library or symbol missing                -> FileNotFoundError */
    EP_ERR_UNSUPPORTED = 7,  /* not available on this platform/device          -> NotImplementedError */
    EP_ERR_STATE = 8,        /* wrong state (already started, not started)     -> RuntimeError */
    EP_ERR_THREAD = 9,       /* pthread_create or similar failed               -> RuntimeError */
    EP_ERR_EOF = 10,         /* a stream ended                                 -> EOFError    */
    EP_ERR_CHILD = 11,       /* a child process failed or exited early         -> RuntimeError */
    EP_ERR_UNSORTED = 12,    /* input that must be sorted is not               -> ValueError  */
    EP_ERR_SQLITE = 13,      /* sqlite3 error (message kept by the store)      -> RuntimeError */
    EP_ERR_FULL = 14,        /* a bounded queue or buffer is full              -> RuntimeError */
    EP_ERR_DEVICE = 15,      /* device call (sync, NVML) failed                -> RuntimeError */
} ep_err;

/* A static, human-readable description of an error code (never NULL). */
const char *ep_err_str(int code);

/* printf into the caller's message buffer msg (msglen bytes, truncated to fit);
 * nothing when msg is NULL or msglen is 0, for callers that may not want one. */
__attribute__((format(printf, 3, 4))) void ep_err_format(char *msg, size_t msglen, const char *fmt, ...);

#endif
