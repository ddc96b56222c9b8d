// The HSA forward (hsa.cuh says what the op is): the tensor-core kernel (kHsaMma) and the
// CUDA-core one (kHsaSimt, any shape). Design: docs/kernels/hsa.md.
#include "hsa.cuh"

namespace lcm {
namespace hsa {

template <int D> __host__ __device__ constexpr int pad() { return D + 1; }

template <int D> __host__ size_t fwd_smem(int G, int S) {
  return sizeof(float) * (size_t(2) * G * D + size_t(2) * S * pad<D>() + size_t(G) * S);
}
// Gathers chunk `c`'s S rows of kv head h (batch n) into padded fp32 shared tiles.
template <int D>
__device__ __forceinline__ void gather_chunk(const Params& p, int n, int h, int64_t c,
                                             float* sK, float* sV, bool want_v) {
  const int64_t lkv = int64_t(p.C) * p.S;
  const int64_t base = ((int64_t(n) * lkv + c * p.S) * p.H + h) * D;
  const int64_t rs = int64_t(p.H) * D;  // stride between memory rows
  for (int e = threadIdx.x; e < p.S * (D / 2); e += kThreads) {
    const int s = e / (D / 2), d = (e % (D / 2)) * 2;
    const int64_t off = base + s * rs + d;
    const float2 kk = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.k + off));
    sK[s * pad<D>() + d] = kk.x;
    sK[s * pad<D>() + d + 1] = kk.y;
    if (want_v) {
      const float2 vv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.v + off));
      sV[s * pad<D>() + d] = vv.x;
      sV[s * pad<D>() + d + 1] = vv.y;
    }
  }
}

// Loads the G rows of D bf16 starting at src (rows contiguous) into fp32 shared memory.
template <int D>
__device__ __forceinline__ void load_rows(float* dst, const __nv_bfloat16* src, int G) {
  for (int e = threadIdx.x; e < G * (D / 2); e += kThreads) {
    const float2 x = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(src)[e]);
    dst[2 * e] = x.x;
    dst[2 * e + 1] = x.y;
  }
}

// sS[g*S + s] = scale * sQ[g] . sK[s] for all g, s.
template <int D>
__device__ __forceinline__ void scores(const Params& p, const float* sQ, const float* sK,
                                       float* sS) {
  for (int e = threadIdx.x; e < p.G * p.S; e += kThreads) {
    const int g = e / p.S, s = e % p.S;
    const float* qr = sQ + g * D;
    const float* kr = sK + s * pad<D>();
    float acc = 0.f;
#pragma unroll 16
    for (int d = 0; d < D; ++d) acc = fmaf(qr[d], kr[d], acc);
    sS[e] = acc * p.scale;
  }
}

template <int D> __global__ void __launch_bounds__(kThreads) hsa_fwd_kernel(const Params p) {
  extern __shared__ float smem[];
  float* sQ = smem;                      // G x D
  float* sO = sQ + p.G * D;              // G x D
  float* sK = sO + p.G * D;              // S x (D+1)
  float* sV = sK + p.S * pad<D>();       // S x (D+1)
  float* sP = sV + p.S * pad<D>();       // G x S
  const int64_t tok = blockIdx.x;        // (n*L + l)*H + h
  const int h = int(tok % p.H);
  const int64_t nl = tok / p.H;
  const int n = int(nl / p.L);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  const int64_t qrow = (nl * p.Hq + int64_t(h) * p.G) * D;
  load_rows<D>(sQ, p.q + qrow, p.G);
  for (int e = threadIdx.x; e < p.G * D; e += kThreads) sO[e] = 0.f;

  for (int slot = 0; slot < p.K; ++slot) {
    const int64_t c = p.idx[tok * p.K + slot];
    const float w = p.w[tok * p.K + slot];
    float* lse_out = p.lse + (nl * p.Hq + int64_t(h) * p.G) * p.K + slot;  // stride K per g
    if (c < 0 || c >= p.C) {
      for (int g = threadIdx.x; g < p.G; g += kThreads) lse_out[g * p.K] = 0.f;
      continue;
    }
    __syncthreads();  // previous slot's readers of sK/sV/sP are done
    gather_chunk<D>(p, n, h, c, sK, sV, true);
    __syncthreads();
    scores<D>(p, sQ, sK, sP);
    __syncthreads();
    for (int g = warp; g < p.G; g += kWarps) {
      float* row = sP + g * p.S;
      float m = -INFINITY;
      for (int s = lane; s < p.S; s += 32) m = fmaxf(m, row[s]);
      m = warp_max(m);
      if (p.one) m = fmaxf(m, 0.f);
      float sum = 0.f;
      for (int s = lane; s < p.S; s += 32) sum += __expf(row[s] - m);
      sum = warp_sum(sum);
      if (p.one) sum += __expf(-m);
      const float lse = m + __logf(sum);
      __syncwarp();
      for (int s = lane; s < p.S; s += 32) row[s] = __expf(row[s] - lse);
      if (lane == 0) lse_out[g * p.K] = lse;
    }
    __syncthreads();
    if (w != 0.f) {
      for (int e = threadIdx.x; e < p.G * D; e += kThreads) {
        const int g = e / D, d = e % D;
        const float* pr = sP + g * p.S;
        float acc = 0.f;
        for (int s = 0; s < p.S; ++s) acc = fmaf(pr[s], sV[s * pad<D>() + d], acc);
        sO[e] = fmaf(w, acc, sO[e]);  // each thread owns its elements across slots
      }
    }
  }
  __syncthreads();
  __nv_bfloat16* o = p.o + qrow;
  for (int e = threadIdx.x; e < p.G * D; e += kThreads) o[e] = __float2bfloat16_rn(sO[e]);
}

