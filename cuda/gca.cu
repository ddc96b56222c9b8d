// Grouped Cross Attention (GCA): forward (training and inference) and backward, bf16 in,
// fp32 accumulation, tensor cores (mma.sync m16n8k16 bf16 with ldmatrix; at head dim 64
// with one key tile per chunk on sm_90a, warpgroup MMAs: wgmma.cuh, LCM_GCA_WGMMA=0 to turn
// them off), cp.async loads into swizzled shared tiles (on the wgmma path with K_CTX 64,
// TMA loads: tma.cuh, LCM_GCA_TMA=0 to turn them off). The TMA forward also reads chunks
// straight from a chunk memory by index (FwdParams::gather; ops::gca_gathered), and keeps
// Q in shared memory where each pass is one head's (QS; LCM_GCA_QSMEM=0 not).
//
//   o[b,h,i]   = sum_c w[b,c] * o_c[b,h,i],   o_c = softmax_j(scale * q_i . k_{c,j}) v_{c,j}
//   lse[b,h,c,i] = log2 of the per-chunk softmax denominator of the scaled logits in base 2
//                  (scores s2 = scale*log2(e) * q.k), saved for the backward.
// softmax_one adds exp(0) to every per-chunk denominator (a virtual zero logit, zero value).
// Reference: src/ops/gca.rs (gca_reference). Tests: tests/ops_gca_cuda.rs.
//
// Layout. One CTA of 4 warps owns one (batch b, kv head) pair and a "pass" of 64 query
// rows; the rows of a pass are the G*Q queries of the kv head's G query heads laid end to
// end (row r = head_in_group * Q + query), so GQA packs the group into the MMA rows and
// every kv tile is read once per pass. Each warp owns 16 rows.
//
// Forward: the chunk's keys come in tiles of 64 (double-buffered by cp.async); an online
// softmax runs over the tiles of one chunk (one tile when K_CTX <= 64); at a chunk's end
// its normalised output is added into the fp32 accumulator with weight w[b,c].
//
// Backward (FlashAttention-2 style, a chunk's keys in one tile of KT = 64 or 128): per
// pass and chunk, each warp recomputes P = exp2(s2 - lse) for its 16 rows, dP = dO V^T,
// Di = rowsum(P * dP) (= <o_c, dO>, which is also this row's share of dweights), and
//   dS = w * P * (dP - Di);   dQ += dS K (registers, across chunks);
// P (times w) and dS go to shared memory, then each warp computes the rows of
//   dV = (wP)^T dO,  dK = dS^T Q
// for its own keys. scale multiplies dQ and dK at the end. When a kv head has more than
// 64 query rows (GQA with long Q), dK/dV accumulate across passes in an fp32 scratch
// owned by the CTA (no atomics: deterministic).
#include "common.cuh"
#include "mma.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace lcm {
namespace gca {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16 * kWarps;  // query rows per pass
constexpr int kFwdTile = 64;        // forward key tile

struct FwdParams {
  const __nv_bfloat16* q;  // (B, Hq, Q, D), strides sqb, sqh, sqq, d contiguous
  const __nv_bfloat16* k;  // (B, Hkv, K, KCTX, D), strides skb, skh, skc, skk
  const __nv_bfloat16* v;  // strides svb, svh, svc, svk
  const float* w;          // (B, K) contiguous
  __nv_bfloat16* o;        // (B, Hq, Q, D) contiguous
  float* lse;              // (B, Hq, K, Q) contiguous
  // Non-null: k and v are a chunk memory (M, KCTX, Hkv, D) (the maps say how) and query
  // chunk b reads its rows gather[b * K + c], (B, K) contiguous (the TMA kernel only).
  const int64_t* gather;
  int64_t sqb, sqh, sqq, skb, skh, skc, skk, svb, svh, svc, svk;
  int B, Hq, Hkv, G, Q, K, KCTX;
  float scale_log2;
};

struct BwdParams {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const float* w;
  const __nv_bfloat16* dout;  // (B, Hq, Q, D) contiguous
  const float* lse;           // (B, Hq, K, Q)
  __nv_bfloat16* dq;          // (B, Hq, Q, D) contiguous
  __nv_bfloat16* dk;          // (B, Hkv, K, KCTX, D) contiguous
  __nv_bfloat16* dv;
  float* dw_partial;          // (B, Hkv, K)
  float* scratch;             // (B, Hkv, K, KCTX, D) x 2 fp32, only when npass > 1
  int64_t sqb, sqh, sqq, skb, skh, skc, skk, svb, svh, svc, svk;
  int B, Hq, Hkv, G, Q, K, KCTX;
  float scale, scale_log2;
};

// The TMA descriptors of k and v (5-D: b, kv head, chunk, key, d; boxes of one chunk of
// 64 keys), for the kernels that load through TMA; unused (zeros) by the others.
struct KvMaps {
  CUtensorMap k, v;
  CUtensorMap q;  // (b, head, query, d), 64-row boxes: the forward's QS form
};

// ---------------------------------------------------------------------------------------
// Forward.

// The TMA forward's shared memory past its K/V ring: the stages' barriers (at most 4),
// then the gathered rows and the weights of at most kTmaMaxK chunks (sIdx, sW).
constexpr int kTmaMaxK = 32;
constexpr int kTmaTail = 4 * 8 + 2 * kTmaMaxK * 4;

// Key tiles in flight in the forward's cp.async ring (smem: Q + STAGES * (K + V) tiles).
template <int D> __host__ __device__ constexpr int fwd_stages() { return 3; }
// 4 CTAs (16 warps) per SM at D = 64 with one key tile per chunk: 56 KB of shared memory
// each, registers capped at 128 (no spills; the multi-tile variant would spill).
// QS: 5, with 2 stages (see below).
template <int D, bool SINGLE, bool QS = false> __host__ __device__ constexpr int fwd_min_blocks() {
  return QS ? 5 : D == 64 && SINGLE ? 4 : 1;
}

// SINGLE: K_CTX <= 64, one key tile per chunk, so the chunk's softmax is complete before
// its P V product: P is scaled by w[b,c] / l and multiplied straight into the accumulator
// (no per-chunk output registers, no rescaling).
// WG: the two products on wgmma (D 64, SINGLE, sm_90a; wgmma.cuh): every warp takes part
// (the group's instructions need all four), rows past the last reading as zeros and not
// stored; Q goes straight to registers (no Q tile) and the output is staged through the
// first K buffer.
// TMA (WG with K_CTX = 64): the chunks come by TMA, with the SWA forward's pipeline
// (swa.cu: a transaction barrier per stage).
// QS (TMA; the pass's rows one head's: G = 1 or Q % 64 == 0): Q comes by TMA into a
// shared tile and S = Q K^T reads both operands from shared memory; without Q's 16
// registers of fragments and with 2 stages, 5 CTAs fit an SM (as SWA's forward). Measured
// (docs/benchmarks.md, session 9): +10% reading the memory in place, +2-4% on the plain
// form (bound by its bytes); it also beat FlashAttention-3's overlap of chunk c's S with
// chunk c - 1's P V (at 4 CTAs per SM, K and V in rings of their own) by 3-4%.
template <int D, bool ONE, bool SINGLE, bool WG, bool TMA, bool QS = false>
__global__ void __launch_bounds__(kThreads, fwd_min_blocks<D, SINGLE, QS>())
    gca_fwd_kernel(const FwdParams p, const __grid_constant__ KvMaps maps) {
  static_assert(!WG || (D == 64 && SINGLE), "the wgmma products are for D 64, one key tile");
  static_assert(!TMA || WG, "the TMA loads feed the wgmma kernel");
  static_assert(!QS || TMA, "Q comes by TMA");
  constexpr int S = QS ? 2 : fwd_stages<D>();
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(WG ? align1024(smem_raw) : smem_raw);
  __nv_bfloat16* sK = WG && !QS ? sQ : sQ + kRows * D;  // S buffers of kFwdTile x D
  __nv_bfloat16* sV = sK + S * kFwdTile * D;  // S buffers
  // TMA: stage i's tiles have landed when full[i] completes a phase (QS: Q when full[S]).
  uint64_t* full = reinterpret_cast<uint64_t*>(sV + S * kFwdTile * D);
  int* sIdx = reinterpret_cast<int*>(full + S + 1);  // TMA, gathered: the K memory rows read
  float* sW = reinterpret_cast<float*>(sIdx + kTmaMaxK);  // TMA: w[b, :]

  // Gathered from a chunk memory, the CTAs of one kv head run together (the head's memory,
  // read by neighbouring query chunks, then stays in L2); otherwise b-major.
  const bool gathered = TMA && p.gather != nullptr;
  const int b = gathered ? blockIdx.x % p.B : blockIdx.x / p.Hkv;
  const int hkv = gathered ? blockIdx.x / p.B : blockIdx.x % p.Hkv;
  const int row0 = blockIdx.y * kRows;  // first row of this pass within the G*Q rows
  const int nrows_total = p.G * p.Q;
  const int rows = min(kRows, nrows_total - row0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;

  auto q_row = [&](int r) {
    const int rr = row0 + r, head = hkv * p.G + rr / p.Q, qi = rr % p.Q;
    return p.q + b * p.sqb + head * p.sqh + qi * p.sqq;
  };
  if (!WG) load_tile<kRows, D, kThreads>(sQ, rows, q_row);
  cp_async_commit();

  // (SINGLE: a constant, so that item / ntiles costs nothing; it was a division a tile.)
  const int ntiles = SINGLE ? 1 : (p.KCTX + kFwdTile - 1) / kFwdTile;
  const int items = p.K * ntiles;
  const __nv_bfloat16* kbase = p.k + b * p.skb + hkv * p.skh;
  const __nv_bfloat16* vbase = p.v + b * p.svb + hkv * p.svh;
  auto load_kv = [&](int item) {  // TMA: thread 0 only
    const int c = item / ntiles, j = item % ntiles, buf = item % S;
    if constexpr (TMA) {
      mbar_expect_tx(&full[buf], 2 * kFwdTile * D * 2);
      if (gathered) {  // box (d, one head, the chunk's 64 keys, one memory row)
        tma_load_4d(sK + buf * kFwdTile * D, &maps.k, &full[buf], 0, hkv, 0, sIdx[c]);
        tma_load_4d(sV + buf * kFwdTile * D, &maps.v, &full[buf], 0, hkv, 0, sIdx[c]);
      } else {
        tma_load_5d(sK + buf * kFwdTile * D, &maps.k, &full[buf], 0, 0, c, hkv, b);
        tma_load_5d(sV + buf * kFwdTile * D, &maps.v, &full[buf], 0, 0, c, hkv, b);
      }
    } else {
      const int key0 = j * kFwdTile, nk = min(kFwdTile, p.KCTX - key0);
      load_tile<kFwdTile, D, kThreads>(sK + buf * kFwdTile * D, nk,
                             [&](int r) { return kbase + c * p.skc + (key0 + r) * p.skk; });
      load_tile<kFwdTile, D, kThreads>(sV + buf * kFwdTile * D, nk,
                             [&](int r) { return vbase + c * p.svc + (key0 + r) * p.svk; });
    }
  };
  if constexpr (TMA) {
    if (gathered && int(threadIdx.x) < p.K) sIdx[threadIdx.x] = int(p.gather[b * p.K + threadIdx.x]);
    if (int(threadIdx.x) < p.K) sW[threadIdx.x] = p.w[b * p.K + threadIdx.x];
    if (QS && threadIdx.x == 0) mbar_init(&full[S], 1);
    tma_ring_start<S>(full, items, load_kv);  // (its barrier also publishes sIdx, full[S])
    if (QS && threadIdx.x == 0) {
      mbar_expect_tx(&full[S], kRows * D * 2);
      tma_load_4d(sQ, &maps.q, &full[S], 0, row0 % p.Q, hkv * p.G + row0 / p.Q, b);
    }
  } else {
    // Prologue: S-1 tiles in flight (one commit group each, empty past the end).
#pragma unroll
    for (int i = 0; i < S - 1; ++i) {
      if (i < items) load_kv(i);
      cp_async_commit();
    }
  }

  const bool active = WG || warp * 16 < rows;  // warps past the last row only help load
  const int wr = warp * 16;              // warp's first row in the tile
  float acc[D / 8][4];
  float ok[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = ok[n][e] = 0.f;
  float m[2], l[2];
  // Where this thread writes each row half's lse (chunk c at + c * Q): lane t = 0 of rows
  // that exist, else null. Found once: the (head, query) of a row takes two integer
  // divisions, which at every chunk were a fifth of the loop's instructions.
  float* lse_row[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = wr + g + 8 * h, rr = row0 + r, head = hkv * p.G + rr / p.Q, qi = rr % p.Q;
    lse_row[h] = t == 0 && r < rows ? p.lse + (int64_t(b) * p.Hq + head) * p.K * p.Q + qi
                                    : nullptr;
  }
  uint32_t qf[WG && !QS ? D / 16 : 1][4];  // WG: the warp's Q fragments
  if constexpr (WG && !QS)
    load_afrag_global<D>(qf, wr + g < rows ? q_row(wr + g) : nullptr,
                         wr + g + 8 < rows ? q_row(wr + g + 8) : nullptr);
  if constexpr (QS) mbar_wait(&full[S], 0);

  for (int item = 0; item < items; ++item) {
    // Q (cp.async: the first commit group) and this item's tile have landed; the stage item
    // - 1 used is refilled (tma_ring_advance, cp_async_ring_advance).
    const int c = item / ntiles, j = item % ntiles, buf = item % S;
    if constexpr (TMA) {
      tma_ring_advance<S>(full, item, items, load_kv);
    } else {
      cp_async_ring_advance<S, WG>(item, items, load_kv);
    }
    const __nv_bfloat16* tK = sK + buf * kFwdTile * D;
    const __nv_bfloat16* tV = sV + buf * kFwdTile * D;
    if (active) {
      if (j == 0) {
        m[0] = m[1] = ONE ? 0.f : -INFINITY;
        l[0] = l[1] = ONE ? 1.f : 0.f;
#pragma unroll
        for (int n = 0; n < (SINGLE ? 0 : D / 8); ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) ok[n][e] = 0.f;
      }
      // S = Q K^T for the warp's 16 rows and 64 keys.
      float s[kFwdTile / 8][4];
      if constexpr (WG) {
        if constexpr (QS)
          wg_qk64_ss_wait(s, sQ, tK);
        else
          wg_qk64_wait(s, qf, tK);
      } else {
#pragma unroll
      for (int n = 0; n < kFwdTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[4];
        ldsm_x4(a, sQ + sw<D>(wr + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int np = 0; np < kFwdTile / 16; ++np) {
          uint32_t bb[4];
          ldsm_x4(bb, tK + sw<D>(np * 16 + (lane & 7) + (lane >> 4) * 8,
                                 kk * 16 + ((lane >> 3) & 1) * 8));
          mma16816(s[2 * np], a, bb[0], bb[1]);
          mma16816(s[2 * np + 1], a, bb[2], bb[3]);
        }
      }
      }
      // Masking (a uniform branch: only the last tile of a chunk whose K_CTX is not a
      // multiple of 64), then the row max of the raw scores (scale > 0, checked by the
      // bridge), so that each probability is one FFMA and one ex2.
      const int nvalid = p.KCTX - j * kFwdTile;
      if (nvalid < kFwdTile) {
#pragma unroll
        for (int n = 0; n < kFwdTile / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (n * 8 + 2 * t + (e & 1) >= nvalid) s[n][e] = -INFINITY;
      }
      float mx[2];
      frag_row_max<kFwdTile / 8>(s, mx);
      float alpha[2], rs[2], neg[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        mx[h] = fmaxf(m[h], mx[h] * p.scale_log2);
        alpha[h] = exp2f(m[h] - mx[h]);
        m[h] = mx[h];
        neg[h] = -mx[h];
      }
#pragma unroll
      for (int n = 0; n < kFwdTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = exp2f(fmaf(s[n][e], p.scale_log2, neg[e >> 1]));
      frag_row_sum<kFwdTile / 8>(s, rs);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 1);
        rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 2);
        l[h] = l[h] * alpha[h] + rs[h];
      }
      const float wc = TMA ? sW[c] : p.w[b * p.K + c];
      if constexpr (SINGLE) {
        const float f[2] = {wc / l[0], wc / l[1]};
#pragma unroll
        for (int n = 0; n < kFwdTile / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[n][e] *= f[e >> 1];
      } else {
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) ok[n][e] *= alpha[e >> 1];
      }
      // ok += P V (SINGLE: acc += (w / l) P V)
      float(&pv)[D / 8][4] = SINGLE ? acc : ok;
      if constexpr (WG) {
        wg_pv64_wait(pv, s, tV);  // waited before the barrier after which tV is reloaded
      } else
#pragma unroll
      for (int kk = 0; kk < kFwdTile / 16; ++kk) {
        uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                         pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bb[4];
          ldsm_x4_t(bb, tV + sw<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                   dp * 16 + (lane >> 4) * 8));
          mma16816(pv[2 * dp], a, bb[0], bb[1]);
          mma16816(pv[2 * dp + 1], a, bb[2], bb[3]);
        }
      }
      if (j == ntiles - 1) {
#pragma unroll
        for (int h = 0; h < 2; ++h)
          if (lse_row[h]) lse_row[h][c * p.Q] = m[h] + log2f(l[h]);
        const float f0 = wc / l[0], f1 = wc / l[1];
#pragma unroll
        for (int n = 0; n < (SINGLE ? 0 : D / 8); ++n) {
          acc[n][0] += f0 * ok[n][0];
          acc[n][1] += f0 * ok[n][1];
          acc[n][2] += f1 * ok[n][2];
          acc[n][3] += f1 * ok[n][3];
        }
      }
    }
  }
  if (WG) __syncthreads();  // every warp past its last product before sK is reused
  if (warp * 16 < rows) {
    const float one[2] = {1.f, 1.f};
    // The warp's rows of sQ (WG: of the first K buffer) are no longer read: stage the
    // output there.
    store_rows<D>(acc, one, (WG ? sK : sQ) + wr * D, rows - wr, [&](int r) {
      const int rr = row0 + wr + r, head = hkv * p.G + rr / p.Q, qi = rr % p.Q;
      return p.o + ((int64_t(b) * p.Hq + head) * p.Q + qi) * D;
    });
  }
}

// ---------------------------------------------------------------------------------------
// Backward.

// 3 CTAs (12 warps) per SM for the main shape: 64 KB of shared memory each, registers
// capped at 168.
template <int D, int KT> __host__ __device__ constexpr int bwd_min_blocks() {
  return D == 64 && KT == 64 ? 3 : 1;
}

// The backward's TMA descriptors: k and v as in the forward, q and dO (b, head, query, d;
// boxes of 64 queries of one head).
struct BwdMaps {
  CUtensorMap k, v, q, o;
};

// WG (D = KT = 64, sm_90a; wgmma.cuh): the five products on wgmma. Phase 1's are the
// forward's two forms (S, dP: A from registers, B a K-major tile; dQ += dS K: B N-major);
// phase 2's warpgroup rows are the 64 keys, A = (wP)^T or dS^T from ldmatrix.trans and B
// = dO or Q as N-major tiles. The tiles start at the first 1024-byte boundary (1 KB of
// slack).
// TMA (WG with K_CTX = 64 and Q a multiple of 64, so that a pass is 64 queries of one
// head): the chunks (2 stages) and each pass's Q and dO come by TMA; the buffers the
// loads overwrite were last written through the generic proxy (the staged outputs), hence
// the proxy fence before each item's closing barrier.
template <int D, int KT, bool MULTIPASS, bool WG, bool TMA = false>
__global__ void __launch_bounds__(kThreads, bwd_min_blocks<D, KT>())
    gca_bwd_kernel(const BwdParams p, const __grid_constant__ BwdMaps maps) {
  static_assert(!WG || (D == 64 && KT == 64), "the wgmma products are for D = KT = 64");
  static_assert(!TMA || WG, "the TMA loads feed the wgmma kernel");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(WG ? align1024(smem_raw) : smem_raw);
  __nv_bfloat16* sO = sQ + kRows * D;  // dO
  __nv_bfloat16* sK = sO + kRows * D;  // 2 buffers of KT x D
  __nv_bfloat16* sV = sK + 2 * KT * D;
  __nv_bfloat16* sP = sV + 2 * KT * D;  // kRows x KT: w * P
  __nv_bfloat16* sS = sP + kRows * KT;  // kRows x KT: dS
  float* sDw = reinterpret_cast<float*>(sS + kRows * KT);  // [kWarps]
  uint64_t* full = reinterpret_cast<uint64_t*>(sDw + kWarps);  // TMA: the 2 K/V stages
  uint64_t* qo_full = full + 2;                                 // TMA: the pass's Q, dO

  const int bh = blockIdx.x;
  const int b = bh / p.Hkv, hkv = bh % p.Hkv;
  const int nrows_total = p.G * p.Q;
  const int npass = (nrows_total + kRows - 1) / kRows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wr = warp * 16;
  const __nv_bfloat16* kbase = p.k + b * p.skb + hkv * p.skh;
  const __nv_bfloat16* vbase = p.v + b * p.svb + hkv * p.svh;
  const int items = npass * p.K;
  auto load_kv = [&](int item) {  // TMA: thread 0 only
    const int c = item % p.K, buf = item & 1;
    if constexpr (TMA) {
      mbar_expect_tx(&full[buf], 2 * KT * D * 2);
      tma_load_5d(sK + buf * KT * D, &maps.k, &full[buf], 0, 0, c, hkv, b);
      tma_load_5d(sV + buf * KT * D, &maps.v, &full[buf], 0, 0, c, hkv, b);
      return;
    }
    load_tile<KT, D, kThreads>(sK + buf * KT * D, p.KCTX,
                     [&](int r) { return kbase + c * p.skc + r * p.skk; });
    load_tile<KT, D, kThreads>(sV + buf * KT * D, p.KCTX,
                     [&](int r) { return vbase + c * p.svc + r * p.svk; });
  };
  if constexpr (TMA) {
    if (threadIdx.x == 0) {
      mbar_init(&full[0], 1);
      mbar_init(&full[1], 1);
      mbar_init(qo_full, 1);
      mbar_fence_init();
      load_kv(0);
    }
    __syncthreads();
  } else {
    load_kv(0);
    cp_async_commit();
  }

  float dq[D / 8][4];
  for (int item = 0; item < items; ++item) {
    const int pass = item / p.K, c = item % p.K, buf = item & 1;
    const int row0 = pass * kRows, rows = min(kRows, nrows_total - row0);
    auto row_head = [&](int r, int* head, int* qi) {
      const int rr = row0 + r;
      *head = hkv * p.G + rr / p.Q;
      *qi = rr % p.Q;
    };
    if (TMA && c == 0) {
      if (threadIdx.x == 0) {  // a pass is 64 queries of one head (Q % 64 == 0)
        const int head = hkv * p.G + row0 / p.Q, qi0 = row0 % p.Q;
        mbar_expect_tx(qo_full, 2 * kRows * D * 2);
        tma_load_4d(sQ, &maps.q, qo_full, 0, qi0, head, b);
        tma_load_4d(sO, &maps.o, qo_full, 0, qi0, head, b);
      }
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq[n][e] = 0.f;
    }
    if (TMA) {
      if (threadIdx.x == 0 && item + 1 < items) load_kv(item + 1);
      mbar_wait(&full[buf], (item >> 1) & 1);
      if (c == 0) mbar_wait(qo_full, pass & 1);
    } else if (c == 0) {
      load_tile<kRows, D, kThreads>(sQ, rows, [&](int r) {
        int head, qi;
        row_head(r, &head, &qi);
        return p.q + b * p.sqb + head * p.sqh + qi * p.sqq;
      });
      load_tile<kRows, D, kThreads>(sO, rows, [&](int r) {
        int head, qi;
        row_head(r, &head, &qi);
        return p.dout + ((int64_t(b) * p.Hq + head) * p.Q + qi) * D;
      });
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq[n][e] = 0.f;
    }
    if (!TMA) {
      cp_async_commit();
      if (item + 1 < items) load_kv(item + 1);
      cp_async_commit();
      cp_async_wait<1>();
      // The tensor cores read through the async proxy (see the forward).
      if (WG) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncthreads();
    }
    const __nv_bfloat16* tK = sK + buf * KT * D;
    const __nv_bfloat16* tV = sV + buf * KT * D;
    const float wc = p.w[b * p.K + c];

    // Phase 1: the warp's 16 rows against all KT keys.
    float s[KT / 8][4], dp[KT / 8][4];
    if constexpr (WG) {
      uint32_t qa[D / 16][4], oa[D / 16][4];
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        ldsm_x4(qa[kk], sQ + sw<D>(wr + (lane & 15), kk * 16 + (lane >> 4) * 8));
        ldsm_x4(oa[kk], sO + sw<D>(wr + (lane & 15), kk * 16 + (lane >> 4) * 8));
      }
      wg_qk64(s, qa, tK);
      wg_qk64(dp, oa, tV);
      wgmma_wait<0>();
      wgmma_fence_regs(s);
      wgmma_fence_regs(dp);
    } else {
#pragma unroll
    for (int n = 0; n < KT / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
    }
    float lse[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = wr + g + 8 * h;
      if (r < rows) {
        int head, qi;
        row_head(r, &head, &qi);
        lse[h] = p.lse[((int64_t(b) * p.Hq + head) * p.K + c) * p.Q + qi];
      } else {
        lse[h] = 0.f;  // pad rows: Q = dO = 0, so P = 1 and dS = 0
      }
    }
#pragma unroll
    for (int kk = 0; kk < (WG ? 0 : D / 16); ++kk) {
      uint32_t a[4], ao[4];
      ldsm_x4(a, sQ + sw<D>(wr + (lane & 15), kk * 16 + (lane >> 4) * 8));
      ldsm_x4(ao, sO + sw<D>(wr + (lane & 15), kk * 16 + (lane >> 4) * 8));
#pragma unroll
      for (int np = 0; np < KT / 16; ++np) {
        uint32_t bb[4];
        const int kr = np * 16 + (lane & 7) + (lane >> 4) * 8, kc = kk * 16 + ((lane >> 3) & 1) * 8;
        ldsm_x4(bb, tK + sw<D>(kr, kc));
        mma16816(s[2 * np], a, bb[0], bb[1]);
        mma16816(s[2 * np + 1], a, bb[2], bb[3]);
        ldsm_x4(bb, tV + sw<D>(kr, kc));
        mma16816(dp[2 * np], ao, bb[0], bb[1]);
        mma16816(dp[2 * np + 1], ao, bb[2], bb[3]);
      }
    }
    float di[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < KT / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(fmaf(s[n][e], p.scale_log2, -lse[e >> 1]));
        if (KT > 64 || p.KCTX < KT) {  // uniform: zero the keys past K_CTX
          if (n * 8 + 2 * t + (e & 1) >= p.KCTX) s[n][e] = 0.f;
        }
        di[e >> 1] += s[n][e] * dp[n][e];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      di[h] += __shfl_xor_sync(0xffffffffu, di[h], 1);
      di[h] += __shfl_xor_sync(0xffffffffu, di[h], 2);
    }
    {
      // dweights: sum of Di over the warp's rows (each row once: the t == 0 lanes).
      float part = t == 0 ? di[0] + di[1] : 0.f;
      part = warp_sum(part);
      if (lane == 0) sDw[warp] = part;
    }
#pragma unroll
    for (int n = 0; n < KT / 8; ++n) {
      const int col = n * 8 + 2 * t;
      // dS = w * P * (dP - Di), in place of dP.
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[n][e] = wc * s[n][e] * (dp[n][e] - di[e >> 1]);
      *reinterpret_cast<uint32_t*>(sP + sw<KT>(wr + g, col)) =
          pack_bf16(wc * s[n][0], wc * s[n][1]);
      *reinterpret_cast<uint32_t*>(sP + sw<KT>(wr + g + 8, col)) =
          pack_bf16(wc * s[n][2], wc * s[n][3]);
      *reinterpret_cast<uint32_t*>(sS + sw<KT>(wr + g, col)) = pack_bf16(dp[n][0], dp[n][1]);
      *reinterpret_cast<uint32_t*>(sS + sw<KT>(wr + g + 8, col)) = pack_bf16(dp[n][2], dp[n][3]);
    }
    // dQ += dS K (dS from registers, rounded to bf16 like the shared copy).
    if constexpr (WG) wg_pv64_wait(dq, dp, tK);
#pragma unroll
    for (int kk = 0; kk < (WG ? 0 : KT / 16); ++kk) {
      uint32_t a[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]),
                       pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                       pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                       pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
      for (int dd = 0; dd < D / 16; ++dd) {
        uint32_t bb[4];
        ldsm_x4_t(bb, tK + sw<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                 dd * 16 + (lane >> 4) * 8));
        mma16816(dq[2 * dd], a, bb[0], bb[1]);
        mma16816(dq[2 * dd + 1], a, bb[2], bb[3]);
      }
    }
    __syncthreads();

