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
// (token, kv head), see hsa_fwd_mma_kernel below. Otherwise (G up to 32) the first,
// correctness-first forward: one CTA of 128 threads per (batch n, token l, kv head h); the
// G query heads of the kv head are the rows of one G x D tile (the GQA group packed into
// the rows, so each gathered chunk is read once per token and kv head). The chunk's keys
// and values are gathered into shared memory (fp32, rows padded to D+1 floats so that
// column walks are bank-conflict free) and the G x S scores, the softmax and the products
// run on CUDA cores in fp32.
//
// lse[n,l,hq,k] = natural-log per-slot softmax denominator (with the max folded in), saved
// for the backward; P = exp(scale * q.k - lse).
//
// Backward (any supported shape; tensor cores, heads in groups of 16 MMA rows): per valid
// slot, P recomputed from lse, dP = dO V^T, Di = rowsum(P*dP), dweight = sum_g Di[g],
// dS = w * P * (dP - Di), dq += scale * dS K (one kernel per token), and per memory chunk
// dk += scale * dS^T Q, dv += (wP)^T dO over the chunk's inverse index (one CTA per chunk,
// no atomics): see the backward section below. Every output is bitwise deterministic.
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
  __nv_bfloat16* dk;          // (N, Lkv, H, D) (backward)
  __nv_bfloat16* dv;          // (N, Lkv, H, D) (backward)
  float* di;                  // (N, L, H, K, G) rowsum(P dP) per slot (backward)
  const int64_t* perm;        // valid pairs (token*K + slot) sorted by chunk (backward)
  const int64_t* offs;        // (N*H*C + 1) first entry of each chunk in perm (backward)
  const int64_t* order;       // (N*H*C) chunk keys, most pairs first (backward)
  int N, L, Hq, H, G, K, S, C;
  float scale;
  int one;
};

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

// The gather ring of the forward and of the backward's dq kernel holds *units*: one
// chunk's K or V tile (kTile x D bf16, 8 KB at D 64), not a (K, V) pair. A slot's S = Q K^T
// needs only K and its P V only V, so a unit's stage is free half a slot sooner, and a ring
// of NU units takes NU/2 pair-stages' shared memory: at NU = 2, 18 KB per warp instead of
// 34 KB for the pair ring of session 4, so twice the warps per SM (the bound there, in
// docs/benchmarks.md) with as many bytes in flight per SM.
template <int D, int NU> __host__ __device__ constexpr int mma_warp_smem_elems() {
  return 16 * D + NU * kTile * D;  // Q + NU unit stages
}

// Units in the gather ring of the forward and the dq kernel (LCM_HSA_FWD_UNITS /
// LCM_HSA_DQ_UNITS, 2 to 4: a tuning knob for the bench; see docs/benchmarks.md).
constexpr int kFwdUnits = 2, kDqUnits = 2;  // the fastest on the H200 (docs/benchmarks.md)
inline int env_units(const char* name, int dflt) {
  const char* v = getenv(name);
  const int n = v ? atoi(v) : dflt;
  return (n >= 2 && n <= 4) ? n : dflt;
}

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
  const float sl2 = p.scale * 1.4426950408889634f;
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

