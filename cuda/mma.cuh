// Tensor-core building blocks shared by the attention kernels (attn.cuh): cp.async
// copies, ldmatrix loads, the bf16 m16n8k16 MMA with fp32 accumulation, bf16 packing and
// the XOR swizzle of shared-memory tiles. Needs sm_80 or later.
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

namespace lcm {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy, zero-filled when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// c += a(16x16, row) * b(16x8, col), bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The max and the sum over this thread's columns of each row half (e >> 1) of a warp's NF
// C fragments (NF a power of two), as balanced trees: the plain loops compile to chains of
// 2 * NF dependent FMNMX / FADD, on the SWA forward's critical path.
template <int NF> __device__ __forceinline__ void frag_row_max(const float (*s)[4], float* out) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float v[NF];
#pragma unroll
    for (int n = 0; n < NF; ++n) v[n] = fmaxf(s[n][2 * hh], s[n][2 * hh + 1]);
#pragma unroll
    for (int w = NF / 2; w > 0; w /= 2)
#pragma unroll
      for (int i = 0; i < w; ++i) v[i] = fmaxf(v[i], v[i + w]);
    out[hh] = v[0];
  }
}
template <int NF> __device__ __forceinline__ void frag_row_sum(const float (*s)[4], float* out) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float v[NF];
#pragma unroll
    for (int n = 0; n < NF; ++n) v[n] = s[n][2 * hh] + s[n][2 * hh + 1];
#pragma unroll
    for (int w = NF / 2; w > 0; w /= 2)
#pragma unroll
      for (int i = 0; i < w; ++i) v[i] += v[i + w];
    out[hh] = v[0];
  }
}

// Shared-memory tiles are row-major with COLS bf16 per row, 16-byte chunks XOR-swizzled by
// the row's low 3 bits so that ldmatrix on 8 rows of one column hits 8 different banks.
template <int COLS> __device__ __forceinline__ int sw(int row, int col) {
  return row * COLS + ((((col >> 3) ^ row) & 7) | ((col >> 3) & ~7)) * 8 + (col & 7);
}

// Loads `rows` rows (ROWS in the tile, the rest zero-filled) of D bf16 each into a swizzled
// tile; row r starts at src(r). All THREADS threads of the CTA take part.
// THREADS must be the CTA's size. When THREADS divides the tile's chunks the loop has a
// compile-time trip count (a runtime start of threadIdx.x made nvcc emit a remainder loop
// and branches around every copy: seen in the SASS of the SWA forward).
template <int ROWS, int D, int THREADS, typename F>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, int rows, F src) {
  constexpr int kChunks = D / 8, kN = ROWS * kChunks;
  auto copy = [&](int i) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool valid = r < rows;
    // Zero-filled rows still name a valid global address (row 0; rows >= 1 always).
    cp_async16(dst + sw<D>(r, c), src(valid ? r : 0) + c, valid);
  };
  if constexpr (kN % THREADS == 0) {
#pragma unroll
    for (int j = 0; j < kN / THREADS; ++j) copy(int(threadIdx.x) + j * THREADS);
  } else {
#pragma unroll
    for (int i = threadIdx.x; i < kN; i += THREADS) copy(i);
  }
}

// The top of item's iteration in an S-stage ring of cp.async commit groups (one per item,
// S - 1 in flight ahead), consumed in order by the whole CTA: item's copies complete, then
// a CTA barrier (every thread is done with the stage item - 1 used), then `fill(item + S - 1)`
// refills it and commits. ASYNC_PROXY: the tiles are read by wgmma (the async proxy), so
// the copies, made through the generic one, are fenced before them.
template <int S, bool ASYNC_PROXY, typename Fill>
__device__ __forceinline__ void cp_async_ring_advance(int item, int items, Fill fill) {
  cp_async_wait<S - 2>();
  if (ASYNC_PROXY) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  if (item + S - 1 < items) fill(item + S - 1);
  cp_async_commit();
}

// Stores a warp's 16 x D fp32 C-fragments (rows g scaled by mul[0], rows g + 8 by mul[1])
// as bf16 rows through the warp's 16-row slice of a swizzled shared tile, then with 16-byte
// coalesced global stores. Rows >= valid are not written. dst(r) gives the global row for
// the warp's row r.
template <int D, typename F>
__device__ __forceinline__ void store_rows(float (*acc)[4], const float* mul,
                                           __nv_bfloat16* tile, int valid, F dst) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int col = n * 8 + 2 * t;
    *reinterpret_cast<uint32_t*>(tile + sw<D>(g, col)) =
        pack_bf16(acc[n][0] * mul[0], acc[n][1] * mul[0]);
    *reinterpret_cast<uint32_t*>(tile + sw<D>(g + 8, col)) =
        pack_bf16(acc[n][2] * mul[1], acc[n][3] * mul[1]);
  }
  __syncwarp();
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    if (r < valid)
      *reinterpret_cast<uint4*>(dst(r) + c) = *reinterpret_cast<const uint4*>(tile + sw<D>(r, c));
  }
  __syncwarp();
}

}  // namespace lcm