    // Phase 2: each warp's keys: dV = (wP)^T dO and dK = scale * dS^T Q over the pass's rows.
    const bool last_pass = pass == npass - 1;
    if (threadIdx.x == 0) {
      const float part = sDw[0] + sDw[1] + sDw[2] + sDw[3];
      if (MULTIPASS) {
        float* dst = p.dw_partial + int64_t(bh) * p.K + c;
        const float prev = pass == 0 ? 0.f : *dst;
        *dst = prev + part;
      } else {
        p.dw_partial[int64_t(bh) * p.K + c] = part;
      }
    }
#pragma unroll
    for (int mt = 0; mt < KT / 16 / kWarps; ++mt) {
      const int key0 = (warp * (KT / 16 / kWarps) + mt) * 16;
#pragma unroll
      for (int which = 0; which < 2; ++which) {
        const __nv_bfloat16* sA = which == 0 ? sP : sS;
        const __nv_bfloat16* sB = which == 0 ? sO : sQ;
        float r[D / 8][4];
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) r[n][e] = 0.f;
        if constexpr (WG) {
          uint32_t a[kRows / 16][4];
#pragma unroll
          for (int kk = 0; kk < kRows / 16; ++kk)
            ldsm_x4_t(a[kk], sA + sw<KT>(kk * 16 + (lane & 7) + (lane >> 4) * 8,
                                         key0 + ((lane >> 3) & 1) * 8));
          wg_pv64_wait(r, a, sB);
        }
#pragma unroll
        for (int kk = 0; kk < (WG ? 0 : kRows / 16); ++kk) {
          uint32_t a[4];
          // A = (rows x keys)^T: 8x8 blocks (rows kk*16 + {0,8}) x (keys key0 + {0,8}).
          ldsm_x4_t(a, sA + sw<KT>(kk * 16 + (lane & 7) + (lane >> 4) * 8,
                                   key0 + ((lane >> 3) & 1) * 8));
#pragma unroll
          for (int dd = 0; dd < D / 16; ++dd) {
            uint32_t bb[4];
            ldsm_x4_t(bb, sB + sw<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                     dd * 16 + (lane >> 4) * 8));
            mma16816(r[2 * dd], a, bb[0], bb[1]);
            mma16816(r[2 * dd + 1], a, bb[2], bb[3]);
          }
        }
        const float mul = which == 0 ? 1.f : p.scale;
        __nv_bfloat16* out = which == 0 ? p.dv : p.dk;
        const int64_t base = ((int64_t(bh) * p.K + c) * p.KCTX) * D;
        if (!MULTIPASS) {
          // Phase 2 reads no K/V: stage the warp's 16 key rows in this item's K (dK) or V
          // (dV) buffer, then store whole rows.
          const float muls[2] = {mul, mul};
          __nv_bfloat16* stage = const_cast<__nv_bfloat16*>(which == 0 ? tV : tK) + key0 * D;
          store_rows<D>(r, muls, stage, p.KCTX - key0,
                        [&](int rr) { return out + base + int64_t(key0 + rr) * D; });
          continue;
        }
        float* scr = p.scratch + int64_t(which) * p.B * p.Hkv * p.K * p.KCTX * D + base;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int key = key0 + g + 8 * h;
          if (key < p.KCTX) {
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
              const int col = n * 8 + 2 * t;
              float x0 = r[n][2 * h] * mul, x1 = r[n][2 * h + 1] * mul;
              float2* sp = reinterpret_cast<float2*>(scr + int64_t(key) * D + col);
              if (pass > 0) {
                const float2 prev = *sp;
                x0 += prev.x;
                x1 += prev.y;
              }
              if (!last_pass) {
                *sp = make_float2(x0, x1);
              } else {
                *reinterpret_cast<uint32_t*>(out + base + int64_t(key) * D + col) =
                    pack_bf16(x0, x1);
              }
            }
          }
        }
      }
    }
    if (c == p.K - 1) {
      // This pass's dQ is complete. sQ is read by no other warp in its rows after the
      // barrier below, but phase 2 of other warps reads all of sQ: wait first.
      __syncthreads();
      const float mul[2] = {p.scale, p.scale};
      if (wr < rows)
        store_rows<D>(dq, mul, sQ + wr * D, rows - wr, [&](int r) {
          int head, qi;
          row_head(wr + r, &head, &qi);
          return p.dq + ((int64_t(b) * p.Hq + head) * p.Q + qi) * D;
        });
    }
    // TMA: the staged outputs above were written through the generic proxy into buffers
    // that the next loads overwrite.
    if (TMA) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------
