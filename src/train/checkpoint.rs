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
use crate::train::optim::AdamW;

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
    move |e| {
        Error::Invalid(format!(
            "{}: {}",
            path.display(),
            crate::util::tch_message(&e)
        ))
    }
}

/// Writes a checkpoint of `opt` at `state.step` under `dir`, then prunes to `keep`. A save
/// that fails (a full disk) removes its temporary folder and leaves every earlier
/// checkpoint as it was.
pub fn save(dir: &Path, opt: &AdamW, state: &State, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".tmp-step-{:08}", state.step));
    let saved = write_checkpoint(dir, &tmp, opt, state);
    if saved.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let final_dir = saved?;
    prune(dir, keep)?;
    Ok(final_dir)
}

/// The files of a checkpoint into `tmp`, then `tmp` renamed to its `step-*` name.
fn write_checkpoint(dir: &Path, tmp: &Path, opt: &AdamW, state: &State) -> Result<PathBuf> {
    let final_dir = step_dir(dir, state.step);
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    }
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;

    let weights: Vec<(&str, &Tensor)> = opt
        .names
        .iter()
        .map(|n| n.as_str())
        .zip(&opt.master)
        .collect();
    let p = tmp.join("model.safetensors");
    Tensor::write_safetensors(&weights, &p).map_err(tch_err(&p))?;

    let m_names: Vec<String> = opt.names.iter().map(|n| format!("m.{n}")).collect();
    let v_names: Vec<String> = opt.names.iter().map(|n| format!("v.{n}")).collect();
    let moments: Vec<(&str, &Tensor)> = m_names
        .iter()
        .map(|n| n.as_str())
        .zip(&opt.m)
        .chain(v_names.iter().map(|n| n.as_str()).zip(&opt.v))
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
    let mut found = vec![];
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in entries {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name.starts_with("step-") && p.join("state.json").is_file() {
            found.push(p);
        }
    }
    found.sort();
    Ok(found)
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

/// The weight files of a checkpoint: `model.safetensors` as training writes it, or the
/// shards `model-00001-of-0000N.safetensors` that [`export`] writes, in order.
pub fn weight_files(ckpt: &Path) -> Result<Vec<PathBuf>> {
    let single = ckpt.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut shards = vec![];
    for e in std::fs::read_dir(ckpt).map_err(|e| Error::io(ckpt, e))? {
        let p = e.map_err(|e| Error::io(ckpt, e))?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("model-") && name.ends_with(".safetensors") {
            shards.push(p);
        }
    }
    shards.sort();
    let n = shards.len();
    for (i, p) in shards.iter().enumerate() {
        let want = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        if p.file_name().unwrap_or_default().to_string_lossy() != want {
            return Err(Error::Invalid(format!(
                "{}: expected shard {want} (a shard is missing or extra)",
                p.display()
            )));
        }
    }
    if shards.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no model.safetensors or model-*-of-*.safetensors",
            ckpt.display()
        )));
    }
    Ok(shards)
}

/// Suffix of the row blocks of a tensor too large for one shard (an embedding of a 50K
/// vocabulary is 25 MiB in bf16): `NAME.__rows000`, `NAME.__rows001`, ... in order.
const ROWS: &str = ".__rows";

/// `t` whole, or split along dim 0 into blocks of at most `max_bytes` named by [`ROWS`].
fn split_rows(name: &str, t: &Tensor, max_bytes: usize) -> Vec<(String, Tensor)> {
    let bytes = t.numel() * t.kind().elt_size_in_bytes();
    if bytes <= max_bytes || t.dim() == 0 || t.size()[0] < 2 {
        return vec![(name.to_string(), t.contiguous())];
    }
    let rows = t.size()[0];
    let row_bytes = bytes / rows as usize;
    let per = ((max_bytes / row_bytes.max(1)) as i64).max(1);
    (0..rows)
        .step_by(per as usize)
        .enumerate()
        .map(|(i, r)| {
            let n = per.min(rows - r);
            (
                format!("{name}{ROWS}{i:03}"),
                t.narrow(0, r, n).contiguous(),
            )
        })
        .collect()
}

/// Joins the row blocks [`split_rows`] made back into their tensors, in order.
fn join_rows(all: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut whole = vec![];
    let mut parts: std::collections::BTreeMap<String, Vec<(String, Tensor)>> = Default::default();
    for (name, t) in all {
        match name.rsplit_once(ROWS) {
            Some((base, idx)) => parts
                .entry(base.to_string())
                .or_default()
                .push((idx.to_string(), t)),
            None => whole.push((name, t)),
        }
    }
    for (base, mut blocks) in parts {
        blocks.sort_by(|a, b| a.0.cmp(&b.0));
        let ts: Vec<Tensor> = blocks.into_iter().map(|(_, t)| t).collect();
        whole.push((base, Tensor::cat(&ts, 0)));
    }
    whole
}

