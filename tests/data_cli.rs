//! `lcm preprocess pile` and `lcm corpus` through the binary, on the sample pile.

mod data_util;

use data_util::lcm;

#[test]
fn preprocess_stats_and_cat_on_the_sample_pile() {
    let shard = data_util::sample_shard("test.jsonl.zst");
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("test");
    let p = prefix.to_str().unwrap();
    let (ok, out, err) = lcm(&[
        "preprocess",
        "pile",
        "--input",
        shard.to_str().unwrap(),
        "--output",
        p,
        "--workers",
        "2",
    ]);
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
    let args = [
        "preprocess",
        "pile",
        "--input",
        shard.to_str().unwrap(),
        "--output",
        p,
    ];
    let (ok, _, err) = lcm(&args);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, out, err) = lcm(&[&args[..], &["--resume"]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("already complete"), "{out}");
}

#[test]
fn bad_input_exits_non_zero_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    data_util::write(
        &input,
        b"{\"text\": \"ok\"}\n{\"text\": \"ok\"}\nnot json\n",
    );
    let prefix = dir.path().join("o");
    let (ok, _, err) = lcm(&[
        "preprocess",
        "pile",
        "--input",
        input.to_str().unwrap(),
        "--output",
        prefix.to_str().unwrap(),
    ]);
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
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.json");
    data_util::write(
        &config,
        br#"{"model": "models/nowhere.json", "data": {"random": {"lo": 1, "hi": 9}}}"#,
    );
    let (ok, _, err) = lcm(&["pretrain", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    let missing = dir.path().join("models/nowhere.json");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
