//! RULER's harder tasks, as NIAH samples, as synthetic training rows and through
//! `lcm eval niah`: multi-query NIAH (`mq-niah`, `multi_query`: N needles with distinct
//! names, one in each N-th of the haystack, all asked, the answer their keys in the order
//! asked) and variable tracking with distractor chains (`vt`, `variable_tracking` with
//! `chains`: the asked chain resolves to the key, the distractors to other keys); per-part
//! scores in results.json, which merge only with results of the same counts.

mod run_util;

use std::collections::BTreeMap;

use lcm::data::synthetic::{PasskeyConfig, Task};
use lcm::eval::niah::{build_sample, score, Haystack, NiahTask, Sample, TaskArgs, TaskSpec};
use lcm::util::SplitMix64;
use run_util::{lcm, ok, tiny_config, write_config};
use serde_json::{json, Value};

/// Needle [1, 2], question [3, 4, 5], names and keys of 3 ids in [10, 20).
fn facts() -> PasskeyConfig {
    PasskeyConfig::passkey(3, (10, 20), vec![1, 2], vec![3, 4, 5])
}

fn spec(task: NiahTask, args: TaskArgs) -> TaskSpec {
    TaskSpec::new(task, Some(&facts()), args, 64, None).unwrap()
}

/// Planted facts `needle name value` (needle [1, 2], 3-id names) as (name, value, position).
fn planted(tokens: &[u32]) -> Vec<(Vec<u32>, Vec<u32>, usize)> {
    (0..tokens.len() - 8)
        .filter(|&p| tokens[p..p + 2] == [1, 2])
        .map(|p| {
            (
                tokens[p + 2..p + 5].to_vec(),
                tokens[p + 5..p + 8].to_vec(),
                p,
            )
        })
        .collect()
}

#[test]
fn mq_niah_spreads_distinct_needles_and_asks_them_all_in_order() {
    let hay = Haystack::Random { lo: 30, hi: 60 };
    for n in [2, 4] {
        let args = TaskArgs {
            queries: n,
            ..TaskArgs::default()
        };
        let spec = spec(NiahTask::MqNiah, args);
        assert_eq!(spec.args(), BTreeMap::from([("queries".to_string(), n)]));
        for depth in [0.0, 0.3, 0.5, 1.0] {
            for seed in 0..10 {
                let mut rng = SplitMix64::new(seed);
                let s = build_sample(&spec, 400, depth, &hay, &mut rng).unwrap();
                let f = planted(&s.tokens);
                assert_eq!(f.len(), n, "{n} needles planted");
                assert_eq!(s.fact_positions.len(), n);
                let mut names: Vec<_> = f.iter().map(|x| x.0.clone()).collect();
                names.sort();
                names.dedup();
                assert_eq!(names.len(), n, "names differ");
                // The question lists needle i's name at i, the answer its key at i.
                let asked = &s.tokens[s.answer_start - 3 * n..s.answer_start];
                assert_eq!(&s.tokens[s.answer_start - 3 * n - 3..][..3], &[3, 4, 5]);
                assert_eq!(s.answer.len(), 3 * n);
                assert_eq!(s.parts, n);
                for (i, &p) in s.fact_positions.iter().enumerate() {
                    let (name, value, _) = f.iter().find(|x| x.2 == p).expect("needle at i");
                    assert_eq!(&asked[3 * i..3 * i + 3], name.as_slice());
                    assert_eq!(&s.answer[3 * i..3 * i + 3], value.as_slice());
                }
                // Haystack offsets: the first asked at the depth, one needle per N-th.
                let h = 400 - 3 - 6 * n - 8 * n;
                let offset = |i: usize| {
                    let p = s.fact_positions[i];
                    p - 8 * s.fact_positions.iter().filter(|&&q| q < p).count()
                };
                assert_eq!(offset(0), (depth * h as f64).round() as usize);
                let stratum = |o: usize| (0..n).rposition(|k| k * h / n <= o).unwrap();
                let mut strata: Vec<usize> = (0..n).map(|i| stratum(offset(i))).collect();
                strata.sort();
                strata.dedup();
                assert_eq!(strata.len(), n, "depth {depth} seed {seed}: one per N-th");
            }
        }
    }
}

