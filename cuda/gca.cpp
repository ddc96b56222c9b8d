// Autograd bridge for the GCA kernels in gca_fwd.cu and gca_bwd.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "attn_path.h"
#include "bridge.h"

extern "C" {
int lcm_gca_rows_per_pass();
int lcm_gca_max_kctx_bwd();
int lcm_gca_fwd_launch(const void* q, const void* k, const void* v, const float* w, void* o,
                       float* lse, const int64_t* strides, int B, int Hq, int Hkv, int Q, int K,
                       int KCTX, int D, float scale, int one, int path, cudaStream_t s);
int lcm_gca_fwd_gather_launch(const void* q, const void* mem_k, const void* mem_v,
                              const int64_t* gather, const float* w, void* o, float* lse,
                              const int64_t* strides, int B, int Hq, int Hkv, int Q, int K,
                              int KCTX, int64_t M, int D, float scale, int one, int path,
                              cudaStream_t s);
int lcm_gca_bwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const void* dout, const float* lse, void* dq, void* dk, void* dv,
                       float* dw_partial, float* scratch, const int64_t* strides, int B, int Hq,
                       int Hkv, int Q, int K, int KCTX, int D, float scale, int path,
                       cudaStream_t s);
}

namespace {

using lcm::rows_ready;

struct Shape {
  int B, Hq, Hkv, Q, K, KCTX, D;
};

Shape check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& w) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda() && w.is_cuda(),
              "gca: tensors must be on a CUDA device");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 5 && v.sizes() == k.sizes(), "gca: q ", q.sizes(),
              " must be (B, Hq, Q, D), k/v ", k.sizes(), " (B, Hkv, K, K_CTX, D)");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16,
              "gca: the kernel takes bfloat16 q, k, v (got ", q.scalar_type(), ")");
  Shape s{int(q.size(0)), int(q.size(1)), int(k.size(1)), int(q.size(2)),
          int(k.size(2)), int(k.size(3)), int(q.size(3))};
  TORCH_CHECK(k.size(0) == s.B && k.size(4) == s.D && s.Hkv > 0 && s.Hq % s.Hkv == 0 &&
                  w.dim() == 2 && w.size(0) == s.B && w.size(1) == s.K,
              "gca: q ", q.sizes(), ", k ", k.sizes(), " and weights ", w.sizes(),
              " (B, K) disagree");
  TORCH_CHECK(s.D == 64 || s.D == 128, "gca: head dim ", s.D, " unsupported (64 or 128)");
  TORCH_CHECK(s.K >= 1 && s.KCTX >= 1 && s.Q >= 1 && s.B >= 1, "gca: empty input ", k.sizes());
  TORCH_CHECK(int64_t(s.B) * s.Hkv < INT32_MAX, "gca: too many (batch, head) pairs");
  return s;
}

void fill_strides(int64_t* st, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (int i = 0; i < 3; ++i) st[i] = q.stride(i);
  for (int i = 0; i < 4; ++i) st[3 + i] = k.stride(i);
  for (int i = 0; i < 4; ++i) st[7 + i] = v.stride(i);
}

struct Prepared {
  at::Tensor q, k, v, w;
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& w) {
  return {rows_ready(q), rows_ready(k), rows_ready(v), w.to(at::kFloat).contiguous()};
}

// (o, lse): o (B, Hq, Q, D) bf16, lse (B, Hq, K, Q) fp32 (log2 of the per-chunk denominator).
void check_path(int path, const at::Tensor& t) {
  lcm::check_path("gca", path, lcm::kAttnPaths, path != lcm::kPathMma, t);
}

std::tuple<at::Tensor, at::Tensor> forward_raw(const Prepared& in, double scale, bool one,
                                               int path) {
  const Shape s = check_inputs(in.q, in.k, in.v, in.w);
  check_path(path, in.q);
  TORCH_CHECK(scale > 0, "gca: the kernel takes a positive scale (got ", scale, ")");
  c10::cuda::CUDAGuard guard(in.q.device());
  auto o = at::empty({s.B, s.Hq, s.Q, s.D}, in.q.options());
  auto lse = at::empty({s.B, s.Hq, s.K, s.Q}, in.q.options().dtype(at::kFloat));
  int64_t st[11];
  fill_strides(st, in.q, in.k, in.v);
  LCM_CHECK_LAUNCH(lcm_gca_fwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                                      in.w.data_ptr<float>(), o.data_ptr(),
                                      lse.data_ptr<float>(), st, s.B, s.Hq, s.Hkv, s.Q, s.K,
                                      s.KCTX, s.D, float(scale), one ? 1 : 0, path,
                                      at::cuda::getCurrentCUDAStream()),
                   "gca forward launch");
  return {o, lse};
}

