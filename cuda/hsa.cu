// Hierarchical Sparse Attention (HSA): forward and backward, bf16 in, fp32 accumulation.
//
// Every token attends, per kv head, to K chunks of S keys gathered by index from the whole
// memory, and sums the per-chunk outputs with its retrieval weights:
//   o[n,l,h*G+g] = sum_k w[n,l,h,k] * softmax_s(scale * q . k_{idx,s}) v_{idx,s}
// An index < 0 (or >= C) is an empty slot: no output, no gradient, dweight 0. A weight of 0
// contributes nothing to o but its slot still gets its dweight (as in the reference op).
// softmax_one adds exp(0) to every per-chunk denominator. Duplicated indices count once
// per slot, each with its own weight.
// Reference: src/ops/hsa.rs (hsa_reference). Tests: tests/ops_hsa_cuda.rs.
//
// Forward for G <= 16 and S <= 64 (the model's shapes): on tensor cores, one warp per
// (token, kv head), see hsa_fwd_mma_kernel below. Otherwise, and for the whole backward:
// Layout (first, correctness-first version): one CTA of 128 threads per (batch n, token l,
// kv head h); the G query heads of the kv head are the rows of one G x D tile (the GQA
// group packed into the rows, so each gathered chunk is read once per token and kv head).
// The chunk's keys and values are gathered into shared memory (fp32, rows padded to D+1
// floats so that column walks are bank-conflict free) and the G x S scores, the softmax
// and the products run on CUDA cores in fp32.
//
// lse[n,l,hq,k] = natural-log per-slot softmax denominator (with the max folded in), saved
// for the backward; P = exp(scale * q.k - lse).
//
// Backward, per CTA and valid slot: P recomputed from lse, dP = dO V^T, Di = rowsum(P*dP),
//   dweight = sum_g Di[g],  dS = w * P * (dP - Di),
//   dq += scale * dS K (kept in shared memory across slots),
//   dk[idx] += scale * dS^T Q,  dv[idx] += (wP)^T dO   (fp32 atomics into a scratch of the
// whole memory, converted to bf16 at the end: dk/dv are not bitwise deterministic run to
// run; o, lse, dq and dweights are).
#include "common.cuh"
#include "mma.cuh"

