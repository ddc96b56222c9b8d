//! The model configuration: the `model` section of a training config.
//!
//! Common fields sit at the top level; each chunked arch has its own section (`drt` for
//! `arch: "drt"`, `hsa` for `arch: "swa_hsa"`, `ramba` and `mamba2` for `arch: "ramba"`)
//! and the baselines take `n_layers`. Parsing is strict: an unknown key, a wrong type, a bad
//! enum value or an inconsistent value is an error that names the key (`model.drt.topk`)
//! and what is allowed. Serialising gives back a complete config (defaults filled in) that
//! parses to the same value.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::mamba2::Mamba2Config;
use crate::error::{Error, Result};

/// Which model to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Grouped Cross Attention (DRT, seed-report 2).
    Drt,
    /// Sliding-window layers with Hierarchical Sparse Attention (seed-report 3.4).
    SwaHsa,
    /// Mamba2 layers with Hierarchical Sparse Attention (RAMba, seed-report 3.3).
    Ramba,
    /// Sliding-window attention only (baseline).
    Swa,
    /// Full causal attention (baseline).
    Dense,
}

/// Position information in the self-attention layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positional {
    /// ALiBi biases, no RoPE (DRT's decoder).
    Alibi,
    /// RoPE over absolute positions (SWA+HSA).
    Rope,
    /// Nothing.
    None,
}

/// What DRT does with the landmark's own slot in the chunk memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandmarkSlot {
    /// Keep the slot with zero key and value: a softmax-off-by-one (the reference's S=63).
    Zeroed,
    /// Drop it: plain softmax over the chunk's tokens (the reference's S=64).
    Dropped,
}

/// HSA chunk weights (seed-report 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    StickBreaking,
    Softmax,
}

/// DRT / GCA settings (`model.drt`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrtConfig {
    /// Real tokens per chunk S; a landmark follows each chunk (S + 1 positions).
    pub chunk_size: i64,
    /// The landmark token id, below `vocab_size` (NeoX has none: use 50277).
    pub landmark_id: i64,
    pub landmark_slot: LandmarkSlot,
    /// Chunks retrieved per chunk (K).
    pub topk: i64,
    /// Bidirectional encoder layers.
    pub encoder_layers: i64,
    /// `[lower, group 1, group 2, ...]`: lower layers then the upper layers of each
    /// retrieval group (one retrieval per group), e.g. `[6, 6]` or `[6, 3, 3]`.
    pub decoder_layers: Vec<i64>,
    /// Gumbel noise on the top-k choice while training.
    pub gumbel: bool,
    /// Until this training step the GCA output is also added to the residual stream
    /// (`y = r + g + MLP(norm(r + g))`); from it on, the faithful `r + MLP(norm(r + g))`.
    /// 0 = always faithful. Issue 7: from scratch, the faithful layout alone did not learn
    /// retrieval on a toy task; this warm-up then the faithful layout did.
    pub residual_warmup_steps: u64,
}

/// SWA+HSA settings (`model.hsa`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HsaConfig {
    /// Tokens per chunk S.
    pub chunk_size: i64,
    pub topk: i64,
    /// Bidirectional encoder layers (at least 1: the landmark is the encoder's CLS output).
    pub encoder_layers: i64,
    /// Sliding-window layers before the chunking layer.
    pub lower_layers: i64,
    /// Retrieval groups; each is a retrieval, one HSA layer, then its share of
    /// `upper_layers` sliding-window layers.
    pub groups: i64,
    /// Sliding-window layers after the HSA layers, split evenly over the groups.
    pub upper_layers: i64,
    /// Retrieval heads r (1, or the number of kv heads).
    pub retrieval_heads: i64,
    /// Width of the retrieval query/landmark over all retrieval heads.
    pub retrieval_dim: i64,
    pub weighting: Weighting,
    /// Softmax-off-by-one inside each chunk (`sm_n = 1`).
    pub softmax_one: bool,
    pub gumbel: bool,
    /// As [`DrtConfig::residual_warmup_steps`], for the HSA output.
    pub residual_warmup_steps: u64,
}