// Launchers.

template <int D> size_t fwd_smem() { return size_t(kRows + 2 * fwd_stages<D>() * kFwdTile) * D * 2; }
// WG: no Q tile, 1 KB of slack to align the rings; TMA: and kTmaTail.
template <int D> size_t fwd_smem_wg(bool tma) {
  return fwd_smem<D>() - size_t(kRows) * D * 2 + 1024 + (tma ? kTmaTail : 0);
}
template <int D, int KT> size_t bwd_smem() {
  return size_t(2 * kRows * D + 4 * KT * D + 2 * kRows * KT) * 2 + kWarps * 4;
}

template <typename K> cudaError_t prepare(K kernel, size_t smem) {
  if (smem > 48 * 1024)
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem));
  return cudaSuccess;
}

// Whether the kernels run their products on wgmma: head dim 64, one key tile per chunk, a
// Hopper device, unless LCM_GCA_WGMMA=0 (wgmma_enabled).
bool use_wgmma(int D, bool single) {
  static const bool on = wgmma_enabled("LCM_GCA_WGMMA");
  return on && D == 64 && single;
}

// Whether the wgmma forward loads through TMA (LCM_GCA_TMA=0: its cp.async form).
bool use_tma() {
  static const bool on = tma_enabled("LCM_GCA_WGMMA", "LCM_GCA_TMA");
  return on;
}

