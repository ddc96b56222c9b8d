//! `lcm bench xent`: the fused cross-entropy kernels against the pure-tch reference (fp32
//! `log_softmax` path) on the same logits and targets.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::median_seconds;
use crate::error::Result;
use crate::ops::xent::{cross_entropy_reference, IGNORE};

pub struct XentBench {
    pub device: Device,
    pub rows: i64,
    pub vocab: i64,
    pub kind: Kind,
    /// Memory bandwidth ceiling in GB/s, for the fraction reached.
    pub peak_gbps: f64,
}

/// Milliseconds per call; `None` where the kernel is unavailable (CPU, no nvcc).
#[derive(Serialize)]
pub struct XentResult {
    pub device: String,
    pub dtype: String,
    pub rows: i64,
    pub vocab: i64,
    pub ref_fwd_ms: f64,
    pub ref_fwd_bwd_ms: f64,
    pub kernel_fwd_ms: Option<f64>,
    pub kernel_bwd_ms: Option<f64>,
    pub kernel_fwd_bwd_ms: Option<f64>,
    /// Bytes the forward kernel must move (logits read; targets, loss, lse).
    pub fwd_bytes: f64,
    /// Bytes the backward kernel must move (logits read, dlogits written; targets, lse,
    /// dloss).
    pub bwd_bytes: f64,
    pub peak_gbps: f64,
}

impl XentBench {
    pub fn run(&self) -> Result<XentResult> {
        let logits = Tensor::randn([self.rows, self.vocab], (self.kind, self.device)) * 2.0;
        let targets = Tensor::randint(self.vocab, [self.rows], (Kind::Int64, self.device));
        // A few ignored targets, as in training (their rows are skipped, so they would
        // flatter the kernel's figures if there were many).
        let targets = targets.index_fill(
            0,
            &Tensor::arange_start_step(0, self.rows, 97, (Kind::Int64, self.device)),
            IGNORE,
        );
        let (repeats, iters) = if self.device.is_cuda() {
            (11, 10)
        } else {
            (3, 1)
        };

        let ref_fwd = tch::no_grad(|| {
            median_seconds(self.device, repeats, iters, || {
                let _ = cross_entropy_reference(&logits, &targets);
            })
        });
        let fwd_bwd = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let xg = logits.detach().set_requires_grad(true);
            median_seconds(self.device, repeats, iters, || {
                let loss = f(&xg, &targets).sum(Kind::Float);
                let _ = Tensor::run_backward(&[&loss], &[&xg], false, false);
            })
        };
        let ref_fwd_bwd = fwd_bwd(&cross_entropy_reference);
        let (kernel_fwd, kernel_bwd, kernel_fwd_bwd) =
            self.kernel_times(&logits, &targets, repeats, iters, &fwd_bwd)?;

        let es = self.kind.elt_size_in_bytes() as f64;
        let (r, v) = (self.rows as f64, self.vocab as f64);
        let ignored = targets.eq(IGNORE).sum(Kind::Int64).int64_value(&[]) as f64;
        // Ignored rows are never read: only the scored rows' logits count.
        let scored = r - ignored;
        Ok(XentResult {
            device: format!("{:?}", self.device),
            dtype: format!("{:?}", self.kind),
            rows: self.rows,
            vocab: self.vocab,
            ref_fwd_ms: ref_fwd * 1e3,
            ref_fwd_bwd_ms: ref_fwd_bwd * 1e3,
            kernel_fwd_ms: kernel_fwd.map(|t| t * 1e3),
            kernel_bwd_ms: kernel_bwd.map(|t| t * 1e3),
            kernel_fwd_bwd_ms: kernel_fwd_bwd.map(|t| t * 1e3),
            fwd_bytes: scored * v * es + r * (8.0 + 4.0 + 4.0),
            bwd_bytes: (scored + r) * v * es + r * (8.0 + 4.0 + 4.0),
            peak_gbps: self.peak_gbps,
        })
    }

    #[cfg(lcm_cuda)]
    #[allow(clippy::type_complexity)]
    fn kernel_times(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        repeats: usize,
        iters: usize,
        fwd_bwd: &dyn Fn(&dyn Fn(&Tensor, &Tensor) -> Tensor) -> f64,
    ) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
        use crate::ops::xent::{
            cross_entropy_cuda, cross_entropy_cuda_backward_raw, cross_entropy_cuda_forward_raw,
        };
        if !self.device.is_cuda() {
            return Ok((None, None, None));
        }
        let (_, lse) = cross_entropy_cuda_forward_raw(logits, targets)?;
        // The gradient of a sum: ones, as the trainer's mean gives (up to the scale).
        let dloss = Tensor::ones([self.rows], (Kind::Float, self.device));
        let _ = cross_entropy_cuda_backward_raw(logits, targets, &lse, &dloss)?;
        let fwd = median_seconds(self.device, repeats, iters, || {
            let _ = cross_entropy_cuda_forward_raw(logits, targets).unwrap();
        });
        let bwd = median_seconds(self.device, repeats, iters, || {
            let _ = cross_entropy_cuda_backward_raw(logits, targets, &lse, &dloss).unwrap();
        });
        let both = fwd_bwd(&|a, b| cross_entropy_cuda(a, b).unwrap());
        Ok((Some(fwd), Some(bwd), Some(both)))
    }

    #[cfg(not(lcm_cuda))]
    #[allow(clippy::type_complexity)]
    fn kernel_times(
        &self,
        _logits: &Tensor,
        _targets: &Tensor,
        _repeats: usize,
        _iters: usize,
        _fwd_bwd: &dyn Fn(&dyn Fn(&Tensor, &Tensor) -> Tensor) -> f64,
    ) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
        Ok((None, None, None))
    }
}

pub fn header() -> String {
    format!(
        "{:<5} {:>6} {:>6} | {:>9} {:>9} {:>6} {:>6} {:>6} | {:>9} {:>6} {:>6} | {:>10} {:>10} {:>7}",
        "dtype",
        "rows",
        "vocab",
        "ref fwd",
        "kern fwd",
        "GB/s",
        "%peak",
        "ratio",
        "kern bwd",
        "GB/s",
        "%peak",
        "ref f+b",
        "kern f+b",
        "ratio"
    )
}

impl std::fmt::Display for XentResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::{cell as show, cell_ms as ms, cell_ratio as ratio, dtype_label, gbps};
        let fwd_bw = gbps(self.fwd_bytes, self.kernel_fwd_ms);
        let bwd_bw = gbps(self.bwd_bytes, self.kernel_bwd_ms);
        let pct = |bw: Option<f64>| bw.map(|b| 100.0 * b / self.peak_gbps);
        write!(
            f,
            "{:<5} {:>6} {:>6} | {:>9} {:>9} {:>6} {:>6} {:>6} | {:>9} {:>6} {:>6} | {:>10} {:>10} {:>7}",
            dtype_label(&self.dtype),
            self.rows,
            self.vocab,
            ms(Some(self.ref_fwd_ms)),
            ms(self.kernel_fwd_ms),
            show(fwd_bw, 0),
            show(pct(fwd_bw), 1),
            ratio(self.ref_fwd_ms, self.kernel_fwd_ms),
            ms(self.kernel_bwd_ms),
            show(bwd_bw, 0),
            show(pct(bwd_bw), 1),
            ms(Some(self.ref_fwd_bwd_ms)),
            ms(self.kernel_fwd_bwd_ms),
            ratio(self.ref_fwd_bwd_ms, self.kernel_fwd_bwd_ms),
        )
    }
}