/// RAMba settings (`model.ramba`): Mamba2 blocks below and above, HSA layers without an
/// MLP in between (seed-report 3.3). The Mamba2 blocks' own settings are `model.mamba2`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RambaConfig {
    /// Tokens per chunk S.
    pub chunk_size: i64,
    pub topk: i64,
    /// Bidirectional encoder layers (at least 1: the landmark is the encoder's CLS output).
    pub encoder_layers: i64,
    /// Key/value heads of the encoder's attention (the reference's `num_key_value_heads`;
    /// `model.n_kv_heads` is the HSA memory's, the reference's `num_kv_heads`).
    pub encoder_kv_heads: i64,
    /// Mamba2 blocks before the chunking layer.
    pub lower_layers: i64,
    /// Retrieval groups; each is a retrieval then its share of `upper_layers` as
    /// `[HSA layer, mamba_per_hsa Mamba2 blocks]` repeated.
    pub groups: i64,
    /// Mamba2 blocks after the chunking layer, all groups together.
    pub upper_layers: i64,
    /// Mamba2 blocks after each HSA layer (the reference's `num_mamba_per_gca`).
    pub mamba_per_hsa: i64,
    /// Retrieval heads r (1, or the number of kv heads).
    pub retrieval_heads: i64,
    /// Width of the retrieval query/landmark over all retrieval heads.
    pub retrieval_dim: i64,
    pub weighting: Weighting,
    /// Softmax-off-by-one inside each chunk (`sm_n = 1`).
    pub softmax_one: bool,
    pub gumbel: bool,
    /// In training only, every Mamba2 block restarts from the zero state every this many
    /// tokens (the reference's `segment_size`), while HSA spans the whole sequence. 0 = off.
    pub train_segment: i64,
}

impl RambaConfig {
    /// HSA layers per group.
    pub fn hsa_per_group(&self) -> i64 {
        self.upper_layers / self.groups / self.mamba_per_hsa
    }
}

/// The whole model section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Embedding rows, including the landmark id for `drt`.
    pub vocab_size: i64,
    pub d_model: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    /// SwiGLU hidden width, also the chunk encoder's (for `ramba` only the encoder's;
    /// default there the reference's `floor(8 d_model / 3 / 64) * 64`).
    pub d_ff: i64,
    pub norm_eps: f64,
    /// Sliding window W: a query sees itself and W past positions (landmarks included).
    /// Ignored by `dense` and `ramba`.
    pub window: i64,
    pub positional: Positional,
    /// Per-head RMSNorm on q and k in the decoder self-attention.
    pub qk_norm: bool,
    pub rope_theta: f64,
    pub tie_embeddings: bool,
    /// Standard deviation of the N(0, std) init of linear and embedding weights.
    pub init_std: f64,
    /// Layers of the `swa` and `dense` baselines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_layers: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drt: Option<DrtConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsa: Option<HsaConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramba: Option<RambaConfig>,
    /// The Mamba2 blocks of `ramba` (`d_model` and `norm_eps` default to the model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mamba2: Option<Mamba2Config>,
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        ModelConfig::from_json(&v).map_err(serde::de::Error::custom)
    }
}

