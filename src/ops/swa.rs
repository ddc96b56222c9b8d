//! Self-attention ops: causal sliding-window attention (optionally with ALiBi), full causal
//! attention (the `dense` baseline) and bidirectional attention (the chunk encoder).
//!
//! Layout: `q (B, Hq, T, D)`, `k`/`v (B, Hkv, T, D)` with `Hq % Hkv == 0` (GQA: query head
//! `i` reads kv head `i / (Hq / Hkv)`); the output has `q`'s shape and dtype. Scores are
//! taken in the input dtype, the softmax in fp32, then probabilities are rounded to `v`'s
//! dtype for the value product, as flash attention does.
//!
//! Sliding window: query `t` sees keys `t - window ..= t` (itself plus `window` past keys,
//! flash-attn's `window_size = (window, 0)`). ALiBi adds `-m_h * (t - s)` to the score of
//! key `s`, with per-head slopes `m_h` ([`crate::model::layers::alibi_slopes`]).
//!
//! The sliding-window reference is blocked so that it never forms a `T x T` matrix: query
//! blocks of `bs = min(window, T)` rows attend to their own block plus the
//! `ceil(window / bs)` previous blocks (one previous block when `bs = window`), so memory
//! is `O(T * window)`. Test: `tests/ops_swa.rs`.
//!
//! On CUDA, bf16 inputs with head dim 64 or 128 ([`kernel_supports`]) run the hand-written
//! kernels of `cuda/swa_fwd.cu`, `cuda/swa_bwd.cu` (FlashAttention-2 style: the band's key tiles only, online
//! softmax, a deterministic backward) for both the sliding window and the bidirectional
//! mode, through the autograd Function of `cuda/swa.cpp`. Test: `tests/ops_swa_cuda.rs`.

use tch::{Kind, Tensor};

#[cfg(lcm_cuda)]
use super::path::{attn_path_on, AttnPath};
#[cfg(lcm_cuda)]
use crate::cuda::ffi::safe::{lcm_swa, lcm_swa_backward_raw, lcm_swa_forward_raw};
#[cfg(lcm_cuda)]
use crate::error::Result;

/// `(B, Hq, T, D)` -> `(B, Hkv, G, T, D)` so that a kv tensor unsqueezed at dim 2 broadcasts
/// over the query heads of its group.
fn group_queries(q: &Tensor, hkv: i64) -> Tensor {
    let s = q.size();
    q.reshape([s[0], hkv, s[1] / hkv, s[2], s[3]])
}

fn check_gqa(q: &Tensor, k: &Tensor, v: &Tensor) {
    let (qs, ks) = (q.size(), k.size());
    assert!(
        qs.len() == 4 && ks.len() == 4 && v.size() == ks,
        "attention: q {qs:?}, k {ks:?}, v {:?} must be (B, H, T, D)",
        v.size()
    );
    assert!(
        qs[0] == ks[0] && qs[3] == ks[3] && qs[1] % ks[1] == 0,
        "attention: q {qs:?} and k {ks:?} disagree (batch, head dim, or Hq % Hkv != 0)"
    );
}

/// Softmax over the last dim in fp32; rows whose every entry is `-inf` give zeros, not NaN.
fn masked_softmax(scores: &Tensor) -> Tensor {
    scores
        .to_kind(Kind::Float)
        .softmax(-1, Kind::Float)
        .nan_to_num(0.0, None, None)
}

/// Attention over explicit scores: `q`, `k`, `v` grouped as by [`group_queries`], `bias` and
/// `mask` (true = visible) broadcast against `(B, Hkv, G, Tq, Tk)`.
fn attend_dense(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    check_gqa(q, k, v);
    let qs = q.size();
    let hkv = k.size()[1];
    let qg = group_queries(q, hkv);
    let mut scores = qg
        .matmul(&k.unsqueeze(2).transpose(-1, -2))
        .to_kind(Kind::Float)
        * scale;
    if let Some(b) = bias {
        scores = scores.g_add(b);
    }
    if let Some(m) = mask {
        scores = scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY);
    }
    let p = masked_softmax(&scores).to_kind(v.kind());
    p.matmul(&v.unsqueeze(2)).reshape(qs.as_slice())
}

