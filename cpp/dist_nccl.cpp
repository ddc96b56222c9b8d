// The NCCL backend of c10d for cpp/dist.cpp, in a file of its own because its headers need
// the CUDA toolkit's (built only when set-up installed the CUDA compiler).
#define USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

c10::intrusive_ptr<c10d::Backend> lcm_make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                        int rank, int world, int64_t timeout_ms,
                                                        int device) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = std::chrono::milliseconds(timeout_ms);
  auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
  // Bound to one device, the communicator is created now rather than at the first
  // collective, so a rank that cannot join fails here.
  nccl->setBoundDeviceId(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  nccl->eagerConnectSingleDevice(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  return nccl;
}
