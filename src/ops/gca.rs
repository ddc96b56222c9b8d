//! Grouped Cross Attention (GCA, seed-report 2.2 step 6 and 4.1): two-stage attention of a
//! chunk's queries over K retrieved chunks.
//!
//! Stage 1: for each retrieved chunk `k`, a softmax attention of every query over that
//! chunk's `K_CTX` slots alone. Stage 2: the K per-chunk outputs are summed with the
//! retrieval weights `w[b, k]`. Because stage 2 is a weighted sum, the loss is
//! differentiable in the weights, which is what makes retrieval learnable.
//!
//! Shapes: `q (B, Hq, Q, D)`, `k`/`v (B, Hkv, K, K_CTX, D)`, `weights (B, K)` (shared by all
//! heads); output `(B, Hq, Q, D)` in `q`'s dtype. GQA: query head `i` reads kv head
//! `i / (Hq / Hkv)`. `softmax_one` adds `exp(0)` to every per-chunk denominator
//! (softmax-off-by-one); DRT with S=63 gets that effect from its zeroed landmark slot
//! instead and passes `false`. Tests: `tests/ops_gca.rs` (reference), `tests/ops_gca_cuda.rs`
//! (kernel). Kernel: `cuda/gca_fwd.cu`, `cuda/gca_bwd.cu` (bf16, head dim 64/128, any K, K_CTX up to 128 with
//! gradients), through the autograd Function of `cuda/gca.cpp`.
//!
//! [`gca_gathered`] is the same attention over chunks named by index in a chunk memory
//! `(M, K_CTX, Hkv, D)` (the DRT's layout): on Hopper the forward kernel reads the chunks
//! from the memory itself (TMA), so no gathered copy is made and chunks that neighbouring
//! queries share come from L2.

use tch::{Kind, Tensor};

#[cfg(lcm_cuda)]
use super::path::{attn_path_on, AttnPath};
#[cfg(lcm_cuda)]
use crate::cuda::ffi::safe::{
    lcm_gca, lcm_gca_backward_raw, lcm_gca_forward_raw, lcm_gca_gathered,
    lcm_gca_gathered_forward_raw,
};
#[cfg(lcm_cuda)]
use crate::error::Result;

/// Largest `K_CTX` the kernel's backward takes (the forward takes any).
pub const KERNEL_MAX_KCTX: i64 = 128;

/// Softmax over the last dimension in fp32. With `off_by_one` the denominator gains a
/// virtual zero logit (`exp(0)`), so a row can put (almost) no mass anywhere. `-inf`
/// entries get zero mass; rows of only `-inf` give zeros (off by one) or NaN (plain).
pub fn softmax_last(scores: &Tensor, off_by_one: bool) -> Tensor {
    let s = scores.to_kind(Kind::Float);
    if !off_by_one {
        return s.softmax(-1, Kind::Float);
    }
    // Shift by max(row max, 0), a constant for autograd, so exp never overflows.
    let m = s.amax([-1].as_slice(), true).clamp_min(0.0).detach();
    let e = (&s - &m).exp();
    let denom = e.sum_dim_intlist([-1].as_slice(), true, Kind::Float) + (-m).exp();
    e / denom
}

