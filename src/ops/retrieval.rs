//! Retrieval: which past chunks a query reads, and with what weights.
//!
//! * [`chunk_retrieval`] (GCA/DRT, seed-report 2.2 step 4): one retrieval per chunk, from
//!   the chunk's landmark query against every chunk's landmark key, strictly causal (chunk
//!   `i` sees chunks `j < i`); top-k (Gumbel noise on the selection only, in training);
//!   softmax over the chosen noise-free scores.
//! * [`token_retrieval`] (HSA, seed-report 3.2): one retrieval per token and retrieval
//!   head; token `t` sees chunk `d` iff `(d + 1) * S <= t` (the chunk is complete before
//!   `t`); top-k, slots sorted by chunk index descending (most recent first), then
//!   stick-breaking or softmax weights, in fp32.
//!
//! Both return [`Retrieval`]: fp32 `weights` and int64 `indices` of the same shape, with
//! index `-1` and weight 0 in slots that found no visible chunk (e.g. every slot of chunk
//! 0). Weights are differentiable in the scores (and so in queries and keys); indices are
//! not. All-masked rows give weight 0 without producing NaN in forward or backward.
//! Test: `tests/ops_retrieval.rs`.
//!
//! On CUDA with bf16 queries and keys (dim a multiple of 8 up to 1024, top-k up to 32),
//! the plain and blocked forms select with the kernel of
//! `cuda/retrieval.cu` ([`retrieval_topk_cuda`]): scores and top-k in one pass over the
//! memory, no score matrix. It returns the indices and their fp32 scores; where a gradient
//! is wanted, the chosen scores are recomputed here from the gathered keys (top-k itself
//! is not differentiable), and the weights follow as in the reference. Ties: the kernel
//! prefers the lower key index among equal scores (torch's topk leaves their order
//! unspecified). Gumbel noise (training) is drawn inside the kernel from a counter-based
//! hash seeded from tch's generator (so `tch::manual_seed` fixes it), not from torch's
//! `exponential_`: the same distribution, not the same draws as the reference.
//! Test: `tests/ops_retrieval_cuda.rs`.

use tch::{Kind, Tensor};

#[cfg(lcm_cuda)]
use crate::cuda::ffi::safe::lcm_retrieval_topk;
#[cfg(lcm_cuda)]
use crate::error::Result;

/// Largest query/key dim the CUDA top-k kernel takes (a multiple of 8).
pub const KERNEL_MAX_DIM: i64 = 1024;
/// Largest top-k the CUDA kernel takes.
pub const KERNEL_MAX_K: i64 = 32;

/// The chosen chunks and their weights.
#[derive(Debug)]
pub struct Retrieval {
    /// fp32, differentiable; 0 in empty slots.
    pub weights: Tensor,
    /// int64 chunk numbers; -1 in empty slots.
    pub indices: Tensor,
}

impl Retrieval {
    /// `indices` with empty slots mapped to chunk 0, for gathers (their weight is 0).
    pub fn gather_indices(&self) -> Tensor {
        self.indices.clamp_min(0)
    }
}

/// How a token's K slot scores become weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotWeighting {
    /// `w_k = sigmoid(s_k) * prod_{j<k} (1 - sigmoid(s_j))` over the descending slots.
    StickBreaking,
    Softmax,
}

impl SlotWeighting {
    /// The weights of slots with scores `chosen`, over the last dim, `valid` marking the
    /// filled slots (empty ones weigh 0).
    fn weights(self, chosen: &Tensor, valid: &Tensor) -> Tensor {
        match self {
            SlotWeighting::StickBreaking => stick_breaking(chosen, valid),
            SlotWeighting::Softmax => softmax_valid(chosen, valid),
        }
    }
}

/// Gumbel(0, 1) noise `-log(E)`, `E ~ Exp(1)`, shaped like `x` (no gradient).
fn gumbel_like(x: &Tensor) -> Tensor {
    let mut e = Tensor::empty_like(x);
    let _ = e.exponential_(1.0);
    -e.log()
}

