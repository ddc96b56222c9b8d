//! What the fused-kernel benches (`lcm bench rmsnorm`, `lcm bench xent`) share: the times
//! of a kernel against its pure-tch reference on the same inputs, and how they are taken.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

#[cfg(lcm_cuda)]
use crate::error::Result;

/// What a fused-kernel bench ran on: the device and dtype (as `{:?}` names them) and the
/// number of rows.
#[derive(Serialize)]
pub struct FusedCase {
    pub device: String,
    pub dtype: String,
    pub rows: i64,
}

impl FusedCase {
    pub fn new(device: Device, kind: Kind, rows: i64) -> Self {
        FusedCase {
            device: format!("{device:?}"),
            dtype: format!("{kind:?}"),
            rows,
        }
    }
}

/// A fused-kernel bench: `rows` rows of the swept size `size`, in dtype `kind` on `device`.
pub struct FusedBench<S> {
    pub device: Device,
    pub rows: i64,
    pub size: S,
    pub kind: Kind,
    /// Memory bandwidth ceiling in GB/s, for the fraction reached.
    pub peak_gbps: f64,
}

/// A fused-kernel bench's result: its case, the size it sweeps besides the rows (`S`, a
/// one-field struct that names it), and its times.
#[derive(Serialize)]
pub struct FusedResult<S> {
    #[serde(flatten)]
    pub case: FusedCase,
    #[serde(flatten)]
    pub size: S,
    #[serde(flatten)]
    pub times: FusedTimes,
}

/// The size a fused-kernel bench sweeps besides the rows, and the table that bench prints.
pub trait FusedSize: Serialize {
    const TABLE: FusedTable;
    fn new(size: i64) -> Self;
    fn value(&self) -> i64;
}

impl<S: FusedSize> std::fmt::Display for FusedResult<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = S::TABLE.row(&self.case, self.size.value(), &self.times);
        f.write_str(&row)
    }
}

/// An op of two tensors (the reference, or the kernel through autograd).
pub(crate) type BinaryOp<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Tensor;

/// The reference's times in seconds: its forward on `(a, b)` without autograd, then its
/// forward and backward as `fwd_bwd` times an op.
pub(crate) fn reference_seconds(
    device: Device,
    repeats: usize,
    iters: usize,
    reference: BinaryOp,
    (a, b): (&Tensor, &Tensor),
    fwd_bwd: impl FnOnce(BinaryOp) -> f64,
) -> (f64, f64) {
    let fwd = tch::no_grad(|| {
        super::median_seconds(device, repeats, iters, || {
            let _ = reference(a, b);
        })
    });
    (fwd, fwd_bwd(reference))
}

/// Milliseconds per call of a fused kernel and of its reference, with the bytes each kernel
/// pass must move; the kernel's times are `None` where it is unavailable (CPU, no nvcc).
#[derive(Serialize)]
pub struct FusedTimes {
    /// The reference's forward, without autograd.
    pub ref_fwd_ms: f64,
    /// The reference's forward and backward through autograd.
    pub ref_fwd_bwd_ms: f64,
    /// The kernel's raw forward.
    pub kernel_fwd_ms: Option<f64>,
    /// The kernel's raw backward, from the forward's saved statistics.
    pub kernel_bwd_ms: Option<f64>,
    /// Forward and backward through the kernel's autograd Function.
    pub kernel_fwd_bwd_ms: Option<f64>,
    /// Bytes the forward kernel must move.
    pub fwd_bytes: f64,
    /// Bytes the backward kernel must move.
    pub bwd_bytes: f64,
    /// Memory bandwidth ceiling in GB/s, for the fraction reached.
    pub peak_gbps: f64,
}

impl FusedTimes {
    /// From times in seconds: the reference's forward and forward+backward, and the kernel's
    /// `[forward, backward, forward+backward]`.
    pub fn from_seconds(
        ref_fwd: f64,
        ref_fwd_bwd: f64,
        kernel: [Option<f64>; 3],
        [fwd_bytes, bwd_bytes]: [f64; 2],
        peak_gbps: f64,
    ) -> Self {
        let ms = |t: Option<f64>| t.map(|t| t * 1e3);
        FusedTimes {
            ref_fwd_ms: ref_fwd * 1e3,
            ref_fwd_bwd_ms: ref_fwd_bwd * 1e3,
            kernel_fwd_ms: ms(kernel[0]),
            kernel_bwd_ms: ms(kernel[1]),
            kernel_fwd_bwd_ms: ms(kernel[2]),
            fwd_bytes,
            bwd_bytes,
            peak_gbps,
        }
    }

