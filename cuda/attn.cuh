// Device code shared by the attention kernels (swa_*.cu, gca_*.cu, hsa_*.cu): the path
// enum, base-2 constants, small copies and reductions, the launch attribute, and the
// mma.sync products of a warp's 16 rows against a 64-row tile (Q K^T and P V fragments).
// The wgmma products are in wgmma.cuh, the TMA loads in tma.cuh, the m16n8k16 building
// blocks in mma.cuh.
#pragma once
#include "attn_path.h"
#include "common.cuh"
#include "mma.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace lcm {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kKeyTile = 64;  // keys per tile of the mma.sync products below

// 4-byte async copy, zero-filled when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Lets `kernel` take `smem` bytes of dynamic shared memory (past the default 48 KB).
template <typename K> cudaError_t prepare(K kernel, size_t smem) {
  if (smem > 48 * 1024)
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem));
  return cudaSuccess;
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
  constexpr int KK = D / 16, NP = kKeyTile / 16;
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
  constexpr int KK = kKeyTile / 16, DP = D / 16;
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

}  // namespace lcm