// The k and v descriptors (one box = one chunk of K_CTX = 64 keys), false when TMA does not
// take the layout.
bool kv_maps(const FwdParams& p, KvMaps* m) {
  if (p.KCTX != kFwdTile || p.K > kTmaMaxK) return false;
  const int64_t dims[5] = {64, p.KCTX, p.K, p.Hkv, p.B};
  const int64_t sk[4] = {p.skk, p.skc, p.skh, p.skb}, sv[4] = {p.svk, p.svc, p.svh, p.svb};
  return encode_rows_map(&m->k, p.k, 5, dims, sk, kFwdTile) &&
         encode_rows_map(&m->v, p.v, 5, dims, sv, kFwdTile);
}

// The TMA forward with Q in shared memory (QS; maps.k/v set), where LCM_GCA_QSMEM is not
// "0" and each pass is one head's (Q % 64 == 0); cudaErrorNotSupported otherwise.
template <bool ONE> cudaError_t launch_fwd_qs(const FwdParams& p, KvMaps maps, cudaStream_t s) {
  static const bool on = env_switch_on("LCM_GCA_QSMEM");
  const int64_t qd[4] = {64, p.Q, p.Hq, p.B};
  const int64_t sq[3] = {p.sqq, p.sqh, p.sqb};
  if (!on || p.Q % kRows != 0 || !encode_rows_map(&maps.q, p.q, 4, qd, sq, kRows))
    return cudaErrorNotSupported;
  auto kernel = gca_fwd_kernel<64, ONE, true, true, true, true>;
  // Q, 2 stages of K and V, 1 KB of slack to align them, kTmaTail.
  const size_t smem = size_t(kRows + 4 * kFwdTile) * 64 * 2 + 1024 + kTmaTail;
  cudaError_t e = prepare(kernel, smem);
  if (e != cudaSuccess) return e;
  const int npass = (p.G * p.Q + kRows - 1) / kRows;
  kernel<<<dim3(p.B * p.Hkv, npass), kThreads, smem, s>>>(p, maps);
  return cudaGetLastError();
}

