//! DRT: the Grouped Cross Attention model (seed-report 2.2).
//!
//! ```text
//! tokens (N, C*S) -> append the landmark to each chunk -> (N, C*(S+1))
//!   -> embed -> lower blocks (causal sliding window + ALiBi, SwiGLU)
//!   -> chunk encoder over each chunk (bidirectional, in-chunk RoPE)
//!        landmark keys = encoder output at the landmark; memory k/v = chunk_{k,v}_proj,
//!        with the landmark slot zeroed (S=63 style) or dropped (S=64 style)
//!   -> for each retrieval group g:
//!        retrieval: RMSNorm_g(decoder state at landmark i) . landmark key j / sqrt(d), j < i,
//!                   top-k (Gumbel while training), softmax over the chosen scores
//!        chunk c reads landmark c-1's choice (so chunks <= c-2; c-1 is in the window)
//!        upper layers: r = x + SWA(norm(x)); g = GCA(norm(r)); y = r + MLP(norm(r + g))
//!   -> norm -> drop landmark positions -> lm_head
//! ```
//! Parameter names: `embed.weight`, `lower.<i>.*`, `encoder.*`, `chunk_k_proj.weight`,
//! `chunk_v_proj.weight`, `groups.<g>.lmk_norm.weight`, `groups.<g>.layers.<i>.{attn_norm,
//! attn.*, gca_norm, gca.q_proj, gca.o_proj, mlp_norm, mlp.*}`, `norm.weight`
//! (`lm_head.weight` when untied).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::cache::{ChunkStore, InferenceState, KvCache, StateOptions};
use super::config::{DrtConfig, LandmarkSlot, ModelConfig};
use super::encoder::{ChunkEncoder, EncoderSpec};
use super::flops;
use super::layers::{embedding, linear, AttnMask, AttnSpec, Block, LmHead, RmsNorm};
use super::LanguageModel;
use crate::ops::{self, Retrieval};

/// The memory read by one group's GCA layers: the chunks each query chunk reads, and their
/// weights.
struct GroupMemory {
    chunks: Chunks,
    /// `(B, K)`, B the query chunks (`N*(C-1)` in training: chunk c >= 1 reads the chunks
    /// landmark c-1 chose).
    weights: Tensor,
}

enum Chunks {
    /// Gathered, `(B, Hkv, K, K_CTX, hd)`: in training one copy serves every layer of the
    /// group and its gradient goes back to the memory in one index_add (reading in place,
    /// each layer's backward would gather and add back on its own).
    Gathered { k: Tensor, v: Tensor },
    /// Rows `(B, K)` of a chunk memory `(M, K_CTX, Hkv, hd)` that GCA reads in place
    /// (inference: no gathered copy, chunks that neighbouring queries share come from L2).
    InMemory { k: Tensor, v: Tensor, rows: Tensor },
}

/// An upper layer: sliding-window self-attention, GCA, and the MLP fed by `r + gca`.
#[derive(Debug)]
struct UpperLayer {
    block: Block,
    gca_norm: RmsNorm,
    q_proj: nn::Linear,
    o_proj: nn::Linear,
}

impl UpperLayer {
    fn new(vs: nn::Path, cfg: &ModelConfig, spec: AttnSpec) -> Self {
        let inner = cfg.n_heads * cfg.head_dim();
        UpperLayer {
            block: Block::new(vs.clone(), spec, cfg.d_ff),
            gca_norm: RmsNorm::new(&vs / "gca_norm", cfg.d_model, cfg.norm_eps),
            q_proj: linear(&vs / "gca" / "q_proj", cfg.d_model, inner, cfg.init_std),
            o_proj: linear(&vs / "gca" / "o_proj", inner, cfg.d_model, cfg.init_std),
        }
    }