template <int D> int launch_fwd_mma_d(const Params& p, int one, int nu, cudaStream_t s) {
  if (nu == 3) return one ? launch_fwd_mma<D, true, 3>(p, s) : launch_fwd_mma<D, false, 3>(p, s);
  if (nu == 4) return one ? launch_fwd_mma<D, true, 4>(p, s) : launch_fwd_mma<D, false, 4>(p, s);
  return one ? launch_fwd_mma<D, true, 2>(p, s) : launch_fwd_mma<D, false, 2>(p, s);
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

// ---------------------------------------------------------------------------------------
// Tensor-core backward, in two kernels and no atomics (deterministic):
//
// 1. hsa_bwd_dq_kernel: one warp per (batch, token, kv head, group of 16 query heads),
//    the forward's layout (heads = MMA rows, the chunk gathered by cp.async, double-
//    buffered across slots). Per valid slot: S = Q K^T and dP = dO V^T (16 x 64 tiles),
//    P = exp(scale S - lse), Di = rowsum(P dP) (written out: the dkdv kernel needs it and
//    dweights = sum_g Di), dS = w P (dP - Di), dQ += dS K (registers across slots).
// 2. hsa_bwd_dkdv_kernel: one CTA (4 warps) per memory chunk (batch, kv head, chunk),
//    over the chunk's inverse index: the (token, slot) pairs that retrieved it, sorted by
//    pair (a stable sort of chunk keys in the bridge), so the sums run in a fixed order.
//    Warp w owns keys 16w..16w+15 of the chunk (rows of the transposed products):
//    S^T = K Q^T and dP^T = V dO^T (16 keys x 16 heads), P^T from lse, dS^T from Di,
//    dV += (wP)^T dO and dK += dS^T Q (16 keys x D, fp32 registers across all pairs);
//    each pair's Q, dO rows, lse, Di and w stream through an 8-stage cp.async ring shared
//    by the 4 warps (6 pairs in flight), one barrier per pair (variants with two pairs per
//    iteration exist behind a bench knob, see env_kv_variant; none was faster). CTAs run heaviest chunk first (the bridge orders them by pair count).
//    dK, dV are written once, in bf16; chunks nobody retrieved get zeros.

// 4-byte async copy, zero-filled when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}

constexpr float kLog2e = 1.4426950408889634f;

template <int D, int NU> __host__ __device__ constexpr int dq_smem_elems() {
  return 2 * 16 * D + NU * kTile * D;  // Q, dO + NU unit stages
}

// The unit ring of the forward (see mma_warp_smem_elems), V before K: dP = dO V^T needs only
// V; S = Q K^T, Di, dS and dQ += dS K need only K after it.
template <int D, int NU>
__global__ void __launch_bounds__(32) hsa_bwd_dq_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sdO = sQ + 16 * D;
  __nv_bfloat16* sU = sdO + 16 * D;  // unit stage st at st*kTile*D
  const int64_t tok = blockIdx.x;    // (n*L + l)*H + h
  const int hg = blockIdx.y;         // group of 16 query heads
  const int h = int(tok % p.H);
  const int64_t nl = tok / p.H;
  const int n = int(nl / p.L);
  const int64_t lkv = int64_t(p.C) * p.S;
  const int64_t rs = int64_t(p.H) * D;
  const int rows = min(16, p.G - 16 * hg);
  const int64_t head0 = nl * p.Hq + int64_t(h) * p.G + 16 * hg;

  warp_load<16, D>(sQ, p.q + head0 * D, D, rows);
  warp_load<16, D>(sdO, p.dout + head0 * D, D, rows);
  auto slot_chunk = [&](int slot) -> int64_t {
    const int64_t c = p.idx[tok * p.K + slot];
    return (c < 0 || c >= p.C) ? -1 : c;
  };
  // unit u: slot u / 2's V (u even) or K (u odd)
  const int nu = 2 * p.K;
  auto load_unit = [&](int u) {
    if (u >= nu) return;
    const int64_t c = slot_chunk(u >> 1);
    if (c < 0) return;
    const int64_t off = ((int64_t(n) * lkv + c * p.S) * p.H + h) * D;
    warp_load<kTile, D>(sU + (u % NU) * kTile * D, ((u & 1) ? p.k : p.v) + off, rs, p.S);
  };
  auto advance = [&](int u) {  // as the forward's
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
  const float* lse_base = p.lse + head0 * p.K;
  float* di_base = p.di + tok * p.K * p.G + 16 * hg;  // + slot*G + row

  for (int slot = 0; slot < p.K; ++slot) {
    const bool valid = slot_chunk(slot) >= 0;
    float* di_out = di_base + int64_t(slot) * p.G;
    float nl2[2];  // -lse in base 2, rows g and g + 8 (padding rows: 0)
    float w = 0.f;
    if (valid) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = g + 8 * hh;
        nl2[hh] = row < rows ? -lse_base[int64_t(row) * p.K + slot] * kLog2e : 0.f;
      }
      w = p.w[tok * p.K + slot];
    }
    // V unit: dP = dO V^T
    float dp[kTile / 8][4];
    advance(2 * slot);
    if (valid) {
      const __nv_bfloat16* tV = sU + ((2 * slot) % NU) * kTile * D;
#pragma unroll
      for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[nn][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ao[4];
        ldsm_x4(ao, sdO + sw<D>(lane & 15, kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          uint32_t bb[4];
          ldsm_x4(bb, tV + sw<D>(np * 16 + (lane & 7) + (lane >> 4) * 8,
                                 kk * 16 + ((lane >> 3) & 1) * 8));
          mma16816(dp[2 * np], ao, bb[0], bb[1]);
          mma16816(dp[2 * np + 1], ao, bb[2], bb[3]);
        }
      }
    }
    __syncwarp();  // done reading the V unit's stage before it is refilled
    // K unit: S = Q K^T, P, Di, dS, dQ += dS K
    advance(2 * slot + 1);
    if (!valid) {
      if (t == 0) {
        if (g < rows) di_out[g] = 0.f;
        if (g + 8 < rows) di_out[g + 8] = 0.f;
      }
    } else {
      const __nv_bfloat16* tK = sU + ((2 * slot + 1) % NU) * kTile * D;
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
      float di[2] = {0.f, 0.f};
#pragma unroll
      for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool key = nn * 8 + 2 * t + (e & 1) < p.S;
          s[nn][e] = key ? exp2f(fmaf(s[nn][e], sl2, nl2[e >> 1])) : 0.f;
          di[e >> 1] = fmaf(s[nn][e], dp[nn][e], di[e >> 1]);
        }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        di[hh] += __shfl_xor_sync(0xffffffffu, di[hh], 1);
        di[hh] += __shfl_xor_sync(0xffffffffu, di[hh], 2);
        const int row = g + 8 * hh;
        if (t == 0 && row < rows) di_out[row] = di[hh];
      }
      // dS = w P (dP - Di), into s
#pragma unroll
      for (int nn = 0; nn < kTile / 8; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nn][e] = w * s[nn][e] * (dp[nn][e] - di[e >> 1]);
      // dQ += dS K (keys are the reduction dimension)
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) {
        uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                         pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dd = 0; dd < D / 16; ++dd) {
          uint32_t bb[4];
          ldsm_x4_t(bb, tK + sw<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                   dd * 16 + (lane >> 4) * 8));
          mma16816(acc[2 * dd], a, bb[0], bb[1]);
          mma16816(acc[2 * dd + 1], a, bb[2], bb[3]);
        }
      }
    }
    __syncwarp();  // done reading the K unit's stage before it is refilled
  }
  cp_async_wait<0>();
  __nv_bfloat16* dq = p.dq + head0 * D;
