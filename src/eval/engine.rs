//! The long-context inference engine: a model (from a checkpoint, or with random weights
//! for benchmarks) and the segmented prefill that feeds it a sequence of any length, a
//! segment at a time, keeping only the window caches and the chunk memory in between.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{self, InferenceState, LanguageModel, ModelConfig, Placement, StateOptions};
use crate::train::{checkpoint, TrainConfig};

/// A model ready for inference: weights in the compute dtype (bf16 on a GPU, fp32 on the
/// CPU), gradients off.
pub struct Engine {
    pub model: Box<dyn LanguageModel>,
    _vs: nn::VarStore,
    pub device: Device,
    pub kind: Kind,
    /// The training config saved with the checkpoint (None for random weights).
    pub train: Option<TrainConfig>,
    /// The checkpoint folder and its step.
    pub checkpoint: Option<(PathBuf, u64)>,
    /// SHA-256 of the checkpoint's weights as stored (see [`weights_sha256`]): what tells
    /// two checkpoints apart whatever their folder or step.
    pub weights_sha256: Option<String>,
    pub params: i64,
}

/// How a prefill runs.
#[derive(Debug, Clone, Copy)]
pub struct PrefillOptions {
    /// Tokens per segment (a multiple of the model's chunk size).
    pub segment: i64,
    pub placement: Placement,
}

/// What a prefill measured.
#[derive(Debug, Clone, Copy)]
pub struct PrefillStats {
    /// Tokens fed, all sequences together.
    pub tokens: i64,
    pub seconds: f64,
    /// Peak bytes allocated on the GPU during the prefill (libtorch's allocator).
    pub peak_device_bytes: Option<u64>,
    /// Bytes of chunk memory (keys and values) and landmarks at the end.
    pub memory_bytes: i64,
    pub landmark_bytes: i64,
}

impl PrefillStats {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

fn compute_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// SHA-256 over the tensors of a checkpoint in name order (each tensor's name, dtype, shape
/// and bytes): the same for the same weights however they are sharded, different for any
/// other weights (another run, another step, the same step of a retrained run, bf16 against
/// fp32).
pub fn weights_sha256(weights: &[(String, Tensor)]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut order: Vec<&(String, Tensor)> = weights.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for (name, t) in order {
        let t = t.to_device(Device::Cpu).contiguous();
        let kind = t.kind();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{kind:?}").as_bytes());
        for d in t.size() {
            h.update(d.to_le_bytes());
        }
        let numel = t.numel();
        buf.resize(numel * kind.elt_size_in_bytes(), 0);
        t.f_copy_data_u8(&mut buf, numel)?;
        h.update(&buf);
    }
    Ok(format!("{:x}", h.finalize()))
}

impl Engine {
    /// Loads the checkpoint `path` names (a `step-*` folder or a run folder's newest).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let ckpt = checkpoint::resolve(path)?;
        let state = checkpoint::read_state(&ckpt)?;
        let mut engine = Engine::build(&state.config.model, device)?;
        let (file, weights) = crate::train::weights::read_weights(&ckpt)?;
        let mut vars = engine._vs.variables();
        let mut names: Vec<String> = vars.keys().cloned().collect();
        names.sort();
        let mut dst: Vec<Tensor> = names.iter().map(|n| vars.remove(n).unwrap()).collect();
        checkpoint::copy_named(&file, &weights, "", &names, &mut dst)?;
        engine.weights_sha256 = Some(weights_sha256(&weights)?);
        engine._vs.set_kind(engine.kind);
        engine.model.set_step(state.step);
        engine.train = Some(state.config);
        engine.checkpoint = Some((ckpt, state.step));
        Ok(engine)
    }

    /// A model of `cfg` with its initial random weights (speed and memory benchmarks).
    pub fn random(cfg: &ModelConfig, device: Device) -> Result<Self> {
        let mut engine = Engine::build(cfg, device)?;
        engine._vs.set_kind(engine.kind);
        Ok(engine)
    }