/// The two-stage GCA as plain tensor ops (autograd on any device).
pub fn gca_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
) -> Tensor {
    let (qs, ks) = (q.size(), k.size());
    assert!(
        qs.len() == 4 && ks.len() == 5 && v.size() == ks,
        "gca: q {qs:?} must be (B, Hq, Q, D), k/v {ks:?} (B, Hkv, K, K_CTX, D)"
    );
    let (b, hq, nq, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (hkv, nk) = (ks[1], ks[2]);
    assert!(
        ks[0] == b && ks[4] == d && hq % hkv == 0 && weights.size() == [b, nk],
        "gca: q {qs:?}, k {ks:?} and weights {:?} (B, K) disagree",
        weights.size()
    );
    let qg = q.reshape([b, hkv, hq / hkv, 1, nq, d]); // broadcasts over the K chunks
    let scores = qg.matmul(&k.unsqueeze(2).transpose(-1, -2)) * scale; // (B, Hkv, G, K, Q, K_CTX)
    let p = softmax_last(&scores, softmax_one).to_kind(v.kind());
    let per_chunk = p.matmul(&v.unsqueeze(2)).to_kind(Kind::Float); // (B, Hkv, G, K, Q, D)
    let w = weights.to_kind(Kind::Float).reshape([b, 1, 1, nk, 1, 1]);
    (per_chunk * w)
        .sum_dim_intlist([3].as_slice(), false, Kind::Float)
        .reshape([b, hq, nq, d])
        .to_kind(q.kind())
}

/// Whether the CUDA kernel takes these inputs: CUDA tensors, bf16 q/k/v, head dim 64 or
/// 128, `1 <= K_CTX <= 128` and well-formed shapes (anything else runs the reference).
pub fn kernel_supports(q: &Tensor, k: &Tensor, v: &Tensor, weights: &Tensor) -> bool {
    let (qs, ks) = (q.size(), k.size());
    super::attention_kernel_inputs(q, k, v, 5)
        && ks[0] == qs[0]
        && kernel_takes_chunks(q, ks[1], ks[2], ks[3], weights)
}

/// The kernel's limits on the chunks, shared by both layouts: queries `q` over `hkv` kv
/// heads (a divisor of q's heads), `chunks >= 1` chunks of `k_ctx` slots (up to
/// [`KERNEL_MAX_KCTX`]), at least one query, and weights `(B, chunks)` on q's device.
fn kernel_takes_chunks(q: &Tensor, hkv: i64, chunks: i64, k_ctx: i64, weights: &Tensor) -> bool {
    let qs = q.size();
    hkv > 0
        && qs[1] % hkv == 0
        && chunks >= 1
        && (1..=KERNEL_MAX_KCTX).contains(&k_ctx)
        && qs[2] >= 1
        && weights.size() == [qs[0], chunks]
        && weights.device() == q.device()
}

/// The CUDA kernel (forward and backward through a C++ autograd Function). bf16 q, k, v
/// (any strides whose last dimension is dense), weights of any float dtype (the gradient
/// keeps it); output bf16.
#[cfg(lcm_cuda)]
pub fn gca_cuda(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
    path: AttnPath,
) -> Result<Tensor> {
    let [o] = lcm_gca(q, k, v, weights, scale, softmax_one, path)?;
    Ok(o)
}

/// The forward kernel without autograd: `(o, lse)`, lse `(B, Hq, K, Q)` fp32 (base 2).
#[cfg(lcm_cuda)]
pub fn gca_cuda_forward_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
    path: AttnPath,
) -> Result<(Tensor, Tensor)> {
    let [o, lse] = lcm_gca_forward_raw(q, k, v, weights, scale, softmax_one, path)?;
    Ok((o, lse))
}

/// The backward kernel without autograd: `(dq, dk, dv, dweights)` (dweights fp32).
#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
pub fn gca_cuda_backward_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f64,
    path: AttnPath,
) -> Result<[Tensor; 4]> {
    lcm_gca_backward_raw(q, k, v, weights, lse, dout, scale, path)
}

/// The chunks `idx` `(B, K)` names in a memory `(M, K_CTX, Hkv, D)`, as [`gca`] takes
/// them: `(B, Hkv, K, K_CTX, D)`.
pub fn gather_chunks(mem: &Tensor, idx: &Tensor) -> Tensor {
    let (m, i) = (mem.size(), idx.size());
    mem.index_select(0, &idx.reshape([-1]))
        .view([i[0], i[1], m[1], m[2], m[3]])
        .permute([0, 3, 1, 2, 4])
}

