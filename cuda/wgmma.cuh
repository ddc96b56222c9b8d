// Hopper warpgroup MMA (wgmma, sm_90a) for the attention kernels at head dim 64. Every
// product of the SWA and GCA forwards and backwards is one of two forms over 64-row tiles:
//   C (64 x 64)  = A (64 x 64, registers) B^T   (B a 64 x 64 K-major tile: S = Q K^T),
//   C (64 x 64) += A (64 x 64, registers) B     (B a 64 x 64 N-major tile: O += P V),
// each four `wgmma.mma_async m64n64k16` issued by the CTA's one warpgroup (4 warps) in
// place of 64 mma.sync per warp and their ldmatrix loads: the SASS of the mma.sync
// forwards spends ~10 instructions per HMMA on addressing. dev/cuda/wgmma_probe.cu checks
// both forms against a CPU product, sweeping the descriptor's strides.
//
// Shared memory: the kernels place their K and V rings at the first 1024-byte boundary of
// their dynamic shared memory (`align1024`) and keep Q in registers.
//
// Layouts. The accumulators and the register A operand are the mma.sync m16n8k16 fragments
// of mma.cuh stacked per warp (warp w of the group holds rows 16w..16w+15), so the softmax
// code between the products is the one the mma.sync kernels run. The shared tiles are
// mma.cuh's `sw<64>` tiles: rows of 128 bytes with 16-byte chunks XOR-swizzled by row & 7,
// which is the hardware's 128-byte swizzle when the tile starts on a 1024-byte boundary
// (the swizzle is a function of address bits 4-9). K is "K-major" for S (d contiguous),
// V "MN-major" for O (d, the N of that product, contiguous: the transposed-B flag).
//
// Only compiled for sm_90a; elsewhere (the compute_80 PTX of the build) the bodies trap,
// and the bridges refuse a path that needs them on a device without them (attn_path.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>

#include "mma.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LCM_WGMMA 1
#else
#define LCM_WGMMA 0
#endif

namespace lcm {

// Shared-memory matrix descriptor of a 128-byte-swizzled tile of 64-element bf16 rows:
// start address and stride between 8-row groups (1024 bytes), both in 16-byte units; the
// leading-dimension offset is unused by swizzled layouts whose K (or N) fits in one row.
__device__ __forceinline__ uint64_t wgmma_desc(const void* tile) {
  const uint64_t addr = (smem_u32(tile) & 0x3FFFF) >> 4;
  return addr | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

// The same for a tile without swizzle: K-major core matrices of 8 rows x 16 bytes (128
// contiguous bytes each), `lbo` bytes apart along K and `sbo` bytes apart along the rows.
__device__ __forceinline__ uint64_t wgmma_desc_plain(const void* tile, uint32_t lbo,
                                                     uint32_t sbo) {
  const uint64_t addr = (smem_u32(tile) & 0x3FFFF) >> 4;
  return addr | (uint64_t(lbo >> 4) << 16) | (uint64_t(sbo >> 4) << 32);
}

__device__ __forceinline__ void wgmma_fence() {
#if LCM_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if LCM_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
#if LCM_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving reads or writes of accumulator registers across an
// async MMA's issue or wait (the asm statements above name no registers).
__device__ __forceinline__ void wgmma_fence_regs(float (*c)[4]) {
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(c[n][e])::"memory");
}

// An m64n64 fp32 accumulator as asm operands %0..%31 (this thread's 8 x 4 fragments), and
// the register list naming them.
#define LCM_WGMMA_ACC64(c)                                                                  \
  "+f"(c[0][0]), "+f"(c[0][1]), "+f"(c[0][2]), "+f"(c[0][3]), "+f"(c[1][0]), "+f"(c[1][1]), \
      "+f"(c[1][2]), "+f"(c[1][3]), "+f"(c[2][0]), "+f"(c[2][1]), "+f"(c[2][2]),            \
      "+f"(c[2][3]), "+f"(c[3][0]), "+f"(c[3][1]), "+f"(c[3][2]), "+f"(c[3][3]),            \
      "+f"(c[4][0]), "+f"(c[4][1]), "+f"(c[4][2]), "+f"(c[4][3]), "+f"(c[5][0]),            \
      "+f"(c[5][1]), "+f"(c[5][2]), "+f"(c[5][3]), "+f"(c[6][0]), "+f"(c[6][1]),            \
      "+f"(c[6][2]), "+f"(c[6][3]), "+f"(c[7][0]), "+f"(c[7][1]), "+f"(c[7][2]), "+f"(c[7][3])
#define LCM_WGMMA_ACC64_REGS                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// c (64 x 64 per warpgroup: this thread's 8 x 4 fragments) = (accumulate ? c : 0) +
// A (registers, 64 x 16) B (descriptor, 16 x 64; TRANS_B: N contiguous).
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16(float (*c)[4], const uint32_t* a, uint64_t desc,
                                                int accumulate) {
#if LCM_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      LCM_WGMMA_ACC64_REGS ", "
      "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
      : LCM_WGMMA_ACC64(c)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate), "n"(TRANS_B));
#else
  __trap();
#endif
}