    /// GCA output `(N, C*(S+1), d)`: chunks `skip..C` read `mem` (one entry per chunk), the
    /// first `skip` get zeros (the full forward skips chunk 0, which has nothing to read; a
    /// later inference segment skips none).
    fn gca(
        &self,
        r: &Tensor,
        mem: &GroupMemory,
        cfg: &ModelConfig,
        chunks: i64,
        skip: i64,
    ) -> Tensor {
        let (n, p) = (r.size()[0], r.size()[1]);
        let span = p / chunks;
        let reading = chunks - skip;
        let (hq, hd) = (cfg.n_heads, cfg.head_dim());
        let q = self
            .q_proj
            .forward(&self.gca_norm.forward(r))
            .view([n, chunks, span, hq, hd])
            .narrow(1, skip, reading)
            .reshape([n * reading, span, hq, hd])
            .transpose(1, 2);
        let scale = 1.0 / (hd as f64).sqrt();
        let o = match &mem.chunks {
            Chunks::Gathered { k, v } => ops::gca(&q, k, v, &mem.weights, scale, false),
            Chunks::InMemory { k, v, rows } => {
                ops::gca_gathered(&q, k, v, rows, &mem.weights, scale, false)
            }
        };
        let o = o.transpose(1, 2).reshape([n, reading * span, hq * hd]);
        let o = self.o_proj.forward(&o);
        if skip == 0 {
            return o;
        }
        Tensor::cat(&[o.zeros_like().narrow(1, 0, skip * span), o], 1)
    }

    /// `cache`: a segment after the positions it holds (then every chunk reads `mem`).
    fn forward(
        &self,
        x: &Tensor,
        mem: Option<&GroupMemory>,
        cfg: &ModelConfig,
        chunks: i64,
        residual: bool,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        use super::profile::phase;
        let skip = if cache.is_some() { 0 } else { 1 };
        let r = phase("upper: attention", || match cache {
            Some(c) => self.block.attend_cached(x, c),
            None => self.block.attend(x),
        });
        let Some(mem) = mem else {
            return phase("upper: mlp", || self.block.mlp(&r, None));
        };
        let g = phase("upper: gca", || self.gca(&r, mem, cfg, chunks, skip));
        phase("upper: mlp", || {
            if residual {
                // Warm-up layout (issue 7): the GCA output also joins the residual stream.
                self.block.mlp(&(r + g), None)
            } else {
                self.block.mlp(&r, Some(&g))
            }
        })
    }
}

#[derive(Debug)]
struct Group {
    lmk_norm: RmsNorm,
    layers: Vec<UpperLayer>,
}

/// What a DRT forward produced besides the hidden states, for tests and analysis.
#[derive(Debug)]
pub struct DrtOutput {
    /// Final-normed, landmarks dropped: `(N, C*S, d)`; logits are `Drt::head` of it.
    pub hidden: Tensor,
    /// Per group, landmark i's choice `(N, C, K)`: it serves chunk i+1.
    pub retrievals: Vec<Retrieval>,
}

#[derive(Debug)]
pub struct Drt {
    cfg: ModelConfig,
    embed: nn::Embedding,
    lower: Vec<Block>,
    encoder: ChunkEncoder,
    chunk_k_proj: nn::Linear,
    chunk_v_proj: nn::Linear,
    groups: Vec<Group>,
    norm: RmsNorm,
    lm_head: LmHead,
    step: u64,
}

impl Drt {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> crate::Result<Self> {
        let d = drt_section(cfg)?;
        let std = cfg.init_std;
        let spec = AttnSpec {
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            mask: AttnMask::Sliding(cfg.window),
            positional: cfg.positional,
            rope_theta: cfg.rope_theta,
            qk_norm: cfg.qk_norm,
            qkv_bias: false,
            eps: cfg.norm_eps,
            std,
        };
        let embed = embedding(vs / "embed", cfg.vocab_size, cfg.d_model, std);
        let kv = cfg.n_kv_heads * cfg.head_dim();
        let groups = d.decoder_layers[1..]
            .iter()
            .enumerate()
            .map(|(g, &n)| {
                let gp = vs / "groups" / g;
                Group {
                    lmk_norm: RmsNorm::new(&gp / "lmk_norm", cfg.d_model, cfg.norm_eps),
                    layers: (0..n)
                        .map(|i| UpperLayer::new(&gp / "layers" / i, cfg, spec))
                        .collect(),
                }
            })
            .collect();
        let enc = EncoderSpec {
            layers: d.encoder_layers,
            prenorm: true,
            qwen_style: false,
            kv_heads: cfg.n_kv_heads,
        };
        Ok(Drt {
            lower: (0..d.decoder_layers[0])
                .map(|i| Block::new(vs / "lower" / i, spec, cfg.d_ff))
                .collect(),
            encoder: ChunkEncoder::new(vs / "encoder", cfg, enc),
            chunk_k_proj: linear(vs / "chunk_k_proj", cfg.d_model, kv, std),
            chunk_v_proj: linear(vs / "chunk_v_proj", cfg.d_model, kv, std),
            groups,
            norm: RmsNorm::new(vs / "norm", cfg.d_model, cfg.norm_eps),
            lm_head: LmHead::new(vs, &embed, cfg),
            embed,
            cfg: cfg.clone(),
            step: 0,
        })
    }

