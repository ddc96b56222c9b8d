// Causal sliding-window attention (optionally with ALiBi) and bidirectional attention:
// forward and backward, bf16 in, fp32 accumulation, tensor cores, FlashAttention-2 style:
// at head dim 64 on sm_90a every product is a warpgroup MMA (wgmma.cuh; the CTA's 4 warps
// are one warpgroup) and the tiles come by TMA (tma.cuh; LCM_SWA_TMA=0 for cp.async; the
// forward's Q tile too, LCM_SWA_QSMEM=0 for Q in registers),
// otherwise mma.sync m16n8k16 with ldmatrix and cp.async loads, into swizzled shared tiles
// either way. LCM_SWA_WGMMA=0 selects mma.sync on Hopper too.
//
//   causal:    query t sees keys t - window ..= t; score = scale * q.k - m_h * (t - s)
//   otherwise: query t sees every key (bidirectional, no ALiBi)
//   o = softmax(score) v;  lse[b,h,t] = log2 of the softmax denominator of the base-2
//   scores s2 = log2(e) * score, saved for the backward.
// Reference: src/ops/swa.rs (sliding_window_attention_reference,
// bidirectional_attention_reference). Tests: tests/ops_swa_cuda.rs.
//
// Layout: q (B, Hq, T, D), k/v (B, Hkv, T, D), GQA (query head h reads kv head h / G).
// Tiles of 64 query rows (4 warps x 16 rows) and 64 keys; a query tile visits only the key
// tiles of its band (at most ceil(window / 64) + 1 of them), and only tiles that cross
// the band's edges (or T) evaluate the mask.
//
// Forward: one CTA per (query tile, b, query head); K/V tiles in a ring (TMA or cp.async),
// online softmax over the key tiles newest first, rescaling the accumulator only when a
// row's max passes the running one by more than a factor 2^8 (softmax_update); on Hopper
// with ALiBi the bias's column term is a fifth k-step of S = Q K^T (BM, swa_fwd_kernel).
// Backward (deterministic, no atomics): Di = rowsum(dO * o) (a small kernel), then
//   dq kernel:    one CTA per (query tile, b, query head), key tiles of the band:
//                 P = exp2(s2 - lse), dP = dO V^T, dS = P (dP - Di), dQ += dS K;
//   dk/dv kernel: one CTA per (key tile, b, kv head), the query tiles of its band for each
//                 of the G query heads of the group; each warp owns 16 keys and computes
//                 the transposed products P^T = exp2(K Q^T s - lse), dP^T = V dO^T,
//                 dV += P^T dO, dK += dS^T Q with P^T and dS^T straight from registers.
// S and dP are computed twice (7 matrix products instead of 5) for determinism.
#include "common.cuh"
#include "mma.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace lcm {
namespace swa {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 64;  // query rows and keys per tile
constexpr float kLog2e = 1.4426950408889634f;

struct Params {
  const __nv_bfloat16* q;  // (B, Hq, T, D), strides sqb, sqh, sqt; d contiguous
  const __nv_bfloat16* k;  // (B, Hkv, T, D), strides skb, skh, skt
  const __nv_bfloat16* v;  // strides svb, svh, svt
  const float* slopes;     // (Hq,) ALiBi slopes or null
  __nv_bfloat16* o;        // (B, Hq, T, D) contiguous
  float* lse;              // (B, Hq, T) contiguous
  // backward
  const __nv_bfloat16* dout;  // (B, Hq, T, D) contiguous
  const float* di;            // (B, Hq, T)
  __nv_bfloat16* dq;          // (B, Hq, T, D) contiguous
  __nv_bfloat16* dk;          // (B, Hkv, T, D) contiguous
  __nv_bfloat16* dv;
  int64_t sqb, sqh, sqt, skb, skh, skt, svb, svh, svt;
  int B, Hq, Hkv, G, T, window;
  int bh0;  // first (b, head) pair of this launch (grids are sliced at 65535 in y)
  bool causal;
  float scale, scale_log2;
  // The forward's lazy rescaling (softmax_update): how far (base 2) a row's max may pass the
  // running max before the accumulator is rescaled, and the key tiles' order.
  float rescale_slack;
  bool newest_first;
};

// The TMA descriptors of k and v (4-D: b, kv head, t, d; boxes of one 64-row tile), for the
// kernels that load through TMA; unused (zeros) by the others.
struct KvMaps {
  CUtensorMap k, v;
  CUtensorMap q;  // (b, head, t, d), 64-row boxes: the forward with Q in shared memory (QS)
};
// The dk/dv kernel's streams: q and dO tiles (b, head, t, d) and the lse and Di vectors
// ((b, head), t; fp32, 64 per box).
struct QoMaps {
  CUtensorMap q, o, lse, di;
};

// 4-byte async copy, zero-filled when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}

// Key tiles [lo, hi] that query tile qt (rows qt*64 ..) must visit.
__device__ __forceinline__ void key_band(const Params& p, int q0, int* lo, int* hi) {
  const int last = min(p.T - 1, q0 + kTile - 1);
  if (p.causal) {
    *lo = max(0, q0 - p.window) / kTile;
    *hi = last / kTile;
  } else {
    *lo = 0;
    *hi = (p.T - 1) / kTile;
  }
}

// Whether the (query rows q0.., keys k0..) tile pair needs the element mask.
__device__ __forceinline__ bool needs_mask(const Params& p, int q0, int k0) {
  bool m = k0 + kTile > p.T || q0 + kTile > p.T;
  if (p.causal) m = m || k0 + kTile - 1 > q0 || q0 + kTile - 1 - k0 > p.window;
  return m;
}

// Query t sees key s when both are < T and, if causal, s <= t <= s + window. As intervals,
// so the masked tiles' inner loops take two compares per score (a per-score predicate with
// branches took most of a masked tile in the SASS of the forward).
// Keys query t sees: [*lo, *hi], empty when t >= T.
__device__ __forceinline__ void visible_keys(const Params& p, int t, int* lo, int* hi) {
  *lo = p.causal ? t - p.window : 0;
  *hi = t < p.T ? (p.causal ? t : p.T - 1) : -1;
}
// Queries that see key s: [*lo, *hi], empty when s >= T.
__device__ __forceinline__ void visible_queries(const Params& p, int s, int* lo, int* hi) {
  *lo = p.causal ? s : 0;
  *hi = s < p.T ? (p.causal ? min(p.T - 1, s + p.window) : p.T - 1) : -1;
}

// The mma/ldmatrix asm statements are volatile, so the compiler keeps their order: each
// product below loads the B fragments of step kk + 1 before the MMAs of step kk (a
// two-deep register ring), so that shared-memory latency overlaps the tensor cores instead
// of stalling every MMA on its own ldmatrix.

// S (16 rows x 64 keys) += A (16 x D) times B^T (64 x D rows of a swizzled tile). REG_A:
// the A fragments are in `af`; otherwise they are read from rows r0.. of the tile tA.
template <int D, bool REG_A = true>
__device__ __forceinline__ void mma_abt(float (*s)[4], const uint32_t (*af)[4],
                                        const __nv_bfloat16* tB,
                                        const __nv_bfloat16* tA = nullptr, int r0 = 0) {
  const int lane = threadIdx.x & 31;
  constexpr int KK = D / 16, NP = kTile / 16;
  uint32_t a[2][4], bb[2][NP][4];
  auto load = [&](int kk, int slot) {
    if (!REG_A) ldsm_x4(a[slot], tA + sw<D>(r0 + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
    for (int np = 0; np < NP; ++np)
      ldsm_x4(bb[slot][np], tB + sw<D>(np * 16 + (lane & 7) + (lane >> 4) * 8,
                                       kk * 16 + ((lane >> 3) & 1) * 8));
  };
  load(0, 0);
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
    if (kk + 1 < KK) load(kk + 1, (kk + 1) & 1);
    const uint32_t* ak = REG_A ? af[kk] : a[kk & 1];
#pragma unroll
    for (int np = 0; np < NP; ++np) {
      mma16816(s[2 * np], ak, bb[kk & 1][np][0], bb[kk & 1][np][1]);
      mma16816(s[2 * np + 1], ak, bb[kk & 1][np][2], bb[kk & 1][np][3]);
    }
  }
}

// acc (16 x D) += P (16 x 64 C-fragments in registers, rounded to bf16) times B (64 x D
// rows of a swizzled tile).
template <int D>
__device__ __forceinline__ void mma_pb(float (*acc)[4], const float (*pf)[4],
                                       const __nv_bfloat16* tB) {
  const int lane = threadIdx.x & 31;
  constexpr int KK = kTile / 16, DP = D / 16;
  uint32_t bb[2][DP][4];
  auto load = [&](int kk, int slot) {
#pragma unroll
    for (int dp = 0; dp < DP; ++dp)
      ldsm_x4_t(bb[slot][dp], tB + sw<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                         dp * 16 + (lane >> 4) * 8));
  };
  load(0, 0);
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
    if (kk + 1 < KK) load(kk + 1, (kk + 1) & 1);
    uint32_t a[4] = {pack_bf16(pf[2 * kk][0], pf[2 * kk][1]),
                     pack_bf16(pf[2 * kk][2], pf[2 * kk][3]),
                     pack_bf16(pf[2 * kk + 1][0], pf[2 * kk + 1][1]),
                     pack_bf16(pf[2 * kk + 1][2], pf[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < DP; ++dp) {
      mma16816(acc[2 * dp], a, bb[kk & 1][dp][0], bb[kk & 1][dp][1]);
      mma16816(acc[2 * dp + 1], a, bb[kk & 1][dp][2], bb[kk & 1][dp][3]);
    }
  }
}

// A fragments of a warp's 16 rows (from row r0 of a swizzled tile).
template <int D>
__device__ __forceinline__ void load_afrag(uint32_t (*af)[4], const __nv_bfloat16* tile, int r0) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldsm_x4(af[kk], tile + sw<D>(r0 + (lane & 15), kk * 16 + (lane >> 4) * 8));
}

// ---------------------------------------------------------------------------------------
// Forward.

// The K and V tiles of keys k0.. (kv head hkv of batch b) into stage buf of an S-stage
// ring: by TMA (thread 0 alone; full[buf] completes when they land) or by every thread's
// cp.async (zero-filled past T).
template <int D, int S, bool TMA>
__device__ __forceinline__ void load_kv_tile(const Params& p, const KvMaps& maps,
                                             __nv_bfloat16* sK, __nv_bfloat16* sV,
                                             uint64_t* full, int k0, int buf, int hkv, int b) {
  if constexpr (TMA) {
    mbar_expect_tx(&full[buf], 2 * kTile * D * 2);
    tma_load_4d(sK + buf * kTile * D, &maps.k, &full[buf], 0, k0, hkv, b);
    tma_load_4d(sV + buf * kTile * D, &maps.v, &full[buf], 0, k0, hkv, b);
  } else {
    const __nv_bfloat16* kbase = p.k + b * p.skb + hkv * p.skh;
    const __nv_bfloat16* vbase = p.v + b * p.svb + hkv * p.svh;
    const int nk = min(kTile, p.T - k0);
    load_tile<kTile, D, kThreads>(sK + buf * kTile * D, nk,
                                  [&](int r) { return kbase + int64_t(k0 + r) * p.skt; });
    load_tile<kTile, D, kThreads>(sV + buf * kTile * D, nk,
                                  [&](int r) { return vbase + int64_t(k0 + r) * p.svt; });
  }
}


// One key tile of the forward's online softmax for a warp's 16 rows, in three steps.
//
// Base-2 scores: without ALiBi the raw scores stay (scaled inside the exponent of
// softmax_update, as scale > 0); with ALiBi s2 = scale_log2 * qk + slope2 * (col - row) less
// its row part, slope2 * (col - q0): one value per column (16 FFMAs a tile, not 32), one
// FFMA per score. Dropping -slope2 * (row - q0), constant along a row, shifts the row's
// scores and its running max alike; the lse adds it back (softmax_finish). (q0, the query
// tile's first row, not 0, keeps the biased scores small beside fp32's ulp.)
template <int NF>
__device__ __forceinline__ void alibi_scores(const Params& p, float (*s)[4], float slope2, int q0,
                                             int k0) {
  const int t = threadIdx.x & 3;
  const float tb = slope2 * float(k0 + 2 * t - q0);
  float bias[NF][2];
#pragma unroll
  for (int n = 0; n < NF; ++n)
#pragma unroll
    for (int j = 0; j < 2; ++j) bias[n][j] = fmaf(slope2, float(n * 8 + j), tb);
#pragma unroll
  for (int n = 0; n < NF; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = fmaf(s[n][e], p.scale_log2, bias[n][e & 1]);
}

// -inf for the keys outside each row half's [vlo, vhi]. The bounds are taken relative to
// this thread's first column, so that each score costs a compare against a constant and
// a select, and a bound that cuts no row of the warp is left out (a warp vote): the
// causal band's newest tile tests only the upper bound, its oldest only the lower one.
template <int NF, bool LO, bool HI>
__device__ __forceinline__ void mask_scores_rel(float (*s)[4], const int* lo, const int* hi) {
#pragma unroll
  for (int n = 0; n < NF; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = n * 8 + (e & 1);
      if ((LO && c < lo[e >> 1]) || (HI && c > hi[e >> 1])) s[n][e] = -INFINITY;
    }
}
template <int NF>
__device__ __forceinline__ void mask_scores(float (*s)[4], int k0, const int* vlo, const int* vhi) {
  const int c0 = k0 + 2 * (threadIdx.x & 3);
  const int lo[2] = {vlo[0] - c0, vlo[1] - c0}, hi[2] = {vhi[0] - c0, vhi[1] - c0};
  constexpr int kLast = 8 * (NF - 1) + 1;  // this thread's last column, relative
  const bool cut_lo = __any_sync(0xffffffffu, lo[0] > 0 || lo[1] > 0);
  const bool cut_hi = __any_sync(0xffffffffu, hi[0] < kLast || hi[1] < kLast);
  if (cut_lo && cut_hi) {
    mask_scores_rel<NF, true, true>(s, lo, hi);
  } else if (cut_lo) {
    mask_scores_rel<NF, true, false>(s, lo, hi);
  } else if (cut_hi) {
    mask_scores_rel<NF, false, true>(s, lo, hi);
  }
}

// The scores s become probabilities (fp32, in place); the running max m and sum l (per
// row half) and the accumulator acc move with them. SCALED: the scores are base 2 with
// their bias (alibi_scores); otherwise they are raw (q.k, plus under ALiBi by MMA the
// column's part of the bias over scale_log2), scaled here, and `off` (the tile's part of
// the bias, base 2; 0 without ALiBi) is added.
//
// Lazy rescaling (as FlashAttention-4): the running max moves only when a row's max passes
// it by more than p.rescale_slack (8: probabilities up to 2^8, far inside fp32 and bf16;
// the output and lse are exact either way, as both use the same max), and a warp
// rescales only when one of its rows did. With the key tiles visited newest first
// (p.newest_first) the first tile's max, ALiBi's largest, is rarely passed: most tiles
// skip the accumulator's 32 multiplies and the two ex2 of alpha.
template <int D, bool SCALED>
__device__ __forceinline__ void softmax_update(const Params& p, float (*s)[4], float (*acc)[4],
                                               float* m, float* l, float off) {
  constexpr int NF = kTile / 8;
  float mx[2];
  frag_row_max<NF>(s, mx);
  bool grow = false;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
    mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
    if (!SCALED) mx[hh] = fmaf(mx[hh], p.scale_log2, off);
    grow = grow || mx[hh] > m[hh] + p.rescale_slack;
  }
  if (__any_sync(0xffffffffu, grow)) {
    float alpha[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const float mn = fmaxf(m[hh], mx[hh]);
      alpha[hh] = exp2f(m[hh] - (mn == -INFINITY ? 0.f : mn));  // (nothing visible yet)
      m[hh] = mn;
      l[hh] *= alpha[hh];
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[n][e] *= alpha[e >> 1];
  }
  float neg[2], rs[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) neg[hh] = (m[hh] == -INFINITY ? 0.f : -m[hh]) + off;
#pragma unroll
  for (int n = 0; n < NF; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      s[n][e] = SCALED ? exp2f(s[n][e] + neg[e >> 1])
                       : exp2f(fmaf(s[n][e], p.scale_log2, neg[e >> 1]));
  frag_row_sum<NF>(s, rs);
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) l[hh] += rs[hh];
}

// After the last tile: l summed over the row's 4 threads, lse[row] written (rows < T), and
// inv = 1 / l for the output.
template <bool ALIBI>
__device__ __forceinline__ void softmax_finish(const Params& p, float* m, float* l, float* inv,
                                               const int* row, float slope2, int q0, int bh) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 1);
    l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 2);
    inv[hh] = 1.f / l[hh];
    // ALiBi: the row part of the bias, left out of the scores (alibi_scores).
    const float row_bias = ALIBI ? -slope2 * float(row[hh] - q0) : 0.f;
    if (t == 0 && row[hh] < p.T)
      p.lse[int64_t(bh) * p.T + row[hh]] = m[hh] + log2f(l[hh]) + row_bias;
  }
}

