//! `lcm launch`: starts the workers of one node, as `torchrun --nproc-per-node` does,
//! without Python. Each worker is this same binary with the torchrun variables set
//! ([`super::Launch`]). The launcher supervises them:
//! - a worker that fails (non-zero exit, killed) makes the launcher stop the others
//!   (SIGTERM, then SIGKILL after a grace period) and exit non-zero, naming the rank;
//! - SIGINT (Ctrl-C) and SIGTERM to the launcher go to every worker, once per signal: the
//!   first makes training save and stop, a second quits at once. Workers run in their own
//!   process group, so a terminal's Ctrl-C reaches them only through the launcher.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGKILL, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub nproc_per_node: u64,
    pub nnodes: u64,
    pub node_rank: u64,
    pub master_addr: String,
    /// 0: a free port of this machine (one node only).
    pub master_port: u16,
    /// How long stopped workers get to exit before SIGKILL.
    pub grace: Duration,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

struct Worker {
    rank: u64,
    child: Child,
    status: Option<std::process::ExitStatus>,
}

/// A free TCP port on this machine (bound and released; the rendezvous binds it next).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Invalid(format!("finding a free port for MASTER_PORT: {e}")))?;
    Ok(l.local_addr().map(|a| a.port()).unwrap_or(29500))
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

fn send(worker: &Worker, sig: i32) {
    if worker.status.is_none() {
        unsafe {
            libc::kill(worker.child.id() as libc::pid_t, sig);
        }
    }
}

/// Runs the workers to the end; returns the launcher's exit status: 0 when every worker
/// succeeded, else the first failure's status (or 128 + signal).
pub fn run(spec: &LaunchSpec) -> Result<i32> {
    if spec.nproc_per_node == 0 || spec.nnodes == 0 || spec.node_rank >= spec.nnodes {
        return Err(Error::Invalid(format!(
            "--nproc-per-node {} --nnodes {} --node-rank {}: need at least one process and \
             node, and a node rank below the node count",
            spec.nproc_per_node, spec.nnodes, spec.node_rank
        )));
    }
    let port = match spec.master_port {
        0 if spec.nnodes == 1 => free_port()?,
        0 => {
            return Err(Error::Invalid(
                "--master-port 0 (a free port) works on one node only: give every node the \
                 same port"
                    .into(),
            ))
        }
        p => p,
    };
    let world = spec.nnodes * spec.nproc_per_node;
    let pending = Arc::new(AtomicI32::new(0));
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::Invalid(format!("installing the signal handler: {e}")))?;
    let handle = signals.handle();
    let p = pending.clone();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            p.store(sig, Ordering::SeqCst);
        }
    });

    let mut workers = vec![];
    for local in 0..spec.nproc_per_node {
        let rank = spec.node_rank * spec.nproc_per_node + local;
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", spec.nproc_per_node.to_string())
            .env("GROUP_RANK", spec.node_rank.to_string())
            .env("MASTER_ADDR", &spec.master_addr)
            .env("MASTER_PORT", port.to_string())
            .process_group(0)
            .spawn();
        match child {
            Ok(child) => workers.push(Worker {
                rank,
                child,
                status: None,
            }),
            Err(e) => {
                for w in &workers {
                    send(w, SIGKILL);
                }
                return Err(Error::io(&spec.program, e));
            }
        }
    }
    eprintln!(
        "launch: {} worker(s) on this node (ranks {}-{} of {world}), rendezvous {}:{port}",
        spec.nproc_per_node,
        spec.node_rank * spec.nproc_per_node,
        (spec.node_rank + 1) * spec.nproc_per_node - 1,
        spec.master_addr
    );

    let mut failure: Option<(u64, std::process::ExitStatus)> = None;
    let mut stop_signal: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        let sig = pending.swap(0, Ordering::SeqCst);
        if sig != 0 {
            stop_signal.get_or_insert(sig);
            for w in &workers {
                send(w, sig);
            }
        }
        for w in workers.iter_mut().filter(|w| w.status.is_none()) {
            if let Ok(Some(status)) = w.child.try_wait() {
                w.status = Some(status);
                if !status.success() && failure.is_none() && stop_signal.is_none() {
                    eprintln!(
                        "launch: rank {} {}; stopping the other workers",
                        w.rank,
                        describe(status)
                    );
                    failure = Some((w.rank, status));
                }
            }
        }
        if workers.iter().all(|w| w.status.is_some()) {
            break;
        }
        if failure.is_some() && kill_at.is_none() {
            for w in &workers {
                send(w, SIGTERM);
            }
            kill_at = Some(Instant::now() + spec.grace);
        }
        if !killed && kill_at.is_some_and(|t| Instant::now() >= t) {
            for w in &workers {
                if w.status.is_none() {
                    eprintln!(
                        "launch: rank {} still running after {:?}: killing it",
                        w.rank, spec.grace
                    );
                }
                send(w, SIGKILL);
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.close();
    let _ = forwarder.join();

    if let Some((rank, status)) = failure {
        eprintln!("launch: failed: rank {rank} {}", describe(status));
        return Ok(status
            .code()
            .filter(|c| *c != 0)
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
    }
    let worst = workers
        .iter()
        .filter_map(|w| w.status)
        .find(|s| !s.success());
    Ok(match worst {
        None => 0,
        Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
    })
}
