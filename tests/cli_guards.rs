//! Inputs that cannot work are refused before any work with a message naming the path or
//! flag, never a crash or a meaningless result: token ids a model cannot embed (by path,
//! largest id and `model.vocab_size`, instead of a panic in the embedding) in training
//! corpora (`lcm pretrain`, `Sampler`), NIAH haystacks and perplexity corpora (`lcm eval`),
//! including corpora without a recorded largest id (written before PREFIX.json had one, or
//! by another tool: scanned); counts of 0 (`--samples`, `--keys`, `--queries`, `--hops`,
//! `--chains`) and a task's count given to another task.

mod data_util;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use data_util::lcm;
use lcm::data::indexed::IndexedWriter;
use lcm::data::TokenDtype;
use lcm::train::sampler::Sampler;
use lcm::train::{train, TrainConfig, TrainOptions};
use serde_json::json;

const VOCAB: i64 = 128;

fn config(run: &Path, data: serde_json::Value) -> serde_json::Value {
    json!({
        "model": {
            "arch": "drt", "vocab_size": VOCAB, "d_model": 32, "n_heads": 2, "d_ff": 64,
            "window": 16,
            "drt": { "chunk_size": 8, "landmark_id": VOCAB - 1, "topk": 2,
                     "encoder_layers": 1, "decoder_layers": [1, 1] }
        },
        "data": data,
        "optim": { "lr": 3e-3, "warmup_steps": 1 },
        "steps": 1, "batch_size": 2, "seq_len": 48, "device": "cpu", "seed": 1,
        "checkpoint": { "dir": run, "every": 0, "keep": 1 },
        "log": { "every": 1 }
    })
}

/// A checkpoint of a 128-id DRT trained one step on random ids with passkey rows (so that
/// `eval niah --task passkey` takes its ids from the config), and a corpus of NeoX-sized
/// ids (200..) beside it, written without PREFIX.json.
fn setup() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static S: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let data = json!({
            "random": { "lo": 40, "hi": 120 },
            "synthetic": { "rate": 1.0, "key_len": 3, "key_lo": 2, "key_hi": 30,
                           "needle": [34, 35], "question": [36, 37], "min_gap": 0 }
        });
        let cfg = TrainConfig::from_json(config(&run, data)).unwrap();
        train(&cfg, &TrainOptions::default()).unwrap();
        let corpus = neox_corpus(dir.path());
        (dir, run, corpus)
    })
}

/// 600 tokens, ids 200..260 and a last one of 300: none of them embeddable at 128 ids.
fn neox_corpus(dir: &Path) -> PathBuf {
    let prefix = dir.join("neox");
    let mut w = IndexedWriter::create(&prefix, TokenDtype::Uint16).unwrap();
    for _ in 0..10 {
        w.add_document(&(200..260).collect::<Vec<u32>>()).unwrap();
    }
    w.add_document(&[300]).unwrap();
    w.finish().unwrap();
    prefix
}

