// The HSA backward (hsa.cuh says what the op is): tensor cores, two kernels, no atomics
// (deterministic):
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
//    by the 4 warps (6 pairs in flight), one barrier per pair (U = 1: the kernel's template
//    also takes U pairs per iteration, none of which ran faster). CTAs run heaviest chunk
//    first (the bridge orders them by pair count).
//    dK, dV are written once, in bf16; chunks nobody retrieved get zeros.
// Design: docs/kernels/hsa.md.
#include "hsa.cuh"

namespace lcm {
namespace hsa {

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

template <int D> int launch_bwd(const Params& p, int64_t nchunks, cudaStream_t s) {
  const int e = launch_bwd_dq<D, kDqUnits>(p, s);
  if (e != cudaSuccess) return e;
  // One pair per iteration; D 64: capped at 128 registers, 4 CTAs per SM.
  return launch_bwd_dkdv<D, 1, D == 64 ? 4 : 1>(p, nchunks, s);
}

}  // namespace hsa
}  // namespace lcm

extern "C" {

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