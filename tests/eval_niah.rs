//! `lcm eval`: NIAH samples are laid out as specified (fact at the depth, answer at the
//! end, exact length, every task), the grid's predictions are the full forward's argmax at
//! the answer positions (so segmenting and position bookkeeping lose nothing), results and
//! heatmap are written, lengths and depths parse with clear errors, the memory planner
//! names the flag that would fit, and s-niah's phrases come from the NeoX tokenizer.

use lcm::data::synthetic::{PasskeyConfig, Phrasing};
use lcm::data::{IndexedCorpus, TokenDtype};
use lcm::eval::grid::{self, GridOptions};
use lcm::eval::lengths::{format_length, parse_depths, parse_lengths};
use lcm::eval::niah::{build_sample, Haystack, NiahTask, TaskArgs, TaskSpec};
use lcm::eval::plan::{self, Available};
use lcm::eval::{Engine, PrefillOptions};
use lcm::model::{ModelConfig, Placement};
use lcm::util::SplitMix64;
use tch::{Device, Tensor};

const VOCAB: i64 = 64;

fn facts() -> PasskeyConfig {
    PasskeyConfig::passkey(3, (10, 20), vec![1, 2], vec![3, 4, 5])
}

/// Three needles (mk-niah, mq-niah), hops (multihop) or chain facts (vt, one chain).
const THREE: TaskArgs = TaskArgs {
    keys: 3,
    queries: 3,
    hops: 2,
    chains: 1,
};

fn spec(task: NiahTask) -> TaskSpec {
    TaskSpec::new(task, Some(&facts()), THREE, VOCAB, None).unwrap()
}

#[test]
fn samples_put_the_fact_at_the_depth_and_the_answer_at_the_end() {
    let hay = Haystack::Random { lo: 30, hi: 60 };
    for task in [
        NiahTask::Passkey,
        NiahTask::MkNiah,
        NiahTask::MqNiah,
        NiahTask::Multihop,
        NiahTask::Vt,
    ] {
        let spec = spec(task);
        let mut last = None;
        for depth in [0.0, 0.3, 0.5, 1.0] {
            let mut rng = SplitMix64::new(3);
            let s = build_sample(&spec, 200, depth, &hay, &mut rng).unwrap();
            assert_eq!(s.tokens.len(), 200, "{task:?}");
            assert_eq!(s.answer_start + s.answer.len(), 200, "{task:?}");
            assert_eq!(&s.tokens[s.answer_start..], s.answer.as_slice());
            assert_eq!(&s.tokens[s.fact_position..s.fact_position + 2], &[1, 2]);
            let n_facts = s.tokens.windows(2).filter(|w| w == &[1, 2]).count();
            let want = if task == NiahTask::Passkey { 1 } else { 3 };
            assert_eq!(n_facts, want, "{task:?}: facts planted");
            let many = matches!(task, NiahTask::Vt | NiahTask::MqNiah);
            let answer_len = if many { 9 } else { 3 };
            assert_eq!(s.answer.len(), answer_len, "{task:?}");
            if depth == 0.0 {
                assert_eq!(s.fact_position, 0, "{task:?}: depth 0 is the start");
            }
            if let Some(prev) = last {
                assert!(s.fact_position > prev, "{task:?}: deeper facts sit later");
            }
            last = Some(s.fact_position);
            if task == NiahTask::Passkey {
                // The key is the answer, right after the needle.
                let key = &s.tokens[s.fact_position + 2..s.fact_position + 5];
                assert_eq!(key, s.answer.as_slice());
                if depth == 1.0 {
                    assert_eq!(
                        s.fact_position + 5,
                        s.answer_start - 3,
                        "right before the question"
                    );
                }
            }
        }
    }
    // Too short for the task: a clear error, not a panic.
    let mut rng = SplitMix64::new(1);
    let err = build_sample(&spec(NiahTask::Passkey), 8, 0.5, &hay, &mut rng).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
}

