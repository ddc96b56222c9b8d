// The GCA backward (gca.cuh says what the op is), FlashAttention-2 style, a chunk's keys
// in one tile of KT = 64 or 128: per pass and chunk, each warp recomputes P = exp2(s2 -
// lse) for its 16 rows, dP = dO V^T, Di = rowsum(P * dP) (= <o_c, dO>, which is also this
// row's share of dweights), and
//   dS = w * P * (dP - Di);   dQ += dS K (registers, across chunks);
// P (times w) and dS go to shared memory, then each warp computes the rows of
//   dV = (wP)^T dO,  dK = dS^T Q
// for its own keys. scale multiplies dQ and dK at the end. When a kv head has more than
// 64 query rows (GQA with long Q), dK/dV accumulate across passes in an fp32 scratch
// owned by the CTA (no atomics: deterministic). Design: docs/kernels/gca.md.
#include "gca.cuh"

namespace lcm {
namespace gca {

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

template <int D, int KT> size_t bwd_smem() {
  return size_t(2 * kRows * D + 4 * KT * D + 2 * kRows * KT) * 2 + kWarps * 4;
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

// The path's kernel, falling back (kPathTma and kPathTmaQs -> kPathWgmma -> kPathMma) where
// the shape or the layouts do not take it.
template <int D, int KT, bool MP>
cudaError_t launch_bwd(const BwdParams& p, int path, cudaStream_t s) {
  constexpr bool kWg = D == 64 && KT == 64;
  const bool wg = kWg && path >= kPathWgmma;
  BwdMaps maps{};
  const bool tma = wg && path >= kPathTma && bwd_maps(p, &maps);
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

template <int D, int KT> cudaError_t launch_bwd_d(const BwdParams& p, int path, cudaStream_t s) {
  return p.G * p.Q > kRows ? launch_bwd<D, KT, true>(p, path, s)
                           : launch_bwd<D, KT, false>(p, path, s);
}

}  // namespace gca
}  // namespace lcm

extern "C" {

// Largest K_CTX the backward supports (the forward takes any).
int lcm_gca_max_kctx_bwd() { return 128; }

// path: an AttnPath (attn_path.h).
int lcm_gca_bwd_launch(const void* q, const void* k, const void* v, const float* w,
                       const void* dout, const float* lse, void* dq, void* dk, void* dv,
                       float* dw_partial, float* scratch, const int64_t* strides, int B, int Hq,
                       int Hkv, int Q, int K, int KCTX, int D, float scale, int path,
                       cudaStream_t s) {
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
  set_strides(&p, strides);
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.G = Hq / Hkv, p.Q = Q, p.K = K, p.KCTX = KCTX;
  p.scale = scale;
  p.scale_log2 = scale * lcm::kLog2e;
  if (KCTX < 1 || KCTX > 128) return cudaErrorInvalidValue;
  if (D == 64)
    return KCTX <= 64 ? launch_bwd_d<64, 64>(p, path, s) : launch_bwd_d<64, 128>(p, path, s);
  if (D == 128)
    return KCTX <= 64 ? launch_bwd_d<128, 64>(p, path, s) : launch_bwd_d<128, 128>(p, path, s);
  return cudaErrorInvalidValue;
}

}  // extern "C"
