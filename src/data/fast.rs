//! A faster exact path through a byte-level BPE tokenizer (GPT-2 / GPT-NeoX style) for
//! ASCII text: the same ids as `tokenizers`' `encode`, without its per-byte alignment
//! bookkeeping (normaliser and pre-tokeniser), its backtracking regex engine and the
//! `Encoding` it builds. The BPE merges themselves, and their cache, are the tokenizer's
//! own model.
//!
//! For ASCII text, every Unicode normal form is the identity, and the pieces the
//! tokenizer would make are easy to find by hand:
//! 1. added tokens are split off first, leftmost-longest; the fast path accepts only
//!    tokenizers whose added tokens are runs of spaces (NeoX: 2 to 24 spaces) or contain no
//!    whitespace at all, and falls back for any text that contains one of the latter;
//! 2. each remaining segment is split by the GPT-2 pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
//!    which on ASCII is a small scanner (below);
//! 3. each piece's bytes are mapped to the byte-level alphabet and given to the BPE model.
//!
//! Text with any non-ASCII byte goes through `tokenizers` unchanged. The equivalence is
//! checked by property tests and on the whole sample pile (tests/data_tokenizer.rs), and
//! by the byte comparison with the Python implementation in scripts/bench/.

use serde_json::Value;
use tokenizers::Model;

pub struct FastPath {
    /// GPT-2's bytes_to_unicode, UTF-8 encoded, per byte.
    byte_chars: Vec<String>,
    /// `run_ids[n]`: the id of the added token of `n` spaces, if there is one.
    run_ids: Vec<Option<u32>>,
    /// Added tokens without whitespace: a text containing one takes the slow path.
    others: Vec<String>,
}

fn bytes_to_unicode() -> Vec<String> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![String::new(); 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).unwrap().to_string();
    }
    out
}

impl FastPath {
    /// The fast path for a tokenizer.json, if its configuration is one it reproduces
    /// exactly: normaliser absent or a Unicode normal form, byte-level pre-tokeniser with
    /// its regex and no prefix space, BPE without dropout, no post-processor that adds
    /// tokens, no truncation or padding, added tokens either runs of spaces or free of
    /// whitespace, none stripping or matching single words.
    pub fn new(j: &Value, tok: &tokenizers::Tokenizer) -> Option<Self> {
        if !super::tokenizer::byte_level_bpe_pipeline(j) {
            return None;
        }
        let mut run_ids = vec![];
        let mut others = vec![];
        for t in j.get("added_tokens")?.as_array()? {
            let content = t.get("content")?.as_str()?;
            let flag = |k: &str| t.get(k).and_then(Value::as_bool).unwrap_or(false);
            if flag("lstrip") || flag("rstrip") || flag("single_word") || content.is_empty() {
                return None;
            }
            if content.bytes().all(|b| b == b' ') {
                let n = content.len();
                if run_ids.len() <= n {
                    run_ids.resize(n + 1, None);
                }
                run_ids[n] = Some(tok.token_to_id(content)?);
            } else if content.chars().any(char::is_whitespace) {
                return None;
            } else {
                others.push(content.to_string());
            }
        }
        Some(FastPath {
            byte_chars: bytes_to_unicode(),
            run_ids,
            others,
        })
    }

    /// Whether `text` can take the fast path.
    pub fn applies(&self, text: &str) -> bool {
        text.is_ascii() && !self.others.iter().any(|o| text.contains(o.as_str()))
    }

    /// Appends the ids of `text` (which [`FastPath::applies`] to).
    pub fn encode(
        &self,
        model: &impl Model,
        text: &str,
        out: &mut Vec<u32>,
    ) -> std::result::Result<(), String> {
        let b = text.as_bytes();
        let mut seg = 0;
        let mut i = 0;
        let mut buf = String::new();
        while i < b.len() {
            if b[i] != b' ' || self.run_ids.len() < 2 {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            // Leftmost-longest added-token matches within this run of spaces.
            let mut p = i;
            while p < j {
                let r = (j - p).min(self.run_ids.len() - 1);
                match (1..=r)
                    .rev()
                    .find_map(|n| self.run_ids[n].map(|id| (n, id)))
                {
                    Some((n, id)) => {
                        self.segment(model, &b[seg..p], &mut buf, out)?;
                        out.push(id);
                        p += n;
                        seg = p;
                    }
                    None => break,
                }
            }
            i = j;
        }
        self.segment(model, &b[seg..], &mut buf, out)
    }

    /// Splits one segment by the GPT-2 pattern and BPE-encodes each piece.
    fn segment(
        &self,
        model: &impl Model,
        s: &[u8],
        buf: &mut String,
        out: &mut Vec<u32>,
    ) -> std::result::Result<(), String> {
        let n = s.len();
        let mut i = 0;
        while i < n {
            let end = piece_end(s, i);
            buf.clear();
            for &c in &s[i..end] {
                buf.push_str(&self.byte_chars[c as usize]);
            }
            let toks = model
                .tokenize(buf)
                .map_err(|e| format!("tokenizer failed: {e}"))?;
            out.extend(toks.iter().map(|t| t.id));
            i = end;
        }
        Ok(())
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

#[derive(PartialEq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: u8) -> Class {
    if c.is_ascii_alphabetic() {
        Class::Letter
    } else if c.is_ascii_digit() {
        Class::Number
    } else if is_ws(c) {
        Class::Space
    } else {
        Class::Other
    }
}

/// End of the GPT-2 pattern's match at `i` in ASCII `s` (leftmost-first alternation).
fn piece_end(s: &[u8], i: usize) -> usize {
    let n = s.len();
    let c = s[i];
    if c == b'\'' {
        for suf in [&b"s"[..], b"t", b"re", b"ve", b"m", b"ll", b"d"] {
            if s[i + 1..].starts_with(suf) {
                return i + 1 + suf.len();
            }
        }
    }
    let run = |from: usize, k: &Class| {
        let mut j = from;
        while j < n && class(s[j]) == *k {
            j += 1;
        }
        j
    };
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
    let k = class(c);
    if k != Class::Space {
        return run(i, &k);
    }
    if c == b' ' && i + 1 < n {
        let k1 = class(s[i + 1]);
        if k1 != Class::Space {
            return run(i + 1, &k1);
        }
    }
    // `\s+(?!\S)`, else `\s+`
    let j = run(i, &Class::Space);
    if j == n || j - i == 1 {
        j
    } else {
        j - 1
    }
}
