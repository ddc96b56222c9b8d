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
//! same memory. Parameter names: `embed.weight`, `lower.<i>.*`, `chunking.{cls_emb,
//! encoder.*, lmk_proj.weight, k_proj.weight, v_proj.weight, k_norm.weight}`,
//! `groups.<g>.retrieval.{norm.weight, q_proj.weight}`, `groups.<g>.hsa.{attn_norm,
//! q_proj, q_norm, o_proj, mlp_norm, mlp.*}`, `groups.<g>.layers.<i>.*`, `norm.weight`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::cache::{ChunkStore, InferenceState, StateOptions};
use super::config::{HsaConfig, ModelConfig, Weighting};
use super::encoder::{ChunkEncoder, EncoderSpec};
use super::flops;
use super::layers::{embedding, linear, AttnMask, AttnSpec, Block, LmHead, RmsNorm, SwiGlu};
use super::LanguageModel;
use crate::ops::{self, Retrieval, SlotWeighting};

/// The chunk memory every HSA layer reads.
struct Memory {
    /// `(N, C*S, Hkv, hd)`.
    k: Tensor,
    v: Tensor,
    /// `(N, C, r, dr/r)`.
    landmarks: Tensor,
}

#[derive(Debug)]
struct Chunking {
    cls_emb: Tensor,
    encoder: ChunkEncoder,
    lmk_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    k_norm: Option<RmsNorm>,
}

#[derive(Debug)]
struct RetrievalLayer {
    norm: RmsNorm,
    q_proj: nn::Linear,
}

