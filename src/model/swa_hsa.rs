//! SWA+HSA: sliding-window layers with Hierarchical Sparse Attention (seed-report 3.2, 3.4),
//! with a correct sliding window (the reference's is wrong, seed-report 9.12).
//!
//! ```text
//! tokens (N, L) -> embed -> lower blocks (sliding window, RoPE over absolute positions,
//!   q/k RMSNorm, GQA)
//!   -> chunking: each chunk of S positions plus a learned CLS -> encoder (bidirectional,
//!      in-chunk RoPE, Qwen2-style q/k norm and q/k/v bias) -> landmarks = lmk_proj(CLS out)
//!      (N, C, r, dr/r); memory k/v = k_proj/v_proj(chunk outputs) (N, C*S, Hkv, hd)
//!   -> per group: retrieval (per token and retrieval head: q_proj(norm(x)) . landmark,
//!      visible iff (d+1)*S <= t, top-k, descending, stick-breaking or softmax, fp32)
//!      -> one HSA layer: x + MLP(norm(x + o_proj(HSA(q_proj(norm(x))))))
//!      -> upper_layers/groups sliding-window blocks
//!   -> norm -> lm_head
//! ```
//! The chunking layer runs once, on the output of the lower layers; all groups read the
//! same memory. The chunking layer, the retrieval and the HSA attention are [`super::hsa`]'s,
//! shared with `ramba`. Parameter names: `embed.weight`, `lower.<i>.*`, `chunking.{cls_emb,
//! encoder.*, lmk_proj.weight, k_proj.weight, v_proj.weight, k_norm.weight}`,
//! `groups.<g>.retrieval.{norm.weight, q_proj.weight}`, `groups.<g>.hsa.{attn_norm,
//! q_proj, q_norm, o_proj, mlp_norm, mlp.*}`, `groups.<g>.layers.<i>.*`, `norm.weight`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::cache::{InferenceState, StateOptions};
use super::config::{HsaConfig, ModelConfig};
use super::flops;
use super::hsa::{self, Chunking, HsaAttention, HsaSpec, RetrievalLayer};
use super::layers::{embedding, AttnMask, AttnSpec, Block, LmHead, RmsNorm, SwiGlu};
use super::LanguageModel;
use crate::ops::Retrieval;

/// The HSA attention with its MLP: `x + MLP(norm(x + attn(x)))`.
#[derive(Debug)]
struct HsaLayer {
    attn: HsaAttention,
    mlp_norm: RmsNorm,
    mlp: SwiGlu,
}

#[derive(Debug)]
struct Group {
    retrieval: RetrievalLayer,
    hsa: HsaLayer,
    layers: Vec<Block>,
}

#[derive(Debug)]
pub struct SwaHsa {
    cfg: ModelConfig,
    spec: HsaSpec,
    embed: nn::Embedding,
    lower: Vec<Block>,
    chunking: Chunking,
    groups: Vec<Group>,
    norm: RmsNorm,
    lm_head: LmHead,
    step: u64,
}

/// What a forward produced besides the hidden states, for tests and analysis.
#[derive(Debug)]
pub struct SwaHsaOutput {
    /// Final-normed: `(N, L, d)`; logits are `SwaHsa::head` of it.
    pub hidden: Tensor,
    /// Per group: `(N, L, r, K)` weights and chunk indices (-1 = empty).
    pub retrievals: Vec<Retrieval>,
}

impl SwaHsa {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> crate::Result<Self> {
        let h = cfg.hsa.as_ref().ok_or_else(|| crate::Error::Config {
            key: "model.hsa".into(),
            message: "required for arch swa_hsa".into(),
        })?;
        let (dm, std, eps) = (cfg.d_model, cfg.init_std, cfg.norm_eps);
        let spec = AttnSpec {
            d_model: dm,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            mask: AttnMask::Sliding(cfg.window),
            positional: cfg.positional,
            rope_theta: cfg.rope_theta,
            qk_norm: cfg.qk_norm,
            qkv_bias: false,
            eps,
            std,
        };
        let hs = HsaSpec::of(cfg).expect("an swa_hsa config");
        let chunking = Chunking::new(vs / "chunking", cfg, hs);
        let per_group = h.upper_layers / h.groups;
        let groups = (0..h.groups)
            .map(|g| {
                let gp = vs / "groups" / g;
                let hp = &gp / "hsa";
                Group {
                    retrieval: RetrievalLayer::new(&gp / "retrieval", hs),
                    hsa: HsaLayer {
                        attn: HsaAttention::new(&hp, hs),
                        mlp_norm: RmsNorm::new(&hp / "mlp_norm", dm, eps),
                        mlp: SwiGlu::new(&hp / "mlp", dm, cfg.d_ff, std),
                    },
                    layers: (0..per_group)
                        .map(|i| Block::new(&gp / "layers" / i, spec, cfg.d_ff))
                        .collect(),
                }
            })
            .collect();
        let embed = embedding(vs / "embed", cfg.vocab_size, dm, std);
        Ok(SwaHsa {
            lower: (0..h.lower_layers)
                .map(|i| Block::new(vs / "lower" / i, spec, cfg.d_ff))
                .collect(),
            chunking,
            groups,
            norm: RmsNorm::new(vs / "norm", dm, eps),
            lm_head: LmHead::new(vs, &embed, cfg),
            embed,
            cfg: cfg.clone(),
            spec: hs,
            step: 0,
        })
    }

