//! The Hierarchical Sparse Attention pieces that `swa_hsa` and `ramba` share (seed-report
//! 3.2): the chunking layer that builds the chunk memory, the per-token retrieval, and the
//! HSA attention, each for the full forward and for segmented inference over a
//! [`ChunkStore`].
//!
//! ```text
//! chunking:   x (N, L, d) -> each chunk of S positions plus a learned CLS -> encoder
//!             (bidirectional, in-chunk RoPE, Qwen2-style q/k norm and q/k/v bias)
//!             -> landmarks = lmk_proj(CLS out) (N, C, r, dr/r);
//!                memory k/v = k_proj/v_proj(chunk outputs) (N, C*S, Hkv, hd), k normed
//!                with qk_norm
//! retrieval:  per token and retrieval head, q_proj(norm(x)) . landmark, visible iff
//!             (d+1)*S <= t, top-k, descending, stick-breaking or softmax, fp32
//! attention:  o_proj(HSA(q_proj(attn_norm(x)) (q normed with qk_norm), memory, retrieval))
//! ```
//! What surrounds the attention (the residual, an MLP) is the arch's. The layers take their
//! inputs in the weights' dtype. Parameter names, under the arch's paths: `cls_emb`,
//! `encoder.*`, `{lmk_proj, k_proj, v_proj}.weight`, `k_norm.weight` (chunking);
//! `{norm, q_proj}.weight` (retrieval); `{attn_norm, q_proj, q_norm, o_proj}.weight`
//! (attention).

use tch::nn::{self, Module};
use tch::Tensor;

use super::cache::{ChunkStore, StateOptions};
use super::config::{Arch, ModelConfig, Weighting};
use super::encoder::{ChunkEncoder, EncoderSpec};
use super::flops;
use super::layers::{linear, RmsNorm};
use crate::ops::{self, Retrieval, SlotWeighting};

/// The HSA settings of `swa_hsa` (`model.hsa`) or `ramba` (`model.ramba`) with the
/// model's shape.
#[derive(Debug, Clone, Copy)]
pub struct HsaSpec {
    pub chunk_size: i64,
    pub topk: i64,
    pub encoder_layers: i64,
    pub encoder_kv_heads: i64,
    pub retrieval_heads: i64,
    pub retrieval_dim: i64,
    pub weighting: Weighting,
    pub softmax_one: bool,
    pub gumbel: bool,
    pub d_model: i64,
    pub n_heads: i64,
    /// Key/value heads of the chunk memory.
    pub kv_heads: i64,
    pub head_dim: i64,
    pub qk_norm: bool,
    pub eps: f64,
    pub std: f64,
}

impl HsaSpec {
    /// The spec of a `swa_hsa` or `ramba` config; None for the other archs.
    pub fn of(cfg: &ModelConfig) -> Option<Self> {
        let base = |chunk_size, topk, encoder_layers, retrieval_heads, retrieval_dim| HsaSpec {
            chunk_size,
            topk,
            encoder_layers,
            encoder_kv_heads: cfg.n_kv_heads,
            retrieval_heads,
            retrieval_dim,
            weighting: Weighting::StickBreaking,
            softmax_one: false,
            gumbel: false,
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim(),
            qk_norm: cfg.qk_norm,
            eps: cfg.norm_eps,
            std: cfg.init_std,
        };
        match cfg.arch {
            Arch::SwaHsa => cfg.hsa.as_ref().map(|h| HsaSpec {
                weighting: h.weighting,
                softmax_one: h.softmax_one,
                gumbel: h.gumbel,
                ..base(
                    h.chunk_size,
                    h.topk,
                    h.encoder_layers,
                    h.retrieval_heads,
                    h.retrieval_dim,
                )
            }),
            Arch::Ramba => cfg.ramba.as_ref().map(|r| HsaSpec {
                encoder_kv_heads: r.encoder_kv_heads,
                weighting: r.weighting,
                softmax_one: r.softmax_one,
                gumbel: r.gumbel,
                ..base(
                    r.chunk_size,
                    r.topk,
                    r.encoder_layers,
                    r.retrieval_heads,
                    r.retrieval_dim,
                )
            }),
            _ => None,
        }
    }

    fn slot_weighting(&self) -> SlotWeighting {
        match self.weighting {
            Weighting::StickBreaking => SlotWeighting::StickBreaking,
            Weighting::Softmax => SlotWeighting::Softmax,
        }
    }

    /// Width of the memory keys (and values) over all kv heads.
    fn kv_dim(&self) -> i64 {
        self.kv_heads * self.head_dim
    }

    /// A chunk store for `opts` (the sequence's chunks, keys/values and landmarks).
    pub fn new_store(&self, opts: &StateOptions) -> ChunkStore {
        let chunks = (opts.capacity_tokens + self.chunk_size - 1) / self.chunk_size;
        let r = self.retrieval_heads;
        ChunkStore::new(
            opts.batch,
            chunks,
            self.chunk_size,
            self.kv_heads,
            self.head_dim,
            &[r, self.retrieval_dim / r],
            opts.kind,
            opts.device,
            opts.placement,
        )
    }
}