// ALiBi by MMA (BM, the forward's comment below): the column ramp, 64 rows of 16 bytes
// (row j: j, j, then zeros) and one 8-row group of zeros past them, in shared memory at
// `ramp` (16-byte aligned), written by every thread (a CTA barrier must follow).
constexpr int kRampBytes = (kTile + 8) * 16;
__device__ __forceinline__ void ramp_init(unsigned char* ramp) {
  for (int i = threadIdx.x; i < kRampBytes / 16; i += kThreads) {
    const uint32_t jj = i < kTile ? pack_bf16(float(i), float(i)) : 0u;
    *reinterpret_cast<uint4*>(ramp + 16 * i) = make_uint4(jj, 0u, 0u, 0u);
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // read by wgmma
}
// The ramp's descriptor: core matrices 128 bytes apart both ways, so that the k-columns
// 8..15 read the next 8 rows, against zeros in A.
__device__ __forceinline__ uint64_t ramp_desc(const unsigned char* ramp) {
  return wgmma_desc_plain(ramp, 128, 128);
}
// The ramp step's A fragment: `ratio` split into two bf16 (hi + lo, 16 bits of it) at k = 0
// and 1 of every row (lane t = 0's pair, rows g and g + 8 alike), zeros elsewhere; the
// product adds ratio * (column in the tile) to every score.
__device__ __forceinline__ void ramp_afrag(uint32_t* a, float ratio) {
  const float hi = __bfloat162float(__float2bfloat16_rn(ratio));
  a[0] = a[1] = (threadIdx.x & 3) == 0 ? pack_bf16(hi, ratio - hi) : 0u;
  a[2] = a[3] = 0u;
}

// QS (Q in shared memory): 2 stages, so that 5 CTAs fit an SM.
template <bool QS> __host__ __device__ constexpr int fwd_stages() { return QS ? 2 : 3; }
template <int D, bool QS> __host__ __device__ constexpr int fwd_min_blocks() {
  return QS ? 5 : D == 64 ? 4 : 2;
}

// WG: the products on wgmma (D 64, sm_90a; wgmma.cuh) instead of mma.sync; the CTA's
// 4 warps are then one warpgroup, Q goes straight to registers (no Q tile: 48 KB of
// shared memory + 1 KB of alignment slack, 4 CTAs per SM) and the output is staged
// through the first K buffer. Two variants measured slower and were dropped (session 7,
// docs/benchmarks.md): FlashAttention-3's overlap of one tile's P V with the next tile's
// softmax (at 4 CTAs per SM: spills and one tile of prefetch instead of two; at 3 CTAs per
// SM without either: fewer warpgroups cost more than the overlap gains), and two
// warpgroups sharing a CTA's K/V stream (each then waits on the other at every tile). In
// session 8 (TMA loads) two more: per-stage "empty" barriers in place of the CTA barrier
// (5% slower), and one warpgroup running two query tiles' chains side by side (215
// registers, 2 CTAs per SM: 4.2 cycles per instruction instead of 6.7, but 8 warps per SM
// leave the issue slots 44% busy; 201-212 against 271-277 TFLOP/s). In session 9 three
// more, each slower: FlashAttention-3's warp specialisation (a TMA producer warpgroup and 2
// or 3 consumer warpgroups of 64 rows sharing the K/V stream, setmaxnreg; 187-219), its
// overlap inside this kernel's warpgroup (K and V in rings of their own; 4% slower) and
// the rows' sums on the tensor cores (m64n8 products against ones; 4% slower). What did
// gain is a fifth warpgroup per SM:
//
// QS (with TMA; the default, LCM_SWA_QSMEM=0 for Q in registers): Q comes by TMA into a
// shared tile and S = Q K^T reads both operands from shared memory, which frees the 16
// registers of Q's fragments (92 registers): 5 CTAs per SM (2 K/V stages) instead of 4;
// +2-8% (docs/benchmarks.md, session 9).
//
// BM (ALiBi by MMA; QS with ALiBi, LCM_SWA_ALIBI_MMA=0 not): the column's part of the
// bias, slope2 * col / scale_log2, is a fifth k-step of S = Q K^T: A (registers) holds that
// ratio split into two bf16 (hi + lo, 16 bits of it) in columns 0 and 1 of every row, B
// (a constant 64 x 16 tile, sJ) the column index 0..63 (exact in bf16) in the same two
// columns. The scores then take the unbiased path (one FFMA each before the ex2) and the
// tile's part, slope2 * (k0 - q0), moves into the two row offsets: 48 FFMA/FADD a tile
// fewer, for a quarter more tensor work in S (an eighth of the tile's). With the lazy
// rescaling (softmax_update): 231 instructions a tile instead of 358, and +6%
// (docs/benchmarks.md, session 10; either change alone gained under 1%).
template <int D, bool ALIBI, bool WG, bool TMA, bool QS = false, bool BM = false>
__global__ void __launch_bounds__(kThreads, fwd_min_blocks<D, QS>())
    swa_fwd_kernel(const Params p, const __grid_constant__ KvMaps maps) {
  static_assert(!WG || D == 64, "the wgmma products are written for head dim 64");
  static_assert(!TMA || WG, "the TMA loads feed the wgmma kernel");
  static_assert(!QS || TMA, "Q comes by TMA");
  static_assert(!BM || (QS && ALIBI), "the bias by MMA is a step of the QS product");
  constexpr int S = fwd_stages<QS>();
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(WG ? align1024(smem_raw) : smem_raw);
  __nv_bfloat16* sK = WG && !QS ? sQ : sQ + kTile * D;
  __nv_bfloat16* sV = sK + S * kTile * D;
  // TMA: stage i's K and V tiles have landed when full[i] completes a phase (QS: Q when
  // full[S] does).
  uint64_t* full = reinterpret_cast<uint64_t*>(sV + S * kTile * D);
  // BM: the column ramp (kRampBytes, 128 bytes past the barriers).
  unsigned char* sJ = reinterpret_cast<unsigned char*>(full) + 128;

  const int q0 = blockIdx.x * kTile;
  const int bh = blockIdx.y + p.bh0, b = bh / p.Hq, h = bh % p.Hq, hkv = h / p.G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
  const int wr = warp * 16;
  const int rows = min(kTile, p.T - q0);

  const __nv_bfloat16* qbase = p.q + b * p.sqb + h * p.sqh;
  if (!WG)
    load_tile<kTile, D, kThreads>(sQ, rows, [&](int r) { return qbase + int64_t(q0 + r) * p.sqt; });
  cp_async_commit();

  int lo, hi;
  key_band(p, q0, &lo, &hi);
  const int items = hi - lo + 1;
  auto key_tile = [&](int item) { return p.newest_first ? hi - item : lo + item; };
  auto load_kv = [&](int item) {  // TMA: thread 0 only
    load_kv_tile<D, S, TMA>(p, maps, sK, sV, full, key_tile(item) * kTile, item % S, hkv, b);
  };
  if constexpr (BM) ramp_init(sJ);  // (published by tma_ring_start's barrier)
  if constexpr (TMA) {
    if (QS && threadIdx.x == 0) mbar_init(&full[S], 1);
    tma_ring_start<S>(full, items, load_kv);  // (its barrier publishes full[S] too)
    if (QS && threadIdx.x == 0) {
      mbar_expect_tx(&full[S], kTile * D * 2);
      tma_load_4d(sQ, &maps.q, &full[S], 0, q0, h, b);
    }
  } else {
#pragma unroll
    for (int i = 0; i < S - 1; ++i) {
      if (i < items) load_kv(i);
      cp_async_commit();
    }
  }

  const float slope2 = ALIBI ? p.slopes[h] * kLog2e : 0.f;
  uint32_t ramp_a[4];  // BM: the ramp step's A fragment, slope2 / scale_log2 per column
  if constexpr (BM) ramp_afrag(ramp_a, slope2 / p.scale_log2);
  uint32_t qf[QS ? 1 : D / 16][4];
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row[2] = {q0 + wr + g, q0 + wr + g + 8};
  int vlo[2], vhi[2];  // the keys each row half sees
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) visible_keys(p, row[hh], &vlo[hh], &vhi[hh]);
  if constexpr (WG && !QS)
    load_afrag_global<D>(qf, row[0] < p.T ? qbase + int64_t(row[0]) * p.sqt : nullptr,
                         row[1] < p.T ? qbase + int64_t(row[1]) * p.sqt : nullptr);
  if constexpr (QS) mbar_wait(&full[S], 0);

  for (int item = 0; item < items; ++item) {
    const int k0 = key_tile(item) * kTile, buf = item % S;
    if constexpr (TMA) {
      tma_ring_advance<S>(full, item, items, load_kv);
    } else {
      cp_async_ring_advance<S, WG>(item, items, load_kv);
    }
    if (!WG && item == 0) load_afrag<D>(qf, sQ, wr);
    const __nv_bfloat16* tK = sK + buf * kTile * D;
    const __nv_bfloat16* tV = sV + buf * kTile * D;

    float s[kTile / 8][4];
    if constexpr (BM) {
      wg_qk64_ss_plus_wait(s, sQ, tK, ramp_a, ramp_desc(sJ));
    } else if constexpr (QS) {
      wg_qk64_ss_wait(s, sQ, tK);
    } else if constexpr (WG) {
      wg_qk64_wait(s, qf, tK);
    } else {
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
      mma_abt<D>(s, qf, tK);
    }

    if (ALIBI && !BM) alibi_scores<kTile / 8>(p, s, slope2, q0, k0);
    if (needs_mask(p, q0, k0)) mask_scores<kTile / 8>(s, k0, vlo, vhi);
    softmax_update<D, ALIBI && !BM>(p, s, acc, m, l, BM ? slope2 * float(k0 - q0) : 0.f);
    if constexpr (WG) {
      // Waited before the next iteration's barrier, after which this stage is reloaded.
      wg_pv64_wait(acc, s, tV);
    } else {
      mma_pb<D>(acc, s, tV);
    }
  }
  float inv[2];
  softmax_finish<ALIBI>(p, m, l, inv, row, slope2, q0, bh);
  // The warp's rows of sQ are read by no one else: stage the output there (WG: in the
  // first K buffer, once every warp is past its last product).
  if (WG) __syncthreads();
  if (wr < rows)
    store_rows<D>(acc, inv, (WG ? sK : sQ) + wr * D, rows - wr,
                  [&](int r) { return p.o + (int64_t(bh) * p.T + q0 + wr + r) * D; });
}

