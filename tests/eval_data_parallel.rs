//! `lcm eval niah` (teacher-forced and scored by generation) and `lcm eval ppl` under a
//! launch of 2 ranks (Gloo, CPU): each rank runs its share of the samples, rank 0 writes the
//! merged result, and it equals a one-process run with the same seed, sample for sample.

mod run_util;

use std::path::{Path, PathBuf};

use lcm::data::indexed::IndexedWriter;
use lcm::data::TokenDtype;
use run_util::{launch2, lcm, ok, tiny_config, write_config};
use serde_json::{json, Value};

/// A tiny DRT trained 2 steps on random ids with passkey rows.
fn checkpoint(dir: &Path) -> String {
    let run = dir.join("run");
    let file = write_config(dir, "cfg", &tiny_config(&run, 2, true));
    ok(lcm(&["pretrain", "--config", file.to_str().unwrap()]));
    run.to_str().unwrap().to_string()
}

fn samples(out: &Path) -> Vec<Value> {
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            // Timings differ between runs; everything else must not.
            json!([
                s["length"],
                s["depth"],
                s["sample"],
                s["seed"],
                s["fact_position"],
                s["answer"],
                s["prediction"],
                s["hit"],
                s["generated"]
            ])
        })
        .collect()
}

/// `eval KIND --checkpoint RUN --len 112,224 --device cpu --quiet EXTRA...`
fn eval_args(kind: &str, run: &str, extra: &[&str]) -> Vec<String> {
    let args = ["eval", kind, "--checkpoint", run, "--len", "112,224"];
    [&args[..], &["--device", "cpu", "--quiet"], extra]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
}

/// The NIAH grid of one process and of two ranks (with `flags` after the shared ones): the
/// folders' sample lists, asserted equal and merged on rank 0, with the two-rank folder.
fn niah_one_and_two(flags: &[&str]) -> (Vec<Value>, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let run = checkpoint(dir.path());
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    let grid = |out: &Path| {
        let mut extra = vec!["--depths", "0,1", "--samples", "3"];
        extra.extend_from_slice(flags);
        extra.extend(["--out", out.to_str().unwrap()]);
        eval_args("niah", &run, &extra)
    };
    ok(lcm(&grid(&one)));
    let text = launch2(&grid(&two));
    assert!(
        text.contains("2 ranks: the grid's samples merged on rank 0"),
        "{text}"
    );
    let (a, b) = (samples(&one), samples(&two));
    assert_eq!(a.len(), 2 * 2 * 3);
    assert_eq!(a, b);
    (b, two, dir)
}

#[test]
fn niah_on_two_ranks_equals_one_process_sample_for_sample() {
    niah_one_and_two(&["--batch", "2"]);
}

/// The same under `--score generate`: each rank generates for its own samples, and rank 0
/// writes every sample's generated ids and the scoring.
#[test]
fn niah_scored_by_generation_on_two_ranks_equals_one_process() {
    let (b, two, _dir) = niah_one_and_two(&["--score", "generate", "--slack", "3"]);
    for s in &b {
        // [.., answer, prediction, hit, generated]: the answer's 2 ids and the slack's 3.
        assert_eq!(s[8].as_array().unwrap().len(), 2 + 3, "{s}");
    }
    let v: Value =
        serde_json::from_slice(&std::fs::read(two.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        (v["scoring"].as_str(), v["slack"].as_u64()),
        (Some("generate"), Some(3))
    );
}

#[test]
fn ppl_on_two_ranks_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let run = checkpoint(dir.path());
    let prefix = dir.path().join("text");
    let mut w = IndexedWriter::create(&prefix, TokenDtype::Uint16).unwrap();
    for d in 0..20u32 {
        w.add_document(&(0..50).map(|i| 10 + (i * 7 + d) % 50).collect::<Vec<u32>>())
            .unwrap();
    }
    w.finish().unwrap();
    let json1 = dir.path().join("one.json");
    let json2 = dir.path().join("two.json");
    let args = |json: &Path| {
        let (corpus, json) = (prefix.to_str().unwrap(), json.to_str().unwrap());
        eval_args(
            "ppl",
            &run,
            &["--corpus", corpus, "--samples", "5", "--json", json],
        )
    };
    ok(lcm(&args(&json1)));
    launch2(&args(&json2));
    let rows =
        |p: &Path| -> Vec<Value> { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let (r1, r2) = (rows(&json1), rows(&json2));
    assert_eq!(r1.len(), 2);
    for (x, y) in r1.iter().zip(&r2) {
        assert_eq!(x["samples"], y["samples"]);
        assert_eq!(x["tokens"], y["tokens"]);
        // The same per-window sums, added in another order: fp64.
        let (lx, ly) = (
            x["log_loss"].as_f64().unwrap(),
            y["log_loss"].as_f64().unwrap(),
        );
        assert!((lx - ly).abs() <= 1e-9, "{lx} vs {ly}");
    }
}
