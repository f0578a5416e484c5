/* ep_errors.c: descriptions of the EP_ERR_* codes. */
#include "ep_errors.h"

#include <stdarg.h>
#include <stdio.h>

void ep_err_format(char *msg, size_t msglen, const char *fmt, ...)
{
    if (!msg || !msglen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

const char *ep_err_str(int code)
{
    switch (code) {
    case EP_OK: return "ok";
    case EP_ERR_NOMEM: return "out of memory";
    case EP_ERR_ARG: return "invalid argument";
    case EP_ERR_PARSE: return "malformed input";
    case EP_ERR_IO: return "I/O error";
    case EP_ERR_PERM: return "permission denied";
    case EP_ERR_NOTFOUND: return "not found";
    case EP_ERR_UNSUPPORTED: return "not supported here";
    case EP_ERR_STATE: return "invalid state";
    case EP_ERR_THREAD: return "thread error";
    case EP_ERR_EOF: return "end of stream";
    case EP_ERR_CHILD: return "child process failed";
    case EP_ERR_UNSORTED: return "input not sorted";
    case EP_ERR_SQLITE: return "sqlite error";
    case EP_ERR_FULL: return "buffer full";
    case EP_ERR_DEVICE: return "device call failed";
    }
    return "unknown error";
}