/// [`gca`] over the chunks `idx` (int64 `(B, K)`, rows of the memory) of the memory
/// `mem_k`/`mem_v` `(M, K_CTX, Hkv, D)`: the reference (gather, then [`gca_reference`]).
pub fn gca_gathered_reference(
    q: &Tensor,
    mem_k: &Tensor,
    mem_v: &Tensor,
    idx: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
) -> Tensor {
    let (k, v) = (gather_chunks(mem_k, idx), gather_chunks(mem_v, idx));
    gca_reference(q, &k, &v, weights, scale, softmax_one)
}

/// Whether the kernel takes these inputs: those [`kernel_supports`] takes once gathered,
/// int64 indices on q's device.
pub fn gathered_kernel_supports(
    q: &Tensor,
    mem_k: &Tensor,
    mem_v: &Tensor,
    idx: &Tensor,
    weights: &Tensor,
) -> bool {
    let (qs, m, i) = (q.size(), mem_k.size(), idx.size());
    super::attention_kernel_inputs(q, mem_k, mem_v, 4)
        && i.len() == 2
        && idx.device() == q.device()
        && idx.kind() == Kind::Int64
        && m[0] >= 1
        && i[0] == qs[0]
        && kernel_takes_chunks(q, m[2], i[1], m[1], weights)
}

/// The kernel of [`gca_gathered`] with autograd (the gradients of the memory are the
/// chunks' gradients added into their rows).
#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
pub fn gca_gathered_cuda(
    q: &Tensor,
    mem_k: &Tensor,
    mem_v: &Tensor,
    idx: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
    path: AttnPath,
) -> Result<Tensor> {
    let [o] = lcm_gca_gathered(q, mem_k, mem_v, idx, weights, scale, softmax_one, path)?;
    Ok(o)
}

/// Its forward kernel without autograd: `(o, lse)` as [`gca_cuda_forward_raw`]'s.
#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
pub fn gca_gathered_cuda_forward_raw(
    q: &Tensor,
    mem_k: &Tensor,
    mem_v: &Tensor,
    idx: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
    path: AttnPath,
) -> Result<(Tensor, Tensor)> {
    let [o, lse] =
        lcm_gca_gathered_forward_raw(q, mem_k, mem_v, idx, weights, scale, softmax_one, path)?;
    Ok((o, lse))
}

/// GCA over chunks of a memory by whichever implementation suits the input: the kernel
/// where [`gca`] would take the gathered chunks (and int64 indices), else the reference.
/// Indices must lie in `0..M`: the reference fails on others, while the kernel's in-place
/// read (unchecked, so that the forward needs no device sync) sees zeros past the end.
pub fn gca_gathered(
    q: &Tensor,
    mem_k: &Tensor,
    mem_v: &Tensor,
    idx: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
) -> Tensor {
    #[cfg(lcm_cuda)]
    if super::use_kernels(q.device()) && gathered_kernel_supports(q, mem_k, mem_v, idx, weights) {
        let path = attn_path_on(q.device(), q.size()[3]);
        return gca_gathered_cuda(q, mem_k, mem_v, idx, weights, scale, softmax_one, path)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    gca_gathered_reference(q, mem_k, mem_v, idx, weights, scale, softmax_one)
}

/// GCA by whichever implementation suits the input (see [`crate::ops`]): the kernel for
/// inputs it supports ([`kernel_supports`]), else the reference. Panics, as tch's own ops
/// do, if the kernel fails.
pub fn gca(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    weights: &Tensor,
    scale: f64,
    softmax_one: bool,
) -> Tensor {
    #[cfg(lcm_cuda)]
    if super::use_kernels(q.device()) && kernel_supports(q, k, v, weights) {
        let path = attn_path_on(q.device(), q.size()[3]);
        return gca_cuda(q, k, v, weights, scale, softmax_one, path)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    gca_reference(q, k, v, weights, scale, softmax_one)
}
