// Fused cross-entropy over the vocabulary, forward and backward, fp32 and bf16 logits
// (fp32 arithmetic throughout).
//   lse[r]  = log sum_j exp(x[r, j])
//   loss[r] = lse[r] - x[r, t[r]]                                 (0 where t[r] = -100)
//   dx[r, j] = (exp(x[r, j] - lse[r]) - [j == t[r]]) * dloss[r]    (0 where t[r] = -100)
// Reference: src/ops/xent.rs (cross_entropy_reference). Tests: tests/ops_xent.rs (CPU),
// tests/ops_xent_cuda.rs (GPU).
//
// A target outside [0, V) other than -100 makes its row's loss and lse NaN (and its
// gradient row 0, as the reference's). Checking targets on the host would synchronise with
// the device on every call; a NaN loss stops the trainer at once, where a clamped index
// would train on a wrong label silently.
//
// Both directions are bound by memory: a 50304-entry bf16 row is 100 KB and costs about
// one exp2 per element, well under the SFU's rate at 4.8 TB/s. One block per row
// (grid-stride over rows). The forward reads the row once: each thread keeps the largest
// logit it has seen and the sum of exp(x - max) over its elements, rescaling the sum when
// a chunk raises the max, and the block merges these pairs. The backward reads the row
// once more and writes the gradient in the same pass, from the lse the forward saved.
// Ignored rows (and invalid targets) are never read: the forward writes 0 (NaN), the
// backward a row of zeros.
//
// Rows move in 16-byte packs. With V not a multiple of the pack, rows start anywhere in
// a 16-byte line, so each row is split at its own first 16-byte boundary: the elements
// before it and those after the last full pack (fewer than 2 * VEC in all) are taken one
// per thread. The backward's gradient row must sit at the same offset within a line as
// the logits row; when it does not, the bridge launches the scalar kernels (VEC = 1).
#include <algorithm>

#include "common.cuh"

namespace lcm {
namespace {

constexpr int64_t kIgnore = -100;
constexpr float kLog2e = 1.4426950408889634f;
// Packs each thread loads before it uses any, so that enough loads are in flight to cover
// the memory latency.
constexpr int kUnroll = 4;
constexpr int kMaxThreads = 256;

// The part of a row before its first 16-byte boundary (`head` elements), the full packs
// from there, and where the elements after the last pack begin (`tail`).
struct RowSplit {
  int head, npacks, tail;
};

template <typename T, int VEC>
__device__ __forceinline__ RowSplit split_row(const T* row, int v) {
  if (VEC == 1) return {0, v, v};
  const int offset = static_cast<int>((reinterpret_cast<uintptr_t>(row) % 16) / sizeof(T));
  const int head = min(v, (VEC - offset) % VEC);
  const int npacks = (v - head) / VEC;
  return {head, npacks, head + npacks * VEC};
}

// The column this thread takes outside the packs (head first, then tail), or -1. There are
// fewer than 2 * VEC <= 16 such columns and at least 32 threads.
__device__ __forceinline__ int loose_column(const RowSplit& s, int v) {
  const int i = threadIdx.x;
  if (i < s.head) return i;
  const int c = s.tail + (i - s.head);
  return c < v ? c : -1;
}

// max(x) over some elements and sum exp(x - max) over the same elements.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  // Nothing finite on either side (no elements, or only -inf): -inf - -inf would be NaN.
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * exp2f((a.m - m) * kLog2e) + b.s * exp2f((b.m - m) * kLog2e)};
}

// merge() is commutative bit for bit, so the butterfly leaves the same pair in every lane
// and the result does not depend on which lane reads it.
__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const MaxSum u{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = merge(v, u);
  }
  return v;
}

