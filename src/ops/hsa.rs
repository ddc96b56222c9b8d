//! Hierarchical Sparse Attention (HSA, seed-report 3.2 and 4.2): every token attends to its
//! own K chunks, gathered by index from the whole chunk memory, and sums the per-chunk
//! outputs with its retrieval weights (the same two stages as GCA, per token).
//!
//! Shapes: `q (N, L, Hq, D)`; `k`/`v (N, L_kv, H, D)` with `L_kv = C * chunk_size` (the
//! memory, not pre-gathered); `weights (N, L, H, K)` and `indices (N, L, H, K)` (int64,
//! chunk numbers). A slot with index `-1` or weight 0 contributes nothing. GQA: query head
//! `i` reads kv head `i / (Hq / H)`. `softmax_one` adds `exp(0)` to each per-chunk
//! softmax denominator (`sm_n = 1`). Output `(N, L, Hq, D)` in `q`'s dtype.
//!
//! The reference materialises the gathered keys `(N, H, L, K, S, D)`: fine for tests and
//! short sequences; the kernel gathers inside. Tests: `tests/ops_hsa.rs` (reference),
//! `tests/ops_hsa_cuda.rs` (kernel). Kernel: `cuda/hsa_fwd.cu`, `cuda/hsa_bwd.cu` (bf16, head dim 64/128, chunk
//! size up to 64, K up to 32, G up to 32), through the autograd Function of `cuda/hsa.cpp`.

use tch::{Kind, Tensor};

#[cfg(lcm_cuda)]
use super::path::{hsa_path, HsaPath};
#[cfg(lcm_cuda)]
use crate::cuda::ffi::safe::{lcm_hsa, lcm_hsa_backward_raw, lcm_hsa_forward_raw};
#[cfg(lcm_cuda)]
use crate::error::Result;

/// Largest chunk size the kernel takes.
pub const KERNEL_MAX_CHUNK: i64 = 64;
/// Largest number of slots per token the kernel takes.
pub const KERNEL_MAX_K: i64 = 32;
/// Largest GQA group (query heads per kv head) the kernel takes.
pub const KERNEL_MAX_G: i64 = 32;

use super::gca::softmax_last;

