// Autograd bridge for the HSA kernels in hsa.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "bridge.h"

extern "C" {
int lcm_hsa_fwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, void* o, float* lse, int N, int L, int Hq, int H,
                       int K, int S, int C, int D, float scale, int one, cudaStream_t s);
int lcm_hsa_bwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, const void* dout, const float* lse, void* dq,
                       float* dk, float* dv, float* dw, int N, int L, int Hq, int H, int K,
                       int S, int C, int D, float scale, int one, cudaStream_t s);
}

namespace {

struct Shape {
  int N, L, Hq, H, K, S, C, D;
};

Shape check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& w, const at::Tensor& idx, int64_t chunk) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda() && w.is_cuda() && idx.is_cuda(),
              "hsa: tensors must be on a CUDA device");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && w.dim() == 4,
              "hsa: q ", q.sizes(), " must be (N, L, Hq, D), k/v ", k.sizes(),
              " (N, L_kv, H, D), weights ", w.sizes(), " (N, L, H, K)");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16,
              "hsa: the kernel takes bfloat16 q, k, v (got ", q.scalar_type(), ")");
  TORCH_CHECK(idx.scalar_type() == at::kLong, "hsa: indices must be int64");
  Shape s{int(q.size(0)), int(q.size(1)), int(q.size(2)), int(k.size(2)),
          int(w.size(3)), int(chunk), 0, int(q.size(3))};
  TORCH_CHECK(chunk >= 1 && chunk <= 64 && k.size(1) % chunk == 0, "hsa: chunk size ", chunk,
              " unsupported (1..64, dividing L_kv = ", k.size(1), ")");
  s.C = int(k.size(1) / chunk);
  TORCH_CHECK(k.size(0) == s.N && k.size(3) == s.D && s.H > 0 && s.Hq % s.H == 0 &&
                  s.Hq / s.H <= 32,
              "hsa: q ", q.sizes(), " and k ", k.sizes(), " disagree (or G > 32)");
  TORCH_CHECK(w.sizes() == at::IntArrayRef({s.N, s.L, s.H, s.K}) && idx.sizes() == w.sizes(),
              "hsa: weights ", w.sizes(), " and indices ", idx.sizes(), " must be (N, L, H, K)");
  TORCH_CHECK(s.D == 64 || s.D == 128, "hsa: head dim ", s.D, " unsupported (64 or 128)");
  TORCH_CHECK(s.K >= 1 && s.K <= 32, "hsa: K = ", s.K, " unsupported (1..32)");
  TORCH_CHECK(int64_t(s.N) * s.L * s.H < INT32_MAX, "hsa: too many (token, head) pairs");
  return s;
}

struct Prepared {
  at::Tensor q, k, v, w, idx;
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& w, const at::Tensor& idx) {
  return {q.contiguous(), k.contiguous(), v.contiguous(), w.to(at::kFloat).contiguous(),
          idx.to(at::kLong).contiguous()};
}

// (o, lse): o (N, L, Hq, D) bf16, lse (N, L, Hq, K) fp32 (natural log).
std::tuple<at::Tensor, at::Tensor> forward_raw(const Prepared& in, int64_t chunk, double scale,
                                               bool one) {
  const Shape s = check_inputs(in.q, in.k, in.v, in.w, in.idx, chunk);
  c10::cuda::CUDAGuard guard(in.q.device());
  auto o = at::empty({s.N, s.L, s.Hq, s.D}, in.q.options());
  auto lse = at::empty({s.N, s.L, s.Hq, s.K}, in.q.options().dtype(at::kFloat));
  LCM_CHECK_LAUNCH(lcm_hsa_fwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                                      in.w.data_ptr<float>(), in.idx.data_ptr<int64_t>(),
                                      o.data_ptr(), lse.data_ptr<float>(), s.N, s.L, s.Hq, s.H,
                                      s.K, s.S, s.C, s.D, float(scale), one ? 1 : 0,
                                      at::cuda::getCurrentCUDAStream()),
                   "hsa forward launch");
  return {o, lse};
}

