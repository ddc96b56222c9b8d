//! `lcm bench rmsnorm`: the fused kernel against the pure-tch reference on the same inputs.

use serde::Serialize;
use tch::{Kind, Tensor};

#[cfg(lcm_cuda)]
use super::fused::kernel_seconds;
use super::fused::{
    reference_seconds, BinaryOp, FusedBench, FusedCase, FusedResult, FusedSize, FusedTable,
    FusedTimes,
};
use super::median_seconds;
use crate::error::Result;
use crate::ops::rms_norm_reference;

/// The bench of `lcm bench rmsnorm`.
pub type RmsNormBench = FusedBench<Dim>;

/// RMSNorm's normalised dimension, the size its bench sweeps.
#[derive(Serialize, Clone, Copy)]
pub struct Dim {
    pub dim: i64,
}

/// The forward kernel moves x (read), y (written), w and rstd; the backward x, dy
/// (read), dx (written), w and rstd.
pub type RmsNormResult = FusedResult<Dim>;

const EPS: f64 = 1e-5;

impl FusedSize for Dim {
    const TABLE: FusedTable = FusedTable {
        lead: [("dtype", 6), ("rows", 8), ("dim", 5)],
        gbps_width: 7,
        fwd_ratio: false,
        ratio_title: "speedup",
    };

    fn new(dim: i64) -> Self {
        Dim { dim }
    }

    fn value(&self) -> i64 {
        self.dim
    }
}

impl RmsNormBench {
    pub fn run(&self) -> Result<RmsNormResult> {
        let opts = (self.kind, self.device);
        let x = Tensor::randn([self.rows, self.size.dim], opts);
        let w = Tensor::randn([self.size.dim], opts) * 0.1 + 1.0;
        let dy = Tensor::randn([self.rows, self.size.dim], opts);
        let (repeats, iters) = if self.device.is_cuda() {
            (11, 20)
        } else {
            (3, 2)
        };

        let fwd_bwd = |f: BinaryOp| {
            let xg = x.detach().set_requires_grad(true);
            let wg = w.detach().set_requires_grad(true);
            median_seconds(self.device, repeats, iters, || {
                let loss = (f(&xg, &wg) * &dy).sum(Kind::Float);
                let _ = Tensor::run_backward(&[&loss], &[&xg, &wg], false, false);
            })
        };
        let (ref_fwd, ref_fwd_bwd) = reference_seconds(
            self.device,
            repeats,
            iters,
            &|a, b| rms_norm_reference(a, b, EPS),
            (&x, &w),
            fwd_bwd,
        );

        #[cfg(lcm_cuda)]
        let kernel = if self.device.is_cuda() {
            use crate::ops::rmsnorm::{
                rms_norm_cuda, rms_norm_cuda_backward_raw, rms_norm_cuda_forward_raw,
            };
            kernel_seconds(
                self.device,
                repeats,
                iters,
                || rms_norm_cuda_forward_raw(&x, &w, EPS).map(|(_, rstd)| rstd),
                |rstd| rms_norm_cuda_backward_raw(&x, &w, rstd, &dy),
                || fwd_bwd(&|a, b| rms_norm_cuda(a, b, EPS).unwrap()),
            )?
        } else {
            [None; 3]
        };
        #[cfg(not(lcm_cuda))]
        let kernel = [None; 3];

        let es = self.kind.elt_size_in_bytes() as f64;
        let (r, d) = (self.rows as f64, self.size.dim as f64);
        let bytes = [
            2.0 * r * d * es + d * es + 4.0 * r,
            3.0 * r * d * es + d * es + 4.0 * r,
        ];
        Ok(FusedResult {
            case: FusedCase::new(self.device, self.kind, self.rows),
            size: self.size,
            times: FusedTimes::from_seconds(ref_fwd, ref_fwd_bwd, kernel, bytes, self.peak_gbps),
        })
    }
}
