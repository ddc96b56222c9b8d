//! The library's error type. The binary adds context with anyhow.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CUDA op reported a failure through the C++ bridge (the message names the op).
    #[error("CUDA op failed: {0}")]
    Cuda(String),
    /// A libtorch call failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// The I/O error is part of the message, not a `source`: anyhow's `{:#}` would print
    /// it twice ("x.json: No such file: No such file").
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    /// A configuration value is missing, unknown or wrong; `key` is its dotted path
    /// (`model.drt.topk`) and the message says what is allowed.
    #[error("config key `{key}`: {message}")]
    Config { key: String, message: String },
    /// A bad input record or file: `path:line: message` (line of a JSON-lines file, row
    /// of a parquet file), or `path: message` when no line applies.
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input {
        path: PathBuf,
        line: Option<u64>,
        msg: String,
    },
    /// A tokenizer file that cannot be loaded or used.
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    /// A collective, the rendezvous or the process group failed on this rank (the message
    /// names the operation; a peer that died shows as a closed connection or a timeout).
    #[error("rank {rank}: {msg}")]
    Dist { rank: u64, msg: String },
    /// A token corpus (`.bin`/`.idx`, raw `.data`) that is corrupt, incomplete or not one.
    #[error("corpus {}: {msg}", path.display())]
    Corpus { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(path: impl Into<PathBuf>, line: Option<u64>, msg: impl Into<String>) -> Self {
        Error::Input {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }

    pub fn corpus(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Corpus {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}