namespace lcm {
namespace hsa {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

struct Params {
  const __nv_bfloat16* q;     // (N, L, Hq, D) contiguous
  const __nv_bfloat16* k;     // (N, Lkv, H, D) contiguous
  const __nv_bfloat16* v;     // (N, Lkv, H, D) contiguous
  const float* w;             // (N, L, H, K) contiguous
  const int64_t* idx;         // (N, L, H, K) contiguous
  const __nv_bfloat16* dout;  // (N, L, Hq, D) contiguous (backward)
  __nv_bfloat16* o;           // (N, L, Hq, D) (forward)
  float* lse;                 // (N, L, Hq, K)
  __nv_bfloat16* dq;          // (N, L, Hq, D) (backward)
  float* dk;                  // (N, Lkv, H, D) fp32 scratch, zeroed (backward)
  float* dv;                  // (N, Lkv, H, D) fp32 scratch, zeroed (backward)
  float* dw;                  // (N, L, H, K) (backward)
  int N, L, Hq, H, G, K, S, C;
  float scale;
  int one;
};

template <int D> __host__ __device__ constexpr int pad() { return D + 1; }

template <int D> __host__ size_t fwd_smem(int G, int S) {
  return sizeof(float) * (size_t(2) * G * D + size_t(2) * S * pad<D>() + size_t(G) * S);
}
template <int D> __host__ size_t bwd_smem(int G, int S) {
  return sizeof(float) *
         (size_t(3) * G * D + size_t(2) * S * pad<D>() + size_t(2) * G * S + G + 1);
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

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
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

template <int D> __global__ void __launch_bounds__(kThreads) hsa_bwd_kernel(const Params p) {
  extern __shared__ float smem[];
  float* sQ = smem;                  // G x D
  float* sdO = sQ + p.G * D;         // G x D
  float* sdQ = sdO + p.G * D;        // G x D
  float* sK = sdQ + p.G * D;         // S x (D+1)
  float* sV = sK + p.S * pad<D>();   // S x (D+1)
  float* sP = sV + p.S * pad<D>();   // G x S: P, then w * P
  float* sdS = sP + p.G * p.S;       // G x S: dP, then dS
  float* sDi = sdS + p.G * p.S;      // G (+1: the slot's dweight)
  const int64_t tok = blockIdx.x;
  const int h = int(tok % p.H);
  const int64_t nl = tok / p.H;
  const int n = int(nl / p.L);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t lkv = int64_t(p.C) * p.S;

  const int64_t qrow = (nl * p.Hq + int64_t(h) * p.G) * D;
  load_rows<D>(sQ, p.q + qrow, p.G);
  load_rows<D>(sdO, p.dout + qrow, p.G);
  for (int e = threadIdx.x; e < p.G * D; e += kThreads) sdQ[e] = 0.f;

  for (int slot = 0; slot < p.K; ++slot) {
    const int64_t c = p.idx[tok * p.K + slot];
    const float w = p.w[tok * p.K + slot];
    if (c < 0 || c >= p.C) {
      if (threadIdx.x == 0) p.dw[tok * p.K + slot] = 0.f;
      continue;
    }
    const float* lse_in = p.lse + (nl * p.Hq + int64_t(h) * p.G) * p.K + slot;
    __syncthreads();
    gather_chunk<D>(p, n, h, c, sK, sV, true);
    __syncthreads();
    scores<D>(p, sQ, sK, sP);
    // dP = dO V^T
    for (int e = threadIdx.x; e < p.G * p.S; e += kThreads) {
      const int g = e / p.S, s = e % p.S;
      const float* orow = sdO + g * D;
      const float* vr = sV + s * pad<D>();
      float acc = 0.f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) acc = fmaf(orow[d], vr[d], acc);
      sdS[e] = acc;
      sP[e] = __expf(sP[e] - lse_in[g * p.K]);  // same thread wrote sP[e] in scores()
    }
    __syncthreads();
    for (int g = warp; g < p.G; g += kWarps) {
      float acc = 0.f;
      for (int s = lane; s < p.S; s += 32) acc += sP[g * p.S + s] * sdS[g * p.S + s];
      acc = warp_sum(acc);
      if (lane == 0) sDi[g] = acc;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float dw = 0.f;
      for (int g = 0; g < p.G; ++g) dw += sDi[g];
      p.dw[tok * p.K + slot] = dw;
    }
    for (int e = threadIdx.x; e < p.G * p.S; e += kThreads) {
      const int g = e / p.S;
      const float pp = sP[e];
      sdS[e] = w * pp * (sdS[e] - sDi[g]);
      sP[e] = w * pp;
    }
    __syncthreads();
    // dq (g, d) += scale * sum_s dS[g, s] k[s, d]
    for (int e = threadIdx.x; e < p.G * D; e += kThreads) {
      const int g = e / D, d = e % D;
      const float* dsr = sdS + g * p.S;
      float acc = 0.f;
      for (int s = 0; s < p.S; ++s) acc = fmaf(dsr[s], sK[s * pad<D>() + d], acc);
      sdQ[e] = fmaf(p.scale, acc, sdQ[e]);
    }
    // dk (s, d) += scale * sum_g dS[g, s] q[g, d];  dv (s, d) += sum_g wP[g, s] dO[g, d]
    const int64_t base = ((int64_t(n) * lkv + c * p.S) * p.H + h) * D;
    for (int e = threadIdx.x; e < p.S * D; e += kThreads) {
      const int s = e / D, d = e % D;
      float ak = 0.f, av = 0.f;
      for (int g = 0; g < p.G; ++g) {
        ak = fmaf(sdS[g * p.S + s], sQ[g * D + d], ak);
        av = fmaf(sP[g * p.S + s], sdO[g * D + d], av);
      }
      const int64_t off = base + int64_t(s) * p.H * D + d;
      atomicAdd(p.dk + off, ak * p.scale);
      atomicAdd(p.dv + off, av);
    }
  }
  __syncthreads();
  __nv_bfloat16* dq = p.dq + qrow;
  for (int e = threadIdx.x; e < p.G * D; e += kThreads) dq[e] = __float2bfloat16_rn(sdQ[e]);
}

// ---------------------------------------------------------------------------------------
// Tensor-core forward (G <= 16): one warp per (batch, token, kv head); the G query heads
// are the 16 rows of one m16n8k16 A tile (rows >= G zero), a chunk of S <= 64 keys is
// one 64-key tile (rows >= S zero-filled and masked). The chunks are gathered by cp.async
// into XOR-swizzled bf16 tiles, double-buffered across slots; P is rounded to bf16 for
// P V (as gca.cu). Helpers in mma.cuh.

// The warp loads `rows` of ROWS rows of D bf16 (the rest zero-filled); row r at src + r*rs.
template <int ROWS, int D>
__device__ __forceinline__ void warp_load(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                          int64_t rs, int rows) {
  const int lane = threadIdx.x & 31;
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int i = lane; i < ROWS * kChunks; i += 32) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool valid = r < rows;
    cp_async16(dst + sw<D>(r, c), src + (valid ? r : 0) * rs + c, valid);
  }
}

constexpr int kMmaWarps = 1;  // warps (tokens) per CTA
constexpr int kTile = 64;     // keys per chunk tile

template <int D> __host__ __device__ constexpr int mma_warp_smem_elems() {
  return 16 * D + 2 * 2 * kTile * D;  // Q + 2 stages of (K, V)
}

