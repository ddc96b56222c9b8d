//! The trainer on CPU: config errors, sampling, schedule, exact resume, NaN handling, bf16.

use std::path::Path;

mod run_util;

use run_util::{assert_same_checkpoint, weights};

use lcm::train::config::{apply_override, CurriculumStage, TrainConfig};
use lcm::train::sampler::{sample_range, Sampler, IGNORE};
use lcm::train::schedule::learning_rate;
use lcm::train::{checkpoint, train, TrainOptions};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// A DRT small enough to train a few steps in well under a second, on a random haystack
/// with passkey rows, the answer at the very end of each row (tests read the layout).
fn tiny(dir: &Path) -> Value {
    json!({
        "model": {
            "arch": "drt", "vocab_size": 65, "d_model": 32, "n_heads": 2, "d_ff": 64, "window": 16,
            "drt": { "chunk_size": 7, "landmark_id": 64, "landmark_slot": "zeroed", "topk": 2,
                     "encoder_layers": 1, "decoder_layers": [1, 1] }
        },
        "data": {
            "random": { "lo": 10, "hi": 64 },
            "synthetic": { "rate": 0.5, "key_len": 2, "key_lo": 2, "key_hi": 10,
                           "needle": [1, 1], "question": [0, 0], "min_gap": 20,
                           "end_jitter": 0 }
        },
        "optim": { "lr": 3e-3, "warmup_steps": 2 },
        "steps": 6, "batch_size": 2, "seq_len": 56, "device": "cpu", "seed": 7,
        "checkpoint": { "dir": dir, "every": 0, "keep": 5 },
        "log": { "every": 1, "eval_every": 3, "eval_batches": 1 }
    })
}

/// A curriculum stage that changes the needle's gap alone.
fn gap(seq_len: i64, min_gap: usize) -> CurriculumStage {
    CurriculumStage {
        until: 1,
        seq_len,
        min_gap: Some(min_gap),
        key_lo: None,
        key_hi: None,
    }
}

fn config(v: Value) -> TrainConfig {
    TrainConfig::from_json(v).unwrap()
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("optim.lrr", json!(1.0), "optim.lrr"),
        ("steps", json!(0), "steps"),
        ("device", json!("gpu"), "device"),
        ("data.random.hi", json!(1000), "data.random.hi"),
        (
            "data.synthetic.min_gap",
            json!(1000),
            "data.synthetic.min_gap",
        ),
        ("batch_size", json!("four"), "batch_size"),
    ];
    for (key, value, named) in cases {
        let mut v = tiny(dir.path());
        apply_override(&mut v, &format!("{key}={value}")).unwrap();
        let err = TrainConfig::from_json(v).unwrap_err().to_string();
        assert!(
            err.contains(named),
            "{key}={value}: error does not name `{named}`: {err}"
        );
    }
    let mut v = tiny(dir.path());
    v["model"]["drt"]["topk"] = json!(0);
    let err = TrainConfig::from_json(v).unwrap_err().to_string();
    assert!(err.contains("model.drt.topk"), "{err}");
}

/// A corpus shorter than one row of the run is refused up front, naming the key that gave it
/// (and, for the eval corpus, the override that fixes it), not at the first eval.
#[test]
fn a_corpus_shorter_than_a_row_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    let mut w =
        lcm::data::indexed::IndexedWriter::create(&short, lcm::data::TokenDtype::Uint16).unwrap();
    w.add_document(&(10..50).collect::<Vec<u32>>()).unwrap();
    w.finish().unwrap();
    let long = dir.path().join("long");
    let mut w =
        lcm::data::indexed::IndexedWriter::create(&long, lcm::data::TokenDtype::Uint16).unwrap();
    w.add_document(&(0..400).map(|i| 10 + i % 50).collect::<Vec<u32>>())
        .unwrap();
    w.finish().unwrap();
    let with = |train: &Path, eval: &Path| {
        let mut v = tiny(dir.path());
        v["data"].as_object_mut().unwrap().remove("random");
        v["data"]["train"] = json!([{ "prefix": train, "weight": 1.0 }]);
        v["data"]["eval"] = json!(eval);
        config(v)
    };
    let cfg = with(&long, &short);
    assert!(Sampler::for_training(&cfg).is_ok());
    let err = Sampler::for_eval(&cfg).err().unwrap().to_string();
    assert!(
        err.contains("data.eval") && err.contains("40 tokens") && err.contains("--set data.eval="),
        "{err}"
    );
    let err = Sampler::for_training(&with(&short, &long))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("data.train[0]") && err.contains("57"), "{err}");
}