#[test]
fn corpus_haystacks_loop_over_a_short_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("tiny");
    let mut w = lcm::data::indexed::IndexedWriter::create(&prefix, TokenDtype::Uint16).unwrap();
    w.add_document(&(30..50).collect::<Vec<u32>>()).unwrap();
    w.finish().unwrap();
    let hay = Haystack::Corpus {
        prefix: prefix.clone(),
        corpus: IndexedCorpus::open(&prefix).unwrap(),
    };
    let mut rng = SplitMix64::new(4);
    let s = build_sample(&spec(NiahTask::Passkey), 100, 0.5, &hay, &mut rng).unwrap();
    // Haystack tokens follow the corpus order, wrapping from 49 back to 30.
    let text: Vec<u32> = s.tokens[..s.fact_position].to_vec();
    for pair in text.windows(2) {
        assert!(
            pair[1] == pair[0] + 1 || (pair[0] == 49 && pair[1] == 30),
            "{pair:?}"
        );
    }
}

fn tiny_drt() -> ModelConfig {
    let v = serde_json::json!({
        "arch": "drt", "vocab_size": VOCAB, "d_model": 32, "n_heads": 4, "n_kv_heads": 2,
        "d_ff": 64, "window": 6,
        "drt": {"chunk_size": 4, "landmark_id": VOCAB - 1, "topk": 2, "encoder_layers": 1,
                "decoder_layers": [1, 1]}
    });
    ModelConfig::from_json(&v).unwrap()
}

/// At every batch (samples prefilled side by side, in groups of 2 + 1 for batch 2), each
/// sample's prediction is what the full forward of that sample alone predicts.
#[test]
fn grid_predictions_are_the_full_forward_argmax() {
    tch::manual_seed(2);
    let engine = Engine::random(&tiny_drt(), Device::Cpu).unwrap();
    for batch in [1, 2, 3] {
        grid_matches_full_forward(&engine, batch);
    }
}

