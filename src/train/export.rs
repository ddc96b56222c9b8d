//! `lcm export`: the weights of a checkpoint as a folder that `lcm eval` loads, `lcm
//! pretrain --init` starts from and other tools read (the layout of [`crate::train::weights`]:
//! safetensors shards of whole tensors and their index), with the checkpoint's `state.json`.
//! Where it may write is checked before any work, so that an export never deletes or hides
//! what `--out` names.

use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::error::{Error, Result};
use crate::train::checkpoint::read_state;
use crate::train::weights::{self, is_weight_file, read_weights, shard_name, split_rows, Index};

/// How [`export`] writes the weights.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The weights' dtype (bf16 to publish a model).
    pub kind: tch::Kind,
    /// The most tensor bytes in a shard; a larger tensor has a shard of its own.
    pub shard_bytes: usize,
    /// Split a tensor larger than `shard_bytes` into row blocks, so that no shard exceeds
    /// it (for file hosts with a size limit; other tools see the blocks).
    pub split_rows: bool,
    /// `out` may be an earlier export (or an empty folder) whose weights are replaced.
    pub force: bool,
}

/// Writes the weights of checkpoint `ckpt` to `out` as `opts.kind`, in shards of whole
/// tensors of at most `opts.shard_bytes` each (a larger tensor alone in its shard, or with
/// `split_rows` split into row blocks) with their index, and its `state.json`. Returns
/// the weight files written (shards, then the index).
///
/// `out` must not exist, or with `force` be an export folder (or an empty one), and is never
/// the source, inside it or around it (see [`check_export_target`]); every refusal comes
/// before any work and changes nothing. A new folder is written under a temporary name and
/// renamed. An existing export has its files replaced and keeps every other file (a model
/// card, plots): its old `state.json` goes first, so that no moment shows new shards beside
/// the old state, and the new one comes last.
pub fn export(ckpt: &Path, out: &Path, opts: &Options) -> Result<Vec<PathBuf>> {
    if opts.shard_bytes == 0 {
        return Err(Error::Invalid(
            "the shard size must be at least 1 byte (--shard-mib 1 or more)".into(),
        ));
    }
    let target = check_export_target(ckpt, out, opts.force)?;
    let state = read_state(ckpt)?;
    let (_, mut tensors) = read_weights(ckpt)?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let shards = pack(tensors, opts);
    let mut names: Vec<String> = shards.iter().map(|(n, _)| n.clone()).collect();
    names.push(weights::INDEX.into());
    let index = serde_json::to_vec_pretty(&Index::of(&shards))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let write = |tmp: &Path| -> Result<()> {
        std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
        for (name, tensors) in &shards {
            weights::write(&tmp.join(name), tensors)?;
        }
        let p = tmp.join(weights::INDEX);
        std::fs::write(&p, &index).map_err(|e| Error::io(&p, e))?;
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

/// `tensors` (sorted by name, converted to `opts.kind`) packed in order into shards of at
/// most `opts.shard_bytes`, each with its file name.
fn pack(tensors: Vec<(String, Tensor)>, opts: &Options) -> Vec<(String, Vec<(String, Tensor)>)> {
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut bytes = 0usize;
    for (name, t) in tensors {
        let t = t.to_kind(opts.kind).contiguous();
        let parts = match opts.split_rows {
            true => split_rows(&name, &t, opts.shard_bytes),
            false => vec![(name, t)],
        };
        for (name, t) in parts {
            let size = t.numel() * opts.kind.elt_size_in_bytes();
            if bytes + size > opts.shard_bytes && !shards.last().unwrap().is_empty() {
                shards.push(vec![]);
                bytes = 0;
            }
            bytes += size;
            shards.last_mut().unwrap().push((name, t));
        }
    }
    let n = shards.len();
    shards
        .into_iter()
        .enumerate()
        .map(|(i, s)| (shard_name(i, n), s))
        .collect()
}

/// Where [`export`] writes: a folder to create, or an export folder to replace the files of.
enum ExportTarget {
    New(PathBuf),
    Replace(PathBuf),
}

/// The files of an export folder: `state.json` and the weights (`model.safetensors` as
/// training writes it, or `model-*.safetensors` shards and their index).
fn is_export_file(name: &str) -> bool {
    name == "state.json" || is_weight_file(name)
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

/// Moves the export written in `tmp` (weight files `names`: the shards, then the index,
/// and `state.json`) into the export folder `out`: the old `state.json` first (from then on
/// the folder is no checkpoint, so nothing loads a mix of old and new), then the weight
/// files, then the old weight files the new export does not have, and the new `state.json`
/// last. Other files stay.
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
