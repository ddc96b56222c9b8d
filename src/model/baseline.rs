//! The baselines: a plain decoder-only transformer with sliding-window (`swa`) or full
//! causal (`dense`) self-attention, the same blocks as the other archs and no retrieval.
//! Parameter names: `embed.weight`, `layers.<i>.*`, `norm.weight` (`lm_head.weight` when
//! untied).

use tch::nn::{self, Module};
use tch::Tensor;

use super::cache::{InferenceState, StateOptions};
use super::config::{Arch, ModelConfig};
use super::flops;
use super::layers::{embedding, AttnMask, AttnSpec, Block, LmHead, RmsNorm};
use super::LanguageModel;

#[derive(Debug)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: nn::Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: LmHead,
}

impl Transformer {
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> crate::Result<Self> {
        let n_layers = cfg.n_layers.ok_or_else(|| crate::Error::Config {
            key: "model.n_layers".into(),
            message: "required for arch swa and dense".into(),
        })?;
        let mask = match cfg.arch {
            Arch::Dense => AttnMask::Causal,
            _ => AttnMask::Sliding(cfg.window),
        };
        let spec = AttnSpec {
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            mask,
            positional: cfg.positional,
            rope_theta: cfg.rope_theta,
            qk_norm: cfg.qk_norm,
            qkv_bias: false,
            eps: cfg.norm_eps,
            std: cfg.init_std,
        };
        let embed = embedding(vs / "embed", cfg.vocab_size, cfg.d_model, cfg.init_std);
        Ok(Transformer {
            layers: (0..n_layers)
                .map(|i| Block::new(vs / "layers" / i, spec, cfg.d_ff))
                .collect(),
            norm: RmsNorm::new(vs / "norm", cfg.d_model, cfg.norm_eps),
            lm_head: LmHead::new(vs, &embed, cfg),
            embed,
            cfg: cfg.clone(),
        })
    }
}

impl LanguageModel for Transformer {
    fn hidden(&self, tokens: &Tensor, _train: bool) -> Tensor {
        let mut x = self.embed.forward(tokens);
        for layer in &self.layers {
            x = layer.forward(&x);
        }
        self.norm.forward(&x)
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn length_multiple(&self) -> i64 {
        1
    }

    fn new_state(&self, _opts: &StateOptions) -> InferenceState {
        InferenceState::new(self.layers.len(), 0, None)
    }

    fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor {
        let mut x = self.embed.forward(tokens);
        for (layer, cache) in self.layers.iter().zip(state.attn.iter_mut()) {
            x = layer.forward_cached(&x, cache);
        }
        state.positions += tokens.size()[1];
        self.norm.forward(&x)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        self.lm_head.forward(hidden)
    }

    /// Per token: `n_layers` blocks over the mean number of visible keys (a window of `W`
    /// for `swa`, `(t+1)/2` for `dense`) plus the output head; forward+backward =
    /// 3 x forward ([`flops`]).
    fn flops_per_token(&self, t: i64) -> f64 {
        let keys = match self.cfg.arch {
            Arch::Dense => flops::mean_causal_keys(t),
            _ => flops::mean_window_keys(t, self.cfg.window),
        };
        let n = self.cfg.n_layers.unwrap_or(0) as f64;
        3.0 * (n * flops::block_forward(&self.cfg, keys) + flops::lm_head_forward(&self.cfg))
    }
}
