//! Encoding long documents in pieces gives the ids of the whole text.

mod data_util;

use data_util::tokenizer;
use lcm::data::tokenizer::split_point;
use lcm::data::Tokenizer;
use proptest::prelude::*;

/// The NeoX tokenizer splitting every text longer than 8 bytes.
fn small_chunks() -> &'static Tokenizer {
    static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        let mut t = data_util::load_tokenizer();
        assert!(
            t.chunk_safe(),
            "the NeoX tokenizer's configuration allows pieces"
        );
        t.set_chunk_bytes(8);
        t
    })
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

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("word".to_string()),
        Just(" ".to_string()),
        Just("  ".to_string()),
        Just("     ".to_string()),
        Just("\n".to_string()),
        Just("\n\n".to_string()),
        Just("\r\n".to_string()),
        Just("\t".to_string()),
        Just("'s".to_string()),
        Just("e\u{301}".to_string()), // e + combining acute: NFC composes it
        Just("\u{301}".to_string()),
        Just("東京".to_string()),
        Just("🚀".to_string()),
        Just("<|endoftext|>".to_string()),
        Just("123".to_string()),
        Just("...".to_string()),
        "[a-zA-Z0-9 .,;!?'\n-]{1,12}",
        "\\PC{1,4}",
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
    TOK.get_or_init(|| {
        let mut t = data_util::load_tokenizer();
        assert!(
            t.has_fast_path(),
            "the NeoX tokenizer qualifies for the fast path"
        );
        t.set_chunk_bytes(0);
        t
    })
}

fn reference(text: &str) -> Vec<u32> {
    tokenizer()
        .inner()
        .encode(text, true)
        .unwrap()
        .get_ids()
        .to_vec()
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
        assert!(got == reference(text), "document {i} differs");
    });
}

fn ascii_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("word".to_string()),
        Just("Word".to_string()),
        (1usize..30).prop_map(|n| " ".repeat(n)),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\t".to_string()),
        Just(" \n ".to_string()),
        Just("'s".to_string()),
        Just("'ll".to_string()),
        Just("'re".to_string()),
        Just("'".to_string()),
        Just("don't".to_string()),
        Just("123".to_string()),
        Just("...".to_string()),
        Just("<|endoftext|>".to_string()),
        Just("<|padding|>".to_string()),
        Just("<|".to_string()),
        "[\\x00-\\x7f]{1,6}",
        "[a-z0-9 .,;!?'\n\t-]{1,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn fast_path_equals_tokenizers(parts in prop::collection::vec(ascii_fragment(), 0..40)) {
        let text: String = parts.concat();
        let mut got = vec![];
        fast_only().encode_into(&text, &mut got).unwrap();
        prop_assert_eq!(got, reference(&text), "text {:?}", text);
    }
}
