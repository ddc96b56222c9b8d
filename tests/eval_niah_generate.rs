//! `lcm eval niah --score generate`: the grid scored by free-running greedy generation, as
//! RULER scores. On a tiny DRT trained on passkey rows: each sample's generated ids are the
//! greedy continuation the full forward gives after the question, token for token, and a
//! sample (or a part of a multi-part answer) is a hit exactly when its ids occur in them as
//! a contiguous run; a teacher-forced hit is always a hit by generation; results.json
//! records the scoring, the slack and the generated ids (older results still load as
//! teacher-forced, and the two scorings never merge); bad combinations are refused with a
//! clear error.

mod run_util;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use lcm::data::synthetic::PasskeyConfig;
use lcm::eval::grid::{self, GridOptions, Report};
use lcm::eval::niah::{
    build_sample, score_generated, Haystack, NiahTask, Scoring, TaskArgs, TaskSpec,
};
use lcm::eval::{Engine, PrefillOptions};
use lcm::model::Placement;
use lcm::train::{train, TrainConfig, TrainOptions};
use lcm::util::SplitMix64;
use run_util::{lcm, tiny_config};
use serde_json::{json, Value};
use tch::{Device, Tensor};

/// Ids past the answer's length every test generates.
const SLACK: usize = 5;

/// A tiny DRT (chunks of 7, ids < 65, landmark 64) trained on passkey rows only: a 2-id key
/// from [2, 5) after the needle [1, 1], asked by [0, 0], in random ids from [10, 64). Its
/// guesses are often right and often not, so a grid holds hits and misses.
fn trained() -> &'static (tempfile::TempDir, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut v = tiny_config(&run, 400, true);
        v["data"]["synthetic"]["rate"] = json!(1.0);
        v["data"]["synthetic"]["key_hi"] = json!(5);
        v["data"]["synthetic"]["min_gap"] = json!(10);
        v["optim"]["lr"] = json!(1e-2);
        v["log"]["every"] = json!(100);
        let cfg = TrainConfig::from_json(v).unwrap();
        let t0 = Instant::now();
        train(&cfg, &TrainOptions::default()).unwrap();
        eprintln!("trained in {:.1}s", t0.elapsed().as_secs_f64());
        (dir, run)
    })
}

fn engine() -> Engine {
    tch::set_num_threads(1);
    Engine::load(&trained().1, Device::Cpu).unwrap()
}

fn spec(engine: &Engine, task: NiahTask, args: TaskArgs) -> TaskSpec {
    let trained = engine.train.as_ref().unwrap().data.synthetic.as_ref();
    TaskSpec::new(task, trained, args, engine.config().vocab_size, None).unwrap()
}

const HAY: Haystack = Haystack::Random { lo: 10, hi: 64 };

fn options(scoring: Scoring, samples: usize, out: &Path) -> GridOptions {
    GridOptions {
        lengths: vec![56, 112],
        depths: vec![0.0, 0.5, 1.0],
        samples,
        batch: 1,
        seed: 3,
        prefill: PrefillOptions {
            segment: 14, // 2 chunks: the prompt is prefilled in several segments
            placement: Placement::Device,
        },
        out: out.to_path_buf(),
        progress: false,
        part: Default::default(),
        scoring,
        slack: SLACK,
    }
}

/// The full forward's logits `(T, V)` over `ids`, padded at the end to whole chunks (the
/// padding comes after every position read).
fn full_logits(engine: &Engine, ids: &[i64]) -> Tensor {
    let m = engine.model.length_multiple() as usize;
    let mut padded = ids.to_vec();
    padded.resize(ids.len().div_ceil(m) * m, 10);
    let x = Tensor::from_slice(&padded).view([1, -1]);
    let logits = tch::no_grad(|| engine.model.forward(&x, false));
    logits.get(0).narrow(0, 0, ids.len() as i64)
}

/// Greedy generation by the full forward alone: `n` times, the argmax (DRT's landmark id
/// left out: it is no text) of the last position's logits over everything so far.
fn reference_generation(engine: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let landmark = engine.config().drt.as_ref().unwrap().landmark_id;
    let mut ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    for _ in 0..n {
        let last = full_logits(engine, &ids).get(ids.len() as i64 - 1);
        let _ = last.get(landmark).fill_(f64::NEG_INFINITY);
        ids.push(last.argmax(0, false).int64_value(&[]));
    }
    ids[prompt.len()..].iter().map(|&t| t as u32).collect()
}

