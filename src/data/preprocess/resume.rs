//! The resume rules of `lcm preprocess pile`: what identifies a run's work (its
//! [`Fingerprint`]), the state a finished shard records in `PREFIX.resume.tmp`, when a
//! finished corpus is kept, refused or replaced, and when an interrupted run continues.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::summary::{Counts, InputSummary, Summary};
use super::{Format, Options};
use crate::data::indexed::{with_suffix, Checkpoint, TokenDtype};
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// What identifies a run's work: a resumed run must match it exactly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub format: Format,
    pub dtype: TokenDtype,
    pub tokenizer_sha256: String,
    pub eod_id: u32,
    pub skip_bad_lines: bool,
    /// Path, size in bytes and modification time (nanoseconds) of each input.
    pub inputs: Vec<(PathBuf, u64, u64)>,
}

impl Fingerprint {
    /// Whether a run with this fingerprint can keep the first `done` shards of an earlier
    /// one: same options and tokenizer, and those shards unchanged (same path, size and
    /// modification time). The shards after them may differ: they are read afresh.
    pub fn continues(&self, earlier: &Fingerprint, done: usize) -> bool {
        self.format == earlier.format
            && self.dtype == earlier.dtype
            && self.tokenizer_sha256 == earlier.tokenizer_sha256
            && self.eod_id == earlier.eod_id
            && self.skip_bad_lines == earlier.skip_bad_lines
            && done <= self.inputs.len()
            && done <= earlier.inputs.len()
            && self.inputs[..done] == earlier.inputs[..done]
    }
}

impl Fingerprint {
    /// The fingerprint of a run of `opts` with `tok`, writing `dtype`: the inputs as they
    /// are on disk now.
    pub(super) fn of(opts: &Options, tok: &Tokenizer, dtype: TokenDtype) -> Result<Fingerprint> {
        Ok(Fingerprint {
            format: opts.format,
            dtype,
            tokenizer_sha256: tok.sha256().to_string(),
            eod_id: tok.eod(),
            skip_bad_lines: opts.skip_bad_lines,
            inputs: opts
                .inputs
                .iter()
                .map(|p| {
                    let m = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as u64);
                    Ok((p.clone(), m.len(), mtime))
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// The resume state, `PREFIX.resume.tmp`.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct State {
    pub(super) fingerprint: Fingerprint,
    pub(super) checkpoint: Checkpoint,
    pub(super) shards_done: usize,
    pub(super) inputs: Vec<InputSummary>,
    pub(super) bad_line_examples: Vec<String>,
    pub(super) sets: BTreeMap<String, Counts>,
    /// The largest id written up to the checkpoint.
    #[serde(default)]
    pub(super) max_token_id: Option<u32>,
    /// Whether `max_token_id` was recorded (a state written before it was is scanned).
    #[serde(default)]
    pub(super) max_tracked: bool,
}

/// The temporary files a run writes at `prefix` (and an interrupted one leaves for
/// `--resume`).
pub fn temporaries(prefix: &Path) -> Vec<PathBuf> {
    [
        ".bin.tmp",
        ".sizes.tmp",
        ".idx.tmp",
        ".data.tmp",
        ".resume.tmp",
    ]
    .iter()
    .map(|s| with_suffix(prefix, s))
    .collect()
}

/// A finished corpus (or its summary) at the output: with `--resume` and the same
/// fingerprint it is kept (its summary returned); otherwise it is refused without
/// `--force`, and removed with it (the index first, so that no moment shows a new `.bin`
/// beside an old `.idx`).
pub(super) fn settle_finished(
    opts: &Options,
    fingerprint: &Fingerprint,
    json_path: &Path,
    finals: &[PathBuf],
) -> Result<Option<Summary>> {
    if finals.iter().any(|p| p.exists()) || json_path.exists() {
        if opts.resume && finals.iter().all(|p| p.exists()) {
            if let Ok(s) = std::fs::read(json_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Summary>(&b).ok())
                .ok_or(())
            {
                if s.fingerprint == *fingerprint {
                    return Ok(Some(s));
                }
            }
        }
        if !opts.force {
            let which = finals
                .iter()
                .map(PathBuf::as_path)
                .chain([json_path])
                .find(|p| p.exists())
                .unwrap();
            return Err(Error::Invalid(format!(
                "{} exists; pass --force to replace the corpus{}",
                which.display(),
                if opts.resume {
                    " (it was made from other inputs or options, so --resume cannot keep it)"
                } else {
                    ""
                }
            )));
        }
        // The index goes first, so that no moment shows a new .bin beside an old .idx.
        for p in finals.iter().rev().map(PathBuf::as_path).chain([json_path]) {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(p, e)),
                _ => {}
            }
        }
    }
    Ok(None)
}

/// The state of the interrupted run that this one continues (with `--resume`, when one
/// exists and its finished shards are unchanged), or None for a fresh start, which removes
/// whatever an earlier run left.
pub(super) fn state_to_continue(
    opts: &Options,
    prefix: &Path,
    state_path: &Path,
    fingerprint: &Fingerprint,
) -> Result<Option<State>> {
    let state = if opts.resume && state_path.exists() {
        let bytes = std::fs::read(state_path).map_err(|e| Error::io(state_path, e))?;
        let st: State = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corpus(
                state_path,
                format!("unreadable resume state ({e}); run without --resume"),
            )
        })?;
        if !fingerprint.continues(&st.fingerprint, st.shards_done) {
            return Err(Error::corpus(
                state_path,
                "the interrupted run had another tokenizer or options, or its finished shards have \
                 changed since; run without --resume to start over",
            ));
        }
        Some(st)
    } else {
        None
    };
    if state.is_none() {
        // A fresh start: whatever an earlier run left (its resume state too) goes.
        for p in temporaries(prefix) {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
                _ => {}
            }
        }
    }
    Ok(state)
}
