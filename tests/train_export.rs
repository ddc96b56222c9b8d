//! `lcm export`: a checkpoint's weights as safetensors shards of whole tensors with their
//! index (HF transformers' `model.safetensors.index.json`), or with `--split-rows` under a
//! size limit (large tensors split by rows), loaded back whole by `checkpoint::load`, the
//! inference engine and `--init`.

mod data_util;

use std::path::{Path, PathBuf};

use data_util::lcm;

use lcm::eval::Engine;
use lcm::train::export::{export, Naming, Options};
use lcm::train::weights::{read_weights, weight_files, INDEX};
use lcm::train::{train, TrainConfig, TrainOptions};
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

/// The checkpoint a tiny run of `steps` steps (seed `seed`, lr 3e-3) leaves in `dir`.
fn trained(dir: &Path, steps: u64, seed: u64) -> PathBuf {
    train(&tiny(dir, steps, seed, 3e-3), &TrainOptions::default())
        .unwrap()
        .checkpoint
        .unwrap()
}

/// Export options: `kind`, shards of `shard_bytes`, row blocks with `split_rows`.
fn opts(kind: Kind, shard_bytes: usize, split_rows: bool, force: bool) -> Options {
    Options {
        kind,
        shard_bytes,
        split_rows,
        force,
        names: Naming::Lcm,
    }
}

