//! `lcm bench kernels` entries of the fused RMSNorm and cross-entropy kernels: one shape
//! each, as rows of the kernels' table (their own commands, `lcm bench rmsnorm` and
//! `lcm bench xent`, sweep shapes and dtypes).

use tch::Kind;

use super::{KernelsBench, Row};
use crate::bench::rmsnorm::RmsNormBench;
use crate::bench::xent::XentBench;
use crate::error::Result;

/// A kernel's forward and backward rows: memory-bound, so no FLOPs; the reference's
/// backward is its fwd+bwd less its fwd.
#[allow(clippy::too_many_arguments)]
fn rows(
    bench: &KernelsBench,
    kernel: &str,
    shape: String,
    ms: [Option<f64>; 2],
    bytes: [f64; 2],
    ref_fwd_ms: f64,
    ref_fwd_bwd_ms: f64,
) -> Vec<Row> {
    let refs = [ref_fwd_ms, (ref_fwd_bwd_ms - ref_fwd_ms).max(0.0)];
    ["fwd", "bwd"]
        .iter()
        .enumerate()
        .map(|(i, pass)| Row {
            kernel: kernel.to_string(),
            shape: shape.clone(),
            pass: pass.to_string(),
            ms: ms[i],
            flops: 0.0,
            bytes: bytes[i],
            ref_ms: (!bench.no_reference).then_some(refs[i]),
            sdpa_ms: None,
            peak_tflops: bench.peak_tflops,
            peak_gbps: bench.peak_gbps,
        })
        .collect()
}

pub(super) fn rmsnorm(bench: &KernelsBench, n: i64, dim: i64) -> Result<Vec<Row>> {
    let r = RmsNormBench {
        device: bench.device,
        rows: n,
        dim,
        kind: Kind::BFloat16,
        peak_gbps: bench.peak_gbps,
    }
    .run()?;
    Ok(rows(
        bench,
        "rmsnorm",
        format!("rows {n} dim {dim} bf16"),
        [r.kernel_fwd_ms, r.kernel_bwd_ms],
        [r.fwd_bytes, r.bwd_bytes],
        r.ref_fwd_ms,
        r.ref_fwd_bwd_ms,
    ))
}

pub(super) fn xent(bench: &KernelsBench, n: i64, vocab: i64) -> Result<Vec<Row>> {
    let r = XentBench {
        device: bench.device,
        rows: n,
        vocab,
        kind: Kind::BFloat16,
        peak_gbps: bench.peak_gbps,
    }
    .run()?;
    Ok(rows(
        bench,
        "xent",
        format!("rows {n} vocab {vocab} bf16"),
        [r.kernel_fwd_ms, r.kernel_bwd_ms],
        [r.fwd_bytes, r.bwd_bytes],
        r.ref_fwd_ms,
        r.ref_fwd_bwd_ms,
    ))
}