template <int D, bool ONE>
__global__ void __launch_bounds__(32 * kMmaWarps) hsa_fwd_mma_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  __nv_bfloat16* sQ =
      reinterpret_cast<__nv_bfloat16*>(smem_raw) + warp * mma_warp_smem_elems<D>();
  __nv_bfloat16* sKV = sQ + 16 * D;  // stage st: K at st*2*kTile*D, V after it
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
  auto load_slot = [&](int slot, int st) {
    const int64_t c = slot_chunk(slot);
    if (c < 0) return;
    const int64_t off = ((int64_t(n) * lkv + c * p.S) * p.H + h) * D;
    __nv_bfloat16* dK = sKV + st * 2 * kTile * D;
    warp_load<kTile, D>(dK, p.k + off, rs, p.S);
    warp_load<kTile, D>(dK + kTile * D, p.v + off, rs, p.S);
  };
  load_slot(0, 0);
  cp_async_commit();

  float acc[D / 8][4];
#pragma unroll
  for (int nn = 0; nn < D / 8; ++nn)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nn][e] = 0.f;
  const float sl2 = p.scale * 1.4426950408889634f;
  float* lse_base = p.lse + (nl * p.Hq + int64_t(h) * p.G) * p.K;

  for (int slot = 0; slot < p.K; ++slot) {
    if (slot + 1 < p.K) load_slot(slot + 1, (slot + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    const int64_t c = slot_chunk(slot);
    if (c < 0) {
      if (t == 0) {
        if (g < p.G) lse_base[g * p.K + slot] = 0.f;
        if (g + 8 < p.G) lse_base[(g + 8) * p.K + slot] = 0.f;
      }
      continue;
    }
    const __nv_bfloat16* tK = sKV + (slot & 1) * 2 * kTile * D;
    const __nv_bfloat16* tV = tK + kTile * D;
    float s[kTile / 8][4];
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
    __syncwarp();  // done reading this stage before it is refilled
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

template <int D, bool ONE> int launch_fwd_mma(const Params& p, cudaStream_t s) {
  const size_t smem = sizeof(__nv_bfloat16) * size_t(mma_warp_smem_elems<D>()) * kMmaWarps;
  cudaError_t e = cudaFuncSetAttribute(hsa_fwd_mma_kernel<D, ONE>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const int64_t items = int64_t(p.N) * p.L * p.H;
  if (items == 0) return cudaSuccess;
  const int64_t blocks = (items + kMmaWarps - 1) / kMmaWarps;
  hsa_fwd_mma_kernel<D, ONE><<<dim3(unsigned(blocks)), 32 * kMmaWarps, smem, s>>>(p);
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

template <int D> int launch_bwd(const Params& p, cudaStream_t s) {
  const size_t smem = bwd_smem<D>(p.G, p.S);
  cudaError_t e = cudaFuncSetAttribute(hsa_bwd_kernel<D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const int64_t blocks = int64_t(p.N) * p.L * p.H;
  if (blocks == 0) return cudaSuccess;
  hsa_bwd_kernel<D><<<dim3(unsigned(blocks)), kThreads, smem, s>>>(p);
  return cudaGetLastError();
}

}  // namespace hsa
}  // namespace lcm

extern "C" {

int lcm_hsa_fwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, void* o, float* lse, int N, int L, int Hq, int H,
                       int K, int S, int C, int D, float scale, int one, cudaStream_t s) {
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
  if (p.G <= 16 && p.S <= kTile && scale > 0.f) {
    if (D == 64) return one ? launch_fwd_mma<64, true>(p, s) : launch_fwd_mma<64, false>(p, s);
    if (D == 128) return one ? launch_fwd_mma<128, true>(p, s) : launch_fwd_mma<128, false>(p, s);
  }
  if (D == 64) return launch_fwd<64>(p, s);
  if (D == 128) return launch_fwd<128>(p, s);
  return cudaErrorInvalidValue;
}

int lcm_hsa_bwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, const void* dout, const float* lse, void* dq,
                       float* dk, float* dv, float* dw, int N, int L, int Hq, int H, int K,
                       int S, int C, int D, float scale, int one, cudaStream_t s) {
  using namespace lcm::hsa;
  Params p{};
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(k);
  p.v = static_cast<const __nv_bfloat16*>(v);
  p.w = w;
  p.idx = idx;
  p.dout = static_cast<const __nv_bfloat16*>(dout);
  p.lse = const_cast<float*>(lse);
  p.dq = static_cast<__nv_bfloat16*>(dq);
  p.dk = dk;
  p.dv = dv;
  p.dw = dw;
  p.N = N, p.L = L, p.Hq = Hq, p.H = H, p.G = Hq / H, p.K = K, p.S = S, p.C = C;
  p.scale = scale;
  p.one = one;
  if (D == 64) return launch_bwd<64>(p, s);
  if (D == 128) return launch_bwd<128>(p, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
