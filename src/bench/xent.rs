//! `lcm bench xent`: the fused cross-entropy kernels against the pure-tch reference (fp32
//! `log_softmax` path) on the same logits and targets.

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
use crate::ops::xent::{cross_entropy_reference, IGNORE};

/// The bench of `lcm bench xent`.
pub type XentBench = FusedBench<Vocab>;

/// The vocabulary size, the size the cross-entropy bench sweeps.
#[derive(Serialize, Clone, Copy)]
pub struct Vocab {
    pub vocab: i64,
}

/// The forward kernel reads the logits and moves targets, loss and lse; the backward
/// reads the logits, writes dlogits and moves targets, lse and dloss.
pub type XentResult = FusedResult<Vocab>;

impl FusedSize for Vocab {
    const TABLE: FusedTable = FusedTable {
        lead: [("dtype", 5), ("rows", 6), ("vocab", 6)],
        gbps_width: 6,
        fwd_ratio: true,
        ratio_title: "ratio",
    };

    fn new(vocab: i64) -> Self {
        Vocab { vocab }
    }

    fn value(&self) -> i64 {
        self.vocab
    }
}

impl XentBench {
    pub fn run(&self) -> Result<XentResult> {
        let logits = Tensor::randn([self.rows, self.size.vocab], (self.kind, self.device)) * 2.0;
        let targets = Tensor::randint(self.size.vocab, [self.rows], (Kind::Int64, self.device));
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

        let fwd_bwd = |f: BinaryOp| {
            let xg = logits.detach().set_requires_grad(true);
            median_seconds(self.device, repeats, iters, || {
                let loss = f(&xg, &targets).sum(Kind::Float);
                let _ = Tensor::run_backward(&[&loss], &[&xg], false, false);
            })
        };
        let (ref_fwd, ref_fwd_bwd) = reference_seconds(
            self.device,
            repeats,
            iters,
            &cross_entropy_reference,
            (&logits, &targets),
            fwd_bwd,
        );
        #[cfg(lcm_cuda)]
        let kernel = if self.device.is_cuda() {
            use crate::ops::xent::{
                cross_entropy_cuda, cross_entropy_cuda_backward_raw, cross_entropy_cuda_forward_raw,
            };
            // The gradient of a sum: ones, as the trainer's mean gives (up to the scale).
            let dloss = Tensor::ones([self.rows], (Kind::Float, self.device));
            kernel_seconds(
                self.device,
                repeats,
                iters,
                || cross_entropy_cuda_forward_raw(&logits, &targets).map(|(_, lse)| lse),
                |lse| cross_entropy_cuda_backward_raw(&logits, &targets, lse, &dloss),
                || fwd_bwd(&|a, b| cross_entropy_cuda(a, b).unwrap()),
            )?
        } else {
            [None; 3]
        };
        #[cfg(not(lcm_cuda))]
        let kernel = [None; 3];

        let es = self.kind.elt_size_in_bytes() as f64;
        let (r, v) = (self.rows as f64, self.size.vocab as f64);
        let ignored = targets.eq(IGNORE).sum(Kind::Int64).int64_value(&[]) as f64;
        // Ignored rows are never read: only the scored rows' logits count.
        let scored = r - ignored;
        let bytes = [
            scored * v * es + r * (8.0 + 4.0 + 4.0),
            (scored + r) * v * es + r * (8.0 + 4.0 + 4.0),
        ];
        Ok(FusedResult {
            case: FusedCase::new(self.device, self.kind, self.rows),
            size: self.size,
            times: FusedTimes::from_seconds(ref_fwd, ref_fwd_bwd, kernel, bytes, self.peak_gbps),
        })
    }
}
