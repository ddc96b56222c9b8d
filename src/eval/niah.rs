//! Needle in a haystack (seed-report 7): a grid of lengths x depths x samples, each sample
//! a haystack with its fact(s) planted at the depth and the question at the end, scored
//! teacher-forced: a hit needs every answer token to be the argmax. The reference's
//! single-token score (the first answer token for passkey / single NIAH, the last for the
//! others) is reported beside it, for comparison with its tables.
//!
//! Layout of a sample of length L: `haystack[..p] fact haystack[p..] question asked answer`,
//! the answer's last token at position L-1, `p = round(depth * H)` over the `H` haystack
//! tokens (depth 0: the very start; 1: right before the question). Other facts (distractor
//! keys, the rest of a chain) sit at seeded random places, after the answering fact for a
//! chain. The task's ids (needle phrase, question, key range and length) come from the
//! checkpoint's training config (`data.synthetic`), so a model is asked what it was taught;
//! without one, `passkey` is the GCA reference's text passkey, and `s-niah` is always
//! RULER's; both phrases go through the NeoX tokenizer.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::synthetic::{PasskeyConfig, Task};
use crate::data::IndexedCorpus;
use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// Which NIAH task (`--task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NiahTask {
    /// The GCA passkey: one needle with a random key, the question at the end.
    Passkey,
    /// RULER single NIAH: "One of the special magic numbers for long-context is: ..."
    /// with a 7-token random key (needs the NeoX tokenizer).
    SNiah,
    /// Multi-key NIAH: several named keys; the question names one.
    MqNiah,
    /// A chain of `--keys` hops from the asked name to the key.
    Multihop,
    /// Variable tracking: every name in the chain that holds the key.
    Vt,
}

impl NiahTask {
    pub fn name(self) -> &'static str {
        match self {
            NiahTask::Passkey => "passkey",
            NiahTask::SNiah => "s-niah",
            NiahTask::MqNiah => "mq-niah",
            NiahTask::Multihop => "multihop",
            NiahTask::Vt => "vt",
        }
    }
}

/// The ids a task is built from.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub task: NiahTask,
    pub facts: PasskeyConfig,
}

/// RULER's single-NIAH phrases (seed-report 7.2), tokenised at run time.
const RULER_NEEDLE: &str = " |One of the special magic numbers for long-context is:";
const RULER_QUESTION: &str =
    " What is the special magic number for long-context mentioned in the provided text? Answer:";

impl TaskSpec {
    /// The task as the model was trained on it: `trained` is the checkpoint's
    /// `data.synthetic`; `keys` the facts for mq-niah / hops for multihop and vt.
    /// `tokenizer` is needed for s-niah.
    pub fn new(
        task: NiahTask,
        trained: Option<&PasskeyConfig>,
        keys: usize,
        vocab: i64,
        tokenizer: Option<&Path>,
    ) -> Result<Self> {
        let mut facts = match (task, trained) {
            (NiahTask::SNiah, trained) => {
                let ruler = ruler_single(vocab, tokenizer)?;
                // A model trained on RULER's phrasing is asked with its own keys (e.g. digits).
                trained
                    .and_then(|t| {
                        (0..=t.variants.len())
                            .map(|i| t.phrased(i))
                            .find(|p| p.needle == ruler.needle && p.question == ruler.question)
                    })
                    .unwrap_or(ruler)
            }
            (_, Some(t)) => t.phrased(0),
            (NiahTask::Passkey, None) => gca_passkey(vocab, tokenizer)?,
            (_, None) => {
                return Err(Error::Invalid(format!(
                    "task {} takes its ids from the checkpoint's data.synthetic, which this \
                     checkpoint's training config does not have (passkey and s-niah work for a \
                     model trained on NeoX-tokenised text only)",
                    task.name()
                )))
            }
        };
        facts.task = match task {
            NiahTask::Passkey | NiahTask::SNiah => Task::Passkey,
            NiahTask::MqNiah => Task::MultiKey,
            NiahTask::Multihop => Task::MultiHop,
            NiahTask::Vt => Task::VariableTracking,
        };
        facts.n_keys = if facts.task == Task::Passkey {
            1
        } else {
            keys.max(1)
        };
        facts.min_gap = 0;
        Ok(TaskSpec { task, facts })
    }

