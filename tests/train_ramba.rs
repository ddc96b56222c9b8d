//! `arch: ramba` end to end on CPU: `lcm pretrain` trains a tiny RAMba (its Mamba2 state
//! restarting every 32 tokens in training, as the reference's `segment_size`) and the loss
//! falls; the checkpoint serves `lcm eval ppl`, `lcm eval niah` and `lcm generate`, whose
//! greedy ids are the full forward's argmax; and k steps + resume + (n - k) steps gives
//! bit-identical weights and optimizer state to n steps.

mod run_util;

use std::path::Path;

use lcm::data::indexed::IndexedWriter;
use lcm::data::TokenDtype;
use lcm::eval::Engine;
use lcm::train::{train, TrainConfig, TrainOptions};
use run_util::{assert_same_checkpoint, lcm, metric, ok, weights, write_config};
use serde_json::{json, Value};
use tch::{Device, Tensor};

/// A tiny RAMba (vocabulary 65, chunks of 8, one Mamba2 block below, one retrieval group of
/// two [HSA layer, Mamba2 block] above) on random ids in [10, 64) with passkey rows.
fn config(run: &Path, steps: u64) -> Value {
    json!({
        "model": {
            "arch": "ramba", "vocab_size": 65, "d_model": 32, "n_heads": 2, "n_kv_heads": 1,
            "ramba": { "chunk_size": 8, "topk": 2, "lower_layers": 1, "upper_layers": 2,
                       "mamba_per_hsa": 1, "train_segment": 32 },
            "mamba2": { "d_state": 8, "headdim": 8, "chunk_size": 16 }
        },
        "data": {
            "random": { "lo": 10, "hi": 64 },
            "synthetic": { "rate": 0.5, "key_len": 2, "key_lo": 2, "key_hi": 10,
                           "needle": [1, 1], "question": [0, 0], "min_gap": 20,
                           "end_jitter": 0 }
        },
        "optim": { "lr": 1e-2, "warmup_steps": 2 },
        "steps": steps, "batch_size": 4, "seq_len": 64, "device": "cpu", "seed": 7,
        "checkpoint": { "dir": run, "every": 0, "keep": 2 },
        "log": { "every": 1, "eval_every": 3, "eval_batches": 1 }
    })
}

/// A corpus at `prefix` of ids in [10, 64).
fn corpus(prefix: &Path) {
    let mut w = IndexedWriter::create(prefix, TokenDtype::Uint16).unwrap();
    let ids: Vec<u32> = (0..3000u32).map(|i| 10 + (i * 7 + i / 13) % 54).collect();
    w.add_document(&ids).unwrap();
    w.finish().unwrap();
}

#[test]
fn lcm_pretrain_trains_ramba_and_its_checkpoint_evaluates_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let file = write_config(dir.path(), "ramba", &config(&run, 30));
    ok(lcm(&["pretrain", "--config", file.to_str().unwrap()]));
    let loss = metric(&run, "loss");
    assert_eq!(loss.len(), 30);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&loss[..3]), mean(&loss[25..]));
    assert!(
        first > 4.0 && last < first - 0.1,
        "loss {first:.3} -> {last:.3}: {loss:?}"
    );
    let r = run.to_str().unwrap();

    let prefix = dir.path().join("corpus");
    corpus(&prefix);
    let cpu = ["--device", "cpu", "--quiet"];
    let args = ["eval", "ppl", "--checkpoint", r, "--len", "64,1K"];
    let out = ok(lcm(&[
        &args[..],
        &cpu,
        &["--corpus", prefix.to_str().unwrap(), "--samples", "2"],
    ]
    .concat()));
    assert!(out.contains("perplexity") && out.contains("1K"), "{out}");

    let results = dir.path().join("niah");
    let args = ["eval", "niah", "--checkpoint", r, "--len", "256,1K"];
    let niah = [
        "--haystack",
        "random",
        "--depths",
        "0,1",
        "--samples",
        "2",
        "--segment",
        "128",
        "--out",
        results.to_str().unwrap(),
    ];
    ok(lcm(&[&args[..], &cpu, &niah].concat()));
    let report: Value =
        serde_json::from_slice(&std::fs::read(results.join("results.json")).unwrap()).unwrap();
    assert_eq!(report["lengths"], json!([256, 1024]), "{report}");
    assert_eq!(report["cells"].as_array().unwrap().len(), 4, "{report}");

    // 21 prompt ids: two chunks of 8 and 5 pending; 12 new ones cross two boundaries.
    let prompt: Vec<i64> = (0..21).map(|i| 10 + (i * 13) % 54).collect();
    let text: Vec<String> = prompt.iter().map(i64::to_string).collect();
    let args = ["generate", "--checkpoint", r, "--prompt", &text.join(" ")];
    let gen = ["--ids", "--temperature", "0", "--max-new-tokens", "12"];
    let out = ok(lcm(&[&args[..], &gen, &["--device", "cpu"]].concat()));
    let ids: Vec<i64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(ids.len(), 12, "{out}");
    let engine = Engine::load(&run, Device::Cpu).unwrap();
    let mut all = prompt.clone();
    all.extend(&ids);
    let padded = all.len().div_ceil(8) * 8;
    let mut x = all.clone();
    x.resize(padded, 10);
    let x = Tensor::from_slice(&x).view([1, -1]);
    let logits = tch::no_grad(|| engine.model.forward(&x, false)).get(0);
    for (i, &id) in ids.iter().enumerate() {
        let pos = (prompt.len() + i - 1) as i64;
        let want = logits.get(pos).argmax(0, false).int64_value(&[]);
        assert_eq!(id, want, "token {i} is not the full forward's argmax");
    }
}

#[test]
fn ramba_resume_is_exact_on_cpu() {
    // One intra-op thread: bit-identity holds for a fixed thread count (tests/train.rs).
    tch::set_num_threads(1);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = |dir: &Path| TrainConfig::from_json(config(dir, 6)).unwrap();
    let full = train(&cfg(a.path()), &TrainOptions::default()).unwrap();
    let cb = cfg(b.path());
    let stop = TrainOptions {
        stop_after: Some(3),
        ..Default::default()
    };
    assert_eq!(train(&cb, &stop).unwrap().step, 3);
    let resume = TrainOptions {
        resume: Some(b.path().into()),
        ..Default::default()
    };
    let rest = train(&cb, &resume).unwrap();
    assert_eq!(rest.step, 6);
    let (pa, pb) = (full.checkpoint.unwrap(), rest.checkpoint.unwrap());
    assert!(
        weights(&pa)
            .iter()
            .any(|(n, _)| n == "groups.0.layers.0.mixer.A_log"),
        "a RAMba checkpoint"
    );
    assert_same_checkpoint(&pa, &pb);
}
