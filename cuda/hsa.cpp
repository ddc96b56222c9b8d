// Autograd bridge for the HSA kernels in hsa_fwd.cu and hsa_bwd.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "attn_path.h"
#include "bridge.h"

extern "C" {
int lcm_hsa_fwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, void* o, float* lse, int N, int L, int Hq, int H,
                       int K, int S, int C, int D, float scale, int one, int path,
                       cudaStream_t s);
int lcm_hsa_bwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, const void* dout, const float* lse, void* dq,
                       void* dk, void* dv, float* di, const int64_t* perm, const int64_t* offs,
                       const int64_t* order, int N, int L, int Hq, int H, int K, int S, int C,
                       int D, float scale, int one, cudaStream_t s);
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
                                               bool one, int path) {
  const Shape s = check_inputs(in.q, in.k, in.v, in.w, in.idx, chunk);
  lcm::check_path("hsa", path, lcm::kHsaPaths, false, in.q);
  c10::cuda::CUDAGuard guard(in.q.device());
  auto o = at::empty({s.N, s.L, s.Hq, s.D}, in.q.options());
  auto lse = at::empty({s.N, s.L, s.Hq, s.K}, in.q.options().dtype(at::kFloat));
  LCM_CHECK_LAUNCH(lcm_hsa_fwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                                      in.w.data_ptr<float>(), in.idx.data_ptr<int64_t>(),
                                      o.data_ptr(), lse.data_ptr<float>(), s.N, s.L, s.Hq, s.H,
                                      s.K, s.S, s.C, s.D, float(scale), one ? 1 : 0, path,
                                      at::cuda::getCurrentCUDAStream()),
                   "hsa forward launch");
  return {o, lse};
}

// The inverse index of the backward's dk/dv kernel: every valid (token, slot) pair with a
// nonzero weight (the others add exact zeros to dk/dv) keyed by its memory chunk
// (n*H + h)*C + c; perm = the pair ids (flat (N, L, H, K) positions) sorted by key, stably
// (so each chunk's pairs are in a fixed order and its sums are deterministic); offs
// (N*H*C + 1) = each key's first position in perm; order = the keys by pair count,
// largest first (the heaviest chunks start first).
struct InverseIndex {
  at::Tensor perm, offs, order;
};

InverseIndex inverse_index(const Prepared& in, const Shape& s) {
  const int64_t nkeys = int64_t(s.N) * s.H * s.C;
  TORCH_CHECK(nkeys < INT32_MAX, "hsa backward: too many memory chunks (", nkeys, ")");
  const auto o64 = in.idx.options();
  auto base = (at::arange(s.N, o64).view({s.N, 1, 1, 1}) * s.H +
               at::arange(s.H, o64).view({1, 1, s.H, 1})) *
              s.C;
  auto valid = in.idx.ge(0).logical_and(in.idx.lt(s.C)).logical_and(in.w.ne(0));
  auto keys = at::where(valid, in.idx + base, at::full({}, nkeys, o64)).to(at::kInt).reshape({-1});
  auto [sorted, perm] = at::sort(keys, std::optional<bool>(true), 0, /*descending=*/false);
  auto offs = at::searchsorted(sorted, at::arange(nkeys + 1, keys.options()));
  auto counts = offs.slice(0, 1, nkeys + 1) - offs.slice(0, 0, nkeys);
  auto order = at::argsort(counts, /*stable=*/true, 0, /*descending=*/true);
  return {perm.contiguous(), offs.contiguous(), order.contiguous()};
}

// (dq, dk, dv, dw), all written by the kernels (no atomics, deterministic); dw = the sum
// over the group's heads of the per-slot Di the dq kernel writes.
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
  const int G = s.Hq / s.H;
  auto dq = at::empty({s.N, s.L, s.Hq, s.D}, in.q.options());
  auto dk = at::empty(in.k.sizes(), in.q.options());
  auto dv = at::empty(in.k.sizes(), in.q.options());
  auto di = at::empty({s.N, s.L, s.H, s.K, G}, in.q.options().dtype(at::kFloat));
  const InverseIndex inv = inverse_index(in, s);
  LCM_CHECK_LAUNCH(
      lcm_hsa_bwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                         in.w.data_ptr<float>(), in.idx.data_ptr<int64_t>(), dout.data_ptr(),
                         lse.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                         di.data_ptr<float>(), inv.perm.data_ptr<int64_t>(),
                         inv.offs.data_ptr<int64_t>(), inv.order.data_ptr<int64_t>(), s.N, s.L,
                         s.Hq, s.H, s.K, s.S, s.C, s.D, float(scale), one ? 1 : 0,
                         at::cuda::getCurrentCUDAStream()),
      "hsa backward launch");
  return {dq, dk, dv, di.sum(-1)};
}

struct HsaFunction : public torch::autograd::Function<HsaFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                            const at::Tensor& idx, int64_t chunk, double scale, bool one,
                            int64_t path) {
    Prepared in = prepare(q, k, v, w, idx);
    auto [o, lse] = forward_raw(in, chunk, scale, one, int(path));
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
    return {dq, dk, dv, dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// o = HSA(q, k, v, weights, indices), differentiable in q, k, v and weights. path: the
// forward's HsaPath (attn_path.h).
int lcm_hsa(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v, const at::Tensor* w,
            const at::Tensor* idx, int64_t chunk, double scale, int one, int path,
            at::Tensor** o) {
  return lcm::guarded("hsa", [&] {
    // The cast sits outside the Function so that autograd carries dw back to w's dtype.
    auto wf = w->to(at::kFloat);
    *o = new at::Tensor(HsaFunction::apply(*q, *k, *v, wf, *idx, chunk, scale, one != 0, int64_t(path)));
  });
}

int lcm_hsa_forward_raw(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                        const at::Tensor* w, const at::Tensor* idx, int64_t chunk,
                        double scale, int one, int path, at::Tensor** o, at::Tensor** lse) {
  return lcm::guarded("hsa_forward_raw", [&] {
    auto [oo, ll] = forward_raw(prepare(*q, *k, *v, *w, *idx), chunk, scale, one != 0, path);
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