// (dq, dk, dv, dw) for saved inputs and lse and the incoming gradient of o.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_raw(const Prepared& in,
                                                                        const at::Tensor& lse,
                                                                        const at::Tensor& dout_in,
                                                                        double scale, int path) {
  const Shape s = check_inputs(in.q, in.k, in.v, in.w);
  check_path(path, in.q);
  TORCH_CHECK(s.KCTX <= lcm_gca_max_kctx_bwd(), "gca backward: K_CTX ", s.KCTX,
              " exceeds the kernel's ", lcm_gca_max_kctx_bwd());
  c10::cuda::CUDAGuard guard(in.q.device());
  auto dout = dout_in.to(at::kBFloat16).contiguous();
  TORCH_CHECK(dout.sizes() == in.q.sizes(), "gca backward: gradient ", dout.sizes(),
              " does not match q ", in.q.sizes());
  auto dq = at::empty({s.B, s.Hq, s.Q, s.D}, in.q.options());
  auto dk = at::empty({s.B, s.Hkv, s.K, s.KCTX, s.D}, in.k.options());
  auto dv = at::empty_like(dk);
  auto dwp = at::empty({s.B, s.Hkv, s.K}, in.q.options().dtype(at::kFloat));
  at::Tensor scratch;
  if ((s.Hq / s.Hkv) * s.Q > lcm_gca_rows_per_pass())
    scratch = at::empty({2, s.B, s.Hkv, s.K, s.KCTX, s.D}, in.q.options().dtype(at::kFloat));
  int64_t st[11];
  fill_strides(st, in.q, in.k, in.v);
  LCM_CHECK_LAUNCH(
      lcm_gca_bwd_launch(in.q.data_ptr(), in.k.data_ptr(), in.v.data_ptr(),
                         in.w.data_ptr<float>(), dout.data_ptr(), lse.data_ptr<float>(),
                         dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), dwp.data_ptr<float>(),
                         scratch.defined() ? scratch.data_ptr<float>() : nullptr, st, s.B, s.Hq,
                         s.Hkv, s.Q, s.K, s.KCTX, s.D, float(scale), path,
                         at::cuda::getCurrentCUDAStream()),
      "gca backward launch");
  return {dq, dk, dv, dwp.sum(1)};
}

// --- GCA reading a chunk memory: k/v (M, K_CTX, Hkv, D), query chunk b reading the rows
// idx[b] (B, K) int64. The forward gathers inside the kernel where it can (Hopper, TMA,
// head dim 64, K_CTX 64); the backward (and the forward elsewhere) gathers with
// index_select and adds the chunks' gradients back into the memory's rows.

// The chunks idx names, as the plain kernels take them: (B, Hkv, K, K_CTX, D), a view of
// the gathered copy.
at::Tensor gather_chunks(const at::Tensor& mem, const at::Tensor& idx) {
  return mem.index_select(0, idx.reshape({-1}))
      .view({idx.size(0), idx.size(1), mem.size(1), mem.size(2), mem.size(3)})
      .permute({0, 3, 1, 2, 4});
}

