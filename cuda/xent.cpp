// Autograd bridge for the fused cross-entropy kernels in xent.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "bridge.h"

extern "C" {
int lcm_xent_threads(int dtype, int v);
int lcm_xent_fwd_launch(int dtype, const void* logits, const int64_t* targets, float* loss,
                        float* lse, int64_t rows, int v, int threads, int grid, cudaStream_t s);
int lcm_xent_bwd_launch(int dtype, const void* logits, const int64_t* targets, const float* lse,
                        const float* dloss, int64_t dloss_stride, void* dlogits, int64_t rows,
                        int v, int vectorized, int threads, int grid, cudaStream_t s);
}

namespace {

// One block per row: rows are long enough (tens of KB) that a block's start costs little,
// and the kernels loop over rows should there be more than this.
int grid_for(int64_t rows) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(1) << 30)));
}

// Messages carry no op name: guarded() prefixes the entry point's.
void check_inputs(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.is_cuda() && targets.is_cuda(),
              "tensors must be on a CUDA device (logits on ", logits.device(),
              ", targets on ", targets.device(), ")");
  TORCH_CHECK(logits.device() == targets.device(), "logits on ", logits.device(),
              " but targets on ", targets.device());
  TORCH_CHECK(logits.dim() == 2, "logits must be (N, V), got shape ",
              logits.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0),
              "targets of shape ", targets.sizes(), " do not match logits ",
              logits.sizes());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "targets must be int64, got ",
              targets.scalar_type());
  TORCH_CHECK(logits.size(1) > 0 && logits.size(1) <= INT32_MAX,
              "vocabulary size ", logits.size(1), " out of range (1 to 2^31-1)");
}

// Returns (loss, lse), both fp32 of shape (N,).
std::tuple<at::Tensor, at::Tensor> forward_raw(const at::Tensor& logits_in,
                                               const at::Tensor& targets_in) {
  check_inputs(logits_in, targets_in);
  c10::cuda::CUDAGuard guard(logits_in.device());
  auto logits = logits_in.contiguous();
  auto targets = targets_in.contiguous();
  const int64_t rows = logits.size(0);
  const int v = static_cast<int>(logits.size(1));
  auto loss = at::empty({rows}, logits.options().dtype(at::kFloat));
  auto lse = at::empty({rows}, logits.options().dtype(at::kFloat));
  if (rows == 0) return {loss, lse};
  const int dtype = lcm::kernel_dtype(logits);
  LCM_CHECK_LAUNCH(
      lcm_xent_fwd_launch(dtype, logits.data_ptr(), targets.data_ptr<int64_t>(),
                          loss.data_ptr<float>(), lse.data_ptr<float>(), rows, v,
                          lcm_xent_threads(dtype, v), grid_for(rows),
                          at::cuda::getCurrentCUDAStream()),
      "cross_entropy forward launch");
  return {loss, lse};
}

// dlogits for saved logits, targets and lse and the incoming gradient of the loss (N,).
at::Tensor backward_raw(const at::Tensor& logits_in, const at::Tensor& targets_in,
                        const at::Tensor& lse_in, const at::Tensor& dloss_in) {
  check_inputs(logits_in, targets_in);
  c10::cuda::CUDAGuard guard(logits_in.device());
  auto logits = logits_in.contiguous();
  auto targets = targets_in.contiguous();
  const int64_t rows = logits.size(0);
  const int v = static_cast<int>(logits.size(1));
  TORCH_CHECK(lse_in.dim() == 1 && lse_in.size(0) == rows && lse_in.scalar_type() == at::kFloat &&
                  lse_in.device() == logits.device(),
              "cross_entropy backward: lse ", lse_in.sizes(), " ", lse_in.scalar_type(),
              " on ", lse_in.device(), " does not match logits ", logits.sizes(), " on ",
              logits.device(), " (want fp32 of shape (N,))");
  TORCH_CHECK(dloss_in.dim() == 1 && dloss_in.size(0) == rows &&
                  dloss_in.device() == logits.device(),
              "cross_entropy backward: gradient ", dloss_in.sizes(), " on ", dloss_in.device(),
              " does not match logits ", logits.sizes(), " on ", logits.device());
  auto lse = lse_in.contiguous();
  // Not made contiguous: the gradient of a sum or mean arrives expanded (stride 0), and the
  // kernel reads it with its stride instead of a materialised copy.
  auto dloss = dloss_in.to(at::kFloat);
  auto dlogits = at::empty_like(logits);
  if (rows == 0) return dlogits;
  const int dtype = lcm::kernel_dtype(logits);
  const auto offset = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16;
  };
  const int vectorized = offset(logits) == offset(dlogits);
  LCM_CHECK_LAUNCH(
      lcm_xent_bwd_launch(dtype, logits.data_ptr(), targets.data_ptr<int64_t>(),
                          lse.data_ptr<float>(), dloss.data_ptr<float>(), dloss.stride(0),
                          dlogits.data_ptr(), rows, v, vectorized, lcm_xent_threads(dtype, v),
                          grid_for(rows), at::cuda::getCurrentCUDAStream()),
      "cross_entropy backward launch");
  return dlogits;
}

struct XentFunction : public torch::autograd::Function<XentFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& targets) {
    auto x = logits.contiguous();
    auto t = targets.contiguous();
    auto [loss, lse] = forward_raw(x, t);
    // The logits themselves are saved (no fp32 copy, no log-probabilities): the backward
    // recomputes the softmax from them and lse in its one pass.
    ctx->save_for_backward({x, t, lse});
    return loss;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    return {backward_raw(saved[0], saved[1], saved[2], grads[0]), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Per-row cross-entropy loss (fp32, shaped like targets) of logits (..., V) against int64
// targets (...) with ignore index -100, differentiable in the logits.
int lcm_xent(const at::Tensor* logits, const at::Tensor* targets, at::Tensor** loss) {
  return lcm::guarded("cross_entropy", [&] {
    TORCH_CHECK(logits->dim() >= 1 && targets->dim() == logits->dim() - 1 &&
                    targets->sizes() == logits->sizes().slice(0, logits->dim() - 1),
                "targets of shape ", targets->sizes(), " do not match logits ", logits->sizes(),
                " (want the logits' shape without its last axis)");
    // The flattening sits outside the Function so that autograd restores the logits' shape.
    const int64_t v = logits->size(-1);
    auto flat = XentFunction::apply(logits->reshape({-1, v}), targets->reshape({-1}));
    *loss = new at::Tensor(flat.view(targets->sizes()));
  });
}

// The kernels alone, without autograd, on (N, V) logits: for benchmarks that time exactly
// the kernels.
int lcm_xent_forward_raw(const at::Tensor* logits, const at::Tensor* targets, at::Tensor** loss,
                         at::Tensor** lse) {
  return lcm::guarded("cross_entropy_forward_raw", [&] {
    auto [l, s] = forward_raw(*logits, *targets);
    *loss = new at::Tensor(l);
    *lse = new at::Tensor(s);
  });
}

int lcm_xent_backward_raw(const at::Tensor* logits, const at::Tensor* targets,
                          const at::Tensor* lse, const at::Tensor* dloss, at::Tensor** dlogits) {
  return lcm::guarded("cross_entropy_backward_raw", [&] {
    *dlogits = new at::Tensor(backward_raw(*logits, *targets, *lse, *dloss));
  });
}

}  // extern "C"