// ---------------------------------------------------------------------------------------
// Backward.

// Di[b,h,t] = sum_d dO * o (fp32). D/8 threads per row, 16 bytes each.
template <int D>
__global__ void swa_bwd_di_kernel(const __nv_bfloat16* o, const __nv_bfloat16* dout, float* di,
                                  int64_t rows) {
  constexpr int kPer = D / 8;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t r = i / kPer;
  float acc = 0.f;
  if (r < rows) {
    const uint4 a = *reinterpret_cast<const uint4*>(o + i * 8);
    const uint4 c = *reinterpret_cast<const uint4*>(dout + i * 8);
    const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
    const __nv_bfloat162* pc = reinterpret_cast<const __nv_bfloat162*>(&c);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 x = __bfloat1622float2(pa[j]), y = __bfloat1622float2(pc[j]);
      acc += x.x * y.x + x.y * y.y;
    }
  }
#pragma unroll
  for (int off = kPer / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (r < rows && (threadIdx.x % kPer) == 0) di[r] = acc;
}

template <int D> __host__ __device__ constexpr int dq_min_blocks() { return D == 64 ? 3 : 2; }

// WG: the three products on wgmma (D 64, sm_90a; wgmma.cuh), as in the forward; the tiles
// start at the first 1024-byte boundary (1 KB of slack).
// TMA: Q and dO go straight to registers, K/V tiles come by TMA into a 3-stage ring
// (the forward's pipeline); the output is staged through the first K buffer.
// (ALiBi by MMA as in the forward measured slower here: dq +2%, dk/dv +8% in time, ncu,
// docs/benchmarks.md session 10; the extra k-step adds to products that keep the tensor
// pipe busier than the forward's.)
template <int D, bool ALIBI, bool WG, bool TMA>
__global__ void __launch_bounds__(kThreads, dq_min_blocks<D>())
    swa_bwd_dq_kernel(const Params p, const __grid_constant__ KvMaps maps) {
  static_assert(!WG || D == 64, "the wgmma products are written for head dim 64");
  static_assert(!TMA || WG, "the TMA loads feed the wgmma kernel");
  constexpr int S = TMA ? 3 : 2;  // K/V stages
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(WG ? align1024(smem_raw) : smem_raw);
  __nv_bfloat16* sO = TMA ? sQ : sQ + kTile * D;  // dO
  __nv_bfloat16* sK = TMA ? sQ : sO + kTile * D;
  __nv_bfloat16* sV = sK + S * kTile * D;
  uint64_t* full = reinterpret_cast<uint64_t*>(sV + S * kTile * D);  // TMA, as in the forward

  const int q0 = blockIdx.x * kTile;
  const int bh = blockIdx.y + p.bh0, b = bh / p.Hq, h = bh % p.Hq, hkv = h / p.G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wr = warp * 16;
  const int rows = min(kTile, p.T - q0);

  const __nv_bfloat16* qbase = p.q + b * p.sqb + h * p.sqh;
  if constexpr (!TMA) {
    load_tile<kTile, D, kThreads>(sQ, rows, [&](int r) { return qbase + int64_t(q0 + r) * p.sqt; });
    load_tile<kTile, D, kThreads>(sO, rows,
                        [&](int r) { return p.dout + (int64_t(bh) * p.T + q0 + r) * D; });
  }
  int lo, hi;
  key_band(p, q0, &lo, &hi);
  const int items = hi - lo + 1;
  auto load_kv = [&](int item) {  // TMA: thread 0 only
    load_kv_tile<D, S, TMA>(p, maps, sK, sV, full, (lo + item) * kTile, item % S, hkv, b);
  };
  if constexpr (TMA) {
    tma_ring_start<S>(full, items, load_kv);
  } else {
    load_kv(0);
    cp_async_commit();
  }

  const float slope2 = ALIBI ? p.slopes[h] * kLog2e : 0.f;
  const int row[2] = {q0 + wr + g, q0 + wr + g + 8};
  int vlo[2], vhi[2];  // the keys each row half sees
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) visible_keys(p, row[hh], &vlo[hh], &vhi[hh]);
  float lse[2], di[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const bool ok = row[hh] < p.T;
    lse[hh] = ok ? p.lse[int64_t(bh) * p.T + row[hh]] : 0.f;
    di[hh] = ok ? p.di[int64_t(bh) * p.T + row[hh]] : 0.f;
  }
  float dq[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] = 0.f;
  // D = 64 keeps the A fragments (Q, dO) in registers, D = 128 reads them from shared
  // memory for each tile (registers).
  constexpr bool kRegA = D == 64;
  uint32_t qf[kRegA ? D / 16 : 1][4], of[kRegA ? D / 16 : 1][4];
  if constexpr (TMA) {
    const __nv_bfloat16* obase = p.dout + int64_t(bh) * p.T * D;
    load_afrag_global<D>(qf, row[0] < p.T ? qbase + int64_t(row[0]) * p.sqt : nullptr,
                         row[1] < p.T ? qbase + int64_t(row[1]) * p.sqt : nullptr);
    load_afrag_global<D>(of, row[0] < p.T ? obase + int64_t(row[0]) * D : nullptr,
                         row[1] < p.T ? obase + int64_t(row[1]) * D : nullptr);
  }

  for (int item = 0; item < items; ++item) {
    const int k0 = (lo + item) * kTile, buf = item % S;
    if constexpr (TMA) {
      tma_ring_advance<S>(full, item, items, load_kv);
    } else {
      if (item + 1 < items) load_kv(item + 1);
      cp_async_commit();
      cp_async_wait<1>();
      // The tensor cores read through the async proxy (see cp_async_ring_advance).
      if (WG) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncthreads();
      if (kRegA && item == 0) {
        load_afrag<D>(qf, sQ, wr);
        load_afrag<D>(of, sO, wr);
      }
    }
    const __nv_bfloat16* tK = sK + buf * kTile * D;
    const __nv_bfloat16* tV = sV + buf * kTile * D;
    float s[kTile / 8][4], dp[kTile / 8][4];
    if constexpr (WG) {
      wg_qk64(s, qf, tK);
      wg_qk64(dp, of, tV);
      wgmma_wait<0>();
      wgmma_fence_regs(s);
      wgmma_fence_regs(dp);
    } else {
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
      mma_abt<D, kRegA>(s, qf, tK, sQ, wr);
      mma_abt<D, kRegA>(dp, of, tV, sO, wr);
    }
    const bool masked = needs_mask(p, q0, k0);
    // -lse + slope2 * (col - row), split as in the forward.
    float tb[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh)
      tb[hh] = ALIBI ? fmaf(slope2, float(k0 + 2 * t - row[hh]), -lse[hh]) : -lse[hh];
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = k0 + n * 8 + 2 * t + (e & 1);
        const float bias = ALIBI ? fmaf(slope2, float(n * 8 + (e & 1)), tb[e >> 1]) : tb[e >> 1];
        const float x = fmaf(s[n][e], p.scale_log2, bias);
        float pr = exp2f(x);
        if (masked && (col < vlo[e >> 1] || col > vhi[e >> 1])) pr = 0.f;
        dp[n][e] = pr * (dp[n][e] - di[e >> 1]);
      }
    if constexpr (WG) {
      wg_pv64_wait(dq, dp, tK);
    } else {
      mma_pb<D>(dq, dp, tK);
    }
    if (!TMA) __syncthreads();  // every warp is done with this buffer before it is refilled
  }
  const float mul[2] = {p.scale, p.scale};
  // sQ's rows of this warp are no longer read (fragments are in registers; TMA: sQ is
  // the first K buffer, free once every warp is past its last product).
  if (TMA) __syncthreads();
  if (wr < rows)
    store_rows<D>(dq, mul, sQ + wr * D, rows - wr,
                  [&](int r) { return p.dq + (int64_t(bh) * p.T + q0 + wr + r) * D; });
}

