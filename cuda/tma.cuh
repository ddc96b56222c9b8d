// Hopper's tensor memory accelerator (TMA) and transaction barriers, for the wgmma kernels
// at head dim 64: one thread asks the TMA unit for a whole 64-row tile, which lands in
// shared memory already in the 128-byte swizzle the wgmma descriptors expect (wgmma.cuh),
// and the consumers wait on an mbarrier that completes when the tile's bytes have arrived.
// Why: in the cp.async forwards every thread computes the addresses and predicates of its
// 16-byte copies, ~100 of the ~440 instructions of a key tile in the SASS of the SWA
// forward, on the critical path of a latency-bound loop.
//
// Out-of-range rows (past T, past the last chunk) arrive as zeros, as cp.async's zero fill
// did; the transaction count is always the full box.
#pragma once
#include <cuda.h>  // CUtensorMap and its enums (types only: the encoder is looked up at run time)
#include <cuda_runtime.h>
#include <cstdint>

#include "mma.cuh"
#include "wgmma.cuh"

namespace lcm {

// --- device side ---------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
#if LCM_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals)
               : "memory");
#endif
}

// Makes the initialised barriers visible to the TMA unit (the async proxy); the CTA
// synchronises after it.
__device__ __forceinline__ void mbar_fence_init() {
#if LCM_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival that also announces `bytes` more to come from the TMA unit.
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
#if LCM_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
#endif
}

// A plain arrival (release: this thread's earlier reads of the stage are done).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if LCM_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#endif
}

// Waits until the barrier's phase `parity` (0, 1, 0, ... for its 1st, 2nd, 3rd use) is over.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if LCM_WGMMA
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

// The box of `map` at coordinates (c0 innermost .. c3) into shared memory at dst (1024-byte
// aligned for the 128-byte swizzle), completing `bytes` of the barrier's transaction.
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2, int c3) {
#if LCM_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory");
#else
  __trap();
#endif
}

// The box of a 2-D map at (c0, c1).
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1) {
#if LCM_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
#else
  __trap();
#endif
}

// The same for a 5-D box (c0 innermost .. c4).
__device__ __forceinline__ void tma_load_5d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2, int c3, int c4) {
#if LCM_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4),
      "r"(smem_u32(bar))
      : "memory");
#else
  __trap();
#endif
}

// A ring of S stages that thread 0 fills by TMA, item i into stage i % S (`fill(i)` issues
// item i's loads and their expect_tx on full[i % S]), consumed in order by the whole CTA.
// Start: the barriers initialised (the CTA synchronises) and the first S - 1 items asked
// for.
template <int S, typename Fill>
__device__ __forceinline__ void tma_ring_start(uint64_t* full, int items, Fill fill) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < S; ++i) mbar_init(&full[i], 1);
    mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < S - 1; ++i)
      if (i < items) fill(i);
  }
}

// The top of item's iteration: every thread is done with the stage item - 1 used (a CTA
// barrier, faster here than per-stage "empty" barriers: docs/kernels/swa.md), thread 0
// refills it with item + S - 1, and all wait until item's stage has landed.
template <int S, typename Fill>
__device__ __forceinline__ void tma_ring_advance(uint64_t* full, int item, int items, Fill fill) {
  __syncthreads();
  if (threadIdx.x == 0 && item + S - 1 < items) fill(item + S - 1);
  mbar_wait(&full[item % S], (item / S) & 1);
}

// --- host side -----------------------------------------------------------------------

// cuTensorMapEncodeTiled, looked up through the runtime so that nothing links libcuda;
// null when the driver has none.
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
inline EncodeTiledFn encode_tiled_fn() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      return EncodeTiledFn(nullptr);
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// A bf16 tensor of `rank` dimensions (innermost first, dims[0] = 64 contiguous columns;
// `dims` and the element `strides` of dimensions 1..rank-1) read in boxes of `box`
// elements per dimension (box[0] = 64), 128-byte swizzled: a box's rows of 64 columns
// land as one swizzled tile. Returns false when the driver has no TMA or the layout is not
// one it takes (a stride not a multiple of 16 bytes, an unaligned base): the caller then
// keeps its cp.async kernel (or gathers on the host).
inline bool encode_box_map(CUtensorMap* map, const void* base, int rank, const int64_t* dims,
                           const int64_t* strides, const int* box) {
  const EncodeTiledFn encode = encode_tiled_fn();
  if (encode == nullptr || rank < 2 || rank > 5 || dims[0] != 64 || box[0] != 64 ||
      reinterpret_cast<uintptr_t>(base) % 16 != 0)
    return false;
  cuuint64_t gdim[5], gstride[4];
  cuuint32_t boxd[5], elem[5];
  for (int i = 0; i < rank; ++i) {
    gdim[i] = cuuint64_t(dims[i]);
    boxd[i] = cuuint32_t(box[i]);
    elem[i] = 1;
  }
  for (int i = 1; i < rank; ++i) {
    // A dimension of size 1 is never stepped: any legal stride will do for it.
    const cuuint64_t s = dims[i] == 1 ? 16 : cuuint64_t(strides[i - 1]) * 2;
    if (s % 16 != 0 || s >= (cuuint64_t(1) << 40)) return false;
    gstride[i - 1] = s;
  }
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, cuuint32_t(rank), const_cast<void*>(base),
                gdim, gstride, boxd, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The common case: boxes of `box_rows` rows of dimension 1 (one tile of a (.., rows, 64)
// tensor).
inline bool encode_rows_map(CUtensorMap* map, const void* base, int rank, const int64_t* dims,
                            const int64_t* strides, int box_rows) {
  const int box[5] = {64, box_rows, 1, 1, 1};
  return encode_box_map(map, base, rank, dims, strides, box);
}

// A 2-D fp32 tensor (`rows` vectors of `len` contiguous floats) read in boxes of `box`
// floats of one vector, unswizzled (per-row statistics such as lse). False as above (and
// when a vector's bytes are not a multiple of 16).
inline bool encode_vec_map(CUtensorMap* map, const float* base, int64_t rows, int64_t len,
                           int box) {
  const EncodeTiledFn encode = encode_tiled_fn();
  if (encode == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0 || (len * 4) % 16 != 0)
    return false;
  const cuuint64_t gdim[2] = {cuuint64_t(len), cuuint64_t(rows)};
  const cuuint64_t gstride[1] = {cuuint64_t(len) * 4};
  const cuuint32_t boxd[2] = {cuuint32_t(box), 1}, elem[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, const_cast<float*>(base), gdim, gstride,
                boxd, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace lcm