#pragma unroll
  for (int nn = 0; nn < D / 8; ++nn) {
    const int col = nn * 8 + 2 * t;
    if (g < rows)
      *reinterpret_cast<uint32_t*>(dq + g * D + col) =
          pack_bf16(p.scale * acc[nn][0], p.scale * acc[nn][1]);
    if (g + 8 < rows)
      *reinterpret_cast<uint32_t*>(dq + (g + 8) * D + col) =
          pack_bf16(p.scale * acc[nn][2], p.scale * acc[nn][3]);
  }
}

constexpr int kKvWarps = 4;  // 4 x 16 keys = one 64-key chunk tile

// NST: unit stages in the ring (each: one pair x head group's Q, dO rows, lse, Di, w).
template <int D, int NST> struct KvSmem {
  static constexpr int kStageElems = 2 * 16 * D;  // Q, dO (bf16)
  static constexpr int kStageBytes = kStageElems * 2 + 64 * 4;  // + lse[16], Di[16], w, pad
  static constexpr int kBytes = 2 * kTile * D * 2 + NST * kStageBytes;
};

// U units (pair x head group) per iteration, a ring of NB bundles of U unit stages; MINB
// CTAs per SM asked of the register allocator.
template <int D, int NB, int U, int MINB>
__global__ void __launch_bounds__(32 * kKvWarps, MINB) hsa_bwd_dkdv_kernel(const Params p) {
  constexpr int NST = NB * U;  // unit stages
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sV = sK + kTile * D;
  unsigned char* ring = smem_raw + 2 * kTile * D * 2;
  auto stage_q = [&](int st) {
    return reinterpret_cast<__nv_bfloat16*>(ring + st * KvSmem<D, NST>::kStageBytes);
  };
  auto stage_f = [&](int st) {  // lse[16], Di[16], w
    return reinterpret_cast<float*>(ring + st * KvSmem<D, NST>::kStageBytes +
                                    KvSmem<D, NST>::kStageElems * 2);
  };

  const int64_t key = p.order[blockIdx.x];  // (n*H + h)*C + c
  const int64_t c = key % p.C;
  const int h = int((key / p.C) % p.H);
  const int n = int(key / (int64_t(p.C) * p.H));
  const int64_t start = p.offs[key];
  const int ngroups = (p.G + 15) / 16;
  const int64_t units = (p.offs[key + 1] - start) * ngroups;  // (pair, head group)
  const int64_t lkv = int64_t(p.C) * p.S;
  const int64_t rs = int64_t(p.H) * D;
  const int64_t kvoff = ((int64_t(n) * lkv + c * p.S) * p.H + h) * D;

  // The chunk's K and V (rows >= S zero), 128 threads.
  for (int i = tid; i < kTile * (D / 8); i += 32 * kKvWarps) {
    const int r = i / (D / 8), col = (i % (D / 8)) * 8;
    const bool valid = r < p.S;
    cp_async16(sK + sw<D>(r, col), p.k + kvoff + (valid ? r : 0) * rs + col, valid);
    cp_async16(sV + sw<D>(r, col), p.v + kvoff + (valid ? r : 0) * rs + col, valid);
  }
  // Unit u = pair (u / ngroups) x head group (u % ngroups) into stage st.
  auto load_unit = [&](int64_t pair, int hgi, int st) {
    const int64_t tok = pair / p.K;
    const int slot = int(pair % p.K);
    const int64_t nl = tok / p.H;
    const int rows = min(16, p.G - 16 * hgi);
    const int64_t head0 = nl * p.Hq + int64_t(h) * p.G + 16 * hgi;
    __nv_bfloat16* q = stage_q(st);
    for (int i = tid; i < 16 * (D / 8); i += 32 * kKvWarps) {
      const int r = i / (D / 8), col = (i % (D / 8)) * 8;
      const bool valid = r < rows;
      const int64_t off = (head0 + (valid ? r : 0)) * D + col;
      cp_async16(q + sw<D>(r, col), p.q + off, valid);
      cp_async16(q + 16 * D + sw<D>(r, col), p.dout + off, valid);
    }
    float* f = stage_f(st);
    if (tid < 16) {
      const bool valid = tid < rows;
      cp_async4(f + tid, p.lse + (head0 + (valid ? tid : 0)) * p.K + slot, valid);
    } else if (tid < 32) {
      const int r = tid - 16;
      const bool valid = r < rows;
      cp_async4(f + tid, p.di + (tok * p.K + slot) * p.G + 16 * hgi + (valid ? r : 0), valid);
    } else if (tid == 32) {
      cp_async4(f + 32, p.w + pair, true);
    }
  };
  auto pair_of = [&](int64_t u) -> int64_t {
    return u < units ? p.perm[start + u / ngroups] : 0;
  };
  // Bundle b = units b*U .. b*U+U-1 in unit stages (b % NB)*U + j. Iteration b loads bundle
  // b + NB - 2 into the stages of bundle b - 2, which every warp finished before the
  // barrier of iteration b - 1: one barrier per bundle, NB - 2 bundles in flight.
  const int64_t bundles = (units + U - 1) / U;
  auto load_bundle = [&](int64_t bb, const int64_t* pairs) {
#pragma unroll
    for (int j = 0; j < U; ++j) {
      const int64_t un = bb * U + j;
      if (un < units) load_unit(pairs[j], int(un % ngroups), int(bb % NB) * U + j);
    }
  };
  int64_t next[U];
  for (int bb = 0; bb < NB - 2; ++bb) {  // prologue (the first group also carries K and V)
#pragma unroll
    for (int j = 0; j < U; ++j) next[j] = pair_of(int64_t(bb) * U + j);
    load_bundle(bb, next);
    cp_async_commit();
  }
#pragma unroll
  for (int j = 0; j < U; ++j) next[j] = pair_of(int64_t(NB - 2) * U + j);

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int nn = 0; nn < D / 8; ++nn)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[nn][e] = dv[nn][e] = 0.f;
  const float sl2 = p.scale * kLog2e;
  const bool active = warp * 16 < p.S;  // this warp's keys exist
  const int krow = warp * 16;

  for (int64_t b = 0; b < bundles; ++b) {
    {
      const int64_t bn = b + NB - 2;
      if (bn < bundles) load_bundle(bn, next);
      cp_async_commit();
#pragma unroll
      for (int j = 0; j < U; ++j) next[j] = pair_of((bn + 1) * U + j);
    }
    cp_async_wait<NB - 2>();
    __syncthreads();
    if (!active) continue;
    const int64_t left = units - b * U;
    const int nu = left < U ? int(left) : U;  // units in this bundle
    float s[U][2][4], dp[U][2][4];
    // Phase 1, every unit of the bundle (independent MMA chains): S^T = K Q^T, dP^T = V dO^T.
#pragma unroll
    for (int j = 0; j < U; ++j)
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][x][e] = dp[j][x][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4], av[4];
      ldsm_x4(a, sK + sw<D>(krow + (lane & 15), kk * 16 + (lane >> 4) * 8));
      ldsm_x4(av, sV + sw<D>(krow + (lane & 15), kk * 16 + (lane >> 4) * 8));
      const int off = sw<D>((lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int j = 0; j < U; ++j) {
        const __nv_bfloat16* tQ = stage_q(int(b % NB) * U + j);
        uint32_t bq[4];
        ldsm_x4(bq, tQ + off);
        mma16816(s[j][0], a, bq[0], bq[1]);
        mma16816(s[j][1], a, bq[2], bq[3]);
        ldsm_x4(bq, tQ + 16 * D + off);
        mma16816(dp[j][0], av, bq[0], bq[1]);
        mma16816(dp[j][1], av, bq[2], bq[3]);
      }
    }
    // Phase 2: wP^T and dS^T. Element (x, e): key krow + g + 8*(e>>1), head 8x + 2t + (e&1).
    uint32_t ap[U][4], as[U][4];
