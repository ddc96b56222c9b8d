// Grouped Cross Attention (GCA): what the forward (gca_fwd.cu, training and inference)
// and the backward (gca_bwd.cu) share. bf16 in, fp32 accumulation, tensor cores; the path
// (attn_path.h) picks the products and the loads: mma.sync m16n8k16 with ldmatrix and
// cp.async into swizzled shared tiles, or at head dim 64 with one key tile per chunk on
// sm_90a warpgroup MMAs (wgmma.cuh), fed by TMA (tma.cuh) where K_CTX is 64. The TMA
// forward also reads chunks straight from a chunk memory by index (FwdParams::gather;
// ops::gca_gathered), and on kPathTmaQs keeps Q in shared memory where each pass is one
// head's (QS).
//
//   o[b,h,i]   = sum_c w[b,c] * o_c[b,h,i],   o_c = softmax_j(scale * q_i . k_{c,j}) v_{c,j}
//   lse[b,h,c,i] = log2 of the per-chunk softmax denominator of the scaled logits in base 2
//                  (scores s2 = scale*log2(e) * q.k), saved for the backward.
// softmax_one adds exp(0) to every per-chunk denominator (a virtual zero logit, zero value).
// Reference: src/ops/gca.rs (gca_reference). Tests: tests/ops_gca_cuda.rs. Design, and the
// variants measured slower: docs/kernels/gca.md.
//
// Layout. One CTA of 4 warps owns one (batch b, kv head) pair and a "pass" of 64 query
// rows; the rows of a pass are the G*Q queries of the kv head's G query heads laid end to
// end (row r = head_in_group * Q + query), so GQA packs the group into the MMA rows and
// every kv tile is read once per pass. Each warp owns 16 rows.
#pragma once
#include "attn.cuh"

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

// The stride arguments of the launchers: q (b, h, q), k (b, h, c, key), v (b, h, c, key).
template <typename P> void set_strides(P* p, const int64_t* st) {
  p->sqb = st[0], p->sqh = st[1], p->sqq = st[2];
  p->skb = st[3], p->skh = st[4], p->skc = st[5], p->skk = st[6];
  p->svb = st[7], p->svh = st[8], p->svc = st[9], p->svk = st[10];
}

}  // namespace gca
}  // namespace lcm
