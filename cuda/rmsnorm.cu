// Fused RMSNorm, forward and backward, fp32 and bf16 (fp32 arithmetic throughout).
//   y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)   (per row of length d)
//   dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * w,  xhat = x * rstd
//   dw = sum over rows of dy * xhat
// Reference: src/ops/rmsnorm.rs (rms_norm_reference). Test: tests/ops_rmsnorm.rs.
//
// Layout: one block per row (grid-stride over rows); each thread owns NV packs of VEC
// columns, so a row is read from global memory exactly once and kept in registers, and
// the weight is loaded once per block. The backward accumulates dw for its columns in
// registers over all rows the block visits and writes one fp32 partial row per block;
// the bridge sums the partials (grid rows, far fewer than the input rows).
#include "common.cuh"

namespace lcm {

template <typename T, int VEC, int NV>
__global__ void __launch_bounds__(1024) rmsnorm_fwd_kernel(const T* __restrict__ x,
                                                           const T* __restrict__ w,
                                                           T* __restrict__ y,
                                                           float* __restrict__ rstd, int64_t rows,
                                                           int d, float eps) {
  __shared__ float scratch[32];
  using P = Pack<T, VEC>;
  const int npacks = d / VEC;
  float wr[NV][VEC];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int p = threadIdx.x + i * blockDim.x;
    if (p < npacks) {
      P pw = reinterpret_cast<const P*>(w)[p];
#pragma unroll
      for (int j = 0; j < VEC; ++j) wr[i][j] = to_float(pw.v[j]);
    }
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const P* xr = reinterpret_cast<const P*>(x + row * d);
    P* yr = reinterpret_cast<P*>(y + row * d);
    float xv[NV][VEC];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int p = threadIdx.x + i * blockDim.x;
      if (p < npacks) {
        P px = xr[p];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          xv[i][j] = to_float(px.v[j]);
          ss += xv[i][j] * xv[i][j];
        }
      }
    }
    ss = block_sum(ss, scratch);
    const float r = rsqrtf(ss / d + eps);
    if (threadIdx.x == 0) rstd[row] = r;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int p = threadIdx.x + i * blockDim.x;
      if (p < npacks) {
        P py;
#pragma unroll
        for (int j = 0; j < VEC; ++j) py.v[j] = from_float<T>(xv[i][j] * r * wr[i][j]);
        yr[p] = py;
      }
    }
  }
}

template <typename T, int VEC, int NV>
__global__ void __launch_bounds__(1024) rmsnorm_bwd_kernel(
    const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ rstd,
    const T* __restrict__ dy, T* __restrict__ dx, float* __restrict__ dw_partial, int64_t rows,
    int d) {
  __shared__ float scratch[32];
  using P = Pack<T, VEC>;
  const int npacks = d / VEC;
  float wr[NV][VEC], dwacc[NV][VEC];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int p = threadIdx.x + i * blockDim.x;
#pragma unroll
    for (int j = 0; j < VEC; ++j) dwacc[i][j] = 0.f;
    if (p < npacks) {
      P pw = reinterpret_cast<const P*>(w)[p];
#pragma unroll
      for (int j = 0; j < VEC; ++j) wr[i][j] = to_float(pw.v[j]);
    }
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const P* xr = reinterpret_cast<const P*>(x + row * d);
    const P* dyr = reinterpret_cast<const P*>(dy + row * d);
    P* dxr = reinterpret_cast<P*>(dx + row * d);
    const float r = rstd[row];
    float xh[NV][VEC], g[NV][VEC];
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int p = threadIdx.x + i * blockDim.x;
      if (p < npacks) {
        P px = xr[p], pd = dyr[p];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float dyv = to_float(pd.v[j]);
          xh[i][j] = to_float(px.v[j]) * r;
          g[i][j] = dyv * wr[i][j];
          dot += g[i][j] * xh[i][j];
          dwacc[i][j] += dyv * xh[i][j];
        }
      }
    }
    dot = block_sum(dot, scratch) / d;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int p = threadIdx.x + i * blockDim.x;
      if (p < npacks) {
        P pdx;
#pragma unroll
        for (int j = 0; j < VEC; ++j) pdx.v[j] = from_float<T>(r * (g[i][j] - xh[i][j] * dot));
        dxr[p] = pdx;
      }
    }
  }
  float* out = dw_partial + static_cast<int64_t>(blockIdx.x) * d;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int p = threadIdx.x + i * blockDim.x;
    if (p < npacks) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) out[p * VEC + j] = dwacc[i][j];
    }
  }
}

// Launch geometry for a row of d elements moved VEC at a time: the fewest packs per
// thread (NV) that fit the row in one block of at most 1024 threads.
struct Geometry {
  int vec, nv, threads;
};

