//! `lcm bench allreduce`: the bandwidth of c10d's all-reduce at gradient-bucket sizes, on the
//! process group a data-parallel run uses (NCCL on CUDA, Gloo on CPU). Figures follow
//! nccl-tests: algorithm bandwidth = bytes / time, bus bandwidth = algorithm bandwidth x
//! 2 (n - 1) / n, the rate each link sustains in a ring, comparable across rank counts. At
//! one rank there is nothing to move (bus bandwidth 0): that row measures the collective's
//! fixed cost.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::dist::{Group, ReduceOp};
use crate::error::Result;

#[derive(Debug, Clone, Serialize)]
pub struct AllReduceRow {
    pub bytes: i64,
    pub dtype: String,
    pub ranks: u64,
    pub backend: String,
    pub seconds: f64,
    /// GB/s (1e9 bytes per second).
    pub algorithm_gbps: f64,
    pub bus_gbps: f64,
}

/// All-reduces a buffer of each of `sizes` bytes `iters` times after `warmup`, on `device`.
pub fn run(
    group: &Group,
    device: Device,
    sizes: &[i64],
    kind: Kind,
    warmup: usize,
    iters: usize,
) -> Result<Vec<AllReduceRow>> {
    let n = group.world() as f64;
    let mut rows = vec![];
    for &bytes in sizes {
        let numel = (bytes / kind.elt_size_in_bytes() as i64).max(1);
        let buf = Tensor::ones([numel], (kind, device));
        for _ in 0..warmup {
            group.all_reduce(&[&buf], ReduceOp::Sum)?;
        }
        group.barrier()?;
        super::sync(device);
        let t = std::time::Instant::now();
        for _ in 0..iters {
            group.all_reduce(&[&buf], ReduceOp::Sum)?;
        }
        super::sync(device);
        let seconds = t.elapsed().as_secs_f64() / iters.max(1) as f64;
        let real = numel * kind.elt_size_in_bytes() as i64;
        let algorithm = real as f64 / seconds / 1e9;
        rows.push(AllReduceRow {
            bytes: real,
            dtype: format!("{kind:?}").to_lowercase(),
            ranks: group.world(),
            backend: group.backend().name().into(),
            seconds,
            algorithm_gbps: algorithm,
            bus_gbps: algorithm * 2.0 * (n - 1.0) / n,
        });
    }
    Ok(rows)
}
