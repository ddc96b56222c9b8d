//! The chunk encoder: bidirectional transformer layers over the positions of one chunk,
//! with RoPE over in-chunk positions `0..L` and a final RMSNorm (seed-report 2.2 step 3 for
//! DRT, 3.2 for HSA). Parameters: `prenorm.weight` (DRT only), `layers.<i>.*`,
//! `norm.weight`.

use tch::{nn, Tensor};

use super::config::{ModelConfig, Positional};
use super::layers::{AttnMask, AttnSpec, Block, RmsNorm};

#[derive(Debug)]
pub struct ChunkEncoder {
    prenorm: Option<RmsNorm>,
    layers: Vec<Block>,
    norm: RmsNorm,
}

/// Encoder options that differ between the archs.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSpec {
    pub layers: i64,
    /// RMSNorm on the input (DRT's `enc_prenorm`).
    pub prenorm: bool,
    /// Per-head q/k RMSNorm and q/k/v biases (HSA's Qwen2-style layers).
    pub qwen_style: bool,
    /// Key/value heads of the attention (`model.n_kv_heads`, or RAMba's
    /// `encoder_kv_heads`).
    pub kv_heads: i64,
}

impl ChunkEncoder {
    pub fn new(vs: nn::Path, cfg: &ModelConfig, spec: EncoderSpec) -> Self {
        let attn = AttnSpec {
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            n_kv_heads: spec.kv_heads,
            mask: AttnMask::Bidirectional,
            positional: Positional::Rope,
            rope_theta: cfg.rope_theta,
            qk_norm: spec.qwen_style,
            qkv_bias: spec.qwen_style,
            eps: cfg.norm_eps,
            std: cfg.init_std,
        };
        let layers = (0..spec.layers)
            .map(|i| Block::new(&vs / "layers" / i, attn, cfg.d_ff))
            .collect();
        ChunkEncoder {
            prenorm: spec
                .prenorm
                .then(|| RmsNorm::new(&vs / "prenorm", cfg.d_model, cfg.norm_eps)),
            layers,
            norm: RmsNorm::new(&vs / "norm", cfg.d_model, cfg.norm_eps),
        }
    }

    /// `x (B', L, d)`: each row is one chunk; returns `(B', L, d)`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = match &self.prenorm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        };
        for layer in &self.layers {
            h = layer.forward(&h);
        }
        self.norm.forward(&h)
    }
}