template <int D, bool ONE, bool SINGLE>
cudaError_t launch_fwd_t(const FwdParams& p, cudaStream_t s) {
  constexpr bool kWg = D == 64 && SINGLE;
  const bool wg = use_wgmma(D, SINGLE);
  KvMaps maps{};
  const bool tma = kWg && wg && use_tma() && kv_maps(p, &maps);
  if (tma) {
    const cudaError_t e = launch_fwd_qs<ONE>(p, maps, s);
    if (e != cudaErrorNotSupported) return e;
  }
  auto kernel = tma  ? gca_fwd_kernel<D, ONE, SINGLE, kWg, kWg>
                : wg ? gca_fwd_kernel<D, ONE, SINGLE, kWg, false>
                     : gca_fwd_kernel<D, ONE, SINGLE, false, false>;
  const size_t smem = wg ? fwd_smem_wg<D>(tma) : fwd_smem<D>();
  cudaError_t e = prepare(kernel, smem);
  if (e != cudaSuccess) return e;
  const int npass = (p.G * p.Q + kRows - 1) / kRows;
  dim3 grid(p.B * p.Hkv, npass);
  kernel<<<grid, kThreads, smem, s>>>(p, maps);
  return cudaGetLastError();
}

// The gathered forward (p.gather set): k/v a chunk memory (M, KCTX, Hkv, D), strides in
// elements sk/sv = (row, key, head); descriptors of (d, head, key, row) boxes of one
// head's 64 keys. cudaErrorNotSupported where only the host can gather (no TMA, another
// shape): the bridge then gathers and calls the plain forward.
template <bool ONE>
cudaError_t launch_fwd_gather(const FwdParams& p, int64_t M, const int64_t* sk,
                              const int64_t* sv, cudaStream_t s) {
  KvMaps maps{};
  const int64_t dims[4] = {64, p.Hkv, p.KCTX, M};
  const int64_t stk[3] = {sk[2], sk[1], sk[0]}, stv[3] = {sv[2], sv[1], sv[0]};
  const int box[4] = {64, 1, kFwdTile, 1};
  if (p.KCTX != kFwdTile || p.K > kTmaMaxK || !use_wgmma(64, true) || !use_tma() ||
      !encode_box_map(&maps.k, p.k, 4, dims, stk, box) ||
      !encode_box_map(&maps.v, p.v, 4, dims, stv, box))
    return cudaErrorNotSupported;
  {
    const cudaError_t e = launch_fwd_qs<ONE>(p, maps, s);
    if (e != cudaErrorNotSupported) return e;
  }
  auto kernel = gca_fwd_kernel<64, ONE, true, true, true>;
  const size_t smem = fwd_smem_wg<64>(true);
  cudaError_t e = prepare(kernel, smem);
  if (e != cudaSuccess) return e;
  const int npass = (p.G * p.Q + kRows - 1) / kRows;
  kernel<<<dim3(p.B * p.Hkv, npass), kThreads, smem, s>>>(p, maps);
  return cudaGetLastError();
}

