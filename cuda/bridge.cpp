// Shared pieces of the C++ bridge: error passing and device facts for `lcm info`.
#include "bridge.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime.h>

#include <cstring>

namespace lcm {
static thread_local std::string last_error;

void set_last_error(const std::string& msg) { last_error = msg; }

int kernel_dtype(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return 0;
  if (t.scalar_type() == at::kBFloat16) return 1;
  TORCH_CHECK(false, "unsupported dtype ", t.scalar_type(), " (the kernels take float32 or bfloat16)");
}

at::Tensor rows_ready(const at::Tensor& t) {
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t i = 0; ok && i + 1 < t.dim(); ++i) ok = t.stride(i) % 8 == 0 || t.size(i) == 1;
  return ok ? t : t.contiguous();
}

void check_path(const char* op, int path, int paths, bool needs_hopper, const at::Tensor& t) {
  TORCH_CHECK(path >= 0 && path < paths, op, ": kernel path ", path, " unknown (0..", paths - 1,
              ")");
  if (needs_hopper && t.is_cuda()) {
    const int major = at::cuda::getDeviceProperties(t.device().index())->major;
    TORCH_CHECK(major == 9, op, ": kernel path ", path, " needs a Hopper GPU (sm_90), not sm_",
                major, "x");
  }
}
}  // namespace lcm

extern "C" {

const char* lcm_last_error() { return lcm::last_error.c_str(); }

// Compute capability of device `index` as 10 * major + minor, or -1 when it cannot be read.
int lcm_cuda_capability(int index) {
  try {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(index);
    return 10 * p->major + p->minor;
  } catch (...) {
    return -1;
  }
}

// CUDA runtime version as 1000*major + 10*minor, or -1 when the runtime cannot be queried.
int lcm_cuda_runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : -1;
}

// Name, compute capability, SM count and memory of device `index` into `buf`.
int lcm_cuda_device_describe(int index, char* buf, int len) {
  return lcm::guarded("device_describe", [&] {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(index);
    snprintf(buf, len, "%s (sm_%d%d, %d SMs, %.1f GiB)", p->name, p->major, p->minor,
             p->multiProcessorCount, p->totalGlobalMem / 1073741824.0);
  });
}

// Peak bytes allocated through PyTorch's caching allocator on `device` since the start
// (or the last reset), or -1 on failure.
int64_t lcm_cuda_peak_allocated(int device) {
  try {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (...) {
    return -1;
  }
}

// A page-locked copy of host tensor `t` (through libtorch's caching host allocator, so a
// pending asynchronous copy from it keeps its block alive). tch's pin_memory passes a device
// argument libtorch now warns about on every call.
int lcm_pin_memory(const at::Tensor* t, at::Tensor** out) {
  return lcm::guarded("pin_memory", [&] { *out = new at::Tensor(t->pin_memory()); });
}

// An uninitialised page-locked host tensor of `ndim` sizes and `like`'s dtype, allocated
// pinned (no pageable buffer to copy from first).
int lcm_pinned_empty(const at::Tensor* like, const int64_t* sizes, int ndim, at::Tensor** out) {
  return lcm::guarded("pinned_empty", [&] {
    auto opts = at::TensorOptions().dtype(like->scalar_type()).device(at::kCPU).pinned_memory(true);
    *out = new at::Tensor(at::empty(at::IntArrayRef(sizes, ndim), opts));
  });
}

// Starts a new peak for lcm_cuda_peak_allocated on `device`; 0 on success.
int lcm_cuda_reset_peak(int device) {
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Returns the caching allocator's unused blocks to the driver (after a device
// synchronisation); 0 on success.
int lcm_cuda_empty_cache() {
  try {
    if (cudaDeviceSynchronize() != cudaSuccess) return -1;
    c10::cuda::CUDACachingAllocator::emptyCache();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Free and total bytes of device `device` (cudaMemGetInfo), 0 on success. Memory the caching
// allocator holds but does not use counts as used here, as the driver sees it.
int lcm_cuda_mem_info(int device, int64_t* free_bytes, int64_t* total_bytes) {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return -1;
  if (cudaSetDevice(device) != cudaSuccess) return -1;
  size_t f = 0, t = 0;
  cudaError_t rc = cudaMemGetInfo(&f, &t);
  cudaSetDevice(previous);
  if (rc != cudaSuccess) return -1;
  *free_bytes = static_cast<int64_t>(f);
  *total_bytes = static_cast<int64_t>(t);
  return 0;
}

// CUDA events on the current stream, for benchmarks (`lcm bench kernels`). An event is
// created with timing enabled; elapsed_ms synchronises on `end` and returns milliseconds
// from `start` to `end`, or a negative value on failure.
void* lcm_cuda_event_new() {
  cudaEvent_t e = nullptr;
  return cudaEventCreate(&e) == cudaSuccess ? static_cast<void*>(e) : nullptr;
}

int lcm_cuda_event_record(void* e) {
  return static_cast<int>(
      cudaEventRecord(static_cast<cudaEvent_t>(e), at::cuda::getCurrentCUDAStream()));
}

float lcm_cuda_event_elapsed_ms(void* start, void* end) {
  float ms = 0.f;
  if (cudaEventSynchronize(static_cast<cudaEvent_t>(end)) != cudaSuccess) return -1.f;
  if (cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)) !=
      cudaSuccess)
    return -1.f;
  return ms;
}

void lcm_cuda_event_free(void* e) {
  if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
}

}  // extern "C"
