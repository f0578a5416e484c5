/* ep_torchshim.h: call libtorch's device synchronize without linking libtorch.
 *
 * ep_torchshim.cpp (the only C++ in energyprof) resolves
 *   torch::cuda::synchronize(int64_t)   _ZN5torch4cuda11synchronizeEl  (x on macOS)
 *   torch::mps::synchronize()           _ZN5torch3mps11synchronizeEv
 * by their mangled names with dlsym at run time and calls them inside
 * try/catch(...), so a C++ exception becomes EP_ERR_DEVICE plus its what()
 * message instead of unwinding through C and Python frames.  No torch headers,
 * no link against libtorch at build time.  Callable from C (extern "C").
 */
#ifndef EP_TORCHSHIM_H
#define EP_TORCHSHIM_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Device kinds (also Hook(sync=...) and _core.SYNC_*). */
#define EP_SYNC_NONE 0
#define EP_SYNC_CUDA 1
#define EP_SYNC_MPS 2

/* Resolve the symbols.  path != NULL: that library is dlopen'ed and searched
 * first, then the process; path == NULL: the process (RTLD_DEFAULT), then every
 * loaded libtorch* image (torch loads its libraries RTLD_LOCAL, so RTLD_DEFAULT
 * alone usually misses them).  search_process == 0 searches path only (tests,
 * or to force one library; with path == NULL it unloads both symbols).  Replaces what an earlier load found.  EP_OK even
 * when a symbol is missing (see ep_torchshim_origin); EP_ERR_NOTFOUND with the
 * dlerror() text in err (caller's buffer of err_len bytes) when path cannot be
 * opened, the previous state then kept.  Not thread-safe against itself: call it
 * with the GIL held. */
int ep_torchshim_load(const char *path, int search_process, char *err, size_t err_len);

/* Where the symbol for device came from: "process", a library path, or NULL when
 * it is missing.  The string is owned by the shim, valid until the next load. */
const char *ep_torchshim_origin(int device);

/* Synchronize device (EP_SYNC_CUDA with index, or EP_SYNC_MPS; index ignored).
 * EP_OK; EP_ERR_UNSUPPORTED when the symbol is missing (or device is
 * EP_SYNC_NONE/unknown); EP_ERR_DEVICE when it threw, with what() copied into
 * err (caller's buffer, err_len bytes, always NUL-terminated when err_len > 0).
 * Safe to call without the GIL and from any thread. */
int ep_torchshim_sync(int device, int64_t index, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif
