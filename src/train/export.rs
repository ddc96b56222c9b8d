//! `lcm export`: the weights of a checkpoint as a folder that `lcm eval` loads, `lcm
//! pretrain --init` starts from and other tools read (the layout of [`crate::train::weights`]:
//! safetensors shards of whole tensors and their index), with the checkpoint's `state.json`;
//! or, with [`Naming::Reference`], the weights of a DRT under the reference
//! implementation's names ([`crate::model::reference`]) with its `config.json`.
//! Where it may write is checked before any work, so that an export never deletes or hides
//! what `--out` names.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::reference;
use crate::train::checkpoint::read_state;
use crate::train::weights::{self, is_weight_file, read_weights, shard_name, split_rows, Index};

/// Whose parameter names an export uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// lcm's own, with the checkpoint's `state.json` (what lcm loads).
    #[default]
    Lcm,
    /// A DRT under the names of the reference's `DRTForCausalLM.state_dict()`
    /// (ant-research/long-context-modeling `model/DRT.py`), with the reference's
    /// `config.json`: `load_state_dict` of the reference model takes the weights as they are.
    Reference,
}

impl Naming {
    /// The file beside the weights that says what they are.
    pub fn meta_file(self) -> &'static str {
        match self {
            Naming::Lcm => "state.json",
            Naming::Reference => "config.json",
        }
    }

    fn other(self) -> Naming {
        match self {
            Naming::Lcm => Naming::Reference,
            Naming::Reference => Naming::Lcm,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Naming::Lcm => "an lcm export (state.json)",
            Naming::Reference => "a reference-named export (config.json)",
        }
    }
}

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
    /// lcm's names or the reference DRT's.
    pub names: Naming,
}

/// Writes the weights of checkpoint `ckpt` to `out` as `opts.kind`, in shards of whole
/// tensors of at most `opts.shard_bytes` each (a larger tensor alone in its shard, or with
/// `split_rows` split into row blocks) with their index, and its `state.json` (with
/// [`Naming::Reference`]: the weights under the reference DRT's names, its ALiBi buffers
/// in fp32 whatever `opts.kind`, and its `config.json`; a checkpoint whose model the
/// reference does not express is refused, see [`reference::check_mappable`]). Returns the
/// weight files written (shards, then the index).
///
/// `out` must not exist, or with `force` be an export folder of the same naming (or an
/// empty one), and is never the source, inside it or around it (see
/// [`check_export_target`]); every refusal comes before any work and changes nothing. A
/// new folder is written under a temporary name and renamed. An existing export has its
/// files replaced and keeps every other file (a model card, plots): its old `state.json`
/// (`config.json`) goes first, so that no moment shows new shards beside the old state,
/// and the new one comes last.
pub fn export(ckpt: &Path, out: &Path, opts: &Options) -> Result<Vec<PathBuf>> {
    if opts.shard_bytes == 0 {
        return Err(Error::Invalid(
            "the shard size must be at least 1 byte (--shard-mib 1 or more)".into(),
        ));
    }
    let target = check_export_target(ckpt, out, opts.force, opts.names)?;
    let state = read_state(ckpt)?;
    let meta = opts.names.meta_file();
    let meta_json = match opts.names {
        Naming::Lcm => serde_json::to_value(&state),
        Naming::Reference => {
            let cfg = &state.config.model;
            Ok(reference::reference_config(cfg, state.step, opts.kind)?)
        }
    }
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let (_, mut tensors) = read_weights(ckpt)?;
    if opts.names == Naming::Reference {
        tensors = reference::to_reference(&state.config.model, state.step, tensors)?;
    }
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
        let p = tmp.join(meta);
        let json =
            serde_json::to_vec_pretty(&meta_json).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
        for name in names.iter().map(String::as_str).chain([meta]) {
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
            let done = write(&tmp).and_then(|()| replace_export(&tmp, &out_abs, &names, meta));
            let _ = std::fs::remove_dir_all(&tmp);
            done?;
        }
    }
    Ok(names.iter().map(|n| out.join(n)).collect())
}

/// `tensors` (sorted by name, converted to `opts.kind`, the reference's buffers to fp32)
/// packed in order into shards of at most `opts.shard_bytes`, each with its file name.
fn pack(tensors: Vec<(String, Tensor)>, opts: &Options) -> Vec<(String, Vec<(String, Tensor)>)> {
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut bytes = 0usize;
    for (name, t) in tensors {
        let kind = match opts.names == Naming::Reference && reference::is_buffer(&name) {
            true => Kind::Float,
            false => opts.kind,
        };
        let t = t.to_kind(kind).contiguous();
        let parts = match opts.split_rows {
            true => split_rows(&name, &t, opts.shard_bytes),
            false => vec![(name, t)],
        };
        for (name, t) in parts {
            let size = t.numel() * t.kind().elt_size_in_bytes();
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

/// The files of an export folder of naming `names`: its `state.json` (`config.json`) and the
/// weights (`model.safetensors` as training writes it, or `model-*.safetensors` shards and
/// their index).
fn is_export_file(name: &str, names: Naming) -> bool {
    name == names.meta_file() || is_weight_file(name)
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
/// an existing folder only with `force`, and only an export folder of naming `names` or an
/// empty one.
fn check_export_target(
    ckpt: &Path,
    out: &Path,
    force: bool,
    names: Naming,
) -> Result<ExportTarget> {
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
        if name == names.other().meta_file() && p.is_file() {
            return Err(Error::Invalid(format!(
                "--out {} holds {}; an export of the other naming never replaces it, even \
                 with --force: choose another --out",
                out.display(),
                names.other().describe()
            )));
        }
        if is_export_file(&name, names) && p.is_file() {
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
             export replaces only an export folder ({} and model shards) or an empty \
             one, even with --force: choose another --out",
            out.display(),
            names.meta_file()
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
/// and `meta`, its `state.json` or `config.json`) into the export folder `out`: the old
/// `meta` first (from then on the folder is no export, so nothing loads a mix of old and
/// new), then the weight files, then the old weight files the new export does not have,
/// and the new `meta` last. Other files stay.
fn replace_export(tmp: &Path, out: &Path, names: &[String], meta: &str) -> Result<()> {
    let incomplete = |e: Error| {
        Error::Invalid(format!(
            "{e} (the export in {} is incomplete, without {meta}: run the export again \
             with --force)",
            out.display()
        ))
    };
    let state = out.join(meta);
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
        std::fs::rename(tmp.join(meta), &state).map_err(|e| Error::io(&state, e))
    };
    swap().map_err(incomplete)
}

/// `lcm import`: a DRT under the reference implementation's names (a folder holding its
/// `config.json` and safetensors weights: `model.safetensors`, or shards with or without
/// their index, as [`export`] with [`Naming::Reference`] writes) as an lcm checkpoint folder
/// `out` (which must not exist): `model.safetensors` in `kind` and a `state.json` at step 0
/// whose training config carries the model ([`TrainConfig::for_model`]), which `lcm eval`,
/// `lcm export` and `pretrain --init` read. The reference's own checkpoints are pickled
/// (`model0_<step>.bin`); docs/fidelity.md shows the conversion to safetensors. Returns
/// `out`.
///
/// [`TrainConfig::for_model`]: crate::train::TrainConfig::for_model
pub fn import_reference(src: &Path, out: &Path, kind: Kind) -> Result<PathBuf> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::Invalid(format!(
            "--out {} exists; an import writes a new folder",
            out.display()
        )));
    }
    let p = src.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
    let cfg = reference::config_from_reference(&v)
        .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
    let (file, tensors) = read_weights(src)?;
    let mut tensors = reference::from_reference(&cfg, tensors)
        .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    for (_, t) in tensors.iter_mut() {
        *t = t.to_kind(kind).contiguous();
    }
    let state = crate::train::checkpoint::State {
        step: 0,
        samples: 0,
        tokens: 0,
        seed: 0,
        world: 1,
        lcm_version: env!("CARGO_PKG_VERSION").into(),
        config: crate::train::TrainConfig::for_model(cfg)?,
    };
    let out_abs = resolved(out)?;
    let parent = out_abs.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let leaf = out_abs.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!(".{leaf}.tmp-import-");
    crate::util::sweep_stale(parent, &prefix, "");
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    let write = || -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        weights::write(&tmp.join(weights::SINGLE), &tensors)?;
        let p = tmp.join("state.json");
        let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
        std::fs::rename(&tmp, &out_abs).map_err(|e| Error::io(&out_abs, e))
    };
    let done = write();
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done?;
    Ok(out.to_path_buf())
}