#[test]
fn overrides_parse_json_or_strings() {
    let mut v = json!({"a": {"b": 1}});
    apply_override(&mut v, "a.b=2.5").unwrap();
    apply_override(&mut v, "a.c=[1,2]").unwrap();
    apply_override(&mut v, "d=runs/x").unwrap();
    assert_eq!(v, json!({"a": {"b": 2.5, "c": [1, 2]}, "d": "runs/x"}));
    assert!(
        apply_override(&mut v, "d.e=1").is_err(),
        "cannot set inside a string"
    );
    assert!(apply_override(&mut v, "novalue").is_err());
}

#[test]
fn model_section_can_name_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    std::fs::write(dir.path().join("m.json"), v["model"].to_string()).unwrap();
    v["model"] = json!("m.json");
    let path = dir.path().join("train.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let c = TrainConfig::load(&path, &["steps=3".into()]).unwrap();
    assert_eq!(c.steps, 3);
    assert_eq!(c.model.d_model, 32);
}

#[test]
fn samples_are_deterministic_and_ranks_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(tiny(dir.path()));
    let s = Sampler::for_training(&c).unwrap();
    assert_eq!(s.sample(5), s.sample(5));
    assert_ne!(s.sample(5).0, s.sample(6).0);
    // (step, micro, rank) blocks never overlap.
    let mut seen = std::collections::HashSet::new();
    for step in 0..4 {
        for micro in 0..3 {
            for rank in 0..2 {
                for i in sample_range(step, micro, 3, rank, 2, 4) {
                    assert!(seen.insert(i), "sample {i} used twice");
                }
            }
        }
    }
    assert_eq!(seen.len(), 4 * 3 * 2 * 4);
}

#[test]
fn passkey_rows_mask_the_needle_and_mark_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]["rate"] = json!(1.0);
    let c = config(v);
    let s = Sampler::for_training(&c).unwrap();
    for i in 0..50 {
        let (w, ignore, answer) = s.sample(i);
        let t = c.seq_len as usize;
        // The answer is the last key_len targets, the same ids as the key after the needle.
        assert_eq!(answer.iter().filter(|&&a| a).count(), 2);
        assert!(answer[t - 2] && answer[t - 1]);
        let key = &w[t - 1..t + 1];
        assert_eq!(&w[t - 3..t - 1], &[0, 0], "question precedes the answer");
        let p = (0..t)
            .find(|&p| w[p..p + 2] == [1, 1])
            .expect("needle present");
        assert_eq!(&w[p + 2..p + 4], key, "needle key equals the answer");
        assert!(t - 1 - (p + 2) >= 20, "min_gap respected");
        // Targets predicting the needle's key carry no loss.
        assert!(ignore[p + 1] && ignore[p + 2] && !ignore[p + 3]);
    }
    let b = s.batch(0..3, tch::Device::Cpu);
    assert_eq!(b.inputs.size(), [3, 56]);
    let ignored = b.targets.eq(IGNORE).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(ignored, 3 * 2);
}