    fn drt(&self) -> &DrtConfig {
        self.cfg.drt.as_ref().expect("validated at construction")
    }

    /// `(N, C*S)` tokens -> `(N, C*(S+1))` with the landmark after every chunk.
    /// The embedding of `tokens` with their landmarks inserted ([`Drt::insert_landmarks`]).
    fn embed_with_landmarks(&self, tokens: &Tensor) -> Tensor {
        self.embed.forward(&self.insert_landmarks(tokens))
    }

    pub fn insert_landmarks(&self, tokens: &Tensor) -> Tensor {
        let d = self.drt();
        let (n, t) = (tokens.size()[0], tokens.size()[1]);
        assert!(
            t % d.chunk_size == 0,
            "drt: sequence length {t} is not a multiple of the chunk size {}",
            d.chunk_size
        );
        let c = t / d.chunk_size;
        let chunks = tokens.view([n, c, d.chunk_size]);
        let lmk = chunks.narrow(2, 0, 1).full_like(d.landmark_id);
        Tensor::cat(&[chunks, lmk], 2).view([n, c * (d.chunk_size + 1)])
    }

    /// Chunk memory `(N*C, K_CTX, Hkv, hd)` (k, v) and the landmark keys `(N, C, d)`.
    fn encode_chunks(&self, h: &Tensor, n: i64, c: i64) -> (Tensor, Tensor, Tensor) {
        let d = self.drt();
        let (span, dm) = (d.chunk_size + 1, self.cfg.d_model);
        let enc = self.encoder.forward(&h.view([n * c, span, dm]));
        let lmk = enc.select(1, d.chunk_size).view([n, c, dm]);
        let (hkv, hd) = (self.cfg.n_kv_heads, self.cfg.head_dim());
        let (k, v) = match d.landmark_slot {
            LandmarkSlot::Zeroed => {
                // Zero key and value in the landmark slot: exp(0) joins every denominator.
                let keep = Tensor::ones([span, 1], (enc.kind(), enc.device()));
                let keep = keep.index_fill(
                    0,
                    &Tensor::from_slice(&[d.chunk_size]).to_device(enc.device()),
                    0.0,
                );
                (
                    self.chunk_k_proj.forward(&enc) * &keep,
                    self.chunk_v_proj.forward(&enc) * &keep,
                )
            }
            LandmarkSlot::Dropped => {
                let body = enc.narrow(1, 0, d.chunk_size);
                (
                    self.chunk_k_proj.forward(&body),
                    self.chunk_v_proj.forward(&body),
                )
            }
        };
        let kctx = k.size()[1];
        (
            k.view([n * c, kctx, hkv, hd]),
            v.view([n * c, kctx, hkv, hd]),
            lmk,
        )
    }

    /// Gathers, for chunks 1..C, the chunks chosen by landmarks 0..C-1.
    fn gather(&self, mem_k: &Tensor, mem_v: &Tensor, r: &Retrieval, n: i64, c: i64) -> GroupMemory {
        let idx = r.gather_indices().narrow(1, 0, c - 1); // (N, C-1, K)
        let nk = idx.size()[2];
        let base = (Tensor::arange(n, (Kind::Int64, idx.device())) * c).view([n, 1, 1]);
        let flat = (idx + base).reshape([-1]);
        let pick = |m: &Tensor| {
            let s = m.size(); // (N*C, K_CTX, Hkv, hd)
            m.index_select(0, &flat)
                .view([n * (c - 1), nk, s[1], s[2], s[3]])
                .permute([0, 3, 1, 2, 4])
        };
        GroupMemory {
            chunks: Chunks::Gathered {
                k: pick(mem_k),
                v: pick(mem_v),
            },
            weights: r.weights.narrow(1, 0, c - 1).reshape([n * (c - 1), nk]),
        }
    }

