//! Building blocks shared by every arch: linear layers, RMSNorm, the SwiGLU MLP,
//! embeddings, RoPE, ALiBi slopes, self-attention and the pre-norm transformer block.
//!
//! Init follows the reference (seed-report 2.7): linear and embedding weights N(0, std)
//! with std 0.02 by default, no biases except where the reference has them (the HSA
//! encoder's q/k/v), RMSNorm weights 1.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{ModelConfig, Positional};
use crate::ops;

/// `Linear(d_in -> d_out)` without bias, weights N(0, std), named `<path>.weight`.
pub fn linear(vs: nn::Path, d_in: i64, d_out: i64, std: f64) -> nn::Linear {
    linear_with_bias(vs, d_in, d_out, std, false)
}

/// As [`linear`], with an optional zero-initialised bias `<path>.bias`.
pub fn linear_with_bias(vs: nn::Path, d_in: i64, d_out: i64, std: f64, bias: bool) -> nn::Linear {
    let c = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias,
    };
    nn::linear(vs, d_in, d_out, c)
}

/// Token embedding `<path>.weight (vocab, d)`, N(0, std).
pub fn embedding(vs: nn::Path, vocab: i64, d: i64, std: f64) -> nn::Embedding {
    let c = nn::EmbeddingConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        ..Default::default()
    };
    nn::embedding(vs, vocab, d, c)
}

/// RMSNorm over the last dimension through [`crate::ops::rms_norm`]; weight `<path>.weight`.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: vs.ones("weight", &[dim]),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct SwiGlu {
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl SwiGlu {
    pub fn new(vs: nn::Path, d: i64, d_ff: i64, std: f64) -> Self {
        SwiGlu {
            gate_proj: linear(&vs / "gate_proj", d, d_ff, std),
            up_proj: linear(&vs / "up_proj", d, d_ff, std),
            down_proj: linear(&vs / "down_proj", d_ff, d, std),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.gate_proj.forward(x).silu() * self.up_proj.forward(x);
        self.down_proj.forward(&h)
    }
}

/// ALiBi slopes `m_i = 2^(-8(i+1)/h)`, i = 0..h-1, as an fp32 `(h,)` tensor.
pub fn alibi_slopes(n_heads: i64, device: tch::Device) -> Tensor {
    let m: Vec<f32> = (0..n_heads)
        .map(|i| 2f64.powf(-8.0 * (i + 1) as f64 / n_heads as f64) as f32)
        .collect();
    Tensor::from_slice(&m).to_device(device)
}

/// Rotary embedding of `x (B, H, T, D)` at positions `0..T` (rotate-half convention: the
/// first and second halves of each head are the two rotated coordinates).
pub fn rope(x: &Tensor, theta: f64) -> Tensor {
    rope_at(x, 0, theta)
}

/// [`rope`] at positions `start..start + T` (a segment after `start` cached positions).
pub fn rope_at(x: &Tensor, start: i64, theta: f64) -> Tensor {
    let s = x.size();
    let (t, d) = (s[2], s[3]);
    let half = d / 2;
    let dev = x.device();
    // Angles in f64: in f32, positions past 2^24 (16.7M, reached by a 16M-token DRT sample
    // with its landmarks) are not even integers, and an angle of 1e7 radians is off by about
    // a radian, which breaks the relative positions RoPE encodes.
    let inv = (Tensor::arange(half, (Kind::Double, dev)) * (-2.0 * theta.ln() / d as f64)).exp();
    let pos = Tensor::arange_start(start, start + t, (Kind::Double, dev));
    let ang = pos.unsqueeze(1) * inv.unsqueeze(0); // (T, D/2)
    let (cos, sin) = (
        ang.cos().to_kind(Kind::Float),
        ang.sin().to_kind(Kind::Float),
    );
    let xf = x.to_kind(Kind::Float);
    let (x1, x2) = (xf.narrow(-1, 0, half), xf.narrow(-1, half, half));
    let out = Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x2 * &cos + &x1 * &sin], -1);
    out.to_kind(x.kind())
}

/// Which keys a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnMask {
    /// Causal, itself plus `window` past positions.
    Sliding(i64),
    /// Causal over the whole sequence.
    Causal,
    /// Every position of the sequence (the chunk encoder).
    Bidirectional,
}

/// Shape and options of a self-attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnSpec {
    pub d_model: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub mask: AttnMask,
    pub positional: Positional,
    pub rope_theta: f64,
    /// Per-head RMSNorm on q and k (weights `q_norm.weight`, `k_norm.weight`, `(head_dim,)`).
    pub qk_norm: bool,
    /// Biases on q, k and v (the HSA encoder's Qwen2 layers).
    pub qkv_bias: bool,
    pub eps: f64,
    pub std: f64,
}

