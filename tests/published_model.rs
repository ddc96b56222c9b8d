//! The checkpoint committed under models/ works out of the box: `lcm eval niah` loads it
//! and finds the passkey in real text (the sample Pile's validation shard, tokenised here)
//! on the CPU, at a length past the 16-token window and one 4x past that.

mod data_util;

use std::path::Path;
use std::process::Command;

#[test]
fn drt_niah_c8_finds_the_passkey_on_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models/drt-niah-c8");
    let shard = data_util::sample_shard("val.jsonl.zst");
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("val");
    let lcm = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lcm"))
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "lcm {args:?}\n{stdout}\n{stderr}");
        stdout
    };
    lcm(&[
        "preprocess",
        "pile",
        "--input",
        shard.to_str().unwrap(),
        "--output",
        prefix.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    let out = dir.path().join("niah");
    let table = lcm(&[
        "eval",
        "niah",
        "--checkpoint",
        model.to_str().unwrap(),
        "--len",
        "1K,4K",
        "--depths",
        "0,0.5,1",
        "--samples",
        "2",
        "--batch",
        "2",
        "--haystack",
        prefix.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let samples = results["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 12, "{table}");
    let hits = samples.iter().filter(|s| s["hit"] == true).count();
    assert_eq!(hits, 12, "{hits} of 12 passkeys found:\n{table}");
}