/// The chunk memory of a sequence (or segment) that the HSA layers read.
pub struct Memory {
    /// `(N, C*S, Hkv, hd)`.
    pub k: Tensor,
    pub v: Tensor,
    /// `(N, C, r, dr/r)`.
    pub landmarks: Tensor,
}

/// The chunking layer: encoder, landmark and memory projections.
#[derive(Debug)]
pub struct Chunking {
    spec: HsaSpec,
    cls_emb: Tensor,
    encoder: ChunkEncoder,
    lmk_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    k_norm: Option<RmsNorm>,
}

impl Chunking {
    pub fn new(vs: nn::Path, cfg: &ModelConfig, spec: HsaSpec) -> Self {
        let (dm, std) = (spec.d_model, spec.std);
        Chunking {
            cls_emb: vs.var(
                "cls_emb",
                &[1, 1, dm],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            ),
            encoder: ChunkEncoder::new(
                &vs / "encoder",
                cfg,
                EncoderSpec {
                    layers: spec.encoder_layers,
                    prenorm: false,
                    qwen_style: true,
                    kv_heads: spec.encoder_kv_heads,
                },
            ),
            lmk_proj: linear(&vs / "lmk_proj", dm, spec.retrieval_dim, std),
            k_proj: linear(&vs / "k_proj", dm, spec.kv_dim(), std),
            v_proj: linear(&vs / "v_proj", dm, spec.kv_dim(), std),
            k_norm: spec
                .qk_norm
                .then(|| RmsNorm::new(&vs / "k_norm", spec.head_dim, spec.eps)),
            spec,
        }
    }

    /// The memory of `x (N, C*S, d)` (the raw residual stream, in the weights' dtype).
    pub fn forward(&self, x: &Tensor) -> Memory {
        let sp = &self.spec;
        let (n, l, dm) = (x.size()[0], x.size()[1], sp.d_model);
        let (s, c) = (sp.chunk_size, l / sp.chunk_size);
        let cls = self.cls_emb.to_kind(x.kind()).expand([n * c, 1, dm], false);
        let enc = self
            .encoder
            .forward(&Tensor::cat(&[x.view([n * c, s, dm]), cls], 1));
        let r = sp.retrieval_heads;
        let landmarks =
            self.lmk_proj
                .forward(&enc.select(1, s))
                .view([n, c, r, sp.retrieval_dim / r]);
        let body = enc.narrow(1, 0, s);
        let (hkv, hd) = (sp.kv_heads, sp.head_dim);
        let mut k = self.k_proj.forward(&body).view([n, l, hkv, hd]);
        if let Some(kn) = &self.k_norm {
            k = kn.forward(&k);
        }
        let v = self.v_proj.forward(&body).view([n, l, hkv, hd]);
        Memory { k, v, landmarks }
    }

    /// Appends the memory `mem` of a segment of `N` rows to `store`.
    pub fn append(&self, store: &mut ChunkStore, mem: &Memory) {
        let sp = &self.spec;
        let n = mem.k.size()[0];
        let kv = |m: &Tensor| m.view([n, -1, sp.chunk_size, sp.kv_heads, sp.head_dim]);
        store.append(&kv(&mem.k), &kv(&mem.v), &mem.landmarks);
    }
}

/// The retrieval layer: per-token queries against the landmarks.
#[derive(Debug)]
pub struct RetrievalLayer {
    spec: HsaSpec,
    norm: RmsNorm,
    q_proj: nn::Linear,
}

impl RetrievalLayer {
    pub fn new(vs: nn::Path, spec: HsaSpec) -> Self {
        RetrievalLayer {
            norm: RmsNorm::new(&vs / "norm", spec.d_model, spec.eps),
            q_proj: linear(&vs / "q_proj", spec.d_model, spec.retrieval_dim, spec.std),
            spec,
        }
    }

    /// The retrieval queries of hidden states `x (N, L, d)`: `(N, L, r, retrieval_dim / r)`
    /// over the `r` retrieval heads.
    fn queries(&self, x: &Tensor) -> Tensor {
        let sp = &self.spec;
        let (n, l) = (x.size()[0], x.size()[1]);
        let r = sp.retrieval_heads;
        self.q_proj
            .forward(&self.norm.forward(x))
            .view([n, l, r, sp.retrieval_dim / r])
    }

    /// Retrieval over the memory of the whole sequence (Gumbel noise when `train` and the
    /// config asks for it).
    pub fn forward(&self, x: &Tensor, mem: &Memory, train: bool) -> Retrieval {
        let sp = &self.spec;
        ops::token_retrieval(
            &self.queries(x),
            &mem.landmarks,
            sp.chunk_size,
            sp.topk,
            sp.slot_weighting(),
            train && sp.gumbel,
        )
    }

    /// Retrieval for a segment whose first token is number `first`, against every landmark
    /// in `store` (the segment's own chunks included).
    pub fn segment(&self, x: &Tensor, store: &ChunkStore, first: i64) -> Retrieval {
        let sp = &self.spec;
        ops::token_retrieval_blocked(
            &self.queries(x),
            &store.landmarks(),
            first,
            sp.chunk_size,
            sp.topk,
            sp.slot_weighting(),
            ops::retrieval::RETRIEVAL_BLOCK,
        )
    }
}