static bool geometry(int d, int vec, Geometry* g) {
  if (d % vec != 0) return false;
  const int npacks = d / vec;
  for (int nv : {1, 2, 4, 8}) {
    const int threads = ((npacks + nv - 1) / nv + 31) / 32 * 32;
    if (threads <= 1024) {
      *g = {vec, nv, threads};
      return true;
    }
  }
  return false;
}

template <typename T, int VEC>
static cudaError_t launch_fwd(const Geometry& g, int grid, cudaStream_t s, const void* x,
                              const void* w, void* y, float* rstd, int64_t rows, int d,
                              float eps) {
  auto args = [&](auto kernel) {
    kernel<<<grid, g.threads, 0, s>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                      static_cast<T*>(y), rstd, rows, d, eps);
  };
  switch (g.nv) {
    case 1: args(rmsnorm_fwd_kernel<T, VEC, 1>); break;
    case 2: args(rmsnorm_fwd_kernel<T, VEC, 2>); break;
    case 4: args(rmsnorm_fwd_kernel<T, VEC, 4>); break;
    default: args(rmsnorm_fwd_kernel<T, VEC, 8>); break;
  }
  return cudaGetLastError();
}

template <typename T, int VEC>
static cudaError_t launch_bwd(const Geometry& g, int grid, cudaStream_t s, const void* x,
                              const void* w, const float* rstd, const void* dy, void* dx,
                              float* dw_partial, int64_t rows, int d) {
  auto args = [&](auto kernel) {
    kernel<<<grid, g.threads, 0, s>>>(static_cast<const T*>(x), static_cast<const T*>(w), rstd,
                                      static_cast<const T*>(dy), static_cast<T*>(dx), dw_partial,
                                      rows, d);
  };
  switch (g.nv) {
    case 1: args(rmsnorm_bwd_kernel<T, VEC, 1>); break;
    case 2: args(rmsnorm_bwd_kernel<T, VEC, 2>); break;
    case 4: args(rmsnorm_bwd_kernel<T, VEC, 4>); break;
    default: args(rmsnorm_bwd_kernel<T, VEC, 8>); break;
  }
  return cudaGetLastError();
}

}  // namespace lcm

using lcm::Geometry;

// The vector width: 16-byte packs when the row length and every pointer allow it.
static int pick_vec(int dtype, int d, bool aligned) {
  const int vec = dtype == lcm::kBF16 ? 8 : 4;
  return (aligned && d % vec == 0) ? vec : 1;
}

extern "C" {

// Threads per block for a row of d elements, or 0 when d is too long for these kernels.
int lcm_rmsnorm_threads(int dtype, int d, int aligned) {
  Geometry g;
  return lcm::geometry(d, pick_vec(dtype, d, aligned), &g) ? g.threads : 0;
}

int lcm_rmsnorm_fwd_launch(int dtype, const void* x, const void* w, void* y, float* rstd,
                           int64_t rows, int d, float eps, int aligned, int grid,
                           cudaStream_t s) {
  Geometry g;
  const int vec = pick_vec(dtype, d, aligned);
  if (!lcm::geometry(d, vec, &g)) return cudaErrorInvalidValue;
  if (dtype == lcm::kBF16)
    return vec == 8 ? lcm::launch_fwd<__nv_bfloat16, 8>(g, grid, s, x, w, y, rstd, rows, d, eps)
                    : lcm::launch_fwd<__nv_bfloat16, 1>(g, grid, s, x, w, y, rstd, rows, d, eps);
  return vec == 4 ? lcm::launch_fwd<float, 4>(g, grid, s, x, w, y, rstd, rows, d, eps)
                  : lcm::launch_fwd<float, 1>(g, grid, s, x, w, y, rstd, rows, d, eps);
}

int lcm_rmsnorm_bwd_launch(int dtype, const void* x, const void* w, const float* rstd,
                           const void* dy, void* dx, float* dw_partial, int64_t rows, int d,
                           int aligned, int grid, cudaStream_t s) {
  Geometry g;
  const int vec = pick_vec(dtype, d, aligned);
  if (!lcm::geometry(d, vec, &g)) return cudaErrorInvalidValue;
  if (dtype == lcm::kBF16)
    return vec == 8 ? lcm::launch_bwd<__nv_bfloat16, 8>(g, grid, s, x, w, rstd, dy, dx,
                                                         dw_partial, rows, d)
                    : lcm::launch_bwd<__nv_bfloat16, 1>(g, grid, s, x, w, rstd, dy, dx,
                                                         dw_partial, rows, d);
  return vec == 4 ? lcm::launch_bwd<float, 4>(g, grid, s, x, w, rstd, dy, dx, dw_partial, rows, d)
                  : lcm::launch_bwd<float, 1>(g, grid, s, x, w, rstd, dy, dx, dw_partial, rows, d);
}

}  // extern "C"
