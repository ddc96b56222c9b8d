// Hierarchical Sparse Attention (HSA): what the forward (hsa_fwd.cu) and the backward
// (hsa_bwd.cu) share. bf16 in, fp32 accumulation.
//
// Every token attends, per kv head, to K chunks of S keys gathered by index from the whole
// memory, and sums the per-chunk outputs with its retrieval weights:
//   o[n,l,h*G+g] = sum_k w[n,l,h,k] * softmax_s(scale * q . k_{idx,s}) v_{idx,s}
// An index < 0 (or >= C) is an empty slot: no output, no gradient, dweight 0. A weight of 0
// contributes nothing to o but its slot still gets its dweight (as in the reference op).
// softmax_one adds exp(0) to every per-chunk denominator. Duplicated indices count once
// per slot, each with its own weight.
// Reference: src/ops/hsa.rs (hsa_reference). Tests: tests/ops_hsa_cuda.rs. Design, and the
// variants measured slower: docs/kernels/hsa.md.
//
// Forward (hsa_fwd.cu), by path (attn_path.h): kHsaMma for G <= 16 and S <= 64 (the
// model's shapes), on tensor cores, one warp per (token, kv head), see hsa_fwd_mma_kernel.
// kHsaSimt for any shape (G up to 32): one CTA of 128 threads per (batch n, token l, kv head h); the
// G query heads of the kv head are the rows of one G x D tile (the GQA group packed into
// the rows, so each gathered chunk is read once per token and kv head). The chunk's keys
// and values are gathered into shared memory (fp32, rows padded to D+1 floats so that
// column walks are bank-conflict free) and the G x S scores, the softmax and the products
// run on CUDA cores in fp32.
//
// lse[n,l,hq,k] = natural-log per-slot softmax denominator (with the max folded in), saved
// for the backward; P = exp(scale * q.k - lse).
//
// Backward (hsa_bwd.cu; any supported shape; tensor cores, heads in groups of 16 MMA rows): per valid
// slot, P recomputed from lse, dP = dO V^T, Di = rowsum(P*dP), dweight = sum_g Di[g],
// dS = w * P * (dP - Di), dq += scale * dS K (one kernel per token), and per memory chunk
// dk += scale * dS^T Q, dv += (wP)^T dO over the chunk's inverse index (one CTA per chunk,
#pragma once
#include "attn.cuh"

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

constexpr int kTile = 64;  // keys per chunk tile

// The gather ring of the forward and of the backward's dq kernel holds *units*: one
// chunk's K or V tile (kTile x D bf16, 8 KB at D 64), not a (K, V) pair. A slot's S = Q K^T
// needs only K and its P V only V, so a unit's stage is free half a slot sooner, and a ring
// of NU units takes NU/2 pair-stages' shared memory: at NU = 2, 18 KB per warp instead of
// 34 KB for a ring of (K, V) pairs, so twice the warps per SM with as many bytes in
// flight per SM.
template <int D, int NU> __host__ __device__ constexpr int mma_warp_smem_elems() {
  return 16 * D + NU * kTile * D;  // Q + NU unit stages
}

// Units in the gather ring of the forward and of the dq kernel.
constexpr int kFwdUnits = 2, kDqUnits = 2;

}  // namespace hsa
}  // namespace lcm