#[test]
fn curriculum_and_answer_only_loss() {
    // Stages of length (and needle gap) before the plain run; synthetic rows scored on
    // their answer alone.
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]["rate"] = json!(1.0);
    v["data"]["synthetic"]["answer_only"] = json!(true);
    v["curriculum"] = json!([
        { "until": 2, "seq_len": 28, "min_gap": 0 },
        { "until": 4, "seq_len": 42 }
    ]);
    let c = config(v.clone());
    let lens: Vec<i64> = (0..6).map(|s| c.seq_len_at(s)).collect();
    assert_eq!(lens, [28, 28, 42, 42, 56, 56]);
    // A synthetic row's loss is on its answer alone: 2 targets per row, at every length.
    let s = Sampler::for_training(&c).unwrap();
    for len in [28, 56] {
        let b = s.batch_len(0..3, len, tch::Device::Cpu);
        assert_eq!(b.inputs.size(), [3, len as i64]);
        let scored = b.targets.ne(IGNORE).sum(Kind::Int64).int64_value(&[]);
        let answers = b.answer.sum(Kind::Int64).int64_value(&[]);
        assert_eq!((scored, answers), (3 * 2, 3 * 2));
    }
    // (The trainer's use of the stages is checked in tests/passkey_toy.rs: training here
    // would share libtorch's global generator with resume_is_exact_on_cpu.)
    // Stages must increase, and fit the synthetic row.
    for (stage, named) in [
        (
            json!([{ "until": 3, "seq_len": 28 }, { "until": 3, "seq_len": 42 }]),
            "curriculum[1].until",
        ),
        (
            json!([{ "until": 3, "seq_len": 14 }]),
            "data.synthetic.min_gap",
        ),
        (
            json!([{ "until": 3, "seq_len": 70 }]),
            "curriculum[0].seq_len",
        ),
        (
            json!([{ "until": 3, "seq_len": 28, "min_gap": 21 }]),
            "data.synthetic.min_gap",
        ),
    ] {
        let mut bad = v.clone();
        bad["curriculum"] = stage;
        let err = TrainConfig::from_json(bad).unwrap_err().to_string();
        assert!(err.contains(named), "{err} does not name {named}");
    }
}

/// A stage's key range: the stage's rows draw their keys from it, the rows after the
/// curriculum from `data.synthetic`'s; a range the vocabulary cannot hold, or one beside
/// variants, is refused naming the stage.
#[test]
fn a_stage_draws_its_keys_from_its_own_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]["rate"] = json!(1.0);
    v["data"]["synthetic"]["answer_only"] = json!(true);
    v["data"]["synthetic"]["key_lo"] = json!(10);
    v["data"]["synthetic"]["key_hi"] = json!(64);
    v["curriculum"] = json!([{ "until": 2, "seq_len": 56, "key_lo": 2, "key_hi": 10 }]);
    let c = config(v.clone());
    let s = Sampler::for_training(&c).unwrap();
    let keys = |stage: Option<&CurriculumStage>| -> Vec<i64> {
        let b = s.batch_at(0..16, 56, stage, tch::Device::Cpu);
        let t = Vec::<i64>::try_from(b.targets.flatten(0, -1)).unwrap();
        t.into_iter().filter(|&x| x != IGNORE).collect()
    };
    let staged = keys(c.stage_at(0));
    let plain = keys(c.stage_at(2));
    assert_eq!((staged.len(), plain.len()), (32, 32));
    assert!(staged.iter().all(|k| (2..10).contains(k)), "{staged:?}");
    assert!(plain.iter().all(|k| (10..64).contains(k)), "{plain:?}");
    // A stage that changes nothing of the rows draws them as the plain run does.
    assert!(c.curriculum[0]
        .synthetic(c.data.synthetic.as_ref().unwrap())
        .is_some());
    assert!(gap(56, 20)
        .synthetic(c.data.synthetic.as_ref().unwrap())
        .is_none());
    let mut bad = v.clone();
    bad["curriculum"][0]["key_hi"] = json!(100);
    let err = TrainConfig::from_json(bad).unwrap_err().to_string();
    assert!(
        err.contains("key_hi") && err.contains("curriculum[0]"),
        "{err}"
    );
    let mut bad = v;
    bad["data"]["synthetic"]["variants"] = json!([{
        "needle": [1], "question": [0], "key_len": 2, "key_lo": 2, "key_hi": 10
    }]);
    let err = TrainConfig::from_json(bad).unwrap_err().to_string();
    assert!(err.contains("curriculum[0].key_lo"), "{err}");
}

