//! The Megatron/GPT-NeoX indexed format: bytes against a hand-computed golden, the
//! writer/reader round trip (property test), resume, and corrupt corpora.

use std::path::{Path, PathBuf};

use lcm::data::indexed::{with_suffix, write_index, IndexedWriter, TokenDtype};
use lcm::data::IndexedCorpus;
use proptest::prelude::*;

/// A writer of `dtype` at prefix `name` in a fresh temporary folder: the folder (kept while
/// it lives), the prefix and the writer.
fn temp_writer(name: &str, dtype: TokenDtype) -> (tempfile::TempDir, PathBuf, IndexedWriter) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join(name);
    let w = IndexedWriter::create(&prefix, dtype).unwrap();
    (dir, prefix, w)
}

/// Two documents, [5, 6, EOD] and [7, EOD], as GPT-NeoX writes them (uint16).
#[test]
fn golden_bytes_for_two_tiny_documents() {
    let (_dir, prefix, mut w) = temp_writer("tiny", TokenDtype::Uint16);
    w.add_document(&[5, 6, 0]).unwrap();
    w.add_document(&[7, 0]).unwrap();
    w.finish().unwrap();

    let bin = std::fs::read(with_suffix(&prefix, ".bin")).unwrap();
    assert_eq!(bin, [5, 0, 6, 0, 0, 0, 7, 0, 0, 0]);

    #[rustfmt::skip]
    let idx: Vec<u8> = [
        &b"MMIDIDX\x00\x00"[..],            // magic
        &[1, 0, 0, 0, 0, 0, 0, 0],          // version 1
        &[8],                               // dtype code: uint16
        &[2, 0, 0, 0, 0, 0, 0, 0],          // N = 2 sequences
        &[3, 0, 0, 0, 0, 0, 0, 0],          // D = 3 doc_idx entries
        &[3, 0, 0, 0, 2, 0, 0, 0],          // sizes (i32): 3, 2
        &[0, 0, 0, 0, 0, 0, 0, 0],          // pointers (i64): 0
        &[6, 0, 0, 0, 0, 0, 0, 0],          //                 6 bytes
        &[0, 0, 0, 0, 0, 0, 0, 0],          // doc_idx (i64): 0
        &[1, 0, 0, 0, 0, 0, 0, 0],          //                1
        &[2, 0, 0, 0, 0, 0, 0, 0],          //                2
    ]
    .concat();
    assert_eq!(std::fs::read(with_suffix(&prefix, ".idx")).unwrap(), idx);
    // The in-memory index writer agrees.
    let mut mem = vec![];
    write_index(&mut mem, TokenDtype::Uint16, &[3, 2]).unwrap();
    assert_eq!(mem, idx);

    let c = IndexedCorpus::open(&prefix).unwrap();
    c.verify().unwrap();
    assert_eq!(
        (c.num_documents(), c.num_sequences(), c.num_tokens()),
        (2, 2, 5)
    );
    assert_eq!(c.document(0).to_vec(), [5, 6, 0]);
    assert_eq!(c.document(1).to_vec(), [7, 0]);
    assert_eq!(c.sequence(1).as_bytes(), &[7, 0, 0, 0]);
}

#[test]
fn int32_for_large_vocabularies() {
    assert_eq!(TokenDtype::for_vocab(50_277), TokenDtype::Uint16);
    assert_eq!(TokenDtype::for_vocab(65_499), TokenDtype::Uint16);
    assert_eq!(TokenDtype::for_vocab(65_500), TokenDtype::Int32);
    let (dir, prefix, mut w) = temp_writer("wide", TokenDtype::Int32);
    w.add_document(&[100_000, 0]).unwrap();
    w.finish().unwrap();
    let idx = std::fs::read(with_suffix(&prefix, ".idx")).unwrap();
    assert_eq!(idx[17], 4);
    let c = IndexedCorpus::open(&prefix).unwrap();
    assert_eq!(c.document(0).to_vec(), [100_000, 0]);
    // uint16 refuses ids that do not fit instead of truncating them.
    let mut w = IndexedWriter::create(&dir.path().join("narrow"), TokenDtype::Uint16).unwrap();
    assert!(w.add_document(&[70_000]).is_err());
}

#[test]
fn empty_corpus_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("empty");
    IndexedWriter::create(&prefix, TokenDtype::Uint16)
        .unwrap()
        .finish()
        .unwrap();
    let c = IndexedCorpus::open(&prefix).unwrap();
    c.verify().unwrap();
    assert_eq!((c.num_documents(), c.num_tokens()), (0, 0));
}

#[test]
fn unfinished_writer_leaves_no_corpus() {
    let (_dir, prefix, mut w) = temp_writer("partial", TokenDtype::Uint16);
    w.add_document(&[1, 2, 0]).unwrap();
    w.checkpoint().unwrap();
    drop(w); // as if killed
    assert!(!with_suffix(&prefix, ".bin").exists());
    assert!(!with_suffix(&prefix, ".idx").exists());
    let e = IndexedCorpus::open(&prefix).err().unwrap().to_string();
    assert!(e.contains("partial.idx"), "{e}");
}