/// Gathered HSA as plain tensor ops (autograd on any device).
#[allow(clippy::too_many_arguments)]
pub fn hsa_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    indices: &Tensor,
    chunk_size: i64,
    scale: f64,
    softmax_one: bool,
) -> Tensor {
    let (qs, ks, ws) = (q.size(), k.size(), weights.size());
    assert!(
        qs.len() == 4 && ks.len() == 4 && v.size() == ks && ws.len() == 4,
        "hsa: q {qs:?} (N, L, Hq, D), k/v {ks:?} (N, L_kv, H, D), weights {ws:?} (N, L, H, K)"
    );
    let (n, l, hq, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (lkv, h, nk) = (ks[1], ks[2], ws[3]);
    assert!(
        ks[0] == n && ks[3] == d && hq % h == 0 && lkv % chunk_size == 0,
        "hsa: q {qs:?} and k {ks:?} disagree, or L_kv is not a multiple of {chunk_size}"
    );
    assert!(
        ws == [n, l, h, nk] && indices.size() == ws,
        "hsa: weights {ws:?} and indices {:?} must be (N, L, H, K) = ({n}, {l}, {h}, K)",
        indices.size()
    );
    let g = hq / h;
    let c = lkv / chunk_size;
    let dev = q.device();

    // Memory rows (N*H*C, S, D); slot (n, h, idx) is row (n*H + h)*C + idx.
    let rows = |x: &Tensor| {
        x.reshape([n, c, chunk_size, h, d])
            .permute([0, 3, 1, 2, 4])
            .reshape([n * h * c, chunk_size, d])
    };
    let idx = indices.permute([0, 2, 1, 3]); // (N, H, L, K)
    let valid = idx.ge(0);
    let base = (Tensor::arange(n * h, (Kind::Int64, dev)) * c).view([n, h, 1, 1]);
    let flat = (idx.clamp_min(0) + base).reshape([-1]);
    let gather = |x: &Tensor| {
        rows(x)
            .index_select(0, &flat)
            .reshape([n, h, l, nk, chunk_size, d])
    };
    let (kg, vg) = (gather(k), gather(v));

    // Queries of one kv head's group are the rows of one matrix per (token, slot).
    let qg = q
        .reshape([n, l, h, g, d])
        .permute([0, 2, 1, 3, 4])
        .unsqueeze(3); // (N, H, L, 1, G, D)
    let scores = qg.matmul(&kg.transpose(-1, -2)) * scale; // (N, H, L, K, G, S)
    let p = softmax_last(&scores, softmax_one).to_kind(v.kind());
    let per_slot = p.matmul(&vg).to_kind(Kind::Float); // (N, H, L, K, G, D)
    let w = weights
        .permute([0, 2, 1, 3])
        .to_kind(Kind::Float)
        .masked_fill(&valid.logical_not(), 0.0)
        .unsqueeze(-1)
        .unsqueeze(-1);
    (per_slot * w)
        .sum_dim_intlist([3].as_slice(), false, Kind::Float) // (N, H, L, G, D)
        .permute([0, 2, 1, 3, 4])
        .reshape([n, l, hq, d])
        .to_kind(q.kind())
}

/// Whether the CUDA kernel takes these inputs: CUDA tensors, bf16 q/k/v, head dim 64 or
/// 128, chunk size 1..=64 dividing `L_kv`, `1 <= K <= 32`, `G = Hq / H <= 32`, well-formed
/// shapes (anything else runs the reference).
pub fn kernel_supports(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    indices: &Tensor,
    chunk_size: i64,
) -> bool {
    let (qs, ks, ws) = (q.size(), k.size(), weights.size());
    super::attention_kernel_inputs(q, k, v, 4)
        && ws.len() == 4
        && k.device() == q.device()
        && v.device() == q.device()
        && weights.device() == q.device()
        && indices.device() == q.device()
        && indices.kind() == Kind::Int64
        && ks[0] == qs[0]
        && ks[2] > 0
        && qs[2] % ks[2] == 0
        && qs[2] / ks[2] <= KERNEL_MAX_G
        && (1..=KERNEL_MAX_CHUNK).contains(&chunk_size)
        && ks[1] % chunk_size == 0
        && ws == [qs[0], qs[1], ks[2], ws[3]]
        && (1..=KERNEL_MAX_K).contains(&ws[3])
        && indices.size() == ws
        && qs[0] * qs[1] * ks[2] < i32::MAX as i64
}

/// The CUDA kernel (forward and backward through a C++ autograd Function). bf16 q, k, v,
/// int64 indices, weights of any float dtype (the gradient keeps it); output bf16.
#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
pub fn hsa_cuda(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    idx: &Tensor,
    chunk_size: i64,
    scale: f64,
    softmax_one: bool,
    path: HsaPath,
) -> Result<Tensor> {
    let [o] = lcm_hsa(q, k, v, weights, idx, chunk_size, scale, softmax_one, path)?;
    Ok(o)
}

/// The forward kernel without autograd: `(o, lse)`, lse `(N, L, Hq, K)` fp32 (natural log
/// of each slot's softmax denominator).
#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
pub fn hsa_cuda_forward_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    idx: &Tensor,
    chunk_size: i64,
    scale: f64,
    softmax_one: bool,
    path: HsaPath,
) -> Result<(Tensor, Tensor)> {
    let [o, lse] =
        lcm_hsa_forward_raw(q, k, v, weights, idx, chunk_size, scale, softmax_one, path)?;
    Ok((o, lse))
}

/// The backward kernel without autograd: `(dq, dk, dv, dweights)` (dweights fp32
/// `(N, L, H, K)`; dk/dv bf16 over the whole memory).
#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
pub fn hsa_cuda_backward_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    idx: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    chunk_size: i64,
    scale: f64,
    softmax_one: bool,
) -> Result<[Tensor; 4]> {
    lcm_hsa_backward_raw(
        q,
        k,
        v,
        weights,
        idx,
        lse,
        dout,
        chunk_size,
        scale,
        softmax_one,
    )
}

/// HSA by whichever implementation suits the input (see [`crate::ops`]): the kernel for
/// inputs it supports ([`kernel_supports`]), else the reference. Panics, as tch's own ops
/// do, if the kernel fails.
#[allow(clippy::too_many_arguments)]
pub fn hsa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    indices: &Tensor,
    chunk_size: i64,
    scale: f64,
    softmax_one: bool,
) -> Tensor {
    #[cfg(lcm_cuda)]
    if super::use_kernels(q.device()) && kernel_supports(q, k, v, weights, indices, chunk_size) {
        let path = hsa_path(q.size()[2] / k.size()[2], chunk_size, scale);
        return hsa_cuda(
            q,
            k,
            v,
            weights,
            indices,
            chunk_size,
            scale,
            softmax_one,
            path,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    hsa_reference(q, k, v, weights, indices, chunk_size, scale, softmax_one)
}