#[derive(Debug)]
struct HsaLayer {
    attn_norm: RmsNorm,
    q_proj: nn::Linear,
    q_norm: Option<RmsNorm>,
    o_proj: nn::Linear,
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
        let hd = cfg.head_dim();
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
        let cp = vs / "chunking";
        let chunking = Chunking {
            cls_emb: cp.var(
                "cls_emb",
                &[1, 1, dm],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            ),
            encoder: ChunkEncoder::new(
                &cp / "encoder",
                cfg,
                EncoderSpec {
                    layers: h.encoder_layers,
                    prenorm: false,
                    qwen_style: true,
                },
            ),
            lmk_proj: linear(&cp / "lmk_proj", dm, h.retrieval_dim, std),
            k_proj: linear(&cp / "k_proj", dm, cfg.n_kv_heads * hd, std),
            v_proj: linear(&cp / "v_proj", dm, cfg.n_kv_heads * hd, std),
            k_norm: cfg.qk_norm.then(|| RmsNorm::new(&cp / "k_norm", hd, eps)),
        };
        let per_group = h.upper_layers / h.groups;
        let groups = (0..h.groups)
            .map(|g| {
                let gp = vs / "groups" / g;
                let (rp, hp) = (&gp / "retrieval", &gp / "hsa");
                Group {
                    retrieval: RetrievalLayer {
                        norm: RmsNorm::new(&rp / "norm", dm, eps),
                        q_proj: linear(&rp / "q_proj", dm, h.retrieval_dim, std),
                    },
                    hsa: HsaLayer {
                        attn_norm: RmsNorm::new(&hp / "attn_norm", dm, eps),
                        q_proj: linear(&hp / "q_proj", dm, cfg.n_heads * hd, std),
                        q_norm: cfg.qk_norm.then(|| RmsNorm::new(&hp / "q_norm", hd, eps)),
                        o_proj: linear(&hp / "o_proj", cfg.n_heads * hd, dm, std),
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
            step: 0,
        })
    }

    fn hsa(&self) -> &HsaConfig {
        self.cfg.hsa.as_ref().expect("validated at construction")
    }

    fn chunk_memory(&self, x: &Tensor) -> Memory {
        let h = self.hsa();
        let (n, l, dm) = (x.size()[0], x.size()[1], self.cfg.d_model);
        let (s, c) = (h.chunk_size, l / h.chunk_size);
        let ch = &self.chunking;
        let cls = ch.cls_emb.to_kind(x.kind()).expand([n * c, 1, dm], false);
        let enc = ch
            .encoder
            .forward(&Tensor::cat(&[x.view([n * c, s, dm]), cls], 1));
        let r = h.retrieval_heads;
        let landmarks = ch
            .lmk_proj
            .forward(&enc.select(1, s))
            .view([n, c, r, h.retrieval_dim / r]);
        let body = enc.narrow(1, 0, s);
        let (hkv, hd) = (self.cfg.n_kv_heads, self.cfg.head_dim());
        let mut k = ch.k_proj.forward(&body).view([n, l, hkv, hd]);
        if let Some(kn) = &ch.k_norm {
            k = kn.forward(&k);
        }
        let v = ch.v_proj.forward(&body).view([n, l, hkv, hd]);
        Memory { k, v, landmarks }
    }

    /// The retrieval queries of hidden states `x (N, L, d)`: `(N, L, r, retrieval_dim / r)`
    /// over the `r` retrieval heads.
    fn retrieval_queries(&self, layer: &RetrievalLayer, x: &Tensor) -> Tensor {
        let h = self.hsa();
        let (n, l) = (x.size()[0], x.size()[1]);
        let r = h.retrieval_heads;
        layer
            .q_proj
            .forward(&layer.norm.forward(x))
            .view([n, l, r, h.retrieval_dim / r])
    }

    fn retrieve(&self, layer: &RetrievalLayer, x: &Tensor, mem: &Memory, train: bool) -> Retrieval {
        let h = self.hsa();
        let q = self.retrieval_queries(layer, x);
        ops::token_retrieval(
            &q,
            &mem.landmarks,
            h.chunk_size,
            h.topk,
            self.slot_weighting(),
            train && h.gumbel,
        )
    }

    fn slot_weighting(&self) -> SlotWeighting {
        match self.hsa().weighting {
            Weighting::StickBreaking => SlotWeighting::StickBreaking,
            Weighting::Softmax => SlotWeighting::Softmax,
        }
    }

    /// Retrieval for a segment whose first token is number `first`, against every landmark
    /// in `store` (the segment's own chunks included).
    fn retrieve_segment(
        &self,
        layer: &RetrievalLayer,
        x: &Tensor,
        store: &ChunkStore,
        first: i64,
    ) -> Retrieval {
        let h = self.hsa();
        let q = self.retrieval_queries(layer, x);
        let lmk = store.landmarks();
        ops::token_retrieval_blocked(
            &q,
            &lmk,
            first,
            h.chunk_size,
            h.topk,
            self.slot_weighting(),
            ops::retrieval::RETRIEVAL_BLOCK,
        )
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
        let h = self.hsa();
        let (n, l) = (x.size()[0], x.size()[1]);
        let (hq, hkv, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim());
        let mut q = layer
            .q_proj
            .forward(&layer.attn_norm.forward(x))
            .view([n, l, hq, hd]);
        if let Some(qn) = &layer.q_norm {
            q = qn.forward(&q);
        }
        // One retrieval head serves every kv head.
        let nk = r.indices.size()[3];
        let w = r.weights.expand([n, l, hkv, nk], false);
        let idx = r.indices.expand([n, l, hkv, nk], false);
        let scale = 1.0 / (hd as f64).sqrt();
        let o = ops::hsa(&q, k, v, &w, &idx, h.chunk_size, scale, h.softmax_one);
        let o = layer.o_proj.forward(&o.reshape([n, l, hq * hd]));
        if self.step < h.residual_warmup_steps {
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
        let mem = self.chunk_memory(&x);
        let mut retrievals = Vec::new();
        for g in &self.groups {
            let r = self.retrieve(&g.retrieval, &x, &mem, train);
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
        let h = self.hsa();
        let s = h.chunk_size;
        let (n, l) = (tokens.size()[0], tokens.size()[1]);
        let c = l / s;
        let mut x = self.embed.forward(tokens);
        let mut caches = state.attn.iter_mut();
        for layer in &self.lower {
            x = layer.forward_cached(&x, caches.next().expect("one cache per layer"));
        }
        let mem = self.chunk_memory(&x);
        let store = state
            .store
            .as_mut()
            .expect("an SWA+HSA state has a chunk store");
        let (hkv, hd) = (self.cfg.n_kv_heads, self.cfg.head_dim());
        let kv = |m: &Tensor| m.view([n, c, s, hkv, hd]);
        store.append(&kv(&mem.k), &kv(&mem.v), &mem.landmarks);
        let first = state.positions;
        for g in &self.groups {
            let r = self.retrieve_segment(&g.retrieval, &x, store, first);
            // Only the chunks this segment reads, renumbered: the HSA op then never
            // touches (or copies) the whole memory.
            let (k, v, local) = store.compact(&r.gather_indices());
            let flat = |m: Tensor| m.reshape([n, -1, hkv, hd]);
            let r = Retrieval {
                indices: local.masked_fill(&r.indices.lt(0), -1),
                weights: r.weights,
            };
            x = self.hsa_layer(&g.hsa, &x, &flat(k), &flat(v), &r);
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
        let (cfg, h) = (&self.cfg, self.hsa());
        let s = h.chunk_size;
        let c = (t / s).max(1) as f64;
        let dm = cfg.d_model as f64;
        let inner = (cfg.n_heads * cfg.head_dim()) as f64;
        let kv = (cfg.n_kv_heads * cfg.head_dim()) as f64;
        let dr = h.retrieval_dim as f64;
        let window_keys = flops::mean_window_keys(t, cfg.window);
        let swa_layers = (h.lower_layers + h.upper_layers) as f64;
        let mut f = swa_layers * flops::block_forward(cfg, window_keys);
        let ratio = (s + 1) as f64 / s as f64;
        f += ratio * h.encoder_layers as f64 * flops::block_forward(cfg, (s + 1) as f64);
        f += 4.0 * dm * kv + 2.0 * dm * dr / s as f64;
        let k = (h.topk as f64).min(c);
        let per_group = 2.0 * dm * dr
            + 2.0 * dr * c / 2.0
            + 4.0 * dm * inner
            + flops::attention(cfg, k * s as f64)
            + 6.0 * dm * cfg.d_ff as f64;
        f += h.groups as f64 * per_group;
        3.0 * (f + flops::lm_head_forward(cfg))
    }

    fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    fn new_state(&self, opts: &StateOptions) -> InferenceState {
        let h = self.hsa();
        let chunks = (opts.capacity_tokens + h.chunk_size - 1) / h.chunk_size;
        let r = h.retrieval_heads;
        let store = ChunkStore::new(
            opts.batch,
            chunks,
            h.chunk_size,
            self.cfg.n_kv_heads,
            self.cfg.head_dim(),
            &[r, h.retrieval_dim / r],
            opts.kind,
            opts.device,
            opts.placement,
        );
        let layers = (h.lower_layers + h.upper_layers) as usize;
        InferenceState::new(layers, 0, Some(store))
    }

    fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        SwaHsa::forward_segment(self, tokens, state)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        self.lm_head.forward(hidden)
    }
}
