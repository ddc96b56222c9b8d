// The SWA forward (swa.cuh says what the op is): one CTA per (query tile, b, query head);
// K/V tiles in a ring (TMA or cp.async), online softmax over the key tiles newest first,
// rescaling the accumulator only when a row's max passes the running one by more than a
// factor 2^8 (softmax_update); on the kPathTmaQs path with ALiBi the bias's column term is
// a fifth k-step of S = Q K^T (BM, swa_fwd_kernel). Design: docs/kernels/swa.md.
#include "swa.cuh"

namespace lcm {
namespace swa {

// Lazy rescaling (softmax_update): how far (base 2) a row's max may pass the running max
// before the accumulator is rescaled.
constexpr float kRescaleSlack = 8.f;

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
// it by more than kRescaleSlack (probabilities up to 2^8, far inside fp32 and bf16; the
// output and lse are exact either way, as both use the same max), and a warp rescales
// only when one of its rows did. With the key tiles visited newest first the first tile's
// max, ALiBi's largest, is rarely passed: most tiles skip the accumulator's 32 multiplies
// and the two ex2 of alpha.
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
    grow = grow || mx[hh] > m[hh] + kRescaleSlack;
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
// through the first K buffer.
//
// QS (with TMA, kPathTmaQs): Q comes by TMA into a shared tile and S = Q K^T reads both
// operands from shared memory, which frees the 16 registers of Q's fragments (92
// registers): 5 CTAs per SM (2 K/V stages) instead of 4.
//
// BM (ALiBi by MMA; QS with ALiBi): the column's part of the bias, slope2 * col /
// scale_log2, is a fifth k-step of S = Q K^T: A (registers) holds that ratio split into
// two bf16 (hi + lo, 16 bits of it) in columns 0 and 1 of every row, B (a constant 64 x 16
// tile, sJ) the column index 0..63 (exact in bf16) in the same two columns. The scores
// then take the unbiased path (one FFMA each before the ex2) and the tile's part,
// slope2 * (k0 - q0), moves into the two row offsets: 48 FFMA/FADD a tile fewer, for a
// quarter more tensor work in S (an eighth of the tile's).
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
  auto key_tile = [&](int item) { return hi - item; };  // newest first
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
// Launchers.

// The forward's q descriptor (QS), false when TMA does not take the layout.
bool q_map(const Params& p, KvMaps* m) {
  const int64_t dims[4] = {64, p.T, p.Hq, p.B};
  const int64_t sq[3] = {p.sqt, p.sqh, p.sqb};
  return encode_rows_map(&m->q, p.q, 4, dims, sq, kTile);
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

// The path's kernel, falling back (kPathTmaQs -> kPathTma -> kPathWgmma) where TMA does not
// take the layouts, and to mma.sync at head dim 128.
template <int D, bool ALIBI> cudaError_t launch_fwd(const Params& p, int path, cudaStream_t s) {
  KvMaps maps{};
  if constexpr (D == 64) {
    if (path >= kPathTma && kv_maps(p, &maps)) {
      if (path >= kPathTmaQs && q_map(p, &maps))
        return launch_fwd_t<D, ALIBI, true, true, true, ALIBI>(p, maps, s);
      return launch_fwd_t<D, ALIBI, true, true>(p, maps, s);
    }
    if (path >= kPathWgmma) return launch_fwd_t<D, ALIBI, true, false>(p, maps, s);
  }
  return launch_fwd_t<D, ALIBI, false, false>(p, maps, s);
}

}  // namespace swa
}  // namespace lcm

extern "C" {

// strides: q (b, h, t), k (b, h, t), v (b, h, t) in elements; the last dim is dense.
// path: an AttnPath (attn_path.h).
int lcm_swa_fwd_launch(const void* q, const void* k, const void* v, const float* slopes, void* o,
                       float* lse, const int64_t* strides, int B, int Hq, int Hkv, int T, int D,
                       int window, int causal, float scale, int path, cudaStream_t s) {
  using namespace lcm::swa;
  Params p = make_params(q, k, v, slopes, strides, B, Hq, Hkv, T, window, causal, scale);
  p.o = static_cast<__nv_bfloat16*>(o);
  p.lse = lse;
  const bool alibi = slopes != nullptr && p.causal;
  if (D == 64) return alibi ? launch_fwd<64, true>(p, path, s) : launch_fwd<64, false>(p, path, s);
  if (D == 128)
    return alibi ? launch_fwd<128, true>(p, path, s) : launch_fwd<128, false>(p, path, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