/// Top-k of `scores` (masked entries `-inf`) on the last dim: `(indices or -1, valid)`.
/// Noise, when asked for, changes only which entries are chosen.
fn select_topk(scores: &Tensor, visible: &Tensor, k: i64, gumbel: bool) -> (Tensor, Tensor) {
    let selection = if gumbel {
        scores.detach() + gumbel_like(scores)
    } else {
        scores.detach()
    };
    let selection = selection.masked_fill(&visible.logical_not(), f64::NEG_INFINITY);
    let (_, idx) = selection.topk(k, -1, true, true);
    let valid = visible.gather(-1, &idx, false);
    (idx.masked_fill(&valid.logical_not(), -1), valid)
}

/// Softmax over the valid slots; empty slots and rows of only empty slots get 0, with no
/// NaN anywhere (the masked logits are a large finite negative, not `-inf`).
fn softmax_valid(chosen: &Tensor, valid: &Tensor) -> Tensor {
    let finite = chosen.masked_fill(&valid.logical_not(), -1e30);
    finite.softmax(-1, Kind::Float) * valid.to_kind(Kind::Float)
}

/// Stick-breaking weights over slots in order: `exp(s_k - sum_{j<=k} softplus(s_j))`.
/// Empty slots must come last (they do after the descending sort); they get 0.
fn stick_breaking(chosen: &Tensor, valid: &Tensor) -> Tensor {
    let s = chosen.masked_fill(&valid.logical_not(), 0.0);
    let log_w = &s - s.softplus().cumsum(-1, Kind::Float);
    log_w.exp() * valid.to_kind(Kind::Float)
}

/// Chunk-level scores `q_lmk . k_lmk / sqrt(d)`, `(N, C, C)` fp32, with `-inf` where the key
/// chunk is not strictly before the query chunk.
pub fn chunk_retrieval_scores(q_lmk: &Tensor, k_lmk: &Tensor) -> Tensor {
    let (c, d) = (q_lmk.size()[1], q_lmk.size()[2]);
    let scores = q_lmk
        .to_kind(Kind::Float)
        .matmul(&k_lmk.to_kind(Kind::Float).transpose(-1, -2))
        / (d as f64).sqrt();
    let visible = chunk_visibility(c, q_lmk.device());
    scores.masked_fill(&visible.logical_not(), f64::NEG_INFINITY)
}

/// `(C, C)` bool: query chunk `i` may read key chunk `j` iff `j < i`.
pub fn chunk_visibility(c: i64, device: tch::Device) -> Tensor {
    Tensor::ones([c, c], (Kind::Bool, device)).tril(-1)
}

/// DRT retrieval for landmark queries `q_lmk (N, C, d)` (already RMSNorm'd) against
/// landmark keys `k_lmk (N, C, d)`: weights and indices `(N, C, min(C, topk))`. Row `i` is
/// landmark `i`'s choice, which serves chunk `i + 1` (the caller shifts).
pub fn chunk_retrieval_reference(
    q_lmk: &Tensor,
    k_lmk: &Tensor,
    topk: i64,
    gumbel: bool,
) -> Retrieval {
    let c = q_lmk.size()[1];
    let scores = chunk_retrieval_scores(q_lmk, k_lmk);
    let visible = chunk_visibility(c, q_lmk.device()).expand_as(&scores);
    let (indices, valid) = select_topk(&scores, &visible, topk.min(c), gumbel);
    let chosen = scores.gather(-1, &indices.clamp_min(0), false);
    Retrieval {
        weights: softmax_valid(&chosen, &valid),
        indices,
    }
}

/// Chunk retrieval by whichever implementation suits the input: the CUDA top-k kernel
/// for bf16 on a GPU ([`kernel_supports`]), else the reference.
pub fn chunk_retrieval(q_lmk: &Tensor, k_lmk: &Tensor, topk: i64, gumbel: bool) -> Retrieval {
    let c = q_lmk.size()[1];
    if c > 0 && kernel_supports(q_lmk, k_lmk, topk.min(c)) {
        let seed = gumbel.then(gumbel_seed);
        if let Some(r) = chunk_retrieval_kernel(q_lmk, k_lmk, 0, topk.min(c), seed) {
            return r;
        }
    }
    chunk_retrieval_reference(q_lmk, k_lmk, topk, gumbel)
}

