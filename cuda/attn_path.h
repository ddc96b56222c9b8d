// The kernel paths of the attention ops: an explicit argument of every launcher and bridge
// entry point, chosen by the pure functions of src/ops/path.rs (the problem and the device)
// and overridden by the tests, which run every path in one process. Plain C++ (the bridges
// include it too).
#pragma once

namespace lcm {

// SWA and GCA. Each path falls back to the one below it where the problem does not take
// it (head dim 128, K_CTX > 64, a layout TMA cannot describe), so any path is safe to ask
// for on a Hopper GPU; every path but kPathMma needs one (sm_90a).
enum AttnPath : int {
  kPathMma = 0,    // mma.sync m16n8k16 with ldmatrix and cp.async loads (sm_80 and later)
  kPathWgmma = 1,  // warpgroup MMAs (wgmma.cuh) fed by cp.async
  kPathTma = 2,    // warpgroup MMAs fed by TMA (tma.cuh), Q in registers
  kPathTmaQs = 3,  // the same with the forward's Q tile in shared memory (and, in SWA with
                   // ALiBi, the bias's column term as an MMA step): the default on Hopper
};
constexpr int kAttnPaths = 4;

// HSA's forward: the tensor-core kernel (G <= 16, S <= 64, scale > 0; the default where it
// applies) or the CUDA-core one (any shape). Its backward has one path.
enum HsaPath : int { kHsaSimt = 0, kHsaMma = 1 };
constexpr int kHsaPaths = 2;

}  // namespace lcm