/// Multi-head self-attention with GQA: `q_proj`, `k_proj`, `v_proj`, `o_proj`.
#[derive(Debug)]
pub struct SelfAttention {
    spec: AttnSpec,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    qk_norm: Option<(RmsNorm, RmsNorm)>,
}

impl SelfAttention {
    pub fn new(vs: nn::Path, spec: AttnSpec) -> Self {
        let hd = spec.d_model / spec.n_heads;
        let (d, std, b) = (spec.d_model, spec.std, spec.qkv_bias);
        SelfAttention {
            q_proj: linear_with_bias(&vs / "q_proj", d, spec.n_heads * hd, std, b),
            k_proj: linear_with_bias(&vs / "k_proj", d, spec.n_kv_heads * hd, std, b),
            v_proj: linear_with_bias(&vs / "v_proj", d, spec.n_kv_heads * hd, std, b),
            o_proj: linear(&vs / "o_proj", spec.n_heads * hd, d, std),
            qk_norm: spec.qk_norm.then(|| {
                (
                    RmsNorm::new(&vs / "q_norm", hd, spec.eps),
                    RmsNorm::new(&vs / "k_norm", hd, spec.eps),
                )
            }),
            spec,
        }
    }

    /// `x (B, T, d)` -> `(B, T, d)`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.run(x, None)
    }

    /// A segment `x (B, T, d)` after the positions `cache` holds: attends over the cached
    /// keys and its own, then keeps in `cache` what the next segment needs (the last
    /// `window` positions, or everything for causal attention).
    pub fn forward_cached(&self, x: &Tensor, cache: &mut KvCache) -> Tensor {
        self.run(x, Some(cache))
    }

    fn run(&self, x: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        let s = &self.spec;
        let (b, t) = (x.size()[0], x.size()[1]);
        let start = cache.as_ref().map_or(0, |c| c.position);
        let hd = s.d_model / s.n_heads;
        let heads = |y: Tensor, h: i64| y.view([b, t, h, hd]);
        let mut q = heads(self.q_proj.forward(x), s.n_heads);
        let mut k = heads(self.k_proj.forward(x), s.n_kv_heads);
        let v = heads(self.v_proj.forward(x), s.n_kv_heads).transpose(1, 2);
        if let Some((qn, kn)) = &self.qk_norm {
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        let (mut q, mut k) = (q.transpose(1, 2), k.transpose(1, 2)); // (B, H, T, hd)
        let mut slopes = None;
        match s.positional {
            Positional::Rope => {
                q = rope_at(&q, start, s.rope_theta);
                k = rope_at(&k, start, s.rope_theta);
            }
            Positional::Alibi if s.mask != AttnMask::Bidirectional => {
                slopes = Some(alibi_slopes(s.n_heads, x.device()));
            }
            _ => {}
        }
        let scale = 1.0 / (hd as f64).sqrt();
        if let Some(cache) = cache {
            let (k, v) = cache.extend(&k, &v, s.mask);
            let o = match s.mask {
                AttnMask::Sliding(w) => {
                    ops::sliding_window_attention_cached(&q, &k, &v, w, slopes.as_ref(), scale)
                }
                AttnMask::Causal => ops::causal_attention(&q, &k, &v, slopes.as_ref(), scale),
                AttnMask::Bidirectional => {
                    panic!("bidirectional attention sees whole chunks and keeps no cache")
                }
            };
            return self
                .o_proj
                .forward(&o.transpose(1, 2).reshape([b, t, s.n_heads * hd]));
        }
        let o = match s.mask {
            AttnMask::Sliding(w) => {
                ops::sliding_window_attention(&q, &k, &v, w, slopes.as_ref(), scale)
            }
            AttnMask::Causal => ops::causal_attention(&q, &k, &v, slopes.as_ref(), scale),
            AttnMask::Bidirectional => ops::bidirectional_attention(&q, &k, &v, scale),
        };
        self.o_proj
            .forward(&o.transpose(1, 2).reshape([b, t, s.n_heads * hd]))
    }
}

