// Retrieval top-k without the score matrix (issue 6 item 4).
//
// Queries q (N, M, H, D) and keys k (N, E, H, D), bf16, any strides with a unit last one.
// Query m of group (n, h) sees keys j < lim(m) = min(E, (first + m) / div): div = 1 is DRT's
// chunk retrieval (landmark first+m sees landmarks before it), div = S is HSA's token
// retrieval (token first+m sees chunks complete before it). Score = (q . k) * scale, fp32.
// Output: the top `topk` of each query, (N, H, M, topk), scores descending, ties broken
// by the lower key index; empty slots (fewer visible keys than topk) score -inf, index -1.
// With `gumbel`, each visible score gets Gumbel(0, 1) noise -log(-log(u)) before the
// selection (u from a counter-based hash of (seed, n*H+h, first+m, j): the same in every
// split, reproducible for a seed), and the returned scores include the noise.
//
// Two kernels:
// 1. topk_kernel: grid (query tiles of 64, key splits, N*H), 8 warps. The CTA keeps its 64
//    query rows in shared memory, streams its split's visible keys in 128-key x 64-dim
//    bf16 stages (cp.async, 3 deep), and each warp computes a 16x64 score tile (its 16
//    query rows, its half of the keys) with m16n8k16 tensor-core MMAs (fp32 accumulators),
//    writes it (masked, scaled) to a warp-private shared tile and scans it: each lane owns
//    one query row and half the tile's columns and keeps a sorted running top-KT in
//    registers (an insertion only when a score beats the current KT-th). Each lane writes
//    its list as a partial: (rows, 4 * splits, KT).
// 2. merge_kernel: one thread per query row merges its 4*splits partial lists into the
//    final top-k.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

#include "mma.cuh"

namespace lcm {
namespace ret {

constexpr int kBM = 64;        // query rows per CTA
constexpr int kBN = 128;       // keys per tile
constexpr int kWN = 64;        // keys per warp (a tile is split between two warps)
constexpr int kDC = 64;        // head-dim columns per pipeline stage
constexpr int kStages = 3;     // cp.async depth
constexpr int kWarps = 8;      // warp w: query rows 16*(w%4).., keys 64*(w/4)..
constexpr int kThreads = 32 * kWarps;
constexpr int kSPad = 66;      // score-tile row stride (floats): conflict-free scans
constexpr int kLists = 2 * (kBN / kWN);  // partial lists per query row per split

struct Params {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  int64_t sqn, sqm, sqh, skn, ske, skh;  // element strides
  float* ps;                             // partial scores (N*H*M, 2*splits, KT)
  int* pi;                               // partial key indices
  int N, H, M, E, D, div, splits, tiles_per_split;
  int64_t first;
  float scale;
  uint64_t seed;
  int gumbel;
};

// splitmix64's finaliser.
__device__ __forceinline__ uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Gumbel(0, 1) noise for (group g, query number m, key j): u uniform in (0, 1) from 24
// hashed bits.
__device__ __forceinline__ float gumbel_noise(uint64_t seed, int g, int64_t m, int64_t j) {
  const uint64_t x = mix64(mix64(seed ^ ((uint64_t(g) << 40) ^ uint64_t(m))) ^ uint64_t(j));
  const float u = (float(x >> 40) + 0.5f) * (1.0f / 16777216.0f);
  return -__logf(-__logf(u));
}

__device__ __forceinline__ int64_t row_lim(const Params& p, int m) {
  const int64_t l = (p.first + m) / p.div;
  return l < p.E ? l : p.E;
}

// Swizzled offset in a row-major bf16 tile of `cols` columns (a multiple of 64): 16-byte
// chunks XOR-ed by the row's low 3 bits within each group of 8 chunks.
__device__ __forceinline__ int swz(int row, int col, int cols) {
  const int ch = col >> 3;
  return row * cols + (((ch ^ row) & 7) | (ch & ~7)) * 8 + (col & 7);
}

// Inserts (s, id) into the descending list (v, ix) when it is strictly better than the
// last entry under the order: higher score first, then lower index.
template <int KT>
__device__ __forceinline__ void insert(float (&v)[KT], int (&ix)[KT], float s, int id) {
  auto better = [](float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); };
#pragma unroll
  for (int j = KT - 1; j > 0; --j) {
    const bool up = better(s, id, v[j - 1], ix[j - 1]);
    const bool here = better(s, id, v[j], ix[j]);
    const float nv = up ? v[j - 1] : (here ? s : v[j]);
    const int ni = up ? ix[j - 1] : (here ? id : ix[j]);
    v[j] = nv;
    ix[j] = ni;
  }
  if (better(s, id, v[0], ix[0])) {
    v[0] = s;
    ix[0] = id;
  }
}

template <int KT> __global__ void __launch_bounds__(kThreads) topk_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int DP = (p.D + kDC - 1) / kDC * kDC;
  const int ND = DP / kDC;
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Ks = Qs + kBM * DP;
  float* Ss = reinterpret_cast<float*>(Ks + kStages * kBN * kDC);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp & 3, wn = warp >> 2;  // query-row block, key half
  const int g = blockIdx.z, n = g / p.H, h = g % p.H;
  const int m0 = blockIdx.x * kBM;
  const __nv_bfloat16* qg = p.q + n * p.sqn + h * p.sqh;
  const __nv_bfloat16* kg = p.k + n * p.skn + h * p.skh;

