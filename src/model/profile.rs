//! Time by phase of a forward, for `lcm bench prefill --profile`: each phase is bracketed by
//! a device synchronisation (so it slows the run a little) and accumulated by name. Off
//! unless [`enable`] was called on this thread: then [`phase`] costs a thread-local check.

use std::cell::RefCell;
use std::time::Instant;

/// Seconds per phase name, in first-seen order.
type Phases = Vec<(&'static str, f64)>;

thread_local! {
    static TIMES: RefCell<Option<(tch::Device, Phases)>> = const { RefCell::new(None) };
}

/// Starts collecting phase times on this thread for work on `device`.
pub fn enable(device: tch::Device) {
    TIMES.with(|t| *t.borrow_mut() = Some((device, Vec::new())));
}

/// Stops collecting and returns the seconds per phase, in first-seen order.
pub fn take() -> Phases {
    TIMES.with(|t| t.borrow_mut().take().map(|(_, v)| v).unwrap_or_default())
}

fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times the closure as phase `name` when profiling is on.
pub fn phase<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let device = TIMES.with(|t| t.borrow().as_ref().map(|(d, _)| *d));
    let Some(device) = device else {
        return f();
    };
    sync(device);
    let start = Instant::now();
    let out = f();
    sync(device);
    let secs = start.elapsed().as_secs_f64();
    TIMES.with(|t| {
        if let Some((_, v)) = t.borrow_mut().as_mut() {
            match v.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 += secs,
                None => v.push((name, secs)),
            }
        }
    });
    out
}