#[test]
fn schedule_warms_up_then_decays_to_min() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["optim"] = json!({"lr": 1.0, "min_lr": 0.1, "warmup_steps": 4});
    let o = config(v).optim;
    assert_eq!(learning_rate(&o, 0, 100), 0.25);
    assert_eq!(learning_rate(&o, 3, 100), 1.0);
    assert!((learning_rate(&o, 4, 100) - 1.0).abs() < 1e-12);
    assert!(
        (learning_rate(&o, 52, 100) - 0.55).abs() < 1e-12,
        "midpoint of the cosine"
    );
    assert!((learning_rate(&o, 100, 100) - 0.1).abs() < 1e-12);
}

/// k steps + resume + (n - k) steps gives bit-identical weights and moments to n steps.
#[test]
fn resume_is_exact_on_cpu() {
    // One intra-op thread: BLAS may split a matmul differently when the machine is busy,
    // which changes the rounding of its sums. Bit-identity holds for a fixed thread count.
    tch::set_num_threads(1);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let full = train(&config(tiny(a.path())), &TrainOptions::default()).unwrap();
    let cb = config(tiny(b.path()));
    let first = train(
        &cb,
        &TrainOptions {
            stop_after: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(first.step, 3);
    let rest = train(
        &cb,
        &TrainOptions {
            resume: Some(b.path().into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rest.step, 6);
    let (pa, pb) = (full.checkpoint.unwrap(), rest.checkpoint.unwrap());
    assert_same_checkpoint(&pa, &pb);
    assert_eq!(checkpoint::read_state(&pb).unwrap().samples, 6 * 2);
    // Training moved the weights and the metrics file has one line a step.
    let metrics = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6);
    assert!(metrics.lines().last().unwrap().contains("\"eval_loss\""));
}

#[test]
fn checkpoints_keep_the_newest_k() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["checkpoint"]["every"] = json!(1);
    v["checkpoint"]["keep"] = json!(2);
    train(&config(v), &TrainOptions::default()).unwrap();
    let names: Vec<String> = checkpoint::list(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-00000005", "step-00000006"]);
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".tmp")));
}

/// A diverging run stops with an error naming the step and leaves the last good
/// checkpoint loadable.
#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["optim"] = json!({"lr": 1e30, "min_lr": 1e30, "warmup_steps": 0, "grad_clip": 0.0, "weight_decay": 0.0});
    v["checkpoint"]["every"] = json!(1);
    let err = train(&config(v), &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("at step") && err.contains("intact"), "{err}");
    let last = checkpoint::resolve(dir.path()).unwrap();
    let state = checkpoint::read_state(&last).unwrap();
    assert!(state.step >= 1);
    // The step named is the one the log would have printed next (1-based), one past the
    // last good checkpoint's (saved every step).
    let named = format!("at step {}:", state.step + 1);
    assert!(err.contains(&named), "{err} (expected `{named}`)");
    let w = weights(&last);
    assert!(!w.is_empty());
    assert!(
        w.iter()
            .all(|(_, t)| t.isfinite().all().int64_value(&[]) == 1),
        "the kept checkpoint holds finite weights"
    );
}

/// bf16 training runs and keeps fp32 master weights in the checkpoint.
#[test]
fn bf16_keeps_fp32_master_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["precision"] = json!("bf16");
    v["steps"] = json!(3);
    let s = train(&config(v), &TrainOptions::default()).unwrap();
    assert!(s.last_loss.is_finite());
    for (n, t) in weights(&s.checkpoint.unwrap()) {
        assert_eq!(t.kind(), Kind::Float, "{n}");
    }
}

/// A sampled window: (sample index, tokens, no-loss mask, answer mask).
type Row = (u64, Vec<u32>, Vec<bool>, Vec<bool>);

/// The first 50 windows of a sampler whose every window is a `task` row with 3 facts, of
/// `seq_len` tokens.
fn synthetic_rows(task: &str, seq_len: usize) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["seq_len"] = json!(seq_len);
    v["data"]["synthetic"]["task"] = json!(task);
    v["data"]["synthetic"]["n_keys"] = json!(3);
    v["data"]["synthetic"]["rate"] = json!(1.0);
    let s = Sampler::for_training(&config(v)).unwrap();
    (0..50)
        .map(|i| {
            let (w, ignore, answer) = s.sample(i);
            (i, w, ignore, answer)
        })
        .collect()
}

