//! Data-parallel training on CPU: Gloo process groups of 2 ranks started by `lcm launch`
//! (or by hand with the torchrun variables), on a tiny DRT over random ids with passkey rows.
//!
//! Equivalence: k ranks x batch b read exactly the samples (and draw exactly the noise) of
//! one rank accumulating k micro-batches of b, and their averaged gradients differ only in
//! the order of an fp32 sum, so losses and weights agree to 1e-6. Against one rank with a
//! batch of k*b (noise off: one rank draws one noise tensor for the whole batch; plain rows,
//! every target scored) the loss is a mean of k means instead of one mean over equal-sized
//! rows, the same number summed in another order: 1e-5.

mod run_util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use run_util::{
    launch2, lcm, lcm_bin, metric, ok, stderr_of, wait_until, wait_within, weights, write_config,
    LAUNCH2,
};
use serde_json::{json, Value};

fn config(dir: &Path, run: &str, steps: u64, gumbel: bool) -> Value {
    let mut v = run_util::tiny_config(&dir.join(run), steps, true);
    v["model"]["drt"]["gumbel"] = json!(gumbel);
    v["dist"] = json!({ "timeout_s": 30 });
    v
}

/// `pretrain --config CFG ARGS...`
fn pretrain_args<'a>(cfg: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["pretrain", "--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    all
}

/// Writes config `v` as `d/NAME.json` and trains it on two ranks with `args`: the output.
fn train2(d: &Path, name: &str, v: &Value, args: &[&str]) -> String {
    launch2(&pretrain_args(&write_config(d, name, v), args))
}

/// The same in one process.
fn pretrain(d: &Path, name: &str, v: &Value, args: &[&str]) -> String {
    ok(lcm(&pretrain_args(&write_config(d, name, v), args)))
}

/// Trains config `two` (run folder `d/two`) on two ranks and the same with `to_one` applied
/// (run folder `d/one`) in one process, and asserts that the runs match (`assert_same_run`
/// within `tol` at the last step); returns the two-rank run's output.
fn two_ranks_vs_one(
    d: &Path,
    two: Value,
    to_one: impl FnOnce(&mut Value),
    tol: f64,
    what: &str,
) -> String {
    let mut one = two.clone();
    one["checkpoint"]["dir"] = json!(d.join("one"));
    to_one(&mut one);
    let out = train2(d, "two", &two, &[]);
    pretrain(d, "one", &one, &[]);
    let steps = two["steps"].as_u64().unwrap();
    assert_same_run(d, "two", "one", steps, tol, what);
    out
}

fn losses(run: &Path) -> Vec<f64> {
    metric(run, "loss")
}

/// The largest difference between the weights of two checkpoints.
fn weight_gap(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// Runs `a` and `b` in `d` logged the same losses and hold the same weights at `step`, both
/// within `tol`; `what` names the comparison.
fn assert_same_run(d: &Path, a: &str, b: &str, step: u64, tol: f64, what: &str) {
    assert_close(&losses(&d.join(a)), &losses(&d.join(b)), tol);
    let ckpt = |run: &str| d.join(format!("{run}/step-{step:08}"));
    let gap = weight_gap(&ckpt(a), &ckpt(b));
    assert!(gap <= tol, "{what}: weights differ by {gap}");
}

fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= tol,
            "losses differ by more than {tol}: {a:?} vs {b:?}"
        );
    }
}

#[test]
fn two_ranks_equal_one_rank_accumulating_two_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // fp32: the same numbers summed in another order.
    let err = two_ranks_vs_one(
        d,
        config(d, "two", 5, true),
        |one| one["grad_accum"] = json!(2),
        1e-6,
        "2 ranks vs 2 micro-batches",
    );
    assert!(err.contains("data parallel: 2 ranks (gloo)"), "{err}");
}

#[test]
fn two_ranks_equal_one_rank_with_twice_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Plain rows (no passkey rows, whose masked targets make rows' scored counts differ).
    let mut two = config(d, "two", 4, false);
    two["data"]["synthetic"] = Value::Null;
    // fp32: a mean of two equal-sized means against one mean.
    let twice = |one: &mut Value| one["batch_size"] = json!(4);
    two_ranks_vs_one(d, two, twice, 1e-5, "2 ranks vs twice the batch");
}

#[test]
fn resume_on_two_ranks_is_bit_exact_and_on_one_continues_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train2(d, "whole", &config(d, "whole", 6, true), &[]);

    let split = config(d, "split", 6, true);
    train2(d, "split", &split, &["--stop-after", "3"]);
    train2(
        d,
        "split",
        &split,
        &["--resume", d.join("split").to_str().unwrap()],
    );
    assert_same_run(
        d,
        "whole",
        "split",
        6,
        0.0,
        "2 -> 2 ranks resume (bit-exact)",
    );

    // 2 ranks, then one rank with the same global batch (2 micro-batches of 2).
    let mut v = config(d, "onward", 6, true);
    train2(d, "onward", &v, &["--stop-after", "3"]);
    v["grad_accum"] = json!(2);
    let err = pretrain(
        d,
        "onward",
        &v,
        &["--resume", d.join("onward").to_str().unwrap()],
    );
    assert!(err.contains("sample indices are global"), "{err}");
    assert!(err.contains("continues at sample 12"), "{err}");
    assert_same_run(d, "whole", "onward", 6, 1e-6, "2 -> 1 rank resume");
}

