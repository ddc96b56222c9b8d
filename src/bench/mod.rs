//! Benchmarks behind `lcm bench`. Timings are medians over repeats of a batch of
//! iterations bracketed by device synchronisation, so they hold for memory-bound kernels
//! long enough that the launch cost is small (the sizes used are hundreds of MB).

pub mod prefill;
pub mod rmsnorm;
pub mod tokenizer;

use std::time::Instant;
use tch::Device;

/// Median seconds per call of `f`, timed as `repeats` batches of `iters` calls.
pub fn median_seconds(device: Device, repeats: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(3) {
        f();
    }
    sync(device);
    let mut samples: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            sync(device);
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
