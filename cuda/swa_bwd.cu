// The SWA backward (swa.cuh says what the op is), deterministic, no atomics:
// Di = rowsum(dO * o) (a small kernel), then
//   dq kernel:    one CTA per (query tile, b, query head), key tiles of the band:
//                 P = exp2(s2 - lse), dP = dO V^T, dS = P (dP - Di), dQ += dS K;
//   dk/dv kernel: one CTA per (key tile, b, kv head), the query tiles of its band for each
//                 of the G query heads of the group; each warp owns 16 keys and computes
//                 the transposed products P^T = exp2(K Q^T s - lse), dP^T = V dO^T,
//                 dV += P^T dO, dK += dS^T Q with P^T and dS^T straight from registers.
// S and dP are computed twice (7 matrix products instead of 5) for determinism.
// Design: docs/kernels/swa.md.
#include "swa.cuh"

namespace lcm {
namespace swa {

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
// ALiBi is added to the scores here, not as an MMA step as in the forward: the extra
// k-step adds to products that keep the tensor pipe busier than the forward's.
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

// 2 CTAs per SM at D 64 (capped for 3, the TMA kernel spills).
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

// The path's kernels, falling back (kPathTma and kPathTmaQs -> kPathWgmma) where TMA does
// not take the layouts, and to mma.sync at head dim 128.
template <int D, bool ALIBI>
cudaError_t launch_bwd(const Params& p, float* di, int path, cudaStream_t s) {
  KvMaps maps{};
  if constexpr (D == 64) {
    if (path >= kPathTma && kv_maps(p, &maps))
      return launch_bwd_t<D, ALIBI, true, true>(p, di, maps, s);
    if (path >= kPathWgmma) return launch_bwd_t<D, ALIBI, true, false>(p, di, maps, s);
  }
  return launch_bwd_t<D, ALIBI, false, false>(p, di, maps, s);
}

}  // namespace swa
}  // namespace lcm

extern "C" {

// o and dout contiguous (B, Hq, T, D); di is a scratch of B*Hq*T floats; path: an AttnPath.
int lcm_swa_bwd_launch(const void* q, const void* k, const void* v, const float* slopes,
                       const void* o, const float* lse, const void* dout, float* di, void* dq,
                       void* dk, void* dv, const int64_t* strides, int B, int Hq, int Hkv, int T,
                       int D, int window, int causal, float scale, int path, cudaStream_t s) {
  using namespace lcm::swa;
  Params p = make_params(q, k, v, slopes, strides, B, Hq, Hkv, T, window, causal, scale);
  p.o = static_cast<__nv_bfloat16*>(const_cast<void*>(o));
  p.lse = const_cast<float*>(lse);
  p.dout = static_cast<const __nv_bfloat16*>(dout);
  p.dq = static_cast<__nv_bfloat16*>(dq);
  p.dk = static_cast<__nv_bfloat16*>(dk);
  p.dv = static_cast<__nv_bfloat16*>(dv);
  const bool alibi = slopes != nullptr && p.causal;
  if (D == 64)
    return alibi ? launch_bwd<64, true>(p, di, path, s) : launch_bwd<64, false>(p, di, path, s);
  if (D == 128)
    return alibi ? launch_bwd<128, true>(p, di, path, s) : launch_bwd<128, false>(p, di, path, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
