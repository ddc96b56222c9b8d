//! Stop requests by signal, for long runs: the first SIGINT (Ctrl-C) or SIGTERM (what
//! Slurm, Kubernetes and `timeout` send) sets a flag that the trainer reads between steps,
//! so it saves a checkpoint and stops; a second one quits at once. Quitting goes through
//! `_exit`, never `exit`: exit handlers and C++ static destructors must not run while the
//! main thread is inside libtorch.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};

/// The stop request of a process: which signal asked, if one did.
#[derive(Clone)]
pub struct StopRequest {
    /// Set with the first signal; what [`crate::train::TrainOptions::interrupt`] reads.
    pub flag: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl StopRequest {
    /// The signal that asked to stop (SIGINT 2, SIGTERM 15), if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// The exit status a process stopped by request ends with: 128 + the signal
    /// (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process killed by it.
    pub fn exit_code(&self) -> Option<i32> {
        self.signal().map(|s| 128 + s)
    }
}

/// Installs the handler; `what` is the message printed at the first signal
/// ("saving a checkpoint after this step").
pub fn install(what: &'static str) -> Result<StopRequest> {
    let req = StopRequest {
        flag: Arc::new(AtomicBool::new(false)),
        signal: Arc::new(AtomicI32::new(0)),
    };
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::Invalid(format!("installing the signal handler: {e}")))?;
    let r = req.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if r.flag.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond stop signal: quitting now");
                signal_hook::low_level::exit(128 + sig);
            }
            r.signal.store(sig, Ordering::SeqCst);
            let name = if sig == SIGINT { "Ctrl-C" } else { "SIGTERM" };
            eprintln!("\n{name}: {what} (again to quit now)");
        }
    });
    Ok(req)
}
