// Bridge for the retrieval top-k kernel in retrieval.cu (no autograd: indices are not
// differentiable; src/ops/retrieval.rs recomputes the chosen scores with tch where a
// gradient is wanted).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "bridge.h"

extern "C" {
int lcm_retrieval_max_dim();
int lcm_retrieval_max_k();
int lcm_retrieval_plan(int N, int H, int M, int E, int D, int64_t first, int div, int topk,
                       int* splits, int* tiles_per_split);
int lcm_retrieval_topk_launch(const void* q, const void* k, const int64_t* strides, float* ps,
                              int* pi, float* os, int64_t* oi, int N, int H, int M, int E,
                              int D, int64_t first, int div, int splits, int tiles_per_split,
                              int topk, float scale, uint64_t seed, int gumbel,
                              cudaStream_t s);
}

namespace {

// The kernel reads 16-byte pieces: unit last stride, other strides multiples of 8, an
// aligned base. Anything else is copied.
at::Tensor kernel_layout(const at::Tensor& t) {
  bool ok = t.stride(3) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.stride(d) % 8 == 0 || t.size(d) == 1);
  return ok ? t : t.contiguous();
}

}  // namespace

extern "C" {

// Top-k keys per query: q (N, M, H, D), k (N, E, H, D) bf16 on one CUDA device. Query m
// sees keys j < min(E, (first + m) / div). Returns scores (N, H, M, topk) fp32, descending
// (empty slots -inf) and indices (N, H, M, topk) int64 (empty slots -1). With `gumbel`,
// Gumbel noise from `seed` is added to the scores before the selection (and returned).
int lcm_retrieval_topk(const at::Tensor* q_in, const at::Tensor* k_in, int64_t first,
                       int64_t div, int64_t topk, double scale, int64_t seed, int gumbel,
                       at::Tensor** scores, at::Tensor** indices) {
  return lcm::guarded("retrieval_topk", [&] {
    TORCH_CHECK(q_in->is_cuda() && k_in->is_cuda() && q_in->device() == k_in->device(),
                "retrieval: q and k must be on one CUDA device");
    TORCH_CHECK(q_in->dim() == 4 && k_in->dim() == 4, "retrieval: q ", q_in->sizes(),
                " must be (N, M, H, D) and k ", k_in->sizes(), " (N, E, H, D)");
    TORCH_CHECK(q_in->scalar_type() == at::kBFloat16 && k_in->scalar_type() == at::kBFloat16,
                "retrieval: the kernel takes bfloat16 q and k (got ", q_in->scalar_type(), ", ",
                k_in->scalar_type(), ")");
    const int64_t N = q_in->size(0), M = q_in->size(1), H = q_in->size(2), D = q_in->size(3);
    const int64_t E = k_in->size(1);
    TORCH_CHECK(k_in->size(0) == N && k_in->size(2) == H && k_in->size(3) == D,
                "retrieval: q ", q_in->sizes(), " and k ", k_in->sizes(), " disagree");
    TORCH_CHECK(D >= 8 && D % 8 == 0 && D <= lcm_retrieval_max_dim(), "retrieval: dim ", D,
                " unsupported (a multiple of 8 up to ", lcm_retrieval_max_dim(), ")");
    TORCH_CHECK(topk >= 1 && topk <= lcm_retrieval_max_k(), "retrieval: top-k ", topk,
                " unsupported (1..", lcm_retrieval_max_k(), ")");
    TORCH_CHECK(div >= 1 && first >= 0, "retrieval: bad first ", first, " / div ", div);
    TORCH_CHECK(E < INT32_MAX && N * H * M < INT32_MAX && N * H <= 65535,
                "retrieval: too large (E ", E, ", N*H*M ", N * H * M, ", N*H ", N * H, ")");
    c10::cuda::CUDAGuard guard(q_in->device());
    auto opts = q_in->options();
    auto os = at::empty({N, H, M, topk}, opts.dtype(at::kFloat));
    auto oi = at::empty({N, H, M, topk}, opts.dtype(at::kLong));
    if (N * H * M > 0) {
      at::Tensor q = kernel_layout(*q_in), k = E > 0 ? kernel_layout(*k_in) : *k_in;
      int splits = 1, tps = 0;
      const int lists = lcm_retrieval_plan(int(N), int(H), int(M), int(E), int(D), first,
                                           int(div), int(topk), &splits, &tps);
      const int kt = topk <= 8 ? 8 : topk <= 16 ? 16 : 32;
      auto ps = at::empty({N * H * M * lists * kt}, opts.dtype(at::kFloat));
      auto pi = at::empty({N * H * M * lists * kt}, opts.dtype(at::kInt));
      const int64_t strides[6] = {q.stride(0), q.stride(1), q.stride(2),
                                  k.stride(0), k.stride(1), k.stride(2)};
      LCM_CHECK_LAUNCH(
          lcm_retrieval_topk_launch(q.data_ptr(), k.data_ptr(), strides, ps.data_ptr<float>(),
                                    pi.data_ptr<int>(), os.data_ptr<float>(),
                                    oi.data_ptr<int64_t>(), int(N), int(H), int(M), int(E),
                                    int(D), first, int(div), splits, tps, int(topk),
                                    float(scale), uint64_t(seed), gumbel,
                                    at::cuda::getCurrentCUDAStream()),
          "retrieval top-k launch");
    }
    *scores = new at::Tensor(os);
    *indices = new at::Tensor(oi);
  });
}

}  // extern "C"
