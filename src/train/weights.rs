//! The weight files of a checkpoint or an export, in the layout other tools read:
//!   model.safetensors                 one file, as training writes it
//!   model-0000i-of-0000N.safetensors  shards of whole tensors, as `lcm export` writes them,
//!   model.safetensors.index.json      with their index (HF transformers' format:
//!                                     `{"metadata": {"total_size": N}, "weight_map": {tensor: shard}}`)
//! A tensor may be stored as row blocks `NAME.__rows000`, `NAME.__rows001`, ... (an export
//! with `--split-rows`, and the published models in models/), joined on load. Shards
//! without an index (the published models) load too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};

/// The single weight file that training writes.
pub const SINGLE: &str = "model.safetensors";
/// The index of a sharded export.
pub const INDEX: &str = "model.safetensors.index.json";

/// Suffix of the row blocks of a tensor split to fit a shard (an embedding of a 50K
/// vocabulary is 25 MiB in bf16): `NAME.__rows000`, `NAME.__rows001`, ... in order.
const ROWS: &str = ".__rows";

/// The name of shard `i` (from 0) of `n`.
pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{n:05}.safetensors", i + 1)
}

/// Whether `name` is a weight file: the single file, a shard or the index.
pub fn is_weight_file(name: &str) -> bool {
    name == SINGLE
        || name == INDEX
        || (name.starts_with("model-") && name.ends_with(".safetensors"))
}

/// The index of a sharded weight folder.
#[derive(Debug, Serialize, Deserialize)]
pub struct Index {
    pub metadata: IndexMetadata,
    /// Each tensor's name to the shard file that holds it.
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IndexMetadata {
    /// Bytes of tensor data in all shards.
    pub total_size: u64,
}

impl Index {
    /// The index of `shards`: (file name, its tensors) in order.
    pub fn of(shards: &[(String, Vec<(String, Tensor)>)]) -> Index {
        let mut total_size = 0u64;
        let mut weight_map = BTreeMap::new();
        for (file, tensors) in shards {
            for (name, t) in tensors {
                total_size += (t.numel() * t.kind().elt_size_in_bytes()) as u64;
                weight_map.insert(name.clone(), file.clone());
            }
        }
        Index {
            metadata: IndexMetadata { total_size },
            weight_map,
        }
    }

    fn read(path: &Path) -> Result<Index> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }
}

/// The weight files of a checkpoint, in order: `model.safetensors` as training writes it,
/// the shards its `model.safetensors.index.json` names, or (no index) the shards
/// `model-00001-of-0000N.safetensors` present, which must be complete.
pub fn weight_files(ckpt: &Path) -> Result<Vec<PathBuf>> {
    let single = ckpt.join(SINGLE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = ckpt.join(INDEX);
    if index.is_file() {
        let mut files: Vec<&String> = vec![];
        let read = Index::read(&index)?;
        for f in read.weight_map.values() {
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files.sort();
        return files
            .into_iter()
            .map(|f| {
                let p = ckpt.join(f);
                match p.is_file() {
                    true => Ok(p),
                    false => Err(Error::Invalid(format!(
                        "{}: shard {f} named by {INDEX} is missing",
                        ckpt.display()
                    ))),
                }
            })
            .collect();
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
        let want = shard_name(i, n);
        if p.file_name().unwrap_or_default().to_string_lossy() != want {
            return Err(Error::Invalid(format!(
                "{}: expected shard {want} (a shard is missing or extra)",
                p.display()
            )));
        }
    }
    if shards.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no {SINGLE}, {INDEX} or model-*-of-*.safetensors",
            ckpt.display()
        )));
    }
    Ok(shards)
}

/// Every weight tensor of a checkpoint (all shards, row blocks joined), with the path to
/// name in errors.
pub fn read_weights(ckpt: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>)> {
    let files = weight_files(ckpt)?;
    let mut all = vec![];
    for p in &files {
        all.extend(Tensor::read_safetensors(p).map_err(|e| tch_error(p, e))?);
    }
    let named = if files.len() == 1 {
        files[0].clone()
    } else {
        ckpt.join("model-*.safetensors")
    };
    Ok((named, join_rows(all)))
}

/// Writes `tensors` to the safetensors file `path`.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, path).map_err(|e| tch_error(path, e))
}

pub(crate) fn tch_error(path: &Path, e: tch::TchError) -> Error {
    Error::Invalid(format!(
        "{}: {}",
        path.display(),
        crate::util::tch_message(&e)
    ))
}

/// `t` whole, or split along dim 0 into blocks of at most `max_bytes` named by [`ROWS`].
pub fn split_rows(name: &str, t: &Tensor, max_bytes: usize) -> Vec<(String, Tensor)> {
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
    let mut parts: BTreeMap<String, Vec<(String, Tensor)>> = Default::default();
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