fn grid_matches_full_forward(engine: &Engine, batch: usize) {
    let spec = spec(NiahTask::Passkey);
    let hay = Haystack::Random { lo: 30, hi: 60 };
    let out = tempfile::tempdir().unwrap();
    let opts = GridOptions {
        lengths: vec![50, 96],
        depths: vec![0.0, 1.0],
        samples: 3,
        batch,
        seed: 9,
        prefill: PrefillOptions {
            segment: 12, // 3 chunks: the answer spans segment boundaries at some lengths
            placement: Placement::Host,
        },
        out: out.path().to_path_buf(),
        progress: false,
        part: Default::default(),
        scoring: Default::default(),
        slack: 0,
    };
    let report = grid::run(engine, &spec, &hay, &opts).unwrap();
    assert_eq!(report.samples.len(), 12);
    assert_eq!(report.cells.len(), 4);
    for r in &report.samples {
        assert_eq!(r.used_length, r.length / 4 * 4, "rounded to the chunk size");
        let mut rng = SplitMix64::new(r.seed);
        let s = build_sample(&spec, r.used_length as usize, r.depth, &hay, &mut rng).unwrap();
        assert_eq!(s.answer, r.answer);
        let ids: Vec<i64> = s.tokens.iter().map(|&t| t as i64).collect();
        let x = Tensor::from_slice(&ids).view([1, -1]);
        let logits = tch::no_grad(|| engine.model.forward(&x, false));
        let at = logits.narrow(1, s.answer_start as i64 - 1, s.answer.len() as i64);
        let want: Vec<i64> = Vec::try_from(at.argmax(-1, false).view([-1])).unwrap();
        let got: Vec<i64> = r.prediction.iter().map(|&p| p as i64).collect();
        assert_eq!(
            got, want,
            "length {} depth {} batch {batch}",
            r.length, r.depth
        );
        let group = match (batch, r.sample) {
            (1, _) | (2, 2) => 1,
            (2, _) => 2,
            _ => 3,
        };
        assert_eq!(r.batch, group, "sample {} at batch {batch}", r.sample);
        assert_eq!(r.hit, r.prediction == r.answer);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(json["samples"].as_array().unwrap().len(), 12);
    let table = report.table();
    assert!(
        table.contains("96") && table.contains("first token"),
        "{table}"
    );
    lcm::report::heatmap::draw(&report, &out.path().join("heatmap.png")).unwrap();
    let png = std::fs::read(out.path().join("heatmap.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}

#[test]
fn lengths_and_depths_parse_with_clear_errors() {
    assert_eq!(
        parse_lengths("4K, 64K,1M,16M,1000").unwrap(),
        [4096, 65536, 1 << 20, 16 << 20, 1000]
    );
    assert_eq!(format_length(16 << 20), "16M");
    assert_eq!(format_length(4096), "4K");
    assert_eq!(format_length(4095), "4095");
    let e = parse_lengths("4K,4Q").unwrap_err().to_string();
    assert!(e.contains("`4Q`"), "{e}");
    assert!(parse_lengths("0").is_err());
    assert_eq!(parse_depths("0,0.5,1").unwrap(), [0.0, 0.5, 1.0]);
    let e = parse_depths("0,1.5").unwrap_err().to_string();
    assert!(e.contains("`1.5`"), "{e}");
}

#[test]
fn the_planner_names_the_flag_that_fits() {
    let text = std::fs::read_to_string("configs/models/drt-128m.json").unwrap();
    let cfg = ModelConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    let params = 146_000_000;
    let est = |tokens, seg, p| plan::estimate(&cfg, params, tokens, seg, p, 2);
    // The chunk memory grows linearly with the length; activations do not.
    let (a, b) = (
        est(1 << 20, 16380, Placement::Device),
        est(16 << 20, 16380, Placement::Device),
    );
    assert!((b.memory / a.memory - 16.0).abs() < 0.01);
    assert_eq!(a.activations, b.activations);
    // 16M tokens: about 52 GB of chunk memory (seed-report 2.6).
    assert!((b.memory / 1e9 - 52.0).abs() < 2.0, "{}", b.memory / 1e9);
    let gib = (1u64 << 30) as f64;
    let small_gpu = Available {
        device: Some(40.0 * gib),
        host: Some(500.0 * gib),
    };
    let off = est(16 << 20, 16380, Placement::Host);
    let err = plan::check(&b, &small_gpu, false, Some(&off), None).unwrap_err();
    assert!(err.contains("--offload cpu"), "{err}");
    let big_gpu = Available {
        device: Some(139.0 * gib),
        host: Some(100.0 * gib),
    };
    assert!(plan::check(&b, &big_gpu, false, Some(&off), None).is_ok());
    // Offloaded to a host without the room: no flag helps.
    let small_host = Available {
        device: Some(139.0 * gib),
        host: Some(20.0 * gib),
    };
    let err = plan::check(&off, &small_host, false, None, None).unwrap_err();
    assert!(err.contains("host memory"), "{err}");
    // Activations too large for the GPU: a smaller segment is suggested.
    let huge = est(1 << 20, 1 << 20, Placement::Device);
    let smaller = est(1 << 20, 16380, Placement::Device);
    let err = plan::check(&huge, &small_gpu, false, None, Some((16380, &smaller))).unwrap_err();
    assert!(err.contains("--segment 16380"), "{err}");
}

/// The planner keeps a safety margin of the free memory: 22.1 GiB needed of 22.3 free is
/// refused, saying so; what fits in 90% of it is admitted.
#[test]
fn the_planner_keeps_a_safety_margin() {
    let gib = (1u64 << 30) as f64;
    // device_bytes = 1.25 x the parts + 1 GiB.
    let needing = |total_gib: f64| plan::Estimate {
        weights: (total_gib - 1.0) / 1.25 * gib,
        memory: 0.0,
        landmarks: 0.0,
        caches: 0.0,
        activations: 0.0,
        placement: Placement::Device,
    };
    let est = needing(22.1);
    assert!((est.device_bytes() / gib - 22.1).abs() < 1e-9);
    let avail = Available {
        device: Some(22.3 * gib),
        host: Some(500.0 * gib),
    };
    let err = plan::check(&est, &avail, false, None, None).unwrap_err();
    assert!(
        err.contains("22.1 GiB on the GPU") && err.contains("22.3 GiB free"),
        "{err}"
    );
    assert!(
        err.contains("safety margin") && err.contains("90%"),
        "{err}"
    );
    assert!(plan::check(&needing(20.0), &avail, false, None, None).is_ok());
    // The same on the CPU, against the host's available memory.
    let host = Available {
        device: None,
        host: Some(22.3 * gib),
    };
    let err = plan::check(&est, &host, true, None, None).unwrap_err();
    assert!(
        err.contains("host memory") && err.contains("safety margin"),
        "{err}"
    );
    assert!(plan::check(&needing(20.0), &host, true, None, None).is_ok());
}

#[test]
fn s_niah_phrases_come_from_the_neox_tokenizer() {
    let path = lcm::info::default_tokenizer_path();
    let spec = TaskSpec::new(NiahTask::SNiah, None, THREE, 50278, Some(&path)).unwrap();
    assert_eq!(spec.facts.key_len, 7);
    assert!(spec.facts.needle.len() > 5 && spec.facts.question.len() > 10);
    let e = TaskSpec::new(NiahTask::SNiah, None, THREE, VOCAB, Some(&path)).unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
    // Without a synthetic task in the training config, passkey is the reference's text one;
    // the other tasks need the config.
    let spec = TaskSpec::new(NiahTask::Passkey, None, THREE, 50278, Some(&path)).unwrap();
    assert_eq!(spec.facts.key_len, 5);
    let e = TaskSpec::new(NiahTask::MkNiah, None, THREE, VOCAB, None).unwrap_err();
    assert!(e.to_string().contains("data.synthetic"), "{e}");

    // A model trained on RULER's phrasing (as a variant) is asked with the keys it learned;
    // passkey keeps the config's own phrasing.
    let ruler = TaskSpec::new(NiahTask::SNiah, None, THREE, 50278, Some(&path)).unwrap();
    let mut trained = facts();
    trained.variants = vec![Phrasing {
        needle: ruler.facts.needle.clone(),
        question: ruler.facts.question.clone(),
        key_len: 6,
        key_lo: 17,
        key_hi: 27,
    }];
    let s = TaskSpec::new(NiahTask::SNiah, Some(&trained), THREE, 50278, Some(&path)).unwrap();
    assert_eq!(
        (s.facts.key_len, s.facts.key_lo, s.facts.key_hi),
        (6, 17, 27)
    );
    assert_eq!(s.facts.needle, ruler.facts.needle);
    let p = TaskSpec::new(NiahTask::Passkey, Some(&trained), THREE, 50278, Some(&path)).unwrap();
    assert_eq!((p.facts.needle.clone(), p.facts.key_len), (vec![1, 2], 3));
    assert!(p.facts.variants.is_empty());
    // A variant with other phrases leaves s-niah as RULER's.
    trained.variants[0].needle = vec![7, 7];
    let s = TaskSpec::new(NiahTask::SNiah, Some(&trained), THREE, 50278, Some(&path)).unwrap();
    assert_eq!(s.facts.key_len, 7);
}

/// Grids run over different lengths merge into one: every sample of each, the cells and
/// table of each length as its own run had them, lengths in order; overlapping lengths and
/// differing depths are refused by file name.
/// A grid of `samples` per cell, one row a batch, segments of 16 on the device, written to
/// `out`, quietly.
fn small_grid(
    lengths: Vec<i64>,
    depths: Vec<f64>,
    samples: usize,
    seed: u64,
    out: &std::path::Path,
) -> GridOptions {
    GridOptions {
        lengths,
        depths,
        samples,
        batch: 1,
        seed,
        prefill: PrefillOptions {
            segment: 16,
            placement: Placement::Device,
        },
        out: out.to_path_buf(),
        progress: false,
        part: Default::default(),
        scoring: Default::default(),
        slack: 0,
    }
}

#[test]
fn merged_grids_keep_each_runs_cells() {
    tch::manual_seed(3);
    let engine = Engine::random(&tiny_drt(), Device::Cpu).unwrap();
    let spec = spec(NiahTask::Passkey);
    let hay = Haystack::Random { lo: 30, hi: 60 };
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, lengths: Vec<i64>, depths: Vec<f64>| {
        let out = dir.path().join(name);
        let opts = small_grid(lengths, depths, 2, 4, &out);
        let report = grid::run(&engine, &spec, &hay, &opts).unwrap();
        // What `lcm eval merge` reads back.
        report.save(&out).unwrap();
        (out.join("results.json"), report)
    };
    let depths = vec![0.0, 0.5, 1.0];
    let long = run("long", vec![160], depths.clone());
    let short = run("short", vec![48, 96], depths.clone());
    let load =
        |(p, _): &(std::path::PathBuf, grid::Report)| (p.clone(), grid::Report::load(p).unwrap());
    let merged = grid::Report::merge(vec![load(&long), load(&short)]).unwrap();
    assert_eq!(merged.lengths, vec![48, 96, 160]);
    assert_eq!(merged.samples.len(), 18);
    let cells = |r: &grid::Report| -> Vec<String> {
        r.cells
            .iter()
            .map(|c| format!("{} {} {} {}", c.length, c.depth, c.samples, c.accuracy))
            .collect()
    };
    let want: Vec<String> = [cells(&short.1), cells(&long.1)].concat();
    assert_eq!(cells(&merged), want);
    for l in [48, 96, 160] {
        let of = if l == 160 { &long.1 } else { &short.1 };
        assert_eq!(
            merged.length_accuracy(l),
            of.length_accuracy(l),
            "length {l}"
        );
    }
    let table = merged.table();
    assert!(table.contains("160") && table.contains("48"), "{table}");

    let again = run("again", vec![96], depths.clone());
    let err = grid::Report::merge(vec![load(&short), load(&again)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("again") && err.contains("96"), "{err}");
    let shallow = run("shallow", vec![200], vec![0.0, 1.0]);
    let err = grid::Report::merge(vec![load(&short), load(&shallow)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("shallow") && err.contains("depths"), "{err}");
}

/// Results of different weights never merge, even at the same step number: each records
/// a hash of the model's weights. Without hashes (older results) the checkpoint folder and
/// step must match. Messages show values, not Rust's `Some(..)`.
#[test]
fn merge_refuses_results_of_other_weights_at_the_same_step() {
    tch::manual_seed(5);
    let mut a = Engine::random(&tiny_drt(), Device::Cpu).unwrap();
    let mut b = Engine::random(&tiny_drt(), Device::Cpu).unwrap();
    a.checkpoint = Some(("runs/a/step-00000400".into(), 400));
    b.checkpoint = Some(("runs/b/step-00000400".into(), 400));
    a.weights_sha256 = Some("a".repeat(64));
    b.weights_sha256 = Some("b".repeat(64));
    let spec = spec(NiahTask::Passkey);
    let hay = Haystack::Random { lo: 30, hi: 60 };
    let dir = tempfile::tempdir().unwrap();
    let run = |engine: &Engine, name: &str, length: i64| {
        let out = dir.path().join(name);
        let opts = small_grid(vec![length], vec![0.5], 1, 4, &out);
        grid::run(engine, &spec, &hay, &opts).unwrap();
        let p = out.join("results.json");
        (p.clone(), grid::Report::load(&p).unwrap())
    };
    // The merge's error, which shows no `Some(`.
    let merge_err = |reports: Vec<(std::path::PathBuf, grid::Report)>| {
        let err = grid::Report::merge(reports).unwrap_err().to_string();
        assert!(!err.contains("Some("), "{err}");
        err
    };
    let err = merge_err(vec![run(&a, "a", 48), run(&b, "b", 96)]);
    assert!(
        err.contains("other model weights") && err.contains("bbbbbbbbbbbb"),
        "{err}"
    );
    // The same weights from another folder (an export of that checkpoint) merge.
    let mut a2 = Engine::random(&tiny_drt(), Device::Cpu).unwrap();
    a2.checkpoint = Some(("models/a".into(), 400));
    a2.weights_sha256 = a.weights_sha256.clone();
    let merged = grid::Report::merge(vec![run(&a, "a", 48), run(&a2, "a2", 96)]).unwrap();
    assert_eq!(merged.lengths, [48, 96]);
    // Results without a hash: the step and the checkpoint folder decide.
    let (pa, mut ra) = run(&a, "a", 48);
    let (pb, mut rb) = run(&b, "b", 96);
    ra.weights_sha256 = None;
    rb.weights_sha256 = None;
    rb.step = Some(500);
    let err = merge_err(vec![(pa.clone(), ra), (pb.clone(), rb)]);
    assert!(
        err.contains("checkpoint step 500") && err.contains("has 400"),
        "{err}"
    );
}

/// The grid sweeps what a killed run left of its results.json writes, and a heatmap that
/// cannot be written leaves no temporary behind.
#[test]
fn eval_leaves_no_temporaries() {
    tch::manual_seed(6);
    let engine = Engine::random(&tiny_drt(), Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    // No process has pid 999999999 (above Linux's pid_max).
    let stale = out.path().join(".results.json.tmp-999999999");
    std::fs::write(&stale, b"{").unwrap();
    let opts = small_grid(vec![48], vec![0.5], 1, 1, out.path());
    let report = grid::run(
        &engine,
        &spec(NiahTask::Passkey),
        &Haystack::Random { lo: 30, hi: 60 },
        &opts,
    )
    .unwrap();
    assert!(!stale.exists());
    let folder = out.path().join("heatmap.png");
    std::fs::create_dir(&folder).unwrap();
    let err = lcm::report::heatmap::draw(&report, &folder)
        .unwrap_err()
        .to_string();
    assert!(err.contains("heatmap.png"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["heatmap.png", "results.json"]);
}