/// Asserts that the folders `a` and `b` hold the same weights, name for name.
fn assert_same_weights(a: &Path, b: &Path) {
    let (_, a) = read_weights(a).unwrap();
    let (_, b) = read_weights(b).unwrap();
    let (a, b) = (sorted(a), sorted(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after export");
    }
}

/// Loading `dir` with `shard` removed fails naming a shard (it is not silently skipped).
fn assert_missing_shard_is_named(dir: &Path, shard: &Path) {
    std::fs::remove_file(shard).unwrap();
    let err = read_weights(dir).unwrap_err().to_string();
    assert!(err.contains("shard"), "{err}");
}

fn sorted(mut w: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// The shard size of the sharding tests: 16 KiB.
const LIMIT: usize = 16 << 10;

/// A tiny run of `steps` steps (seed `seed`) in a fresh temporary folder: the folder (kept
/// while it lives) and the checkpoint.
fn trained_in_temp(steps: u64, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let run = tempfile::tempdir().unwrap();
    let ckpt = trained(run.path(), steps, seed);
    (run, ckpt)
}

/// `export` of `ckpt` to folder `model` in a fresh temporary folder: the temporary folder
/// (kept while it lives), `model`, and the files written.
fn export_in_temp(ckpt: &Path, opts: &Options) -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    let files = export(ckpt, &dir, opts).unwrap();
    (out, dir, files)
}

#[test]
fn shards_hold_whole_tensors_and_an_index() {
    let (_run, ckpt) = trained_in_temp(2, 3);
    // The embedding (300 x 32 fp32 = 37.5 KiB) is larger than a 16 KiB shard: a shard of
    // its own, whole.
    let (out, dir, files) = export_in_temp(&ckpt, &opts(Kind::Float, LIMIT, false, false));
    let (index, shards) = files.split_last().unwrap();
    assert_eq!(index.file_name().unwrap().to_str().unwrap(), INDEX);
    assert!(shards.len() > 2, "{} shards", shards.len());
    let (_, a) = read_weights(&ckpt).unwrap();
    let a = sorted(a);

    // The index: every tensor by its own name to the shard that holds it, and the bytes of
    // all of them, as HF transformers reads it.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    let map = json["weight_map"].as_object().unwrap();
    let names: Vec<&String> = map.keys().collect();
    assert_eq!(names, a.iter().map(|(n, _)| n).collect::<Vec<_>>());
    let total: usize = a.iter().map(|(_, t)| t.numel() * 4).sum();
    assert_eq!(json["metadata"]["total_size"].as_u64(), Some(total as u64));
    for f in shards {
        let file = f.file_name().unwrap().to_str().unwrap();
        let held = Tensor::read_safetensors(f).unwrap();
        let size = std::fs::metadata(f).unwrap().len() as usize;
        // A shard is its tensors plus a small JSON header; one over the limit is one tensor.
        assert!(
            size <= LIMIT + 4096 || held.len() == 1,
            "{file}: {size} bytes"
        );
        for (name, t) in &held {
            assert_eq!(map[name.as_str()], file, "{name}");
            let (_, want) = a.iter().find(|(n, _)| n == name).unwrap();
            assert!(t.equal(want), "{name} differs in {file}");
        }
    }
    assert_same_weights(&ckpt, &dir);

    // The engine gives the same logits from either folder.
    let tokens = Tensor::randint_low(10, 299, [1, 48], (Kind::Int64, Device::Cpu));
    let logits = |p: &Path| {
        let e = Engine::load(p, Device::Cpu).unwrap();
        e.model.forward(&tokens, false)
    };
    assert!(logits(&ckpt).equal(&logits(&dir)));
    // The weights' hash (what `lcm eval merge` compares) does not depend on the sharding;
    // other weights (bf16 below, another run) have another.
    let hash = |p: &Path| {
        Engine::load(p, Device::Cpu)
            .unwrap()
            .weights_sha256
            .unwrap()
    };
    assert_eq!(hash(&ckpt), hash(&dir));

    // bf16: every weight is the original rounded to bf16.
    let half = out.path().join("half");
    export(&ckpt, &half, &opts(Kind::BFloat16, LIMIT, false, false)).unwrap();
    assert_ne!(hash(&half), hash(&ckpt));
    let (_, h) = read_weights(&half).unwrap();
    for ((n, t), (_, o)) in sorted(h).iter().zip(&a) {
        assert_eq!(t.kind(), Kind::BFloat16, "{n}");
        assert!(t.equal(&o.to_kind(Kind::BFloat16)), "{n}");
    }

    // A shard the index names is missing: named, not silently skipped.
    assert_missing_shard_is_named(&dir, &shards[1]);
}

#[test]
fn split_rows_keeps_every_shard_under_the_limit_and_loads_back_whole() {
    let (_run, ckpt) = trained_in_temp(2, 3);
    let (_out, dir, files) = export_in_temp(&ckpt, &opts(Kind::Float, LIMIT, true, false));
    let (_, shards) = files.split_last().unwrap();
    assert!(shards.len() > 2, "{} shards", shards.len());
    for f in shards {
        // A shard is its tensors plus a small JSON header.
        let size = std::fs::metadata(f).unwrap().len() as usize;
        assert!(size <= LIMIT + 4096, "{}: {size} bytes", f.display());
    }
    assert_same_weights(&ckpt, &dir);
    // Without the index (the published models in models/): the shards present, in order.
    std::fs::remove_file(dir.join(INDEX)).unwrap();
    assert_same_weights(&ckpt, &dir);
    assert_missing_shard_is_named(&dir, &shards[1]);
}

#[test]
fn init_starts_a_new_run_from_exported_weights() {
    let (_run, ckpt) = trained_in_temp(3, 3);
    let (_out, dir, _) = export_in_temp(&ckpt, &opts(Kind::Float, 1 << 20, false, false));

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
    let (_, base) = read_weights(&dir).unwrap();
    let (_, warm) = read_weights(&first.checkpoint.unwrap()).unwrap();
    let (_, fresh) = read_weights(&cold.checkpoint.unwrap()).unwrap();
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

/// The files under `dir` (relative paths, sorted), to show that a refused export touched
/// nothing.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `lcm export` never deletes or hides what `--out` names: the source run (or a folder
/// holding it, or a folder inside it), a file, a training checkpoint or any folder that is
/// not an export are refused before any work, naming the path and the flag; an existing
/// export is replaced only with --force and keeps its other files; `--shard-mib 0` is refused.
#[test]
fn export_refuses_every_out_that_would_lose_something() {
    let h = tempfile::tempdir().unwrap();
    let run = h.path().join("run");
    let ckpt = trained(&run, 2, 3);
    std::fs::write(h.path().join("notes.txt"), "hi\n").unwrap();
    let before = tree(h.path());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run_export = |src: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec!["export".to_string(), s(src), "--out".into(), s(out)];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lcm(&args)
    };

    // The folder holding the run, the run itself, its checkpoint, a folder inside the run:
    // refused with or without --force, nothing touched.
    for (src, out) in [
        (&run, h.path().to_path_buf()),
        (&run, run.clone()),
        (&ckpt, ckpt.clone()),
        (&ckpt, run.clone()),
        (&run, run.join("model")),
        (&ckpt, ckpt.join("model")),
    ] {
        for force in [&[][..], &["--force"]] {
            let (ok, _, err) = run_export(src, &out, force);
            assert!(!ok, "{} -> {}", src.display(), out.display());
            assert!(
                err.contains("--out") && err.contains("source") && err.contains(&s(&out)),
                "{err}"
            );
            assert_eq!(tree(h.path()), before, "{err}");
        }
    }
    // The same through another spelling of the path.
    let dotted = run.join("..").join("run");
    let (ok, _, err) = run_export(&run, &dotted, &["--force"]);
    assert!(!ok && err.contains("source"), "{err}");

    // A file: refused, kept as it was, nothing written beside it.
    let file = h.path().join("notes.txt");
    for force in [&[][..], &["--force"]] {
        let (ok, _, err) = run_export(&run, &file, force);
        assert!(
            !ok && err.contains("not a folder") && err.contains(&s(&file)),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hi\n");
        assert_eq!(tree(h.path()), before);
    }

    // A folder that is no export, and another run's checkpoint: refused even with --force.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("data.csv"), "1,2\n").unwrap();
    let (ok, _, err) = run_export(&run, other.path(), &["--force"]);
    assert!(
        !ok && err.contains("not an lcm export") && err.contains("data.csv"),
        "{err}"
    );
    assert_eq!(tree(other.path()), ["data.csv"]);
    let other_run = tempfile::tempdir().unwrap();
    let other_ckpt = trained(other_run.path(), 1, 5);
    let kept = tree(other_run.path());
    for out in [other_ckpt.as_path(), other_run.path()] {
        let (ok, _, err) = run_export(&run, out, &["--force"]);
        assert!(!ok && err.contains("training"), "{err}");
        assert_eq!(tree(other_run.path()), kept);
    }

    // --shard-mib 0 is refused before any work.
    let out = h.path().join("model");
    let (ok, _, err) = run_export(&run, &out, &["--shard-mib", "0"]);
    assert!(!ok && err.contains("--shard-mib"), "{err}");
    assert!(!out.exists());
    let e = export(&ckpt, &out, &opts(Kind::Float, 0, false, false)).unwrap_err();
    assert!(e.to_string().contains("shard"), "{e}");
    assert!(!out.exists());

    // A new folder: written. Again: refused without --force, naming it.
    let (ok, stdout, err) = run_export(&run, &out, &[]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("model-00001-of-00001.safetensors"),
        "{stdout}"
    );
    let (ok, _, err) = run_export(&run, &out, &[]);
    assert!(
        !ok && err.contains("--force") && err.contains(&s(&out)),
        "{err}"
    );

    // An export of many shards with a model card beside it, replaced by one of one shard:
    // the card stays, the old shards go, the weights load back whole.
    export(&ckpt, &out, &opts(Kind::Float, 16 << 10, false, true)).unwrap();
    std::fs::write(out.join("README.md"), "card\n").unwrap();
    assert!(weight_files(&out).unwrap().len() > 2);
    let (ok, _, err) = run_export(&run, &out, &["--force", "--dtype", "f32"]);
    assert!(ok, "{err}");
    assert_eq!(
        tree(&out),
        [
            "README.md",
            "model-00001-of-00001.safetensors",
            "model.safetensors.index.json",
            "state.json"
        ]
    );
    assert_same_weights(&ckpt, &out);
    // No temporaries left beside or inside it.
    assert!(
        !tree(h.path()).iter().any(|p| p.contains("tmp")),
        "{:?}",
        tree(h.path())
    );
    // An empty folder is replaced with --force.
    let empty = h.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, err) = run_export(&run, &empty, &["--force"]);
    assert!(ok, "{err}");
    assert!(empty.join("state.json").is_file());
}