  // lim is nondecreasing in m: the tile's last row sees the most keys.
  const int mlast = min(m0 + kBM, p.M) - 1;
  const int64_t limmax = row_lim(p, mlast);
  const int ntiles = int((limmax + kBN - 1) / kBN);
  const int t0 = blockIdx.y * p.tiles_per_split;
  const int t1 = min(t0 + p.tiles_per_split, ntiles);

  float v[KT];
  int ix[KT];
#pragma unroll
  for (int j = 0; j < KT; ++j) v[j] = -CUDART_INF_F, ix[j] = -1;

  const int srow = wm * 16 + (lane & 15);  // the row this lane scans
  const int half = lane >> 4;                // and which interleaved half of the columns

  if (t0 < t1) {
    // Query tile: rows past M and columns past D are zero.
    const int cpr = DP / 8;
    for (int c = tid; c < kBM * cpr; c += kThreads) {
      const int r = c / cpr, col = (c % cpr) * 8;
      const bool ok = m0 + r < p.M && col < p.D;
      cp_async16(Qs + swz(r, col, DP), ok ? qg + int64_t(m0 + r) * p.sqm + col : qg, ok);
    }
    cp_async_commit();

    const int nsteps = (t1 - t0) * ND;
    auto load_k = [&](int step) {
      const int t = t0 + step / ND, dc = step % ND;
      __nv_bfloat16* dst = Ks + (step % kStages) * kBN * kDC;
#pragma unroll
      for (int i = 0; i < kBN * kDC / 8 / kThreads; ++i) {
        const int c = tid + i * kThreads;
        const int r = c >> 3, col = (c & 7) * 8;
        const int64_t key = int64_t(t) * kBN + r;
        const int d = dc * kDC + col;
        const bool ok = key < p.E && d < p.D;
        cp_async16(dst + swz(r, col, kDC), ok ? kg + key * p.ske + d : kg, ok);
      }
    };
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < nsteps) load_k(s);
      cp_async_commit();
    }

    // Rows of this lane's accumulators, and their visibility limits.
    const int ra = wm * 16 + (lane >> 2);
    const int64_t lim_a = row_lim(p, min(m0 + ra, p.M - 1));
    const int64_t lim_b = row_lim(p, min(m0 + ra + 8, p.M - 1));
    float* St = Ss + warp * 16 * kSPad;

    float acc[8][4];
    for (int step = 0; step < nsteps; ++step) {
      cp_async_wait<kStages - 2>();
      __syncthreads();
      if (step + kStages - 1 < nsteps) load_k(step + kStages - 1);
      cp_async_commit();

      const int dc = step % ND;
      if (dc == 0) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
      }
      const __nv_bfloat16* Kt = Ks + (step % kStages) * kBN * kDC;
