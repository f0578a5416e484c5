// A fake libtorch that counts synchronize calls (built by tests/test_torchshim.py).
// The functions are real C++ in namespaces torch::cuda / torch::mps, so g++ gives
// them exactly libtorch's mangled names (_ZN5torch4cuda11synchronizeEl, ...).
#include <cstdint>

extern "C" {
// Read through ctypes: how often each synchronize ran, and the last cuda index.
long long ep_fake_cuda_calls = 0;
long long ep_fake_mps_calls = 0;
long long ep_fake_last_index = -100;
}

namespace torch {
namespace cuda {
void synchronize(std::int64_t device_index)
{
    ep_fake_cuda_calls++;
    ep_fake_last_index = device_index;
}
}  // namespace cuda
namespace mps {
void synchronize()
{
    ep_fake_mps_calls++;
}
}  // namespace mps
}  // namespace torch