fn config_error(key: &str, message: impl std::fmt::Display) -> Error {
    Error::Config {
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// A JSON object read key by key, remembering which keys were used so that leftovers can
/// be reported as unknown together with the allowed ones.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    allowed: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(path: &str, v: &'a Value) -> Result<Self> {
        let map = v
            .as_object()
            .ok_or_else(|| config_error(path, format!("expected an object, got {v}")))?;
        Ok(Fields {
            path: path.to_string(),
            map,
            allowed: Vec::new(),
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, k: &str, v: &Value) -> Result<T> {
        T::deserialize(v).map_err(|e| config_error(&self.key(k), e))
    }

    fn get<T: serde::de::DeserializeOwned>(&mut self, k: &'static str) -> Result<Option<T>> {
        self.allowed.push(k);
        self.map.get(k).map(|v| self.parse(k, v)).transpose()
    }

    fn required<T: serde::de::DeserializeOwned>(&mut self, k: &'static str) -> Result<T> {
        self.get(k)?
            .ok_or_else(|| config_error(&self.key(k), "required key is missing"))
    }

    fn or<T: serde::de::DeserializeOwned>(&mut self, k: &'static str, default: T) -> Result<T> {
        Ok(self.get(k)?.unwrap_or(default))
    }

    fn section(&mut self, k: &'static str) -> Option<(&'a Value, String)> {
        self.allowed.push(k);
        self.map.get(k).map(|v| (v, self.key(k)))
    }

    /// Errors on the first key that was never asked for.
    fn finish(self) -> Result<()> {
        if let Some(k) = self
            .map
            .keys()
            .find(|k| !self.allowed.contains(&k.as_str()))
        {
            return Err(config_error(
                &self.key(k),
                format!("unknown key; allowed: {}", self.allowed.join(", ")),
            ));
        }
        Ok(())
    }
}

impl DrtConfig {
    fn from_json(path: &str, v: &Value) -> Result<Self> {
        let mut f = Fields::new(path, v)?;
        let c = DrtConfig {
            chunk_size: f.required("chunk_size")?,
            landmark_id: f.required("landmark_id")?,
            landmark_slot: f.or("landmark_slot", LandmarkSlot::Zeroed)?,
            topk: f.required("topk")?,
            encoder_layers: f.required("encoder_layers")?,
            decoder_layers: f.required("decoder_layers")?,
            gumbel: f.or("gumbel", true)?,
            residual_warmup_steps: f.or("residual_warmup_steps", 0)?,
        };
        f.finish()?;
        Ok(c)
    }
}

impl HsaConfig {
    fn from_json(path: &str, v: &Value, n_kv_heads: i64, d_model: i64) -> Result<Self> {
        let mut f = Fields::new(path, v)?;
        let c = HsaConfig {
            chunk_size: f.required("chunk_size")?,
            topk: f.required("topk")?,
            encoder_layers: f.or("encoder_layers", 1)?,
            lower_layers: f.required("lower_layers")?,
            groups: f.or("groups", 1)?,
            upper_layers: f.required("upper_layers")?,
            retrieval_heads: f.or("retrieval_heads", n_kv_heads)?,
            retrieval_dim: f.or("retrieval_dim", d_model)?,
            weighting: f.or("weighting", Weighting::StickBreaking)?,
            softmax_one: f.or("softmax_one", false)?,
            gumbel: f.or("gumbel", false)?,
            residual_warmup_steps: f.or("residual_warmup_steps", 0)?,
        };
        f.finish()?;
        Ok(c)
    }
}

impl RambaConfig {
    fn from_json(path: &str, v: &Value, n_kv_heads: i64, d_model: i64) -> Result<Self> {
        let mut f = Fields::new(path, v)?;
        let c = RambaConfig {
            chunk_size: f.required("chunk_size")?,
            topk: f.required("topk")?,
            encoder_layers: f.or("encoder_layers", 1)?,
            encoder_kv_heads: f.or("encoder_kv_heads", n_kv_heads)?,
            lower_layers: f.required("lower_layers")?,
            groups: f.or("groups", 1)?,
            upper_layers: f.required("upper_layers")?,
            mamba_per_hsa: f.required("mamba_per_hsa")?,
            retrieval_heads: f.or("retrieval_heads", n_kv_heads)?,
            retrieval_dim: f.or("retrieval_dim", d_model)?,
            weighting: f.or("weighting", Weighting::StickBreaking)?,
            softmax_one: f.or("softmax_one", false)?,
            gumbel: f.or("gumbel", false)?,
            train_segment: f.or("train_segment", 0)?,
        };
        f.finish()?;
        Ok(c)
    }
}

/// The `mamba2` section at `path`, its `d_model` and `norm_eps` defaulting to the model's
/// (a `d_model` that differs from the model's is an error naming it).
fn mamba2_from_json(path: &str, v: &Value, d_model: i64, norm_eps: f64) -> Result<Mamba2Config> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        if let Some(d) = o.get("d_model").and_then(Value::as_i64) {
            ensure(d == d_model, &format!("{path}.d_model"), || {
                format!("{d} differs from model.d_model = {d_model} (leave it out)")
            })?;
        }
        o.entry("d_model").or_insert(d_model.into());
        o.entry("norm_eps").or_insert(norm_eps.into());
    }
    Mamba2Config::from_json(path, &v)
}

