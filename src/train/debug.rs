//! `lcm debug`: the lcm side of the fidelity harness (scripts/fidelity/, docs/fidelity.md).
//!
//! * [`init_checkpoint`]: a freshly initialised model as a checkpoint folder (`state.json` and
//!   fp32 `model.safetensors`), which `lcm export` (also `--names reference`), `lcm eval` and
//!   `pretrain --init` read like any other.
//! * [`forward_backward`]: one forward (no Gumbel noise) and backward of a checkpoint's
//!   model on given tokens, with the training loss: the logits, the loss, every
//!   parameter's gradient and, for a DRT, each group's retrieval, as tensors to write to a
//!   safetensors file.

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::drt::Drt;
use crate::model::{self, reference, Arch, LanguageModel, ModelConfig};
use crate::ops::xent::IGNORE;
use crate::train::checkpoint::{self, copy_named, read_state, State};
use crate::train::config::TrainConfig;
use crate::train::export::Naming;
use crate::train::trainer::lm_loss;
use crate::train::weights::{self, read_weights};

/// Writes the model `cfg` with its initial weights (drawn after `tch::manual_seed(seed)`)
/// to the checkpoint folder `out` (which must not exist): `state.json` at step 0 (its
/// training config a placeholder around the model, [`TrainConfig::for_model`]) and fp32
/// `model.safetensors`. Returns `out`.
pub fn init_checkpoint(cfg: &ModelConfig, seed: u64, out: &Path) -> Result<PathBuf> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::Invalid(format!(
            "{} exists; lcm debug init writes a new folder",
            out.display()
        )));
    }
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    model::build(&vs.root(), cfg)?;
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_kind(Kind::Float)))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let state = State {
        step: 0,
        samples: 0,
        tokens: 0,
        seed,
        world: 1,
        lcm_version: env!("CARGO_PKG_VERSION").into(),
        config: TrainConfig::for_model(cfg.clone())?,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    weights::write(&out.join(weights::SINGLE), &tensors)?;
    let p = out.join("state.json");
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
    Ok(out.to_path_buf())
}

/// How [`forward_backward`] runs.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    pub device: Device,
    /// The weights' dtype in forward and backward (bf16: as `precision: bf16` trains).
    pub kind: Kind,
    /// Names of the gradients: lcm's, or the reference DRT's parameter names.
    pub names: Naming,
}

/// One forward and backward of the model of checkpoint `ckpt` on `tokens (N, T)` (int64,
/// `T` a multiple of the model's chunk size): the forward without Gumbel noise (as
/// `train = false`), the loss of training ([`lm_loss`], mean over every target: token
/// `t + 1` for position `t < T - 1`). Returns, to write as one safetensors file:
///
/// * `logits (N, T, V)` in the model's dtype, `loss` (fp32, a scalar);
/// * `grad.<name>` for every parameter, in the model's dtype (a tied head's gradient is in
///   its embedding's);
/// * for a DRT, per retrieval group `g`: `retrieval.<g>.indices (N, C, K)` (int64, -1 in
///   empty slots) and `retrieval.<g>.weights (N, C, K)` (fp32), landmark `i`'s choice
///   (serving chunk `i + 1`).
pub fn forward_backward(
    ckpt: &Path,
    tokens: &Tensor,
    opts: &ProbeOptions,
) -> Result<Vec<(String, Tensor)>> {
    let ckpt = checkpoint::resolve(ckpt)?;
    let state = read_state(&ckpt)?;
    let cfg = &state.config.model;
    let pairs = match opts.names {
        Naming::Lcm => None,
        Naming::Reference => {
            reference::check_mappable(cfg, state.step)?;
            Some(reference::name_pairs(cfg)?)
        }
    };
    if tokens.dim() != 2 || tokens.kind() != Kind::Int64 {
        return Err(Error::Invalid(format!(
            "tokens must be (N, T) int64, got {:?} {:?}",
            tokens.size(),
            tokens.kind()
        )));
    }
    let mut vs = nn::VarStore::new(opts.device);
    let mut built = match cfg.arch {
        Arch::Drt => Built::Drt(Box::new(Drt::new(&vs.root(), cfg)?)),
        _ => Built::Other(model::build(&vs.root(), cfg)?),
    };
    built.model_mut().set_step(state.step);
    let model = built.model();
    let multiple = model.length_multiple();
    if tokens.size()[1] % multiple != 0 || tokens.size()[1] < 2 {
        return Err(Error::Invalid(format!(
            "tokens: length {} is not a positive multiple of the chunk size {multiple}",
            tokens.size()[1]
        )));
    }
    let (file, weights) = read_weights(&ckpt)?;
    let mut vars = vs.variables();
    let mut names: Vec<String> = vars.keys().cloned().collect();
    names.sort();
    let mut dst: Vec<Tensor> = names.iter().map(|n| vars.remove(n).unwrap()).collect();
    copy_named(&file, &weights, "", &names, &mut dst)?;
    vs.set_kind(opts.kind);

    let tokens = tokens.to_device(opts.device);
    let (n, t) = (tokens.size()[0], tokens.size()[1]);
    let targets = Tensor::cat(
        &[
            tokens.narrow(1, 1, t - 1),
            Tensor::full([n, 1], IGNORE, (Kind::Int64, opts.device)),
        ],
        1,
    );
    let mut out = vec![];
    let hidden = match &built {
        Built::Drt(m) => {
            let o = m.forward_detailed(&tokens, false);
            for (g, r) in o.retrievals.iter().enumerate() {
                out.push((format!("retrieval.{g}.indices"), r.indices.shallow_clone()));
                out.push((format!("retrieval.{g}.weights"), r.weights.detach()));
            }
            o.hidden
        }
        Built::Other(m) => m.hidden(&tokens, false),
    };
    let logits = model.head(&hidden);
    let loss = lm_loss(&logits, &targets);
    loss.backward();
    out.push(("logits".into(), logits.detach()));
    out.push(("loss".into(), loss.detach().to_kind(Kind::Float)));
    let map: std::collections::HashMap<&str, &str> = pairs
        .iter()
        .flatten()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    for (name, var) in names.iter().zip(&dst) {
        let g = var.grad();
        if !g.defined() {
            return Err(Error::Invalid(format!(
                "parameter `{name}` received no gradient"
            )));
        }
        let name = match map.get(name.as_str()) {
            Some(r) => r.to_string(),
            None if pairs.is_some() => {
                return Err(Error::Invalid(format!(
                    "parameter `{name}` has no reference name"
                )))
            }
            None => name.clone(),
        };
        out.push((format!("grad.{name}"), g));
    }
    let moved: Vec<(String, Tensor)> = out
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous()))
        .collect();
    Ok(moved)
}

/// The model [`forward_backward`] runs: a DRT as itself, for its retrievals.
enum Built {
    Drt(Box<Drt>),
    Other(Box<dyn LanguageModel>),
}

impl Built {
    fn model(&self) -> &dyn LanguageModel {
        match self {
            Built::Drt(m) => m.as_ref(),
            Built::Other(m) => m.as_ref(),
        }
    }

    fn model_mut(&mut self) -> &mut dyn LanguageModel {
        match self {
            Built::Drt(m) => m.as_mut(),
            Built::Other(m) => m.as_mut(),
        }
    }
}
