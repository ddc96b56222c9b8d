//! Pretraining: config, data sampling (with synthetic needles from `data::synthetic`), AdamW with fp32 master
//! weights, the learning-rate schedule, checkpoints, their weight files
//! and exports, metrics, and the loop itself.

pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod debug;
pub mod export;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod sampler;
pub mod schedule;
pub mod trainer;
pub mod weights;

pub use config::TrainConfig;
pub use trainer::{train, TrainOptions, TrainSummary};