// (dq, dk, dv, dw): dk/dv accumulate in fp32 scratch by atomics, returned in bf16.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_raw(
    const Prepared& in, const at::Tensor& lse, const at::Tensor& dout_in, int64_t chunk,
    double scale, bool one) {
  const Shape s = check_inputs(in.q, in.k, in.v, in.w, in.idx, chunk);
  c10::cuda::CUDAGuard guard(in.q.device());
  auto dout = dout_in.to(at::kBFloat16).contiguous();
  TORCH_CHECK(dout.sizes() == in.q.sizes(), "hsa backward: gradient ", dout.sizes(),
              " does not match q ", in.q.sizes());
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.N, s.L, s.Hq, s.K}) &&
                  lse.scalar_type() == at::kFloat && lse.is_contiguous(),
              "hsa backward: lse ", lse.sizes(), " must be (N, L, Hq, K) fp32");
  auto dq = at::empty({s.N, s.L, s.Hq, s.D}, in.q.options());
  auto dk = at::zeros(in.k.sizes(), in.q.options().dtype(at::kFloat));
  auto dv = at::zeros(in.k.sizes(), in.q.options().dtype(at::kFloat));
  auto dw = at::empty({s.N, s.L, s.H, s.K}, in.q.options().dtype(at::kFloat));
  LCM_CHECK_LAUNCH(
      lcm_hsa_bwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                         in.w.data_ptr<float>(), in.idx.data_ptr<int64_t>(), dout.data_ptr(),
                         lse.data_ptr<float>(), dq.data_ptr(), dk.data_ptr<float>(),
                         dv.data_ptr<float>(), dw.data_ptr<float>(), s.N, s.L, s.Hq, s.H, s.K,
                         s.S, s.C, s.D, float(scale), one ? 1 : 0,
                         at::cuda::getCurrentCUDAStream()),
      "hsa backward launch");
  return {dq, dk.to(at::kBFloat16), dv.to(at::kBFloat16), dw};
}

struct HsaFunction : public torch::autograd::Function<HsaFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                            const at::Tensor& idx, int64_t chunk, double scale, bool one) {
    Prepared in = prepare(q, k, v, w, idx);
    auto [o, lse] = forward_raw(in, chunk, scale, one);
    ctx->save_for_backward({in.q, in.k, in.v, in.w, in.idx, lse});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["one"] = one;
    return o;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    Prepared in{saved[0], saved[1], saved[2], saved[3], saved[4]};
    auto [dq, dk, dv, dw] =
        backward_raw(in, saved[5], grads[0], ctx->saved_data["chunk"].toInt(),
                     ctx->saved_data["scale"].toDouble(), ctx->saved_data["one"].toBool());
    return {dq, dk, dv, dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// o = HSA(q, k, v, weights, indices), differentiable in q, k, v and weights.
int lcm_hsa(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v, const at::Tensor* w,
            const at::Tensor* idx, int64_t chunk, double scale, int one, at::Tensor** o) {
  return lcm::guarded("hsa", [&] {
    // The cast sits outside the Function so that autograd carries dw back to w's dtype.
    auto wf = w->to(at::kFloat);
    *o = new at::Tensor(HsaFunction::apply(*q, *k, *v, wf, *idx, chunk, scale, one != 0));
  });
}

int lcm_hsa_forward_raw(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                        const at::Tensor* w, const at::Tensor* idx, int64_t chunk,
                        double scale, int one, at::Tensor** o, at::Tensor** lse) {
  return lcm::guarded("hsa_forward_raw", [&] {
    auto [oo, ll] = forward_raw(prepare(*q, *k, *v, *w, *idx), chunk, scale, one != 0);
    *o = new at::Tensor(oo);
    *lse = new at::Tensor(ll);
  });
}

int lcm_hsa_backward_raw(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         const at::Tensor* w, const at::Tensor* idx, const at::Tensor* lse,
                         const at::Tensor* dout, int64_t chunk, double scale, int one,
                         at::Tensor** dq, at::Tensor** dk, at::Tensor** dv, at::Tensor** dw) {
  return lcm::guarded("hsa_backward_raw", [&] {
    auto [a, b, c, d] =
        backward_raw(prepare(*q, *k, *v, *w, *idx), *lse, *dout, chunk, scale, one != 0);
    *dq = new at::Tensor(a);
    *dk = new at::Tensor(b);
    *dv = new at::Tensor(c);
    *dw = new at::Tensor(d);
  });
}

}  // extern "C"
