//! The training config (`lcm pretrain --config FILE`): a JSON file whose `model` section is a
//! [`ModelConfig`] and whose other sections say what to train on and how.
//!
//! Parsing is strict: an unknown key or a bad value is an error naming its dotted path
//! (`optim.lr`), and `--set key=value` overrides are applied to the JSON before parsing, so
//! they are checked the same way.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::synthetic::PasskeyConfig;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model, inline or as the path of a model config file (relative to this file).
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    /// Optimizer steps to run.
    pub steps: u64,
    /// Sequences per micro-batch (per rank).
    pub batch_size: i64,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: u64,
    /// Raw tokens per sequence (landmarks, if any, are added by the model).
    pub seq_len: i64,
    /// Stages before the plain run: stage `i` runs until step `until` at its `seq_len` (and
    /// its `min_gap` for synthetic rows, if given), then the next stage, then `seq_len` and
    /// `data.synthetic.min_gap` themselves. E.g. a retrieval toy learns where top-k covers
    /// every visible chunk and the needle is past the window, then with more chunks, then
    /// with needles anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curriculum: Vec<CurriculumStage>,
    #[serde(default)]
    pub precision: Precision,
    /// `auto` (CUDA if visible), `cpu` or `cuda`.
    #[serde(default = "auto")]
    pub device: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Data parallelism, for runs launched on several processes (`lcm launch`, torchrun).
    #[serde(default)]
    pub dist: DistConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Seconds the rendezvous and any collective may wait for a peer before every rank
    /// fails (a rank that died or hangs).
    pub timeout_s: f64,
    /// Gradient bucket size in MiB (DDP's default 25): each bucket's all-reduce starts as
    /// soon as its gradients are ready, overlapping the rest of the backward.
    pub bucket_mib: f64,
    /// ZeRO-1: each rank keeps the AdamW moments and fp32 master weights of 1/world of the
    /// parameters, updates them, and the ranks all-gather the updated weights after each
    /// step. Saves 12 bytes a parameter times (world - 1)/world on each rank; the weights
    /// and checkpoints are the same as without it.
    pub shard_optimizer: bool,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            timeout_s: 600.0,
            bucket_mib: 25.0,
            shard_optimizer: false,
        }
    }
}

/// One stage of [`TrainConfig::curriculum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurriculumStage {
    /// The stage runs for steps `< until` (after the previous stage).
    pub until: u64,
    pub seq_len: i64,
    /// `data.synthetic.min_gap` during the stage (default: the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gap: Option<usize>,
    /// `data.synthetic.key_lo` and `key_hi` during the stage (default: the same). Keys drawn
    /// apart from the haystack's ids are told from the text by what they are; keys drawn
    /// from the haystack's own ids only by where they stand after the needle. A model that
    /// learns the first and is then moved to the second keeps retrieving, where one trained
    /// on the second from the start stays at chance (docs/experiments.md, "keys from the
    /// haystack's own ids").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_lo: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hi: Option<u32>,
}