#pragma unroll
    for (int j = 0; j < U; ++j) {
      const float* f = stage_f(int(b % NB) * U + j);
      const float w = f[32];
#pragma unroll
      for (int x = 0; x < 2; ++x)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = 8 * x + 2 * t + e;
          const float nl2 = -f[col] * kLog2e, di = f[16 + col];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const float pw = w * exp2f(fmaf(s[j][x][2 * r + e], sl2, nl2));
            s[j][x][2 * r + e] = pw;                                   // w P
            dp[j][x][2 * r + e] = pw * (dp[j][x][2 * r + e] - di);  // dS
          }
        }
      ap[j][0] = pack_bf16(s[j][0][0], s[j][0][1]);
      ap[j][1] = pack_bf16(s[j][0][2], s[j][0][3]);
      ap[j][2] = pack_bf16(s[j][1][0], s[j][1][1]);
      ap[j][3] = pack_bf16(s[j][1][2], s[j][1][3]);
      as[j][0] = pack_bf16(dp[j][0][0], dp[j][0][1]);
      as[j][1] = pack_bf16(dp[j][0][2], dp[j][0][3]);
      as[j][2] = pack_bf16(dp[j][1][0], dp[j][1][1]);
      as[j][3] = pack_bf16(dp[j][1][2], dp[j][1][3]);
    }
    // Phase 3: dV += (wP)^T dO, dK += dS^T Q (a unit past the end adds nothing).