/// Whether the CUDA top-k kernel takes queries `q` and keys `k` (last dim = the score
/// dim) with this `topk`: kernels in use on their device, bf16 both, dim a multiple of 8
/// up to [`KERNEL_MAX_DIM`], `1 <= topk <=` [`KERNEL_MAX_K`].
pub fn kernel_supports(q: &Tensor, k: &Tensor, topk: i64) -> bool {
    let d = *q.size().last().unwrap_or(&0);
    super::use_kernels(q.device())
        && k.device() == q.device()
        && q.kind() == Kind::BFloat16
        && k.kind() == Kind::BFloat16
        && k.size().last() == Some(&d)
        && d >= 8
        && d % 8 == 0
        && d <= KERNEL_MAX_DIM
        && (1..=KERNEL_MAX_K).contains(&topk)
}

/// A seed for the kernel's Gumbel noise, drawn from tch's CPU generator.
fn gumbel_seed() -> i64 {
    Tensor::randint(i64::MAX, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0])
}

/// The CUDA top-k kernel: queries `q (N, M, H, D)` against keys `k (N, E, H, D)` (bf16),
/// query `m` seeing keys `j < min(E, (first + m) / div)`, score `(q . k) * scale` in fp32.
/// Returns `(scores, indices)`, both `(N, H, M, topk)`: scores descending (ties: lower
/// index first), fp32, `-inf` in empty slots; int64 indices, `-1` in empty slots. With
/// `gumbel = Some(seed)`, Gumbel(0, 1) noise (a hash of seed, group, query number and key)
/// is added to every visible score before the selection, and the scores include it.
#[cfg(lcm_cuda)]
pub fn retrieval_topk_cuda(
    q: &Tensor,
    k: &Tensor,
    first: i64,
    div: i64,
    topk: i64,
    scale: f64,
    gumbel: Option<i64>,
) -> Result<(Tensor, Tensor)> {
    let (seed, noisy) = (gumbel.unwrap_or(0), gumbel.is_some());
    let [s, i] = lcm_retrieval_topk(q, k, first, div, topk, scale, seed, noisy)?;
    Ok((s, i))
}

