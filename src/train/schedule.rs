//! Learning rate: linear warm-up to `lr`, then cosine decay to `min_lr` at the last step.

use crate::train::config::OptimConfig;

pub fn learning_rate(o: &OptimConfig, step: u64, total_steps: u64) -> f64 {
    if step < o.warmup_steps {
        return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let span = total_steps.saturating_sub(o.warmup_steps).max(1) as f64;
    let progress = ((step - o.warmup_steps) as f64 / span).min(1.0);
    o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}
