// A fake libtorch whose synchronize functions throw, as libtorch does when the
// device is gone (c10::Error derives from std::exception like this one).
#include <cstdint>
#include <stdexcept>

extern "C" {
long long ep_fake_throws = 0;
}

namespace torch {
namespace cuda {
void synchronize(std::int64_t device_index)
{
    ep_fake_throws++;
    throw std::runtime_error("fake cuda device lost\nException raised from a fake backtrace line");
}
}  // namespace cuda
namespace mps {
void synchronize()
{
    ep_fake_throws++;
    throw std::runtime_error("fake mps device lost");
}
}  // namespace mps
}  // namespace torch