/// Parses planted facts `needle name value` back out of a window (needle = [1, 1]).
fn facts(w: &[u32], key_len: usize) -> Vec<(Vec<u32>, Vec<u32>, usize)> {
    (0..w.len() - 2 - 2 * key_len)
        .filter(|&p| w[p..p + 2] == [1, 1])
        .map(|p| {
            (
                w[p + 2..p + 2 + key_len].to_vec(),
                w[p + 2 + key_len..p + 2 + 2 * key_len].to_vec(),
                p,
            )
        })
        .collect()
}

#[test]
fn multi_key_rows_ask_one_of_several_needles() {
    let t = 56;
    for (i, w, ignore, answer) in synthetic_rows("multi_key", t) {
        let f = facts(&w, 2);
        assert_eq!(f.len(), 3, "three needles in sample {i}");
        let asked = &w[t - 3..t - 1];
        let key = &w[t - 1..t + 1];
        assert_eq!(&w[t - 5..t - 3], &[0, 0], "question, then the asked name");
        let hit: Vec<_> = f
            .iter()
            .filter(|(name, _, _)| name.as_slice() == asked)
            .collect();
        assert_eq!(hit.len(), 1, "the asked name is planted once");
        assert_eq!(hit[0].1, key, "the answer is the asked needle's key");
        for (_, _, p) in &f {
            assert!(
                (p + 1..p + 5).all(|j| ignore[j]),
                "names and keys carry no loss"
            );
            assert!(t - 1 - (p + 6) >= 20, "min_gap respected");
        }
        assert!(answer[t - 2] && answer[t - 1]);
    }
}

#[test]
fn multi_hop_rows_chain_to_the_key() {
    let t = 112;
    for (_, w, _, _) in synthetic_rows("multi_hop", t) {
        let f = facts(&w, 2);
        assert_eq!(f.len(), 3);
        // Follow the chain from the asked name to the key, each hop to an earlier fact.
        let mut name = w[t - 3..t - 1].to_vec();
        let mut pos = usize::MAX;
        for _ in 0..3 {
            let (_, value, p) = f
                .iter()
                .find(|(n, _, _)| *n == name)
                .expect("each hop is planted")
                .clone();
            assert!(p < pos, "hops appear in order");
            pos = p;
            name = value;
        }
        assert_eq!(name, &w[t - 1..t + 1], "three hops end at the answer");
    }
}

#[test]
fn synthetic_task_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]["n_keys"] = json!(2);
    let err = TrainConfig::from_json(v).unwrap_err().to_string();
    assert!(err.contains("data.synthetic.n_keys"), "{err}");
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]["task"] = json!("haystack");
    let err = TrainConfig::from_json(v).unwrap_err().to_string();
    assert!(
        err.contains("data.synthetic.task") && err.contains("multi_key"),
        "{err}"
    );
}

#[test]
fn variable_tracking_rows_answer_every_name_holding_the_key() {
    let t = 112;
    for (_, w, _, answer) in synthetic_rows("variable_tracking", t) {
        let mut f = facts(&w, 2);
        f.sort_by_key(|x| x.2);
        assert_eq!(f.len(), 3);
        // The question gives the key; the answer lists the chain's names in order.
        let answer_ids = &w[t + 1 - 6..];
        let key = &w[t + 1 - 8..t + 1 - 6];
        assert_eq!(&w[t + 1 - 10..t + 1 - 8], &[0, 0]);
        assert_eq!(f[0].1, key, "the first name holds the key");
        assert_eq!(f[1].1, f[0].0, "each later name holds the previous one");
        assert_eq!(f[2].1, f[1].0);
        let names: Vec<u32> = f.iter().flat_map(|x| x.0.clone()).collect();
        assert_eq!(answer_ids, names.as_slice());
        assert_eq!(answer.iter().filter(|&&a| a).count(), 6);
    }
}

