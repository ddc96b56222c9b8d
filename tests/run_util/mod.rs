//! Helpers for the tests that run the `lcm` binary as a user would (training runs, launches,
//! signals): a tiny DRT config, running `lcm` and checking it succeeded, waiting for a child
//! with a bound, and the numbers a run leaves behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tch::Tensor;

/// The `lcm` binary under test: this build's, or `LCM_TEST_BIN` where the test executables
/// run apart from their build tree (`scripts/gpu-test.sh run` on a machine without cargo).
pub fn lcm_bin() -> std::ffi::OsString {
    std::env::var_os("LCM_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lcm").into())
}

/// A DRT small enough to train a step in well under a second on CPU, on random ids in
/// [10, 64), with passkey rows when `passkey`; checkpoints in `run`.
pub fn tiny_config(run: &Path, steps: u64, passkey: bool) -> Value {
    let mut v = json!({
        "model": {
            "arch": "drt", "vocab_size": 65, "d_model": 32, "n_heads": 2, "d_ff": 64, "window": 16,
            "drt": { "chunk_size": 7, "landmark_id": 64, "landmark_slot": "zeroed", "topk": 2,
                     "encoder_layers": 1, "decoder_layers": [1, 1] }
        },
        "data": { "random": { "lo": 10, "hi": 64 } },
        "optim": { "lr": 3e-3, "warmup_steps": 2 },
        "steps": steps, "batch_size": 2, "seq_len": 56, "device": "cpu", "seed": 7,
        "checkpoint": { "dir": run, "every": 0, "keep": 5 },
        "log": { "every": 1 }
    });
    if passkey {
        v["data"]["synthetic"] = json!({
            "rate": 0.5, "key_len": 2, "key_lo": 2, "key_hi": 10,
            "needle": [1, 1], "question": [0, 0], "min_gap": 20, "end_jitter": 0
        });
    }
    v
}

/// Writes `v` to `dir/NAME.json`.
pub fn write_config(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    p
}

pub fn lcm<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(lcm_bin()).args(args).output().unwrap()
}

/// Stdout then stderr of a run that must have succeeded.
pub fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lcm failed ({}):\n{err}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned() + &err
}

/// The launcher's arguments before a worker's: two ranks, any free port.
pub const LAUNCH2: [&str; 6] = [
    "launch",
    "--nproc-per-node",
    "2",
    "--master-port",
    "0",
    "--",
];

/// `lcm launch --nproc-per-node 2 --master-port 0 -- ARGS...`, which must succeed.
pub fn launch2<S: AsRef<str>>(args: &[S]) -> String {
    let mut all = LAUNCH2.to_vec();
    all.extend(args.iter().map(|a| a.as_ref()));
    ok(lcm(&all))
}

/// Waits for `child` at most `limit`; kills it and fails the test past that (a hang).
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child's whole stderr (it must have been piped).
pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

/// Polls until `done()` holds, failing the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A metrics.jsonl field of every line of run folder `run`.
pub fn metric(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// A checkpoint's weights, sorted by name.
pub fn weights(ckpt: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(ckpt.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Asserts that checkpoints `a` and `b` hold the same weights and optimizer state, bit for
/// bit (an uninterrupted run against a stopped and resumed one).
pub fn assert_same_checkpoint(a: &Path, b: &Path) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
    let ma = Tensor::read_safetensors(a.join("optim.safetensors")).unwrap();
    let mb: std::collections::HashMap<_, _> = Tensor::read_safetensors(b.join("optim.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    for (n, t) in &ma {
        assert!(t.equal(&mb[n]), "optimizer state {n} differs after resume");
    }
}

pub fn signal(child: &Child, sig: i32) {
    unsafe { libc::kill(child.id() as i32, sig) };
}