template <int D, bool ONE> cudaError_t launch_fwd(const FwdParams& p, cudaStream_t s) {
  return p.KCTX <= kFwdTile ? launch_fwd_t<D, ONE, true>(p, s) : launch_fwd_t<D, ONE, false>(p, s);
}

// The backward's descriptors, false when TMA does not take the layouts or the shape (one
// 64-key chunk per tile, passes of 64 queries of one head).
bool bwd_maps(const BwdParams& p, BwdMaps* m) {
  if (p.KCTX != 64 || p.Q % kRows != 0) return false;
  const int64_t kd[5] = {64, p.KCTX, p.K, p.Hkv, p.B};
  const int64_t sk[4] = {p.skk, p.skc, p.skh, p.skb}, sv[4] = {p.svk, p.svc, p.svh, p.svb};
  const int64_t qd[4] = {64, p.Q, p.Hq, p.B};
  const int64_t sq[3] = {p.sqq, p.sqh, p.sqb};
  const int64_t so[3] = {64, int64_t(p.Q) * 64, int64_t(p.Hq) * p.Q * 64};  // dO contiguous
  return encode_rows_map(&m->k, p.k, 5, kd, sk, 64) && encode_rows_map(&m->v, p.v, 5, kd, sv, 64) &&
         encode_rows_map(&m->q, p.q, 4, qd, sq, kRows) &&
         encode_rows_map(&m->o, p.dout, 4, qd, so, kRows);
}

