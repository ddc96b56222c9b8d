//! What the trainer does differently on several ranks: every rank starts from rank 0's
//! weights, DDP's Reducer averages the gradients of each step's last micro-batch in buckets
//! overlapped with the backward, and one small all-reduce a step makes the step's numbers
//! global (loss, answers, scored positions) and its decisions common (a rank's non-finite
//! loss or stop request stops every rank at the same step).

use std::sync::Arc;

use tch::{Kind, Tensor};

use crate::dist::{Group, ReduceOp, Reducer};
use crate::error::{Error, Result};
use crate::train::optim::AdamW;

pub struct DataParallel {
    pub group: Arc<Group>,
    reducer: Reducer,
}

/// One rank's numbers for one optimizer step (summed over its micro-batches).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Sum of the micro-batches' mean losses.
    pub loss_sum: f64,
    /// Micro-batches summed in `loss_sum`, over every rank once reduced.
    pub micro_batches: f64,
    /// Synthetic answers predicted exactly, and answers in all.
    pub answers: (f64, f64),
    /// Scored target positions and all target positions.
    pub scored: (f64, f64),
    /// A stop was asked for (a signal on some rank).
    pub stop: bool,
    /// The ranks whose loss was not finite.
    pub nonfinite_ranks: Vec<u64>,
}

impl DataParallel {
    /// Broadcasts rank 0's master weights into every rank's optimizer and model, and builds
    /// the Reducer over the model's parameters with buckets of `bucket_bytes`.
    pub fn new(group: Arc<Group>, opt: &mut AdamW, bucket_bytes: i64) -> Result<DataParallel> {
        tch::no_grad(|| group.broadcast(opt.master_flat(), 0))?;
        opt.sync_working();
        let reducer = Reducer::new(&group, opt.params(), bucket_bytes)?;
        Ok(DataParallel { group, reducer })
    }

    pub fn rank(&self) -> u64 {
        self.group.rank()
    }

    pub fn world(&self) -> u64 {
        self.group.world()
    }

    /// Arms the gradient all-reduce for the backward of `loss` (the step's last micro-batch).
    pub fn arm(&self, loss: &Tensor) -> Result<()> {
        self.reducer.prepare(loss)
    }

    /// The gradient buckets' sizes in bytes.
    pub fn bucket_bytes(&self) -> Result<Vec<i64>> {
        self.reducer.bucket_bytes()
    }

    /// Starts summing `local` over every rank (the ranks' non-finite flags kept apart).
    /// On NCCL the all-reduce is queued behind the backward without waiting for it, so
    /// the optimizer's kernels are queued before the host reads the sums
    /// ([`PendingStats::finish`]).
    pub fn reduce(&self, local: &StepStats, device: tch::Device) -> Result<PendingStats> {
        let world = self.world() as usize;
        let mut v = vec![
            local.loss_sum,
            local.micro_batches,
            local.answers.0,
            local.answers.1,
            local.scored.0,
            local.scored.1,
            local.stop as u8 as f64,
        ];
        let fixed = v.len();
        v.extend(std::iter::repeat_n(0.0, world));
        if !local.nonfinite_ranks.is_empty() {
            v[fixed + self.rank() as usize] = 1.0;
        }
        // Gloo reduces host tensors, NCCL device ones.
        let on = match self.group.backend() {
            crate::dist::Backend::Nccl => device,
            crate::dist::Backend::Gloo => tch::Device::Cpu,
        };
        let sums = Tensor::from_slice(&v).to_kind(Kind::Double).to_device(on);
        self.group.all_reduce(&[&sums], ReduceOp::Sum)?;
        Ok(PendingStats { sums, fixed, world })
    }

    pub fn barrier(&self) -> Result<()> {
        self.group.barrier()
    }
}

/// A step's numbers being summed over the ranks.
pub struct PendingStats {
    sums: Tensor,
    /// Entries before the per-rank non-finite flags.
    fixed: usize,
    world: usize,
}

impl PendingStats {
    /// The global numbers (waits for the all-reduce).
    pub fn finish(self) -> Result<StepStats> {
        let all: Vec<f64> = Vec::<f64>::try_from(self.sums.to_device(tch::Device::Cpu))
            .map_err(|e| Error::Invalid(format!("reading the step's reduced numbers: {e}")))?;
        let fixed = self.fixed;
        Ok(StepStats {
            loss_sum: all[0],
            micro_batches: all[1],
            answers: (all[2], all[3]),
            scored: (all[4], all[5]),
            stop: all[6] > 0.0,
            nonfinite_ranks: (0..self.world)
                .filter(|r| all[fixed + r] > 0.0)
                .map(|r| r as u64)
                .collect(),
        })
    }
}