// Merge over the block (blockDim.x a multiple of 32); every thread gets the result. The
// leading barrier lets the previous row's readers of `scratch` finish first.
__device__ __forceinline__ MaxSum block_merge(MaxSum v, float2* scratch) {
  v = warp_merge(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = make_float2(v.m, v.s);
  __syncthreads();
  v = lane < nwarps ? MaxSum{scratch[lane].x, scratch[lane].y} : MaxSum{-INFINITY, 0.f};
  return warp_merge(v);
}

__device__ __forceinline__ bool target_in_range(int64_t t, int v) { return t >= 0 && t < v; }

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads, 4)
    xent_fwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                    float* __restrict__ loss, float* __restrict__ lse, int64_t rows, int v) {
  __shared__ float2 scratch[32];
  using P = Pack<T, VEC>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = targets[row];
    if (!target_in_range(t, v)) {
      if (threadIdx.x == 0) {
        const float fill = t == kIgnore ? 0.f : __int_as_float(0x7fc00000);  // NaN
        loss[row] = fill;
        lse[row] = fill;
      }
      continue;
    }
    const T* x = logits + row * v;
    // Issued before the row's loads so that its latency hides behind them.
    const float xt = threadIdx.x == 0 ? to_float(x[t]) : 0.f;
    const RowSplit s = split_row<T, VEC>(x, v);
    MaxSum acc{-INFINITY, 0.f};
    const int c = loose_column(s, v);
    if (c >= 0) acc = {to_float(x[c]), 1.f};
    const P* xp = reinterpret_cast<const P*>(x + s.head);
    for (int base = threadIdx.x; base < s.npacks; base += blockDim.x * kUnroll) {
      float e[kUnroll][VEC];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = base + u * blockDim.x;
        if (p < s.npacks) {
          const P pk = xp[p];
#pragma unroll
          for (int j = 0; j < VEC; ++j) e[u][j] = to_float(pk.v[j]);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) e[u][j] = -INFINITY;
        }
      }
      float cm = -INFINITY;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int j = 0; j < VEC; ++j) cm = fmaxf(cm, e[u][j]);
      if (cm > acc.m) {
        acc.s *= exp2f((acc.m - cm) * kLog2e);
        acc.m = cm;
      }
      // exp(x - m) as exp2(x * log2e - m * log2e): one FMA and one ex2 per element. While
      // m is -inf every element so far is -inf or NaN, which exp2(x * log2e) maps to 0 or
      // NaN as it should (x - m would be NaN for x = -inf).
      const float ms = acc.m == -INFINITY ? 0.f : acc.m * kLog2e;
      float sum = 0.f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum += exp2f(fmaf(e[u][j], kLog2e, -ms));
      acc.s += sum;
    }
    acc = block_merge(acc, scratch);
    if (threadIdx.x == 0) {
      const float l = acc.m + logf(acc.s);
      lse[row] = l;
      loss[row] = l - xt;
    }
  }
}

// Zeros over columns [0, v) of `dx` (the row of an ignored or invalid target).
template <typename T, int VEC>
__device__ __forceinline__ void zero_row(T* dx, const RowSplit& s, int v) {
  using P = Pack<T, VEC>;
  const T f = from_float<T>(0.f);
  const int c = loose_column(s, v);
  if (c >= 0) dx[c] = f;
  P pk;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pk.v[j] = f;
  P* dp = reinterpret_cast<P*>(dx + s.head);
  for (int p = threadIdx.x; p < s.npacks; p += blockDim.x) dp[p] = pk;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads, 4)
    xent_bwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                    const float* __restrict__ lse, const float* __restrict__ dloss,
                    int64_t dloss_stride, T* __restrict__ dlogits, int64_t rows, int v) {
  using P = Pack<T, VEC>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = targets[row];
    const T* x = logits + row * v;
    T* dx = dlogits + row * v;
    const RowSplit s = split_row<T, VEC>(x, v);
    if (!target_in_range(t, v)) {
      zero_row<T, VEC>(dx, s, v);
      continue;
    }
    const float g = dloss[row * dloss_stride];
    const float ls = lse[row] * kLog2e;
    const int target = static_cast<int>(t);
    const int c = loose_column(s, v);
    if (c >= 0) {
      const float p = exp2f(fmaf(to_float(x[c]), kLog2e, -ls));
      dx[c] = from_float<T>(c == target ? p * g - g : p * g);
    }
    const P* xp = reinterpret_cast<const P*>(x + s.head);
    P* dp = reinterpret_cast<P*>(dx + s.head);
    for (int base = threadIdx.x; base < s.npacks; base += blockDim.x * kUnroll) {
      P in[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = base + u * blockDim.x;
        if (p < s.npacks) in[u] = xp[p];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = base + u * blockDim.x;
        if (p < s.npacks) {
          // The target's position within this pack, if it is in it (any j otherwise).
          const int hit = target - (s.head + p * VEC);
          P out;
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const float q = exp2f(fmaf(to_float(in[u].v[j]), kLog2e, -ls)) * g;
            // p*g - g, as the reference's log_softmax backward forms it.
            out.v[j] = from_float<T>(j == hit ? q - g : q);
          }
          dp[p] = out;
        }
      }
    }
  }
}