template <int D, int KT, bool MP> cudaError_t launch_bwd(const BwdParams& p, cudaStream_t s) {
  constexpr bool kWg = D == 64 && KT == 64;
  const bool wg = kWg && use_wgmma(D, true);
  BwdMaps maps{};
  const bool tma = wg && use_tma() && bwd_maps(p, &maps);
  auto kernel = tma  ? gca_bwd_kernel<D, KT, MP, kWg, kWg>
                : wg ? gca_bwd_kernel<D, KT, MP, kWg>
                     : gca_bwd_kernel<D, KT, MP, false>;
  // WG: slack to align the tiles; TMA: and 3 barriers.
  const size_t smem = bwd_smem<D, KT>() + (wg ? 1024 : 0) + (tma ? 32 : 0);
  cudaError_t e = prepare(kernel, smem);
  if (e != cudaSuccess) return e;
  kernel<<<p.B * p.Hkv, kThreads, smem, s>>>(p, maps);
  return cudaGetLastError();
}

template <int D, int KT> cudaError_t launch_bwd_d(const BwdParams& p, cudaStream_t s) {
  return p.G * p.Q > kRows ? launch_bwd<D, KT, true>(p, s) : launch_bwd<D, KT, false>(p, s);
}

}  // namespace gca
}  // namespace lcm