/// [`retrieval_topk_cuda`] where this build has kernels (panicking on a kernel error, as
/// the other ops do); `None` in a build without them.
#[cfg(lcm_cuda)]
fn kernel_topk(
    q: &Tensor,
    k: &Tensor,
    first: i64,
    div: i64,
    topk: i64,
    scale: f64,
    gumbel: Option<i64>,
) -> Option<(Tensor, Tensor)> {
    Some(
        retrieval_topk_cuda(q, k, first, div, topk, scale, gumbel)
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

#[cfg(not(lcm_cuda))]
fn kernel_topk(
    _q: &Tensor,
    _k: &Tensor,
    _first: i64,
    _div: i64,
    _topk: i64,
    _scale: f64,
    _gumbel: Option<i64>,
) -> Option<(Tensor, Tensor)> {
    None
}

/// Scores of the chosen keys, differentiable in `q (G, M, D)` and `k (G, E, D)`:
/// `(G, M, K)` fp32 for `indices (G, M, K)` (empty slots read key 0; the caller masks them).
fn chosen_scores(q: &Tensor, k: &Tensor, indices: &Tensor) -> Tensor {
    let (g, e, d) = (k.size()[0], k.size()[1], k.size()[2]);
    let (m, nk) = (indices.size()[1], indices.size()[2]);
    let offs = Tensor::arange(g, (Kind::Int64, k.device())).view([g, 1, 1]) * e;
    let flat = (indices.clamp_min(0) + offs).view([-1]);
    // fp32 before the gather, so that the keys' gradient is summed over the queries that
    // chose them in fp32 (index_select's backward), not in bf16.
    let kg = k
        .to_kind(Kind::Float)
        .reshape([g * e, d])
        .index_select(0, &flat)
        .view([g, m, nk, d]);
    let qf = q.to_kind(Kind::Float).unsqueeze(-2); // (G, M, 1, D)
    qf.matmul(&kg.transpose(-1, -2)).squeeze_dim(-2) / (d as f64).sqrt()
}

/// Chunk retrieval through the kernel: landmark `first + i` sees keys `j < first + i`.
/// `(N, c, topk)`; the chosen scores are recomputed differentiably when a gradient is
/// wanted.
fn chunk_retrieval_kernel(
    q_lmk: &Tensor,
    k_lmk: &Tensor,
    first: i64,
    topk: i64,
    gumbel: Option<i64>,
) -> Option<Retrieval> {
    let d = q_lmk.size()[2];
    let (scores, indices) = kernel_topk(
        &q_lmk.unsqueeze(2),
        &k_lmk.unsqueeze(2),
        first,
        1,
        topk,
        1.0 / (d as f64).sqrt(),
        gumbel,
    )?;
    let (scores, indices) = (scores.squeeze_dim(1), indices.squeeze_dim(1));
    let valid = indices.ge(0);
    // With noise the kernel's scores are noisy: the weights take the clean ones.
    let chosen = if gumbel.is_some() || q_lmk.requires_grad() || k_lmk.requires_grad() {
        chosen_scores(q_lmk, k_lmk, &indices)
    } else {
        scores
    };
    Some(Retrieval {
        weights: softmax_valid(&chosen, &valid),
        indices,
    })
}

/// Token retrieval through the kernel: `q (N, L, r, dr)` from token `first`, `lmk (N, E,
/// r, dr)`; slots most recent first. Returns `(N, L, r, topk)`.
fn token_retrieval_kernel(
    q: &Tensor,
    lmk: &Tensor,
    first: i64,
    chunk_size: i64,
    topk: i64,
    weighting: SlotWeighting,
    gumbel: Option<i64>,
) -> Option<Retrieval> {
    let (n, l, r, dr) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let e = lmk.size()[1];
    let (scores, picked) = kernel_topk(
        q,
        lmk,
        first,
        chunk_size,
        topk,
        1.0 / (dr as f64).sqrt(),
        gumbel,
    )?;
    // (N, r, L, K): most recent chunk first; -1 (empty) sorts last.
    let (indices, order) = picked.sort(-1, true);
    let valid = indices.ge(0);
    let chosen = if gumbel.is_some() || q.requires_grad() || lmk.requires_grad() {
        let qg = q.permute([0, 2, 1, 3]).reshape([n * r, l, dr]);
        let kg = lmk.permute([0, 2, 1, 3]).reshape([n * r, e, dr]);
        chosen_scores(&qg, &kg, &indices.view([n * r, l, topk])).view([n, r, l, topk])
    } else {
        scores.gather(-1, &order, false)
    };
    let weights = weighting.weights(&chosen, &valid);
    Some(Retrieval {
        weights: weights.permute([0, 2, 1, 3]),
        indices: indices.permute([0, 2, 1, 3]),
    })
}

/// `(L, C)` bool: token `t` may read chunk `d` iff `(d + 1) * chunk_size <= t`.
pub fn token_visibility(l: i64, c: i64, chunk_size: i64, device: tch::Device) -> Tensor {
    let t = Tensor::arange(l, (Kind::Int64, device)).view([l, 1]);
    let ends = (Tensor::arange(c, (Kind::Int64, device)) + 1) * chunk_size;
    ends.view([1, c]).le_tensor(&t)
}

/// HSA retrieval for token queries `q (N, L, r, dr)` against chunk landmarks
/// `lmk (N, C, r, dr)` (r retrieval heads): weights and indices `(N, L, r, min(C, topk))`,
/// slots in descending chunk order with empty slots last. Scores are `q . lmk / sqrt(dr)`.
pub fn token_retrieval_reference(
    q: &Tensor,
    lmk: &Tensor,
    chunk_size: i64,
    topk: i64,
    weighting: SlotWeighting,
    gumbel: bool,
) -> Retrieval {
    let (l, dr) = (q.size()[1], q.size()[3]);
    let c = lmk.size()[1];
    let qf = q.to_kind(Kind::Float).permute([0, 2, 1, 3]); // (N, r, L, dr)
    let kf = lmk.to_kind(Kind::Float).permute([0, 2, 3, 1]); // (N, r, dr, C)
    let scores = (qf.matmul(&kf) / (dr as f64).sqrt()).permute([0, 2, 1, 3]); // (N, L, r, C)
    let visible = token_visibility(l, c, chunk_size, q.device())
        .unsqueeze(1)
        .expand_as(&scores);
    let scores = scores.masked_fill(&visible.logical_not(), f64::NEG_INFINITY);
    let (picked, _) = select_topk(&scores, &visible, topk.min(c), gumbel);
    // Most recent chunk first; -1 (empty) sorts last.
    let (indices, _) = picked.sort(-1, true);
    let valid = indices.ge(0);
    let chosen = scores.gather(-1, &indices.clamp_min(0), false);
    let weights = weighting.weights(&chosen, &valid);
    Retrieval { weights, indices }
}

/// Token retrieval by whichever implementation suits the input: the CUDA top-k kernel for
/// bf16 on a GPU ([`kernel_supports`]), else the reference.
pub fn token_retrieval(
    q: &Tensor,
    lmk: &Tensor,
    chunk_size: i64,
    topk: i64,
    weighting: SlotWeighting,
    gumbel: bool,
) -> Retrieval {
    let kk = topk.min(lmk.size()[1]);
    if q.size()[1] > 0 && kernel_supports(q, lmk, kk) {
        let seed = gumbel.then(gumbel_seed);
        if let Some(r) = token_retrieval_kernel(q, lmk, 0, chunk_size, kk, weighting, seed) {
            return r;
        }
    }
    token_retrieval_reference(q, lmk, chunk_size, topk, weighting, gumbel)
}

/// Keys scored per block by the blocked retrievals: bounds the score matrix at
/// `queries x RETRIEVAL_BLOCK` however long the memory grows.
pub const RETRIEVAL_BLOCK: i64 = 16384;

/// Running top-k over key blocks: merges a block's scores `(..., n)` (masked `-inf`, key
/// numbers `first..first+n`) into the best `k` so far, kept sorted by score.
fn merge_topk(best: (Tensor, Tensor), block: &Tensor, first: i64, k: i64) -> (Tensor, Tensor) {
    let n = *block.size().last().unwrap();
    let ids =
        Tensor::arange_start(first, first + n, (Kind::Int64, block.device())).expand_as(block);
    let scores = Tensor::cat(&[&best.0, block], -1);
    let ids = Tensor::cat(&[&best.1, &ids], -1);
    let (top, pos) = scores.topk(k, -1, true, true);
    (top, ids.gather(-1, &pos, false))
}

/// Empty running top-k: `k` slots of score `-inf` and index -1 in front of shape `lead`.
fn empty_topk(lead: &[i64], k: i64, device: tch::Device) -> (Tensor, Tensor) {
    let mut shape = lead.to_vec();
    shape.push(k);
    (
        Tensor::full(shape.as_slice(), f64::NEG_INFINITY, (Kind::Float, device)),
        Tensor::full(shape.as_slice(), -1, (Kind::Int64, device)),
    )
}

/// DRT retrieval for a segment (inference): landmark queries `q_lmk (N, c, d)` whose first
/// is landmark number `first`, against every landmark key so far `k_lmk (N, E, d)`, scored
/// in blocks of `block` keys ([`RETRIEVAL_BLOCK`] in the models) so that no `c x E` (let alone `E x E`) matrix is
/// formed. Landmark `first + i` sees keys `j < first + i`, as in [`chunk_retrieval_reference`],
/// whose choices and weights this reproduces (no Gumbel noise: inference only). Returns
/// `(N, c, topk)` with empty slots (index -1, weight 0) where fewer chunks are visible.
pub fn chunk_retrieval_blocked(
    q_lmk: &Tensor,
    k_lmk: &Tensor,
    first: i64,
    topk: i64,
    block: i64,
) -> Retrieval {
    if q_lmk.size()[1] > 0 && kernel_supports(q_lmk, k_lmk, topk) {
        if let Some(r) = chunk_retrieval_kernel(q_lmk, k_lmk, first, topk, None) {
            return r;
        }
    }
    chunk_retrieval_blocked_reference(q_lmk, k_lmk, first, topk, block)
}

/// [`chunk_retrieval_blocked`] in pure tch (the CPU path and the kernel's ground truth).
pub fn chunk_retrieval_blocked_reference(
    q_lmk: &Tensor,
    k_lmk: &Tensor,
    first: i64,
    topk: i64,
    block: i64,
) -> Retrieval {
    let (n, c, d) = (q_lmk.size()[0], q_lmk.size()[1], q_lmk.size()[2]);
    let e = k_lmk.size()[1];
    let dev = q_lmk.device();
    let q = q_lmk.to_kind(Kind::Float);
    let q_num = Tensor::arange_start(first, first + c, (Kind::Int64, dev)).view([c, 1]);
    let mut best = empty_topk(&[n, c], topk, dev);
    // Keys at or after the last query's own landmark are never visible.
    let end = e.min(first + c - 1).max(0);
    let mut start = 0;
    while start < end {
        let len = block.min(end - start);
        let kb = k_lmk.narrow(1, start, len).to_kind(Kind::Float);
        let scores = q.matmul(&kb.transpose(-1, -2)) / (d as f64).sqrt(); // (N, c, len)
        let k_num = Tensor::arange_start(start, start + len, (Kind::Int64, dev)).view([1, len]);
        let scores = scores.masked_fill(&k_num.ge_tensor(&q_num), f64::NEG_INFINITY);
        best = merge_topk(best, &scores, start, topk);
        start += len;
    }
    let (chosen, idx) = best;
    let valid = chosen.isfinite();
    Retrieval {
        weights: softmax_valid(&chosen, &valid),
        indices: idx.masked_fill(&valid.logical_not(), -1),
    }
}

/// HSA retrieval for a segment (inference): token queries `q (N, L, r, dr)` whose first is
/// token number `first`, against every chunk landmark so far `lmk (N, E, r, dr)`, in blocks
/// of `block` chunks. Token `t` sees chunk `d` iff `(d + 1) * chunk_size <= t`;
/// slots most recent first, as [`token_retrieval_reference`] (no Gumbel noise). Returns
/// `(N, L, r, topk)`.
pub fn token_retrieval_blocked(
    q: &Tensor,
    lmk: &Tensor,
    first: i64,
    chunk_size: i64,
    topk: i64,
    weighting: SlotWeighting,
    block: i64,
) -> Retrieval {
    if q.size()[1] > 0 && kernel_supports(q, lmk, topk) {
        if let Some(r) = token_retrieval_kernel(q, lmk, first, chunk_size, topk, weighting, None) {
            return r;
        }
    }
    token_retrieval_blocked_reference(q, lmk, first, chunk_size, topk, weighting, block)
}

/// [`token_retrieval_blocked`] in pure tch (the CPU path and the kernel's ground truth).
#[allow(clippy::too_many_arguments)]
pub fn token_retrieval_blocked_reference(
    q: &Tensor,
    lmk: &Tensor,
    first: i64,
    chunk_size: i64,
    topk: i64,
    weighting: SlotWeighting,
    block: i64,
) -> Retrieval {
    let (n, l, r, dr) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let e = lmk.size()[1];
    let dev = q.device();
    let qf = q.to_kind(Kind::Float).permute([0, 2, 1, 3]); // (N, r, L, dr)
    let t = Tensor::arange_start(first, first + l, (Kind::Int64, dev)).view([l, 1]);
    let mut best = empty_topk(&[n, r, l], topk, dev);
    // Chunks complete before the segment's last token.
    let end = e.min((first + l - 1) / chunk_size).max(0);
    let mut start = 0;
    while start < end {
        let len = block.min(end - start);
        let kb = lmk
            .narrow(1, start, len)
            .to_kind(Kind::Float)
            .permute([0, 2, 3, 1]);
        let scores = qf.matmul(&kb) / (dr as f64).sqrt(); // (N, r, L, len)
        let ends = (Tensor::arange_start(start, start + len, (Kind::Int64, dev)) + 1) * chunk_size;
        let hidden = ends.view([1, len]).gt_tensor(&t);
        let scores = scores.masked_fill(&hidden, f64::NEG_INFINITY);
        best = merge_topk(best, &scores, start, topk);
        start += len;
    }
    let (chosen, idx) = best;
    let valid = chosen.isfinite();
    let idx = idx.masked_fill(&valid.logical_not(), -1);
    // Most recent chunk first; -1 (empty) sorts last.
    let (indices, order) = idx.sort(-1, true);
    let chosen = chosen.gather(-1, &order, false);
    let valid = indices.ge(0);
    let weights = weighting.weights(&chosen, &valid);
    Retrieval {
        weights: weights.permute([0, 2, 1, 3]),
        indices: indices.permute([0, 2, 1, 3]),
    }
}