    /// Index of the answer token the reference scores alone.
    fn single_token(&self, answer_len: usize) -> usize {
        match self.task {
            NiahTask::Passkey | NiahTask::SNiah => 0,
            _ => answer_len - 1,
        }
    }
}

/// The GCA reference's passkey (seed-report 7.1): `|The passkey is:` and 5 random ids from
/// [0, 50256), asked as `|What is the passkey? The passkey is`. Used when the checkpoint
/// was not trained with a synthetic task of its own.
fn gca_passkey(vocab: i64, tokenizer: Option<&Path>) -> Result<PasskeyConfig> {
    let (needle, question) = phrases(
        vocab,
        tokenizer,
        "|The passkey is:",
        "|What is the passkey? The passkey is",
        "passkey",
    )?;
    Ok(PasskeyConfig::passkey(5, (0, 50256), needle, question))
}

fn ruler_single(vocab: i64, tokenizer: Option<&Path>) -> Result<PasskeyConfig> {
    let (needle, question) = phrases(vocab, tokenizer, RULER_NEEDLE, RULER_QUESTION, "s-niah")?;
    Ok(PasskeyConfig::passkey(7, (100, 50000), needle, question))
}

/// `needle` and `question` tokenised by the NeoX tokenizer (`task` names the task in errors).
fn phrases(
    vocab: i64,
    tokenizer: Option<&Path>,
    needle: &str,
    question: &str,
    task: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let path = tokenizer
        .map(Path::to_path_buf)
        .unwrap_or_else(crate::info::default_tokenizer_path);
    let tok = crate::data::Tokenizer::load(&path, "<|endoftext|>")?;
    if (tok.vocab_size() as i64) > vocab {
        return Err(Error::Invalid(format!(
            "{task} needs a model over the NeoX vocabulary of {}, this one has {vocab} ids",
            tok.vocab_size()
        )));
    }
    let encode = |text: &str| {
        tok.encode_doc(text)
            .map_err(|msg| Error::Tokenizer {
                path: path.clone(),
                msg,
            })
            .map(|mut ids| {
                ids.pop(); // the end-of-document id encode_doc appends
                ids
            })
    };
    Ok((encode(needle)?, encode(question)?))
}

/// Where haystack tokens come from.
pub enum Haystack {
    /// Real text: a corpus's token stream from a seeded start, looped to the length.
    Corpus {
        prefix: PathBuf,
        corpus: IndexedCorpus,
    },
    /// Uniformly random ids in `[lo, hi)` (toy models trained on such a haystack).
    Random { lo: u32, hi: u32 },
}

impl Haystack {
    pub fn describe(&self) -> String {
        match self {
            Haystack::Corpus { prefix, .. } => format!("corpus {}", prefix.display()),
            Haystack::Random { lo, hi } => format!("random ids in [{lo}, {hi})"),
        }
    }

    fn fill(&self, n: usize, rng: &mut SplitMix64) -> Result<Vec<u32>> {
        Ok(match self {
            Haystack::Random { lo, hi } => (0..n)
                .map(|_| lo + rng.below((hi - lo) as u64) as u32)
                .collect(),
            Haystack::Corpus { prefix, corpus } => {
                let toks = corpus.tokens();
                if toks.is_empty() {
                    return Err(Error::corpus(prefix, "no tokens to build a haystack from"));
                }
                let len = toks.len();
                let mut at = rng.below(len as u64) as usize;
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    let take = (n - out.len()).min(len - at);
                    out.extend(toks.slice(at..at + take).iter());
                    at = (at + take) % len;
                }
                out
            }
        })
    }
}

/// One built sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub tokens: Vec<u32>,
    /// Position of the first answer token (the answer runs to the end).
    pub answer_start: usize,
    pub answer: Vec<u32>,
    /// Where the answering fact starts.
    pub fact_position: usize,
}

