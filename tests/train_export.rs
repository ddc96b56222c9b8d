//! `lcm export`: a checkpoint's weights as shards under a size limit (large tensors split
//! by rows), loaded back whole by `checkpoint::load`, the inference engine and `--init`.

use std::path::Path;

use lcm::eval::Engine;
use lcm::train::{checkpoint, train, TrainConfig, TrainOptions};
use serde_json::json;
use tch::{Device, Kind, Tensor};

fn tiny(dir: &Path, steps: u64, seed: u64, lr: f64) -> TrainConfig {
    TrainConfig::from_json(json!({
        "model": {
            "arch": "drt", "vocab_size": 300, "d_model": 32, "n_heads": 2, "d_ff": 64, "window": 16,
            "drt": { "chunk_size": 8, "landmark_id": 299, "topk": 2,
                     "encoder_layers": 1, "decoder_layers": [1, 1] }
        },
        "data": { "random": { "lo": 10, "hi": 299 } },
        "optim": { "lr": lr, "warmup_steps": 1 },
        "steps": steps, "batch_size": 2, "seq_len": 48, "device": "cpu", "seed": seed,
        "checkpoint": { "dir": dir, "every": 0, "keep": 2 },
        "log": { "every": 1 }
    }))
    .unwrap()
}

fn sorted(mut w: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn shards_respect_the_limit_and_load_back_whole() {
    let run = tempfile::tempdir().unwrap();
    let ckpt = train(&tiny(run.path(), 2, 3, 3e-3), &TrainOptions::default())
        .unwrap()
        .checkpoint
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    // The embedding (300 x 32 fp32 = 37.5 KiB) is larger than a 16 KiB shard: split by rows.
    let limit = 16 << 10;
    let files = checkpoint::export(&ckpt, &dir, Kind::Float, limit).unwrap();
    assert!(files.len() > 2, "{} shards", files.len());
    for f in &files {
        // A shard is its tensors plus a small JSON header.
        let size = std::fs::metadata(f).unwrap().len() as usize;
        assert!(size <= limit + 4096, "{}: {size} bytes", f.display());
    }
    let (_, a) = checkpoint::read_weights(&ckpt).unwrap();
    let (_, b) = checkpoint::read_weights(&dir).unwrap();
    let (a, b) = (sorted(a), sorted(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after export");
    }

    // The engine gives the same logits from either folder.
    let tokens = Tensor::randint_low(10, 299, [1, 48], (Kind::Int64, Device::Cpu));
    let logits = |p: &Path| {
        let e = Engine::load(p, Device::Cpu).unwrap();
        e.model.forward(&tokens, false)
    };
    assert!(logits(&ckpt).equal(&logits(&dir)));

    // bf16: every weight is the original rounded to bf16.
    let half = out.path().join("half");
    checkpoint::export(&ckpt, &half, Kind::BFloat16, limit).unwrap();
    let (_, h) = checkpoint::read_weights(&half).unwrap();
    for ((n, t), (_, o)) in sorted(h).iter().zip(&a) {
        assert_eq!(t.kind(), Kind::BFloat16, "{n}");
        assert!(t.equal(&o.to_kind(Kind::BFloat16)), "{n}");
    }

    // A missing shard is named, not silently skipped.
    std::fs::remove_file(&files[1]).unwrap();
    let err = checkpoint::read_weights(&dir).unwrap_err().to_string();
    assert!(err.contains("shard"), "{err}");
}

#[test]
fn init_starts_a_new_run_from_exported_weights() {
    let run = tempfile::tempdir().unwrap();
    let ckpt = train(&tiny(run.path(), 3, 3, 3e-3), &TrainOptions::default())
        .unwrap()
        .checkpoint
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    checkpoint::export(&ckpt, &dir, Kind::Float, 1 << 20).unwrap();

    // A fresh run stopped before its first step keeps the weights it started from.
    let next = tempfile::tempdir().unwrap();
    // Another seed (another random init) and a small lr, so that one step stays near where
    // it starts.
    let cfg = tiny(next.path(), 5, 4, 1e-4);
    let first = train(
        &cfg,
        &TrainOptions {
            init: Some(dir.clone()),
            stop_after: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(first.step, 1, "--init starts at step 0");
    let scratch = tempfile::tempdir().unwrap();
    let cold = train(
        &tiny(scratch.path(), 5, 4, 1e-4),
        &TrainOptions {
            stop_after: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    // After one step from the exported weights the model is near them, and far from where
    // one step from the random init lands.
    let (_, base) = checkpoint::read_weights(&dir).unwrap();
    let (_, warm) = checkpoint::read_weights(&first.checkpoint.unwrap()).unwrap();
    let (_, fresh) = checkpoint::read_weights(&cold.checkpoint.unwrap()).unwrap();
    let (base, warm, fresh) = (sorted(base), sorted(warm), sorted(fresh));
    let dist = |x: &[(String, Tensor)], y: &[(String, Tensor)]| -> f64 {
        x.iter()
            .zip(y)
            .map(|((_, a), (_, b))| (a - b).square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt()
    };
    assert!(
        dist(&warm, &base) * 10.0 < dist(&fresh, &base),
        "warm {} fresh {}",
        dist(&warm, &base),
        dist(&fresh, &base)
    );
}
