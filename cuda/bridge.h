// The C ABI between Rust (src/cuda/ffi.rs) and the C++ autograd bridges in this folder.
//
// Tensors cross as `at::Tensor*` (what tch calls `*mut C_tensor`). A function that
// returns tensors allocates them with `new at::Tensor(...)`; Rust takes ownership with
// `Tensor::from_ptr` and frees them. Every entry point returns 0 on success and non-zero
// on failure, with the message available from lcm_last_error() on the same thread: no
// C++ exception ever crosses into Rust.
#pragma once
#include <ATen/ATen.h>
#include <string>

namespace lcm {
void set_last_error(const std::string& msg);

// Runs `body`, turning any exception into an error code and lcm_last_error() text.
template <typename F> int guarded(const char* op, F&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    set_last_error(std::string(op) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_last_error(std::string(op) + ": " + e.what());
  } catch (...) {
    set_last_error(std::string(op) + ": unknown C++ exception");
  }
  return 1;
}

// dtype codes understood by the kernels (cuda/common.cuh).
int kernel_dtype(const at::Tensor& t);

// The attention kernels read rows of D contiguous bf16 with 16-byte copies: the last
// dimension must be dense, every other stride a multiple of 8 elements and the base
// 16-byte aligned. Other layouts are copied to contiguous ones.
at::Tensor rows_ready(const at::Tensor& t);

// Checks that `path` is one of an op's `paths` (attn_path.h) and, where `needs_hopper`,
// that t's device is a Hopper GPU (sm_90), the only one with the wgmma and TMA kernels.
void check_path(const char* op, int path, int paths, bool needs_hopper, const at::Tensor& t);
}  // namespace lcm

// Turns a CUDA launch status into an exception that guarded() reports.
#define LCM_CHECK_LAUNCH(call, what)                                                        \
  do {                                                                                      \
    int status_ = (call);                                                                   \
    TORCH_CHECK(status_ == 0, what, " failed: ", cudaGetErrorString((cudaError_t)status_)); \
  } while (0)

extern "C" {
const char* lcm_last_error();
}