// 2 CTAs per SM at D 64. (TMA: capped for 3, the kernel spilled 96 bytes and ran 20%
// slower than at 2; docs/benchmarks.md, session 8.)
template <int D> __host__ __device__ constexpr int dkv_min_blocks() { return D == 64 ? 2 : 1; }

// WG: the four products on wgmma (D 64, sm_90a; wgmma.cuh): the warpgroup's 64 rows are
// the CTA's 64 keys; the tiles start at the first 1024-byte boundary (1 KB of slack).
// TMA: K and V go straight to registers; Q, dO, lse and Di come by TMA into a 3-stage
// ring with the forward's pipeline; the outputs are staged through the first Q and dO buffers.
template <int D, bool ALIBI, bool WG, bool TMA>
__global__ void __launch_bounds__(kThreads, dkv_min_blocks<D>())
    swa_bwd_dkv_kernel(const Params p, const __grid_constant__ QoMaps maps) {
  static_assert(!WG || D == 64, "the wgmma products are written for head dim 64");
  static_assert(!TMA || WG, "the TMA loads feed the wgmma kernel");
  constexpr int S = TMA ? 3 : 2;  // stages of the Q / dO / lse / Di ring
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(WG ? align1024(smem_raw) : smem_raw);
  __nv_bfloat16* sV = TMA ? sK : sK + kTile * D;
  __nv_bfloat16* sQ = TMA ? sK : sV + kTile * D;  // S buffers
  __nv_bfloat16* sO = sQ + S * kTile * D;         // dO, S buffers
  float* sL = reinterpret_cast<float*>(sO + S * kTile * D);  // lse, S x kTile
  float* sD = sL + S * kTile;                                  // Di, S x kTile
  uint64_t* full = reinterpret_cast<uint64_t*>(sD + S * kTile);  // TMA

  const int k0 = blockIdx.x * kTile;
  const int bkv = blockIdx.y + p.bh0, b = bkv / p.Hkv, hkv = bkv % p.Hkv;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wr = warp * 16;
  const int nkeys = min(kTile, p.T - k0);

  if constexpr (!TMA) {
    load_tile<kTile, D, kThreads>(sK, nkeys, [&](int r) {
      return p.k + b * p.skb + hkv * p.skh + int64_t(k0 + r) * p.skt;
    });
    load_tile<kTile, D, kThreads>(sV, nkeys, [&](int r) {
      return p.v + b * p.svb + hkv * p.svh + int64_t(k0 + r) * p.svt;
    });
  }

  // Query tiles of the band, for each head of the group.
  int lo, hi;
  if (p.causal) {
    lo = k0 / kTile;
    hi = min(p.T - 1, k0 + kTile - 1 + p.window) / kTile;
  } else {
    lo = 0;
    hi = (p.T - 1) / kTile;
  }
  const int per_head = hi - lo + 1;
  const int items = per_head * p.G;
  auto load_q = [&](int item) {  // TMA: thread 0 only
    const int hq = hkv * p.G + item / per_head, q0 = (lo + item % per_head) * kTile;
    const int buf = item % S, rows = min(kTile, p.T - q0);
    const int64_t bh = int64_t(b) * p.Hq + hq;
    if constexpr (TMA) {
      mbar_expect_tx(&full[buf], 2 * kTile * D * 2 + 2 * kTile * 4);
      tma_load_4d(sQ + buf * kTile * D, &maps.q, &full[buf], 0, q0, hq, b);
      tma_load_4d(sO + buf * kTile * D, &maps.o, &full[buf], 0, q0, hq, b);
      tma_load_2d(sL + buf * kTile, &maps.lse, &full[buf], q0, int(bh));
      tma_load_2d(sD + buf * kTile, &maps.di, &full[buf], q0, int(bh));
      return;
    }
    load_tile<kTile, D, kThreads>(sQ + buf * kTile * D, rows, [&](int r) {
      return p.q + b * p.sqb + hq * p.sqh + int64_t(q0 + r) * p.sqt;
    });
    load_tile<kTile, D, kThreads>(sO + buf * kTile * D, rows,
                        [&](int r) { return p.dout + (bh * p.T + q0 + r) * D; });
    for (int i = threadIdx.x; i < 2 * kTile; i += kThreads) {
      const int r = i % kTile;
      const bool valid = r < rows;
      const float* src = (i < kTile ? p.lse : p.di) + bh * p.T + (valid ? q0 + r : 0);
      cp_async4((i < kTile ? sL : sD) + buf * kTile + r, src, valid);
    }
  };
  if constexpr (TMA) {
    tma_ring_start<S>(full, items, load_q);
  } else {
    load_q(0);
    cp_async_commit();
  }

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
  constexpr bool kRegA = D == 64;  // as in the dq kernel
  uint32_t kf[kRegA ? D / 16 : 1][4], vf[kRegA ? D / 16 : 1][4];
  const int key[2] = {k0 + wr + g, k0 + wr + g + 8};
  int vlo[2], vhi[2];  // the queries each key half is seen by
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) visible_queries(p, key[hh], &vlo[hh], &vhi[hh]);

  if constexpr (TMA) {
    const __nv_bfloat16* kb = p.k + b * p.skb + hkv * p.skh;
    const __nv_bfloat16* vb = p.v + b * p.svb + hkv * p.svh;
    load_afrag_global<D>(kf, key[0] < p.T ? kb + int64_t(key[0]) * p.skt : nullptr,
                         key[1] < p.T ? kb + int64_t(key[1]) * p.skt : nullptr);
    load_afrag_global<D>(vf, key[0] < p.T ? vb + int64_t(key[0]) * p.svt : nullptr,
                         key[1] < p.T ? vb + int64_t(key[1]) * p.svt : nullptr);
  }

  for (int item = 0; item < items; ++item) {
    const int buf = item % S;
    if constexpr (TMA) {
      tma_ring_advance<S>(full, item, items, load_q);
    } else {
      if (item + 1 < items) load_q(item + 1);
      cp_async_commit();
      cp_async_wait<1>();
      if (WG) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncthreads();
      if (kRegA && item == 0) {
        load_afrag<D>(kf, sK, wr);
        load_afrag<D>(vf, sV, wr);
      }
    }
    const int hq = hkv * p.G + item / per_head, q0 = (lo + item % per_head) * kTile;
    const __nv_bfloat16* tQ = sQ + buf * kTile * D;
    const __nv_bfloat16* tO = sO + buf * kTile * D;
    const float* tL = sL + buf * kTile;
    const float* tD = sD + buf * kTile;
    const float slope2 = ALIBI ? p.slopes[hq] * kLog2e : 0.f;

    // Transposed: rows are this warp's 16 keys, columns the tile's 64 queries.
    float s[kTile / 8][4], dp[kTile / 8][4];
    if constexpr (WG) {
      wg_qk64(s, kf, tQ);
      wg_qk64(dp, vf, tO);
      wgmma_wait<0>();
      wgmma_fence_regs(s);
      wgmma_fence_regs(dp);
    } else {
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
      mma_abt<D, kRegA>(s, kf, tQ, sK, wr);
      mma_abt<D, kRegA>(dp, vf, tO, sV, wr);
    }
    const bool masked = needs_mask(p, q0, k0);
    // slope2 * (key - query) = -slope2 * (n * 8 + (e & 1)) + tb[key half].
    const float tb[2] = {slope2 * float(key[0] - q0 - 2 * t), slope2 * float(key[1] - q0 - 2 * t)};
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n) {
      const float2 l2 = *reinterpret_cast<const float2*>(tL + n * 8 + 2 * t);
      const float2 d2 = *reinterpret_cast<const float2*>(tD + n * 8 + 2 * t);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = q0 + n * 8 + 2 * t + (e & 1);  // query
        const float bias = ALIBI ? fmaf(slope2, -float(n * 8 + (e & 1)), tb[e >> 1]) : 0.f;
        const float x = fmaf(s[n][e], p.scale_log2, bias - ((e & 1) ? l2.y : l2.x));
        float pr = exp2f(x);
        if (masked && (col < vlo[e >> 1] || col > vhi[e >> 1])) pr = 0.f;
        s[n][e] = pr;
        dp[n][e] = pr * (dp[n][e] - ((e & 1) ? d2.y : d2.x));
      }
    }
    if constexpr (WG) {
      uint32_t pa[4][4], da[4][4];
      pack_p64(pa, s);
      pack_p64(da, dp);
      wgmma_fence_regs(dv);
      wgmma_fence_regs(dk);
      wg_pv64(dv, pa, tO);
      wg_pv64(dk, da, tQ);
      wgmma_wait<0>();
      wgmma_fence_regs(dv);
      wgmma_fence_regs(dk);
    } else {
      mma_pb<D>(dv, s, tO);
      mma_pb<D>(dk, dp, tQ);
    }
    if (!TMA) __syncthreads();  // every warp is done with this buffer before it is refilled
  }
  // Each warp's rows of sK / sV are read by no other warp: stage the results there (TMA:
  // in the first Q and dO buffers, once every warp is past its last product).
  if (TMA) __syncthreads();
  __nv_bfloat16* stage_k = TMA ? sQ : sK;
  __nv_bfloat16* stage_v = TMA ? sO : sV;
  const float one[2] = {1.f, 1.f}, sc[2] = {p.scale, p.scale};
  if (wr < nkeys) {
    const int64_t base = (int64_t(bkv) * p.T + k0 + wr) * D;
    store_rows<D>(dk, sc, stage_k + wr * D, nkeys - wr,
                  [&](int r) { return p.dk + base + int64_t(r) * D; });
    store_rows<D>(dv, one, stage_v + wr * D, nkeys - wr,
                  [&](int r) { return p.dv + base + int64_t(r) * D; });
  }
}

