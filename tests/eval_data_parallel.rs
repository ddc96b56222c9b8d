//! `lcm eval niah` and `lcm eval ppl` under a launch of 2 ranks (Gloo, CPU): each rank runs
//! its share of the samples, rank 0 writes the merged result, and it equals a one-process
//! run with the same seed, sample for sample.

use std::path::Path;
use std::process::{Command, Output};

use lcm::data::indexed::IndexedWriter;
use lcm::data::TokenDtype;
use serde_json::{json, Value};

const LCM: &str = env!("CARGO_BIN_EXE_lcm");

fn lcm(args: &[&str]) -> Output {
    Command::new(LCM).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lcm failed ({}):\n{err}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned() + &err
}

/// A tiny DRT trained 2 steps on random ids with passkey rows.
fn checkpoint(dir: &Path) -> String {
    let run = dir.join("run");
    let cfg = json!({
        "model": {
            "arch": "drt", "vocab_size": 65, "d_model": 32, "n_heads": 2, "d_ff": 64, "window": 16,
            "drt": { "chunk_size": 7, "landmark_id": 64, "landmark_slot": "zeroed", "topk": 2,
                     "encoder_layers": 1, "decoder_layers": [1, 1] }
        },
        "data": {
            "random": { "lo": 10, "hi": 64 },
            "synthetic": { "rate": 0.5, "key_len": 2, "key_lo": 2, "key_hi": 10,
                           "needle": [1, 1], "question": [0, 0], "min_gap": 20 }
        },
        "steps": 2, "batch_size": 2, "seq_len": 56, "device": "cpu", "seed": 5,
        "checkpoint": { "dir": run, "every": 0, "keep": 1 }
    });
    let file = dir.join("cfg.json");
    std::fs::write(&file, serde_json::to_vec(&cfg).unwrap()).unwrap();
    ok(lcm(&["pretrain", "--config", file.to_str().unwrap()]));
    run.to_str().unwrap().to_string()
}

fn launch2<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "launch",
        "--nproc-per-node",
        "2",
        "--master-port",
        "0",
        "--",
    ];
    all.extend_from_slice(args);
    all
}

fn samples(out: &Path) -> Vec<Value> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            // Timings differ between runs; everything else must not.
            json!([
                s["length"],
                s["depth"],
                s["sample"],
                s["seed"],
                s["fact_position"],
                s["answer"],
                s["prediction"],
                s["hit"]
            ])
        })
        .collect()
}

#[test]
fn niah_on_two_ranks_equals_one_process_sample_for_sample() {
    let dir = tempfile::tempdir().unwrap();
    let run = checkpoint(dir.path());
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    let grid = |out: &Path| {
        vec![
            "eval".to_string(),
            "niah".into(),
            "--checkpoint".into(),
            run.clone(),
            "--len".into(),
            "112,224".into(),
            "--depths".into(),
            "0,1".into(),
            "--samples".into(),
            "3".into(),
            "--batch".into(),
            "2".into(),
            "--device".into(),
            "cpu".into(),
            "--quiet".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let g1 = grid(&one);
    ok(lcm(&g1.iter().map(String::as_str).collect::<Vec<_>>()));
    let g2 = grid(&two);
    let text = ok(lcm(&launch2(
        &g2.iter().map(String::as_str).collect::<Vec<_>>(),
    )));
    assert!(
        text.contains("2 ranks: the grid's samples merged on rank 0"),
        "{text}"
    );
    let (a, b) = (samples(&one), samples(&two));
    assert_eq!(a.len(), 2 * 2 * 3);
    assert_eq!(a, b);
}

#[test]
fn ppl_on_two_ranks_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let run = checkpoint(dir.path());
    let prefix = dir.path().join("text");
    let mut w = IndexedWriter::create(&prefix, TokenDtype::Uint16).unwrap();
    for d in 0..20u32 {
        w.add_document(&(0..50).map(|i| 10 + (i * 7 + d) % 50).collect::<Vec<u32>>())
            .unwrap();
    }
    w.finish().unwrap();
    let json1 = dir.path().join("one.json");
    let json2 = dir.path().join("two.json");
    let args = |json: &Path| {
        vec![
            "eval".to_string(),
            "ppl".into(),
            "--checkpoint".into(),
            run.clone(),
            "--corpus".into(),
            prefix.to_str().unwrap().into(),
            "--len".into(),
            "112,224".into(),
            "--samples".into(),
            "5".into(),
            "--device".into(),
            "cpu".into(),
            "--quiet".into(),
            "--json".into(),
            json.to_str().unwrap().into(),
        ]
    };
    let a1 = args(&json1);
    ok(lcm(&a1.iter().map(String::as_str).collect::<Vec<_>>()));
    let a2 = args(&json2);
    ok(lcm(&launch2(
        &a2.iter().map(String::as_str).collect::<Vec<_>>(),
    )));
    let rows =
        |p: &Path| -> Vec<Value> { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let (r1, r2) = (rows(&json1), rows(&json2));
    assert_eq!(r1.len(), 2);
    for (x, y) in r1.iter().zip(&r2) {
        assert_eq!(x["samples"], y["samples"]);
        assert_eq!(x["tokens"], y["tokens"]);
        // The same per-window sums, added in another order: fp64.
        let (lx, ly) = (
            x["log_loss"].as_f64().unwrap(),
            y["log_loss"].as_f64().unwrap(),
        );
        assert!((lx - ly).abs() <= 1e-9, "{lx} vs {ly}");
    }
}