// The same with A from shared memory too (descriptor, 64 x 16, K-major).
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (*c)[4], uint64_t adesc, uint64_t bdesc,
                                                   int accumulate) {
#if LCM_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      LCM_WGMMA_ACC64_REGS ", "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : LCM_WGMMA_ACC64(c)
      : "l"(adesc), "l"(bdesc), "r"(accumulate));
#else
  __trap();
#endif
}

// S = Q K^T for the warpgroup's 64 rows and the 64 rows of tile tK (D = 64; qf: the
// rows' A fragments, 4 k-steps; the backwards pass dO, K or V as A). Issues and commits;
// the caller waits.
__device__ __forceinline__ void wg_qk64(float (*s)[4], const uint32_t (*qf)[4],
                                        const __nv_bfloat16* tK) {
  const uint64_t d0 = wgmma_desc(tK);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)  // 16 d = 32 bytes further along each row
    wgmma_m64n64k16<0>(s, qf[kk], d0 + (kk * 32 >> 4), kk > 0);
  wgmma_commit();
}

// P (the warpgroup's 64 x 64 probabilities in C-fragment registers) rounded to bf16 as
// the register A operand of the four k-steps of P V.
__device__ __forceinline__ void pack_p64(uint32_t (*a)[4], const float (*pf)[4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    a[kk][0] = pack_bf16(pf[2 * kk][0], pf[2 * kk][1]);
    a[kk][1] = pack_bf16(pf[2 * kk][2], pf[2 * kk][3]);
    a[kk][2] = pack_bf16(pf[2 * kk + 1][0], pf[2 * kk + 1][1]);
    a[kk][3] = pack_bf16(pf[2 * kk + 1][2], pf[2 * kk + 1][3]);
  }
}

// acc += P V: P packed by pack_p64 (or any A fragments: dS, P^T), V the 64 x 64 tile tV
// read N-major (K, Q or dO in the backwards). Issues and commits; the caller waits.
__device__ __forceinline__ void wg_pv64(float (*acc)[4], const uint32_t (*a)[4],
                                        const __nv_bfloat16* tV) {
  const uint64_t d0 = wgmma_desc(tV);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)  // 16 keys = 16 rows of 128 bytes further down
    wgmma_m64n64k16<1>(acc, a[kk], d0 + (kk * 16 * 128 >> 4), 1);
  wgmma_commit();
}

