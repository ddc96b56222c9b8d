//! AdamW with fp32 master weights, written out so that its whole state can be saved and
//! restored bit for bit (tch's optimizers keep their state out of reach).
//!
//! The model's own variables are the working copy (bf16 in bf16 runs): gradients arrive in
//! its dtype, are widened to fp32, update the fp32 master, and the master is copied (rounded,
//! in bf16 runs) back into the working copy.
//!
//! On several ranks the state can be sharded (ZeRO-1, `dist.shard_optimizer`): each rank
//! keeps the master and moments of one equal slice of the flat buffers, updates that slice
//! from the (already averaged) gradients, and the ranks all-gather the updated weights into
//! every working copy. The update is elementwise, so a sharded run computes the same bits as
//! an unsharded one; checkpoints hold the whole state, assembled from the slices.

use std::sync::Arc;

use tch::{nn::VarStore, Kind, Tensor};

use crate::dist::Group;
use crate::error::Error;
use crate::train::config::OptimConfig;

/// The moments and the master weights live in three flat fp32 buffers, one element range per
/// variable (the weight-decayed ones first), and `master`, `m`, `v` are views of them: the
/// update is a dozen ops over one buffer instead of a dozen per variable (the gradient norm
/// is still summed per variable, see `step_flat`). Written per variable, the update of
/// drt-128m is ~2,800 kernel launches per step, more than its forward and backward
/// together.
pub struct AdamW {
    /// Variable names, sorted: the order of every list below and of the checkpoint.
    pub names: Vec<String>,
    work: Vec<Tensor>,
    /// Each variable's views of the flat buffers; empty once the state is sharded
    /// ([`AdamW::shard`]), when [`AdamW::full_state`] assembles them.
    pub master: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    decay: Vec<bool>,
    /// Each variable's first element in the flat buffers, and its shape.
    ranges: Vec<(i64, Vec<i64>)>,
    /// Elements of all variables together.
    total: i64,
    flat: Flat,
    shard: Option<Shard>,
    /// Optimizer steps taken.
    pub step: u64,
}

/// This rank's slice of the flat buffers when the state is sharded across ranks.
struct Shard {
    group: Arc<Group>,
    /// The slice's first element; every slice has `len` elements, the last one running
    /// past the variables into padding that stays zero.
    offset: i64,
    len: i64,
}

/// Every variable's master weight and moments, in `names` order.
pub struct FullState {
    pub master: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    flat_master: Tensor,
}

impl FullState {
    /// Whether every master weight is finite (checked before a checkpoint is written).
    pub fn all_finite(&self) -> bool {
        tch::no_grad(|| self.flat_master.isfinite().all().int64_value(&[]) == 1)
    }
}

/// Why a step updated nothing.
#[derive(Debug)]
pub enum StepError {
    /// The gradient norm (returned) is not finite.
    NonFinite(f64),
    /// Gathering the updated weights from the other ranks failed.
    Dist(Error),
}

struct Flat {
    master: Tensor,
    m: Tensor,
    v: Tensor,
    /// The gradients gathered (fp32) before the update.
    grad: Tensor,
    /// Each variable's view of `grad`, in `names` order.
    grad_views: Vec<Tensor>,
    /// Elements of the weight-decayed variables, which come first in the buffers.
    decayed: i64,
}

impl Flat {
    /// The AdamW update of the buffers from `grad`, whose first `decayed` elements are
    /// weight-decayed; `bc` are the bias corrections of the step.
    fn update(&mut self, o: &OptimConfig, lr: f64, scale: f64, bc: (f64, f64), decayed: i64) {
        tch::no_grad(|| {
            let g = &self.grad * scale;
            let _ = self.m.g_mul_scalar_(o.beta1);
            let _ = self.m.g_add_(&(&g * (1.0 - o.beta1)));
            let _ = self.v.g_mul_scalar_(o.beta2);
            let _ = self.v.g_add_(&(g.square() * (1.0 - o.beta2)));
            let update = (&self.m / bc.0) / ((&self.v / bc.1).sqrt() + o.eps);
            if decayed > 0 {
                let _ = self
                    .master
                    .narrow(0, 0, decayed)
                    .g_mul_scalar_(1.0 - lr * o.weight_decay);
            }
            let _ = self.master.g_sub_(&(update * lr));
        });
    }
}