#[test]
fn resume_cuts_back_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let mut w = IndexedWriter::create(&straight, TokenDtype::Uint16).unwrap();
    for d in [&[1u32, 2, 0][..], &[3, 0], &[4, 5, 6, 0]] {
        w.add_document(d).unwrap();
    }
    w.finish().unwrap();

    let resumed = dir.path().join("resumed");
    let mut w = IndexedWriter::create(&resumed, TokenDtype::Uint16).unwrap();
    w.add_document(&[1, 2, 0]).unwrap();
    let at = w.checkpoint().unwrap();
    w.add_document(&[9, 9, 9, 9, 0]).unwrap(); // written after the checkpoint, then "killed"
    w.checkpoint().unwrap();
    drop(w);
    let mut w = IndexedWriter::resume(&resumed, TokenDtype::Uint16, at).unwrap();
    w.add_document(&[3, 0]).unwrap();
    w.add_document(&[4, 5, 6, 0]).unwrap();
    w.finish().unwrap();
    for ext in [".bin", ".idx"] {
        assert_eq!(
            std::fs::read(with_suffix(&straight, ext)).unwrap(),
            std::fs::read(with_suffix(&resumed, ext)).unwrap(),
            "{ext}"
        );
    }
}

fn corpus_with(dir: &Path, docs: &[Vec<u32>]) -> std::path::PathBuf {
    let prefix = dir.join("c");
    let mut w = IndexedWriter::create(&prefix, TokenDtype::Uint16).unwrap();
    for d in docs {
        w.add_document(d).unwrap();
    }
    w.finish().unwrap();
    prefix
}

#[test]
fn corrupt_corpora_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = corpus_with(dir.path(), &[vec![1, 2, 0], vec![3, 0]]);
    let idx = with_suffix(&prefix, ".idx");
    let bin = with_suffix(&prefix, ".bin");
    let good_idx = std::fs::read(&idx).unwrap();
    let good_bin = std::fs::read(&bin).unwrap();
    let check = |what: &str, want: &str| {
        let e = IndexedCorpus::open(&prefix)
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"))
            .to_string();
        assert!(e.contains(want), "{what}: {e}");
    };

    std::fs::write(&bin, &good_bin[..good_bin.len() - 2]).unwrap();
    check("short .bin", "c.bin");
    std::fs::write(&bin, &good_bin).unwrap();

    std::fs::write(&idx, &good_idx[..good_idx.len() - 1]).unwrap();
    check("short .idx", "c.idx");
    std::fs::write(&idx, &good_idx[..20]).unwrap();
    check("header only", "shorter than the 34-byte header");

    let mut bad = good_idx.clone();
    bad[0] = b'X';
    std::fs::write(&idx, &bad).unwrap();
    check("magic", "bad magic");

    let mut bad = good_idx.clone();
    bad[9] = 2;
    std::fs::write(&idx, &bad).unwrap();
    check("version", "version 2");

    let mut bad = good_idx.clone();
    bad[17] = 6;
    std::fs::write(&idx, &bad).unwrap();
    check("dtype", "dtype code 6");

    // A wrong pointer passes the O(1) open checks but not verify().
    let prefix = corpus_with(dir.path(), &[vec![1, 2, 0], vec![3, 0], vec![4, 0]]);
    let mut bad = std::fs::read(&idx).unwrap();
    bad[34 + 3 * 4 + 8] = 2; // pointer of sequence 1 (of 3): 6 -> 2
    std::fs::write(&idx, &bad).unwrap();
    let c = IndexedCorpus::open(&prefix).unwrap();
    let e = c.verify().err().unwrap().to_string();
    assert!(e.contains("sequence 1: pointer 2"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random documents, including empty and long ones, come back as they went in,
    /// zero-copy, in both dtypes.
    #[test]
    fn writer_reader_round_trip(
        docs in prop::collection::vec(
            prop_oneof![
                4 => prop::collection::vec(0u32..50_277, 0..40),
                1 => prop::collection::vec(0u32..50_277, 0..20_000),
                1 => Just(vec![]),
            ],
            0..30,
        ),
        wide in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("p");
        let dtype = if wide { TokenDtype::Int32 } else { TokenDtype::Uint16 };
        let mut w = IndexedWriter::create(&prefix, dtype).unwrap();
        for d in &docs {
            w.add_document(d).unwrap();
        }
        w.finish().unwrap();
        let c = IndexedCorpus::open(&prefix).unwrap();
        c.verify().unwrap();
        prop_assert_eq!(c.num_documents(), docs.len());
        prop_assert_eq!(c.dtype(), dtype);
        let total: usize = docs.iter().map(Vec::len).sum();
        prop_assert_eq!(c.num_tokens() as usize, total);
        for (i, d) in docs.iter().enumerate() {
            prop_assert_eq!(&c.document(i).to_vec(), d);
            prop_assert_eq!(c.size(i) as usize, d.len());
        }
        let all: Vec<u32> = docs.concat();
        prop_assert_eq!(c.tokens().to_vec(), all);
        // The same sizes through the in-memory index writer give the same .idx bytes.
        let sizes: Vec<i32> = docs.iter().map(|d| d.len() as i32).collect();
        let mut mem = vec![];
        write_index(&mut mem, dtype, &sizes).unwrap();
        prop_assert_eq!(mem, std::fs::read(with_suffix(&prefix, ".idx")).unwrap());
    }
}
