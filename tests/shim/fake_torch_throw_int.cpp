// A fake libtorch that throws something that is not a std::exception: the shim's
// catch (...) must still turn it into an error code.
#include <cstdint>

namespace torch {
namespace cuda {
void synchronize(std::int64_t device_index)
{
    throw 42;
}
}  // namespace cuda
}  // namespace torch
