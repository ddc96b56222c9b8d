//! The preprocessing pipeline on small synthetic shards: ids, formats, determinism,
//! resume, and every kind of bad input.

mod data_util;

use std::path::{Path, PathBuf};

use data_util::*;
use lcm::data::indexed::with_suffix;
use lcm::data::inputs::{expand_inputs, BatchLimits};
use lcm::data::preprocess::{run, Format, Options, Progress, Summary};
use lcm::data::{IndexedCorpus, RawCorpus};

fn opts(inputs: &[&Path], output: &Path) -> Options {
    Options {
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        output: output.to_path_buf(),
        format: Format::Indexed,
        workers: 2,
        resume: false,
        force: false,
        skip_bad_lines: false,
        limits: BatchLimits {
            bytes: 4096, // many batches even for small inputs
            ..Default::default()
        },
    }
}

fn go(o: &Options) -> lcm::Result<Summary> {
    run(o, tokenizer(), &mut |_| {})
}

fn read(prefix: &Path, ext: &str) -> Vec<u8> {
    std::fs::read(with_suffix(prefix, ext)).unwrap()
}

#[test]
fn ids_are_the_tokenizer_s_plus_eod_and_empty_documents_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.jsonl");
    let docs = docs();
    write(&input, &jsonl(&docs));
    let out = dir.path().join("out/corpus");
    let s = go(&opts(&[&input], &out)).unwrap();

    let want: Vec<Vec<u32>> = docs
        .iter()
        .filter(|(t, _)| !t.is_empty())
        .map(|(t, _)| {
            let mut ids = neox_ids(t);
            ids.push(0);
            ids
        })
        .collect();
    let c = IndexedCorpus::open(&out).unwrap();
    c.verify().unwrap();
    assert_eq!(c.num_documents(), want.len());
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&c.document(i).to_vec(), w, "document {i}");
    }
    assert_eq!(c.document(0).to_vec(), [12092, 1533, 0]); // "Hello world" + EOD
    assert_eq!(s.counts.documents, want.len() as u64);
    assert_eq!(s.counts.tokens, c.num_tokens());
    assert_eq!(s.skipped.empty_documents, 1);
    assert_eq!(s.sets["Pile-CC"].documents, 2);
    assert_eq!(s.sets["Books3"].documents, 1);
    assert_eq!(s.dtype.name(), "uint16");
    // PREFIX.json is what run() returned.
    let on_disk: Summary = serde_json::from_slice(&read(&out, ".json")).unwrap();
    assert_eq!(on_disk, s);
    // No temporary files are left: the corpus, and the lock file that keeps a second run
    // off this prefix (it stays; only a running process holds its lock).
    let mut left: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [".corpus.lock", "corpus.bin", "corpus.idx", "corpus.json"]
    );
}

#[test]
fn jsonl_zst_and_parquet_give_the_same_bytes_whatever_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let docs = docs();
    let plain = dir.path().join("a.jsonl");
    let zst_in = dir.path().join("a.jsonl.zst");
    let pq = dir.path().join("a.parquet");
    write(&plain, &jsonl(&docs));
    write(&zst_in, &zst(&jsonl(&docs)));
    let texts: Vec<Option<&str>> = docs.iter().map(|(t, _)| Some(t.as_str())).collect();
    write_parquet(&pq, &texts, 2);

    let mut outs: Vec<PathBuf> = vec![];
    for (i, (input, workers)) in [(&plain, 1), (&plain, 3), (&zst_in, 2), (&pq, 2), (&pq, 1)]
        .iter()
        .enumerate()
    {
        let out = dir.path().join(format!("o{i}"));
        let mut o = opts(&[input], &out);
        o.workers = *workers;
        o.limits.bytes = 64;
        go(&o).unwrap();
        outs.push(out);
    }
    for o in &outs[1..] {
        assert_eq!(read(&outs[0], ".bin"), read(o, ".bin"), "{}", o.display());
        assert_eq!(read(&outs[0], ".idx"), read(o, ".idx"), "{}", o.display());
    }
}

#[test]
fn several_shards_concatenate_in_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl.zst");
    write(&a, (pile_line("first", "X") + "\n").as_bytes());
    write(&b, &zst((pile_line("second", "Y") + "\n").as_bytes()));
    let out = dir.path().join("ab");
    go(&opts(&[&b, &a], &out)).unwrap();
    let c = IndexedCorpus::open(&out).unwrap();
    let tok = tokenizer();
    assert_eq!(
        tok.decode(&c.document(0).to_vec()).unwrap(),
        "second<|endoftext|>"
    );
    assert_eq!(
        tok.decode(&c.document(1).to_vec()).unwrap(),
        "first<|endoftext|>"
    );
}

