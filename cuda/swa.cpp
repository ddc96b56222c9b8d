// Autograd bridge for the sliding-window / bidirectional attention kernels in swa_fwd.cu
// and swa_bwd.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "attn_path.h"
#include "bridge.h"

extern "C" {
int lcm_swa_fwd_launch(const void* q, const void* k, const void* v, const float* slopes, void* o,
                       float* lse, const int64_t* strides, int B, int Hq, int Hkv, int T, int D,
                       int window, int causal, float scale, int path, cudaStream_t s);
int lcm_swa_bwd_launch(const void* q, const void* k, const void* v, const float* slopes,
                       const void* o, const float* lse, const void* dout, float* di, void* dq,
                       void* dk, void* dv, const int64_t* strides, int B, int Hq, int Hkv, int T,
                       int D, int window, int causal, float scale, int path,
                       cudaStream_t s);
}

namespace {

using lcm::rows_ready;

struct Shape {
  int B, Hq, Hkv, T, D;
};

Shape check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& slopes) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "swa: tensors must be on a CUDA device");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes(), "swa: q ", q.sizes(),
              " must be (B, Hq, T, D), k/v ", k.sizes(), " (B, Hkv, T, D)");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16,
              "swa: the kernel takes bfloat16 q, k, v (got ", q.scalar_type(), ")");
  Shape s{int(q.size(0)), int(q.size(1)), int(k.size(1)), int(q.size(2)), int(q.size(3))};
  TORCH_CHECK(k.size(0) == s.B && k.size(2) == s.T && k.size(3) == s.D && s.Hkv > 0 &&
                  s.Hq % s.Hkv == 0,
              "swa: q ", q.sizes(), " and k ", k.sizes(), " disagree");
  TORCH_CHECK(s.D == 64 || s.D == 128, "swa: head dim ", s.D, " unsupported (64 or 128)");
  TORCH_CHECK(s.T >= 1 && s.B >= 1, "swa: empty input ", q.sizes());
  TORCH_CHECK(q.size(2) < INT32_MAX / 2 && int64_t(s.B) * s.Hq < INT32_MAX,
              "swa: input too large ", q.sizes());
  if (slopes.defined())
    TORCH_CHECK(slopes.is_cuda() && slopes.scalar_type() == at::kFloat && slopes.dim() == 1 &&
                    slopes.size(0) == s.Hq && slopes.is_contiguous(),
                "swa: ALiBi slopes must be a contiguous float (Hq,) CUDA tensor, got ",
                slopes.sizes());
  return s;
}

void fill_strides(int64_t* st, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (int i = 0; i < 3; ++i) st[i] = q.stride(i);
  for (int i = 0; i < 3; ++i) st[3 + i] = k.stride(i);
  for (int i = 0; i < 3; ++i) st[6 + i] = v.stride(i);
}

struct Prepared {
  at::Tensor q, k, v, slopes;  // slopes undefined without ALiBi
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor* slopes) {
  // A tensor of no elements stands for "no ALiBi" (autograd's apply takes no undefined
  // tensor arguments).
  at::Tensor m;
  if (slopes != nullptr && slopes->defined() && slopes->numel() > 0)
    m = slopes->detach().to(at::kFloat).contiguous();
  return {rows_ready(q), rows_ready(k), rows_ready(v), m};
}

const float* slopes_ptr(const Prepared& in) {
  return in.slopes.defined() ? in.slopes.data_ptr<float>() : nullptr;
}

// (o, lse): o (B, Hq, T, D) bf16, lse (B, Hq, T) fp32 (log2 of the softmax denominator).
std::tuple<at::Tensor, at::Tensor> forward_raw(const Prepared& in, int64_t window, bool causal,
                                               double scale, int path) {
  const Shape s = check_inputs(in.q, in.k, in.v, in.slopes);
  lcm::check_path("swa", path, lcm::kAttnPaths, path != lcm::kPathMma, in.q);
  TORCH_CHECK(scale > 0, "swa: the kernel takes a positive scale (got ", scale, ")");
  TORCH_CHECK(window >= 0, "swa: window ", window, " < 0");
  c10::cuda::CUDAGuard guard(in.q.device());
  auto o = at::empty({s.B, s.Hq, s.T, s.D}, in.q.options());
  auto lse = at::empty({s.B, s.Hq, s.T}, in.q.options().dtype(at::kFloat));
  int64_t st[9];
  fill_strides(st, in.q, in.k, in.v);
  const int w = int(std::min<int64_t>(window, INT32_MAX / 2));
  LCM_CHECK_LAUNCH(lcm_swa_fwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                                      slopes_ptr(in), o.data_ptr(), lse.data_ptr<float>(), st,
                                      s.B, s.Hq, s.Hkv, s.T, s.D, w, causal ? 1 : 0, float(scale), path,
                                      at::cuda::getCurrentCUDAStream()),
                   "swa forward launch");
  return {o, lse};
}

