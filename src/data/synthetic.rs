//! Synthetic retrieval rows mixed into training windows (seed-report 7): a passkey needle
//! placed far back in the window and asked for at its end, with the loss on the answer, so
//! that retrieval is learned from the start rather than hoped for.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// Which retrieval task a synthetic row poses (seed-report 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One needle `needle key`; the answer is the key.
    #[default]
    Passkey,
    /// `n_keys` needles `needle name_i key_i` (RULER's multi-key NIAH); the question names
    /// one of them and the answer is its key.
    MultiKey,
    /// A chain `needle name_1 key`, `needle name_2 name_1`, ..., in order; the question asks
    /// for `name_n` and the answer is the key at the end of `n_keys` hops.
    MultiHop,
    /// RULER's variable tracking: the same chain, but the question gives the key and the
    /// answer is every name that holds it, in chain order (`n_keys * key_len` ids). With
    /// `chains` > 1, the other chains are distractors, each ending at its own key.
    VariableTracking,
    /// RULER's multi-query NIAH: `n_keys` needles `needle name_i key_i` (names and keys all
    /// different); the question lists every name and the answer is their keys in that
    /// order (`n_keys * key_len` ids). The needles sit in another, random order.
    MultiQuery,
}

/// A synthetic retrieval row: needles planted in the window and a question at its end,
/// answered by `key_len` random ids. Ids are given directly (tokenised phrases for a real
/// vocabulary, arbitrary ids for a toy one), so this works with any tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyConfig {
    #[serde(default)]
    pub task: Task,
    /// Needles (multi_key, multi_query), hops (multi_hop) or a chain's facts
    /// (variable_tracking: `n_keys - 1` hops in RULER's count); 1 for passkey.
    #[serde(default = "one")]
    pub n_keys: usize,
    /// variable_tracking: chains of `n_keys` facts each, the first asked, the others
    /// distractors (RULER's `num_chains`); 1 for every other task.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub chains: usize,
    /// Fraction of training windows that get a synthetic row.
    pub rate: f64,
    /// Tokens in each key and each name.
    pub key_len: usize,
    /// Key and name ids are drawn uniformly from [key_lo, key_hi).
    pub key_lo: u32,
    pub key_hi: u32,
    /// Ids placed before each planted fact ("The pass key is").
    pub needle: Vec<u32>,
    /// Ids placed before the answer at the end ("What is the pass key? The pass key is").
    pub question: Vec<u32>,
    /// Every fact sits at least this many tokens before the answer (e.g. past the window).
    #[serde(default)]
    pub min_gap: usize,
    /// Loss on the answer alone in synthetic rows (their haystack carries none): for a
    /// random-id haystack, whose next token is noise that drowns the answer's gradient.
    #[serde(default)]
    pub answer_only: bool,
    /// Weight of the answers' mean loss added to the text's mean loss (default: none, one
    /// mean over all targets). See [`crate::train::trainer::training_loss`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_weight: Option<f64>,
    /// The answer ends a random 0..=end_jitter tokens before the row's end (haystack
    /// follows it; fewer where the row has no room beside its facts and min_gap). A question always at the very end meets the chunk boundaries at one
    /// alignment only, and a chunked model learns that one: the real-text DRT of
    /// docs/experiments.md (f3-f5) answered 47 of 48 rows at its training alignment and 42
    /// of 48 one token off, the failures where the needle phrase is split across chunks.
    /// Unset in a config: the model's chunk size minus 1 (0 for swa/dense), filled in when
    /// the config loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_jitter: Option<usize>,
    /// Probability that a row's fact sits where NIAH's depths 0 and 1 put it and uniform
    /// placement almost never does (about once in `seq_len` rows): at token 0, with no text
    /// before the needle for the local layers to see, or (half of these rows) ending right
    /// before the question, inside the local window. It took the CPU toy's depth 1 from
    /// 70-90% to 95-100%; on the real-text DRT's 512K rows (one answer a row) it changes
    /// nothing measurable at depth 0 (docs/experiments.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edge_rate: f64,
    /// Other phrasings of the task, each row drawing uniformly among this config's own and
    /// these: e.g. the GCA passkey and RULER's single NIAH in one run, so that one model
    /// answers both `lcm eval niah --task passkey` and `--task s-niah`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Phrasing>,
}