/// Follows `key` back through `facts`: the names holding it, in chain order.
fn holders(facts: &[(Vec<u32>, Vec<u32>, usize)], key: &[u32]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = vec![];
    let mut value = key.to_vec();
    while let Some(f) = facts.iter().find(|f| f.1 == value) {
        if let Some(prev) = facts.iter().find(|g| g.0 == value) {
            assert!(prev.2 < f.2, "a chain's facts sit in order");
        }
        out.push(f.0.clone());
        value = f.0.clone();
    }
    out
}

/// The key a fact's chain ends at.
fn root(facts: &[(Vec<u32>, Vec<u32>, usize)], name: &[u32]) -> Vec<u32> {
    let mut v = name.to_vec();
    while let Some(f) = facts.iter().find(|f| f.0 == v) {
        v = f.1.clone();
    }
    v
}

#[test]
fn vt_chains_resolve_to_the_asked_key_and_distractors_do_not() {
    let hay = Haystack::Random { lo: 30, hi: 60 };
    let args = TaskArgs {
        hops: 2,
        chains: 3,
        ..TaskArgs::default()
    };
    let spec = spec(NiahTask::Vt, args);
    let want_args = [("chains".to_string(), 3), ("hops".to_string(), 2)];
    assert_eq!(spec.args(), BTreeMap::from(want_args));
    for depth in [0.0, 0.5, 1.0] {
        for seed in 0..10 {
            let mut rng = SplitMix64::new(seed);
            let s: Sample = build_sample(&spec, 300, depth, &hay, &mut rng).unwrap();
            let f = planted(&s.tokens);
            assert_eq!(f.len(), 9, "3 chains of 3 assignments");
            let key = &s.tokens[s.answer_start - 3..s.answer_start];
            let chain = holders(&f, key);
            assert_eq!(chain.len(), 3, "the key's chain: hops + 1 names");
            assert_eq!(s.answer, chain.concat(), "the answer is the chain's names");
            assert_eq!(s.fact_position, f.iter().find(|x| x.1 == key).unwrap().2);
            if depth == 0.0 {
                assert_eq!(s.fact_position, 0);
            }
            // Every other fact ends at another key.
            let others: Vec<_> = f.iter().filter(|x| !chain.contains(&x.0)).collect();
            assert_eq!(others.len(), 6);
            for o in others {
                let r = root(&f, &o.0);
                assert_ne!(r, key, "a distractor resolves to its own key");
                assert_eq!(holders(&f, &r).len(), 3);
            }
        }
    }
    // Per-part scores: one wrong name of three.
    let mut rng = SplitMix64::new(1);
    let s = build_sample(&spec, 300, 0.5, &hay, &mut rng).unwrap();
    let mut pred = s.answer.clone();
    pred[4] = 0;
    let sc = score(&spec, &s, pred);
    assert!(!sc.hit);
    assert_eq!(sc.part_hits, [true, false, true]);
    assert!(score(&spec, &s, s.answer.clone())
        .part_hits
        .iter()
        .all(|&h| h));
}

/// A 80-token row (haystack id 50) of `cfg`: window, no-loss flags, answer flags.
fn row(cfg: &PasskeyConfig, seed: u64) -> (Vec<u32>, Vec<bool>, Vec<bool>) {
    let mut rng = SplitMix64::new(seed);
    let mut window = vec![50u32; 81];
    let (mut ignore, mut answer) = (vec![false; 80], vec![false; 80]);
    cfg.insert(&mut window, &mut ignore, &mut answer, &mut rng);
    (window, ignore, answer)
}