// (dq, dk, dv) for saved inputs, output, lse and the incoming gradient of o.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_raw(const Prepared& in,
                                                            const at::Tensor& o_in,
                                                            const at::Tensor& lse,
                                                            const at::Tensor& dout_in,
                                                            int64_t window, bool causal,
                                                            double scale, int path) {
  const Shape s = check_inputs(in.q, in.k, in.v, in.slopes);
  lcm::check_path("swa", path, lcm::kAttnPaths, path != lcm::kPathMma, in.q);
  c10::cuda::CUDAGuard guard(in.q.device());
  auto dout = dout_in.to(at::kBFloat16).contiguous();
  auto o = o_in.contiguous();
  TORCH_CHECK(dout.sizes() == in.q.sizes() && o.sizes() == in.q.sizes(),
              "swa backward: gradient ", dout.sizes(), " does not match q ", in.q.sizes());
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == at::kFloat && lse.dim() == 3 &&
                  lse.size(0) == s.B && lse.size(1) == s.Hq && lse.size(2) == s.T,
              "swa backward: lse ", lse.sizes(), " must be contiguous float (B, Hq, T)");
  auto dq = at::empty({s.B, s.Hq, s.T, s.D}, in.q.options());
  auto dk = at::empty({s.B, s.Hkv, s.T, s.D}, in.k.options());
  auto dv = at::empty_like(dk);
  auto di = at::empty({s.B, s.Hq, s.T}, in.q.options().dtype(at::kFloat));
  int64_t st[9];
  fill_strides(st, in.q, in.k, in.v);
  const int w = int(std::min<int64_t>(window, INT32_MAX / 2));
  LCM_CHECK_LAUNCH(lcm_swa_bwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                                      slopes_ptr(in), o.data_ptr(), lse.data_ptr<float>(),
                                      dout.data_ptr(), di.data_ptr<float>(), dq.data_ptr(),
                                      dk.data_ptr(), dv.data_ptr(), st, s.B, s.Hq, s.Hkv, s.T, s.D,
                                      w, causal ? 1 : 0, float(scale), path,
                                      at::cuda::getCurrentCUDAStream()),
                   "swa backward launch");
  return {dq, dk, dv};
}

struct SwaFunction : public torch::autograd::Function<SwaFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v, const at::Tensor& slopes,
                            int64_t window, bool causal, double scale, int64_t path) {
    Prepared in = prepare(q, k, v, &slopes);
    auto [o, lse] = forward_raw(in, window, causal, scale, int(path));
    ctx->save_for_backward({in.q, in.k, in.v, o, lse});
    if (in.slopes.defined()) ctx->saved_data["slopes"] = in.slopes;
    ctx->saved_data["window"] = window;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["path"] = path;
    return o;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor slopes;
    if (ctx->saved_data.count("slopes")) slopes = ctx->saved_data["slopes"].toTensor();
    Prepared in{saved[0], saved[1], saved[2], slopes};
    auto [dq, dk, dv] = backward_raw(in, saved[3], saved[4], grads[0],
                                     ctx->saved_data["window"].toInt(),
                                     ctx->saved_data["causal"].toBool(),
                                     ctx->saved_data["scale"].toDouble(),
                                     int(ctx->saved_data["path"].toInt()));
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// o = attention(q, k, v): causal sliding window (keys t - window ..= t) with optional ALiBi
// slopes (null for none), or bidirectional (causal = 0; window and slopes ignored).
// Differentiable in q, k, v (the slopes are constants). path: an AttnPath (attn_path.h),
// for every entry point below.
int lcm_swa(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
            const at::Tensor* slopes, int64_t window, int causal, double scale, int path,
            at::Tensor** o) {
  return lcm::guarded("swa", [&] {
    at::Tensor m = slopes != nullptr && causal ? slopes->detach().to(at::kFloat).contiguous()
                                               : at::empty({0}, q->options().dtype(at::kFloat));
    *o = new at::Tensor(SwaFunction::apply(*q, *k, *v, m, window, causal != 0, scale, int64_t(path)));
  });
}

// The kernels alone, without autograd: for benchmarks that time exactly the kernels.
int lcm_swa_forward_raw(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                        const at::Tensor* slopes, int64_t window, int causal, double scale,
                        int path, at::Tensor** o, at::Tensor** lse) {
  return lcm::guarded("swa_forward_raw", [&] {
    auto [oo, ll] =
        forward_raw(prepare(*q, *k, *v, causal ? slopes : nullptr), window, causal != 0, scale,
                    path);
    *o = new at::Tensor(oo);
    *lse = new at::Tensor(ll);
  });
}

int lcm_swa_backward_raw(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         const at::Tensor* slopes, const at::Tensor* o, const at::Tensor* lse,
                         const at::Tensor* dout, int64_t window, int causal, double scale,
                         int path, at::Tensor** dq, at::Tensor** dk, at::Tensor** dv) {
  return lcm::guarded("swa_backward_raw", [&] {
    auto [a, b, c] = backward_raw(prepare(*q, *k, *v, causal ? slopes : nullptr), *o, *lse,
                                  *dout, window, causal != 0, scale, path);
    *dq = new at::Tensor(a);
    *dk = new at::Tensor(b);
    *dv = new at::Tensor(c);
  });
}

}  // extern "C"
