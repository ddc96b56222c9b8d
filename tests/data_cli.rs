//! `lcm preprocess pile` and `lcm corpus` through the binary, on the sample pile.

mod data_util;

use data_util::{lcm, preprocess, preprocess_args};

#[test]
fn preprocess_stats_and_cat_on_the_sample_pile() {
    let shard = data_util::sample_shard("test.jsonl.zst");
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("test");
    let p = prefix.to_str().unwrap();
    let (ok, out, err) = preprocess(&shard, &prefix, &["--workers", "2"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("tokens/s end to end"), "{out}");
    // Not a terminal: plain progress lines, no bar.
    assert!(err.contains("[preprocess] done:"), "{err}");

    let (ok, out, err) = lcm(&["corpus", "stats", p]);
    assert!(ok, "{err}");
    assert!(out.contains("Megatron/GPT-NeoX indexed"), "{out}");
    assert!(out.contains("pile_set_name"), "{out}");
    let (ok, out, _) = lcm(&["corpus", "stats", &format!("{p}.idx"), "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let docs = v["documents"].as_u64().unwrap();
    assert_eq!(v["docs_ending_with_eod"].as_u64().unwrap(), docs);

    // Document 0 decodes back to the first text of the shard (+ EOD).
    let texts = lcm::bench::tokenizer::load_texts(std::slice::from_ref(&shard)).unwrap();
    let (ok, out, err) = lcm(&["corpus", "cat", p, "--doc", "0"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}<|endoftext|>\n", texts[0]));
    let (ok, out, _) = lcm(&["corpus", "cat", p, "--doc", "0", "--ids"]);
    assert!(ok);
    assert_eq!(out.lines().last(), Some("0"));
    let (ok, _, err) = lcm(&["corpus", "cat", p, "--doc", &docs.to_string()]);
    assert!(!ok && err.contains("the corpus has"), "{err}");

    // Again: refused without --force, a no-op with --resume.
    let args = preprocess_args(&shard, &prefix);
    let (ok, _, err) = lcm(&args);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, out, err) = lcm(&[&args[..], &["--resume"]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("already complete"), "{out}");
}

#[test]
fn bad_input_exits_non_zero_naming_file_and_line() {
    let (dir, input) = data_util::temp_file(
        "bad.jsonl",
        b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\nnot json\n",
    );
    let prefix = dir.path().join("o");
    let (ok, _, err) = preprocess(&input, &prefix, &[]);
    assert!(!ok);
    assert!(err.contains(&format!("{}:3:", input.display())), "{err}");
    assert!(!prefix.with_extension("idx").exists());

    let (ok, _, err) = lcm(&[
        "corpus",
        "stats",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no corpus here"), "{err}");
}

#[test]
fn help_shows_examples() {
    for args in [
        &["preprocess", "pile", "--help"][..],
        &["corpus", "stats", "--help"],
        &["corpus", "cat", "--help"],
        &["bench", "tokenizer", "--help"],
    ] {
        let (ok, out, _) = lcm(args);
        assert!(ok && out.contains("Example"), "{args:?}: {out}");
    }
}

/// A config naming a model file that is not there: the error names the file, once, and the
/// OS reason once (not "x: No such file: No such file").
#[test]
fn a_missing_file_is_named_once() {
    let (dir, config) = data_util::temp_file(
        "run.json",
        br#"{"model": "models/nowhere.json", "data": {"random": {"lo": 1, "hi": 9}}}"#,
    );
    let (ok, _, err) = lcm(&["pretrain", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    let missing = dir.path().join("models/nowhere.json");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

/// Two `lcm preprocess` runs on one output prefix: the second is refused at once, naming
/// the prefix, the process that holds it and its lock, and writes nothing.
#[test]
fn a_second_preprocess_on_the_same_prefix_is_refused() {
    let (dir, input) = data_util::temp_file("a.jsonl", &data_util::jsonl(&data_util::docs()));
    let prefix = dir.path().join("out/c");
    let lock = lcm::data::preprocess::lock_path(&prefix);
    // This process stands for a run in progress.
    let held = lcm::lock::OutputLock::acquire(&lock, "test").unwrap();
    let args = preprocess_args(&input, &prefix);
    let (ok, _, err) = lcm(&args);
    assert!(!ok, "{err}");
    assert!(err.contains("in use by process"), "{err}");
    assert!(err.contains(&std::process::id().to_string()), "{err}");
    assert!(err.contains(prefix.to_str().unwrap()), "{err}");
    let names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [".c.lock"], "only the lock file");
    drop(held);
    let (ok, _, err) = lcm(&args);
    assert!(ok, "{err}");
}

/// Files whose name starts with `c.` beside prefix `c`, sorted.
fn beside(prefix: &std::path::Path) -> Vec<String> {
    let stem = prefix.file_name().unwrap().to_string_lossy().into_owned() + ".";
    let mut v: Vec<String> = std::fs::read_dir(prefix.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&stem))
        .collect();
    v.sort();
    v
}

/// A failed run leaves no temporary file; one that finished a shard first keeps what
/// `--resume` needs, says so, and goes on from there once the input is fixed.
#[test]
fn a_failed_preprocess_leaves_no_temporaries_unless_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("0.jsonl");
    let bad = dir.path().join("1.jsonl");
    data_util::write(&good, &data_util::jsonl(&data_util::docs()));
    data_util::write(&bad, b"{\"text\": \"ok\"}\nnot json\n");
    let prefix = dir.path().join("c");
    let run = |inputs: &[&std::path::Path], extra: &[&str]| {
        let mut args = vec!["preprocess", "pile", "--output", prefix.to_str().unwrap()];
        args.push("--input");
        args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
        args.extend(extra);
        lcm(&args)
    };
    // The only shard fails: nothing is left.
    let (ok, _, err) = run(&[&bad], &[]);
    assert!(!ok && err.contains(":2:"), "{err}");
    assert_eq!(beside(&prefix), Vec::<String>::new());
    // The second shard fails: the first is kept for --resume, and the message says so.
    let (ok, _, err) = run(&[&good, &bad], &[]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("--resume") && err.contains("c.resume.tmp"),
        "{err}"
    );
    assert!(beside(&prefix).contains(&"c.resume.tmp".to_string()));
    data_util::write(&bad, b"{\"text\": \"ok\"}\n{\"text\": \"fixed\"}\n");
    let (ok, out, err) = run(&[&good, &bad], &["--resume"]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote"), "{out}");
    assert_eq!(beside(&prefix), ["c.bin", "c.idx", "c.json"]);
    // A stale temporary of another format is swept by a fresh run.
    let stale = dir.path().join("c.data.tmp");
    data_util::write(&stale, b"xx");
    let (ok, _, err) = run(&[&good], &["--force"]);
    assert!(ok, "{err}");
    assert_eq!(beside(&prefix), ["c.bin", "c.idx", "c.json"]);
}

/// A directory of shards read again after a corpus was written into it: its `PREFIX.json`
/// (and any other plain .json) is no input; the rerun reads the same shard.
#[test]
fn a_directory_input_skips_json_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    data_util::write(
        &dir.path().join("a.jsonl"),
        &data_util::jsonl(&data_util::docs()),
    );
    data_util::write(&dir.path().join("MANIFEST.json"), b"{\"files\": 1}\n");
    let prefix = dir.path().join("c");
    for _ in 0..2 {
        let (ok, out, err) = preprocess(dir.path(), &prefix, &["--force"]);
        assert!(ok, "{out}\n{err}");
        assert!(err.contains("1 input files"), "{err}");
    }
    // Named on its own, a .json file is still an input (JSON lines by another name).
    let one = dir.path().join("one.json");
    data_util::write(&one, &data_util::jsonl(&data_util::docs()[..1]));
    let found = lcm::data::inputs::expand_inputs(&[one.to_str().unwrap().to_string()]).unwrap();
    assert_eq!(found, [one]);
}

/// The corpus knows its largest id: `PREFIX.json` records it, `corpus stats` reports it
/// (text and JSON), and both agree with the ids.
#[test]
fn preprocess_records_and_stats_report_the_largest_id() {
    let (dir, input) = data_util::temp_file("a.jsonl", &data_util::jsonl(&data_util::docs()));
    let prefix = dir.path().join("c");
    let p = prefix.to_str().unwrap();
    let (ok, _, err) = preprocess(&input, &prefix, &[]);
    assert!(ok, "{err}");
    let corpus = lcm::data::IndexedCorpus::open(&prefix).unwrap();
    let want = corpus.tokens().iter().max().unwrap();
    assert!(want > 1000, "{want}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("c.json")).unwrap()).unwrap();
    assert_eq!(json["max_token_id"].as_u64(), Some(want as u64));
    let (ok, out, _) = lcm(&["corpus", "stats", p, "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["max_token_id"].as_u64(), Some(want as u64));
    let (ok, out, _) = lcm(&["corpus", "stats", p]);
    assert!(ok);
    assert!(out.contains(&format!("largest id {want}")), "{out}");
}