impl CurriculumStage {
    /// `p` as this stage changes it, or `None` where the stage changes nothing of it.
    pub fn synthetic(&self, p: &PasskeyConfig) -> Option<PasskeyConfig> {
        let min_gap = self.min_gap.unwrap_or(p.min_gap);
        let key_lo = self.key_lo.unwrap_or(p.key_lo);
        let key_hi = self.key_hi.unwrap_or(p.key_hi);
        if (min_gap, key_lo, key_hi) == (p.min_gap, p.key_lo, p.key_hi) {
            return None;
        }
        Some(PasskeyConfig {
            min_gap,
            key_lo,
            key_hi,
            ..p.clone()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// bf16 weights and activations in forward/backward; fp32 master weights and optimizer
    /// state (tch's autocast is fp16-only, so this is done explicitly).
    Bf16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training corpora (Megatron/GPT-NeoX prefixes) with mixture weights. Empty when the
    /// haystack is synthetic (`random`).
    #[serde(default)]
    pub train: Vec<CorpusSource>,
    /// Held-out corpus for the eval loss (default: the first training corpus).
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// A synthetic haystack of uniformly random token ids instead of a corpus (for toys).
    #[serde(default)]
    pub random: Option<RandomHaystack>,
    /// Needles inserted into training windows, so that retrieval is learned from the start.
    #[serde(default)]
    pub synthetic: Option<PasskeyConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusSource {
    pub prefix: PathBuf,
    #[serde(default = "one_f")]
    pub weight: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomHaystack {
    /// Token ids are drawn uniformly from [lo, hi).
    pub lo: u32,
    pub hi: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not norms or biases).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Where checkpoints (`step-NNNNNNNN/`) and metrics.jsonl go.
    pub dir: PathBuf,
    /// Save every this many steps (0: only at the end or on Ctrl-C).
    pub every: u64,
    /// Keep the newest this many checkpoints.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: PathBuf::from("runs/default"),
            every: 0,
            keep: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Write a metrics line every this many steps.
    pub every: u64,
    /// Eval loss every this many steps (0: never).
    pub eval_every: u64,
    pub eval_batches: u64,
    /// The device's peak in TFLOP/s for MFU (default: 799 on CUDA, the measured H200 bf16
    /// GEMM rate; none on CPU, where MFU is not reported).
    pub peak_tflops: Option<f64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            every: 10,
            eval_every: 0,
            eval_batches: 4,
            peak_tflops: None,
        }
    }
}

fn one() -> u64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn auto() -> String {
    "auto".into()
}

fn config_error(key: &str, message: impl std::fmt::Display) -> Error {
    Error::Config {
        key: key.to_string(),
        message: message.to_string(),
    }
}

impl TrainConfig {
    /// Reads `path`, applies `--set key=value` overrides, parses and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut v: Value = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "{}:{}:{}: not valid JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        // `"model": "models/x.json"` names a model config file, relative to this one.
        if let Some(rel) = v.get("model").and_then(Value::as_str) {
            let mpath = path.parent().unwrap_or(Path::new(".")).join(rel);
            let mtext = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
            let model: Value = serde_json::from_str(&mtext).map_err(|e| {
                Error::Invalid(format!(
                    "{}:{}:{}: not valid JSON: {e}",
                    mpath.display(),
                    e.line(),
                    e.column()
                ))
            })?;
            v["model"] = model;
        }
        for o in overrides {
            apply_override(&mut v, o)?;
        }
        Self::from_json(v).map_err(|e| match e {
            Error::Config { key, message } => Error::Config {
                key,
                message: format!("{message} (in {})", path.display()),
            },
            e => e,
        })
    }

    pub fn from_json(v: Value) -> Result<Self> {
        let c: TrainConfig = serde_path_to_error::deserialize(v).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            // The model section reports its own key path.
            if inner.starts_with("config key `") {
                Error::Invalid(inner)
            } else {
                config_error(&key, inner)
            }
        })?;
        let mut c = c;
        c.fill_end_jitter();
        c.validate()?;
        Ok(c)
    }

    /// A training config that carries only `model`, around a placeholder run (one step of
    /// one sequence of two chunks on a random haystack): the `state.json` of a checkpoint
    /// that no training wrote, such as a freshly initialised model (`lcm debug init`).
    pub fn for_model(model: ModelConfig) -> Result<Self> {
        let seq_len = 2 * model.chunk_size().unwrap_or(1);
        let hi = match &model.drt {
            Some(d) => d.landmark_id.max(1),
            None => model.vocab_size,
        };
        let model = serde_json::to_value(&model).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::from_json(serde_json::json!({
            "model": model,
            "data": { "random": { "lo": 0, "hi": hi } },
            "steps": 1,
            "batch_size": 1,
            "seq_len": seq_len,
        }))
    }

    /// `data.synthetic.end_jitter` unset: one chunk's worth (see its doc).
    fn fill_end_jitter(&mut self) {
        let chunk = self.model.chunk_size().unwrap_or(1);
        if let Some(s) = &mut self.data.synthetic {
            s.end_jitter
                .get_or_insert((chunk as usize).saturating_sub(1));
        }
    }

    pub fn validate(&self) -> Result<()> {
        let pos = |ok: bool, key: &str, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(config_error(key, what))
            }
        };
        pos(self.steps > 0, "steps", "must be positive")?;
        pos(self.batch_size > 0, "batch_size", "must be positive")?;
        pos(self.grad_accum > 0, "grad_accum", "must be positive")?;
        pos(self.seq_len > 1, "seq_len", "must be at least 2")?;
        pos(self.optim.lr > 0.0, "optim.lr", "must be positive")?;
        pos(
            self.dist.timeout_s > 0.0,
            "dist.timeout_s",
            "must be positive",
        )?;
        pos(
            self.dist.bucket_mib > 0.0,
            "dist.bucket_mib",
            "must be positive",
        )?;
        pos(
            (0.0..=self.optim.lr).contains(&self.optim.min_lr),
            "optim.min_lr",
            "must be in [0, optim.lr]",
        )?;
        pos(
            (0.0..1.0).contains(&self.optim.beta1),
            "optim.beta1",
            "must be in [0, 1)",
        )?;
        pos(
            (0.0..1.0).contains(&self.optim.beta2),
            "optim.beta2",
            "must be in [0, 1)",
        )?;
        pos(
            self.optim.grad_clip >= 0.0,
            "optim.grad_clip",
            "must be >= 0",
        )?;
        pos(
            self.checkpoint.keep > 0,
            "checkpoint.keep",
            "must be at least 1",
        )?;
        pos(
            ["auto", "cpu", "cuda"].contains(&self.device.as_str()),
            "device",
            "allowed values: auto, cpu, cuda",
        )?;
        match (&self.data.random, self.data.train.is_empty()) {
            (Some(_), false) => {
                return Err(config_error(
                    "data.random",
                    "give either data.train or data.random, not both",
                ))
            }
            (None, true) => {
                return Err(config_error(
                    "data.train",
                    "at least one corpus (or data.random) is needed",
                ))
            }
            (Some(r), true) => {
                pos(
                    r.lo < r.hi,
                    "data.random.hi",
                    "must be greater than data.random.lo",
                )?;
                pos(
                    (r.hi as i64) <= self.model.vocab_size,
                    "data.random.hi",
                    "must not exceed model.vocab_size",
                )?;
            }
            (None, false) => {}
        }
        for (i, c) in self.data.train.iter().enumerate() {
            pos(
                c.weight > 0.0,
                &format!("data.train[{i}].weight"),
                "must be positive",
            )?;
        }
        let mut until = 0;
        for (i, st) in self.curriculum.iter().enumerate() {
            let key = format!("curriculum[{i}]");
            pos(st.until > until, &format!("{key}.until"), "must increase")?;
            pos(
                (2..=self.seq_len).contains(&st.seq_len),
                &format!("{key}.seq_len"),
                "must be in [2, seq_len]",
            )?;
            until = st.until;
        }
        if let Some(s) = &self.data.synthetic {
            s.validate(self.seq_len, self.model.vocab_size)?;
            for (i, st) in self.curriculum.iter().enumerate() {
                let keys = st.key_lo.is_some() || st.key_hi.is_some();
                if keys && !s.variants.is_empty() {
                    return Err(config_error(
                        &format!("curriculum[{i}].key_lo"),
                        "a stage's key range needs data.synthetic without variants \
                         (each variant draws its own keys)",
                    ));
                }
                let staged = st.synthetic(s).unwrap_or_else(|| s.clone());
                staged
                    .validate(st.seq_len, self.model.vocab_size)
                    .map_err(|e| match e {
                        Error::Config { key, message } => Error::Config {
                            key,
                            message: format!("{message} (during curriculum[{i}])"),
                        },
                        e => e,
                    })?;
            }
        }
        Ok(())
    }

    /// Sequence length at optimizer step `step` (the curriculum's, then `seq_len`).
    pub fn seq_len_at(&self, step: u64) -> i64 {
        self.stage_at(step).map_or(self.seq_len, |s| s.seq_len)
    }

    /// The curriculum stage that step `step` is in, if any.
    pub fn stage_at(&self, step: u64) -> Option<&CurriculumStage> {
        self.curriculum.iter().find(|s| step < s.until)
    }

    /// Every sequence length the run trains at.
    pub fn lengths(&self) -> impl Iterator<Item = i64> + '_ {
        self.curriculum
            .iter()
            .map(|s| s.seq_len)
            .chain([self.seq_len])
    }

    pub fn device(&self) -> Result<tch::Device> {
        match self.device.as_str() {
            "cpu" => Ok(tch::Device::Cpu),
            "cuda" if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
            "cuda" => Err(config_error(
                "device",
                "cuda asked for but no CUDA device is visible",
            )),
            _ => Ok(tch::Device::cuda_if_available()),
        }
    }
}

/// Applies `a.b.c=value` to the JSON tree. The value is parsed as JSON when it is valid
/// JSON (numbers, booleans, arrays, quoted strings), and taken as a plain string otherwise.
pub fn apply_override(root: &mut Value, spec: &str) -> Result<()> {
    let (path, raw) = spec
        .split_once('=')
        .ok_or_else(|| Error::Invalid(format!("--set {spec}: expected key=value")))?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut node = root;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, k) in keys.iter().enumerate() {
        let obj = node.as_object_mut().ok_or_else(|| {
            config_error(
                &keys[..i].join("."),
                "is not an object, cannot --set inside it",
            )
        })?;
        if i + 1 == keys.len() {
            obj.insert(k.to_string(), value);
            return Ok(());
        }
        node = obj
            .entry(k.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    Ok(())
}