/// A phrasing of a synthetic task: its needle and question ids and its keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phrasing {
    pub needle: Vec<u32>,
    pub question: Vec<u32>,
    pub key_len: usize,
    pub key_lo: u32,
    pub key_hi: u32,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn one() -> usize {
    1
}

fn is_one(x: &usize) -> bool {
    *x == 1
}

/// The ids of one synthetic question, before they are placed.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// Every planted fact (`needle key`, or `needle name value`): the asked chain's facts
    /// first, in chain order, then each distractor chain's; a multi-query's in the order
    /// asked.
    pub facts: Vec<Vec<u32>>,
    /// The chain of each fact (facts of one chain stay in order); 0 outside chain tasks.
    pub chain: Vec<usize>,
    /// The fact the question is about: the one NIAH places at the depth.
    pub answering: usize,
    /// The order a training row places the facts in (chains interleaved at random, a
    /// multi-query's needles shuffled), each chain's facts still in order.
    pub order: Vec<usize>,
    /// Ids after the question: the asked name(s), or a variable-tracking key.
    pub asked: Vec<u32>,
    pub answer: Vec<u32>,
    /// Parts of the answer scored one by one (each `key_len` ids): a multi-query's keys, a
    /// variable-tracking chain's names; 1 for the other tasks.
    pub parts: usize,
}

fn bad(key: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        key: format!("data.synthetic.{key}"),
        message: msg.into(),
    }
}

impl PasskeyConfig {
    /// The plain passkey task on every row: one key of `key_len` ids from
    /// `[key_lo, key_hi)` after `needle`, asked for by `question`, nothing else set.
    pub fn passkey(
        key_len: usize,
        (key_lo, key_hi): (u32, u32),
        needle: Vec<u32>,
        question: Vec<u32>,
    ) -> PasskeyConfig {
        PasskeyConfig {
            task: Task::Passkey,
            n_keys: 1,
            chains: 1,
            rate: 1.0,
            key_len,
            key_lo,
            key_hi,
            needle,
            question,
            min_gap: 0,
            answer_only: false,
            answer_weight: None,
            end_jitter: None,
            edge_rate: 0.0,
            variants: vec![],
        }
    }

    /// This config with `variants[i - 1]`'s phrasing (`i = 0`: its own), no variants.
    pub fn phrased(&self, i: usize) -> PasskeyConfig {
        let mut c = PasskeyConfig {
            variants: vec![],
            ..self.clone()
        };
        if let Some(p) = i.checked_sub(1).map(|j| &self.variants[j]) {
            c.needle = p.needle.clone();
            c.question = p.question.clone();
            c.key_len = p.key_len;
            c.key_lo = p.key_lo;
            c.key_hi = p.key_hi;
        }
        c
    }