// The two forms waited for at once (what a kernel does between two elementwise passes over
// the accumulators): issue, wait, and keep the compiler's reads of the results after the
// wait. wg_pv64_wait rounds P to bf16 itself, or takes A fragments already packed.
__device__ __forceinline__ void wg_qk64_wait(float (*s)[4], const uint32_t (*a)[4],
                                             const __nv_bfloat16* tB) {
  wg_qk64(s, a, tB);
  wgmma_wait<0>();
  wgmma_fence_regs(s);
}
// S = A B^T with A a 64 x 64 tile in shared memory too (the forwards' Q tile): issued and
// committed, or waited.
__device__ __forceinline__ void wg_qk64_ss(float (*s)[4], const __nv_bfloat16* tA,
                                           const __nv_bfloat16* tB) {
  const uint64_t a0 = wgmma_desc(tA), b0 = wgmma_desc(tB);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)  // 16 d = 32 bytes further along each row of both
    wgmma_m64n64k16_ss(s, a0 + (kk * 32 >> 4), b0 + (kk * 32 >> 4), kk > 0);
  wgmma_commit();
}
__device__ __forceinline__ void wg_qk64_ss_wait(float (*s)[4], const __nv_bfloat16* tA,
                                                const __nv_bfloat16* tB) {
  wg_qk64_ss(s, tA, tB);
  wgmma_wait<0>();
  wgmma_fence_regs(s);
}
// The same plus one more k-step, A from registers (`ax`, one k-step's fragments) and B
// from descriptor `bx`: a rank-16 term added to S by the tensor cores (the SWA forward's
// ALiBi bias, a column ramp).
__device__ __forceinline__ void wg_qk64_ss_plus_wait(float (*s)[4], const __nv_bfloat16* tA,
                                                     const __nv_bfloat16* tB, const uint32_t* ax,
                                                     uint64_t bx) {
  const uint64_t a0 = wgmma_desc(tA), b0 = wgmma_desc(tB);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    wgmma_m64n64k16_ss(s, a0 + (kk * 32 >> 4), b0 + (kk * 32 >> 4), kk > 0);
  wgmma_m64n64k16<0>(s, ax, bx, 1);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_regs(s);
}
__device__ __forceinline__ void wg_pv64_wait(float (*acc)[4], const uint32_t (*a)[4],
                                             const __nv_bfloat16* tB) {
  wgmma_fence_regs(acc);
  wg_pv64(acc, a, tB);
  wgmma_wait<0>();
  wgmma_fence_regs(acc);
}
__device__ __forceinline__ void wg_pv64_wait(float (*acc)[4], const float (*pf)[4],
                                             const __nv_bfloat16* tB) {
  uint32_t a[4][4];
  pack_p64(a, pf);
  wg_pv64_wait(acc, a, tB);
}

// The first 1024-byte boundary at or after p, where the swizzled tiles must start
// (launchers request 1 KB of slack). The address is read through asm: given an __align__
// on the extern array, the compiler folds any test of it to "aligned", and sm_90 does not
// promise that alignment for dynamic shared memory.
__device__ __forceinline__ unsigned char* align1024(unsigned char* p) {
  uint64_t a;
  asm volatile("cvta.to.shared.u64 %0, %1;\n" : "=l"(a) : "l"(p));
  return p + ((1024u - (uint32_t(a) & 1023u)) & 1023u);
}

// The A fragments (k-steps of 16) of a warp's rows g and g + 8 read straight from global
// memory (4-byte loads; the rows are 16-byte aligned): the wgmma kernels keep Q in
// registers only, so that no shared tile is spent on it. A null row reads as zeros.
template <int D>
__device__ __forceinline__ void load_afrag_global(uint32_t (*af)[4], const __nv_bfloat16* lo,
                                                  const __nv_bfloat16* hi) {
  const int t = threadIdx.x & 3;
  auto ld = [&](const __nv_bfloat16* r, int c) {
    return r ? *reinterpret_cast<const uint32_t*>(r + c) : 0u;
  };
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    af[kk][0] = ld(lo, kk * 16 + 2 * t);
    af[kk][1] = ld(hi, kk * 16 + 2 * t);
    af[kk][2] = ld(lo, kk * 16 + 8 + 2 * t);
    af[kk][3] = ld(hi, kk * 16 + 8 + 2 * t);
  }
}

}  // namespace lcm