extern "C" {

// Query rows per pass: the backward needs an fp32 scratch of 2 * B*Hkv*K*KCTX*D floats
// when G*Q exceeds it.
int lcm_gca_rows_per_pass() { return lcm::gca::kRows; }
// Largest K_CTX the backward supports (the forward takes any).
int lcm_gca_max_kctx_bwd() { return 128; }

int lcm_gca_fwd_launch(const void* q, const void* k, const void* v, const float* w, void* o,
                       float* lse, const int64_t* strides, int B, int Hq, int Hkv, int Q, int K,
                       int KCTX, int D, float scale, int one, cudaStream_t s) {
  using namespace lcm::gca;
  FwdParams p{};
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(k);
  p.v = static_cast<const __nv_bfloat16*>(v);
  p.w = w;
  p.o = static_cast<__nv_bfloat16*>(o);
  p.lse = lse;
  p.sqb = strides[0], p.sqh = strides[1], p.sqq = strides[2];
  p.skb = strides[3], p.skh = strides[4], p.skc = strides[5], p.skk = strides[6];
  p.svb = strides[7], p.svh = strides[8], p.svc = strides[9], p.svk = strides[10];
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.G = Hq / Hkv, p.Q = Q, p.K = K, p.KCTX = KCTX;
  p.scale_log2 = scale * 1.4426950408889634f;
  if (D == 64) return one ? launch_fwd<64, true>(p, s) : launch_fwd<64, false>(p, s);
  if (D == 128) return one ? launch_fwd<128, true>(p, s) : launch_fwd<128, false>(p, s);
  return cudaErrorInvalidValue;
}

// The forward reading a chunk memory through `gather` (B, K) int64 (rows of mem_k/mem_v,
// (M, KCTX, Hkv, D)); strides: q (b, h, q), mem_k (row, key, head), mem_v (row, key, head).
// Head dim 64, K_CTX 64 on Hopper with TMA, else cudaErrorNotSupported.
int lcm_gca_fwd_gather_launch(const void* q, const void* mem_k, const void* mem_v,
                              const int64_t* gather, const float* w, void* o, float* lse,
                              const int64_t* strides, int B, int Hq, int Hkv, int Q, int K,
                              int KCTX, int64_t M, int D, float scale, int one, cudaStream_t s) {
  using namespace lcm::gca;
  if (D != 64) return cudaErrorNotSupported;
  FwdParams p{};
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(mem_k);
  p.v = static_cast<const __nv_bfloat16*>(mem_v);
  p.w = w;
  p.o = static_cast<__nv_bfloat16*>(o);
  p.lse = lse;
  p.gather = gather;
  p.sqb = strides[0], p.sqh = strides[1], p.sqq = strides[2];
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.G = Hq / Hkv, p.Q = Q, p.K = K, p.KCTX = KCTX;
  p.scale_log2 = scale * 1.4426950408889634f;
  return one ? launch_fwd_gather<true>(p, M, strides + 3, strides + 6, s)
             : launch_fwd_gather<false>(p, M, strides + 3, strides + 6, s);
}

int lcm_gca_bwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const void* dout, const float* lse, void* dq, void* dk, void* dv,
                       float* dw_partial, float* scratch, const int64_t* strides, int B, int Hq,
                       int Hkv, int Q, int K, int KCTX, int D, float scale, cudaStream_t s) {
  using namespace lcm::gca;
  BwdParams p;
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(k);
  p.v = static_cast<const __nv_bfloat16*>(v);
  p.w = w;
  p.dout = static_cast<const __nv_bfloat16*>(dout);
  p.lse = lse;
  p.dq = static_cast<__nv_bfloat16*>(dq);
  p.dk = static_cast<__nv_bfloat16*>(dk);
  p.dv = static_cast<__nv_bfloat16*>(dv);
  p.dw_partial = dw_partial;
  p.scratch = scratch;
  p.sqb = strides[0], p.sqh = strides[1], p.sqq = strides[2];
  p.skb = strides[3], p.skh = strides[4], p.skc = strides[5], p.skk = strides[6];
  p.svb = strides[7], p.svh = strides[8], p.svc = strides[9], p.svk = strides[10];
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.G = Hq / Hkv, p.Q = Q, p.K = K, p.KCTX = KCTX;
  p.scale = scale;
  p.scale_log2 = scale * 1.4426950408889634f;
  if (KCTX < 1 || KCTX > 128) return cudaErrorInvalidValue;
  if (D == 64) return KCTX <= 64 ? launch_bwd_d<64, 64>(p, s) : launch_bwd_d<64, 128>(p, s);
  if (D == 128) return KCTX <= 64 ? launch_bwd_d<128, 64>(p, s) : launch_bwd_d<128, 128>(p, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