/// ALiBi bias `-m_h * dist` for a distance matrix `dist (Tq, Tk)`: returns `(Hkv, G, Tq, Tk)`,
/// which broadcasts against grouped scores `(B, Hkv, G, Tq, Tk)`.
fn alibi_bias(slopes: &Tensor, hkv: i64, dist: &Tensor) -> Tensor {
    let hq = slopes.size()[0];
    let mut shape = vec![hkv, hq / hkv];
    shape.extend(std::iter::repeat_n(1, dist.dim()));
    let m = slopes.to_kind(Kind::Float).reshape(shape.as_slice());
    -(m * dist.to_kind(Kind::Float))
}

/// Full causal attention (`T x T`; the `dense` baseline and the naive ground truth), with
/// optional ALiBi slopes `(Hq,)` and an optional window (keys `t - window ..= t`). With
/// fewer queries than keys, the queries are the last positions (a segment after a cache).
pub fn causal_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<i64>,
    alibi: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let (tq, tk) = (q.size()[2], k.size()[2]);
    assert!(
        tq <= tk,
        "causal attention: {tq} queries but only {tk} keys"
    );
    // Queries are the last tq of the tk positions (all of them without a cache).
    let dev = q.device();
    let q_pos = Tensor::arange_start(tk - tq, tk, (Kind::Int64, dev));
    let k_pos = Tensor::arange(tk, (Kind::Int64, dev));
    let dist = q_pos.unsqueeze(1) - k_pos.unsqueeze(0); // (Tq, Tk): query - key
    let mut mask = dist.ge(0);
    if let Some(w) = window {
        mask = mask.logical_and(&dist.le(w));
    }
    let bias = alibi.map(|m| alibi_bias(m, k.size()[1], &dist));
    attend_dense(q, k, v, bias.as_ref(), Some(&mask), scale)
}

/// Full causal attention by whichever implementation suits the input (reference for now).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    causal_attention_reference(q, k, v, None, alibi, scale)
}

/// Bidirectional (unmasked) attention, e.g. within one chunk in the encoder: `q (B, Hq, L, D)`.
pub fn bidirectional_attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    attend_dense(q, k, v, None, None, scale)
}

/// Bidirectional attention by whichever implementation suits the input: the kernel of
/// `cuda/swa_fwd.cu`, `cuda/swa_bwd.cu` for inputs it takes ([`kernel_supports`]), else libtorch's fused attention
/// on a GPU in bf16/fp16 (kv heads repeated over their query group), else the reference.
pub fn bidirectional_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    #[cfg(lcm_cuda)]
    if super::use_kernels(q.device()) && kernel_supports(q, k, v, None, scale) {
        let path = attn_path_on(q.device(), q.size()[3]);
        return swa_cuda(q, k, v, None, None, scale, path).unwrap_or_else(|e| panic!("{e}"));
    }
    let half = matches!(q.kind(), Kind::BFloat16 | Kind::Half);
    if !(half && q.device().is_cuda()) || super::reference_forced() {
        return bidirectional_attention_reference(q, k, v, scale);
    }
    check_gqa(q, k, v);
    let g = q.size()[1] / k.size()[1];
    let repeat = |x: &Tensor| {
        let s = x.size();
        x.unsqueeze(2)
            .expand([s[0], s[1], g, s[2], s[3]], false)
            .reshape([s[0], s[1] * g, s[2], s[3]])
    };
    Tensor::scaled_dot_product_attention::<Tensor>(
        q,
        &repeat(k),
        &repeat(v),
        None,
        0.0,
        false,
        scale,
        false,
    )
}

/// The blocked layout of a sliding window of `window` keys over `q (B, Hq, T, D)` and
/// `k`/`v (B, Hkv, T, D)` (see the module doc): `nb` query blocks of `bs` rows (the queries
/// padded to `tp = nb * bs` positions), each against `span` keys of which the first
/// `front` come before the block.
struct WindowBlocks {
    b: i64,
    hq: i64,
    hkv: i64,
    /// Query heads per kv head.
    g: i64,
    t: i64,
    d: i64,
    bs: i64,
    nb: i64,
    tp: i64,
    front: i64,
    span: i64,
}