#pragma unroll
      for (int kk = 0; kk < kDC / 16; ++kk) {
        uint32_t a[4];
        ldsm_x4(a, Qs + swz(wm * 16 + (lane & 15), dc * kDC + kk * 16 + (lane >> 4) * 8, DP));
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t b[4];
          const int key = wn * kWN + np * 16 + (lane >> 4) * 8 + (lane & 7);
          ldsm_x4(b, Kt + swz(key, kk * 16 + ((lane >> 3) & 1) * 8, kDC));
          mma16816(acc[2 * np], a, b[0], b[1]);
          mma16816(acc[2 * np + 1], a, b[2], b[3]);
        }
      }

      if (dc == ND - 1) {
        const int64_t kbase = int64_t(t0 + step / ND) * kBN + wn * kWN;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const int col = nt * 8 + 2 * (lane & 3);
          const int64_t key = kbase + col;
          float2 sa, sb;
          sa.x = key < lim_a ? acc[nt][0] * p.scale : -CUDART_INF_F;
          sa.y = key + 1 < lim_a ? acc[nt][1] * p.scale : -CUDART_INF_F;
          sb.x = key < lim_b ? acc[nt][2] * p.scale : -CUDART_INF_F;
          sb.y = key + 1 < lim_b ? acc[nt][3] * p.scale : -CUDART_INF_F;
          if (p.gumbel) {
            const int64_t qa = p.first + m0 + ra, qb = qa + 8;
            sa.x += gumbel_noise(p.seed, g, qa, key);
            sa.y += gumbel_noise(p.seed, g, qa, key + 1);
            sb.x += gumbel_noise(p.seed, g, qb, key);
            sb.y += gumbel_noise(p.seed, g, qb, key + 1);
          }
          *reinterpret_cast<float2*>(St + (lane >> 2) * kSPad + col) = sa;
          *reinterpret_cast<float2*>(St + ((lane >> 2) + 8) * kSPad + col) = sb;
        }
        __syncwarp();
        const float* row = St + (lane & 15) * kSPad;
#pragma unroll 8
        for (int c = 0; c < kWN / 2; ++c) {
          const int col = 2 * c + half;
          const float s = row[col];
          if (s > v[KT - 1]) insert<KT>(v, ix, s, int(kbase + col));
        }
        __syncwarp();
      }
    }
    cp_async_wait<0>();
  }

  const int m = m0 + srow;
  if (m < p.M) {
    const int64_t base =
        ((int64_t(g) * p.M + m) * (kLists * p.splits) + kLists * blockIdx.y + 2 * wn + half) * KT;
#pragma unroll
    for (int j = 0; j < KT; ++j) {
      p.ps[base + j] = v[j];
      p.pi[base + j] = ix[j];
    }
  }
}

template <int KT>
__global__ void merge_kernel(const float* __restrict__ ps, const int* __restrict__ pi,
                             float* __restrict__ os, int64_t* __restrict__ oi, int64_t rows,
                             int lists, int topk) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  float v[KT];
  int ix[KT];
#pragma unroll
  for (int j = 0; j < KT; ++j) v[j] = -CUDART_INF_F, ix[j] = -1;
  for (int l = 0; l < lists; ++l) {
    const float* s = ps + (row * lists + l) * KT;
    const int* id = pi + (row * lists + l) * KT;
    for (int j = 0; j < KT; ++j) {
      const float x = s[j];
      if (!(x > -CUDART_INF_F)) break;  // lists are sorted; the rest is empty
      const int i = id[j];
      if (!(x > v[KT - 1] || (x == v[KT - 1] && i < ix[KT - 1]))) break;
      insert<KT>(v, ix, x, i);
    }
  }
#pragma unroll
  for (int j = 0; j < KT; ++j) {
    if (j < topk) {
      const bool ok = v[j] > -CUDART_INF_F;
      os[row * topk + j] = ok ? v[j] : -CUDART_INF_F;
      oi[row * topk + j] = ok ? int64_t(ix[j]) : int64_t(-1);
    }
  }
}