// ---------------------------------------------------------------------------------------
// Launchers.

template <typename K> cudaError_t prepare(K kernel, size_t smem) {
  if (smem > 48 * 1024)
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem));
  return cudaSuccess;
}

// Grid (tiles along T, (b, head) pairs), sliced into launches of at most 65535 in y.
template <typename K, typename... Extra>
cudaError_t launch_sliced(K kernel, Params p, int pairs, size_t smem, cudaStream_t s,
                          const Extra&... extra) {
  for (int y0 = 0; y0 < pairs; y0 += 65535) {
    p.bh0 = y0;
    dim3 grid((p.T + kTile - 1) / kTile, min(65535, pairs - y0));
    kernel<<<grid, kThreads, smem, s>>>(p, extra...);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

// Whether the kernels run their products on wgmma (wgmma_enabled; LCM_SWA_WGMMA=0 turns
// it off): head dim 64 only.
bool use_wgmma(int D) {
  static const bool on = wgmma_enabled("LCM_SWA_WGMMA");
  return on && D == 64;
}
// Whether the wgmma kernels load through TMA (LCM_SWA_TMA=0: their cp.async form).
bool use_tma(int D) {
  static const bool on = tma_enabled("LCM_SWA_WGMMA", "LCM_SWA_TMA");
  return on && D == 64;
}

// The k and v descriptors of p's tensors, false when TMA does not take their layout.
bool kv_maps(const Params& p, KvMaps* m) {
  const int64_t dims[4] = {64, p.T, p.Hkv, p.B};
  const int64_t sk[3] = {p.skt, p.skh, p.skb}, sv[3] = {p.svt, p.svh, p.svb};
  return encode_rows_map(&m->k, p.k, 4, dims, sk, kTile) &&
         encode_rows_map(&m->v, p.v, 4, dims, sv, kTile);
}

// The forward's q descriptor (QS), false when TMA does not take the layout.
bool q_map(const Params& p, KvMaps* m) {
  const int64_t dims[4] = {64, p.T, p.Hq, p.B};
  const int64_t sq[3] = {p.sqt, p.sqh, p.sqb};
  return encode_rows_map(&m->q, p.q, 4, dims, sq, kTile);
}

// Whether the TMA forward keeps Q in shared memory (QS; LCM_SWA_QSMEM=0: in registers).
bool use_qsmem() {
  static const bool on = env_switch_on("LCM_SWA_QSMEM");
  return on;
}

// Whether the QS forward adds ALiBi's column term by MMA (BM; LCM_SWA_ALIBI_MMA=0 not).
bool use_alibi_mma() {
  static const bool on = env_switch_on("LCM_SWA_ALIBI_MMA");
  return on;
}

// Lazy rescaling with the key tiles newest first (softmax_update; LCM_SWA_LAZY=0: rescale
// at every new max, oldest tile first, as before).
void set_rescaling(Params* p) {
  static const bool on = env_switch_on("LCM_SWA_LAZY");
  p->rescale_slack = on ? 8.f : 0.f;
  p->newest_first = on;
}

// The dk/dv kernel's descriptors (p.di set), false when TMA does not take the layouts (the
// lse and Di rows need T a multiple of 4).
bool qo_maps(const Params& p, QoMaps* m) {
  const int64_t dims[4] = {64, p.T, p.Hq, p.B};
  const int64_t sq[3] = {p.sqt, p.sqh, p.sqb};
  const int64_t so[3] = {64, int64_t(p.T) * 64, int64_t(p.Hq) * p.T * 64};  // dO contiguous
  const int64_t rows = int64_t(p.B) * p.Hq;
  return encode_rows_map(&m->q, p.q, 4, dims, sq, kTile) &&
         encode_rows_map(&m->o, p.dout, 4, dims, so, kTile) &&
         encode_vec_map(&m->lse, p.lse, rows, p.T, kTile) &&
         encode_vec_map(&m->di, p.di, rows, p.T, kTile);
}

template <int D, bool ALIBI, bool WG, bool TMA, bool QS = false, bool BM = false>
cudaError_t launch_fwd_t(const Params& p, const KvMaps& maps, cudaStream_t s) {
  auto kernel = swa_fwd_kernel<D, ALIBI, WG, TMA, QS, BM>;
  constexpr int S = fwd_stages<QS>();
  // WG: no Q tile (QS: one), 1 KB of slack to align the tiles; TMA: the barriers (BM: and
  // the ramp).
  const size_t smem = WG ? size_t(2 * S + (QS ? 1 : 0)) * kTile * D * 2 + 1024 +
                               (TMA ? 128 : 0) + (BM ? kRampBytes : 0)
                         : size_t(1 + 2 * S) * kTile * D * 2;
  cudaError_t e = prepare(kernel, smem);
  if (e != cudaSuccess) return e;
  return launch_sliced(kernel, p, p.B * p.Hq, smem, s, maps);
}

template <int D, bool ALIBI> cudaError_t launch_fwd(Params p, cudaStream_t s) {
  set_rescaling(&p);
  KvMaps maps{};
  if constexpr (D == 64) {
    if (use_tma(D) && kv_maps(p, &maps)) {
      if (use_qsmem() && q_map(p, &maps)) {
        if (ALIBI && use_alibi_mma())
          return launch_fwd_t<D, ALIBI, true, true, true, ALIBI>(p, maps, s);
        return launch_fwd_t<D, ALIBI, true, true, true>(p, maps, s);
      }
      return launch_fwd_t<D, ALIBI, true, true>(p, maps, s);
    }
    if (use_wgmma(D)) return launch_fwd_t<D, ALIBI, true, false>(p, maps, s);
  }
  return launch_fwd_t<D, ALIBI, false, false>(p, maps, s);
}

template <int D, bool ALIBI, bool WG, bool TMA>
cudaError_t launch_bwd_t(const Params& p, float* di, const KvMaps& maps, cudaStream_t s) {
  const int64_t rows = int64_t(p.B) * p.Hq * p.T;
  const int64_t threads = rows * (D / 8);
  swa_bwd_di_kernel<D><<<(threads + 255) / 256, 256, 0, s>>>(p.o, p.dout, di, rows);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  Params pp = p;
  pp.di = di;
  const size_t slack = WG ? 1024 : 0;  // to align the tiles
  {
    auto kernel = swa_bwd_dq_kernel<D, ALIBI, WG, TMA>;
    // Q, dO and 2 K/V stages; TMA: 3 K/V stages and their barriers.
    const size_t smem = size_t(6) * kTile * D * 2 + slack + (TMA ? 128 : 0);
    if ((e = prepare(kernel, smem)) != cudaSuccess) return e;
    if ((e = launch_sliced(kernel, pp, p.B * p.Hq, smem, s, maps)) != cudaSuccess) return e;
  }
  {
    QoMaps qo{};
    const bool tma = TMA && qo_maps(pp, &qo);
    auto kernel =
        tma ? swa_bwd_dkv_kernel<D, ALIBI, WG, TMA> : swa_bwd_dkv_kernel<D, ALIBI, WG, false>;
    // K, V and 2 stages of Q / dO / lse / Di; TMA: no K / V tiles, 3 stages and barriers.
    const size_t smem = tma ? size_t(3) * (2 * kTile * D * 2 + 2 * kTile * 4) + slack + 128
                            : size_t(6) * kTile * D * 2 + 4 * kTile * 4 + slack;
    if ((e = prepare(kernel, smem)) != cudaSuccess) return e;
    if ((e = launch_sliced(kernel, pp, p.B * p.Hkv, smem, s, qo)) != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <int D, bool ALIBI> cudaError_t launch_bwd(const Params& p, float* di, cudaStream_t s) {
  KvMaps maps{};
  if constexpr (D == 64) {
    if (use_tma(D) && kv_maps(p, &maps)) return launch_bwd_t<D, ALIBI, true, true>(p, di, maps, s);
    if (use_wgmma(D)) return launch_bwd_t<D, ALIBI, true, false>(p, di, maps, s);
  }
  return launch_bwd_t<D, ALIBI, false, false>(p, di, maps, s);
}

Params make_params(const void* q, const void* k, const void* v, const float* slopes,
                   const int64_t* st, int B, int Hq, int Hkv, int T, int window, int causal,
                   float scale) {
  Params p{};
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(k);
  p.v = static_cast<const __nv_bfloat16*>(v);
  p.slopes = slopes;
  p.sqb = st[0], p.sqh = st[1], p.sqt = st[2];
  p.skb = st[3], p.skh = st[4], p.skt = st[5];
  p.svb = st[6], p.svh = st[7], p.svt = st[8];
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.G = Hq / Hkv, p.T = T, p.window = window;
  p.causal = causal != 0;
  p.scale = scale;
  p.scale_log2 = scale * kLog2e;
  return p;
}

}  // namespace swa
}  // namespace lcm

extern "C" {

// strides: q (b, h, t), k (b, h, t), v (b, h, t) in elements; the last dim is dense.
int lcm_swa_fwd_launch(const void* q, const void* k, const void* v, const float* slopes, void* o,
                       float* lse, const int64_t* strides, int B, int Hq, int Hkv, int T, int D,
                       int window, int causal, float scale, cudaStream_t s) {
  using namespace lcm::swa;
  Params p = make_params(q, k, v, slopes, strides, B, Hq, Hkv, T, window, causal, scale);
  p.o = static_cast<__nv_bfloat16*>(o);
  p.lse = lse;
  const bool alibi = slopes != nullptr && p.causal;
  if (D == 64) return alibi ? launch_fwd<64, true>(p, s) : launch_fwd<64, false>(p, s);
  if (D == 128) return alibi ? launch_fwd<128, true>(p, s) : launch_fwd<128, false>(p, s);
  return cudaErrorInvalidValue;
}

// o and dout contiguous (B, Hq, T, D); di is a scratch of B*Hq*T floats.
int lcm_swa_bwd_launch(const void* q, const void* k, const void* v, const float* slopes,
                       const void* o, const float* lse, const void* dout, float* di, void* dq,
                       void* dk, void* dv, const int64_t* strides, int B, int Hq, int Hkv, int T,
                       int D, int window, int causal, float scale, cudaStream_t s) {
  using namespace lcm::swa;
  Params p = make_params(q, k, v, slopes, strides, B, Hq, Hkv, T, window, causal, scale);
  p.o = static_cast<__nv_bfloat16*>(const_cast<void*>(o));
  p.lse = const_cast<float*>(lse);
  p.dout = static_cast<const __nv_bfloat16*>(dout);
  p.dq = static_cast<__nv_bfloat16*>(dq);
  p.dk = static_cast<__nv_bfloat16*>(dk);
  p.dv = static_cast<__nv_bfloat16*>(dv);
  const bool alibi = slopes != nullptr && p.causal;
  if (D == 64) return alibi ? launch_bwd<64, true>(p, di, s) : launch_bwd<64, false>(p, di, s);
  if (D == 128) return alibi ? launch_bwd<128, true>(p, di, s) : launch_bwd<128, false>(p, di, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
