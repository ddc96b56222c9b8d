//! The checkpoints committed under models/ work out of the box: `lcm eval niah` loads each
//! and finds the needle of every task it was trained on in real text (the sample Pile's
//! validation shard, tokenised here) on the CPU, at 1K and 4K tokens (64 and 256 times the
//! 16-token window).

mod data_util;

use std::path::Path;

#[test]
fn published_models_find_the_needle_on_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shard = data_util::sample_shard("val.jsonl.zst");
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("val");
    let lcm = |args: &[&str]| {
        let (ok, stdout, stderr) = data_util::lcm(args);
        assert!(ok, "lcm {args:?}\n{stdout}\n{stderr}");
        stdout
    };
    lcm(&[
        &data_util::preprocess_args(&shard, &prefix)[..],
        &["--workers", "2"],
    ]
    .concat());
    let cases = [
        ("drt-niah-c8", "passkey"),
        ("drt-niah-c8-sniah", "passkey"),
        ("drt-niah-c8-sniah", "s-niah"),
    ];
    for (name, task) in cases {
        let model = root.join("models").join(name);
        let out = dir.path().join(format!("{name}-{task}"));
        let table = lcm(&[
            "eval",
            "niah",
            "--checkpoint",
            model.to_str().unwrap(),
            "--task",
            task,
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
        assert_eq!(samples.len(), 12, "{name} {task}\n{table}");
        let hits = samples.iter().filter(|s| s["hit"] == true).count();
        assert_eq!(hits, 12, "{name} {task}: {hits} of 12 found:\n{table}");
    }
}