impl WindowBlocks {
    /// Checks the inputs (GQA shapes, `window >= 0`) and lays out the blocks.
    fn new(q: &Tensor, k: &Tensor, v: &Tensor, window: i64) -> Self {
        check_gqa(q, k, v);
        assert!(window >= 0, "sliding_window_attention: window {window} < 0");
        let qs = q.size();
        let (b, hq, t, d) = (qs[0], qs[1], qs[2], qs[3]);
        let hkv = k.size()[1];
        let bs = window.min(t).max(1);
        let nprev = (window + bs - 1) / bs; // previous blocks a query block may reach
        let nb = (t + bs - 1) / bs;
        let front = nprev * bs;
        WindowBlocks {
            b,
            hq,
            hkv,
            g: hq / hkv,
            t,
            d,
            bs,
            nb,
            tp: nb * bs,
            front,
            span: front + bs,
        }
    }

    /// The key slots of a block's window, `j (1, span)`, and each query's distance to each
    /// slot, query position - key position `(bs, span)`.
    fn distances(&self, dev: tch::Device) -> (Tensor, Tensor) {
        let i = Tensor::arange(self.bs, (Kind::Int64, dev)).view([self.bs, 1]);
        let j = Tensor::arange(self.span, (Kind::Int64, dev)).view([1, self.span]);
        let dist = &i - &j + self.front;
        (j, dist)
    }
}

/// Blocked causal sliding-window attention (see the module doc). `window >= 0`.
pub fn sliding_window_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: i64,
    alibi: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let l = WindowBlocks::new(q, k, v, window);
    let (b, hq, hkv, g, t, d) = (l.b, l.hq, l.hkv, l.g, l.t, l.d);
    let (bs, nb, tp, front, span) = (l.bs, l.nb, l.tp, l.front, l.span);
    let dev = q.device();

    // Keys padded with `front` masked slots before position 0 and up to `tp` after, then cut
    // into overlapping windows: block n holds key positions n*bs - front .. n*bs + bs.
    let blocks = |x: &Tensor| x.constant_pad_nd([0, 0, front, tp - t]).unfold(2, span, bs); // (B, Hkv, nb, D, span)
    let kt = blocks(k).unsqueeze(2); // (B, Hkv, 1, nb, D, span)
    let vb = blocks(v).transpose(-1, -2).unsqueeze(2); // (B, Hkv, 1, nb, span, D)
    let qb = q
        .constant_pad_nd([0, 0, 0, tp - t])
        .reshape([b, hkv, g, nb, bs, d]);
    let mut scores = qb.matmul(&kt).to_kind(Kind::Float) * scale; // (B, Hkv, G, nb, bs, span)

    let (j, dist) = l.distances(dev);
    let n = Tensor::arange(nb, (Kind::Int64, dev)).view([nb, 1, 1]);
    let key_pos = n * bs - front + &j; // (nb, 1, span)
    let visible = dist
        .ge(0)
        .logical_and(&dist.le(window))
        .logical_and(&key_pos.ge(0)); // (nb, bs, span)
    if let Some(m) = alibi {
        scores = scores.g_add(&alibi_bias(m, hkv, &dist).unsqueeze(2)); // over blocks
    }
    let scores = scores.masked_fill(&visible.logical_not(), f64::NEG_INFINITY);
    let p = masked_softmax(&scores).to_kind(v.kind());
    let o = p.matmul(&vb); // (B, Hkv, G, nb, bs, D)
    o.reshape([b, hq, tp, d]).narrow(2, 0, t)
}

/// Sliding-window attention by whichever implementation suits the input: the kernel of
/// `cuda/swa_fwd.cu`, `cuda/swa_bwd.cu` for inputs it takes ([`kernel_supports`]); else on a GPU in bf16/fp16 the
/// blocked layout through libtorch's fused attention ([`sliding_window_attention_sdpa`]);
/// the reference otherwise (and with `LCM_REFERENCE_OPS=1`).
pub fn sliding_window_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: i64,
    alibi: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    #[cfg(lcm_cuda)]
    if super::use_kernels(q.device()) && kernel_supports(q, k, v, alibi, scale) && window >= 0 {
        let path = attn_path_on(q.device(), q.size()[3]);
        return swa_cuda(q, k, v, Some(window), alibi, scale, path)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let half = matches!(q.kind(), Kind::BFloat16 | Kind::Half);
    if half && q.device().is_cuda() && !super::reference_forced() {
        return sliding_window_attention_sdpa(q, k, v, window, alibi, scale);
    }
    sliding_window_attention_reference(q, k, v, window, alibi, scale)
}