/// The full forward's argmax at each answer position of `tokens` (teacher-forced).
fn reference_prediction(engine: &Engine, tokens: &[u32], answer_start: usize) -> Vec<u32> {
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let logits = full_logits(engine, &ids);
    let n = (tokens.len() - answer_start) as i64;
    let at = logits.narrow(0, answer_start as i64 - 1, n);
    let pred: Vec<i64> = Vec::try_from(at.argmax(-1, false).view([-1])).unwrap();
    pred.into_iter().map(|p| p as u32).collect()
}

/// Whether `needle` occurs in `ids` as a contiguous run, written out plainly.
fn occurs(ids: &[u32], needle: &[u32]) -> bool {
    (0..=ids.len().saturating_sub(needle.len()))
        .any(|i| ids.len() >= needle.len() && (0..needle.len()).all(|j| ids[i + j] == needle[j]))
}

/// Containment by hand: the answer anywhere in the generated ids, whole and contiguous, is
/// a hit (after other ids too); split, reordered or cut short it is not; each part of a
/// multi-part answer is found on its own, in any order. The prediction and the single-token
/// score stay the teacher-forced ones.
#[test]
fn containment_scores_the_answer_anywhere_in_the_generated_ids() {
    let facts = PasskeyConfig::passkey(2, (10, 20), vec![1, 2], vec![3, 4]);
    let args = TaskArgs {
        queries: 2,
        ..TaskArgs::default()
    };
    let hay = Haystack::Random { lo: 30, hi: 60 };
    let passkey = TaskSpec::new(NiahTask::Passkey, Some(&facts), args, 64, None).unwrap();
    let s = build_sample(&passkey, 40, 0.5, &hay, &mut SplitMix64::new(1)).unwrap();
    let (a, b) = (s.answer[0], s.answer[1]);
    assert_ne!(
        a, b,
        "a key of two different ids (else reordered is the same)"
    );
    let wrong = if a == 10 { 11 } else { 10 };
    for (generated, hit) in [
        (vec![a, b, 7, 7], true),
        (vec![7, 7, 7, a, b], true),
        (vec![a, 7, b, 7], false),
        (vec![b, a, 7], false),
        (vec![7, 7, a], false),
        (vec![wrong, b, a, b], true),
    ] {
        let sc = score_generated(&passkey, &s, vec![wrong, b], &generated);
        assert_eq!(sc.hit, hit, "{generated:?} for answer {:?}", s.answer);
        assert_eq!(sc.prediction, [wrong, b], "teacher-forced prediction kept");
        assert!(!sc.single_token_hit, "the first answer id, teacher-forced");
        assert!(sc.part_hits.is_empty());
    }
    let mq = TaskSpec::new(NiahTask::MqNiah, Some(&facts), args, 64, None).unwrap();
    let s = build_sample(&mq, 60, 0.5, &hay, &mut SplitMix64::new(2)).unwrap();
    let (k0, k1) = (&s.answer[..2], &s.answer[2..]);
    for (generated, hit, parts) in [
        ([k0, k1].concat(), true, [true, true]),
        ([&[7][..], k1, k0].concat(), false, [true, true]),
        ([k1, &[7, 7]].concat(), false, [false, true]),
        ([&k0[..1], &[7], &k0[1..]].concat(), false, [false, false]),
    ] {
        let sc = score_generated(&mq, &s, s.answer.clone(), &generated);
        assert_eq!(
            (sc.hit, sc.part_hits.as_slice()),
            (hit, &parts[..]),
            "{generated:?} for answer {:?}",
            s.answer
        );
    }
}

