//! `lcm eval ppl`: the language-modelling loss by context length, through the segmented
//! engine. For each length, `samples` windows of `length + 1` tokens at seeded positions of
//! a corpus; the loss is the mean next-token cross-entropy over every position of the
//! window (nats per token, the "log-loss"; the reference prints this figure as
//! "perplexity"), and the perplexity is its exponential.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::engine::{Engine, PrefillOptions};
use crate::data::IndexedCorpus;
use crate::error::{Error, Result};
use crate::ops::cross_entropy;
use crate::util::SplitMix64;

/// Positions whose logits are formed at once: bounds the `(positions, vocab)` logits (fp32 at most).
const LOGIT_BLOCK: i64 = 2048;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PplRow {
    pub length: i64,
    pub used_length: i64,
    pub samples: usize,
    pub tokens: i64,
    /// Mean cross-entropy, nats per token.
    pub log_loss: f64,
    pub perplexity: f64,
    pub tokens_per_second: f64,
}

impl PplRow {
    /// One row from the rows of the same length that several ranks measured over their
    /// shares of the samples (token-weighted loss, summed tokens and time).
    pub fn combine(parts: &[PplRow]) -> Option<PplRow> {
        let first = parts.first()?;
        let tokens: i64 = parts.iter().map(|r| r.tokens).sum();
        let loss_sum: f64 = parts.iter().map(|r| r.log_loss * r.tokens as f64).sum();
        let secs: f64 = parts
            .iter()
            .map(|r| r.tokens as f64 / r.tokens_per_second.max(1e-9))
            .sum();
        let log_loss = loss_sum / tokens.max(1) as f64;
        Some(PplRow {
            length: first.length,
            used_length: first.used_length,
            samples: parts.iter().map(|r| r.samples).sum(),
            tokens,
            log_loss,
            perplexity: log_loss.exp(),
            tokens_per_second: tokens as f64 / secs.max(1e-9),
        })
    }
}

/// The windows of each length are numbered 0..samples; `part` runs its share of them
/// (window `s` on rank `s % world`), each at the same seeded position as in one process.
#[allow(clippy::too_many_arguments)]
pub fn run(
    engine: &Engine,
    corpus: &IndexedCorpus,
    corpus_name: &str,
    lengths: &[i64],
    samples: usize,
    seed: u64,
    prefill: &PrefillOptions,
    progress: Option<&indicatif::ProgressBar>,
    part: super::grid::Part,
) -> Result<Vec<PplRow>> {
    if samples == 0 {
        return Err(Error::Invalid(
            "0 samples: a loss needs at least one window per length (--samples)".into(),
        ));
    }
    let toks = corpus.tokens();
    let vocab = engine.config().vocab_size;
    let mut rows = Vec::new();
    for (li, &length) in lengths.iter().enumerate() {
        let used = engine.usable_length(length);
        if toks.len() < used as usize + 1 {
            return Err(Error::Invalid(format!(
                "{corpus_name}: {} tokens, fewer than the {} a window of length {length} needs",
                toks.len(),
                used + 1
            )));
        }
        let (mut sum, mut count, mut secs) = (0.0f64, 0i64, 0.0f64);
        let mine: Vec<usize> = (0..samples).filter(|&s| part.owns(s)).collect();
        for &s in &mine {
            let mut rng = SplitMix64::for_item(seed, ((li as u64) << 32) | s as u64);
            let start = rng.below((toks.len() - used as usize) as u64) as usize;
            let ids: Vec<i64> = toks
                .slice(start..start + used as usize + 1)
                .iter()
                .map(|t| t as i64)
                .collect();
            if let Some(&bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(Error::Invalid(format!(
                    "{corpus_name}: token id {bad} is outside the model's vocabulary \
                     (model.vocab_size {vocab})"
                )));
            }
            let window = Tensor::from_slice(&ids);
            let inputs = window.narrow(0, 0, used).view([1, used]);
            let targets = window.narrow(0, 1, used).to_device(engine.device);
            let stats = engine.prefill(&inputs, prefill, progress, |start, h| {
                let len = h.size()[1];
                let mut at = 0;
                while at < len {
                    let n = LOGIT_BLOCK.min(len - at);
                    let logits = engine.model.head(&h.narrow(1, at, n)).reshape([n, -1]);
                    let t = targets.narrow(0, start + at, n);
                    sum += cross_entropy(&logits, &t)
                        .sum(Kind::Float)
                        .double_value(&[]);
                    count += n;
                    at += n;
                }
                Ok(())
            })?;
            secs += stats.seconds;
        }
        let log_loss = sum / count.max(1) as f64;
        rows.push(PplRow {
            length,
            used_length: used,
            samples: mine.len(),
            tokens: count,
            log_loss,
            perplexity: log_loss.exp(),
            tokens_per_second: count as f64 / secs.max(1e-9),
        });
    }
    Ok(rows)
}
