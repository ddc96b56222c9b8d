// The GCA forward (gca.cuh says what the op is): the chunk's keys come in tiles of 64 (a
// ring of cp.async or TMA loads); an online softmax runs over the tiles of one chunk (one
// tile when K_CTX <= 64); at a chunk's end its normalised output is added into the fp32
// accumulator with weight w[b,c]. Design: docs/kernels/gca.md.
#include "gca.cuh"

namespace lcm {
namespace gca {

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
// (a transaction barrier per stage).
// QS (TMA; the pass's rows one head's: G = 1 or Q % 64 == 0): Q comes by TMA into a
// shared tile and S = Q K^T reads both operands from shared memory; without Q's 16
// registers of fragments and with 2 stages, 5 CTAs fit an SM (as SWA's forward).
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
// Launchers.

template <int D> size_t fwd_smem() { return size_t(kRows + 2 * fwd_stages<D>() * kFwdTile) * D * 2; }
// WG: no Q tile, 1 KB of slack to align the rings; TMA: and kTmaTail.
template <int D> size_t fwd_smem_wg(bool tma) {
  return fwd_smem<D>() - size_t(kRows) * D * 2 + 1024 + (tma ? kTmaTail : 0);
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

// The TMA forward with Q in shared memory (QS; maps.k/v set), where each pass is one
// head's (Q % 64 == 0); cudaErrorNotSupported otherwise.
template <bool ONE> cudaError_t launch_fwd_qs(const FwdParams& p, KvMaps maps, cudaStream_t s) {
  const int64_t qd[4] = {64, p.Q, p.Hq, p.B};
  const int64_t sq[3] = {p.sqq, p.sqh, p.sqb};
  if (p.Q % kRows != 0 || !encode_rows_map(&maps.q, p.q, 4, qd, sq, kRows))
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

// The path's kernel, falling back (kPathTmaQs -> kPathTma -> kPathWgmma -> kPathMma) where
// the shape or the layouts do not take it.
template <int D, bool ONE, bool SINGLE>
cudaError_t launch_fwd_t(const FwdParams& p, int path, cudaStream_t s) {
  constexpr bool kWg = D == 64 && SINGLE;
  const bool wg = kWg && path >= kPathWgmma;
  KvMaps maps{};
  const bool tma = wg && path >= kPathTma && kv_maps(p, &maps);
  if (tma && path >= kPathTmaQs) {
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
// head's 64 keys. cudaErrorNotSupported where only the host can gather (a path without
// TMA, another shape): the bridge then gathers and calls the plain forward.
template <bool ONE>
cudaError_t launch_fwd_gather(const FwdParams& p, int64_t M, const int64_t* sk,
                              const int64_t* sv, int path, cudaStream_t s) {
  KvMaps maps{};
  const int64_t dims[4] = {64, p.Hkv, p.KCTX, M};
  const int64_t stk[3] = {sk[2], sk[1], sk[0]}, stv[3] = {sv[2], sv[1], sv[0]};
  const int box[4] = {64, 1, kFwdTile, 1};
  if (p.KCTX != kFwdTile || p.K > kTmaMaxK || path < kPathTma ||
      !encode_box_map(&maps.k, p.k, 4, dims, stk, box) ||
      !encode_box_map(&maps.v, p.v, 4, dims, stv, box))
    return cudaErrorNotSupported;
  if (path >= kPathTmaQs) {
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

template <int D, bool ONE> cudaError_t launch_fwd(const FwdParams& p, int path, cudaStream_t s) {
  return p.KCTX <= kFwdTile ? launch_fwd_t<D, ONE, true>(p, path, s)
                            : launch_fwd_t<D, ONE, false>(p, path, s);
}

}  // namespace gca
}  // namespace lcm

extern "C" {

// Query rows per pass: the backward needs an fp32 scratch of 2 * B*Hkv*K*KCTX*D floats
// when G*Q exceeds it.
int lcm_gca_rows_per_pass() { return lcm::gca::kRows; }

// path: an AttnPath (attn_path.h).
int lcm_gca_fwd_launch(const void* q, const void* k, const void* v, const float* w, void* o,
                       float* lse, const int64_t* strides, int B, int Hq, int Hkv, int Q, int K,
                       int KCTX, int D, float scale, int one, int path, cudaStream_t s) {
  using namespace lcm::gca;
  FwdParams p{};
  p.q = static_cast<const __nv_bfloat16*>(q);
  p.k = static_cast<const __nv_bfloat16*>(k);
  p.v = static_cast<const __nv_bfloat16*>(v);
  p.w = w;
  p.o = static_cast<__nv_bfloat16*>(o);
  p.lse = lse;
  set_strides(&p, strides);
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.G = Hq / Hkv, p.Q = Q, p.K = K, p.KCTX = KCTX;
  p.scale_log2 = scale * lcm::kLog2e;
  if (D == 64) return one ? launch_fwd<64, true>(p, path, s) : launch_fwd<64, false>(p, path, s);
  if (D == 128)
    return one ? launch_fwd<128, true>(p, path, s) : launch_fwd<128, false>(p, path, s);
  return cudaErrorInvalidValue;
}

// The forward reading a chunk memory through `gather` (B, K) int64 (rows of mem_k/mem_v,
// (M, KCTX, Hkv, D)); strides: q (b, h, q), mem_k (row, key, head), mem_v (row, key, head).
// Head dim 64, K_CTX 64 on a TMA path, else cudaErrorNotSupported.
int lcm_gca_fwd_gather_launch(const void* q, const void* mem_k, const void* mem_v,
                              const int64_t* gather, const float* w, void* o, float* lse,
                              const int64_t* strides, int B, int Hq, int Hkv, int Q, int K,
                              int KCTX, int64_t M, int D, float scale, int one, int path,
                              cudaStream_t s) {
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
  p.scale_log2 = scale * lcm::kLog2e;
  return one ? launch_fwd_gather<true>(p, M, strides + 3, strides + 6, path, s)
             : launch_fwd_gather<false>(p, M, strides + 3, strides + 6, path, s);
}

}  // extern "C"