#pragma unroll
    for (int j = 0; j < U; ++j) {
      if (j >= nu) break;
      const __nv_bfloat16* tQ = stage_q(int(b % NB) * U + j);
#pragma unroll
      for (int dd = 0; dd < D / 16; ++dd) {
        const int off = sw<D>((lane & 7) + ((lane >> 3) & 1) * 8, dd * 16 + (lane >> 4) * 8);
        uint32_t bb[4];
        ldsm_x4_t(bb, tQ + 16 * D + off);
        mma16816(dv[2 * dd], ap[j], bb[0], bb[1]);
        mma16816(dv[2 * dd + 1], ap[j], bb[2], bb[3]);
        ldsm_x4_t(bb, tQ + off);
        mma16816(dk[2 * dd], as[j], bb[0], bb[1]);
        mma16816(dk[2 * dd + 1], as[j], bb[2], bb[3]);
      }
    }
  }
  cp_async_wait<0>();
  if (!active) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int s = krow + g + 8 * r;
    if (s >= p.S) continue;
    const int64_t off = kvoff + int64_t(s) * rs;
#pragma unroll
    for (int nn = 0; nn < D / 8; ++nn) {
      const int col = nn * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(p.dk + off + col) =
          pack_bf16(p.scale * dk[nn][2 * r], p.scale * dk[nn][2 * r + 1]);
      *reinterpret_cast<uint32_t*>(p.dv + off + col) =
          pack_bf16(dv[nn][2 * r], dv[nn][2 * r + 1]);
    }
  }
}