/// Sets `patch`'s leaves in `v`, objects merged key by key.
fn merge(v: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            for (k, p) in fields {
                merge(&mut v[k.as_str()], p);
            }
        }
        p => *v = p,
    }
}

/// The config of run `run` in `d` (`steps` steps, passkey rows, Gumbel noise) with
/// `patch` merged in, written as `d/run.json`: its path.
fn run_config(d: &Path, steps: u64, patch: Value) -> PathBuf {
    let mut v = config(d, "run", steps, true);
    merge(&mut v, patch);
    write_config(d, "run", &v)
}

/// Every tensor of `file` in checkpoint `ckpt`, by name.
fn tensors(ckpt: &Path, file: &str) -> Vec<(String, tch::Tensor)> {
    let mut all = tch::Tensor::read_safetensors(ckpt.join(file)).unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn a_sharded_optimizer_trains_saves_and_resumes_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train2(d, "plain", &config(d, "plain", 6, true), &[]);
    // Sharded, saved at step 3 (the slices gathered) and resumed (the whole state sliced).
    let mut v = config(d, "sharded", 6, true);
    v["dist"]["shard_optimizer"] = json!(true);
    train2(d, "sharded", &v, &["--stop-after", "3"]);
    let run = d.join("sharded");
    let err = train2(d, "sharded", &v, &["--resume", run.to_str().unwrap()]);
    assert!(
        err.contains("optimizer state sharded across ranks"),
        "{err}"
    );
    assert_eq!(losses(&d.join("plain")), losses(&d.join("sharded")));
    for file in ["model.safetensors", "optim.safetensors"] {
        let want = tensors(&d.join("plain/step-00000006"), file);
        let got = tensors(&d.join("sharded/step-00000006"), file);
        assert_eq!(want.len(), got.len(), "{file}");
        for ((n, a), (m, b)) in want.iter().zip(&got) {
            assert_eq!(n, m, "{file}");
            assert!(
                a.equal(b),
                "{file}: `{n}` differs between sharded and unsharded runs"
            );
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A worker started by hand, as torchrun or Slurm would.
fn worker(cfg: &Path, rank: u64, world: u64, port: u16) -> Child {
    Command::new(lcm_bin())
        .args(["pretrain", "--config", cfg.to_str().unwrap()])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_checkpoint(run: &Path, limit: Duration) {
    wait_until(limit, "a checkpoint", || {
        !lcm::train::checkpoint::list(run).unwrap().is_empty()
    });
}

#[test]
fn a_killed_rank_makes_the_other_fail_within_the_timeout_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let patch = json!({ "checkpoint": { "every": 2 }, "dist": { "timeout_s": 20 } });
    let cfg = run_config(d, 100_000, patch);
    let port = free_port();
    let mut r0 = worker(&cfg, 0, 2, port);
    let mut r1 = worker(&cfg, 1, 2, port);
    wait_for_checkpoint(&d.join("run"), Duration::from_secs(120));
    r1.kill().unwrap();
    r1.wait().unwrap();
    let status = wait_within(&mut r0, Duration::from_secs(60), "rank 0 after rank 1 died");
    let err = stderr_of(&mut r0);
    assert!(
        !status.success(),
        "rank 0 exited 0 after its peer died:\n{err}"
    );
    assert!(err.contains("error (rank 0)"), "{err}");
    // The newest complete checkpoint still loads.
    let newest = lcm::train::checkpoint::resolve(&d.join("run")).unwrap();
    lcm::train::checkpoint::read_state(&newest).unwrap();
    assert!(!weights(&newest).is_empty());
}

#[test]
fn a_rank_that_cannot_reach_the_rendezvous_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = run_config(d, 2, json!({ "dist": { "timeout_s": 3 } }));
    let port = free_port();
    let mut r1 = worker(&cfg, 1, 2, port);
    let status = wait_within(&mut r1, Duration::from_secs(60), "a rank with no master");
    let err = stderr_of(&mut r1);
    assert!(!status.success());
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("rank 1"), "{err}");
}

#[test]
fn launch_stops_every_worker_and_names_the_rank_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let out = lcm(&[&LAUNCH2[..], &pretrain_args(&missing, &[])].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("launch: failed: rank"), "{err}");
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn ctrl_c_on_the_launcher_stops_every_worker_and_rank_0_saves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = run_config(d, 100_000, json!({ "checkpoint": { "every": 1000 } }));
    let mut launcher: Child = Command::new(lcm_bin())
        .args(LAUNCH2)
        .args(pretrain_args(&cfg, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Training has started once rank 0 has logged a step.
    let metrics = d.join("run/metrics.jsonl");
    wait_until(Duration::from_secs(120), "a logged step", || {
        std::fs::read_to_string(&metrics).is_ok_and(|s| s.lines().count() >= 2)
    });
    run_util::signal(&launcher, libc::SIGINT);
    let status = wait_within(
        &mut launcher,
        Duration::from_secs(60),
        "the launcher after Ctrl-C",
    );
    let err = stderr_of(&mut launcher);
    assert_eq!(status.code(), Some(130), "{err}");
    let ckpt = lcm::train::checkpoint::resolve(&d.join("run")).unwrap();
    let state = lcm::train::checkpoint::read_state(&ckpt).unwrap();
    assert!(state.step > 0 && state.step < 1000, "{}", state.step);
    assert_eq!(state.world, 2);
}