/// The blocked sliding window of [`sliding_window_attention_reference`] (query blocks of
/// `bs` rows against their own and the previous blocks' keys) run by libtorch's
/// `scaled_dot_product_attention` with an additive bias (the memory-efficient kernel on a
/// GPU): the `(bs, span)` scores never reach memory. The bias, ALiBi and the window mask, is
/// the same for every block but the first, whose keys before position 0 are masked too, so
/// it is two calls. The bias is in the input dtype (SDPA's rule): a bf16 ALiBi term is off
/// by up to 2^-9 of itself, which matters only where `exp(bias)` is already negligible.
/// Test: `tests/ops_swa.rs`.
pub fn sliding_window_attention_sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: i64,
    alibi: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let l = WindowBlocks::new(q, k, v, window);
    let (b, hq, hkv, g, t, d) = (l.b, l.hq, l.hkv, l.g, l.t, l.d);
    let (bs, nb, tp, front, span) = (l.bs, l.nb, l.tp, l.front, l.span);
    let dev = q.device();

    // (B, H, nb, bs, D) -> (B*nb, H, bs, D)
    let qb = q
        .constant_pad_nd([0, 0, 0, tp - t])
        .reshape([b, hq, nb, bs, d])
        .permute([0, 2, 1, 3, 4])
        .reshape([b * nb, hq, bs, d]);
    // Key windows (B*nb, Hq, span, D), kv heads repeated over their query group.
    let windows = |x: &Tensor| {
        x.constant_pad_nd([0, 0, front, tp - t])
            .unfold(2, span, bs) // (B, Hkv, nb, D, span)
            .permute([0, 2, 1, 4, 3]) // (B, nb, Hkv, span, D)
            .unsqueeze(3)
            .expand([b, nb, hkv, g, span, d], false)
            .reshape([b * nb, hq, span, d])
    };
    let (kb, vb) = (windows(k), windows(v));

    let (j, dist) = l.distances(dev);
    let visible = dist.ge(0).logical_and(&dist.le(window)); // (bs, span)
    let bias_for = |visible: &Tensor| {
        let base = match alibi {
            Some(m) => -(m.to_kind(Kind::Float).view([hq, 1, 1]) * dist.to_kind(Kind::Float)),
            None => Tensor::zeros([1, bs, span], (Kind::Float, dev)),
        };
        base.masked_fill(&visible.logical_not(), f64::NEG_INFINITY)
            .to_kind(q.kind())
            .unsqueeze(0) // (1, H or 1, bs, span)
    };
    let attend = |qx: &Tensor, kx: &Tensor, vx: &Tensor, bias: &Tensor| {
        Tensor::scaled_dot_product_attention(qx, kx, vx, Some(bias), 0.0, false, scale, false)
    };
    // Block 0 (per batch row) sees no keys before position 0.
    let first_visible = visible.logical_and(&j.ge(front));
    let blocks = |x: &Tensor, from: i64, n: i64| {
        let s = x.size();
        x.view([b, nb, s[1], s[2], s[3]])
            .narrow(1, from, n)
            .reshape([b * n, s[1], s[2], s[3]])
    };
    let o0 = attend(
        &blocks(&qb, 0, 1),
        &blocks(&kb, 0, 1),
        &blocks(&vb, 0, 1),
        &bias_for(&first_visible),
    )
    .view([b, 1, hq, bs, d]);
    let o = if nb > 1 {
        let rest = attend(
            &blocks(&qb, 1, nb - 1),
            &blocks(&kb, 1, nb - 1),
            &blocks(&vb, 1, nb - 1),
            &bias_for(&visible),
        )
        .view([b, nb - 1, hq, bs, d]);
        Tensor::cat(&[o0, rest], 1)
    } else {
        o0
    };
    o.permute([0, 2, 1, 3, 4])
        .reshape([b, hq, tp, d])
        .narrow(2, 0, t)
}