    fn build(cfg: &ModelConfig, device: Device) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let model = model::build(&vs.root(), cfg)?;
        vs.freeze();
        let params = vs.variables().values().map(|t| t.numel() as i64).sum();
        Ok(Engine {
            model,
            _vs: vs,
            device,
            kind: compute_kind(device),
            train: None,
            checkpoint: None,
            weights_sha256: None,
            params,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The largest multiple of the chunk size not above `requested` (at least one chunk).
    pub fn segment_tokens(&self, requested: i64) -> i64 {
        let m = self.model.length_multiple();
        (requested / m).max(1) * m
    }

    /// Checks that every length of `lengths` holds at least one chunk (a shorter one has
    /// no usable length).
    pub fn check_lengths(&self, lengths: &[i64]) -> Result<()> {
        match lengths.iter().find(|&&l| self.usable_length(l) == 0) {
            Some(l) => Err(Error::Invalid(format!(
                "length {l} is shorter than one chunk ({} tokens)",
                self.model.length_multiple()
            ))),
            None => Ok(()),
        }
    }

    /// The largest usable length not above `requested` (a multiple of the chunk size).
    pub fn usable_length(&self, requested: i64) -> i64 {
        let m = self.model.length_multiple();
        requested / m * m
    }

    /// A fresh inference state for `batch` sequences, its chunk memory reserved for
    /// `capacity_tokens` tokens each (it grows by itself past that).
    pub fn new_state(
        &self,
        batch: i64,
        capacity_tokens: i64,
        placement: Placement,
    ) -> InferenceState {
        self.model.new_state(&StateOptions {
            batch,
            capacity_tokens,
            placement,
            kind: self.kind,
            device: self.device,
        })
    }

    /// Feeds `tokens (N, T)` (CPU, int64; `T` a multiple of the chunk size) after what
    /// `state` has seen, in segments of `segment` tokens (a multiple of the chunk size);
    /// `on_segment(start, hidden)` receives each segment's final hidden states
    /// `(N, len, d)`, `start` counted from the first of `tokens`.
    pub fn feed(
        &self,
        state: &mut InferenceState,
        tokens: &Tensor,
        segment: i64,
        mut on_segment: impl FnMut(i64, &Tensor) -> Result<()>,
    ) -> Result<()> {
        let t = tokens.size()[1];
        tch::no_grad(|| -> Result<()> {
            let mut start = 0;
            while start < t {
                let len = segment.min(t - start);
                let x = tokens.narrow(1, start, len).to_device(self.device);
                let h = self.model.forward_segment(&x, state);
                on_segment(start, &h)?;
                start += len;
            }
            Ok(())
        })
    }

    /// Feeds `tokens (N, T)` (CPU, int64; `T` a multiple of the chunk size; N sequences
    /// side by side) segment by segment; `on_segment(start, hidden)` receives each
    /// segment's final hidden states `(N, len, d)`. `progress` advances by tokens (N x len
    /// a segment).
    pub fn prefill(
        &self,
        tokens: &Tensor,
        opts: &PrefillOptions,
        progress: Option<&ProgressBar>,
        mut on_segment: impl FnMut(i64, &Tensor) -> Result<()>,
    ) -> Result<PrefillStats> {
        let (n, t) = (tokens.size()[0], tokens.size()[1]);
        let m = self.model.length_multiple();
        if t % m != 0 {
            return Err(Error::Invalid(format!(
                "{t} tokens is not a multiple of the model's chunk size {m}"
            )));
        }
        let segment = self.segment_tokens(opts.segment);
        let cuda_index = match self.device {
            Device::Cuda(i) => Some(i),
            _ => None,
        };
        if let Some(i) = cuda_index {
            tch::Cuda::synchronize(i as i64);
            crate::cuda::reset_peak(i);
        }
        let started = Instant::now();
        let mut state = self.new_state(n, t, opts.placement);
        self.feed(&mut state, tokens, segment, |start, h| {
            on_segment(start, h)?;
            if let Some(p) = progress {
                p.inc((n * h.size()[1]) as u64);
            }
            Ok(())
        })?;
        if let Some(i) = cuda_index {
            tch::Cuda::synchronize(i as i64);
        }
        let seconds = started.elapsed().as_secs_f64();
        let (memory_bytes, landmark_bytes) = state.store.as_ref().map_or((0, 0), |s| s.bytes());
        Ok(PrefillStats {
            tokens: n * t,
            seconds,
            peak_device_bytes: cuda_index.and_then(crate::cuda::peak_allocated),
            memory_bytes,
            landmark_bytes,
        })
    }
}
