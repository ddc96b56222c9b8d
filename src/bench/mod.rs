//! Benchmarks behind `lcm bench`. Timings are medians over repeats of a batch of
//! iterations bracketed by device synchronisation, so they hold for memory-bound kernels
//! long enough that the launch cost is small (the sizes used are hundreds of MB).

pub mod allreduce;
pub mod fused;
pub mod kernels;
pub mod prefill;
pub mod rmsnorm;
pub mod tokenizer;
pub mod xent;

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

/// How [`median_ms_events`] brackets each timed call.
#[derive(Clone, Debug)]
pub struct EventTiming {
    /// Zeroings of a 256 MB buffer (more than L2) before each call; 0: none.
    pub flush: usize,
    /// Print the host's time in each call (median and max) to stderr.
    pub host_time: bool,
}

impl Default for EventTiming {
    fn default() -> Self {
        EventTiming {
            flush: 1,
            host_time: false,
        }
    }
}

/// Median milliseconds of one call of `f`, each of `runs` calls bracketed by CUDA events on
/// the current stream (after `warmup` untimed calls). Without the kernels' bridge (or on
/// the CPU) each call is timed by the host clock after a device synchronisation.
///
/// As in Triton's `do_bench`, each timed call follows the zeroing of a buffer larger than
/// L2, queued before the first event: every call starts from a cold L2, and the GPU is
/// still busy zeroing while the host prepares and launches `f`, so the events bracket the
/// GPU's work rather than the host's. (With an idle GPU, the first event fires at once and
/// the host's allocations, tensor-map encodings and launches before the kernel, ~10 µs,
/// count as kernel time: a tenth of a 90 µs kernel.) `timing` says how many times to zero
/// (0: no flush) and whether to print the host's time in each call (what the flush must
/// cover).
pub fn median_ms_events(
    device: Device,
    warmup: usize,
    runs: usize,
    timing: &EventTiming,
    mut f: impl FnMut(),
) -> f64 {
    #[cfg(not(lcm_cuda))]
    let _ = timing;
    for _ in 0..warmup {
        f();
    }
    sync(device);
    let mut samples: Vec<f64> = Vec::with_capacity(runs);
    #[cfg(lcm_cuda)]
    if device.is_cuda() {
        use crate::cuda::ffi;
        // More than the H200's 50 MB of L2, as `do_bench`'s 256 MB.
        const L2_FLUSH_BYTES: i64 = 256 << 20;
        let passes = timing.flush;
        let mut flush = tch::Tensor::empty([L2_FLUSH_BYTES / 4], (tch::Kind::Int, device));
        let mut host_us = Vec::with_capacity(runs);
        let (a, b) = unsafe { (ffi::lcm_cuda_event_new(), ffi::lcm_cuda_event_new()) };
        if !a.is_null() && !b.is_null() {
            for _ in 0..runs {
                for _ in 0..passes {
                    let _ = flush.zero_();
                }
                unsafe { ffi::lcm_cuda_event_record(a) };
                let t = Instant::now();
                f();
                host_us.push(t.elapsed().as_secs_f64() * 1e6);
                unsafe { ffi::lcm_cuda_event_record(b) };
                let ms = unsafe { ffi::lcm_cuda_event_elapsed_ms(a, b) };
                if ms >= 0.0 {
                    samples.push(ms as f64);
                }
            }
        }
        unsafe {
            ffi::lcm_cuda_event_free(a);
            ffi::lcm_cuda_event_free(b);
        }
        if timing.host_time && !host_us.is_empty() {
            host_us.sort_by(f64::total_cmp);
            eprintln!(
                "[bench] host time of a call: median {:.1} us, max {:.1} us",
                host_us[host_us.len() / 2],
                host_us[host_us.len() - 1]
            );
        }
    }
    if samples.is_empty() {
        for _ in 0..runs {
            let t = Instant::now();
            f();
            sync(device);
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Table cells shared by the kernel-vs-reference benches (`rmsnorm`, `xent`): a time in ms
/// or "-" where it was not measured, a number at `prec` digits or "-", the bandwidth that
/// moving `bytes` in `ms` takes, and the short name of a dtype.
pub(crate) fn cell_ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.3}ms"))
}
pub(crate) fn cell(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.prec$}"))
}
/// The reference's time over the kernel's, as "2.50x", or "-" without a kernel time.
pub(crate) fn cell_ratio(reference_ms: f64, kernel_ms: Option<f64>) -> String {
    kernel_ms.map_or("-".to_string(), |k| format!("{:.2}x", reference_ms / k))
}
pub(crate) fn gbps(bytes: f64, ms: Option<f64>) -> Option<f64> {
    ms.map(|t| bytes / (t * 1e-3) / 1e9)
}
pub(crate) fn dtype_label(dtype: &str) -> &'static str {
    if dtype == "BFloat16" {
        "bf16"
    } else {
        "f32"
    }
}
