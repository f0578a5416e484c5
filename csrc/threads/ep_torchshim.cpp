// ep_torchshim.cpp: the libtorch C++ ABI shim (see ep_torchshim.h).
//
// Why C++ at all: libtorch's synchronize functions report failure by throwing
// (c10::Error, a std::exception).  An exception unwinding through C frames is
// undefined behaviour, so the call has to sit inside a C++ try/catch.  Everything
// else here is plain dlopen/dlsym.
#include "ep_torchshim.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#if defined(__APPLE__)
#include <mach-o/dyld.h>
#else
#include <link.h>
#endif

extern "C" {
#include "ep_errors.h"
}

namespace {

using cuda_sync_fn = void (*)(int64_t);
using mps_sync_fn = void (*)();

// int64_t is `long` on Linux (mangled l) and `long long` on macOS (mangled x):
// try both so one binary handles either libtorch.
const char *const kCudaNames[] = {"_ZN5torch4cuda11synchronizeEl", "_ZN5torch4cuda11synchronizeEx"};
const char *const kMpsName = "_ZN5torch3mps11synchronizeEv";

// Atomics because ep_torchshim_sync runs without the GIL, possibly while another
// thread reloads.  Library handles are never dlclose'd for the same reason: a
// sync may be executing inside the library's code at that moment.
std::atomic<cuda_sync_fn> g_cuda{nullptr};
std::atomic<mps_sync_fn> g_mps{nullptr};
std::string g_cuda_origin;  // "" = missing; read with the GIL held only
std::string g_mps_origin;

// Copies the first line only: c10::Error's what() appends a multi-line C++
// backtrace that helps nobody reading a Python warning.
void copy_msg(char *dst, size_t len, const char *msg)
{
    if (!dst || len == 0)
        return;
    if (!msg)
        msg = "";
    size_t n = std::strcspn(msg, "\n");
    std::snprintf(dst, len, "%.*s", static_cast<int>(n), msg);
}

void *find_cuda(void *handle)
{
    for (const char *name : kCudaNames) {
        void *p = dlsym(handle, name);
        if (p)
            return p;
    }
    return nullptr;
}

// The file that defines the symbol at addr (dlsym on a handle also searches that
// library's dependencies, so the handle's name can be the wrong answer).
std::string defining_object(void *addr, const std::string &where)
{
    Dl_info info;
    if (dladdr(addr, &info) && info.dli_fname && *info.dli_fname)
        return info.dli_fname;
    return where;
}

struct Found {
    void *cuda = nullptr;
    void *mps = nullptr;
    std::string cuda_origin;
    std::string mps_origin;

    void look_in(void *handle, const std::string &where)
    {
        if (!cuda && (cuda = find_cuda(handle)))
            cuda_origin = defining_object(cuda, where);
        if (!mps && (mps = dlsym(handle, kMpsName)))
            mps_origin = defining_object(mps, where);
    }
    bool complete() const { return cuda && mps; }
};

// True for a loaded image named libtorch*.so / .dylib: the libraries that may
// define torch::cuda / torch::mps (libtorch_cpu, libtorch_cuda, libtorch).
bool is_libtorch(const char *path)
{
    if (!path || !*path)
        return false;
    const char *base = std::strrchr(path, '/');
    base = base ? base + 1 : path;
    return std::strncmp(base, "libtorch", 8) == 0;
}

void look_in_image(Found *f, const char *path)
{
    if (f->complete() || !is_libtorch(path))
        return;
    // RTLD_NOLOAD: only a handle to what is already mapped, never a new load.
    void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return;
    bool had_cuda = f->cuda != nullptr, had_mps = f->mps != nullptr;
    f->look_in(h, path);
    // Keep the reference when a symbol came through it (see g_cuda); else drop it.
    if ((f->cuda != nullptr) == had_cuda && (f->mps != nullptr) == had_mps)
        dlclose(h);
}

#if defined(__APPLE__)
void scan_loaded(Found *f)
{
    uint32_t n = _dyld_image_count();
    for (uint32_t i = 0; i < n && !f->complete(); i++)
        look_in_image(f, _dyld_get_image_name(i));
}
#else
int phdr_cb(struct dl_phdr_info *info, size_t, void *data)
{
    Found *f = static_cast<Found *>(data);
    look_in_image(f, info->dlpi_name);
    return f->complete() ? 1 : 0;
}

void scan_loaded(Found *f)
{
    dl_iterate_phdr(phdr_cb, f);
}
#endif

}  // namespace

extern "C" int ep_torchshim_load(const char *path, int search_process, char *err, size_t err_len)
{
    int rc = EP_OK;
    copy_msg(err, err_len, "");
    try {
        Found f;
        if (path && *path) {
            void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                copy_msg(err, err_len, dlerror());
                rc = EP_ERR_NOTFOUND;
                goto error;
            }
            f.look_in(h, path);
            if (!f.cuda && !f.mps)
                dlclose(h);  // nothing from it: do not keep it mapped
        }
        if (search_process && !f.complete())
            f.look_in(RTLD_DEFAULT, "process");
        if (search_process && !f.complete())
            scan_loaded(&f);
        g_cuda_origin = f.cuda_origin;
        g_mps_origin = f.mps_origin;
        g_cuda.store(reinterpret_cast<cuda_sync_fn>(f.cuda));
        g_mps.store(reinterpret_cast<mps_sync_fn>(f.mps));
    } catch (const std::exception &e) {  // std::bad_alloc from the strings
        copy_msg(err, err_len, e.what());
        rc = EP_ERR_NOMEM;
        goto error;
    }
    return EP_OK;
error:
    return rc;
}

extern "C" const char *ep_torchshim_origin(int device)
{
    const std::string &s = device == EP_SYNC_CUDA ? g_cuda_origin : g_mps_origin;
    if ((device != EP_SYNC_CUDA && device != EP_SYNC_MPS) || s.empty())
        return nullptr;
    return s.c_str();
}

extern "C" int ep_torchshim_sync(int device, int64_t index, char *err, size_t err_len)
{
    int rc = EP_OK;
    try {
        if (device == EP_SYNC_CUDA) {
            cuda_sync_fn fn = g_cuda.load();
            if (!fn) {
                rc = EP_ERR_UNSUPPORTED;
                goto error;
            }
            fn(index);
        } else if (device == EP_SYNC_MPS) {
            mps_sync_fn fn = g_mps.load();
            if (!fn) {
                rc = EP_ERR_UNSUPPORTED;
                goto error;
            }
            fn();
        } else {
            rc = EP_ERR_UNSUPPORTED;
            goto error;
        }
    } catch (const std::exception &e) {
        copy_msg(err, err_len, e.what());
        rc = EP_ERR_DEVICE;
        goto error;
    } catch (...) {
        copy_msg(err, err_len, "unknown C++ exception");
        rc = EP_ERR_DEVICE;
        goto error;
    }
    return EP_OK;
error:
    if (rc == EP_ERR_UNSUPPORTED)
        copy_msg(err, err_len, "symbol not loaded (call torchshim_load)");
    return rc;
}