Shape check_gather_inputs(const at::Tensor& q, const at::Tensor& mem_k, const at::Tensor& mem_v,
                          const at::Tensor& idx, const at::Tensor& w) {
  TORCH_CHECK(q.is_cuda() && mem_k.is_cuda() && mem_v.is_cuda() && w.is_cuda(),
              "gca_gathered: tensors must be on a CUDA device");
  TORCH_CHECK(q.dim() == 4 && mem_k.dim() == 4 && mem_v.sizes() == mem_k.sizes(),
              "gca_gathered: q ", q.sizes(), " must be (B, Hq, Q, D), memory k ", mem_k.sizes(),
              " and v ", mem_v.sizes(), " (M, K_CTX, Hkv, D)");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && mem_k.scalar_type() == at::kBFloat16 &&
                  mem_v.scalar_type() == at::kBFloat16,
              "gca_gathered: the kernel takes bfloat16 q and memory (got ", q.scalar_type(), ")");
  TORCH_CHECK(idx.dim() == 2 && idx.scalar_type() == at::kLong && idx.size(0) == q.size(0) &&
                  idx.device() == q.device(),
              "gca_gathered: indices ", idx.sizes(), " must be int64 (B, K) on q's device, B = ",
              q.size(0));
  Shape s{int(q.size(0)), int(q.size(1)), int(mem_k.size(2)), int(q.size(2)),
          int(idx.size(1)), int(mem_k.size(1)), int(q.size(3))};
  TORCH_CHECK(mem_k.size(3) == s.D && s.Hkv > 0 && s.Hq % s.Hkv == 0 && w.dim() == 2 &&
                  w.size(0) == s.B && w.size(1) == s.K,
              "gca_gathered: q ", q.sizes(), ", memory ", mem_k.sizes(), ", indices ",
              idx.sizes(), " and weights ", w.sizes(), " disagree");
  TORCH_CHECK(s.D == 64 || s.D == 128, "gca_gathered: head dim ", s.D, " unsupported (64 or 128)");
  TORCH_CHECK(s.K >= 1 && s.KCTX >= 1 && s.Q >= 1 && s.B >= 1 && mem_k.size(0) >= 1,
              "gca_gathered: empty input");
  return s;
}

// (o, lse) as forward_raw's, for the chunks idx names.
std::tuple<at::Tensor, at::Tensor> gather_forward_raw(const at::Tensor& q_in,
                                                      const at::Tensor& mem_k_in,
                                                      const at::Tensor& mem_v_in,
                                                      const at::Tensor& idx_in,
                                                      const at::Tensor& w_in, double scale,
                                                      bool one, int path) {
  const Shape s = check_gather_inputs(q_in, mem_k_in, mem_v_in, idx_in, w_in);
  check_path(path, q_in);
  auto q = rows_ready(q_in), mk = rows_ready(mem_k_in), mv = rows_ready(mem_v_in);
  auto idx = idx_in.contiguous();
  auto w = w_in.to(at::kFloat).contiguous();
  TORCH_CHECK(scale > 0, "gca: the kernel takes a positive scale (got ", scale, ")");
  c10::cuda::CUDAGuard guard(q.device());
  auto o = at::empty({s.B, s.Hq, s.Q, s.D}, q.options());
  auto lse = at::empty({s.B, s.Hq, s.K, s.Q}, q.options().dtype(at::kFloat));
  const int64_t st[9] = {q.stride(0),  q.stride(1),  q.stride(2),  mk.stride(0), mk.stride(1),
                         mk.stride(2), mv.stride(0), mv.stride(1), mv.stride(2)};
  const int status = lcm_gca_fwd_gather_launch(
      q.data_ptr(), mk.data_ptr(), mv.data_ptr(), idx.data_ptr<int64_t>(), w.data_ptr<float>(),
      o.data_ptr(), lse.data_ptr<float>(), st, s.B, s.Hq, s.Hkv, s.Q, s.K, s.KCTX, mk.size(0),
      s.D, float(scale), one ? 1 : 0, path, at::cuda::getCurrentCUDAStream());
  if (status == cudaErrorNotSupported)
    return forward_raw(prepare(q, gather_chunks(mk, idx), gather_chunks(mv, idx), w), scale, one,
                       path);
  LCM_CHECK_LAUNCH(status, "gca_gathered forward launch");
  return {o, lse};
}

