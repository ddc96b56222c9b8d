//! The tokenizer alone: the `tokenizers` crate encoding in-memory texts on all cores (no
//! I/O, no JSON, no writing), the ceiling for `lcm preprocess pile` on the same texts.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::data::inputs::{parse_line, BatchLimits, Records, ShardReader};
use crate::data::Tokenizer;
use crate::error::{Error, Result};

/// The non-empty `text` of every record of `paths`, in order.
pub fn load_texts(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut texts = vec![];
    for path in paths {
        let mut r = ShardReader::open(path, BatchLimits::default(), Arc::new(AtomicU64::new(0)))?;
        while let Some(b) = r.next_batch()? {
            match b.records {
                Records::Lines { buf, ends } => {
                    let mut start = 0;
                    for (i, end) in ends.into_iter().enumerate() {
                        let line = &buf[start..end];
                        start = end;
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let doc = parse_line(line)
                            .map_err(|m| Error::input(path, Some(b.first_line + i as u64), m))?;
                        if !doc.text.is_empty() {
                            texts.push(doc.text.into_owned());
                        }
                    }
                }
                Records::Texts(t) => {
                    texts.extend(t.into_iter().flatten().filter(|s| !s.is_empty()))
                }
            }
        }
    }
    Ok(texts)
}

/// Which encoder to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoder {
    /// `tokenizers`' own `Tokenizer::encode_fast`, one call a document.
    Tokenizers,
    /// What `lcm preprocess` runs: the exact ASCII fast path, long documents in pieces
    /// ([`crate::data::Tokenizer::encode_doc`]).
    Lcm,
}

#[derive(Debug, serde::Serialize)]
pub struct TokenizerReport {
    pub encoder: Encoder,
    pub threads: usize,
    pub documents: usize,
    pub text_bytes: u64,
    /// Tokens including one EOD a document, as a corpus counts them.
    pub tokens: u64,
    /// Median over the repeats.
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub mb_per_s: f64,
}

impl std::fmt::Display for TokenizerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tokenizer alone ({}), {} threads: {} documents, {:.1} MB, {} tokens in {:.3} s = {:.0} tokens/s ({:.2} MB/s)",
            match self.encoder {
                Encoder::Tokenizers => "tokenizers encode_fast",
                Encoder::Lcm => "lcm encoder",
            },
            self.threads,
            self.documents,
            self.text_bytes as f64 / 1e6,
            self.tokens,
            self.seconds,
            self.tokens_per_s,
            self.mb_per_s
        )
    }
}

/// Encodes every text (one call a document, dynamic load balancing over `threads` rayon
/// threads), `repeats` times; reports the median.
pub fn run(
    tok: &Tokenizer,
    texts: &[String],
    encoder: Encoder,
    threads: usize,
    repeats: usize,
) -> Result<TokenizerReport> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?;
    let inner = tok.inner();
    let mut samples = vec![];
    let mut tokens = 0;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        tokens = pool
            .install(|| {
                texts
                    .par_iter()
                    .map(|s| match encoder {
                        Encoder::Tokenizers => inner
                            .encode_fast(s.as_str(), true)
                            .map(|e| e.len() as u64 + 1)
                            .map_err(|e| e.to_string()),
                        Encoder::Lcm => tok.encode_doc(s).map(|ids| ids.len() as u64),
                    })
                    .try_reduce(|| 0, |a, b| Ok(a + b))
            })
            .map_err(|e| Error::Invalid(format!("tokenizer failed: {e}")))?;
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    let seconds = samples[samples.len() / 2];
    let text_bytes = texts.iter().map(|s| s.len() as u64).sum();
    Ok(TokenizerReport {
        encoder,
        threads,
        documents: texts.len(),
        text_bytes,
        tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
        mb_per_s: text_bytes as f64 / seconds / 1e6,
    })
}