#[test]
fn raw_format_is_the_flat_uint16_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.jsonl");
    // Without a literal "<|endoftext|>" in a text, EODs mark exactly the documents.
    let docs: Vec<_> = docs()
        .into_iter()
        .filter(|(t, _)| !t.contains("<|"))
        .collect();
    write(&input, &jsonl(&docs));
    let idx_out = dir.path().join("i");
    let raw_out = dir.path().join("r");
    go(&opts(&[&input], &idx_out)).unwrap();
    let mut o = opts(&[&input], &raw_out);
    o.format = Format::Raw;
    let s = go(&o).unwrap();
    assert_eq!(read(&raw_out, ".data"), read(&idx_out, ".bin"));
    assert!(!with_suffix(&raw_out, ".idx").exists());
    let raw = RawCorpus::open(&with_suffix(&raw_out, ".data")).unwrap();
    assert_eq!(raw.documents(0).len() as u64, s.counts.documents);
}

#[test]
fn expand_inputs_walks_directories_sorted_and_rejects_empty_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
    for n in [
        "d/b.jsonl",
        "d/a.jsonl.zst",
        "d/sub/c.parquet",
        "d/notes.txt",
    ] {
        write(&dir.path().join(n), b"x");
    }
    let d = dir.path().join("d").to_string_lossy().into_owned();
    let got = expand_inputs(std::slice::from_ref(&d)).unwrap();
    let names: Vec<_> = got
        .iter()
        .map(|p| {
            p.strip_prefix(dir.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["d/a.jsonl.zst", "d/b.jsonl", "d/sub/c.parquet"]);
    let glob = format!("{d}/*.jsonl*");
    assert_eq!(expand_inputs(&[glob]).unwrap().len(), 2);

    std::fs::create_dir_all(dir.path().join("none")).unwrap();
    let e = expand_inputs(&[dir.path().join("none").to_string_lossy().into_owned()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("none") && e.contains("no .jsonl"), "{e}");
    let e = expand_inputs(&[format!("{d}/*.nothing")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches no"), "{e}");
    let e = expand_inputs(&[format!("{d}/missing.jsonl")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.jsonl"), "{e}");
    let e = expand_inputs(&[format!("{d}/notes.txt")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("notes.txt") && e.contains("not an input file"),
        "{e}"
    );
}

/// The error of a run over one jsonl file holding `content`, or the summary with
/// `--skip-bad-lines`.
fn bad_input(name: &str, content: &[u8], skip: bool) -> (Result<Summary, String>, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let input = dir.join(name);
    write(&input, content);
    let out = dir.join("out");
    let mut o = opts(&[&input], &out);
    o.skip_bad_lines = skip;
    let r = go(&o).map_err(|e| e.to_string());
    if r.is_err() {
        // Nothing that looks like a finished corpus.
        for ext in [".bin", ".idx", ".json"] {
            assert!(
                !with_suffix(&out, ext).exists(),
                "{name}: {ext} left after an error"
            );
        }
    }
    (r, input)
}

#[test]
fn bad_records_name_file_and_line_or_are_counted_when_skipped() {
    let good = pile_line("good", "Pile-CC");
    // (file, its second line, whether a good line follows, what the error says)
    let cases: [(&str, &[u8], bool, &str); 6] = [
        (
            "notjson.jsonl",
            br#"{"text": "unterminated"#,
            true,
            "not a JSON line",
        ),
        (
            "notext.jsonl",
            br#"{"meta": {}}"#,
            false,
            "missing field `text`",
        ),
        (
            "number.jsonl",
            br#"{"text": 42}"#,
            false,
            "expected a string",
        ),
        (
            "list.jsonl",
            br#"{"text": ["a", "b"]}"#,
            false,
            "expected a string",
        ),
        (
            "utf8.jsonl",
            b"{\"text\": \"caf\xe9\"}",
            false,
            "invalid UTF-8",
        ),
        ("bare.jsonl", br#""just a string""#, false, "not a document"),
    ];
    let good_line = format!("{good}\n");
    for (name, bad, good_after, want) in cases {
        let after = if good_after {
            good_line.as_bytes()
        } else {
            b""
        };
        let content = [good_line.as_bytes(), bad, b"\n", after].concat();
        let (r, input) = bad_input(name, &content, false);
        let e = r.err().unwrap_or_else(|| panic!("{name}: no error"));
        assert!(
            e.contains(&format!("{}:2:", input.display())),
            "{name}: {e}"
        );
        assert!(e.contains(want), "{name}: {e}");
        let (r, _) = bad_input(name, &content, true);
        let s = r.unwrap();
        assert_eq!(s.skipped.bad_lines, 1, "{name}");
        assert!(s.counts.documents >= 1, "{name}");
        assert!(
            s.bad_line_examples[0].contains(":2: "),
            "{name}: {:?}",
            s.bad_line_examples
        );
    }
}

#[test]
fn blank_lines_crlf_and_a_missing_final_newline_are_fine() {
    let content = format!(
        "{}\r\n\n   \n{}",
        pile_line("one", "A"),
        pile_line("two", "A")
    );
    let (r, _) = bad_input("ok.jsonl", content.as_bytes(), false);
    let s = r.unwrap();
    assert_eq!((s.counts.documents, s.skipped.blank_lines), (2, 2));
}

#[test]
fn corrupt_or_truncated_zstd_and_empty_files_fail() {
    let body = jsonl(&docs()).repeat(20);
    let z = zst(&body);
    let (r, input) = bad_input("trunc.jsonl.zst", &z[..z.len() / 2], false);
    let e = r.unwrap_err();
    assert!(e.contains(&input.display().to_string()), "{e}");
    // Truncation is not recoverable: --skip-bad-lines does not hide it.
    assert!(bad_input("trunc.jsonl.zst", &z[..z.len() / 2], true)
        .0
        .is_err());

    let mut bad = z.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let (r, input) = bad_input("corrupt.jsonl.zst", &bad, false);
    let e = r.unwrap_err();
    assert!(e.contains(&input.display().to_string()), "{e}");

    let (r, _) = bad_input("notzstd.jsonl.zst", b"this is not zstd at all\n", false);
    assert!(r.unwrap_err().contains("notzstd.jsonl.zst"));

    let (r, _) = bad_input("empty.jsonl", b"", false);
    let e = r.unwrap_err();
    assert!(e.contains("empty.jsonl") && e.contains("empty file"), "{e}");
    let (r, _) = bad_input("empty.jsonl", b"", true);
    assert_eq!(r.unwrap().skipped.empty_files, 1);
}

#[test]
fn bad_parquet_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("nulls.parquet");
    write_parquet(&pq, &[Some("a"), None, Some("")], 10);
    let out = dir.path().join("o");
    let e = go(&opts(&[&pq], &out)).unwrap_err().to_string();
    assert!(e.contains("nulls.parquet:2:") && e.contains("null"), "{e}");
    let mut o = opts(&[&pq], &out);
    o.skip_bad_lines = true;
    let s = go(&o).unwrap();
    assert_eq!(
        (
            s.counts.documents,
            s.skipped.bad_lines,
            s.skipped.empty_documents
        ),
        (1, 1, 1)
    );

    let fake = dir.path().join("fake.parquet");
    write(&fake, b"PAR1 not really");
    let e = go(&opts(&[&fake], &dir.path().join("o2")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fake.parquet") && e.contains("parquet"), "{e}");
}

#[test]
fn a_100_mb_document_is_tokenised_in_bounded_pieces_or_refused_by_the_line_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 100 MB of varied prose: the tokenizer sees it in pieces of 256 KiB.
    let para = "It was the best of times, it was the worst of times; 1859 words.\nA tale ";
    let text = para.repeat(100_000_000 / para.len() + 1);
    let input = dir.path().join("huge.jsonl");
    write(
        &input,
        (pile_line(&text, "Books3") + "\n" + &pile_line("after", "X") + "\n").as_bytes(),
    );
    drop(text);

    let mut o = opts(&[&input], &dir.path().join("limited"));
    o.limits.max_line_bytes = 10 << 20;
    let e = go(&o).unwrap_err().to_string();
    assert!(
        e.contains("huge.jsonl:1:") && e.contains("longer than"),
        "{e}"
    );

    let out = dir.path().join("huge");
    let s = go(&opts(&[&input], &out)).unwrap();
    assert_eq!(s.counts.documents, 2);
    let c = IndexedCorpus::open(&out).unwrap();
    // The pieces' ids equal the whole text's: check the repeated unit tokenises the same
    // at the start, in the middle and at the end.
    let mut unit = neox_ids(&para.repeat(3));
    unit.pop(); // the trailing space joins the next word in the long text
    let d = c.document(0).to_vec();
    assert_eq!(&d[..unit.len()], &unit[..]);
    // The text is periodic: every repeat after the first adds the same tokens, so the
    // whole text's count follows from short encodings; splitting in pieces must keep it.
    let n = |k: usize| {
        tokenizer()
            .inner()
            .encode(para.repeat(k).as_str(), true)
            .unwrap()
            .len()
    };
    let (p, k) = (n(3) - n(2), 100_000_000 / para.len() + 1);
    assert_eq!(d.len(), n(2) + (k - 2) * p + 1);
    assert_eq!(*d.last().unwrap(), 0);
    assert!(d.len() > 20_000_000, "{}", d.len());
}

#[test]
fn unwritable_output_and_a_bad_tokenizer_fail_cleanly() {
    let (dir, input) = temp_file("a.jsonl", &jsonl(&docs()));
    let file = dir.path().join("file");
    write(&file, b"x");
    let e = go(&opts(&[&input], &file.join("prefix")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("file"), "{e}");

    let tok = dir.path().join("tok.json");
    write(&tok, b"{\"not\": \"a tokenizer\"}");
    let e = lcm::data::Tokenizer::load(&tok, "<|endoftext|>")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tok.json") && e.contains("not a tokenizer.json"),
        "{e}"
    );
    write(&tok, b"\x00\x01binary");
    let e = lcm::data::Tokenizer::load(&tok, "<|endoftext|>")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tok.json") && e.contains("not JSON"), "{e}");
    let real = lcm::info::default_tokenizer_path();
    let e = lcm::data::Tokenizer::load(&real, "<|nope|>")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("<|nope|>"), "{e}");
}

#[test]
fn existing_output_needs_force_and_resume_of_a_finished_corpus_is_a_no_op() {
    let (dir, input) = temp_file("a.jsonl", &jsonl(&docs()));
    let out = dir.path().join("c");
    let first = go(&opts(&[&input], &out)).unwrap();
    let e = go(&opts(&[&input], &out)).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    let mut o = opts(&[&input], &out);
    o.resume = true;
    assert_eq!(go(&o).unwrap(), first);
    o.resume = false;
    o.force = true;
    assert_eq!(go(&o).unwrap(), first);
}

#[test]
fn resume_keeps_finished_shards_and_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("{i}.jsonl.zst")))
        .collect();
    let content = |i: usize| {
        zst(&jsonl(
            &docs()
                .into_iter()
                .map(|(t, s)| (format!("{i} {t}"), s))
                .collect::<Vec<_>>(),
        ))
    };
    for (i, p) in shards.iter().enumerate() {
        write(p, &content(i));
    }
    let refs: Vec<&Path> = shards.iter().map(PathBuf::as_path).collect();
    let straight = dir.path().join("straight");
    go(&opts(&refs, &straight)).unwrap();

    // A run that stops at shard 2 (unreadable), as an interrupted one would.
    write(&shards[2], b"\x28\xb5\x2f\xfd garbage");
    let out = dir.path().join("resumed");
    assert!(go(&opts(&refs, &out)).is_err());
    assert!(with_suffix(&out, ".resume.tmp").exists());
    assert!(!with_suffix(&out, ".idx").exists());

    write(&shards[2], &content(2));
    let mut o = opts(&refs, &out);
    o.resume = true;
    let mut first: Option<Progress> = None;
    run(&o, tokenizer(), &mut |p| {
        first.get_or_insert_with(|| p.clone());
    })
    .unwrap();
    assert_eq!(
        first.unwrap().shards_resumed,
        2,
        "finished shards were redone"
    );
    assert_eq!(read(&straight, ".bin"), read(&out, ".bin"));
    assert_eq!(read(&straight, ".idx"), read(&out, ".idx"));
    assert!(!with_suffix(&out, ".resume.tmp").exists());

    // A finished shard that changed cannot be kept.
    write(&shards[2], b"\x28\xb5\x2f\xfd garbage");
    let out2 = dir.path().join("changed");
    assert!(go(&opts(&refs, &out2)).is_err());
    write(&shards[0], &content(77)); // another size, whatever the clock resolution
    write(&shards[2], &content(2));
    let mut o = opts(&refs, &out2);
    o.resume = true;
    let e = go(&o).unwrap_err().to_string();
    assert!(e.contains("without --resume"), "{e}");
}

#[test]
fn sample_pile_shard_round_trips_through_the_tokenizer() {
    let shard = sample_shard("val.jsonl.zst");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("val");
    let mut o = opts(&[&shard], &out);
    o.limits = BatchLimits::default();
    let s = go(&o).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(shard.parent().unwrap().join("MANIFEST.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        s.counts.documents,
        manifest["shards"]["val.jsonl.zst"]["documents"]
            .as_u64()
            .unwrap()
    );
    let c = IndexedCorpus::open(&out).unwrap();
    c.verify().unwrap();
    let texts = lcm::bench::tokenizer::load_texts(&[shard]).unwrap();
    assert_eq!(texts.len(), c.num_documents());
    for (i, t) in texts.iter().enumerate().step_by(7) {
        let mut want = neox_ids(t);
        want.push(0);
        assert_eq!(c.document(i).to_vec(), want, "document {i}");
    }
}