/// The keys and values one self-attention layer keeps between inference segments.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Positions seen so far (the absolute position of the next one, for RoPE).
    pub position: i64,
    /// `(B, Hkv, T_kept, D)`, after RoPE where the layer uses it.
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    /// A copy sharing the tensors: [`KvCache::extend`] replaces its tensors rather than
    /// writing into them, so the copy keeps seeing the positions it was taken at (the
    /// rollback of a speculative segment, [`crate::model::InferenceState::snapshot`]).
    pub fn snapshot(&self) -> KvCache {
        KvCache {
            position: self.position,
            k: self.k.as_ref().map(Tensor::shallow_clone),
            v: self.v.as_ref().map(Tensor::shallow_clone),
        }
    }

    /// The cached keys and values followed by `k`/`v`; keeps what the next segment may see.
    fn extend(&mut self, k: &Tensor, v: &Tensor, mask: AttnMask) -> (Tensor, Tensor) {
        let cat = |old: &Option<Tensor>, new: &Tensor| match old {
            Some(o) => Tensor::cat(&[o, new], 2),
            None => new.shallow_clone(),
        };
        let (k_all, v_all) = (cat(&self.k, k), cat(&self.v, v));
        self.position += k.size()[2];
        let total = k_all.size()[2];
        let keep = match mask {
            AttnMask::Sliding(w) => w.min(total),
            _ => total,
        };
        // A copy, so the kept slice does not pin the whole segment's keys in memory.
        self.k = Some(k_all.narrow(2, total - keep, keep).copy());
        self.v = Some(v_all.narrow(2, total - keep, keep).copy());
        (k_all, v_all)
    }

    /// Bytes held.
    pub fn bytes(&self) -> i64 {
        let b = |t: &Option<Tensor>| {
            t.as_ref().map_or(0, |t| {
                t.numel() as i64 * t.kind().elt_size_in_bytes() as i64
            })
        };
        b(&self.k) + b(&self.v)
    }
}

/// Pre-norm transformer block: `x + attn(norm(x))`, then `+ mlp(norm(.))`. Parameters
/// `attn_norm`, `attn.*`, `mlp_norm`, `mlp.*`.
#[derive(Debug)]
pub struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    mlp_norm: RmsNorm,
    mlp: SwiGlu,
}

impl Block {
    pub fn new(vs: nn::Path, spec: AttnSpec, d_ff: i64) -> Self {
        Block {
            attn_norm: RmsNorm::new(&vs / "attn_norm", spec.d_model, spec.eps),
            attn: SelfAttention::new(&vs / "attn", spec),
            mlp_norm: RmsNorm::new(&vs / "mlp_norm", spec.d_model, spec.eps),
            mlp: SwiGlu::new(&vs / "mlp", spec.d_model, d_ff, spec.std),
        }
    }

    /// The attention half alone: `x + attn(norm(x))`.
    pub fn attend(&self, x: &Tensor) -> Tensor {
        x + self.attn.forward(&self.attn_norm.forward(x))
    }

    /// The MLP half on a residual `r` with an extra input `extra` that feeds only the MLP:
    /// `r + mlp(norm(r + extra))` (GCA/HSA layers) or `r + mlp(norm(r))`.
    pub fn mlp(&self, r: &Tensor, extra: Option<&Tensor>) -> Tensor {
        let input = match extra {
            Some(e) => self.mlp_norm.forward(&(r + e)),
            None => self.mlp_norm.forward(r),
        };
        r + self.mlp.forward(&input)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.mlp(&self.attend(x), None)
    }

    /// [`Block::attend`] for a segment after the positions `cache` holds.
    pub fn attend_cached(&self, x: &Tensor, cache: &mut KvCache) -> Tensor {
        x + self.attn.forward_cached(&self.attn_norm.forward(x), cache)
    }

    /// [`Block::forward`] for a segment after the positions `cache` holds.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut KvCache) -> Tensor {
        self.mlp(&self.attend_cached(x, cache), None)
    }
}

/// The output head: the tied embedding's transpose, or an own `lm_head.weight`.
#[derive(Debug)]
pub enum LmHead {
    Tied(Tensor),
    Own(nn::Linear),
}

impl LmHead {
    /// The head of a model of config `cfg` whose token embedding is `embed`: tied to it
    /// (`tie_embeddings`) or a linear layer of its own.
    pub fn new(vs: &nn::Path, embed: &nn::Embedding, cfg: &ModelConfig) -> Self {
        if cfg.tie_embeddings {
            LmHead::Tied(embed.ws.shallow_clone())
        } else {
            LmHead::Own(linear(
                vs / "lm_head",
                cfg.d_model,
                cfg.vocab_size,
                cfg.init_std,
            ))
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            LmHead::Tied(w) => x.matmul(&w.tr()),
            LmHead::Own(l) => l.forward(x),
        }
    }
}
