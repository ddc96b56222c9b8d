//! RAMba: Mamba2 blocks with Hierarchical Sparse Attention (seed-report 3.3), as the
//! reference's `modeling_ramba.py` wires them.
//!
//! ```text
//! tokens (N, L) -> embed -> lower_layers Mamba2 blocks (x + mixer(norm(x)), residual fp32)
//!   -> chunking layer on the residual stream (encoder with CLS -> landmarks, memory k/v;
//!      the memory is built once and every HSA layer reads it)
//!   -> per group: one retrieval (per token, against the landmarks), then
//!        [HSA layer: x + o_proj(HSA(q_proj(norm(x))))  (no MLP)
//!         -> mamba_per_hsa Mamba2 blocks] x (upper_layers / groups / mamba_per_hsa)
//!      every HSA layer of a group reading that group's retrieval
//!   -> norm -> lm_head (tied to the embedding by default)
//! ```
//! RAMba-370M: 24 lower blocks, chunking, one retrieval, 3 x [HSA, 8 blocks]. The chunking
//! layer, the retrieval and the HSA attention are [`super::hsa`]'s (shared with `swa_hsa`);
//! the Mamba2 block is [`super::mamba2`]'s. The residual stream is fp32 (mamba_ssm's
//! `residual_in_fp32`); the chunking layer, the retrieval and the HSA attention read it cast
//! to the weights' dtype, and the final norm's output is cast to it for the head.
//!
//! In training, `train_segment` restarts every Mamba2 block from the zero state every that
//! many tokens (the reference's `segment_size`) while HSA still spans the whole sequence.
//!
//! Segmented inference carries each Mamba2 block's state ([`super::mamba2::Mamba2State`]:
//! conv inputs and SSM state, constant in the length) and the chunk memory (a
//! [`super::cache::ChunkStore`], offloadable); a segment appends its chunks to the memory
//! before its retrievals, as the full forward's tokens see every completed chunk.
//!
//! Parameter names: `embed.weight`, `lower.<i>.{norm.weight, mixer.*}`, `chunking.{cls_emb,
//! encoder.*, lmk_proj.weight, k_proj.weight, v_proj.weight, k_norm.weight}`,
//! `groups.<g>.retrieval.{norm, q_proj}.weight`, `groups.<g>.hsa.<j>.{attn_norm, q_proj,
//! q_norm, o_proj}.weight` (HSA layer `j` of the group), `groups.<g>.layers.<i>.{norm.weight,
//! mixer.*}` (the group's Mamba2 blocks in order: HSA layer `j` is followed by blocks
//! `j * mamba_per_hsa ..`), `norm.weight`, `lm_head.weight` (untied only).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::cache::{InferenceState, StateOptions};
use super::config::{ModelConfig, RambaConfig};
use super::flops;
use super::hsa::{self, Chunking, HsaAttention, HsaSpec, RetrievalLayer};
use super::layers::{embedding, LmHead, RmsNorm};
use super::mamba2::{Mamba2Block, Mamba2Config};
use super::LanguageModel;
use crate::ops::Retrieval;

#[derive(Debug)]
struct Group {
    retrieval: RetrievalLayer,
    hsa: Vec<HsaAttention>,
    /// `mamba_per_hsa` blocks after each HSA layer, in order.
    layers: Vec<Mamba2Block>,
}

#[derive(Debug)]
pub struct Ramba {
    cfg: ModelConfig,
    spec: HsaSpec,
    embed: nn::Embedding,
    lower: Vec<Mamba2Block>,
    chunking: Chunking,
    groups: Vec<Group>,
    norm: RmsNorm,
    lm_head: LmHead,
}

/// What a forward produced besides the hidden states, for tests and analysis.
#[derive(Debug)]
pub struct RambaOutput {
    /// Final-normed `(N, L, d)` in the weights' dtype; logits are `Ramba::head` of it.
    pub hidden: Tensor,
    /// Per group: `(N, L, r, K)` weights and chunk indices (-1 = empty).
    pub retrievals: Vec<Retrieval>,
}

