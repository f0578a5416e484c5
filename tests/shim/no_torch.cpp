// A library that defines none of libtorch's synchronize symbols: the shim must
// report them missing (and the hooks use the Python fallback).
namespace not_torch {
int answer()
{
    return 42;
}
}  // namespace not_torch