/// The ids' error names the corpus, the id and the vocabulary, without a panic.
fn assert_names_the_ids(err: &str, corpus: &Path) {
    let corpus = corpus.display().to_string();
    for want in [corpus.as_str(), "token id 300", "model.vocab_size 128"] {
        assert!(err.contains(want), "{err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

/// Runs `lcm eval KIND --checkpoint RUN --len LEN --device cpu --quiet EXTRA...`.
fn eval(kind: &str, run: &Path, len: &str, extra: &[&str]) -> (bool, String, String) {
    let r = run.to_str().unwrap();
    let args = [
        "eval",
        kind,
        "--checkpoint",
        r,
        "--len",
        len,
        "--device",
        "cpu",
        "--quiet",
    ];
    lcm(&[&args[..], extra].concat())
}

/// A corpus at `prefix` of one document of ids 1..120, all embeddable at 128 ids.
fn small_ids_corpus(prefix: &Path) {
    let mut w = IndexedWriter::create(prefix, TokenDtype::Uint16).unwrap();
    w.add_document(&(1..120).collect::<Vec<u32>>()).unwrap();
    w.finish().unwrap();
}

#[test]
fn eval_niah_refuses_a_haystack_the_model_cannot_embed() {
    let (_, run, corpus) = setup();
    let out = tempfile::tempdir().unwrap();
    let (ok, _, err) = eval(
        "niah",
        run,
        "256",
        &[
            "--haystack",
            corpus.to_str().unwrap(),
            "--samples",
            "1",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert_names_the_ids(&err, corpus);
    assert!(err.contains("haystack"), "{err}");
    assert!(!out.path().join("results.json").exists());
}

#[test]
fn eval_ppl_refuses_a_corpus_the_model_cannot_embed() {
    let (_, run, corpus) = setup();
    let (ok, _, err) = eval("ppl", run, "64", &["--corpus", corpus.to_str().unwrap()]);
    assert!(!ok);
    assert_names_the_ids(&err, corpus);
}

#[test]
fn pretrain_refuses_a_corpus_the_model_cannot_embed_before_any_step() {
    let (dir, _, corpus) = setup();
    let run = dir.path().join("fresh");
    let cfg_path = dir.path().join("neox-run.json");
    let data = json!({ "train": [{ "prefix": corpus }] });
    std::fs::write(&cfg_path, config(&run, data).to_string()).unwrap();
    let (ok, out, err) = lcm(&["pretrain", "--config", cfg_path.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert_names_the_ids(&err, corpus);
    assert!(err.contains("data.train[0]"), "{err}");
    assert!(!out.contains("step 1"), "{out}");

    // Through the library: the training corpus, then a held-out one.
    let ok_corpus = dir.path().join("small-ids");
    small_ids_corpus(&ok_corpus);
    let cfg =
        TrainConfig::from_json(config(&run, json!({ "train": [{ "prefix": corpus }] }))).unwrap();
    let e = Sampler::for_training(&cfg).err().unwrap().to_string();
    assert_names_the_ids(&e, corpus);
    let cfg = TrainConfig::from_json(config(
        &run,
        json!({ "train": [{ "prefix": ok_corpus }], "eval": corpus }),
    ))
    .unwrap();
    assert!(Sampler::for_training(&cfg).is_ok());
    let e = Sampler::for_eval(&cfg).err().unwrap().to_string();
    assert_names_the_ids(&e, corpus);
    assert!(e.contains("data.eval"), "{e}");
}

/// `--samples 0` (a perplexity of exp(0) = 1.00 from no tokens, an empty grid), a task's
/// count of 0 and a count the task does not read are refused, naming the flag.
#[test]
fn eval_refuses_zero_samples_and_keys() {
    let (_, run, _) = setup();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let niah = |extra: &[&str]| {
        let args = [&["--out", o, "--haystack", "random"][..], extra].concat();
        eval("niah", run, "64", &args)
    };
    for (flag, extra) in [
        ("--samples 0", &["--samples", "0"][..]),
        ("--keys 0", &["--task", "mk-niah", "--keys", "0"]),
        ("--queries 0", &["--task", "mq-niah", "--queries", "0"]),
        ("--hops 0", &["--task", "vt", "--hops", "0"]),
        ("--chains 0", &["--task", "vt", "--chains", "0"]),
        (
            "--queries is for --task mq-niah",
            &["--task", "vt", "--queries", "2"],
        ),
        (
            "--keys is for --task mk-niah and multihop",
            &["--keys", "2"],
        ),
    ] {
        let (ok, stdout, err) = niah(extra);
        assert!(!ok, "{flag}: {stdout}");
        assert!(err.contains(flag), "{err}");
    }
    assert!(!out.path().join("results.json").exists());
    let (ok, stdout, err) = niah(&["--samples", "1"]);
    assert!(ok, "{stdout}\n{err}");

    let corpus = out.path().join("small-ids");
    small_ids_corpus(&corpus);
    let c = corpus.to_str().unwrap();
    let ppl = |samples: &str| eval("ppl", run, "64", &["--corpus", c, "--samples", samples]);
    let (ok, stdout, err) = ppl("0");
    assert!(!ok, "{stdout}");
    assert!(err.contains("--samples 0"), "{err}");
    let (ok, stdout, err) = ppl("1");
    assert!(ok, "{err}");
    assert!(stdout.contains("perplexity"), "{stdout}");
}
