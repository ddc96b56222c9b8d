//! `lcm pretrain` never loses a run: a fresh run refuses a folder holding another run, two
//! runs never share a folder, signals save and exit non-zero, a second signal quits without
//! a crash, a resumed run's metrics hold each step once, a corrupt newest checkpoint names
//! the intact one before it, and pointless requests say so instead of training.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lcm::lock::OutputLock;
use lcm::train::{checkpoint, train, TrainConfig, TrainOptions};
use serde_json::{json, Value};

const LCM: &str = env!("CARGO_BIN_EXE_lcm");

fn config(run: &Path, steps: u64) -> Value {
    json!({
        "model": {
            "arch": "drt", "vocab_size": 65, "d_model": 32, "n_heads": 2, "d_ff": 64, "window": 16,
            "drt": { "chunk_size": 7, "landmark_id": 64, "landmark_slot": "zeroed", "topk": 2,
                     "encoder_layers": 1, "decoder_layers": [1, 1] }
        },
        "data": { "random": { "lo": 10, "hi": 64 } },
        "optim": { "lr": 3e-3, "warmup_steps": 1 },
        "steps": steps, "batch_size": 2, "seq_len": 56, "device": "cpu", "seed": 3,
        "checkpoint": { "dir": run, "every": 2, "keep": 5 },
        "log": { "every": 1 }
    })
}

fn cfg(run: &Path, steps: u64) -> TrainConfig {
    TrainConfig::from_json(config(run, steps)).unwrap()
}

fn config_file(dir: &Path, run: &Path, steps: u64) -> PathBuf {
    let p = dir.join("cfg.json");
    std::fs::write(&p, serde_json::to_vec(&config(run, steps)).unwrap()).unwrap();
    p
}

fn lcm(args: &[&str]) -> Output {
    Command::new(LCM).args(args).output().unwrap()
}

fn metric_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
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
    let file = dir.join("long.json");
    std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
    let child = Command::new(LCM)
        .args(["pretrain", "--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !run.join("metrics.jsonl").exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "no step logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, run)
}

fn wait(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("pretrain did not stop within 60 s of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_143() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, run) = start_long_run(dir.path());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(5));
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let (status, err) = wait(&mut child);
        assert_eq!(status.signal(), None, "killed by a signal: {err}");
        assert_eq!(status.code(), Some(130), "{err}");
        assert!(!err.contains("INTERNAL ASSERT"), "{err}");
    }
}
