//! The run folder (`checkpoint.dir`): the checkpoints and metrics.jsonl of one run. Rank 0
//! holds it locked for the whole run, so two runs never write one folder; a fresh run
//! refuses a folder that already holds another run (two runs mixed would make `--resume`
//! pick the wrong one) unless told `--force`; temporaries of a crashed save are swept; and a
//! resumed run's metrics.jsonl is cut back to its checkpoint's step, so the steps a crash
//! lost are not recorded twice.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lock::OutputLock;
use crate::train::checkpoint;

pub const METRICS: &str = "metrics.jsonl";

/// The locked run folder.
pub struct RunDir {
    dir: PathBuf,
    _lock: OutputLock,
}

/// How the run starts in its folder.
pub enum Start<'a> {
    /// Step 0 (fresh weights or `--init`).
    Fresh,
    /// From this checkpoint (`--resume`).
    Resume(&'a Path),
}

/// The files of an earlier run in `dir`: its checkpoints, their temporaries, its metrics.
fn run_files(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::util::list_dir(dir, |p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.starts_with("step-") || name.starts_with(".tmp-step-") || name == METRICS
    })
}

fn remove(p: &Path) -> Result<()> {
    let r = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    r.map_err(|e| Error::io(p, e))
}

impl RunDir {
    /// Locks `dir` and checks it suits `start`; `force` lets a fresh run replace an earlier
    /// run's checkpoints and metrics (nothing else in the folder is touched).
    pub fn open(dir: &Path, start: Start, force: bool) -> Result<RunDir> {
        let lock =
            OutputLock::acquire(&dir.join(".lock"), &format!("run folder {}", dir.display()))?;
        for p in run_files(dir)? {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(".tmp-step-") {
                remove(&p)?;
            }
        }
        let earlier = run_files(dir)?;
        let foreign = match start {
            Start::Fresh => !earlier.is_empty(),
            Start::Resume(ckpt) => {
                let inside = std::fs::canonicalize(ckpt)
                    .ok()
                    .zip(std::fs::canonicalize(dir).ok())
                    .is_some_and(|(c, d)| c.starts_with(&d));
                !inside && !checkpoint::list(dir)?.is_empty()
            }
        };
        if foreign {
            if !force {
                let what: Vec<String> = earlier
                    .iter()
                    .map(|p| {
                        p.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned()
                    })
                    .collect();
                let hint = match start {
                    Start::Fresh => format!("continue it with --resume {}, or ", dir.display()),
                    Start::Resume(_) => String::new(),
                };
                return Err(Error::Invalid(format!(
                    "{} already holds another run ({}): {hint}start over with --force (deletes \
                     its checkpoints and metrics), or set checkpoint.dir to a new folder",
                    dir.display(),
                    what.join(", ")
                )));
            }
            for p in &earlier {
                remove(p)?;
            }
        }
        Ok(RunDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Drops the metrics lines after `step` (those of steps a crash lost, which the resumed
    /// run trains again).
    pub fn truncate_metrics(&self, step: u64) -> Result<()> {
        let p = self.dir.join(METRICS);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&p, e)),
        };
        let keep: Vec<&str> = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .collect();
        if keep.len() == text.lines().count() {
            return Ok(());
        }
        let mut out = keep.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        crate::util::write_atomic(&p, out.as_bytes())
    }
}