// ---------------------------------------------------------------------------------------
// Tensor-core forward (G <= 16): one warp per (batch, token, kv head); the G query heads
// are the 16 rows of one m16n8k16 A tile (rows >= G zero), a chunk of S <= 64 keys is
// one 64-key tile (rows >= S zero-filled and masked). The chunks are gathered by cp.async
// into XOR-swizzled bf16 tiles, double-buffered across slots; P is rounded to bf16 for
// P V (as in GCA). Helpers in mma.cuh.

constexpr int kMmaWarps = 1;  // warps (tokens) per CTA

template <int D, bool ONE, int NU>
__global__ void __launch_bounds__(32 * kMmaWarps) hsa_fwd_mma_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  __nv_bfloat16* sQ =
      reinterpret_cast<__nv_bfloat16*>(smem_raw) + warp * mma_warp_smem_elems<D, NU>();
  __nv_bfloat16* sU = sQ + 16 * D;  // unit stage st at st*kTile*D
  const int64_t tok = int64_t(blockIdx.x) * kMmaWarps + warp;
  if (tok >= int64_t(p.N) * p.L * p.H) return;  // no CTA-wide barriers below
  const int h = int(tok % p.H);
  const int64_t nl = tok / p.H;
  const int n = int(nl / p.L);
  const int64_t lkv = int64_t(p.C) * p.S;
  const int64_t rs = int64_t(p.H) * D;

  const int64_t qrow = (nl * p.Hq + int64_t(h) * p.G) * D;
  warp_load<16, D>(sQ, p.q + qrow, D, p.G);
  auto slot_chunk = [&](int slot) -> int64_t {
    const int64_t c = p.idx[tok * p.K + slot];
    return (c < 0 || c >= p.C) ? -1 : c;
  };
  // unit u: slot u / 2's K (u even) or V (u odd)
  const int nu = 2 * p.K;
  auto load_unit = [&](int u) {
    if (u >= nu) return;
    const int64_t c = slot_chunk(u >> 1);
    if (c < 0) return;
    const int64_t off = ((int64_t(n) * lkv + c * p.S) * p.H + h) * D;
    warp_load<kTile, D>(sU + (u % NU) * kTile * D, ((u & 1) ? p.v : p.k) + off, rs, p.S);
  };
  // Issue unit u + NU - 1 into the stage unit u - 1 left (every lane is past it: the
  // __syncwarp after each unit), then wait for unit u.
  auto advance = [&](int u) {
    load_unit(u + NU - 1);
    cp_async_commit();
    cp_async_wait<NU - 1>();
    __syncwarp();
  };
  for (int u = 0; u < NU - 1; ++u) {
    load_unit(u);
    cp_async_commit();
  }

  float acc[D / 8][4];
#pragma unroll
  for (int nn = 0; nn < D / 8; ++nn)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nn][e] = 0.f;
  const float sl2 = p.scale * kLog2e;
  float* lse_base = p.lse + (nl * p.Hq + int64_t(h) * p.G) * p.K;

  for (int slot = 0; slot < p.K; ++slot) {
    const bool valid = slot_chunk(slot) >= 0;
    float s[kTile / 8][4];
    // K unit: S = Q K^T, the softmax, the LSE
    advance(2 * slot);
    if (!valid) {
      if (t == 0) {
        if (g < p.G) lse_base[g * p.K + slot] = 0.f;
        if (g + 8 < p.G) lse_base[(g + 8) * p.K + slot] = 0.f;
      }
    } else {
      const __nv_bfloat16* tK = sU + ((2 * slot) % NU) * kTile * D;
#pragma unroll
      for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nn][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldsm_x4(a, sQ + sw<D>(lane & 15, kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          uint32_t bb[4];
          ldsm_x4(bb, tK + sw<D>(np * 16 + (lane & 7) + (lane >> 4) * 8,
                                 kk * 16 + ((lane >> 3) & 1) * 8));
          mma16816(s[2 * np], a, bb[0], bb[1]);
          mma16816(s[2 * np + 1], a, bb[2], bb[3]);
        }
      }
      if (p.S < kTile) {
#pragma unroll
        for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (nn * 8 + 2 * t + (e & 1) >= p.S) s[nn][e] = -INFINITY;
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[nn][e]);
      float neg[2], rsum[2] = {0.f, 0.f};
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
        mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
        // scaled base-2 max (scale > 0 checked by the bridge); softmax_one: at least 0
        mx[hh] = mx[hh] * sl2;
        if (ONE) mx[hh] = fmaxf(mx[hh], 0.f);
        neg[hh] = -mx[hh];
      }
#pragma unroll
      for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nn][e] = exp2f(fmaf(s[nn][e], sl2, neg[e >> 1]));
          rsum[e >> 1] += s[nn][e];
        }
      const float w = p.w[tok * p.K + slot];
      float f[2];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        rsum[hh] += __shfl_xor_sync(0xffffffffu, rsum[hh], 1);
        rsum[hh] += __shfl_xor_sync(0xffffffffu, rsum[hh], 2);
        if (ONE) rsum[hh] += exp2f(neg[hh]);
        f[hh] = w / rsum[hh];
        const float lse = (mx[hh] + __log2f(rsum[hh])) * 0.6931471805599453f;
        const int row = g + 8 * hh;
        if (t == 0 && row < p.G) lse_base[row * p.K + slot] = lse;
      }
