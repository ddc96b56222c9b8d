//! Checkpoints: `DIR/step-NNNNNNNN/` holding
//!   model.safetensors   fp32 master weights, named as in the model's VarStore
//!                       (`embed.weight`, `lower.0.attn.q_proj.weight`, ...): loadable
//!                       by Python's `safetensors.torch.load_file`
//!   optim.safetensors   AdamW moments `m.<name>` and `v.<name>` (fp32)
//!   state.json          step, samples consumed, seed, the resolved config
//! Each is written into `DIR/.tmp-step-NNNNNNNN/` and the folder renamed when complete, so
//! a crash mid-save leaves the previous checkpoint as the newest complete one. Only the
//! newest `keep` are kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::train::config::TrainConfig;
use crate::train::optim::{AdamW, FullState};
use crate::train::weights::read_weights;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Optimizer steps completed.
    pub step: u64,
    /// Training samples consumed (all ranks), the data position.
    pub samples: u64,
    /// Raw tokens trained on.
    pub tokens: u64,
    pub seed: u64,
    /// Ranks of the run that wrote it (data parallelism); 1 for checkpoints that predate it.
    #[serde(default = "one")]
    pub world: u64,
    pub lcm_version: String,
    pub config: TrainConfig,
}

fn one() -> u64 {
    1
}

fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

fn tch_err(path: &Path) -> impl Fn(tch::TchError) -> Error + '_ {
    move |e| crate::train::weights::tch_error(path, e)
}

/// Writes a checkpoint of the optimizer state `full` (its variables `names`) at
/// `state.step` under `dir`, then prunes to `keep`. A save that fails (a full disk) removes
/// its temporary folder and leaves every earlier checkpoint as it was.
pub fn save(
    dir: &Path,
    names: &[String],
    full: &FullState,
    state: &State,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".tmp-step-{:08}", state.step));
    let saved = write_checkpoint(dir, &tmp, names, full, state);
    if saved.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let final_dir = saved?;
    prune(dir, keep)?;
    Ok(final_dir)
}

/// The files of a checkpoint into `tmp`, then `tmp` renamed to its `step-*` name.
fn write_checkpoint(
    dir: &Path,
    tmp: &Path,
    names: &[String],
    full: &FullState,
    state: &State,
) -> Result<PathBuf> {
    let final_dir = step_dir(dir, state.step);
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    }
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;

    let weights: Vec<(&str, &Tensor)> =
        names.iter().map(|n| n.as_str()).zip(&full.master).collect();
    let p = tmp.join("model.safetensors");
    Tensor::write_safetensors(&weights, &p).map_err(tch_err(&p))?;

    let m_names: Vec<String> = names.iter().map(|n| format!("m.{n}")).collect();
    let v_names: Vec<String> = names.iter().map(|n| format!("v.{n}")).collect();
    let moments: Vec<(&str, &Tensor)> = m_names
        .iter()
        .map(|n| n.as_str())
        .zip(&full.m)
        .chain(v_names.iter().map(|n| n.as_str()).zip(&full.v))
        .collect();
    let p = tmp.join("optim.safetensors");
    Tensor::write_safetensors(&moments, &p).map_err(tch_err(&p))?;

    let p = tmp.join("state.json");
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
    for f in ["model.safetensors", "optim.safetensors", "state.json"] {
        let p = tmp.join(f);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&p, e))?;
    }

    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    Ok(final_dir)
}

/// Complete checkpoints under `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::util::list_dir(dir, |p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.starts_with("step-") && p.join("state.json").is_file()
    })
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir)?;
    for old in &all[..all.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(())
}

/// The checkpoint `path` names: a `step-*` folder itself, or the newest one in a run folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    list(path)?.pop().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no complete checkpoint (step-*/state.json) found",
            path.display()
        ))
    })
}

pub fn read_state(ckpt: &Path) -> Result<State> {
    let p = ckpt.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))
}

/// Loads weights (and, with `with_optimizer`, the moments and step) into `opt`. Every
/// variable must be present with its shape; extra names are an error too.
pub fn load(ckpt: &Path, opt: &mut AdamW, with_optimizer: bool) -> Result<State> {
    let state = read_state(ckpt).map_err(|e| corrupt(ckpt, e))?;
    let (p, weights) = read_weights(ckpt).map_err(|e| corrupt(ckpt, e))?;
    copy_named(&p, &weights, "", &opt.names, &mut opt.master)?;
    if with_optimizer {
        let p = ckpt.join("optim.safetensors");
        let moments = Tensor::read_safetensors(&p).map_err(|e| corrupt(ckpt, tch_err(&p)(e)))?;
        let (m, v): (Vec<_>, Vec<_>) = moments.into_iter().partition(|(n, _)| n.starts_with("m."));
        copy_named(&p, &m, "m.", &opt.names, &mut opt.m)?;
        copy_named(&p, &v, "v.", &opt.names, &mut opt.v)?;
        opt.step = state.step;
    }
    opt.sync_working();
    Ok(state)
}

/// Whether every file of checkpoint `ckpt` reads (state, weights and, if present, moments).
fn intact(ckpt: &Path) -> bool {
    let optim = ckpt.join("optim.safetensors");
    read_state(ckpt).is_ok()
        && read_weights(ckpt).is_ok()
        && (!optim.exists() || Tensor::read_safetensors(&optim).is_ok())
}

/// The error for checkpoint `ckpt` whose files do not read, naming the newest intact
/// checkpoint before it in its run folder, which a resume can start from instead.
fn corrupt(ckpt: &Path, e: Error) -> Error {
    let older = ckpt
        .parent()
        .and_then(|run| list(run).ok())
        .unwrap_or_default()
        .into_iter()
        .rev()
        .filter(|c| c.file_name() < ckpt.file_name())
        .find(|c| intact(c));
    let hint = match older {
        Some(c) => format!(
            "; the newest intact checkpoint before it is {0}: resume from it with --resume {0}",
            c.display()
        ),
        None => "; no intact checkpoint precedes it in its run folder".into(),
    };
    Error::Invalid(format!(
        "checkpoint {} is corrupt or truncated ({e}){hint}",
        ckpt.display()
    ))
}

pub fn copy_named(
    file: &Path,
    src: &[(String, Tensor)],
    prefix: &str,
    names: &[String],
    dst: &mut [Tensor],
) -> Result<()> {
    let map: std::collections::HashMap<&str, &Tensor> =
        src.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let invalid = |what: String| Error::Invalid(format!("{}: {what}", file.display()));
    if map.len() != names.len() {
        let (have, want) = (map.len(), names.len());
        return Err(invalid(format!(
            "{have} tensors, the model has {want} variables"
        )));
    }
    tch::no_grad(|| {
        for (n, d) in names.iter().zip(dst.iter_mut()) {
            let key = format!("{prefix}{n}");
            let t = map
                .get(key.as_str())
                .ok_or_else(|| invalid(format!("missing tensor `{key}`")))?;
            if t.size() != d.size() {
                let (have, want) = (t.size(), d.size());
                return Err(invalid(format!(
                    "`{key}` has shape {have:?}, the model wants {want:?}"
                )));
            }
            d.copy_(t);
        }
        Ok(())
    })
}
