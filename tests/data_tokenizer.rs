//! Encoding long documents in pieces gives the ids of the whole text.

mod data_util;

use data_util::{neox_ids, tokenizer};
use lcm::data::tokenizer::split_point;
use lcm::data::Tokenizer;
use proptest::prelude::*;

/// A fresh NeoX tokenizer, which must have property `has` (`what` says which), splitting texts
/// in pieces of `chunk_bytes` (0: never).
fn neox_with_chunk_bytes(chunk_bytes: usize, has: fn(&Tokenizer) -> bool, what: &str) -> Tokenizer {
    let mut t = data_util::load_tokenizer();
    assert!(has(&t), "{what}");
    t.set_chunk_bytes(chunk_bytes);
    t
}

const ALLOWS_PIECES: &str = "the NeoX tokenizer's configuration allows pieces";
const HAS_FAST_PATH: &str = "the NeoX tokenizer qualifies for the fast path";

/// The NeoX tokenizer splitting every text longer than 8 bytes.
fn small_chunks() -> &'static Tokenizer {
    static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| neox_with_chunk_bytes(8, Tokenizer::chunk_safe, ALLOWS_PIECES))
}

#[test]
fn neox_tokenizer_facts() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 50_277);
    assert_eq!(t.eod(), 0);
    assert_eq!(t.encode_doc("Hello world").unwrap(), [12092, 1533, 0]);
    assert_eq!(
        t.sha256(),
        "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"
    );
}

#[test]
fn split_points_are_single_spaces_or_newlines_between_ascii() {
    let s = b"ab  cd\n\nef gh\tij k\nl";
    assert_eq!(split_point(s, 1), 10); // " " between "ef" and "gh"
    assert_eq!(split_point(s, 11), 16); // " " between "j" and "k"
    assert_eq!(split_point(s, 17), 18); // "\n" between "k" and "l"
    assert_eq!(split_point(s, 19), s.len());
}

#[test]
fn sample_text_in_pieces_matches_whole() {
    let t = small_chunks();
    let texts =
        lcm::bench::tokenizer::load_texts(&[data_util::sample_shard("test.jsonl.zst")]).unwrap();
    for text in texts.iter().take(40) {
        let mut pieces = vec![];
        t.encode_into(text, &mut pieces).unwrap();
        let whole = t
            .inner()
            .encode(text.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(pieces, whole);
    }
}

/// One of `texts`, each as likely.
fn any_of(texts: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(texts).prop_map(String::from)
}

fn fragment() -> impl Strategy<Value = String> {
    #[rustfmt::skip]
    const FIXED: &[&str] = &[
        "word", " ", "  ", "     ", "\n", "\n\n", "\r\n", "\t", "'s",
        "e\u{301}", // e + combining acute: NFC composes it
        "\u{301}", "東京", "🚀", "<|endoftext|>", "123", "...",
    ];
    // Weighted by count, so that each fixed fragment is as likely as each pattern.
    prop_oneof![
        FIXED.len() as u32 => any_of(FIXED),
        1 => "[a-zA-Z0-9 .,;!?'\n-]{1,12}",
        1 => "\\PC{1,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn pieces_equal_whole(parts in prop::collection::vec(fragment(), 0..60)) {
        let t = small_chunks();
        let text: String = parts.concat();
        let mut pieces = vec![];
        t.encode_into(&text, &mut pieces).unwrap();
        let whole = t.inner().encode(text.as_str(), true).unwrap().get_ids().to_vec();
        prop_assert_eq!(pieces, whole, "text {:?}", text);
    }
}

/// The NeoX tokenizer with its ASCII fast path and no pieces.
fn fast_only() -> &'static Tokenizer {
    static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| neox_with_chunk_bytes(0, Tokenizer::has_fast_path, HAS_FAST_PATH))
}

#[test]
fn fast_path_matches_tokenizers_on_the_sample_pile() {
    use rayon::prelude::*;
    let shards: Vec<_> = ["val.jsonl.zst", "test.jsonl.zst", "train/00.jsonl.zst"]
        .iter()
        .map(|s| data_util::sample_shard(s))
        .collect();
    let texts = lcm::bench::tokenizer::load_texts(&shards).unwrap();
    let t = fast_only();
    let ascii = texts.iter().filter(|s| s.is_ascii()).count();
    assert!(ascii > texts.len() / 3, "{ascii} of {} ASCII", texts.len());
    texts.par_iter().enumerate().for_each(|(i, text)| {
        let mut got = vec![];
        t.encode_into(text, &mut got).unwrap();
        assert!(got == neox_ids(text), "document {i} differs");
    });
}

fn ascii_fragment() -> impl Strategy<Value = String> {
    #[rustfmt::skip]
    const FIXED: &[&str] = &[
        "word", "Word", "\n", "\r\n", "\t", " \n ", "'s", "'ll", "'re", "'", "don't", "123",
        "...", "<|endoftext|>", "<|padding|>", "<|",
    ];
    // Weighted by count, so that each fixed fragment is as likely as each other choice.
    prop_oneof![
        FIXED.len() as u32 => any_of(FIXED),
        1 => (1usize..30).prop_map(|n| " ".repeat(n)),
        1 => "[\\x00-\\x7f]{1,6}",
        1 => "[a-z0-9 .,;!?'\n\t-]{1,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn fast_path_equals_tokenizers(parts in prop::collection::vec(ascii_fragment(), 0..40)) {
        let text: String = parts.concat();
        let mut got = vec![];
        fast_only().encode_into(&text, &mut got).unwrap();
        prop_assert_eq!(got, neox_ids(&text), "text {:?}", text);
    }
}