/// The chunk encoder's SwiGLU width in the reference's RAMba: `floor(8 d / 3 / 64) * 64`.
pub fn ramba_encoder_d_ff(d_model: i64) -> i64 {
    d_model * 8 / 3 / 64 * 64
}

/// `Err` naming `key` unless `ok`.
fn ensure(ok: bool, key: &str, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(config_error(key, message()))
    }
}

fn positive(v: i64, key: &str) -> Result<()> {
    ensure(v > 0, key, || format!("must be positive, got {v}"))
}

impl ModelConfig {
    /// Parses and validates the `model` section.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut f = Fields::new("model", v)?;
        let arch: Arch = f.required("arch")?;
        let d_model: i64 = f.required("d_model")?;
        let n_heads: i64 = f.required("n_heads")?;
        let n_kv_heads: i64 = f.or("n_kv_heads", n_heads)?;
        let mut c = ModelConfig {
            arch,
            vocab_size: f.required("vocab_size")?,
            d_model,
            n_heads,
            n_kv_heads,
            d_ff: match arch {
                Arch::Ramba => f.or("d_ff", ramba_encoder_d_ff(d_model))?,
                _ => f.required("d_ff")?,
            },
            norm_eps: f.or("norm_eps", 1e-5)?,
            window: f.or("window", 0)?,
            positional: f.or(
                "positional",
                match arch {
                    // ramba has no self-attention but its encoder's, which uses RoPE.
                    Arch::SwaHsa | Arch::Ramba => Positional::Rope,
                    _ => Positional::Alibi,
                },
            )?,
            qk_norm: f.or("qk_norm", arch == Arch::SwaHsa)?,
            rope_theta: f.or("rope_theta", 10000.0)?,
            tie_embeddings: f.or("tie_embeddings", true)?,
            init_std: f.or("init_std", 0.02)?,
            n_layers: f.get("n_layers")?,
            drt: None,
            hsa: None,
            ramba: None,
            mamba2: None,
        };
        if let Some((v, path)) = f.section("drt") {
            c.drt = Some(DrtConfig::from_json(&path, v)?);
        }
        if let Some((v, path)) = f.section("hsa") {
            c.hsa = Some(HsaConfig::from_json(&path, v, n_kv_heads, d_model)?);
        }
        if let Some((v, path)) = f.section("ramba") {
            c.ramba = Some(RambaConfig::from_json(&path, v, n_kv_heads, d_model)?);
        }
        let mamba2 = f.section("mamba2");
        if let Some((v, path)) = &mamba2 {
            c.mamba2 = Some(mamba2_from_json(path, v, d_model, c.norm_eps)?);
        } else if arch == Arch::Ramba {
            // The section is optional for ramba: mamba_ssm's defaults at the model's width.
            c.mamba2 = Some(Mamba2Config {
                norm_eps: c.norm_eps,
                ..Mamba2Config::new(d_model)
            });
        }
        f.finish()?;
        c.validate()?;
        Ok(c)
    }

    /// Tokens per memory chunk of a chunked arch (drt, swa_hsa, ramba); None for swa/dense.
    pub fn chunk_size(&self) -> Option<i64> {
        match self.arch {
            Arch::Drt => self.drt.as_ref().map(|d| d.chunk_size),
            Arch::SwaHsa => self.hsa.as_ref().map(|h| h.chunk_size),
            Arch::Ramba => self.ramba.as_ref().map(|r| r.chunk_size),
            Arch::Swa | Arch::Dense => None,
        }
    }

    /// Head width.
    pub fn head_dim(&self) -> i64 {
        self.d_model / self.n_heads
    }

    /// Checks values and their consistency; errors name the key.
    pub fn validate(&self) -> Result<()> {
        positive(self.vocab_size, "model.vocab_size")?;
        positive(self.d_model, "model.d_model")?;
        positive(self.n_heads, "model.n_heads")?;
        positive(self.n_kv_heads, "model.n_kv_heads")?;
        positive(self.d_ff, "model.d_ff")?;
        ensure(self.d_model % self.n_heads == 0, "model.n_heads", || {
            format!(
                "{} does not divide model.d_model = {}",
                self.n_heads, self.d_model
            )
        })?;
        ensure(
            self.n_heads % self.n_kv_heads == 0,
            "model.n_kv_heads",
            || {
                format!(
                    "{} does not divide model.n_heads = {}",
                    self.n_kv_heads, self.n_heads
                )
            },
        )?;
        let rope = self.positional == Positional::Rope;
        ensure(
            !rope || self.head_dim() % 2 == 0,
            "model.positional",
            || format!("rope needs an even head width, got {}", self.head_dim()),
        )?;
        ensure(self.norm_eps > 0.0, "model.norm_eps", || {
            format!("must be positive, got {}", self.norm_eps)
        })?;
        ensure(self.init_std > 0.0, "model.init_std", || {
            format!("must be positive, got {}", self.init_std)
        })?;
        if !matches!(self.arch, Arch::Dense | Arch::Ramba) {
            positive(self.window, "model.window")?;
        }
        let arch = serde_json::to_value(self.arch).unwrap_or_default();
        let only = |present: bool, key: &str, archs: &str| {
            ensure(!present, key, || {
                format!("not used by arch {arch}; only by {archs}")
            })
        };
        let need =
            |present: bool, key: &str| ensure(present, key, || format!("required for arch {arch}"));
        match self.arch {
            Arch::Swa | Arch::Dense => {
                need(self.n_layers.is_some(), "model.n_layers")?;
                positive(self.n_layers.unwrap_or(0), "model.n_layers")?;
            }
            _ => only(self.n_layers.is_some(), "model.n_layers", "swa, dense")?,
        }
        match self.arch {
            Arch::Drt => need(self.drt.is_some(), "model.drt")?,
            _ => only(self.drt.is_some(), "model.drt", "drt")?,
        }
        match self.arch {
            Arch::SwaHsa => need(self.hsa.is_some(), "model.hsa")?,
            _ => only(self.hsa.is_some(), "model.hsa", "swa_hsa")?,
        }
        match self.arch {
            Arch::Ramba => {
                need(self.ramba.is_some(), "model.ramba")?;
                need(self.mamba2.is_some(), "model.mamba2")?;
            }
            _ => {
                only(self.ramba.is_some(), "model.ramba", "ramba")?;
                only(self.mamba2.is_some(), "model.mamba2", "ramba")?;
            }
        }
        if let Some(d) = &self.drt {
            self.validate_drt(d)?;
        }
        if let Some(h) = &self.hsa {
            self.validate_hsa(h)?;
        }
        if let Some(r) = &self.ramba {
            self.validate_ramba(r)?;
        }
        if let Some(m) = &self.mamba2 {
            m.validate("model.mamba2")?;
            ensure(m.d_model == self.d_model, "model.mamba2.d_model", || {
                format!(
                    "{} differs from model.d_model = {} (leave it out)",
                    m.d_model, self.d_model
                )
            })?;
        }
        Ok(())
    }

    fn validate_drt(&self, d: &DrtConfig) -> Result<()> {
        positive(d.chunk_size, "model.drt.chunk_size")?;
        positive(d.topk, "model.drt.topk")?;
        positive(d.encoder_layers, "model.drt.encoder_layers")?;
        ensure(
            (0..self.vocab_size).contains(&d.landmark_id),
            "model.drt.landmark_id",
            || {
                format!(
                    "{} is outside 0..{} (model.vocab_size)",
                    d.landmark_id, self.vocab_size
                )
            },
        )?;
        ensure(
            d.decoder_layers.len() >= 2,
            "model.drt.decoder_layers",
            || {
                format!(
                    "needs [lower, group 1, ...] with at least one retrieval group, got {:?}",
                    d.decoder_layers
                )
            },
        )?;
        ensure(
            d.decoder_layers[0] >= 0 && d.decoder_layers[1..].iter().all(|&n| n > 0),
            "model.drt.decoder_layers",
            || {
                format!(
                    "lower layers >= 0 and group layers > 0, got {:?}",
                    d.decoder_layers
                )
            },
        )
    }

    fn validate_ramba(&self, r: &RambaConfig) -> Result<()> {
        positive(r.chunk_size, "model.ramba.chunk_size")?;
        positive(r.topk, "model.ramba.topk")?;
        positive(r.encoder_layers, "model.ramba.encoder_layers")?;
        positive(r.groups, "model.ramba.groups")?;
        positive(r.mamba_per_hsa, "model.ramba.mamba_per_hsa")?;
        positive(r.retrieval_heads, "model.ramba.retrieval_heads")?;
        ensure(
            r.encoder_kv_heads > 0 && self.n_heads % r.encoder_kv_heads == 0,
            "model.ramba.encoder_kv_heads",
            || {
                format!(
                    "must divide model.n_heads = {}, got {}",
                    self.n_heads, r.encoder_kv_heads
                )
            },
        )?;
        ensure(r.lower_layers >= 0, "model.ramba.lower_layers", || {
            format!("must be >= 0, got {}", r.lower_layers)
        })?;
        let per = r.groups * r.mamba_per_hsa;
        ensure(
            r.upper_layers > 0 && r.upper_layers % per == 0,
            "model.ramba.upper_layers",
            || {
                format!(
                    "must be a positive multiple of model.ramba.groups x model.ramba.mamba_per_hsa \
                     = {per} (each group's share is [HSA layer, mamba_per_hsa Mamba2 blocks] \
                     repeated), got {}",
                    r.upper_layers
                )
            },
        )?;
        ensure(
            r.retrieval_heads == 1 || r.retrieval_heads == self.n_kv_heads,
            "model.ramba.retrieval_heads",
            || {
                format!(
                    "must be 1 or model.n_kv_heads = {}, got {}",
                    self.n_kv_heads, r.retrieval_heads
                )
            },
        )?;
        ensure(
            r.retrieval_dim > 0 && r.retrieval_dim % r.retrieval_heads == 0,
            "model.ramba.retrieval_dim",
            || {
                format!(
                    "must be a positive multiple of retrieval_heads, got {}",
                    r.retrieval_dim
                )
            },
        )?;
        ensure(r.train_segment >= 0, "model.ramba.train_segment", || {
            format!("must be >= 0 (0 = off), got {}", r.train_segment)
        })
    }

    fn validate_hsa(&self, h: &HsaConfig) -> Result<()> {
        positive(h.chunk_size, "model.hsa.chunk_size")?;
        positive(h.topk, "model.hsa.topk")?;
        positive(h.encoder_layers, "model.hsa.encoder_layers")?;
        positive(h.groups, "model.hsa.groups")?;
        positive(h.retrieval_heads, "model.hsa.retrieval_heads")?;
        ensure(h.lower_layers >= 0, "model.hsa.lower_layers", || {
            format!("must be >= 0, got {}", h.lower_layers)
        })?;
        ensure(
            h.upper_layers >= 0 && h.upper_layers % h.groups == 0,
            "model.hsa.upper_layers",
            || {
                format!(
                    "must be a multiple of model.hsa.groups = {}, got {}",
                    h.groups, h.upper_layers
                )
            },
        )?;
        ensure(
            h.retrieval_heads == 1 || h.retrieval_heads == self.n_kv_heads,
            "model.hsa.retrieval_heads",
            || {
                format!(
                    "must be 1 or model.n_kv_heads = {}, got {}",
                    self.n_kv_heads, h.retrieval_heads
                )
            },
        )?;
        ensure(
            h.retrieval_dim > 0 && h.retrieval_dim % h.retrieval_heads == 0,
            "model.hsa.retrieval_dim",
            || {
                format!(
                    "must be a positive multiple of retrieval_heads, got {}",
                    h.retrieval_dim
                )
            },
        )
    }
}