    pub fn validate(&self, seq_len: i64, vocab: i64) -> Result<()> {
        for i in 1..=self.variants.len() {
            self.phrased(i)
                .validate(seq_len, vocab)
                .map_err(|e| match e {
                    Error::Config { key, message } => Error::Config {
                        key: key.replace(
                            "data.synthetic.",
                            &format!("data.synthetic.variants[{}].", i - 1),
                        ),
                        message,
                    },
                    e => e,
                })?;
        }
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(bad("rate", "must be in [0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.edge_rate) {
            return Err(bad("edge_rate", "must be in [0, 1]"));
        }
        if self
            .answer_weight
            .is_some_and(|w| !(w >= 0.0 && w.is_finite()))
        {
            return Err(bad("answer_weight", "must be a finite number >= 0"));
        }
        if self.key_len == 0 {
            return Err(bad("key_len", "must be positive"));
        }
        if self.key_lo >= self.key_hi || self.key_hi as i64 > vocab {
            return Err(bad("key_hi", "need key_lo < key_hi <= model.vocab_size"));
        }
        if self.n_keys == 0 || (self.task == Task::Passkey && self.n_keys != 1) {
            return Err(bad(
                "n_keys",
                "must be 1 for passkey and at least 1 otherwise",
            ));
        }
        if self.chains == 0 || (self.task != Task::VariableTracking && self.chains != 1) {
            return Err(bad(
                "chains",
                "must be 1 (the default) except for variable_tracking, where it is at least 1",
            ));
        }
        let distinct = ((self.key_hi - self.key_lo) as f64).powi(self.key_len as i32);
        if (self.distinct_ids() as f64) > distinct / 2.0 {
            return Err(bad(
                "n_keys",
                format!("too many for {distinct} possible names"),
            ));
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
                    "the facts, question, answer and min_gap need {} tokens, more than seq_len = {seq_len}",
                    self.row_len() + self.min_gap
                ),
            ));
        }
        Ok(())
    }

    /// Names and keys a row draws pairwise different.
    fn distinct_ids(&self) -> usize {
        match self.task {
            Task::MultiQuery => 2 * self.n_keys,
            _ => self.chains * (self.n_keys + 1),
        }
    }

    /// Tokens of one planted fact.
    fn fact_len(&self) -> usize {
        self.needle.len()
            + match self.task {
                Task::Passkey => self.key_len,
                _ => 2 * self.key_len,
            }
    }

    /// Ids of the answer at the end of the row.
    fn answer_len(&self) -> usize {
        match self.task {
            Task::VariableTracking | Task::MultiQuery => self.n_keys * self.key_len,
            _ => self.key_len,
        }
    }

    /// Tokens of every fact, the question (with its name) and the answer.
    fn row_len(&self) -> usize {
        let facts = self.fact_len() * self.n_keys * self.chains;
        let asked = match self.task {
            Task::Passkey => 0,
            Task::MultiQuery => self.n_keys * self.key_len,
            _ => self.key_len,
        };
        facts + self.question.len() + asked + self.answer_len()
    }

    fn random_key(&self, rng: &mut SplitMix64) -> Vec<u32> {
        (0..self.key_len)
            .map(|_| self.key_lo + rng.below((self.key_hi - self.key_lo) as u64) as u32)
            .collect()
    }

    /// `n` random keys, pairwise different (so a question has one answer).
    fn distinct_keys(&self, n: usize, rng: &mut SplitMix64) -> Vec<Vec<u32>> {
        let mut keys: Vec<Vec<u32>> = Vec::with_capacity(n);
        self.more_distinct_keys(&mut keys, n, rng);
        keys
    }

    /// Adds random keys to `keys` until it holds `n`, each different from all before.
    fn more_distinct_keys(&self, keys: &mut Vec<Vec<u32>>, n: usize, rng: &mut SplitMix64) {
        while keys.len() < n {
            let k = self.random_key(rng);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }

    /// Draws one question's facts, asked ids and answer (the row's or NIAH sample's ids
    /// before placement). The draws of passkey, multi_key, multi_hop and one-chain
    /// variable_tracking are those these tasks always made, so their rows and samples stay
    /// what they were.
    pub fn draw(&self, rng: &mut SplitMix64) -> Drawn {
        let fact = |parts: &[&[u32]]| [&[self.needle.as_slice()], parts].concat().concat();
        let one = |facts: Vec<Vec<u32>>, answering, asked, answer| Drawn {
            chain: vec![0; facts.len()],
            order: (0..facts.len()).collect(),
            facts,
            answering,
            asked,
            answer,
            parts: 1,
        };
        match self.task {
            Task::Passkey => {
                let key = self.random_key(rng);
                one(vec![fact(&[&key])], 0, vec![], key)
            }
            Task::MultiKey => {
                let names = self.distinct_keys(self.n_keys, rng);
                let keys: Vec<Vec<u32>> = (0..self.n_keys).map(|_| self.random_key(rng)).collect();
                let facts = names
                    .iter()
                    .zip(&keys)
                    .map(|(n, k)| fact(&[n, k]))
                    .collect();
                let j = rng.below(self.n_keys as u64) as usize;
                one(facts, j, names[j].clone(), keys[j].clone())
            }
            Task::MultiQuery => {
                let n = self.n_keys;
                let mut names = self.distinct_keys(2 * n, rng);
                let keys = names.split_off(n);
                let mut order: Vec<usize> = (0..n).collect();
                shuffle(&mut order, rng);
                Drawn {
                    facts: names
                        .iter()
                        .zip(&keys)
                        .map(|(n, k)| fact(&[n, k]))
                        .collect(),
                    chain: vec![0; n],
                    answering: 0,
                    order,
                    asked: names.concat(),
                    answer: keys.concat(),
                    parts: n,
                }
            }
            Task::MultiHop | Task::VariableTracking => {
                // Chain c: name_0 holds its key, name_i holds name_{i-1}. Names and keys of
                // all chains differ; chain 0 is asked.
                let n = self.n_keys;
                let mut ids = self.distinct_keys(n + 1, rng);
                self.more_distinct_keys(&mut ids, self.chains * (n + 1), rng);
                let mut facts = Vec::with_capacity(self.chains * n);
                for chain in ids.chunks(n + 1) {
                    let (names, key) = (&chain[..n], &chain[n]);
                    for i in 0..n {
                        let value = if i == 0 { key } else { &names[i - 1] };
                        facts.push(fact(&[&names[i], value]));
                    }
                }
                let chain: Vec<usize> = (0..facts.len()).map(|i| i / n).collect();
                // A uniformly random interleaving of the chains, each kept in order.
                let mut order: Vec<usize> = (0..facts.len()).collect();
                if self.chains > 1 {
                    let mut labels = chain.clone();
                    shuffle(&mut labels, rng);
                    let mut next: Vec<usize> = (0..self.chains).map(|c| c * n).collect();
                    order = labels
                        .into_iter()
                        .map(|c| {
                            next[c] += 1;
                            next[c] - 1
                        })
                        .collect();
                }
                let (names, key) = (&ids[..n], &ids[n]);
                let (asked, answer, parts) = if self.task == Task::MultiHop {
                    (names[n - 1].clone(), key.clone(), 1)
                } else {
                    (key.clone(), names.concat(), n)
                };
                Drawn {
                    facts,
                    chain,
                    answering: 0,
                    order,
                    asked,
                    answer,
                    parts,
                }
            }
        }
    }

    /// Writes a row into `window` (seq_len + 1 tokens, inputs then the last target) and
    /// marks targets: `ignore[t]` for names and keys inside the haystack (unpredictable),
    /// `answer[t]` for the answer at the end. Target t predicts window[t + 1].
    pub fn insert(
        &self,
        window: &mut [u32],
        ignore: &mut [bool],
        answer: &mut [bool],
        rng: &mut SplitMix64,
    ) {
        if !self.variants.is_empty() {
            let i = rng.below(self.variants.len() as u64 + 1) as usize;
            return self.phrased(i).insert(window, ignore, answer, rng);
        }
        // At most what the row leaves free (a short curriculum stage may leave none); drawn
        // only when there is a choice, so that rows without one stay what they were.
        let room = (window.len() - 1).saturating_sub(self.row_len() + self.min_gap);
        let jitter = match self.end_jitter.unwrap_or(0).min(room) {
            0 => 0,
            j => rng.below(j as u64 + 1) as usize,
        };
        let n = window.len() - jitter;
        let (window, ignore, answer) =
            (&mut window[..n], &mut ignore[..n - 1], &mut answer[..n - 1]);
        let drawn = self.draw(rng);
        let (asked, key) = (&drawn.asked, &drawn.answer);
        // The end of the window: question, the asked name (if any), the answer.
        let ans_start = n - key.len();
        let q_start = ans_start - asked.len() - self.question.len();
        window[q_start..q_start + self.question.len()].copy_from_slice(&self.question);
        window[q_start + self.question.len()..ans_start].copy_from_slice(asked);
        window[ans_start..].copy_from_slice(key);
        answer[ans_start - 1..n - 1].fill(true);
        // Facts in order at random non-overlapping places, all ending min_gap before the
        // answer: draw the free space before each fact, sorted.
        let facts: Vec<&Vec<u32>> = drawn.order.iter().map(|&i| &drawn.facts[i]).collect();
        let total: usize = facts.iter().map(|f| f.len()).sum();
        let limit = ans_start.saturating_sub(self.min_gap).min(q_start);
        let free = limit - total;
        let mut gaps: Vec<usize> = (0..facts.len())
            .map(|_| rng.below(free as u64 + 1) as usize)
            .collect();
        gaps.sort_unstable();
        // Drawn only when asked for, so that rows without it stay what they were.
        if self.edge_rate > 0.0 && rng.unit() < self.edge_rate {
            if rng.below(2) == 0 {
                gaps[0] = 0;
            } else {
                *gaps.last_mut().unwrap() = free;
            }
        }
        let mut used = 0;
        for (fact, gap) in facts.into_iter().zip(gaps) {
            let p = gap + used;
            window[p..p + fact.len()].copy_from_slice(fact);
            let secret = p + self.needle.len();
            ignore[secret.saturating_sub(1)..p + fact.len() - 1].fill(true);
            used += fact.len();
        }
    }
}

/// Shuffles `items` uniformly (Fisher-Yates).
pub fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}