    /// The forward pass with its retrievals.
    pub fn forward_detailed(&self, tokens: &Tensor, train: bool) -> DrtOutput {
        let d = self.drt();
        let (n, t) = (tokens.size()[0], tokens.size()[1]);
        let (s, dm) = (d.chunk_size, self.cfg.d_model);
        let c = t / s;
        let mut h = self.embed_with_landmarks(tokens);
        for layer in &self.lower {
            h = layer.forward(&h);
        }
        let (mem_k, mem_v, lmk_keys) = self.encode_chunks(&h, n, c);
        let residual = self.step < d.residual_warmup_steps;
        let mut retrievals = Vec::new();
        for group in &self.groups {
            let lmk_state = h.view([n, c, s + 1, dm]).select(2, s);
            let q = group.lmk_norm.forward(&lmk_state);
            let r = ops::chunk_retrieval(&q, &lmk_keys, d.topk, train && d.gumbel);
            let mem = (c > 1).then(|| self.gather(&mem_k, &mem_v, &r, n, c));
            for layer in &group.layers {
                h = layer.forward(&h, mem.as_ref(), &self.cfg, c, residual, None);
            }
            retrievals.push(r);
        }
        let h = self.norm.forward(&h);
        let real = h
            .view([n, c, s + 1, dm])
            .narrow(2, 0, s)
            .reshape([n, t, dm]);
        DrtOutput {
            hidden: real,
            retrievals,
        }
    }
}

impl Drt {
    /// Slots per chunk in the memory: S+1 with the zeroed landmark slot, S without it.
    fn memory_rows(&self) -> i64 {
        let d = self.drt();
        match d.landmark_slot {
            LandmarkSlot::Zeroed => d.chunk_size + 1,
            LandmarkSlot::Dropped => d.chunk_size,
        }
    }

    /// The memory that serves chunks `first..first + c` of a segment: chunk `first + i`
    /// reads landmark `first + i - 1`'s choice, `served` `(N, c, K)`.
    fn gather_served(&self, store: &ChunkStore, served: &Retrieval) -> GroupMemory {
        let s = served.indices.size(); // (N, c, K)
        let (n, c, nk) = (s[0], s[1], s[2]);
        let (k, v, rows) = store.memory_rows(&served.gather_indices());
        GroupMemory {
            chunks: Chunks::InMemory {
                k,
                v,
                rows: rows.reshape([n * c, nk]),
            },
            weights: served.weights.reshape([n * c, nk]),
        }
    }

    /// One inference segment: `tokens (N, c*S)` after what `state` has seen. Returns the
    /// final-normed hidden states of the real tokens `(N, c*S, d)`.
    pub fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        use super::profile::phase;
        let d = self.drt();
        let (n, t) = (tokens.size()[0], tokens.size()[1]);
        let (s, dm) = (d.chunk_size, self.cfg.d_model);
        let c = t / s;
        let mut h = self.embed_with_landmarks(tokens);
        let mut caches = state.attn.iter_mut();
        for layer in &self.lower {
            let cache = caches.next().expect("one cache per layer");
            h = phase("lower: attention", || layer.attend_cached(&h, cache));
            h = phase("lower: mlp", || layer.mlp(&h, None));
        }
        let (mem_k, mem_v, lmk_keys) = phase("encoder", || self.encode_chunks(&h, n, c));
        let store = state.store.as_mut().expect("a DRT state has a chunk store");
        let first = store.len();
        let rows = mem_k.size()[1];
        let kv = |m: &Tensor| m.view([n, c, rows, self.cfg.n_kv_heads, self.cfg.head_dim()]);
        phase("memory: append", || {
            store.append(&kv(&mem_k), &kv(&mem_v), &lmk_keys)
        });
        let residual = self.step < d.residual_warmup_steps;
        for (g, group) in self.groups.iter().enumerate() {
            let lmk_state = h.view([n, c, s + 1, dm]).select(2, s);
            let q = group.lmk_norm.forward(&lmk_state);
            let r = phase("retrieval", || {
                ops::chunk_retrieval_blocked(
                    &q,
                    &store.landmarks(),
                    first,
                    d.topk,
                    ops::retrieval::RETRIEVAL_BLOCK,
                )
            });
            let before = state.carried[g].take().unwrap_or_else(|| Retrieval {
                weights: Tensor::zeros([n, 1, d.topk], (Kind::Float, h.device())),
                indices: Tensor::full([n, 1, d.topk], -1, (Kind::Int64, h.device())),
            });
            let served = Retrieval {
                weights: Tensor::cat(&[&before.weights, &r.weights.narrow(1, 0, c - 1)], 1),
                indices: Tensor::cat(&[&before.indices, &r.indices.narrow(1, 0, c - 1)], 1),
            };
            state.carried[g] = Some(Retrieval {
                weights: r.weights.narrow(1, c - 1, 1),
                indices: r.indices.narrow(1, c - 1, 1),
            });
            let mem = phase("memory: gather", || self.gather_served(store, &served));
            for layer in &group.layers {
                let cache = caches.next().expect("one cache per layer");
                h = layer.forward(&h, Some(&mem), &self.cfg, c, residual, Some(cache));
            }
        }
        state.positions += c * (s + 1);
        phase("norm", || {
            self.norm
                .forward(&h)
                .view([n, c, s + 1, dm])
                .narrow(2, 0, s)
                .reshape([n, t, dm])
        })
    }
}

