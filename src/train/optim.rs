//! AdamW with fp32 master weights, written out so that its whole state can be saved and
//! restored bit for bit (tch's optimizers keep their state out of reach).
//!
//! The model's own variables are the working copy (bf16 in bf16 runs): gradients arrive in
//! its dtype, are widened to fp32, update the fp32 master, and the master is copied (rounded,
//! in bf16 runs) back into the working copy.

use tch::{nn::VarStore, Kind, Tensor};

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
    pub master: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    decay: Vec<bool>,
    flat: Flat,
    /// Optimizer steps taken.
    pub step: u64,
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

    /// Whether every master weight is finite (checked before a checkpoint is written).
    pub fn all_finite(&self) -> bool {
        tch::no_grad(|| self.flat.master.isfinite().all().int64_value(&[]) == 1)
    }

    /// One AdamW step at learning rate `lr`; returns the gradient norm before clipping, or
    /// that norm as the error, with nothing updated, when it is not finite. A variable with
    /// no gradient this step (unused by the forward) is left as it is, moments included.
    pub fn step(&mut self, o: &OptimConfig, lr: f64) -> Result<f64, f64> {
        let grads: Vec<Tensor> = self.work.iter().map(|w| w.grad()).collect();
        if grads.iter().all(|g| g.defined()) {
            self.step_flat(o, lr, &grads)
        } else {
            self.step_each(o, lr, &grads)
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
        let (bc1, bc2) = self.bias_corrections(o);
        let f = &mut self.flat;
        tch::no_grad(|| {
            let g = &f.grad * scale;
            let _ = f.m.g_mul_scalar_(o.beta1);
            let _ = f.m.g_add_(&(&g * (1.0 - o.beta1)));
            let _ = f.v.g_mul_scalar_(o.beta2);
            let _ = f.v.g_add_(&(g.square() * (1.0 - o.beta2)));
            let update = (&f.m / bc1) / ((&f.v / bc2).sqrt() + o.eps);
            if f.decayed > 0 {
                let _ = f
                    .master
                    .narrow(0, 0, f.decayed)
                    .g_mul_scalar_(1.0 - lr * o.weight_decay);
            }
            let _ = f.master.g_sub_(&(update * lr));
        });
        self.sync_working();
        Ok(norm)
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