/// Every weight tensor of a checkpoint (all shards), with the path to name in errors.
pub fn read_weights(ckpt: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>)> {
    let files = weight_files(ckpt)?;
    let mut all = vec![];
    for p in &files {
        all.extend(Tensor::read_safetensors(p).map_err(tch_err(p))?);
    }
    let all = join_rows(all);
    let named = if files.len() == 1 {
        files[0].clone()
    } else {
        ckpt.join("model-*.safetensors")
    };
    Ok((named, all))
}

/// Writes the weights of checkpoint `ckpt` to `out` as `kind` (e.g. bf16 to publish a model),
/// in shards of at most `shard_bytes` (a tensor larger than that split by rows), with its
/// `state.json`: a folder that `lcm eval` loads and `lcm pretrain --init` starts from,
/// without the optimizer moments.
///
/// `out` must not exist, or with `force` be an export folder (or an empty one), and is never
/// the source, inside it or around it (see [`check_export_target`]); every refusal comes
/// before any work and changes nothing. A new folder is written under a temporary name and
/// renamed. An existing export has its files replaced and keeps every other file (a model
/// card, plots): its old `state.json` goes first, so that no moment shows new shards beside
/// the old state, and the new one comes last.
pub fn export(
    ckpt: &Path,
    out: &Path,
    kind: tch::Kind,
    shard_bytes: usize,
    force: bool,
) -> Result<Vec<PathBuf>> {
    if shard_bytes == 0 {
        return Err(Error::Invalid(
            "the shard size must be at least 1 byte (--shard-mib 1 or more)".into(),
        ));
    }
    let target = check_export_target(ckpt, out, force)?;
    let state = read_state(ckpt)?;
    let (_, mut weights) = read_weights(ckpt)?;
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut bytes = 0usize;
    for (name, t) in weights {
        for (name, t) in split_rows(&name, &t.to_kind(kind), shard_bytes) {
            let size = t.numel() * kind.elt_size_in_bytes();
            if bytes + size > shard_bytes && !shards.last().unwrap().is_empty() {
                shards.push(vec![]);
                bytes = 0;
            }
            bytes += size;
            shards.last_mut().unwrap().push((name, t));
        }
    }
    let n = shards.len();
    let names: Vec<String> = (0..n)
        .map(|i| format!("model-{:05}-of-{n:05}.safetensors", i + 1))
        .collect();
    let write = |tmp: &Path| -> Result<()> {
        std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
        for (shard, name) in shards.iter().zip(&names) {
            let p = tmp.join(name);
            let refs: Vec<(&str, &Tensor)> = shard.iter().map(|(n, t)| (n.as_str(), t)).collect();
            Tensor::write_safetensors(&refs, &p).map_err(|e| {
                Error::Invalid(format!("{}: {}", p.display(), crate::util::tch_message(&e)))
            })?;
        }
        let p = tmp.join("state.json");
        let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
        for name in names.iter().map(String::as_str).chain(["state.json"]) {
            let p = tmp.join(name);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    };
    match target {
        ExportTarget::New(out_abs) => {
            let parent = out_abs.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            let leaf = out_abs.file_name().unwrap_or_default().to_string_lossy();
            let prefix = format!(".{leaf}.tmp-export-");
            crate::util::sweep_stale(parent, &prefix, "");
            let tmp = parent.join(format!("{prefix}{}", std::process::id()));
            let done = write(&tmp)
                .and_then(|()| std::fs::rename(&tmp, &out_abs).map_err(|e| Error::io(&out_abs, e)));
            if done.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            done?;
        }
        ExportTarget::Replace(out_abs) => {
            let prefix = ".tmp-export-";
            crate::util::sweep_stale(&out_abs, prefix, "");
            let tmp = out_abs.join(format!("{prefix}{}", std::process::id()));
            let done = write(&tmp).and_then(|()| replace_export(&tmp, &out_abs, &names));
            let _ = std::fs::remove_dir_all(&tmp);
            done?;
        }
    }
    Ok(names.iter().map(|n| out.join(n)).collect())
}

/// Where [`export`] writes: a folder to create, or an export folder to replace the files of.
enum ExportTarget {
    New(PathBuf),
    Replace(PathBuf),
}

/// The files of an export folder: `state.json` and the weights (`model.safetensors` as
/// training writes it, or `model-*.safetensors` shards).
fn is_export_file(name: &str) -> bool {
    name == "state.json" || is_weight_file(name)
}

fn is_weight_file(name: &str) -> bool {
    name == "model.safetensors" || (name.starts_with("model-") && name.ends_with(".safetensors"))
}

/// `p` made absolute with symbolic links resolved, also where its last parts do not exist
/// yet (the existing ancestor is resolved, the rest appended with `.` and `..` applied).
fn resolved(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(".", e))?
            .join(p)
    };
    let mut base = abs.as_path();
    let mut rest = vec![];
    loop {
        if let Ok(c) = base.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return Ok(out);
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// Checks where an export may go, before any work, changing nothing: never the source
/// checkpoint `ckpt` nor the run folder holding it (a `step-*` folder's parent), nor a
/// folder inside or around either; not a file; not a training checkpoint or run folder;
/// an existing folder only with `force`, and only an export folder or an empty one.
fn check_export_target(ckpt: &Path, out: &Path, force: bool) -> Result<ExportTarget> {
    let out_abs = resolved(out)?;
    let ckpt_abs = resolved(ckpt)?;
    let mut sources = vec![("checkpoint", ckpt_abs.clone())];
    let in_run = ckpt_abs
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("step-"));
    if let Some(run) = ckpt_abs.parent().filter(|_| in_run) {
        sources.push(("run folder", run.to_path_buf()));
    }
    for (what, src) in &sources {
        let relation = if out_abs == *src {
            "is"
        } else if out_abs.starts_with(src) {
            "is inside"
        } else if src.starts_with(&out_abs) {
            "holds"
        } else {
            continue;
        };
        return Err(Error::Invalid(format!(
            "--out {} {relation} the source {what} {}: an export never writes there, even with \
             --force; choose a folder outside it",
            out.display(),
            src.display()
        )));
    }
    if std::fs::symlink_metadata(&out_abs).is_err() {
        return Ok(ExportTarget::New(out_abs));
    }
    if !out_abs.is_dir() {
        return Err(Error::Invalid(format!(
            "--out {} exists and is not a folder; an export writes a folder (nothing was \
             changed): choose another --out",
            out.display()
        )));
    }
    let mut others = vec![];
    let mut has_export = false;
    for e in std::fs::read_dir(&out_abs).map_err(|e| Error::io(out, e))? {
        let e = e.map_err(|e| Error::io(out, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if name == "optim.safetensors" {
            return Err(Error::Invalid(format!(
                "--out {} is a training checkpoint (it holds optim.safetensors); an export \
                 never replaces one, even with --force: choose another --out",
                out.display()
            )));
        }
        if name.starts_with("step-") && p.join("state.json").is_file() {
            return Err(Error::Invalid(format!(
                "--out {} is a training run folder (it holds {name}); an export never replaces \
                 one, even with --force: choose another --out",
                out.display()
            )));
        }
        if is_export_file(&name) && p.is_file() {
            has_export = true;
        } else if !name.starts_with(".tmp-export-") {
            others.push(name);
        }
    }
    if !has_export && !others.is_empty() {
        others.sort();
        let shown = others
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if others.len() > 3 { ", ..." } else { "" };
        return Err(Error::Invalid(format!(
            "--out {} exists and is not an lcm export folder (it holds {shown}{more}); an \
             export replaces only an export folder (state.json and model shards) or an empty \
             one, even with --force: choose another --out",
            out.display()
        )));
    }
    if !force {
        return Err(Error::Invalid(format!(
            "--out {} exists; pass --force to replace the export in it{}",
            out.display(),
            if others.is_empty() {
                String::new()
            } else {
                format!(" (its other files stay: {})", others.join(", "))
            }
        )));
    }
    Ok(ExportTarget::Replace(out_abs))
}

/// Moves the export written in `tmp` (shards `names` and `state.json`) into the export
/// folder `out`: the old `state.json` first (from then on the folder is no checkpoint, so
/// nothing loads a mix of old and new), then the shards, then the old weight files the new
/// export does not have, and the new `state.json` last. Other files stay.
fn replace_export(tmp: &Path, out: &Path, names: &[String]) -> Result<()> {
    let incomplete = |e: Error| {
        Error::Invalid(format!(
            "{e} (the export in {} is incomplete, without state.json: run the export again \
             with --force)",
            out.display()
        ))
    };
    let state = out.join("state.json");
    match std::fs::remove_file(&state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&state, e)),
        _ => {}
    }
    let swap = || -> Result<()> {
        for name in names {
            let to = out.join(name);
            std::fs::rename(tmp.join(name), &to).map_err(|e| Error::io(&to, e))?;
        }
        for e in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
            let e = e.map_err(|e| Error::io(out, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_weight_file(&name) && !names.contains(&name) && e.path().is_file() {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
        std::fs::rename(tmp.join("state.json"), &state).map_err(|e| Error::io(&state, e))
    };
    swap().map_err(incomplete)
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
    if map.len() != names.len() {
        return Err(Error::Invalid(format!(
            "{}: {} tensors, the model has {} variables",
            file.display(),
            map.len(),
            names.len()
        )));
    }
    tch::no_grad(|| {
        for (n, d) in names.iter().zip(dst.iter_mut()) {
            let key = format!("{prefix}{n}");
            let t = map.get(key.as_str()).ok_or_else(|| {
                Error::Invalid(format!("{}: missing tensor `{key}`", file.display()))
            })?;
            if t.size() != d.size() {
                return Err(Error::Invalid(format!(
                    "{}: `{key}` has shape {:?}, the model wants {:?}",
                    file.display(),
                    t.size(),
                    d.size()
                )));
            }
            d.copy_(t);
        }
        Ok(())
    })
}