fn drt_section(cfg: &ModelConfig) -> crate::Result<&DrtConfig> {
    cfg.drt.as_ref().ok_or_else(|| crate::Error::Config {
        key: "model.drt".into(),
        message: "required for arch drt".into(),
    })
}

impl LanguageModel for Drt {
    fn hidden(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.forward_detailed(tokens, train).hidden
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn length_multiple(&self) -> i64 {
        self.drt().chunk_size
    }

    /// Per real token, with `P = t (S+1)/S` positions and `C = t/S` chunks: `(S+1)/S` times
    /// the per-position cost (every decoder block over a window of `W` keys; per upper
    /// layer GCA's q/o projections and `K * K_CTX` keys for the chunks that read memory,
    /// a fraction `(C-1)/C`; the encoder blocks over `S+1` keys; the chunk k/v projections;
    /// each group's retrieval scores, `C/2` landmarks per chunk), plus the output head;
    /// forward+backward = 3 x forward ([`flops`]).
    fn flops_per_token(&self, t: i64) -> f64 {
        let (cfg, d) = (&self.cfg, self.drt());
        let s = d.chunk_size;
        let c = (t / s).max(1) as f64;
        let positions = t / s * (s + 1);
        let kctx = match d.landmark_slot {
            LandmarkSlot::Zeroed => s + 1,
            LandmarkSlot::Dropped => s,
        } as f64;
        let k = (d.topk as f64).min(c);
        let inner = (cfg.n_heads * cfg.head_dim()) as f64;
        let kv = (cfg.n_kv_heads * cfg.head_dim()) as f64;
        let dm = cfg.d_model as f64;
        let layers: i64 = d.decoder_layers.iter().sum();
        let upper: i64 = d.decoder_layers[1..].iter().sum();
        let window_keys = flops::mean_window_keys(positions, cfg.window);
        let mut per_position = layers as f64 * flops::block_forward(cfg, window_keys);
        per_position +=
            upper as f64 * (4.0 * dm * inner + flops::attention(cfg, k * kctx) * (c - 1.0) / c);
        per_position += d.encoder_layers as f64 * flops::block_forward(cfg, (s + 1) as f64);
        per_position += 4.0 * dm * kv;
        per_position += (d.decoder_layers.len() - 1) as f64 * 2.0 * dm * (c / 2.0) / (s + 1) as f64;
        let forward = per_position * (s + 1) as f64 / s as f64 + flops::lm_head_forward(cfg);
        3.0 * forward
    }

    fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    fn new_state(&self, opts: &StateOptions) -> InferenceState {
        let d = self.drt();
        let (hkv, hd) = (self.cfg.n_kv_heads, self.cfg.head_dim());
        let chunks = (opts.capacity_tokens + d.chunk_size - 1) / d.chunk_size;
        let store = ChunkStore::new(
            opts.batch,
            chunks,
            self.memory_rows(),
            hkv,
            hd,
            &[self.cfg.d_model],
            opts.kind,
            opts.device,
            opts.placement,
        );
        let layers = d.decoder_layers.iter().sum::<i64>() as usize;
        InferenceState::new(layers, self.groups.len(), Some(store))
    }

    fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        Drt::forward_segment(self, tokens, state)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        self.lm_head.forward(hidden)
    }
}
