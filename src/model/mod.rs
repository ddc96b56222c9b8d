//! The models: a config (JSON, validated) builds one of five archs behind one trait.
//!
//! * `drt`: Grouped Cross Attention with landmarks ([`drt`], seed-report 2).
//! * `swa_hsa`: sliding window + Hierarchical Sparse Attention ([`swa_hsa`], seed-report 3.4).
//! * `ramba`: Mamba2 blocks + Hierarchical Sparse Attention ([`ramba`], seed-report 3.3),
//!   its Mamba2 block in [`mamba2`].
//! * `swa`, `dense`: baselines without retrieval ([`baseline`]).
//!
//! [`hsa`] holds the HSA pieces `swa_hsa` and `ramba` share.
//! [`reference`] names a DRT's weights as the reference implementation does (`lcm export
//! --names reference`).
//!
//! Attention runs through [`crate::ops`], so the CUDA kernels replace the references
//! without the models knowing. Parameter names are stable (checkpoints are saved by name);
//! each arch's module lists its names.

pub mod baseline;
pub mod cache;
pub mod config;
pub mod drt;
pub mod encoder;
pub mod flops;
pub mod hsa;
pub mod layers;
pub mod mamba2;
pub mod profile;
pub mod ramba;
pub mod reference;
pub mod swa_hsa;

pub use cache::{InferenceState, Placement, StateOptions, StateSnapshot};
pub use config::{Arch, ModelConfig};

use tch::Tensor;

/// What the trainer and the evaluator see of a model.
pub trait LanguageModel {
    /// The final-normed hidden states `(B, T, d)` of raw tokens `(B, T)` int64, the input of
    /// [`LanguageModel::head`]. Chunked archs insert their landmarks internally and drop the
    /// landmark positions from the output, so callers never see landmarks. `train` turns on
    /// Gumbel noise etc. The trainer applies the head only where a target is scored: on a
    /// passkey row with an answer-only loss that is 3 positions of 64, and the head over a
    /// 50K vocabulary is most of a small model's cost.
    fn hidden(&self, tokens: &Tensor, train: bool) -> Tensor;
    /// logits (B, T, V) for raw tokens (B, T) int64; logits[:, t] predicts token t+1.
    fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.head(&self.hidden(tokens, train))
    }
    fn config(&self) -> &ModelConfig;
    /// Tokens must be a multiple of this (the chunk size; 1 for swa/dense).
    fn length_multiple(&self) -> i64;
    /// FLOPs per token of a forward+backward at sequence length t (each arch documents its
    /// formula; conventions in [`flops`]).
    fn flops_per_token(&self, t: i64) -> f64;
    /// Optional hook for the trainer (e.g. the residual warm-up): set the current step.
    fn set_step(&mut self, _step: u64) {}

    /// A fresh state for segmented inference ([`cache`]).
    fn new_state(&self, opts: &StateOptions) -> InferenceState;
    /// One segment of a long sequence, `tokens (N, T)` with `T` a multiple of
    /// [`LanguageModel::length_multiple`], after the segments `state` has seen: the
    /// final-normed hidden states `(N, T, d)` of its tokens (landmarks dropped). Feeding a
    /// sequence segment by segment gives the logits of the full [`LanguageModel::forward`]
    /// (`tests/model_segmented.rs`), with memory per token constant except the chunk memory.
    fn forward_segment(&self, tokens: &Tensor, state: &mut InferenceState) -> Tensor;
    /// Logits `(..., V)` of hidden states from [`LanguageModel::forward_segment`].
    fn head(&self, hidden: &Tensor) -> Tensor;
}

/// Builds the model `cfg` describes, its parameters created under `vs`.
pub fn build(vs: &tch::nn::Path, cfg: &ModelConfig) -> crate::Result<Box<dyn LanguageModel>> {
    cfg.validate()?;
    Ok(match cfg.arch {
        Arch::Drt => Box::new(drt::Drt::new(vs, cfg)?),
        Arch::SwaHsa => Box::new(swa_hsa::SwaHsa::new(vs, cfg)?),
        Arch::Ramba => Box::new(ramba::Ramba::new(vs, cfg)?),
        Arch::Swa | Arch::Dense => Box::new(baseline::Transformer::new(vs, cfg)?),
    })
}