struct GcaGatherFunction : public torch::autograd::Function<GcaGatherFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& mem_k, const at::Tensor& mem_v,
                            const at::Tensor& idx, const at::Tensor& w, double scale, bool one,
                            int64_t path) {
    auto [o, lse] = gather_forward_raw(q, mem_k, mem_v, idx, w, scale, one, int(path));
    ctx->save_for_backward({q, mem_k, mem_v, idx, w, lse});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["path"] = path;
    return o;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &mem_k = saved[1], &mem_v = saved[2], &idx = saved[3];
    Prepared in = prepare(saved[0], gather_chunks(mem_k, idx), gather_chunks(mem_v, idx), saved[4]);
    auto [dq, dk, dv, dw] =
        backward_raw(in, saved[5], grads[0], ctx->saved_data["scale"].toDouble(),
                     int(ctx->saved_data["path"].toInt()));
    // (B, Hkv, K, K_CTX, D) -> the memory's rows, summed where chunks repeat.
    auto scatter = [&](const at::Tensor& mem, const at::Tensor& d) {
      auto rows = d.permute({0, 2, 3, 1, 4}).reshape({-1, mem.size(1), mem.size(2), mem.size(3)});
      return at::zeros_like(mem).index_add_(0, idx.reshape({-1}), rows.to(mem.scalar_type()));
    };
    return {dq, scatter(mem_k, dk), scatter(mem_v, dv), at::Tensor(), dw, at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

struct GcaFunction : public torch::autograd::Function<GcaFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                            double scale, bool one, int64_t path) {
    Prepared in = prepare(q, k, v, w);
    auto [o, lse] = forward_raw(in, scale, one, int(path));
    ctx->save_for_backward({in.q, in.k, in.v, in.w, lse});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["path"] = path;
    return o;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    Prepared in{saved[0], saved[1], saved[2], saved[3]};
    auto [dq, dk, dv, dw] = backward_raw(in, saved[4], grads[0], ctx->saved_data["scale"].toDouble(),
                                         int(ctx->saved_data["path"].toInt()));
    return {dq, dk, dv, dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// o = GCA(q, k, v, weights), differentiable in q, k, v and weights. path: an AttnPath
// (attn_path.h), for every entry point below.
int lcm_gca(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v, const at::Tensor* w,
            double scale, int one, int path, at::Tensor** o) {
  return lcm::guarded("gca", [&] {
    // The cast sits outside the Function so that autograd carries dw back to w's dtype.
    auto wf = w->to(at::kFloat);
    *o = new at::Tensor(GcaFunction::apply(*q, *k, *v, wf, scale, one != 0, int64_t(path)));
  });
}

// o = GCA(q, the chunks idx (B, K) names in the memory mem_k / mem_v (M, K_CTX, Hkv, D),
// weights), differentiable in q, mem_k, mem_v and weights.
int lcm_gca_gathered(const at::Tensor* q, const at::Tensor* mem_k, const at::Tensor* mem_v,
                     const at::Tensor* idx, const at::Tensor* w, double scale, int one,
                     int path, at::Tensor** o) {
  return lcm::guarded("gca_gathered", [&] {
    auto wf = w->to(at::kFloat);
    *o = new at::Tensor(
        GcaGatherFunction::apply(*q, *mem_k, *mem_v, *idx, wf, scale, one != 0, int64_t(path)));
  });
}

// Its forward alone (o, lse), for the benchmark.
int lcm_gca_gathered_forward_raw(const at::Tensor* q, const at::Tensor* mem_k,
                                 const at::Tensor* mem_v, const at::Tensor* idx,
                                 const at::Tensor* w, double scale, int one, int path,
                                 at::Tensor** o, at::Tensor** lse) {
  return lcm::guarded("gca_gathered_forward_raw", [&] {
    auto [oo, ll] = gather_forward_raw(*q, *mem_k, *mem_v, *idx, *w, scale, one != 0, path);
    *o = new at::Tensor(oo);
    *lse = new at::Tensor(ll);
  });
}

// The kernels alone, without autograd: for benchmarks that time exactly the kernels.
int lcm_gca_forward_raw(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                        const at::Tensor* w, double scale, int one, int path, at::Tensor** o,
                        at::Tensor** lse) {
  return lcm::guarded("gca_forward_raw", [&] {
    auto [oo, ll] = forward_raw(prepare(*q, *k, *v, *w), scale, one != 0, path);
    *o = new at::Tensor(oo);
    *lse = new at::Tensor(ll);
  });
}

int lcm_gca_backward_raw(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         const at::Tensor* w, const at::Tensor* lse, const at::Tensor* dout,
                         double scale, int path, at::Tensor** dq, at::Tensor** dk,
                         at::Tensor** dv, at::Tensor** dw) {
  return lcm::guarded("gca_backward_raw", [&] {
    auto [a, b, c, d] = backward_raw(prepare(*q, *k, *v, *w), *lse, *dout, scale, path);
    *dq = new at::Tensor(a);
    *dk = new at::Tensor(b);
    *dv = new at::Tensor(c);
    *dw = new at::Tensor(d);
  });
}

}  // extern "C"