#pragma unroll
      for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nn][e] *= f[e >> 1];
    }
    __syncwarp();  // done reading the K unit's stage before it is refilled
    // V unit: O += (w P / l) V
    advance(2 * slot + 1);
    if (valid) {
      const __nv_bfloat16* tV = sU + ((2 * slot + 1) % NU) * kTile * D;
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) {
        uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                         pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bb[4];
          ldsm_x4_t(bb, tV + sw<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                   dp * 16 + (lane >> 4) * 8));
          mma16816(acc[2 * dp], a, bb[0], bb[1]);
          mma16816(acc[2 * dp + 1], a, bb[2], bb[3]);
        }
      }
    }
    __syncwarp();  // done reading the V unit's stage before it is refilled
  }
  cp_async_wait<0>();
  __nv_bfloat16* o = p.o + qrow;
#pragma unroll
  for (int nn = 0; nn < D / 8; ++nn) {
    const int col = nn * 8 + 2 * t;
    if (g < p.G)
      *reinterpret_cast<uint32_t*>(o + g * D + col) = pack_bf16(acc[nn][0], acc[nn][1]);
    if (g + 8 < p.G)
      *reinterpret_cast<uint32_t*>(o + (g + 8) * D + col) = pack_bf16(acc[nn][2], acc[nn][3]);
  }
}

template <int D, bool ONE, int NU> int launch_fwd_mma(const Params& p, cudaStream_t s) {
  const size_t smem = sizeof(__nv_bfloat16) * size_t(mma_warp_smem_elems<D, NU>()) * kMmaWarps;
  cudaError_t e = cudaFuncSetAttribute(hsa_fwd_mma_kernel<D, ONE, NU>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const int64_t items = int64_t(p.N) * p.L * p.H;
  if (items == 0) return cudaSuccess;
  const int64_t blocks = (items + kMmaWarps - 1) / kMmaWarps;
  hsa_fwd_mma_kernel<D, ONE, NU><<<dim3(unsigned(blocks)), 32 * kMmaWarps, smem, s>>>(p);
  return cudaGetLastError();
}

template <int D> int launch_fwd(const Params& p, cudaStream_t s) {
  const size_t smem = fwd_smem<D>(p.G, p.S);
  cudaError_t e = cudaFuncSetAttribute(hsa_fwd_kernel<D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const int64_t blocks = int64_t(p.N) * p.L * p.H;
  if (blocks == 0) return cudaSuccess;
  hsa_fwd_kernel<D><<<dim3(unsigned(blocks)), kThreads, smem, s>>>(p);
  return cudaGetLastError();
}

}  // namespace hsa
}  // namespace lcm

extern "C" {

// path: an HsaPath (attn_path.h); kHsaMma falls back to kHsaSimt where the shape needs it
// (G > 16, S > 64, scale <= 0).
int lcm_hsa_fwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, void* o, float* lse, int N, int L, int Hq, int H,
                       int K, int S, int C, int D, float scale, int one, int path,
                       cudaStream_t s) {
  using namespace lcm::hsa;
  Params p{};
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(k);
  p.v = static_cast<const __nv_bfloat16*>(v);
  p.w = w;
  p.idx = idx;
  p.o = static_cast<__nv_bfloat16*>(o);
  p.lse = lse;
  p.N = N, p.L = L, p.Hq = Hq, p.H = H, p.G = Hq / H, p.K = K, p.S = S, p.C = C;
  p.scale = scale;
  p.one = one;
  // G <= 16 and S <= 64 on tensor cores (needs scale > 0); else the CUDA-core kernel.
  if (path == lcm::kHsaMma && p.G <= 16 && p.S <= kTile && scale > 0.f) {
    if (D == 64) return one ? launch_fwd_mma<64, true, kFwdUnits>(p, s)
                            : launch_fwd_mma<64, false, kFwdUnits>(p, s);
    if (D == 128) return one ? launch_fwd_mma<128, true, kFwdUnits>(p, s)
                             : launch_fwd_mma<128, false, kFwdUnits>(p, s);
  }
  if (D == 64) return launch_fwd<64>(p, s);
  if (D == 128) return launch_fwd<128>(p, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