impl Ramba {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> crate::Result<Self> {
        let missing = |key: &str| crate::Error::Config {
            key: key.into(),
            message: "required for arch ramba".into(),
        };
        let r = cfg.ramba.as_ref().ok_or_else(|| missing("model.ramba"))?;
        let m = cfg.mamba2.as_ref().ok_or_else(|| missing("model.mamba2"))?;
        m.validate("model.mamba2")?;
        let spec = HsaSpec::of(cfg).expect("a ramba config");
        let block = |p: nn::Path| Mamba2Block::new(p, m);
        let lower = (0..r.lower_layers)
            .map(|i| block(vs / "lower" / i))
            .collect::<crate::Result<Vec<_>>>()?;
        let chunking = Chunking::new(vs / "chunking", cfg, spec);
        let per_group = r.upper_layers / r.groups;
        let groups = (0..r.groups)
            .map(|g| -> crate::Result<Group> {
                let gp = vs / "groups" / g;
                Ok(Group {
                    retrieval: RetrievalLayer::new(&gp / "retrieval", spec),
                    hsa: (0..r.hsa_per_group())
                        .map(|j| HsaAttention::new(&(&gp / "hsa" / j), spec))
                        .collect(),
                    layers: (0..per_group)
                        .map(|i| block(&gp / "layers" / i))
                        .collect::<crate::Result<_>>()?,
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let embed = embedding(vs / "embed", cfg.vocab_size, cfg.d_model, cfg.init_std);
        Ok(Ramba {
            lower,
            chunking,
            groups,
            norm: RmsNorm::new(vs / "norm", cfg.d_model, cfg.norm_eps),
            lm_head: LmHead::new(vs, &embed, cfg),
            embed,
            spec,
            cfg: cfg.clone(),
        })
    }

    fn ramba(&self) -> &RambaConfig {
        self.cfg.ramba.as_ref().expect("validated at construction")
    }

    fn mamba2(&self) -> &Mamba2Config {
        self.cfg.mamba2.as_ref().expect("validated at construction")
    }

    /// The weights' dtype (the embedding's).
    fn kind(&self) -> Kind {
        self.embed.ws.kind()
    }

    /// A Mamba2 block over `x (N, L, d)` from the zero state; in training with
    /// `train_segment` the state restarts every `train_segment` tokens.
    fn mamba(&self, block: &Mamba2Block, x: &Tensor, train: bool) -> Tensor {
        let seg = self.ramba().train_segment;
        let (n, l, d) = (x.size()[0], x.size()[1], x.size()[2]);
        if !train || seg <= 0 || l <= seg {
            return block.forward(x);
        }
        let whole = l / seg * seg;
        let head = block
            .forward(&x.narrow(1, 0, whole).reshape([n * (whole / seg), seg, d]))
            .reshape([n, whole, d]);
        if whole == l {
            head
        } else {
            let tail = block.forward(&x.narrow(1, whole, l - whole));
            Tensor::cat(&[head, tail], 1)
        }
    }

    /// The final norm, in the weights' dtype.
    fn finish(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x).to_kind(self.kind())
    }

    /// The forward pass with its retrievals.
    pub fn forward_detailed(&self, tokens: &Tensor, train: bool) -> RambaOutput {
        let s = self.spec.chunk_size;
        let l = tokens.size()[1];
        assert!(
            l % s == 0,
            "ramba: sequence length {l} is not a multiple of the chunk size {s}"
        );
        let kind = self.kind();
        let m = self.ramba().mamba_per_hsa as usize;
        let mut x = self.embed.forward(tokens);
        for block in &self.lower {
            x = self.mamba(block, &x, train);
        }
        let mem = self.chunking.forward(&x.to_kind(kind));
        let mut retrievals = Vec::new();
        for g in &self.groups {
            let r = g.retrieval.forward(&x.to_kind(kind), &mem, train);
            for (attn, blocks) in g.hsa.iter().zip(g.layers.chunks(m)) {
                x = &x + attn.forward(&x.to_kind(kind), &mem.k, &mem.v, &r);
                for block in blocks {
                    x = self.mamba(block, &x, train);
                }
            }
            retrievals.push(r);
        }
        RambaOutput {
            hidden: self.finish(&x),
            retrievals,
        }
    }

    /// One inference segment: `tokens (N, c*S)` after what `state` has seen. Returns the
    /// final-normed hidden states `(N, c*S, d)`.
    pub fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        let l = tokens.size()[1];
        let kind = self.kind();
        let m = self.ramba().mamba_per_hsa as usize;
        let mut x = self.embed.forward(tokens);
        let mut states = state.mamba.iter_mut();
        let mut next = || states.next().expect("one state per Mamba2 block");
        for block in &self.lower {
            x = block.forward_segment(&x, next());
        }
        let mem = self.chunking.forward(&x.to_kind(kind));
        let store = state
            .store
            .as_mut()
            .expect("a RAMba state has a chunk store");
        self.chunking.append(store, &mem);
        let first = state.positions;
        for g in &self.groups {
            let r = g.retrieval.segment(&x.to_kind(kind), store, first);
            // The group's chunks, fetched once for all its HSA layers.
            let (k, v, r) = hsa::segment_memory(store, r);
            for (attn, blocks) in g.hsa.iter().zip(g.layers.chunks(m)) {
                x = &x + attn.forward(&x.to_kind(kind), &k, &v, &r);
                for block in blocks {
                    x = block.forward_segment(&x, next());
                }
            }
        }
        state.positions += l;
        self.finish(&x)
    }

    /// Mamba2 blocks, lower and upper.
    fn blocks(&self) -> impl Iterator<Item = &Mamba2Block> {
        self.lower
            .iter()
            .chain(self.groups.iter().flat_map(|g| g.layers.iter()))
    }
}

/// Forward FLOPs per token of a Mamba2 block at sequence length `t`: in_proj and out_proj,
/// and the chunked scan's products (`C.B` scores and their product with `x` over the
/// `(Q+1)/2` earlier tokens of a chunk of `Q = min(chunk_size, t)`, the chunk's own state
/// and the inter-chunk output, `2 H P N` each). The depthwise conv, gate and norms are
/// not matrix products.
pub fn mamba2_block_flops(m: &Mamba2Config, t: i64) -> f64 {
    let (d, di) = (m.d_model as f64, m.d_inner() as f64);
    let (h, p, n, g) = (
        m.nheads() as f64,
        m.headdim as f64,
        m.d_state as f64,
        m.ngroups as f64,
    );
    let q = m.chunk_size.min(t.max(1)) as f64;
    let keys = (q + 1.0) / 2.0;
    2.0 * d * m.d_in_proj() as f64 + 2.0 * di * d + 2.0 * (g * n + h * p) * keys + 4.0 * h * p * n
}

impl LanguageModel for Ramba {
    fn hidden(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.forward_detailed(tokens, train).hidden
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn length_multiple(&self) -> i64 {
        self.spec.chunk_size
    }

    /// Per token: the Mamba2 blocks ([`mamba2_block_flops`]); the chunking layer (encoder
    /// over `S+1` keys times `(S+1)/S`, memory and landmark projections); per group the
    /// retrieval query projection and scores (`C/2` landmarks on average) and per HSA layer
    /// its q/o projections and `K*S` keys; the output head; forward+backward = 3 x forward
    /// ([`flops`]).
    fn flops_per_token(&self, t: i64) -> f64 {
        let (cfg, r, hs) = (&self.cfg, self.ramba(), &self.spec);
        let blocks = (r.lower_layers + r.upper_layers) as f64;
        let mut f = blocks * mamba2_block_flops(self.mamba2(), t);
        f += hsa::chunking_flops(cfg, hs);
        f += r.groups as f64
            * (hsa::retrieval_flops(hs, t)
                + r.hsa_per_group() as f64 * hsa::attention_flops(cfg, hs, t));
        3.0 * (f + flops::lm_head_forward(cfg))
    }

    fn new_state(&self, opts: &StateOptions) -> InferenceState {
        let mut state = InferenceState::new(0, 0, Some(self.spec.new_store(opts)));
        state.mamba = self
            .blocks()
            .map(|b| b.new_state(opts.batch, opts.device))
            .collect();
        state
    }

    fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        Ramba::forward_segment(self, tokens, state)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        self.lm_head.forward(&hidden.to_kind(self.kind()))
    }
}
