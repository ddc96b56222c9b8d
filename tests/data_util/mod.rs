//! Shared by the tests/data_*.rs files: the tokenizer and the sample pile at their default
//! places (scripts/test.sh makes both before `cargo test`), and small input files.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lcm::data::Tokenizer;

/// A fresh GPT-NeoX-20B tokenizer (to configure); fails with a clear message when set-up
/// has not run.
pub fn load_tokenizer() -> Tokenizer {
    let path = lcm::info::default_tokenizer_path();
    assert!(
        path.is_file(),
        "the GPT-NeoX-20B tokenizer is missing at {}: run scripts/setup.sh (scripts/test.sh does)",
        path.display()
    );
    Tokenizer::load(&path, "<|endoftext|>").unwrap()
}

/// The GPT-NeoX-20B tokenizer as loaded, shared by the tests of one file.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(load_tokenizer)
}

/// The ids the Hugging Face tokenizer itself gives `text` (what ours must match).
pub fn neox_ids(text: &str) -> Vec<u32> {
    tokenizer()
        .inner()
        .encode(text, true)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// A shard of the sample pile; fails with a clear message when it has not been built.
pub fn sample_shard(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/sample-pile")
        .join(name);
    assert!(
        p.is_file(),
        "the sample pile is missing ({}): run scripts/make-sample-pile.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// One JSON line of the Pile's format.
pub fn pile_line(text: &str, set: &str) -> String {
    serde_json::json!({"text": text, "meta": {"pile_set_name": set}}).to_string()
}

/// A fresh temporary folder holding file `name` with `bytes`: the folder (kept while it lives)
/// and the file.
pub fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    write(&path, bytes);
    (dir, path)
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

pub fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// A parquet file with one optional string column `text`.
pub fn write_parquet(path: &Path, texts: &[Option<&str>], rows_per_group: usize) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;
    let schema =
        Arc::new(parse_message_type("message doc { optional binary text (UTF8); }").unwrap());
    let props = Arc::new(WriterProperties::builder().build());
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in texts.chunks(rows_per_group.max(1)) {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = chunk
            .iter()
            .flatten()
            .map(|s| ByteArray::from(*s))
            .collect();
        let defs: Vec<i16> = chunk.iter().map(|t| t.is_some() as i16).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

/// Some real-looking documents: prose, code, whitespace runs, Unicode, an empty one.
pub fn docs() -> Vec<(String, &'static str)> {
    vec![
        ("Hello world".to_string(), "Pile-CC"),
        ("".to_string(), "Pile-CC"),
        ("def f(x):\n    return x  +  1\n\n\n".to_string(), "Github"),
        (
            "Café naïve 東京 🚀 — «quotes»\r\n\tindent".to_string(),
            "Wikipedia (en)",
        ),
        ("a<|endoftext|>b".to_string(), "Pile-CC"),
        ("The quick brown fox. ".repeat(2000), "Books3"),
    ]
}

pub fn jsonl(docs: &[(String, &str)]) -> Vec<u8> {
    let mut s = String::new();
    for (t, set) in docs {
        s.push_str(&pile_line(t, set));
        s.push('\n');
    }
    s.into_bytes()
}

/// Runs the `lcm` binary of this build: (success, stdout, stderr).
pub fn lcm(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(
        std::env::var_os("LCM_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_lcm").into()),
    )
    .args(args)
    .output()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The arguments of `lcm preprocess pile --input INPUT --output PREFIX`.
pub fn preprocess_args<'a>(input: &'a Path, prefix: &'a Path) -> Vec<&'a str> {
    let (input, prefix) = (input.to_str().unwrap(), prefix.to_str().unwrap());
    vec!["preprocess", "pile", "--input", input, "--output", prefix]
}

/// Runs `lcm preprocess pile --input INPUT --output PREFIX EXTRA...`: (success, stdout,
/// stderr).
pub fn preprocess(input: &Path, prefix: &Path, extra: &[&str]) -> (bool, String, String) {
    lcm(&[&preprocess_args(input, prefix)[..], extra].concat())
}