    fn hsa(&self) -> &HsaConfig {
        self.cfg.hsa.as_ref().expect("validated at construction")
    }

    /// The HSA layer over memory `k`/`v (N, C*S, Hkv, hd)`, chunks named by `r.indices`.
    fn hsa_layer(
        &self,
        layer: &HsaLayer,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        r: &Retrieval,
    ) -> Tensor {
        let o = layer.attn.forward(x, k, v, r);
        if self.step < self.hsa().residual_warmup_steps {
            let r = x + o; // warm-up layout: the HSA output joins the residual stream
            &r + layer.mlp.forward(&layer.mlp_norm.forward(&r))
        } else {
            x + layer.mlp.forward(&layer.mlp_norm.forward(&(x + o)))
        }
    }

    /// The forward pass with its retrievals.
    pub fn forward_detailed(&self, tokens: &Tensor, train: bool) -> SwaHsaOutput {
        let s = self.hsa().chunk_size;
        let l = tokens.size()[1];
        assert!(
            l % s == 0,
            "swa_hsa: sequence length {l} is not a multiple of the chunk size {s}"
        );
        let mut x = self.embed.forward(tokens);
        for layer in &self.lower {
            x = layer.forward(&x);
        }
        let mem = self.chunking.forward(&x);
        let mut retrievals = Vec::new();
        for g in &self.groups {
            let r = g.retrieval.forward(&x, &mem, train);
            x = self.hsa_layer(&g.hsa, &x, &mem.k, &mem.v, &r);
            for layer in &g.layers {
                x = layer.forward(&x);
            }
            retrievals.push(r);
        }
        SwaHsaOutput {
            hidden: self.norm.forward(&x),
            retrievals,
        }
    }
}

impl SwaHsa {
    /// One inference segment: `tokens (N, c*S)` after what `state` has seen. Returns the
    /// final-normed hidden states `(N, c*S, d)`.
    pub fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        let l = tokens.size()[1];
        let mut x = self.embed.forward(tokens);
        let mut caches = state.attn.iter_mut();
        for layer in &self.lower {
            x = layer.forward_cached(&x, caches.next().expect("one cache per layer"));
        }
        let mem = self.chunking.forward(&x);
        let store = state
            .store
            .as_mut()
            .expect("an SWA+HSA state has a chunk store");
        self.chunking.append(store, &mem);
        let first = state.positions;
        for g in &self.groups {
            let r = g.retrieval.segment(&x, store, first);
            let (k, v, r) = hsa::segment_memory(store, r);
            x = self.hsa_layer(&g.hsa, &x, &k, &v, &r);
            for layer in &g.layers {
                x = layer.forward_cached(&x, caches.next().expect("one cache per layer"));
            }
        }
        state.positions += l;
        self.norm.forward(&x)
    }
}

impl LanguageModel for SwaHsa {
    fn hidden(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.forward_detailed(tokens, train).hidden
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn length_multiple(&self) -> i64 {
        self.hsa().chunk_size
    }

    /// Per token: the sliding-window blocks (lower and upper, `W` keys); the encoder blocks
    /// over `S+1` keys, times `(S+1)/S` for the CLS position; the memory k/v and landmark
    /// projections; per group the retrieval query projection and scores (`C/2` landmarks
    /// on average), the HSA layer's q/o projections, `K*S` keys and MLP; the output head;
    /// forward+backward = 3 x forward ([`flops`]).
    fn flops_per_token(&self, t: i64) -> f64 {
        let (cfg, h, hs) = (&self.cfg, self.hsa(), &self.spec);
        let window_keys = flops::mean_window_keys(t, cfg.window);
        let swa_layers = (h.lower_layers + h.upper_layers) as f64;
        let mut f = swa_layers * flops::block_forward(cfg, window_keys);
        f += hsa::chunking_flops(cfg, hs);
        let per_group = hsa::retrieval_flops(hs, t)
            + hsa::attention_flops(cfg, hs, t)
            + 6.0 * cfg.d_model as f64 * cfg.d_ff as f64;
        f += h.groups as f64 * per_group;
        3.0 * (f + flops::lm_head_forward(cfg))
    }

    fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    fn new_state(&self, opts: &StateOptions) -> InferenceState {
        let h = self.hsa();
        let layers = (h.lower_layers + h.upper_layers) as usize;
        InferenceState::new(layers, 0, Some(self.spec.new_store(opts)))
    }

    fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        SwaHsa::forward_segment(self, tokens, state)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        self.lm_head.forward(hidden)
    }
}
