//! A HF `tokenizer.json` loaded with the pure-Rust `tokenizers` crate, as GPT-NeoX's
//! `HFTokenizer` uses it: `encode(text).ids` (special tokens on, as Python's default),
//! then the EOD id appended by the caller.
//!
//! Long documents are encoded in pieces when the tokenizer's configuration makes that
//! exact (see [`Tokenizer::chunk_safe`]): memory then stays proportional to the piece, not
//! to the document, and the ids are the same as for the whole text.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Documents longer than this many bytes are encoded in pieces of about this size
/// (when the tokenizer allows it).
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;

/// Documents with more pieces than this are encoded with their pieces in parallel (rayon),
/// so that one huge document does not leave the other cores idle.
const PARALLEL_PIECES: usize = 2;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    sha256: String,
    eod: u32,
    eod_token: String,
    vocab_size: usize,
    chunk_safe: bool,
    chunk_bytes: usize,
    fast: Option<crate::data::fast::FastPath>,
}

impl Tokenizer {
    /// Loads `path`; `eod_token` must be in its vocabulary (`<|endoftext|>` for NeoX).
    pub fn load(path: &Path, eod_token: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let err = |msg: String| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("not a tokenizer.json (not JSON: {e})")))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            err(format!(
                "not a tokenizer.json the tokenizers crate can load: {e}"
            ))
        })?;
        let eod = inner.token_to_id(eod_token).ok_or_else(|| {
            err(format!(
                "no token `{eod_token}` (the end-of-document token)"
            ))
        })?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            path: path.to_path_buf(),
            sha256: format!("{:x}", Sha256::digest(&bytes)),
            eod,
            eod_token: eod_token.to_string(),
            vocab_size,
            chunk_safe: chunk_safe(&json),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            fast: crate::data::fast::FastPath::new(&json, &inner),
            inner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sha256 of the tokenizer file, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn eod(&self) -> u32 {
        self.eod
    }

    pub fn eod_token(&self) -> &str {
        &self.eod_token
    }

    /// Ids including added tokens (GPT-NeoX's `vocab_size` for its dtype choice).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether splitting a text at "x y" / "x\ny" (ASCII graphic on both sides of one
    /// space or newline) leaves its ids unchanged. True when the normaliser is absent or
    /// a Unicode normal form, the pre-tokeniser is byte-level with its regex and no prefix
    /// space, the model is BPE without dropout, no post-processor adds tokens, there is no
    /// truncation or padding, and no added token mixes whitespace with other characters or
    /// strips its neighbours. Then the byte-level regex and every added-token match break
    /// at such a place anyway, and no normal form composes across it.
    pub fn chunk_safe(&self) -> bool {
        self.chunk_safe
    }

    /// Piece size for long documents (0: never split). Splitting is used only when
    /// [`Tokenizer::chunk_safe`] holds.
    pub fn set_chunk_bytes(&mut self, n: usize) {
        self.chunk_bytes = n;
    }

    /// Whether this tokenizer has the exact ASCII fast path ([`crate::data::fast`]).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Appends the ids of `text` to `out` (no EOD).
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> std::result::Result<(), String> {
        if self.chunk_safe && self.chunk_bytes > 0 && text.len() > self.chunk_bytes {
            let mut pieces = vec![];
            let mut start = 0;
            while start < text.len() {
                let end = split_point(text.as_bytes(), start + self.chunk_bytes);
                pieces.push(&text[start..end]);
                start = end;
            }
            if pieces.len() > PARALLEL_PIECES {
                use rayon::prelude::*;
                let ids: Vec<Vec<u32>> = pieces
                    .par_iter()
                    .map(|p| {
                        let mut v = vec![];
                        self.encode_piece(p, &mut v).map(|_| v)
                    })
                    .collect::<std::result::Result<_, _>>()?;
                out.reserve(ids.iter().map(Vec::len).sum());
                for v in ids {
                    out.extend_from_slice(&v);
                }
            } else {
                for p in pieces {
                    self.encode_piece(p, out)?;
                }
            }
            Ok(())
        } else {
            self.encode_piece(text, out)
        }
    }

    /// The ids of `text` followed by the EOD id.
    pub fn encode_doc(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut out)?;
        out.push(self.eod);
        Ok(out)
    }

    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) -> std::result::Result<(), String> {
        if let Some(fast) = self.fast.as_ref().filter(|f| f.applies(text)) {
            return fast.encode(self.inner.get_model(), text, out);
        }
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| format!("tokenizer failed: {e}"))?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// Text of `ids` (special tokens kept, so EODs show).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("decode failed: {e}"),
        })
    }
}

fn graphic(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// The first byte offset `p >= from` where `text[p-1]` is ASCII graphic, `text[p]` is a
/// space or newline and `text[p+1]` is ASCII graphic; the end of the text if none.
pub fn split_point(text: &[u8], from: usize) -> usize {
    let mut p = from.max(1);
    while p + 1 < text.len() {
        if (text[p] == b' ' || text[p] == b'\n') && graphic(text[p - 1]) && graphic(text[p + 1]) {
            return p;
        }
        p += 1;
    }
    text.len()
}

/// See [`Tokenizer::chunk_safe`]: decided from the tokenizer.json itself.
fn chunk_safe(j: &serde_json::Value) -> bool {
    use serde_json::Value;
    let added_ok = j
        .get("added_tokens")
        .and_then(Value::as_array)
        .is_none_or(|toks| {
            toks.iter().all(|t| {
                let content = t.get("content").and_then(Value::as_str).unwrap_or("");
                let ws = content.chars().filter(|c| c.is_whitespace()).count();
                let flag = |k: &str| t.get(k).and_then(Value::as_bool).unwrap_or(false);
                (ws == 0 || ws == content.chars().count())
                    && !flag("lstrip")
                    && !flag("rstrip")
                    && !flag("single_word")
            })
        });
    byte_level_bpe_pipeline(j) && added_ok
}

/// Whether a tokenizer.json's pipeline is plain byte-level BPE: normaliser absent or a
/// Unicode normal form, byte-level pre-tokeniser with its regex and no prefix space, BPE
/// without dropout, no post-processor but a byte-level one, no truncation or padding.
pub(crate) fn byte_level_bpe_pipeline(j: &serde_json::Value) -> bool {
    use serde_json::Value;
    let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_string);
    let normalizer_ok = match j.get("normalizer") {
        None | Some(Value::Null) => true,
        Some(n) => matches!(ty(n).as_deref(), Some("NFC" | "NFD" | "NFKC" | "NFKD")),
    };
    let pre = j.get("pre_tokenizer").unwrap_or(&Value::Null);
    let pre_ok = ty(pre).as_deref() == Some("ByteLevel")
        && pre.get("add_prefix_space").and_then(Value::as_bool) == Some(false)
        && pre
            .get("use_regex")
            .and_then(Value::as_bool)
            .unwrap_or(true);
    let model = j.get("model").unwrap_or(&Value::Null);
    let model_ok =
        ty(model).as_deref() == Some("BPE") && model.get("dropout").is_none_or(Value::is_null);
    let post_ok = match j.get("post_processor") {
        None | Some(Value::Null) => true,
        Some(p) => ty(p).as_deref() == Some("ByteLevel"),
    };
    let plain = |k: &str| j.get(k).is_none_or(Value::is_null);
    normalizer_ok && pre_ok && model_ok && post_ok && plain("truncation") && plain("padding")
}
