//! `lcm bench kernels` entries of the fused RMSNorm and cross-entropy kernels: one shape
//! each, as rows of the kernels' table (their own commands, `lcm bench rmsnorm` and
//! `lcm bench xent`, sweep shapes and dtypes).

use tch::Kind;

use super::{KernelsBench, Row};
use crate::bench::fused::FusedTimes;
use crate::bench::rmsnorm::{Dim, RmsNormBench};
use crate::bench::xent::{Vocab, XentBench};
use crate::error::Result;

/// A kernel's forward and backward rows: memory-bound, so no FLOPs; the reference's
/// backward is its fwd+bwd less its fwd.
fn rows(bench: &KernelsBench, kernel: &str, shape: String, t: &FusedTimes) -> Vec<Row> {
    let ms = [t.kernel_fwd_ms, t.kernel_bwd_ms];
    let bytes = [t.fwd_bytes, t.bwd_bytes];
    let refs = [t.ref_fwd_ms, (t.ref_fwd_bwd_ms - t.ref_fwd_ms).max(0.0)];
    ["fwd", "bwd"]
        .iter()
        .enumerate()
        .map(|(i, pass)| {
            let ref_ms = (!bench.no_reference).then_some(refs[i]);
            bench.row(
                kernel,
                shape.clone(),
                pass,
                ms[i],
                0.0,
                bytes[i],
                ref_ms,
                None,
            )
        })
        .collect()
}

pub(super) fn rmsnorm(bench: &KernelsBench, n: i64, dim: i64) -> Result<Vec<Row>> {
    let r = RmsNormBench {
        device: bench.device,
        rows: n,
        size: Dim { dim },
        kind: Kind::BFloat16,
        peak_gbps: bench.peak_gbps,
    }
    .run()?;
    Ok(rows(
        bench,
        "rmsnorm",
        format!("rows {n} dim {dim} bf16"),
        &r.times,
    ))
}

pub(super) fn xent(bench: &KernelsBench, n: i64, vocab: i64) -> Result<Vec<Row>> {
    let r = XentBench {
        device: bench.device,
        rows: n,
        size: Vocab { vocab },
        kind: Kind::BFloat16,
        peak_gbps: bench.peak_gbps,
    }
    .run()?;
    Ok(rows(
        bench,
        "xent",
        format!("rows {n} vocab {vocab} bf16"),
        &r.times,
    ))
}