/// The trainer's loss applies the head only at scored positions; it must equal the loss of
/// the full logits, gradients included, on a batch mixing text rows and answer-only rows.
#[test]
fn batch_loss_equals_the_loss_of_the_full_logits() {
    use lcm::train::trainer::{batch_loss, training_loss};
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]["answer_only"] = json!(true);
    v["batch_size"] = json!(6);
    let cfg = config(v);
    let sampler = Sampler::for_training(&cfg).unwrap();
    let batch = sampler.batch_at(0..6, 56, Some(&gap(56, 20)), tch::Device::Cpu);
    let ignored = batch.targets.eq(IGNORE).sum(Kind::Int64).int64_value(&[]);
    assert!(ignored > 0 && ignored < 6 * 56, "{ignored} ignored targets");
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = lcm::model::build(&vs.root(), &cfg.model).unwrap();
    let grads = |loss: &Tensor| -> Vec<Tensor> {
        let vars = vs.trainable_variables();
        let g = Tensor::run_backward(&[loss], &vars, false, false);
        g.into_iter().map(|t| t.copy()).collect()
    };
    let _generator = lcm::util::lock_torch_generator(); // no other test's run draws meanwhile
    for weight in [None, Some(2.0)] {
        tch::manual_seed(5); // the same Gumbel noise for both forwards
        let (loss, hits) = batch_loss(model.as_ref(), &batch, weight);
        tch::manual_seed(5);
        let full = model.forward(&batch.inputs, true);
        let want = training_loss(&full, &batch.targets, &batch.answer, weight);
        let (a, b) = (loss.double_value(&[]), want.double_value(&[]));
        assert!(
            (a - b).abs() < 1e-5 * b.abs(),
            "{a} vs {b} (weight {weight:?})"
        );
        assert!(hits.unwrap().1 > 0.0);
        for (ga, gb) in grads(&loss).iter().zip(grads(&want)) {
            let err = (ga - &gb).abs().max().double_value(&[]);
            let scale = gb.abs().max().double_value(&[]).max(1e-6);
            assert!(
                err <= 1e-4 * scale,
                "gradient differs by {err} (scale {scale})"
            );
        }
    }
}

/// The trainer's eval loss, head applied a slice of positions at a time (so that 256K-token
/// rows fit), is the mean cross-entropy of the full logits, whatever the slice.
#[test]
fn eval_loss_equals_the_loss_of_the_full_logits() {
    use lcm::train::trainer::{eval_loss, eval_loss_in_slices, lm_loss};
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["batch_size"] = json!(4);
    let cfg = config(v);
    let sampler = Sampler::for_training(&cfg).unwrap();
    let batch = sampler.batch_at(0..4, 56, Some(&gap(56, 20)), tch::Device::Cpu);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = lcm::model::build(&vs.root(), &cfg.model).unwrap();
    let want = tch::no_grad(|| lm_loss(&model.forward(&batch.inputs, false), &batch.targets))
        .double_value(&[]);
    let scored = batch.targets.ne(IGNORE).sum(Kind::Int64).int64_value(&[]);
    assert!(scored > 7, "{scored} scored targets");
    for slice in [7, 100, scored, 10_000] {
        let got = eval_loss_in_slices(model.as_ref(), &batch, slice);
        assert!(
            (got - want).abs() < 1e-5 * want,
            "slice {slice}: {got} vs {want}"
        );
    }
    assert!((eval_loss(model.as_ref(), &batch) - want).abs() < 1e-5 * want);
}

/// `data.synthetic.end_jitter` unset becomes the model's chunk size minus 1 (chunks of 7
/// in the tiny DRT); a value given is kept.
#[test]
fn end_jitter_defaults_to_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]
        .as_object_mut()
        .unwrap()
        .remove("end_jitter");
    let c = config(v);
    assert_eq!(c.data.synthetic.as_ref().unwrap().end_jitter, Some(6));
    let mut v = tiny(dir.path());
    v["data"]["synthetic"]["end_jitter"] = json!(2);
    let c = config(v);
    assert_eq!(c.data.synthetic.as_ref().unwrap().end_jitter, Some(2));
}
