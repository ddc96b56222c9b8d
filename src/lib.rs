//! lcm: pretraining and evaluation of long-context language models whose attention
//! retrieves from the past (Grouped Cross Attention / DRT, Hierarchical Sparse Attention),
//! on libtorch with our own CUDA kernels.
//!
//! Data flows one way and the modules follow it: `data` (corpus formats, preprocessing)
//! -> `model` -> `train` -> `eval`; `ops` holds every attention/norm op as a pure-tch
//! reference beside its CUDA dispatch (`cuda`), and `bench` measures them.

pub mod bench;
pub mod cuda;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod info;
pub mod lock;
pub mod model;
pub mod ops;
pub mod progress;
pub mod report;
pub mod signals;
pub mod train;
pub mod util;

pub use error::{Error, Result};
