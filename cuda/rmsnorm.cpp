// Autograd bridge for the fused RMSNorm kernels in rmsnorm.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "bridge.h"

extern "C" {
int lcm_rmsnorm_threads(int dtype, int d, int aligned);
int lcm_rmsnorm_fwd_launch(int dtype, const void* x, const void* w, void* y, float* rstd,
                           int64_t rows, int d, float eps, int aligned, int grid,
                           cudaStream_t s);
int lcm_rmsnorm_bwd_launch(int dtype, const void* x, const void* w, const float* rstd,
                           const void* dy, void* dx, float* dw_partial, int64_t rows, int d,
                           int aligned, int grid, cudaStream_t s);
}

namespace {

bool aligned16(std::initializer_list<const at::Tensor*> ts) {
  for (auto* t : ts)
    if (reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) return false;
  return true;
}

// Blocks that stay resident together: enough to fill every SM, never more than rows.
int grid_for(int64_t rows, int threads, int per_sm_cap) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int per_sm = std::max(1, std::min(per_sm_cap, 2048 / threads));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(sms) * per_sm)));
}

void check_inputs(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.is_cuda() && w.is_cuda(), "rms_norm: tensors must be on a CUDA device");
  TORCH_CHECK(x.dim() >= 1 && w.dim() == 1 && x.size(-1) == w.size(0),
              "rms_norm: weight of shape ", w.sizes(), " does not match input ", x.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rms_norm: weight dtype ", w.scalar_type(),
              " differs from input dtype ", x.scalar_type());
  TORCH_CHECK(x.size(-1) <= INT32_MAX, "rms_norm: row too long");
}

// Returns (y, rstd) with y shaped like x and rstd fp32 of shape (rows,).
std::tuple<at::Tensor, at::Tensor> forward_raw(const at::Tensor& x_in, const at::Tensor& w_in,
                                               double eps) {
  check_inputs(x_in, w_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto w = w_in.contiguous();
  const int d = static_cast<int>(x.size(-1));
  const int64_t rows = d == 0 ? 0 : x.numel() / d;
  auto y = at::empty_like(x);
  auto rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, rstd};
  const int dtype = lcm::kernel_dtype(x);
  const int aligned = aligned16({&x, &w, &y});
  const int threads = lcm_rmsnorm_threads(dtype, d, aligned);
  TORCH_CHECK(threads > 0, "rms_norm: row length ", d, " is too long for the kernel");
  const int grid = grid_for(rows, threads, 32);
  LCM_CHECK_LAUNCH(lcm_rmsnorm_fwd_launch(dtype, x.data_ptr(), w.data_ptr(), y.data_ptr(),
                                          rstd.data_ptr<float>(), rows, d, float(eps), aligned,
                                          grid, at::cuda::getCurrentCUDAStream()),
                   "rms_norm forward launch");
  return {y, rstd};
}

// Returns (dx, dw) for saved x, w, rstd and incoming dy.
std::tuple<at::Tensor, at::Tensor> backward_raw(const at::Tensor& x, const at::Tensor& w,
                                                const at::Tensor& rstd, const at::Tensor& dy_in) {
  c10::cuda::CUDAGuard guard(x.device());
  auto dy = dy_in.contiguous();
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "rms_norm backward: gradient ", dy.sizes(), " ", dy.scalar_type(),
              " does not match input ", x.sizes(), " ", x.scalar_type());
  const int d = static_cast<int>(x.size(-1));
  const int64_t rows = d == 0 ? 0 : x.numel() / d;
  auto dx = at::empty_like(x);
  if (rows == 0) return {dx, at::zeros_like(w)};
  const int dtype = lcm::kernel_dtype(x);
  const int aligned = aligned16({&x, &w, &dy, &dx});
  const int threads = lcm_rmsnorm_threads(dtype, d, aligned);
  TORCH_CHECK(threads > 0, "rms_norm: row length ", d, " is too long for the kernel");
  // Each block writes one fp32 partial dw row that must be summed afterwards, so the grid
  // is capped; 16 blocks per SM (as many as fit for rows <= 1024 bf16 columns) keep enough
  // loads in flight, at a partial buffer of 132*16 rows (about 1% of the bytes moved at d=768).
  const int grid = grid_for(rows, threads, 16);
  auto partial = at::empty({grid, d}, x.options().dtype(at::kFloat));
  LCM_CHECK_LAUNCH(lcm_rmsnorm_bwd_launch(dtype, x.data_ptr(), w.data_ptr(),
                                          rstd.data_ptr<float>(), dy.data_ptr(), dx.data_ptr(),
                                          partial.data_ptr<float>(), rows, d, aligned, grid,
                                          at::cuda::getCurrentCUDAStream()),
                   "rms_norm backward launch");
  return {dx, partial.sum(0).to(w.scalar_type())};
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, double eps) {
    auto [y, rstd] = forward_raw(x, w, eps);
    ctx->save_for_backward({x.contiguous(), w.contiguous(), rstd});
    return y;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    auto [dx, dw] = backward_raw(saved[0], saved[1], saved[2], grads[0]);
    return {dx, dw, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// y = RMSNorm(x) * w over the last dimension, differentiable in x and w.
int lcm_rmsnorm(const at::Tensor* x, const at::Tensor* w, double eps, at::Tensor** y) {
  return lcm::guarded("rms_norm", [&] {
    // The cast sits outside the Function so that autograd carries dw back to w's dtype.
    auto wx = w->to(x->scalar_type());
    *y = new at::Tensor(RmsNormFunction::apply(*x, wx, eps));
  });
}

// The kernels alone, without autograd: for benchmarks that time exactly the kernels.
int lcm_rmsnorm_forward_raw(const at::Tensor* x, const at::Tensor* w, double eps, at::Tensor** y,
                            at::Tensor** rstd) {
  return lcm::guarded("rms_norm_forward_raw", [&] {
    auto [yy, rr] = forward_raw(*x, *w, eps);
    *y = new at::Tensor(yy);
    *rstd = new at::Tensor(rr);
  });
}

int lcm_rmsnorm_backward_raw(const at::Tensor* x, const at::Tensor* w, const at::Tensor* rstd,
                             const at::Tensor* dy, at::Tensor** dx, at::Tensor** dw) {
  return lcm::guarded("rms_norm_backward_raw", [&] {
    auto [a, b] = backward_raw(*x, *w, *rstd, *dy);
    *dx = new at::Tensor(a);
    *dw = new at::Tensor(b);
  });
}

}  // extern "C"