/// Builds a sample of `length` tokens with the answering fact at `depth`.
pub fn build_sample(
    spec: &TaskSpec,
    length: usize,
    depth: f64,
    haystack: &Haystack,
    rng: &mut SplitMix64,
) -> Result<Sample> {
    let f = &spec.facts;
    let key = |rng: &mut SplitMix64| -> Vec<u32> {
        (0..f.key_len)
            .map(|_| f.key_lo + rng.below((f.key_hi - f.key_lo) as u64) as u32)
            .collect()
    };
    let distinct = |n: usize, rng: &mut SplitMix64| {
        let mut out: Vec<Vec<u32>> = Vec::with_capacity(n);
        while out.len() < n {
            let k = key(rng);
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    };
    let fact = |parts: &[&[u32]]| [&[f.needle.as_slice()], parts].concat().concat();
    // (facts in placement order, index of the answering fact, asked name, answer)
    let (facts, answering, asked, answer): (Vec<Vec<u32>>, usize, Vec<u32>, Vec<u32>) = match f.task
    {
        Task::Passkey => {
            let k = key(rng);
            (vec![fact(&[&k])], 0, vec![], k)
        }
        Task::MultiKey => {
            let names = distinct(f.n_keys, rng);
            let keys: Vec<Vec<u32>> = (0..f.n_keys).map(|_| key(rng)).collect();
            let j = rng.below(f.n_keys as u64) as usize;
            let facts = names
                .iter()
                .zip(&keys)
                .map(|(n, k)| fact(&[n, k]))
                .collect();
            (facts, j, names[j].clone(), keys[j].clone())
        }
        Task::MultiHop | Task::VariableTracking => {
            let mut ids = distinct(f.n_keys + 1, rng);
            let k = ids.pop().expect("n_keys + 1 ids");
            let names = ids;
            let facts = (0..f.n_keys)
                .map(|i| {
                    let value = if i == 0 { &k } else { &names[i - 1] };
                    fact(&[&names[i], value])
                })
                .collect();
            if f.task == Task::MultiHop {
                (facts, 0, names[f.n_keys - 1].clone(), k)
            } else {
                (facts, 0, k, names.concat())
            }
        }
    };
    let tail_len = f.question.len() + asked.len() + answer.len();
    let facts_len: usize = facts.iter().map(Vec::len).sum();
    if facts_len + tail_len >= length {
        return Err(Error::Invalid(format!(
            "length {length} is too short for the task's {} fact and question tokens",
            facts_len + tail_len
        )));
    }
    let h = length - tail_len - facts_len;
    let hay = haystack.fill(h, rng)?;
    // Haystack offsets where each fact goes: the answering one at the depth; a chain's
    // others after it, others anywhere.
    let at = ((depth.clamp(0.0, 1.0) * h as f64).round() as usize).min(h);
    let mut places: Vec<(usize, usize)> = vec![(at, answering)];
    let chain = matches!(f.task, Task::MultiHop | Task::VariableTracking);
    let mut later: Vec<usize> = Vec::new();
    for i in (0..facts.len()).filter(|&i| i != answering) {
        let p = if chain {
            at + rng.below((h - at) as u64 + 1) as usize
        } else {
            rng.below(h as u64 + 1) as usize
        };
        later.push(p);
        places.push((p, i));
    }
    if chain {
        // Keep the chain in order after the answering fact.
        later.sort_unstable();
        for (slot, p) in places.iter_mut().skip(1).zip(&later) {
            slot.0 = *p;
        }
    }
    places.sort_by_key(|&(p, i)| (p, i != answering, i));
    let mut tokens = Vec::with_capacity(length);
    let mut from = 0;
    let mut fact_position = 0;
    for &(p, i) in &places {
        tokens.extend_from_slice(&hay[from..p]);
        if i == answering {
            fact_position = tokens.len();
        }
        tokens.extend_from_slice(&facts[i]);
        from = p;
    }
    tokens.extend_from_slice(&hay[from..]);
    tokens.extend_from_slice(&f.question);
    tokens.extend_from_slice(&asked);
    let answer_start = tokens.len();
    tokens.extend_from_slice(&answer);
    debug_assert_eq!(tokens.len(), length);
    Ok(Sample {
        tokens,
        answer_start,
        answer,
        fact_position,
    })
}

/// The scores of one sample from the argmax predictions at its answer positions.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub prediction: Vec<u32>,
    pub hit: bool,
    pub single_token_hit: bool,
}

pub fn score(spec: &TaskSpec, sample: &Sample, prediction: Vec<u32>) -> Score {
    let single = spec.single_token(sample.answer.len());
    Score {
        hit: prediction == sample.answer,
        single_token_hit: prediction.get(single) == sample.answer.get(single),
        prediction,
    }
}

/// The seed of sample `s` of cell (length `li`, depth `di`).
pub fn sample_seed(seed: u64, li: usize, di: usize, s: usize) -> u64 {
    SplitMix64::for_item(seed, ((li as u64) << 40) | ((di as u64) << 20) | s as u64).next_u64()
}
