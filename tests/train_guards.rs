//! `lcm pretrain` never loses a run: a fresh run refuses a folder holding another run, two
//! runs never share a folder, signals save and exit non-zero, a second signal quits without
//! a crash, a resumed run's metrics hold each step once, a corrupt newest checkpoint names
//! the intact one before it, and pointless requests say so instead of training.

mod run_util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lcm::lock::OutputLock;
use lcm::train::{checkpoint, train, TrainConfig, TrainOptions};
use run_util::{lcm, lcm_bin, metric, signal, stderr_of, tiny_config, wait_until, wait_within};
use serde_json::{json, Value};

/// The tiny DRT on random ids, a checkpoint every 2 steps.
fn config(run: &Path, steps: u64) -> Value {
    let mut v = tiny_config(run, steps, false);
    v["checkpoint"]["every"] = json!(2);
    v
}

fn cfg(run: &Path, steps: u64) -> TrainConfig {
    TrainConfig::from_json(config(run, steps)).unwrap()
}

fn config_file(dir: &Path, run: &Path, steps: u64) -> PathBuf {
    run_util::write_config(dir, "cfg", &config(run, steps))
}

fn metric_steps(run: &Path) -> Vec<u64> {
    metric(run, "step").into_iter().map(|s| s as u64).collect()
}

#[test]
fn a_fresh_run_refuses_a_folder_holding_another_run_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&cfg(&run, 2), &TrainOptions::default()).unwrap();
    let err = train(&cfg(&run, 4), &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds another run"), "{err}");
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    assert_eq!(
        metric_steps(&run),
        vec![1, 2],
        "the refused run wrote metrics"
    );

    let forced = TrainOptions {
        force: true,
        ..Default::default()
    };
    train(&cfg(&run, 4), &forced).unwrap();
    assert_eq!(
        metric_steps(&run),
        vec![1, 2, 3, 4],
        "two runs mixed in one file"
    );
    let kept: Vec<String> = checkpoint::list(&run)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, ["step-00000002", "step-00000004"]);
    let state = checkpoint::read_state(&run.join("step-00000002")).unwrap();
    assert_eq!(
        state.config.steps, 4,
        "step-2 of the old run survived --force"
    );
}

#[test]
fn two_runs_never_write_one_folder_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let held = OutputLock::acquire(&run.join(".lock"), "run folder").unwrap();
    let err = train(&cfg(&run, 2), &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use by process"), "{err}");
    assert!(!run.join("metrics.jsonl").exists());
    drop(held);
    train(&cfg(&run, 2), &TrainOptions::default()).unwrap();
}

#[test]
fn a_resumed_run_records_each_step_once_and_sweeps_a_crashed_save() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let stop = TrainOptions {
        stop_after: Some(4),
        ..Default::default()
    };
    train(&cfg(&run, 6), &stop).unwrap();
    // A crash after step 4's metrics line but before its checkpoint, mid-save of the next.
    std::fs::remove_dir_all(run.join("step-00000004")).unwrap();
    std::fs::create_dir_all(run.join(".tmp-step-00000004")).unwrap();
    std::fs::write(run.join(".tmp-step-00000004/model.safetensors"), b"half").unwrap();
    let resume = TrainOptions {
        resume: Some(run.clone()),
        ..Default::default()
    };
    let s = train(&cfg(&run, 6), &resume).unwrap();
    assert_eq!((s.step, s.steps_run), (6, 4));
    assert_eq!(metric_steps(&run), vec![1, 2, 3, 4, 5, 6]);
    assert!(!run.join(".tmp-step-00000004").exists());
}

#[test]
fn a_corrupt_newest_checkpoint_names_the_intact_one_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&cfg(&run, 4), &TrainOptions::default()).unwrap();
    let newest = run.join("step-00000004/model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 3]).unwrap();
    let resume = TrainOptions {
        resume: Some(run.clone()),
        force: false,
        ..Default::default()
    };
    let err = train(&cfg(&run, 6), &resume).unwrap_err().to_string();
    assert!(err.contains("corrupt or truncated"), "{err}");
    assert!(err.contains("step-00000002"), "{err}");
    assert!(
        !err.contains("Os {") && !err.contains("Some("),
        "Debug text: {err}"
    );
}

#[test]
fn resuming_a_finished_run_says_so_and_stop_after_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let file = config_file(dir.path(), &run, 2);
    let f = file.to_str().unwrap();
    assert!(lcm(&["pretrain", "--config", f]).status.success());
    let out = lcm(&["pretrain", "--config", f, "--resume", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already at step 2 of 2"), "{err}");
    assert!(!err.contains("NaN"), "{err}");

    let out = lcm(&["pretrain", "--config", f, "--force", "--stop-after", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--stop-after"), "{err}");
    assert_eq!(metric_steps(&run), vec![1, 2], "--stop-after 0 trained");
}

/// Starts a long CPU run and waits until it has logged a step.
fn start_long_run(dir: &Path) -> (std::process::Child, PathBuf) {
    let run = dir.join("run");
    let mut v = config(&run, 1_000_000);
    v["checkpoint"]["every"] = json!(1_000_000);
    let file = run_util::write_config(dir, "long", &v);
    let child = Command::new(lcm_bin())
        .args(["pretrain", "--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(120), "a logged step", || {
        run.join("metrics.jsonl").exists()
    });
    (child, run)
}

fn wait(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let status = wait_within(child, Duration::from_secs(60), "pretrain after the signal");
    (status, stderr_of(child))
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_143() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, run) = start_long_run(dir.path());
    signal(&child, libc::SIGTERM);
    let (status, err) = wait(&mut child);
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("SIGTERM"), "{err}");
    let ckpt = checkpoint::resolve(&run).unwrap();
    assert!(checkpoint::read_state(&ckpt).unwrap().step > 0);
}

#[test]
fn a_second_ctrl_c_quits_at_once_without_a_crash() {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, _) = start_long_run(dir.path());
        signal(&child, libc::SIGINT);
        std::thread::sleep(Duration::from_millis(5));
        signal(&child, libc::SIGINT);
        let (status, err) = wait(&mut child);
        assert_eq!(status.signal(), None, "killed by a signal: {err}");
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(!err.contains("INTERNAL ASSERT"), "{err}");
    }
}
