// Lab code (not built by build.rs): a standalone check of the two wgmma product forms of
// cuda/wgmma.cuh against a CPU product, with the descriptor's stride fields (LBO, SBO, in
// 16-byte units) swept, to tell a descriptor fault from a kernel fault. The rows with SBO 64
// (1024 bytes between 8-row groups) must say OK, whatever the LBO (unused by these
// layouts), and no other. Build here, run on the GPU machine:
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I cuda \
//     dev/cuda/wgmma_probe.cu -o .device/wgmma-probe -L$CUDA_LIB -cudart static
//
// ($CUDA_LIB: .venv/lib/python3.11/site-packages/nvidia/cu13/lib)
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include "wgmma.cuh"
using namespace lcm;

// mode 0: S = Q K^T (qk); mode 1: O = P V (pv). A: 64x64 row-major bf16, B: 64x64 [row][d].
// sB is 4 tiles long so that a wrong stride reads garbage instead of faulting.
__global__ void probe(const __nv_bfloat16* A, const __nv_bfloat16* B, float* out, int mode, int lbo, int sbo) {
  __shared__ __align__(1024) __nv_bfloat16 sA[64 * 64];
  __shared__ __align__(1024) __nv_bfloat16 sB[64 * 64 * 4];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  for (int i = tid; i < 64 * 64; i += 128) {
    const int r = i / 64, c = i % 64;
    sA[sw<64>(r, c)] = A[i];
    sB[sw<64>(r, c)] = B[i];
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  float c[8][4];
  if (mode == 0) {
    uint32_t qf[4][4];
    for (int kk = 0; kk < 4; ++kk) ldsm_x4(qf[kk], sA + sw<64>(warp * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8));
    uint64_t d0 = wgmma_desc(sB);
    d0 = (d0 & ~(uint64_t(0x3FFF) << 16) & ~(uint64_t(0x3FFF) << 32)) | (uint64_t(lbo) << 16) | (uint64_t(sbo) << 32);
    wgmma_fence();
    for (int kk = 0; kk < 4; ++kk) wgmma_m64n64k16<0>(c, qf[kk], d0 + (kk * 32 >> 4), kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_regs(c);
  } else {
    // P: fragments of A in C layout
    float pf[8][4];
    for (int n = 0; n < 8; ++n)
      for (int e = 0; e < 4; ++e) {
        const int r = warp * 16 + g + 8 * (e >> 1), col = n * 8 + 2 * t + (e & 1);
        pf[n][e] = __bfloat162float(A[r * 64 + col]);
      }
    for (int n = 0; n < 8; ++n) for (int e = 0; e < 4; ++e) c[n][e] = 0.f;
    uint32_t a[4][4];
    for (int kk = 0; kk < 4; ++kk) {
      a[kk][0] = pack_bf16(pf[2 * kk][0], pf[2 * kk][1]);
      a[kk][1] = pack_bf16(pf[2 * kk][2], pf[2 * kk][3]);
      a[kk][2] = pack_bf16(pf[2 * kk + 1][0], pf[2 * kk + 1][1]);
      a[kk][3] = pack_bf16(pf[2 * kk + 1][2], pf[2 * kk + 1][3]);
    }
    uint64_t d0 = wgmma_desc(sB);
    d0 = (d0 & ~(uint64_t(0x3FFF) << 16) & ~(uint64_t(0x3FFF) << 32)) | (uint64_t(lbo) << 16) | (uint64_t(sbo) << 32);
    wgmma_fence_regs(c);
    wgmma_fence();
    for (int kk = 0; kk < 4; ++kk) wgmma_m64n64k16<1>(c, a[kk], d0 + (kk * 16 * 128 >> 4), 1);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_regs(c);
  }
  for (int n = 0; n < 8; ++n)
    for (int e = 0; e < 4; ++e) {
      const int r = warp * 16 + g + 8 * (e >> 1), col = n * 8 + 2 * t + (e & 1);
      out[r * 64 + col] = c[n][e];
    }
}

int main() {
  std::vector<__nv_bfloat16> A(4096), B(4096);
  std::vector<float> fa(4096), fb(4096);
  srand(1);
  for (int i = 0; i < 4096; ++i) {
    fa[i] = __bfloat162float(__float2bfloat16((rand() % 2001 - 1000) / 1000.f));
    fb[i] = __bfloat162float(__float2bfloat16((rand() % 2001 - 1000) / 1000.f));
    A[i] = __float2bfloat16(fa[i]);
    B[i] = __float2bfloat16(fb[i]);
  }
  __nv_bfloat16 *dA, *dB; float* dO;
  cudaMalloc(&dA, 8192); cudaMalloc(&dB, 8192); cudaMalloc(&dO, 16384);
  cudaMemcpy(dA, A.data(), 8192, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), 8192, cudaMemcpyHostToDevice);
  std::vector<float> o(4096);
  int lbos[] = {1, 8, 64, 128, 256}, sbos[] = {64, 8, 128, 1, 256};
  for (int mode = 1; mode >= 0; --mode)
    for (int lbo : lbos)
      for (int sbo : sbos) {
        cudaMemset(dO, 0, 16384);
        probe<<<1, 128>>>(dA, dB, dO, mode, lbo, sbo);
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) { printf("mode %d lbo %d sbo %d: %s\n", mode, lbo, sbo, cudaGetErrorString(e)); return 1; }
        cudaMemcpy(o.data(), dO, 16384, cudaMemcpyDeviceToHost);
        double maxe = 0, maxr = 0;
        for (int r = 0; r < 64; ++r)
          for (int cc = 0; cc < 64; ++cc) {
            double ref = 0;
            for (int k = 0; k < 64; ++k)
              ref += mode == 0 ? double(fa[r * 64 + k]) * fb[cc * 64 + k] : double(fa[r * 64 + k]) * fb[k * 64 + cc];
            maxe = fmax(maxe, fabs(ref - o[r * 64 + cc]));
            maxr = fmax(maxr, fabs(ref));
          }
        printf("mode %s lbo %3d sbo %3d: max err %.3e (max |ref| %.2f)%s\n", mode ? "pv" : "qk", lbo, sbo, maxe, maxr, maxe < 1e-2 ? "  OK" : "");
      }
  return 0;
}