#[test]
fn multi_query_rows_ask_every_needle_in_a_shuffled_order() {
    let cfg = PasskeyConfig {
        task: Task::MultiQuery,
        n_keys: 3,
        ..facts()
    };
    cfg.validate(80, 64).unwrap();
    let mut orders = std::collections::HashSet::new();
    for seed in 0..60 {
        let (w, ignore, answer) = row(&cfg, seed);
        let f = planted(&w);
        assert_eq!(f.len(), 3);
        let (asked, keys) = (&w[81 - 18..81 - 9], &w[81 - 9..]);
        assert_eq!(&w[81 - 21..81 - 18], &[3, 4, 5]);
        let mut order = vec![];
        for i in 0..3 {
            let k = f
                .iter()
                .position(|x| x.0 == asked[3 * i..3 * i + 3])
                .unwrap();
            assert_eq!(f[k].1, &keys[3 * i..3 * i + 3], "key {i} answers name {i}");
            assert!((f[k].2 + 1..f[k].2 + 7).all(|j| ignore[j]));
            order.push(k);
        }
        orders.insert(order);
        assert_eq!(answer.iter().filter(|&&a| a).count(), 9);
        assert!(answer[80 - 9..].iter().all(|&a| a));
    }
    assert_eq!(orders.len(), 6, "every placement order of 3 needles drawn");
}

#[test]
fn variable_tracking_rows_interleave_distractor_chains() {
    let cfg = PasskeyConfig {
        task: Task::VariableTracking,
        n_keys: 3,
        chains: 2,
        ..facts()
    };
    cfg.validate(80, 64).unwrap();
    let mut interleaved = 0;
    for seed in 0..60 {
        let (w, _, answer) = row(&cfg, seed);
        let f = planted(&w);
        assert_eq!(f.len(), 6);
        let key = &w[81 - 12..81 - 9];
        let chain = holders(&f, key);
        assert_eq!(
            chain.concat(),
            &w[81 - 9..],
            "the answer is the key's chain"
        );
        assert_eq!(answer.iter().filter(|&&a| a).count(), 9);
        let mut by_place = f.clone();
        by_place.sort_by_key(|x| x.2);
        let asked: Vec<bool> = by_place.iter().map(|x| chain.contains(&x.0)).collect();
        interleaved += usize::from(asked.windows(2).filter(|p| p[0] != p[1]).count() > 1);
    }
    assert!(
        interleaved > 10,
        "chains interleave ({interleaved} of 60 rows)"
    );
}

/// Bad counts, each named by its key: (task, n_keys, chains, the key, why).
const BAD_COUNTS: [(Task, usize, usize, &str, &str); 4] = [
    (Task::MultiKey, 2, 2, "chains", "only vt has chains"),
    (Task::VariableTracking, 2, 0, "chains", "no chain"),
    // 1000 possible names: 2 x 400 needles' names and keys cannot all differ.
    (Task::MultiQuery, 400, 1, "n_keys", "too many names"),
    // 3 chains of 3 facts do not fit 80 tokens.
    (Task::VariableTracking, 3, 3, "min_gap", "over seq_len"),
];