inline size_t topk_smem(int D) {
  const int DP = (D + kDC - 1) / kDC * kDC;
  return size_t(kBM * DP + kStages * kBN * kDC) * 2 + size_t(kWarps * 16 * kSPad) * 4;
}

template <int KT> cudaError_t launch(const Params& p, float* os, int64_t* oi, int topk,
                                     cudaStream_t s) {
  const size_t smem = topk_smem(p.D);
  auto kernel = topk_kernel<KT>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  dim3 grid((p.M + kBM - 1) / kBM, p.splits, p.N * p.H);
  kernel<<<grid, kThreads, smem, s>>>(p);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const int64_t rows = int64_t(p.N) * p.H * p.M;
  const int threads = 128;
  merge_kernel<KT><<<unsigned((rows + threads - 1) / threads), threads, 0, s>>>(
      p.ps, p.pi, os, oi, rows, kLists * p.splits, topk);
  return cudaGetLastError();
}

}  // namespace ret
}  // namespace lcm

extern "C" {

// Largest head dim and top-k the retrieval kernel takes.
int lcm_retrieval_max_dim() { return 1024; }
int lcm_retrieval_max_k() { return 32; }

// How the key range is split across CTAs: writes splits and tiles per split, and returns
// the number of partial lists per query row (4 * splits), which sizes the scratch.
int lcm_retrieval_plan(int N, int H, int M, int E, int D, int64_t first, int div, int topk,
                       int* splits, int* tiles_per_split) {
  using namespace lcm::ret;
  int64_t lim = (first + M - 1) / div;
  if (lim > E) lim = E;
  if (lim < 0) lim = 0;
  const int ntiles = int((lim + kBN - 1) / kBN);
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess)
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  // CTAs resident per SM: shared memory (228 KB per SM, 1 KB reserved per CTA) and
  // registers (up to 128 per thread at k <= 16, 160 at k = 32; 256 threads).
  const int by_smem = int(233472 / (topk_smem(D) + 1024));
  const int by_regs = topk > 16 ? 1 : 2;
  const int resident = by_smem < 1 ? 1 : (by_smem < by_regs ? by_smem : by_regs);
  // Whole waves of about two CTAs per slot: the split count that fills them.
  const int64_t ctas = int64_t((M + kBM - 1) / kBM) * N * H;
  int64_t want = 2 * int64_t(sms) * resident / ctas;
  if (want > 64) want = 64;
  if (want > ntiles) want = ntiles;
  if (want < 1) want = 1;
  const int tps = ntiles == 0 ? 0 : int((ntiles + want - 1) / want);
  *tiles_per_split = tps;
  *splits = tps == 0 ? 1 : (ntiles + tps - 1) / tps;
  return kLists * *splits;
}

int lcm_retrieval_topk_launch(const void* q, const void* k, const int64_t* strides, float* ps,
                              int* pi, float* os, int64_t* oi, int N, int H, int M, int E,
                              int D, int64_t first, int div, int splits, int tiles_per_split,
                              int topk, float scale, uint64_t seed, int gumbel,
                              cudaStream_t s) {
  using namespace lcm::ret;
  Params p;
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(k);
  p.sqn = strides[0], p.sqm = strides[1], p.sqh = strides[2];
  p.skn = strides[3], p.ske = strides[4], p.skh = strides[5];
  p.ps = ps, p.pi = pi;
  p.N = N, p.H = H, p.M = M, p.E = E, p.D = D, p.div = div;
  p.splits = splits, p.tiles_per_split = tiles_per_split;
  p.first = first;
  p.scale = scale;
  p.seed = seed;
  p.gumbel = gumbel;
  if (D < 8 || D > 1024 || D % 8 != 0 || div < 1 || topk < 1 || topk > 32)
    return cudaErrorInvalidValue;
  if (topk <= 8) return launch<8>(p, os, oi, topk, s);
  if (topk <= 16) return launch<16>(p, os, oi, topk, s);
  return launch<32>(p, os, oi, topk, s);
}

}  // extern "C"
