//! What `lcm corpus stats` reports about a corpus: sizes, document lengths, EOD
//! placement, and the per-set counts its `PREFIX.json` recorded.

use std::path::{Path, PathBuf};

use crate::data::indexed::{with_suffix, IndexedCorpus, RawCorpus, TokenDtype, Tokens};
use crate::data::preprocess::{Format, Summary};
use crate::error::{Error, Result};

/// A corpus opened by prefix, whichever format it is in.
pub enum Corpus {
    Indexed(IndexedCorpus),
    /// The flat format with its document ranges (split at EOD).
    Raw(RawCorpus, Vec<std::ops::Range<usize>>),
}

/// `PREFIX`, or a path to one of its files (`x.bin`, `x.idx`, `x.data`, `x.json`).
pub fn normalize_prefix(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    for ext in [".bin", ".idx", ".data", ".json"] {
        if let Some(stem) = s.strip_suffix(ext) {
            return PathBuf::from(stem);
        }
    }
    p.to_path_buf()
}

/// The `PREFIX.json` beside a corpus, if there is a readable one.
pub fn read_summary(prefix: &Path) -> Option<Summary> {
    let bytes = std::fs::read(with_suffix(prefix, ".json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The largest token id of the indexed corpus at `prefix` (None when it has no tokens):
/// the one its `PREFIX.json` records when that describes this corpus (the same number of
/// tokens), else found by a scan of the mapped ids (a corpus written before lcm recorded
/// it, or by another tool).
pub fn max_token_id(prefix: &Path, corpus: &IndexedCorpus) -> Option<u32> {
    read_summary(&normalize_prefix(prefix))
        .filter(|s| s.format == Format::Indexed && s.counts.tokens == corpus.num_tokens())
        .and_then(|s| s.max_token_id)
        .or_else(|| corpus.tokens().max())
}

/// Fails unless every token id of the indexed corpus at `prefix` is below `vocab_size`, the
/// ids a model can embed: checked when a corpus is opened for training or evaluation, before
/// any work, instead of a crash in the embedding.
pub fn check_vocab(prefix: &Path, corpus: &IndexedCorpus, vocab_size: i64) -> Result<()> {
    match max_token_id(prefix, corpus) {
        Some(max) if i64::from(max) >= vocab_size => Err(Error::corpus(
            prefix,
            format!(
                "token id {max} is its largest, outside the model's vocabulary \
                 (model.vocab_size {vocab_size}: ids 0 to {}); the corpus was made with another \
                 tokenizer than the model's, or the model is too small for it",
                vocab_size - 1
            ),
        )),
        _ => Ok(()),
    }
}

impl Corpus {
    /// Opens `PREFIX.bin/.idx`, or else `PREFIX.data` (documents split at `eod`).
    pub fn open(prefix: &Path, eod: u32) -> Result<Self> {
        let prefix = normalize_prefix(prefix);
        if with_suffix(&prefix, ".idx").exists() || with_suffix(&prefix, ".bin").exists() {
            return Ok(Corpus::Indexed(IndexedCorpus::open(&prefix)?));
        }
        let data = with_suffix(&prefix, ".data");
        if data.exists() {
            let raw = RawCorpus::open(&data)?;
            let docs = raw.documents(eod);
            return Ok(Corpus::Raw(raw, docs));
        }
        Err(Error::corpus(
            &prefix,
            "no corpus here: neither PREFIX.bin/PREFIX.idx nor PREFIX.data exists",
        ))
    }

    pub fn format(&self) -> Format {
        match self {
            Corpus::Indexed(_) => Format::Indexed,
            Corpus::Raw(..) => Format::Raw,
        }
    }

    pub fn dtype(&self) -> TokenDtype {
        match self {
            Corpus::Indexed(c) => c.dtype(),
            Corpus::Raw(..) => TokenDtype::Uint16,
        }
    }

    pub fn num_documents(&self) -> usize {
        match self {
            Corpus::Indexed(c) => c.num_documents(),
            Corpus::Raw(_, d) => d.len(),
        }
    }

    pub fn document(&self, i: usize) -> Result<Tokens<'_>> {
        let n = self.num_documents();
        if i >= n {
            return Err(Error::Invalid(format!(
                "document {i}: the corpus has {n} (0..{n})"
            )));
        }
        Ok(match self {
            Corpus::Indexed(c) => c.document(i),
            Corpus::Raw(r, d) => r.tokens().slice(d[i].clone()),
        })
    }

    pub fn tokens(&self) -> Tokens<'_> {
        match self {
            Corpus::Indexed(c) => c.tokens(),
            Corpus::Raw(r, _) => r.tokens(),
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct CorpusStats {
    pub prefix: PathBuf,
    pub format: Format,
    pub dtype: TokenDtype,
    pub documents: u64,
    pub tokens: u64,
    pub bytes: u64,
    pub min_doc_tokens: u64,
    pub median_doc_tokens: u64,
    pub mean_doc_tokens: f64,
    pub max_doc_tokens: u64,
    /// Documents whose last token is the EOD id.
    pub docs_ending_with_eod: u64,
    pub eod_id: u32,
    /// The largest token id (None without tokens): a model needs a vocabulary above it.
    pub max_token_id: Option<u32>,
    /// The summary written beside the corpus by `lcm preprocess`, if any.
    pub summary: Option<Summary>,
}

/// Opens the corpus at `prefix`, checks every index entry, and measures it.
pub fn corpus_stats(prefix: &Path) -> Result<CorpusStats> {
    let prefix = normalize_prefix(prefix);
    let summary = read_summary(&prefix);
    let eod = summary.as_ref().map_or(0, |s| s.tokenizer.eod_id);
    let c = Corpus::open(&prefix, eod)?;
    if let Corpus::Indexed(ic) = &c {
        ic.verify()?;
    }
    let n = c.num_documents();
    let mut lens = Vec::with_capacity(n);
    let mut ending = 0u64;
    for i in 0..n {
        let d = c.document(i)?;
        lens.push(d.len() as u64);
        if !d.is_empty() && d.get(d.len() - 1) == eod {
            ending += 1;
        }
    }
    let tokens = c.tokens().len() as u64;
    let mut sorted = lens.clone();
    sorted.sort_unstable();
    Ok(CorpusStats {
        format: c.format(),
        dtype: c.dtype(),
        documents: n as u64,
        tokens,
        bytes: tokens * c.dtype().size() as u64,
        min_doc_tokens: sorted.first().copied().unwrap_or(0),
        median_doc_tokens: sorted.get(n / 2).copied().unwrap_or(0),
        mean_doc_tokens: if n == 0 {
            0.0
        } else {
            tokens as f64 / n as f64
        },
        max_doc_tokens: sorted.last().copied().unwrap_or(0),
        docs_ending_with_eod: ending,
        eod_id: eod,
        max_token_id: c.tokens().max(),
        summary,
        prefix,
    })
}

impl std::fmt::Display for CorpusStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fmt = match self.format {
            Format::Indexed => "Megatron/GPT-NeoX indexed (.bin + .idx)",
            Format::Raw => "raw flat uint16 (.data)",
        };
        writeln!(f, "corpus     {}", self.prefix.display())?;
        writeln!(f, "format     {fmt}, {}", self.dtype.name())?;
        writeln!(f, "documents  {}", self.documents)?;
        writeln!(
            f,
            "tokens     {} ({:.1} MB), EOD id {} ends {} of {} documents",
            self.tokens,
            self.bytes as f64 / 1e6,
            self.eod_id,
            self.docs_ending_with_eod,
            self.documents
        )?;
        writeln!(
            f,
            "doc tokens min {} / median {} / mean {:.1} / max {}",
            self.min_doc_tokens, self.median_doc_tokens, self.mean_doc_tokens, self.max_doc_tokens
        )?;
        match self.max_token_id {
            Some(m) => write!(
                f,
                "largest id {m} (a model needs model.vocab_size above it)"
            )?,
            None => write!(f, "largest id none (no tokens)")?,
        }
        if let Some(s) = &self.summary {
            writeln!(f)?;
            writeln!(
                f,
                "tokenizer  {} (sha256 {}…, {} ids)",
                s.tokenizer.path.display(),
                &s.tokenizer.sha256[..12.min(s.tokenizer.sha256.len())],
                s.tokenizer.vocab_size
            )?;
            writeln!(f, "inputs     {} files", s.inputs.len())?;
            writeln!(
                f,
                "skipped    {} empty documents, {} bad lines, {} blank lines, {} empty files",
                s.skipped.empty_documents,
                s.skipped.bad_lines,
                s.skipped.blank_lines,
                s.skipped.empty_files
            )?;
            writeln!(
                f,
                "{:<24} {:>10} {:>14} {:>14}",
                "pile_set_name", "documents", "tokens", "text bytes"
            )?;
            let mut rows = s.sets.iter().peekable();
            while let Some((k, v)) = rows.next() {
                write!(
                    f,
                    "{:<24} {:>10} {:>14} {:>14}",
                    k, v.documents, v.tokens, v.text_bytes
                )?;
                if rows.peek().is_some() {
                    writeln!(f)?;
                }
            }
        }
        Ok(())
    }
}
