//! The metrics file: one JSON object per line, appended as training goes (a resumed run
//! continues the same file, cut back to its checkpoint's step: see `run_dir`), and the
//! window of steps each line sums up.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Default)]
pub struct Metrics {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Model FLOPs utilisation against `log.peak_tflops` (null where no peak is known).
    pub mfu: Option<f64>,
    /// Peak device memory allocated, bytes (CUDA only).
    pub peak_memory: Option<u64>,
    /// Fraction of synthetic answer tokens predicted exactly (argmax), when any.
    pub answer_acc: Option<f64>,
    pub eval_loss: Option<f64>,
}

pub struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsFile {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, m: &Metrics) -> Result<()> {
        let mut line = serde_json::to_string(m).map_err(|e| Error::Invalid(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The steps since the last metrics line: their tokens and time (for tokens/s) and the
/// fraction of target positions the loss scored (the head's share of a step's FLOPs, see
/// `model::flops::trained_per_token`).
pub struct LogWindow {
    start: std::time::Instant,
    tokens: u64,
    scored: (f64, f64),
}

impl Default for LogWindow {
    fn default() -> Self {
        LogWindow {
            start: std::time::Instant::now(),
            tokens: 0,
            scored: (0.0, 0.0),
        }
    }
}

impl LogWindow {
    /// Adds a step of `tokens` (all ranks) with `scored` of its target positions scored.
    pub fn add(&mut self, tokens: u64, scored: (f64, f64)) {
        self.tokens += tokens;
        self.scored.0 += scored.0;
        self.scored.1 += scored.1;
    }

    /// Tokens per second and the scored fraction since the window began; starts a new one.
    pub fn take(&mut self) -> (f64, f64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let out = (
            self.tokens as f64 / secs,
            self.scored.0 / self.scored.1.max(1.0),
        );
        *self = LogWindow::default();
        out
    }
}
