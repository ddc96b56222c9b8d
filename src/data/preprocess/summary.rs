//! `PREFIX.json`, the summary record of `lcm preprocess pile`: how the corpus was made
//! (format, tokenizer, inputs, fingerprint) and what it holds (documents, tokens, bytes,
//! per Pile set, what was skipped).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::resume::Fingerprint;
use super::Format;
use crate::data::indexed::TokenDtype;
use crate::data::inputs::InputKind;

/// Documents, tokens (EOD included) and bytes of text.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub documents: u64,
    pub tokens: u64,
    pub text_bytes: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        self.documents += o.documents;
        self.tokens += o.tokens;
        self.text_bytes += o.text_bytes;
    }
}

/// What was left out, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// Documents whose text is "" (GPT-NeoX skips them too).
    pub empty_documents: u64,
    /// Records that are not usable documents (with `--skip-bad-lines`).
    pub bad_lines: u64,
    /// Lines holding only whitespace.
    pub blank_lines: u64,
    /// Input files of 0 bytes (with `--skip-bad-lines`).
    pub empty_files: u64,
}

impl Skipped {
    pub(super) fn add(&mut self, o: &Skipped) {
        self.empty_documents += o.empty_documents;
        self.bad_lines += o.bad_lines;
        self.blank_lines += o.blank_lines;
        self.empty_files += o.empty_files;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputSummary {
    pub path: PathBuf,
    pub kind: InputKind,
    pub file_bytes: u64,
    #[serde(flatten)]
    pub counts: Counts,
    pub skipped: Skipped,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenizerSummary {
    pub path: PathBuf,
    pub sha256: String,
    pub vocab_size: usize,
    pub eod_token: String,
    pub eod_id: u32,
}

/// `PREFIX.json`: how the corpus was made and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub format: Format,
    pub files: Vec<PathBuf>,
    pub dtype: TokenDtype,
    pub append_eod: bool,
    pub tokenizer: TokenizerSummary,
    #[serde(flatten)]
    pub counts: Counts,
    /// Per `meta.pile_set_name` ("(none)" for documents without one).
    pub sets: BTreeMap<String, Counts>,
    pub skipped: Skipped,
    /// The first bad records (`path:line: reason`), at most [`MAX_EXAMPLES`].
    pub bad_line_examples: Vec<String>,
    pub inputs: Vec<InputSummary>,
    pub fingerprint: Fingerprint,
    /// The largest token id in the corpus (None when it has no tokens, or for a corpus
    /// written before lcm recorded it): checked against a model's vocabulary before
    /// training or evaluating on the corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_id: Option<u32>,
}

pub const MAX_EXAMPLES: usize = 20;