#[test]
fn synthetic_task_counts_are_validated_by_key() {
    for (task, n_keys, chains, key, why) in BAD_COUNTS {
        let cfg = PasskeyConfig {
            task,
            n_keys,
            chains,
            ..facts()
        };
        let e = cfg.validate(80, 64).unwrap_err().to_string();
        assert!(e.contains(&format!("data.synthetic.{key}")), "{why}: {e}");
    }
    // The training config's JSON names the key too.
    let dir = tempfile::tempdir().unwrap();
    let mut v = tiny_config(&dir.path().join("run"), 1, true);
    v["data"]["synthetic"]["task"] = json!("multi_key");
    v["data"]["synthetic"]["chains"] = json!(2);
    let e = lcm::train::TrainConfig::from_json(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.synthetic.chains"), "{e}");
    // The eval's counts are checked against the checkpoint's key range, not drawn forever.
    let args = TaskArgs {
        queries: 600,
        ..TaskArgs::default()
    };
    let e = TaskSpec::new(NiahTask::MqNiah, Some(&facts()), args, 64, None).unwrap_err();
    assert!(e.to_string().contains("mq-niah (queries 600)"), "{e}");
}

fn results(out: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

/// A tiny DRT trained 2 steps with multi-query rows, evaluated through the binary on mq-niah
/// and vt: results.json records the counts, per-part hits and per-cell part accuracy; runs
/// with other counts, or results without counts, do not merge with them.
#[test]
fn eval_niah_runs_mq_niah_and_vt_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut v = tiny_config(&run, 2, true);
    v["data"]["synthetic"]["task"] = json!("multi_query");
    v["data"]["synthetic"]["n_keys"] = json!(2);
    let file = write_config(dir.path(), "cfg", &v);
    ok(lcm(&["pretrain", "--config", file.to_str().unwrap()]));
    let r = run.to_str().unwrap();
    let eval = |name: &str, len: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let base = [
            "eval",
            "niah",
            "--checkpoint",
            r,
            "--len",
            len,
            "--depths",
            "0,1",
        ];
        let rest = ["--samples", "2", "--device", "cpu", "--quiet", "--out"];
        let args = [&base[..], &rest, &[out.to_str().unwrap()], extra].concat();
        (out.clone(), ok(lcm(&args)))
    };
    let (mq, text) = eval("mq", "112", &["--task", "mq-niah", "--queries", "2"]);
    assert!(
        text.contains("per part") && text.contains("mq-niah (queries 2)"),
        "{text}"
    );
    let j = results(&mq);
    assert_eq!(j["task"], "mq-niah");
    assert_eq!(j["task_args"], json!({"queries": 2}));
    for s in j["samples"].as_array().unwrap() {
        assert_eq!(s["part_hits"].as_array().unwrap().len(), 2);
        assert_eq!(s["answer"].as_array().unwrap().len(), 4);
    }
    for c in j["cells"].as_array().unwrap() {
        assert!((0.0..=1.0).contains(&c["part_accuracy"].as_f64().unwrap()));
    }
    let (vt, _) = eval(
        "vt",
        "112",
        &["--task", "vt", "--hops", "2", "--chains", "2"],
    );
    let j = results(&vt);
    assert_eq!(j["task"], "vt");
    assert_eq!(j["task_args"], json!({"hops": 2, "chains": 2}));
    for s in j["samples"].as_array().unwrap() {
        assert_eq!(s["part_hits"].as_array().unwrap().len(), 3);
    }
    // Merging: the same counts merge, other counts are named, and so are older results
    // (no counts recorded, no per-part fields), which still load.
    let (mq4, _) = eval("mq4", "224", &["--task", "mq-niah", "--queries", "4"]);
    let (mq2, _) = eval("mq2", "224", &["--task", "mq-niah", "--queries", "2"]);
    let merge = |a: &std::path::Path, b: &std::path::Path| {
        let out = dir.path().join("merged");
        let args = [
            "eval",
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--out",
        ];
        lcm(&[&args[..], &[out.to_str().unwrap()]].concat())
    };
    let text = ok(merge(&mq.join("results.json"), &mq2.join("results.json")));
    assert!(text.contains("per part"), "{text}");
    let out = merge(&mq.join("results.json"), &mq4.join("results.json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("task counts queries 4"),
        "{err}"
    );
    let mut old = results(&mq2);
    old.as_object_mut().unwrap().remove("task_args");
    for s in old["samples"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("part_hits");
    }
    for c in old["cells"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("part_accuracy");
    }
    let old_file = dir.path().join("old.json");
    std::fs::write(&old_file, serde_json::to_vec(&old).unwrap()).unwrap();
    assert!(lcm::eval::grid::Report::load(&old_file).is_ok());
    let out = merge(&mq.join("results.json"), &old_file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("none recorded"),
        "{err}"
    );
}