    /// The bandwidth the kernel's forward and backward reach, GB/s.
    pub(crate) fn kernel_gbps(&self) -> [Option<f64>; 2] {
        [
            super::gbps(self.fwd_bytes, self.kernel_fwd_ms),
            super::gbps(self.bwd_bytes, self.kernel_bwd_ms),
        ]
    }

    /// A bandwidth as a percentage of the peak.
    pub(crate) fn percent_of_peak(&self, gbps: Option<f64>) -> Option<f64> {
        gbps.map(|b| 100.0 * b / self.peak_gbps)
    }
}

/// The table of a fused-kernel bench: three leading columns (title and width; the first
/// left-aligned) naming the case, then the times: the reference's and the kernel's
/// forward, the kernel's GB/s and percentage of the peak (and, with `fwd_ratio`, the
/// reference's time over the kernel's); the kernel's backward, its GB/s and percentage;
/// the forward+backward of both and their ratio (`ratio_title`).
pub struct FusedTable {
    pub lead: [(&'static str, usize); 3],
    /// Width of the GB/s columns.
    pub gbps_width: usize,
    pub fwd_ratio: bool,
    pub ratio_title: &'static str,
}

impl FusedTable {
    /// The columns' titles.
    pub fn header(&self) -> String {
        let titles = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        self.join(
            self.lead.map(|(title, _)| title.to_string()),
            titles(&["ref fwd", "kern fwd", "GB/s", "%peak", "ratio"]),
            titles(&["kern bwd", "GB/s", "%peak"]),
            titles(&["ref f+b", "kern f+b", self.ratio_title]),
        )
    }

    /// One result's row: its case's dtype and rows, its `size` (the third column), then the
    /// cells of its times.
    pub fn row(&self, case: &FusedCase, size: i64, t: &FusedTimes) -> String {
        use super::{cell, cell_ms as ms, cell_ratio, dtype_label};
        let lead = [
            dtype_label(&case.dtype).to_string(),
            case.rows.to_string(),
            size.to_string(),
        ];
        let [fwd_bw, bwd_bw] = t.kernel_gbps();
        let pct = |bw| cell(t.percent_of_peak(bw), 1);
        self.join(
            lead,
            vec![
                ms(Some(t.ref_fwd_ms)),
                ms(t.kernel_fwd_ms),
                cell(fwd_bw, 0),
                pct(fwd_bw),
                cell_ratio(t.ref_fwd_ms, t.kernel_fwd_ms),
            ],
            vec![ms(t.kernel_bwd_ms), cell(bwd_bw, 0), pct(bwd_bw)],
            vec![
                ms(Some(t.ref_fwd_bwd_ms)),
                ms(t.kernel_fwd_bwd_ms),
                cell_ratio(t.ref_fwd_bwd_ms, t.kernel_fwd_bwd_ms),
            ],
        )
    }

    /// The cells padded to their columns, groups separated by " | " (the forward's last
    /// cell, the ratio, only with `fwd_ratio`).
    fn join(
        &self,
        lead: [String; 3],
        fwd: Vec<String>,
        bwd: Vec<String>,
        both: Vec<String>,
    ) -> String {
        let [(_, w0), (_, w1), (_, w2)] = self.lead;
        let w = self.gbps_width;
        let ratio = if self.fwd_ratio {
            format!(" {:>6}", fwd[4])
        } else {
            String::new()
        };
        format!(
            "{:<w0$} {:>w1$} {:>w2$} | {:>9} {:>9} {:>w$} {:>6}{ratio} | {:>9} {:>w$} {:>6} | \
             {:>10} {:>10} {:>7}",
            lead[0],
            lead[1],
            lead[2],
            fwd[0],
            fwd[1],
            fwd[2],
            fwd[3],
            bwd[0],
            bwd[1],
            bwd[2],
            both[0],
            both[1],
            both[2]
        )
    }
}

/// The kernel's times in seconds: `[forward, backward, forward+backward]`. The raw passes
/// run once untimed first (the backward on that forward's output, which every timed
/// backward reuses); `fwd_bwd` times forward and backward through autograd.
#[cfg(lcm_cuda)]
pub(crate) fn kernel_seconds<S, B>(
    device: tch::Device,
    repeats: usize,
    iters: usize,
    forward: impl Fn() -> Result<S>,
    backward: impl Fn(&S) -> Result<B>,
    fwd_bwd: impl FnOnce() -> f64,
) -> Result<[Option<f64>; 3]> {
    let saved = forward()?;
    let _ = backward(&saved)?;
    let fwd = super::median_seconds(device, repeats, iters, || {
        let _ = forward().unwrap();
    });
    let bwd = super::median_seconds(device, repeats, iters, || {
        let _ = backward(&saved).unwrap();
    });
    Ok([Some(fwd), Some(bwd), Some(fwd_bwd())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::rmsnorm::{Dim, RmsNormResult};
    use crate::bench::xent::{Vocab, XentResult};

    fn times() -> FusedTimes {
        FusedTimes::from_seconds(
            2e-3,
            5e-3,
            [Some(1e-3), None, Some(2.5e-3)],
            [4e9, 6e9],
            3000.0,
        )
    }

    #[test]
    fn tables_keep_their_layout() {
        assert_eq!(
            Dim::TABLE.header(),
            format!(
                "{:<6} {:>8} {:>5} | {:>9} {:>9} {:>7} {:>6} | {:>9} {:>7} {:>6} | {:>10} {:>10} {:>7}",
                "dtype", "rows", "dim", "ref fwd", "kern fwd", "GB/s", "%peak", "kern bwd",
                "GB/s", "%peak", "ref f+b", "kern f+b", "speedup"
            )
        );
        assert_eq!(
            Vocab::TABLE.header(),
            format!(
                "{:<5} {:>6} {:>6} | {:>9} {:>9} {:>6} {:>6} {:>6} | {:>9} {:>6} {:>6} | {:>10} {:>10} {:>7}",
                "dtype", "rows", "vocab", "ref fwd", "kern fwd", "GB/s", "%peak", "ratio",
                "kern bwd", "GB/s", "%peak", "ref f+b", "kern f+b", "ratio"
            )
        );
        let case = || FusedCase::new(Device::Cpu, Kind::BFloat16, 4096);
        let r: RmsNormResult = FusedResult {
            case: case(),
            size: Dim { dim: 2048 },
            times: times(),
        };
        let x: XentResult = FusedResult {
            case: case(),
            size: Vocab { vocab: 50304 },
            times: times(),
        };
        // The rows as the benches' own `write!` calls formatted them.
        use crate::bench::{cell, cell_ms as ms, cell_ratio};
        let (bw, pct) = (Some(4000.0), Some(400.0 / 3.0));
        assert_eq!(
            r.to_string(),
            format!(
                "{:<6} {:>8} {:>5} | {:>9} {:>9} {:>7} {:>6} | {:>9} {:>7} {:>6} | {:>10} {:>10} {:>7}",
                "bf16", 4096, 2048, ms(Some(2.0)), ms(Some(1.0)), cell(bw, 0), cell(pct, 1),
                ms(None), cell(None, 0), cell(None, 1), ms(Some(5.0)), ms(Some(2.5)),
                cell_ratio(5.0, Some(2.5))
            )
        );
        assert_eq!(
            x.to_string(),
            format!(
                "{:<5} {:>6} {:>6} | {:>9} {:>9} {:>6} {:>6} {:>6} | {:>9} {:>6} {:>6} | {:>10} {:>10} {:>7}",
                "bf16", 4096, 50304, ms(Some(2.0)), ms(Some(1.0)), cell(bw, 0), cell(pct, 1),
                cell_ratio(2.0, Some(1.0)), ms(None), cell(None, 0), cell(None, 1),
                ms(Some(5.0)), ms(Some(2.5)), cell_ratio(5.0, Some(2.5))
            )
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "{\"device\":\"Cpu\",\"dtype\":\"BFloat16\",\"rows\":4096,\"dim\":2048,\
             \"ref_fwd_ms\":2.0,\"ref_fwd_bwd_ms\":5.0,\"kernel_fwd_ms\":1.0,\
             \"kernel_bwd_ms\":null,\"kernel_fwd_bwd_ms\":2.5,\"fwd_bytes\":4000000000.0,\
             \"bwd_bytes\":6000000000.0,\"peak_gbps\":3000.0}"
        );
    }
}
