// Causal sliding-window attention (optionally with ALiBi) and bidirectional attention:
// what the forward (swa_fwd.cu) and the backward (swa_bwd.cu) share. bf16 in, fp32
// accumulation, tensor cores, FlashAttention-2 style; the path (attn_path.h) picks the
// products and the loads: at head dim 64 on sm_90a warpgroup MMAs (wgmma.cuh; the CTA's 4
// warps are one warpgroup) fed by TMA (tma.cuh) or cp.async, otherwise mma.sync m16n8k16
// with ldmatrix and cp.async loads, into swizzled shared tiles either way.
//
//   causal:    query t sees keys t - window ..= t; score = scale * q.k - m_h * (t - s)
//   otherwise: query t sees every key (bidirectional, no ALiBi)
//   o = softmax(score) v;  lse[b,h,t] = log2 of the softmax denominator of the base-2
//   scores s2 = log2(e) * score, saved for the backward.
// Reference: src/ops/swa.rs (sliding_window_attention_reference,
// bidirectional_attention_reference). Tests: tests/ops_swa_cuda.rs. Design, and the
// variants measured slower: docs/kernels/swa.md.
//
// Layout: q (B, Hq, T, D), k/v (B, Hkv, T, D), GQA (query head h reads kv head h / G).
// Tiles of 64 query rows (4 warps x 16 rows) and 64 keys; a query tile visits only the key
// tiles of its band (at most ceil(window / 64) + 1 of them), and only tiles that cross
// the band's edges (or T) evaluate the mask.
#pragma once
#include "attn.cuh"

namespace lcm {
namespace swa {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 64;  // query rows and keys per tile
static_assert(kTile == kKeyTile, "the shared mma.sync products take 64-key tiles");

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
// Grid (tiles along T, (b, head) pairs), sliced into launches of at most 65535 in y.
template <typename K, typename... Extra>
inline cudaError_t launch_sliced(K kernel, Params p, int pairs, size_t smem, cudaStream_t s,
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

// The k and v descriptors of p's tensors, false when TMA does not take their layout.
inline bool kv_maps(const Params& p, KvMaps* m) {
  const int64_t dims[4] = {64, p.T, p.Hkv, p.B};
  const int64_t sk[3] = {p.skt, p.skh, p.skb}, sv[3] = {p.svt, p.svh, p.svb};
  return encode_rows_map(&m->k, p.k, 4, dims, sk, kTile) &&
         encode_rows_map(&m->v, p.v, 4, dims, sv, kTile);
}

inline Params make_params(const void* q, const void* k, const void* v, const float* slopes,
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