template <typename T, int VEC>
cudaError_t launch_fwd(int threads, int grid, cudaStream_t st, const void* logits,
                       const int64_t* targets, float* loss, float* lse, int64_t rows, int v) {
  xent_fwd_kernel<T, VEC><<<grid, threads, 0, st>>>(static_cast<const T*>(logits), targets,
                                                     loss, lse, rows, v);
  return cudaGetLastError();
}

template <typename T, int VEC>
cudaError_t launch_bwd(int threads, int grid, cudaStream_t st, const void* logits,
                       const int64_t* targets, const float* lse, const float* dloss,
                       int64_t dloss_stride, void* dlogits, int64_t rows, int v) {
  xent_bwd_kernel<T, VEC><<<grid, threads, 0, st>>>(static_cast<const T*>(logits), targets,
                                                     lse, dloss, dloss_stride,
                                                     static_cast<T*>(dlogits), rows, v);
  return cudaGetLastError();
}

}  // namespace
}  // namespace lcm

extern "C" {

// Threads per block for rows of v entries: enough for kUnroll packs each over the row, a
// multiple of 32 (the reductions and the loose columns need a full warp), at most 256.
int lcm_xent_threads(int dtype, int v) {
  const int vec = dtype == lcm::kBF16 ? 8 : 4;
  const int per_thread = vec * lcm::kUnroll;
  const int64_t want = (static_cast<int64_t>(v) + per_thread - 1) / per_thread;
  const int64_t threads = (want + 31) / 32 * 32;
  return static_cast<int>(std::max<int64_t>(32, std::min<int64_t>(lcm::kMaxThreads, threads)));
}

// The forward splits every row at its own 16-byte boundary, so any element-aligned
// pointer takes the vector path.
int lcm_xent_fwd_launch(int dtype, const void* logits, const int64_t* targets, float* loss,
                        float* lse, int64_t rows, int v, int threads, int grid, cudaStream_t s) {
  if (threads % 32 != 0 || threads > lcm::kMaxThreads || v <= 0) return cudaErrorInvalidValue;
  if (dtype == lcm::kBF16)
    return lcm::launch_fwd<__nv_bfloat16, 8>(threads, grid, s, logits, targets, loss, lse, rows,
                                             v);
  return lcm::launch_fwd<float, 4>(threads, grid, s, logits, targets, loss, lse, rows, v);
}

// `vectorized`: dlogits lies at the same offset within a 16-byte line as logits (the
// pack boundaries of their rows coincide); otherwise the scalar kernel runs.
int lcm_xent_bwd_launch(int dtype, const void* logits, const int64_t* targets, const float* lse,
                        const float* dloss, int64_t dloss_stride, void* dlogits, int64_t rows,
                        int v, int vectorized, int threads, int grid, cudaStream_t s) {
  if (threads % 32 != 0 || threads > lcm::kMaxThreads || v <= 0) return cudaErrorInvalidValue;
  if (dtype == lcm::kBF16)
    return vectorized ? lcm::launch_bwd<__nv_bfloat16, 8>(threads, grid, s, logits, targets, lse,
                                                           dloss, dloss_stride, dlogits, rows, v)
                      : lcm::launch_bwd<__nv_bfloat16, 1>(threads, grid, s, logits, targets, lse,
                                                           dloss, dloss_stride, dlogits, rows, v);
  return vectorized ? lcm::launch_bwd<float, 4>(threads, grid, s, logits, targets, lse, dloss,
                                                dloss_stride, dlogits, rows, v)
                    : lcm::launch_bwd<float, 1>(threads, grid, s, logits, targets, lse, dloss,
                                                dloss_stride, dlogits, rows, v);
}

}  // extern "C"