/// Views of `buf` at each variable's range and shape.
fn views(buf: &Tensor, ranges: &[(i64, Vec<i64>)]) -> Vec<Tensor> {
    ranges
        .iter()
        .map(|(off, shape)| {
            let n: i64 = shape.iter().product();
            buf.narrow(0, *off, n).view(shape.as_slice())
        })
        .collect()
}

/// The L2 norm of all `grads` together: each one's sum of squares in fp32, then their sum.
fn global_norm<'a>(grads: impl Iterator<Item = &'a Tensor>) -> f64 {
    let sq: Vec<Tensor> = grads
        .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
        .collect();
    if sq.is_empty() {
        return 0.0;
    }
    Tensor::stack(&sq, 0)
        .sum(Kind::Float)
        .sqrt()
        .double_value(&[])
}

impl AdamW {
    /// Copies the fp32 master weights out of the (still fp32) VarStore; call before the
    /// store is narrowed to bf16 ([`AdamW::split_bf16`]).
    pub fn new(vs: &VarStore) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let decay: Vec<bool> = vars.iter().map(|(_, t)| t.dim() >= 2).collect();
        let mut ranges = vec![(0i64, vec![]); vars.len()];
        let (mut off, mut decayed) = (0i64, 0i64);
        for pass in [true, false] {
            for (i, (_, t)) in vars.iter().enumerate() {
                if decay[i] == pass {
                    ranges[i] = (off, t.size());
                    off += t.numel() as i64;
                }
            }
            if pass {
                decayed = off;
            }
        }
        let device = vars.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let buf = || Tensor::zeros([off], (Kind::Float, device));
        let flat = Flat {
            master: buf(),
            m: buf(),
            v: buf(),
            grad: buf(),
            grad_views: vec![],
            decayed,
        };
        let mut opt = AdamW {
            master: views(&flat.master, &ranges),
            m: views(&flat.m, &ranges),
            v: views(&flat.v, &ranges),
            flat: Flat {
                grad_views: views(&flat.grad, &ranges),
                ..flat
            },
            decay,
            ranges,
            total: off,
            shard: None,
            names: vars.iter().map(|(n, _)| n.clone()).collect(),
            work: vars.iter().map(|(_, t)| t.shallow_clone()).collect(),
            step: 0,
        };
        tch::no_grad(|| {
            for (dst, (_, src)) in opt.master.iter_mut().zip(&vars) {
                dst.copy_(src);
            }
        });
        opt
    }

    /// Narrows the store's variables (the working copy) to bf16 for a bf16 run; the master
    /// stays fp32.
    pub fn split_bf16(&mut self, vs: &mut VarStore) {
        vs.bfloat16();
        let vars = vs.variables();
        self.work = self.names.iter().map(|n| vars[n].shallow_clone()).collect();
    }

    /// The model's variables the optimizer updates (the working copy), in `names` order:
    /// the leaves whose `.grad` a step reads.
    pub fn params(&self) -> &[Tensor] {
        &self.work
    }

    /// Every master weight in one flat fp32 buffer (views of it are `master`): what a
    /// data-parallel run broadcasts from rank 0 so every rank starts from the same weights.
    pub fn master_flat(&self) -> &Tensor {
        &self.flat.master
    }

    /// Copies the master into the working copy (after an update or loading a checkpoint).
    pub fn sync_working(&mut self) {
        tch::no_grad(|| {
            for (w, m) in self.work.iter_mut().zip(&self.master) {
                w.copy_(m);
            }
        });
    }

    /// Whether every master weight this rank holds is finite.
    pub fn all_finite(&self) -> bool {
        tch::no_grad(|| self.flat.master.isfinite().all().int64_value(&[]) == 1)
    }

    /// Keeps only this rank's slice of the master and moments from now on (ZeRO-1); call
    /// on every rank of `group` once their states are equal (after the broadcast from
    /// rank 0, or a resume).
    pub fn shard(&mut self, group: Arc<Group>) {
        let world = group.world() as i64;
        let len = (self.total + world - 1) / world;
        let offset = group.rank() as i64 * len;
        let held = (self.total - offset).clamp(0, len);
        let device = self.flat.master.device();
        let slice = |buf: &Tensor| {
            let part = Tensor::zeros([len], (Kind::Float, device));
            if held > 0 {
                tch::no_grad(|| part.narrow(0, 0, held).copy_(&buf.narrow(0, offset, held)));
            }
            part
        };
        self.flat.master = slice(&self.flat.master);
        self.flat.m = slice(&self.flat.m);
        self.flat.v = slice(&self.flat.v);
        self.flat.grad = Tensor::zeros([len], (Kind::Float, device));
        self.flat.grad_views.clear();
        self.master.clear();
        self.m.clear();
        self.v.clear();
        self.shard = Some(Shard { group, offset, len });
    }

    /// The whole state: views of this optimizer's buffers or, when sharded, assembled from
    /// every rank's slice (a collective: every rank of the group calls it).
    pub fn full_state(&self) -> crate::error::Result<FullState> {
        let Some(sh) = &self.shard else {
            return Ok(FullState {
                master: self.master.iter().map(|t| t.shallow_clone()).collect(),
                m: self.m.iter().map(|t| t.shallow_clone()).collect(),
                v: self.v.iter().map(|t| t.shallow_clone()).collect(),
                flat_master: self.flat.master.shallow_clone(),
            });
        };
        let whole = |part: &Tensor| -> crate::error::Result<Tensor> {
            let out = Tensor::zeros(
                [sh.len * sh.group.world() as i64],
                (Kind::Float, part.device()),
            );
            sh.group.all_gather(&out, part)?;
            Ok(out.narrow(0, 0, self.total))
        };
        let (master, m, v) = (
            whole(&self.flat.master)?,
            whole(&self.flat.m)?,
            whole(&self.flat.v)?,
        );
        Ok(FullState {
            master: views(&master, &self.ranges),
            m: views(&m, &self.ranges),
            v: views(&v, &self.ranges),
            flat_master: master,
        })
    }

    /// One AdamW step at learning rate `lr`; returns the gradient norm before clipping, or,
    /// with nothing updated, [`StepError::NonFinite`] when that norm is not finite. A
    /// variable with no gradient this step (unused by the forward) is left as it is,
    /// moments included.
    pub fn step(&mut self, o: &OptimConfig, lr: f64) -> Result<f64, StepError> {
        let grads: Vec<Tensor> = self.work.iter().map(|w| w.grad()).collect();
        if self.shard.is_some() {
            self.step_shard(o, lr, &grads)
        } else if grads.iter().all(|g| g.defined()) {
            self.step_flat(o, lr, &grads).map_err(StepError::NonFinite)
        } else {
            self.step_each(o, lr, &grads).map_err(StepError::NonFinite)
        }
    }

    fn bias_corrections(&mut self, o: &OptimConfig) -> (f64, f64) {
        self.step += 1;
        (
            1.0 - o.beta1.powi(self.step as i32),
            1.0 - o.beta2.powi(self.step as i32),
        )
    }

    fn clip_scale(o: &OptimConfig, norm: f64) -> f64 {
        if o.grad_clip > 0.0 && norm > o.grad_clip {
            o.grad_clip / (norm + 1e-6)
        } else {
            1.0
        }
    }

    /// Every variable has its gradient: the update over the flat buffers.
    fn step_flat(&mut self, o: &OptimConfig, lr: f64, grads: &[Tensor]) -> Result<f64, f64> {
        let f = &mut self.flat;
        let norm = tch::no_grad(|| {
            for (dst, g) in f.grad_views.iter_mut().zip(grads) {
                dst.copy_(g);
            }
            // Per variable, as `step_each`: one flat sum would round differently, and the
            // clip scale with it, which was enough to move the CPU toy's fragile depth-1
            // cell (scripts/demo.sh: 1K fell to 94%).
            global_norm(f.grad_views.iter())
        });
        if !norm.is_finite() {
            return Err(norm);
        }
        let scale = Self::clip_scale(o, norm);
        let bc = self.bias_corrections(o);
        let decayed = self.flat.decayed;
        self.flat.update(o, lr, scale, bc, decayed);
        self.sync_working();
        Ok(norm)
    }

    /// The state is sharded: this rank's slice of the gradients updates its slice of the
    /// state, as `step_flat` would (or `step_each`, for variables without a gradient), and
    /// the ranks gather the updated weights into their working copies.
    fn step_shard(&mut self, o: &OptimConfig, lr: f64, grads: &[Tensor]) -> Result<f64, StepError> {
        let norm = tch::no_grad(|| global_norm(grads.iter().filter(|g| g.defined())));
        if !norm.is_finite() {
            return Err(StepError::NonFinite(norm));
        }
        let scale = Self::clip_scale(o, norm);
        let bc = self.bias_corrections(o);
        let sh = self.shard.as_ref().expect("sharded");
        let (offset, len) = (sh.offset, sh.len);
        let f = &mut self.flat;
        // The slice's gradients; the parts of variables without one stay zero and get
        // their state back after the update.
        let mut kept = vec![];
        tch::no_grad(|| {
            let _ = f.grad.zero_();
            for ((start, shape), g) in self.ranges.iter().zip(grads) {
                let n: i64 = shape.iter().product();
                let (lo, hi) = ((*start).max(offset), (start + n).min(offset + len));
                if lo >= hi {
                    continue;
                }
                if g.defined() {
                    let src = g.reshape([-1]).narrow(0, lo - start, hi - lo);
                    f.grad.narrow(0, lo - offset, hi - lo).copy_(&src);
                } else {
                    let part = |t: &Tensor| t.narrow(0, lo - offset, hi - lo).copy();
                    kept.push((
                        lo - offset,
                        hi - lo,
                        [part(&f.master), part(&f.m), part(&f.v)],
                    ));
                }
            }
        });
        let decayed = (f.decayed - offset).clamp(0, len);
        f.update(o, lr, scale, bc, decayed);
        tch::no_grad(|| {
            for (at, n, [master, m, v]) in &kept {
                f.master.narrow(0, *at, *n).copy_(master);
                f.m.narrow(0, *at, *n).copy_(m);
                f.v.narrow(0, *at, *n).copy_(v);
            }
        });
        self.gather_working().map_err(StepError::Dist)?;
        Ok(norm)
    }

    /// Every rank's updated slice, rounded to the working dtype, into every working copy.
    fn gather_working(&mut self) -> crate::error::Result<()> {
        let sh = self.shard.as_ref().expect("sharded");
        let kind = self.work.first().map_or(Kind::Float, |w| w.kind());
        let device = self.flat.master.device();
        let whole = Tensor::empty([sh.len * sh.group.world() as i64], (kind, device));
        sh.group
            .all_gather(&whole, &self.flat.master.to_kind(kind))?;
        tch::no_grad(|| {
            for (w, (start, shape)) in self.work.iter_mut().zip(&self.ranges) {
                let n: i64 = shape.iter().product();
                w.copy_(&whole.narrow(0, *start, n).view(shape.as_slice()));
            }
        });
        Ok(())
    }

    /// Some variable has no gradient: the update one variable at a time, skipping those.
    fn step_each(&mut self, o: &OptimConfig, lr: f64, grads: &[Tensor]) -> Result<f64, f64> {
        let norm = tch::no_grad(|| global_norm(grads.iter().filter(|g| g.defined())));
        if !norm.is_finite() {
            return Err(norm);
        }
        let scale = Self::clip_scale(o, norm);
        let (bc1, bc2) = self.bias_corrections(o);
        tch::no_grad(|| {
            for (i, g) in grads.iter().enumerate() {
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float) * scale;
                let m = &self.m[i] * o.beta1 + &g * (1.0 - o.beta1);
                let v = &self.v[i] * o.beta2 + g.square() * (1.0 - o.beta2);
                let update = (&m / bc1) / ((&v / bc2).sqrt() + o.eps);
                let decay = if self.decay[i] {
                    1.0 - lr * o.weight_decay
                } else {
                    1.0
                };
                let p = &self.master[i] * decay - update * lr;
                self.m[i].copy_(&m);
                self.v[i].copy_(&v);
                self.master[i].copy_(&p);
                self.work[i].copy_(&p);
            }
        });
        Ok(norm)
    }

    pub fn zero_grad(&mut self) {
        for w in &mut self.work {
            let mut g = w.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
}