/// Every sample of a grid scored by generation, for passkey, mq-niah (2 parts) and vt
/// (2 parts), against the full forward: the generated ids are its greedy continuation after
/// the question, the prediction its teacher-forced argmax, and `hit` / `part_hits` are the
/// containment of the answer / of each part in the generated ids.
#[test]
fn generation_hits_are_containment_in_the_full_forwards_greedy_ids() {
    let engine = engine();
    let tasks = [
        (NiahTask::Passkey, TaskArgs::default(), 4),
        (
            NiahTask::MqNiah,
            TaskArgs {
                queries: 2,
                ..TaskArgs::default()
            },
            2,
        ),
        (
            NiahTask::Vt,
            TaskArgs {
                hops: 1,
                chains: 1,
                ..TaskArgs::default()
            },
            2,
        ),
    ];
    let (mut hits, mut misses, mut late) = (0, 0, 0);
    for (task, args, samples) in tasks {
        let spec = spec(&engine, task, args);
        let out = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let report = grid::run(
            &engine,
            &spec,
            &HAY,
            &options(Scoring::Generate, samples, out.path()),
        )
        .unwrap();
        eprintln!(
            "{}: {} samples in {:.1}s",
            task.name(),
            report.samples.len(),
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(report.samples.len(), 2 * 3 * samples);
        for r in &report.samples {
            let mut rng = SplitMix64::new(r.seed);
            let s = build_sample(&spec, r.used_length as usize, r.depth, &HAY, &mut rng).unwrap();
            let tag = format!("{} length {} depth {}", task.name(), r.length, r.depth);
            let want =
                reference_generation(&engine, &s.tokens[..s.answer_start], s.answer.len() + SLACK);
            assert_eq!(r.generated, want, "{tag}: generated ids");
            assert_eq!(
                r.prediction,
                reference_prediction(&engine, &s.tokens, s.answer_start),
                "{tag}: teacher-forced prediction"
            );
            assert_eq!(r.hit, occurs(&want, &s.answer), "{tag}: {r:?}");
            if s.parts > 1 {
                let len = s.answer.len() / s.parts;
                let parts: Vec<bool> = s.answer.chunks(len).map(|p| occurs(&want, p)).collect();
                assert_eq!(r.part_hits, parts, "{tag}: part hits");
            } else {
                assert!(r.part_hits.is_empty());
            }
            match r.hit {
                true => hits += 1,
                false => misses += 1,
            }
            late += usize::from(r.hit && !want.starts_with(&s.answer));
        }
    }
    eprintln!("{hits} hits ({late} not at the start), {misses} misses");
    assert!(hits > 0 && misses > 0, "{hits} hits, {misses} misses");
}

/// Teacher-forced and generation grids over the same samples: every teacher-forced hit is
/// a hit by generation (greedy generation writes the answer when each of its tokens is the
/// argmax), and both read the same teacher-forced predictions.
#[test]
fn teacher_forced_hits_are_generation_hits() {
    let engine = engine();
    let spec = spec(&engine, NiahTask::Passkey, TaskArgs::default());
    let dir = tempfile::tempdir().unwrap();
    let run = |scoring: Scoring| {
        let out = dir.path().join(scoring.name());
        let t0 = Instant::now();
        let report = grid::run(&engine, &spec, &HAY, &options(scoring, 10, &out)).unwrap();
        eprintln!("{}: {:.1}s", scoring.name(), t0.elapsed().as_secs_f64());
        report
    };
    let (forced, generated) = (run(Scoring::TeacherForced), run(Scoring::Generate));
    assert_eq!(forced.samples.len(), 60);
    let mut forced_hits = 0;
    for (f, g) in forced.samples.iter().zip(&generated.samples) {
        assert_eq!((f.length, f.depth, f.seed), (g.length, g.depth, g.seed));
        assert_eq!(f.answer, g.answer);
        assert_eq!(f.prediction, g.prediction, "seed {}", f.seed);
        assert_eq!(f.single_token_hit, g.single_token_hit);
        if f.hit {
            forced_hits += 1;
            assert!(g.hit, "a teacher-forced hit missed by generation: {g:?}");
            assert!(g.generated.starts_with(&g.answer), "{g:?}");
        }
    }
    let gen_hits = generated.samples.iter().filter(|s| s.hit).count();
    eprintln!("teacher-forced hits {forced_hits}, generation hits {gen_hits} of 60");
    assert!(
        forced_hits > 0,
        "no teacher-forced hit: the check would be empty"
    );
    assert!(gen_hits >= forced_hits);
    // The generation table shows the teacher-forced score of the same samples beside it.
    let table = generated.table();
    assert!(table.contains("teacher-forced"), "{table}");
    assert!(!forced.table().contains("teacher-forced"));
}

fn results(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

/// results.json says how it was scored, with the slack and each sample's generated ids;
/// results without a scoring (written before lcm recorded it) load as teacher-forced; the
/// two scorings never merge.
#[test]
fn results_record_the_scoring_and_the_generated_ids() {
    let engine = engine();
    let spec = spec(&engine, NiahTask::Passkey, TaskArgs::default());
    let dir = tempfile::tempdir().unwrap();
    let (gen_dir, forced_dir) = (dir.path().join("gen"), dir.path().join("forced"));
    let mut opts = options(Scoring::Generate, 1, &gen_dir);
    opts.lengths = vec![56];
    grid::run(&engine, &spec, &HAY, &opts).unwrap();
    let j = results(&gen_dir);
    assert_eq!(j["scoring"], "generate");
    assert_eq!(j["slack"], SLACK);
    let samples = j["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    for s in samples {
        let generated = s["generated"].as_array().unwrap();
        assert_eq!(generated.len(), 2 + SLACK, "{s}");
        assert!(s["prediction"].as_array().unwrap().len() == 2);
    }
    lcm::report::heatmap::draw(
        &Report::load(&gen_dir.join("results.json")).unwrap(),
        &gen_dir.join("heatmap.png"),
    )
    .unwrap();

    let mut opts = options(Scoring::TeacherForced, 1, &forced_dir);
    opts.lengths = vec![112];
    grid::run(&engine, &spec, &HAY, &opts).unwrap();
    let j = results(&forced_dir);
    assert_eq!(j["scoring"], "teacher-forced");
    assert!(j.get("slack").is_none());
    assert!(j["samples"][0].get("generated").is_none());

    // Older results: no scoring recorded.
    let mut old = j.clone();
    old.as_object_mut().unwrap().remove("scoring");
    let old_file = dir.path().join("old.json");
    std::fs::write(&old_file, serde_json::to_vec(&old).unwrap()).unwrap();
    let loaded = Report::load(&old_file).unwrap();
    assert_eq!(loaded.scoring, Scoring::TeacherForced);

    let load = |p: PathBuf| (p.clone(), Report::load(&p).unwrap());
    let err = Report::merge(vec![
        load(gen_dir.join("results.json")),
        load(forced_dir.join("results.json")),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("scoring teacher-forced")
            && err.contains(&format!("generate (slack {SLACK})")),
        "{err}"
    );
    // The old file merges with today's teacher-forced results of other lengths.
    let mut opts = options(Scoring::TeacherForced, 1, &dir.path().join("short"));
    opts.lengths = vec![56];
    grid::run(&engine, &spec, &HAY, &opts).unwrap();
    let merged = Report::merge(vec![
        load(dir.path().join("short/results.json")),
        (old_file.clone(), loaded),
    ]);
    assert_eq!(merged.unwrap().lengths, [56, 112]);
}

/// Combinations that cannot work are refused before any work, naming the flags: --slack
/// without --score generate, --score generate with --batch above 1 (also in the library),
/// an unknown scoring.
#[test]
fn bad_combinations_are_refused() {
    let engine = engine();
    let spec = spec(&engine, NiahTask::Passkey, TaskArgs::default());
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(Scoring::Generate, 2, out.path());
    opts.batch = 2;
    let err = grid::run(&engine, &spec, &HAY, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch 2") && err.contains("generation"),
        "{err}"
    );

    let run = trained().1.to_str().unwrap();
    let niah = |extra: &[&str]| {
        let base = [
            "eval",
            "niah",
            "--checkpoint",
            run,
            "--len",
            "56",
            "--device",
            "cpu",
        ];
        let o = lcm(&[&base[..], extra].concat());
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for (extra, want) in [
        (
            &["--slack", "4"][..],
            "--slack is for --score generate, not teacher-forced",
        ),
        (
            &["--score", "teacher-forced", "--slack", "0"],
            "--slack is for --score generate",
        ),
        (
            &["--score", "generate", "--batch", "2"],
            "--batch 2 with --score generate",
        ),
        (
            &["--score", "free"],
            "possible values: teacher-forced, generate",
        ),
    ] {
        let (ok, err) = niah(extra);
        assert!(!ok && err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // The same run with --score generate works through the binary.
    let dir = out.path().join("cli");
    let (ok, err) = niah(&[
        "--score",
        "generate",
        "--slack",
        "3",
        "--samples",
        "1",
        "--depths",
        "0.5",
        "--quiet",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("greedy generation contains the answer (slack 3)"),
        "{err}"
    );
    let j = results(&dir);
    assert_eq!(
        (j["scoring"].as_str(), j["slack"].as_u64()),
        (Some("generate"), Some(3))
    );
    assert_eq!(j["samples"][0]["generated"].as_array().unwrap().len(), 5);
}