template <int D, int NU> int launch_bwd_dq(const Params& p, cudaStream_t s) {
  const int ngroups = (p.G + 15) / 16;
  const int64_t items = int64_t(p.N) * p.L * p.H;
  if (items == 0) return cudaSuccess;
  const size_t smem = sizeof(__nv_bfloat16) * size_t(dq_smem_elems<D, NU>());
  cudaError_t e = cudaFuncSetAttribute(hsa_bwd_dq_kernel<D, NU>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  hsa_bwd_dq_kernel<D, NU><<<dim3(unsigned(items), unsigned(ngroups)), 32, smem, s>>>(p);
  return cudaGetLastError();
}

template <int D, int U, int MINB>
int launch_bwd_dkdv(const Params& p, int64_t nchunks, cudaStream_t s) {
  constexpr int NB = 8 / U;  // 8 unit stages either way
  if (nchunks == 0) return cudaSuccess;
  const size_t smem = KvSmem<D, NB * U>::kBytes;
  cudaError_t e = cudaFuncSetAttribute(hsa_bwd_dkdv_kernel<D, NB, U, MINB>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  hsa_bwd_dkdv_kernel<D, NB, U, MINB><<<dim3(unsigned(nchunks)), 32 * kKvWarps, smem, s>>>(p);
  return cudaGetLastError();
}

// The dkdv kernel's variant (bench knob LCM_HSA_KV_VARIANT): 1 (the default, fastest on
// the H200: docs/benchmarks.md) = one pair per iteration (D 64: capped at 128 registers,
// 4 CTAs per SM); 2 = two pairs per iteration (D 64: 195 registers, 2 CTAs per SM); 3 = two
// pairs capped at 128 registers (D 64 only: 4 CTAs, 32 bytes spilled); 4 = two pairs capped
// at 168 registers (D 64: 3 CTAs).
inline int env_kv_variant(int dflt) {
  const char* v = getenv("LCM_HSA_KV_VARIANT");
  const int n = v ? atoi(v) : dflt;
  return (n >= 1 && n <= 4) ? n : dflt;
}

template <int D> int launch_bwd(const Params& p, int64_t nchunks, cudaStream_t s) {
  static const int nu = env_units("LCM_HSA_DQ_UNITS", kDqUnits);
  {
    const int e = nu == 3   ? launch_bwd_dq<D, 3>(p, s)
                  : nu == 4 ? launch_bwd_dq<D, 4>(p, s)
                            : launch_bwd_dq<D, 2>(p, s);
    if (e != cudaSuccess) return e;
  }
  static const int kv = env_kv_variant(1);
  if constexpr (D == 64) {
    if (kv == 1) return launch_bwd_dkdv<D, 1, 4>(p, nchunks, s);
    if (kv == 3) return launch_bwd_dkdv<D, 2, 4>(p, nchunks, s);
    if (kv == 4) return launch_bwd_dkdv<D, 2, 3>(p, nchunks, s);
  } else {
    if (kv == 1) return launch_bwd_dkdv<D, 1, 1>(p, nchunks, s);
  }
  return launch_bwd_dkdv<D, 2, 1>(p, nchunks, s);
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
    static const int nu = env_units("LCM_HSA_FWD_UNITS", kFwdUnits);
    if (D == 64) return launch_fwd_mma_d<64>(p, one, nu, s);
    if (D == 128) return launch_fwd_mma_d<128>(p, one, nu, s);
  }
  if (D == 64) return launch_fwd<64>(p, s);
  if (D == 128) return launch_fwd<128>(p, s);
  return cudaErrorInvalidValue;
}

// Backward. di (N, L, H, K, G) fp32 scratch (Di per slot and head; dweights = its sum over
// G); perm: the valid (token, slot) pair ids sorted by chunk key (n*H + h)*C + c, stably;
// offs (N*H*C + 1): each key's first entry in perm; order (N*H*C): the keys, heaviest
// first. dk, dv bf16 (N, Lkv, H, D), every row written.
int lcm_hsa_bwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const int64_t* idx, const void* dout, const float* lse, void* dq,
                       void* dk, void* dv, float* di, const int64_t* perm, const int64_t* offs,
                       const int64_t* order, int N, int L, int Hq, int H, int K, int S, int C,
                       int D, float scale, int one, cudaStream_t s) {
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
  p.dk = static_cast<__nv_bfloat16*>(dk);
  p.dv = static_cast<__nv_bfloat16*>(dv);
  p.di = di;
  p.perm = perm;
  p.offs = offs;
  p.order = order;
  p.N = N, p.L = L, p.Hq = Hq, p.H = H, p.G = Hq / H, p.K = K, p.S = S, p.C = C;
  p.scale = scale;
  p.one = one;
  if (S > kTile) return cudaErrorInvalidValue;
  const int64_t nchunks = int64_t(N) * H * C;
  if (D == 64) return launch_bwd<64>(p, nchunks, s);
  if (D == 128) return launch_bwd<128>(p, nchunks, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
