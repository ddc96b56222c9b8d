//! AdamW with fp32 master weights, written out so that its whole state can be saved and
//! restored bit for bit (tch's optimizers keep their state out of reach).
//!
//! In bf16 runs the model's own variables are bf16 working copies: gradients arrive in
//! bf16, are widened to fp32, update the fp32 master, and the master is rounded back into
//! the working copy. In fp32 runs master and working copy are the same tensor.

use tch::{nn::VarStore, Kind, Tensor};

use crate::train::config::OptimConfig;

pub struct AdamW {
    /// Variable names, sorted: the order of every list below and of the checkpoint.
    pub names: Vec<String>,
    work: Vec<Tensor>,
    pub master: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    decay: Vec<bool>,
    /// Whether master and working copy are distinct tensors (bf16 runs).
    separate: bool,
    /// Optimizer steps taken.
    pub step: u64,
}

impl AdamW {
    /// Takes the fp32 master weights from the (still fp32) VarStore; call before the
    /// store is narrowed to bf16, and call [`AdamW::bind_working`] after.
    pub fn new(vs: &VarStore) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let master: Vec<Tensor> = vars.iter().map(|(_, t)| t.shallow_clone()).collect();
        AdamW {
            decay: master.iter().map(|t| t.dim() >= 2).collect(),
            m: master.iter().map(|t| t.zeros_like()).collect(),
            v: master.iter().map(|t| t.zeros_like()).collect(),
            names: vars.into_iter().map(|(n, _)| n).collect(),
            work: master.iter().map(|t| t.shallow_clone()).collect(),
            master,
            separate: false,
            step: 0,
        }
    }

    /// Separates the master from the working copy for a bf16 run: keeps an fp32 copy as
    /// master, then narrows the store's variables (the working copy) to bf16.
    pub fn split_bf16(&mut self, vs: &mut VarStore) {
        self.master = self.master.iter().map(|t| t.detach().copy()).collect();
        vs.bfloat16();
        self.bind_working(vs);
        self.separate = true;
    }

    fn bind_working(&mut self, vs: &VarStore) {
        let vars = vs.variables();
        self.work = self.names.iter().map(|n| vars[n].shallow_clone()).collect();
    }

    /// Copies the master into the working copy (after loading a checkpoint).
    pub fn sync_working(&mut self) {
        if !self.separate {
            return;
        }
        tch::no_grad(|| {
            for (w, m) in self.work.iter_mut().zip(&self.master) {
                w.copy_(m);
            }
        });
    }

    /// Global L2 norm of the gradients (fp32), before clipping.
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let sq: Vec<Tensor> = self
                .work
                .iter()
                .map(|w| w.grad())
                .filter(|g| g.defined())
                .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
                .collect();
            if sq.is_empty() {
                return 0.0;
            }
            Tensor::stack(&sq, 0)
                .sum(Kind::Float)
                .sqrt()
                .double_value(&[])
        })
    }

    /// Whether every master weight is finite (checked before a checkpoint is written).
    pub fn all_finite(&self) -> bool {
        tch::no_grad(|| {
            self.master
                .iter()
                .all(|t| t.isfinite().all().int64_value(&[]) == 1)
        })
    }

    /// One AdamW step at learning rate `lr`; returns the gradient norm before clipping, or
    /// that norm as the error, with nothing updated, when it is not finite.
    pub fn step(&mut self, o: &OptimConfig, lr: f64) -> Result<f64, f64> {
        let norm = self.grad_norm();
        if !norm.is_finite() {
            return Err(norm);
        }
        let scale = if o.grad_clip > 0.0 && norm > o.grad_clip {
            o.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.step += 1;
        let bc1 = 1.0 - o.beta1.powi(self.step as i32);
        let bc2 = 1.0 - o.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for i in 0..self.work.len() {
                let g = self.work[i].grad();
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
                if self.separate {
                    self.work[i].copy_(&p);
                }
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
