//! Synthetic retrieval rows mixed into training windows (seed-report 7): a passkey needle
//! placed far back in the window and asked for at its end, with the loss on the answer, so
//! that retrieval is learned from the start rather than hoped for.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// A passkey row: `... needle key ... question key` where `key` is `key_len` random ids.
/// Ids are given directly (tokenised phrases for a real vocabulary, arbitrary ids for a
/// toy one), so this works with any tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyConfig {
    /// Fraction of training windows that get a needle.
    pub rate: f64,
    /// Tokens in the key.
    pub key_len: usize,
    /// Key ids are drawn uniformly from [key_lo, key_hi).
    pub key_lo: u32,
    pub key_hi: u32,
    /// Ids placed just before the key in the haystack ("The pass key is").
    pub needle: Vec<u32>,
    /// Ids placed before the answer at the end ("What is the pass key? The pass key is").
    pub question: Vec<u32>,
    /// The key sits at least this many tokens before the answer (e.g. past the window).
    #[serde(default)]
    pub min_gap: usize,
}

fn bad(key: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        key: format!("data.synthetic.{key}"),
        message: msg.into(),
    }
}

impl PasskeyConfig {
    pub fn validate(&self, seq_len: i64, vocab: i64) -> Result<()> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(bad("rate", "must be in [0, 1]"));
        }
        if self.key_len == 0 {
            return Err(bad("key_len", "must be positive"));
        }
        if self.key_lo >= self.key_hi || self.key_hi as i64 > vocab {
            return Err(bad("key_hi", "need key_lo < key_hi <= model.vocab_size"));
        }
        if let Some(&id) = self
            .needle
            .iter()
            .chain(&self.question)
            .find(|&&id| id as i64 >= vocab)
        {
            return Err(bad("needle", format!("id {id} is outside the vocabulary")));
        }
        if self.row_len() + self.min_gap > seq_len as usize {
            return Err(bad(
                "min_gap",
                format!(
                    "needle, question, two keys and min_gap need {} tokens, more than seq_len = {seq_len}",
                    self.row_len() + self.min_gap
                ),
            ));
        }
        Ok(())
    }

    fn row_len(&self) -> usize {
        self.needle.len() + self.question.len() + 2 * self.key_len
    }

    /// Writes a needle into `window` (seq_len + 1 tokens, inputs then the last target) and
    /// marks targets: `ignore[t]` for the key inside the haystack (unpredictable), and
    /// `answer[t]` for the key at the end. Target t predicts window[t + 1].
    pub fn insert(
        &self,
        window: &mut [u32],
        ignore: &mut [bool],
        answer: &mut [bool],
        rng: &mut SplitMix64,
    ) {
        let n = window.len();
        let key: Vec<u32> = (0..self.key_len)
            .map(|_| self.key_lo + rng.below((self.key_hi - self.key_lo) as u64) as u32)
            .collect();
        // The answer ends the window; the question sits right before it.
        let ans_start = n - self.key_len;
        let q_start = ans_start - self.question.len();
        window[q_start..ans_start].copy_from_slice(&self.question);
        window[ans_start..].copy_from_slice(&key);
        // The needle anywhere that leaves min_gap tokens between its key and the answer.
        let needle_len = self.needle.len() + self.key_len;
        let last = ans_start
            .saturating_sub(self.min_gap + needle_len)
            .min(q_start - needle_len);
        let p = rng.below(last as u64 + 1) as usize;
        window[p..p + self.needle.len()].copy_from_slice(&self.needle);
        let k0 = p + self.needle.len();
        window[k0..k0 + self.key_len].copy_from_slice(&key);
        ignore[k0.saturating_sub(1)..k0 + self.key_len - 1].fill(true);
        answer[ans_start - 1..n - 1].fill(true);
    }
}