/// Only the chunks a segment's retrieval `r` names, from `store`: keys and values
/// `(N, U*S, Hkv, hd)` on the compute device and `r` renumbered into them, so that the HSA
/// op never touches (or copies) the whole memory.
pub fn segment_memory(store: &ChunkStore, r: Retrieval) -> (Tensor, Tensor, Retrieval) {
    let (k, v, local) = store.compact(&r.gather_indices());
    let flat = |m: Tensor| {
        let s = m.size();
        m.reshape([s[0], -1, s[3], s[4]])
    };
    let r = Retrieval {
        indices: local.masked_fill(&r.indices.lt(0), -1),
        weights: r.weights,
    };
    (flat(k), flat(v), r)
}

/// The HSA attention: `o_proj(HSA(q_proj(attn_norm(x))))` over a memory, without the
/// residual.
#[derive(Debug)]
pub struct HsaAttention {
    spec: HsaSpec,
    attn_norm: RmsNorm,
    q_proj: nn::Linear,
    q_norm: Option<RmsNorm>,
    o_proj: nn::Linear,
}

impl HsaAttention {
    pub fn new(vs: &nn::Path, spec: HsaSpec) -> Self {
        let (dm, hd, std) = (spec.d_model, spec.head_dim, spec.std);
        HsaAttention {
            attn_norm: RmsNorm::new(vs / "attn_norm", dm, spec.eps),
            q_proj: linear(vs / "q_proj", dm, spec.n_heads * hd, std),
            q_norm: spec
                .qk_norm
                .then(|| RmsNorm::new(vs / "q_norm", hd, spec.eps)),
            o_proj: linear(vs / "o_proj", spec.n_heads * hd, dm, std),
            spec,
        }
    }

    /// `x (N, L, d)` (weights' dtype) over memory `k`/`v (N, M*S, Hkv, hd)`, the chunks
    /// named by `r.indices (N, L, r, K)`: `(N, L, d)`.
    pub fn forward(&self, x: &Tensor, k: &Tensor, v: &Tensor, r: &Retrieval) -> Tensor {
        let sp = &self.spec;
        let (n, l) = (x.size()[0], x.size()[1]);
        let (hq, hkv, hd) = (sp.n_heads, sp.kv_heads, sp.head_dim);
        let mut q = self
            .q_proj
            .forward(&self.attn_norm.forward(x))
            .view([n, l, hq, hd]);
        if let Some(qn) = &self.q_norm {
            q = qn.forward(&q);
        }
        // One retrieval head serves every kv head.
        let nk = r.indices.size()[3];
        let w = r.weights.expand([n, l, hkv, nk], false);
        let idx = r.indices.expand([n, l, hkv, nk], false);
        let scale = 1.0 / (hd as f64).sqrt();
        let o = ops::hsa(&q, k, v, &w, &idx, sp.chunk_size, scale, sp.softmax_one);
        self.o_proj.forward(&o.reshape([n, l, hq * hd]))
    }
}

/// Forward FLOPs per token of the chunking layer: the encoder blocks over `S+1` keys,
/// times `(S+1)/S` for the CLS position, and the memory k/v and landmark projections.
pub fn chunking_flops(cfg: &ModelConfig, spec: &HsaSpec) -> f64 {
    let s = spec.chunk_size as f64;
    let dm = spec.d_model as f64;
    let enc_kv = (spec.encoder_kv_heads * spec.head_dim) as f64;
    let inner = (spec.n_heads * spec.head_dim) as f64;
    let enc_weights = 2.0 * dm * inner + 2.0 * dm * enc_kv + 3.0 * dm * cfg.d_ff as f64;
    let enc_block = 2.0 * enc_weights + flops::attention(cfg, s + 1.0);
    let ratio = (s + 1.0) / s;
    ratio * spec.encoder_layers as f64 * enc_block
        + 4.0 * dm * spec.kv_dim() as f64
        + 2.0 * dm * spec.retrieval_dim as f64 / s
}

/// Forward FLOPs per token of one retrieval at sequence length `t`: the query projection
/// and the scores against `C/2` landmarks on average.
pub fn retrieval_flops(spec: &HsaSpec, t: i64) -> f64 {
    let c = (t / spec.chunk_size).max(1) as f64;
    let (dm, dr) = (spec.d_model as f64, spec.retrieval_dim as f64);
    2.0 * dm * dr + 2.0 * dr * c / 2.0
}

/// Forward FLOPs per token of one HSA attention at sequence length `t`: the q/o
/// projections and `K*S` keys.
pub fn attention_flops(cfg: &ModelConfig, spec: &HsaSpec, t: i64) -> f64 {
    let c = (t / spec.chunk_size).max(1) as f64;
    let inner = (spec.n_heads * spec.head_dim) as f64;
    let k = (spec.topk as f64).min(c);
    4.0 * spec.d_model as f64 * inner + flops::attention(cfg, k * spec.chunk_size as f64)
}
