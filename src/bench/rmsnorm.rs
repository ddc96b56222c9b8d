//! `lcm bench rmsnorm`: the fused kernel against the pure-tch reference on the same inputs.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::median_seconds;
use crate::error::Result;
use crate::ops::rms_norm_reference;

pub struct RmsNormBench {
    pub device: Device,
    pub rows: i64,
    pub dim: i64,
    pub kind: Kind,
    /// Memory bandwidth ceiling in GB/s, for the fraction reached.
    pub peak_gbps: f64,
}

/// Milliseconds per call; `None` where the kernel is unavailable (CPU, no nvcc).
#[derive(Serialize)]
pub struct RmsNormResult {
    pub device: String,
    pub dtype: String,
    pub rows: i64,
    pub dim: i64,
    pub ref_fwd_ms: f64,
    pub ref_fwd_bwd_ms: f64,
    pub kernel_fwd_ms: Option<f64>,
    pub kernel_bwd_ms: Option<f64>,
    pub kernel_fwd_bwd_ms: Option<f64>,
    /// Bytes the forward kernel must move (x read, y written, w, rstd).
    pub fwd_bytes: f64,
    /// Bytes the backward kernel must move (x, dy read, dx written, w, rstd).
    pub bwd_bytes: f64,
    pub peak_gbps: f64,
}

const EPS: f64 = 1e-5;

impl RmsNormBench {
    pub fn run(&self) -> Result<RmsNormResult> {
        let opts = (self.kind, self.device);
        let x = Tensor::randn([self.rows, self.dim], opts);
        let w = Tensor::randn([self.dim], opts) * 0.1 + 1.0;
        let dy = Tensor::randn([self.rows, self.dim], opts);
        let (repeats, iters) = if self.device.is_cuda() {
            (11, 20)
        } else {
            (3, 2)
        };

        let ref_fwd = tch::no_grad(|| {
            median_seconds(self.device, repeats, iters, || {
                let _ = rms_norm_reference(&x, &w, EPS);
            })
        });
        let fwd_bwd = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let xg = x.detach().set_requires_grad(true);
            let wg = w.detach().set_requires_grad(true);
            median_seconds(self.device, repeats, iters, || {
                let loss = (f(&xg, &wg) * &dy).sum(Kind::Float);
                let _ = Tensor::run_backward(&[&loss], &[&xg, &wg], false, false);
            })
        };
        let ref_fwd_bwd = fwd_bwd(&|a, b| rms_norm_reference(a, b, EPS));

        let (kernel_fwd, kernel_bwd, kernel_fwd_bwd) =
            self.kernel_times(&x, &w, &dy, repeats, iters, &fwd_bwd)?;

        let es = self.kind.elt_size_in_bytes() as f64;
        let (r, d) = (self.rows as f64, self.dim as f64);
        Ok(RmsNormResult {
            device: format!("{:?}", self.device),
            dtype: format!("{:?}", self.kind),
            rows: self.rows,
            dim: self.dim,
            ref_fwd_ms: ref_fwd * 1e3,
            ref_fwd_bwd_ms: ref_fwd_bwd * 1e3,
            kernel_fwd_ms: kernel_fwd.map(|t| t * 1e3),
            kernel_bwd_ms: kernel_bwd.map(|t| t * 1e3),
            kernel_fwd_bwd_ms: kernel_fwd_bwd.map(|t| t * 1e3),
            fwd_bytes: 2.0 * r * d * es + d * es + 4.0 * r,
            bwd_bytes: 3.0 * r * d * es + d * es + 4.0 * r,
            peak_gbps: self.peak_gbps,
        })
    }

    #[cfg(lcm_cuda)]
    #[allow(clippy::type_complexity)]
    fn kernel_times(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        repeats: usize,
        iters: usize,
        fwd_bwd: &dyn Fn(&dyn Fn(&Tensor, &Tensor) -> Tensor) -> f64,
    ) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
        use crate::ops::rmsnorm::{
            rms_norm_cuda, rms_norm_cuda_backward_raw, rms_norm_cuda_forward_raw,
        };
        if !self.device.is_cuda() {
            return Ok((None, None, None));
        }
        let (_, rstd) = rms_norm_cuda_forward_raw(x, w, EPS)?;
        let _ = rms_norm_cuda_backward_raw(x, w, &rstd, dy)?;
        let fwd = median_seconds(self.device, repeats, iters, || {
            let _ = rms_norm_cuda_forward_raw(x, w, EPS).unwrap();
        });
        let bwd = median_seconds(self.device, repeats, iters, || {
            let _ = rms_norm_cuda_backward_raw(x, w, &rstd, dy).unwrap();
        });
        let both = fwd_bwd(&|a, b| rms_norm_cuda(a, b, EPS).unwrap());
        Ok((Some(fwd), Some(bwd), Some(both)))
    }

    #[cfg(not(lcm_cuda))]
    #[allow(clippy::type_complexity)]
    fn kernel_times(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _dy: &Tensor,
        _repeats: usize,
        _iters: usize,
        _fwd_bwd: &dyn Fn(&dyn Fn(&Tensor, &Tensor) -> Tensor) -> f64,
    ) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
        Ok((None, None, None))
    }
}

pub fn header() -> String {
    format!(
        "{:<6} {:>8} {:>5} | {:>9} {:>9} {:>7} {:>6} | {:>9} {:>7} {:>6} | {:>10} {:>10} {:>7}",
        "dtype",
        "rows",
        "dim",
        "ref fwd",
        "kern fwd",
        "GB/s",
        "%peak",
        "kern bwd",
        "GB/s",
        "%peak",
        "ref f+b",
        "kern f+b",
        "speedup"
    )
}

impl std::fmt::Display for RmsNormResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::{cell as show, cell_ms as ms, cell_ratio, dtype_label, gbps};
        let fwd_bw = gbps(self.fwd_bytes, self.kernel_fwd_ms);
        let bwd_bw = gbps(self.bwd_bytes, self.kernel_bwd_ms);
        let pct = |bw: Option<f64>| bw.map(|b| 100.0 * b / self.peak_gbps);
        write!(
            f,
            "{:<6} {:>8} {:>5} | {:>9} {:>9} {:>7} {:>6} | {:>9} {:>7} {:>6} | {:>10} {:>10} {:>7}",
            dtype_label(&self.dtype),
            self.rows,
            self.dim,
            ms(Some(self.ref_fwd_ms)),
            ms(self.kernel_fwd_ms),
            show(fwd_bw, 0),
            show(pct(fwd_bw), 1),
            ms(self.kernel_bwd_ms),
            show(bwd_bw, 0),
            show(pct(bwd_bw), 1),
            ms(Some(self.ref_fwd_bwd_ms)),
            ms(self.kernel_fwd_bwd_ms),
            cell_ratio(self.ref_fwd_bwd_ms, self.kernel_fwd_bwd_ms),
        )
    }
}