/// Sliding-window attention of a segment's queries `q (B, Hq, Tq, D)` over the cached keys
/// followed by the segment's own, `k`/`v (B, Hkv, Tk, D)` with `Tk >= Tq`: query `i` sits at
/// key position `Tk - Tq + i`. Segmented inference calls this with the window's cache.
pub fn sliding_window_attention_cached(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: i64,
    alibi: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let (tq, tk) = (q.size()[2], k.size()[2]);
    assert!(tq <= tk, "sliding window: {tq} queries but only {tk} keys");
    if tq == tk {
        return sliding_window_attention(q, k, v, window, alibi, scale);
    }
    // Zero queries stand in for the cached positions; their rows are dropped. The cache
    // holds at most `window` positions, so this costs at most one extra block of rows.
    let padded = q.constant_pad_nd([0, 0, tk - tq, 0]);
    sliding_window_attention(&padded, k, v, window, alibi, scale).narrow(2, tk - tq, tq)
}

/// Whether the CUDA kernel (`cuda/swa_fwd.cu`, `cuda/swa_bwd.cu`) takes these inputs: CUDA tensors, bf16 q/k/v of
/// shapes `(B, Hq, T, D)` / `(B, Hkv, T, D)` with `Hq % Hkv == 0`, head dim 64 or 128, a
/// positive scale, and ALiBi slopes (if any) of shape `(Hq,)` on the same device. Anything
/// else runs the previous path (libtorch SDPA or the reference).
pub fn kernel_supports(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    alibi: Option<&Tensor>,
    scale: f64,
) -> bool {
    let (qs, ks) = (q.size(), k.size());
    super::attention_kernel_inputs(q, k, v, 4)
        && ks[0] == qs[0]
        && ks[2] == qs[2]
        && ks[1] > 0
        && qs[1] % ks[1] == 0
        && qs[0] >= 1
        && (1..i32::MAX as i64 / 2).contains(&qs[2])
        && qs[0] * qs[1] < i32::MAX as i64
        && scale > 0.0
        && alibi.is_none_or(|m| {
            m.size() == [qs[1]] && m.device() == q.device() && m.is_floating_point()
        })
}

/// The CUDA kernel (forward and backward through a C++ autograd Function): causal sliding
/// window (`window = Some(w)`: keys `t - w ..= t`, optional ALiBi slopes `(Hq,)`), or
/// bidirectional attention (`window = None`, no ALiBi). bf16 q, k, v (any strides whose
/// last dimension is dense); output bf16.
#[cfg(lcm_cuda)]
pub fn swa_cuda(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<i64>,
    alibi: Option<&Tensor>,
    scale: f64,
    path: AttnPath,
) -> Result<Tensor> {
    let causal = window.is_some();
    let [o] = lcm_swa(q, k, v, alibi, window.unwrap_or(0), causal, scale, path)?;
    Ok(o)
}

/// The forward kernel without autograd: `(o, lse)`, lse `(B, Hq, T)` fp32 (base 2).
#[cfg(lcm_cuda)]
pub fn swa_cuda_forward_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<i64>,
    alibi: Option<&Tensor>,
    scale: f64,
    path: AttnPath,
) -> Result<(Tensor, Tensor)> {
    let causal = window.is_some();
    let [o, lse] = lcm_swa_forward_raw(q, k, v, alibi, window.unwrap_or(0), causal, scale, path)?;
    Ok((o, lse))
}

/// The backward kernels without autograd: `(dq, dk, dv)` given the forward's `o` and `lse`.
#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
pub fn swa_cuda_backward_raw(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<i64>,
    alibi: Option<&Tensor>,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f64,
    path: AttnPath,
) -> Result<[Tensor; 3]> {
    let causal = window.is_some();
    lcm_swa_backward_raw(
        q,
        k,
        v,
        alibi,
        o,
        lse,
        dout,
        window.unwrap_or(0),
        causal,
        scale,
        path,
    )
}
