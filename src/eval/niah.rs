//! Needle in a haystack (seed-report 7): a grid of lengths x depths x samples, each sample
//! a haystack with its fact(s) planted at the depth and the question at the end, scored
//! teacher-forced (a hit needs every answer token to be the argmax) or, as RULER does, by
//! greedy generation after the question containing the answer ([`Scoring`]). The reference's
//! single-token score (the first answer token for passkey / single NIAH, the last for the
//! others) is reported beside it, for comparison with its tables.
//!
//! Layout of a sample of length L: `haystack[..p] fact haystack[p..] question asked answer`,
//! the answer's last token at position L-1, `p = round(depth * H)` over the `H` haystack
//! tokens (depth 0: the very start; 1: right before the question). Other facts sit at
//! seeded random places: mk-niah's distractors anywhere, mq-niah's other needles one in
//! each other N-th of the haystack, the rest of the asked chain after its first fact, vt's
//! distractor chains anywhere (each chain in order). mq-niah and vt answer in parts (the
//! keys asked, the chain's names), each also scored alone. The task's ids (needle phrase, question, key range and length) come from the
//! checkpoint's training config (`data.synthetic`), so a model is asked what it was taught;
//! without one, `passkey` is the GCA reference's text passkey, and `s-niah` is always
//! RULER's; both phrases go through the NeoX tokenizer.

use std::collections::BTreeMap;
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
    /// RULER's multi-key NIAH: `--keys` named keys; the question names one.
    MkNiah,
    /// RULER's multi-query NIAH: `--queries` named keys; the question names them all and
    /// the answer is every key, in the order asked.
    MqNiah,
    /// A chain of `--keys` hops from the asked name to the key.
    Multihop,
    /// RULER's variable tracking: a chain of `--hops` assignments after the one of the key,
    /// among `--chains - 1` distractor chains; the question gives the key, the answer is
    /// every name in its chain.
    Vt,
}

impl NiahTask {
    pub fn name(self) -> &'static str {
        match self {
            NiahTask::Passkey => "passkey",
            NiahTask::SNiah => "s-niah",
            NiahTask::MkNiah => "mk-niah",
            NiahTask::MqNiah => "mq-niah",
            NiahTask::Multihop => "multihop",
            NiahTask::Vt => "vt",
        }
    }
}

/// The counts a task is built with (`--keys`, `--queries`, `--hops`, `--chains`); each task
/// reads its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskArgs {
    /// mk-niah's needles, multihop's hops.
    pub keys: usize,
    /// mq-niah's needles, all asked.
    pub queries: usize,
    /// vt's assignments after the key's (RULER's `num_hops`): `hops + 1` names a chain.
    pub hops: usize,
    /// vt's chains, the asked one included (RULER's `num_chains`).
    pub chains: usize,
}

impl Default for TaskArgs {
    fn default() -> Self {
        TaskArgs {
            keys: 2,
            queries: 4,
            hops: 2,
            chains: 2,
        }
    }
}

/// Task counts as `hops 2, chains 2`.
pub fn describe_args(args: &BTreeMap<String, usize>) -> String {
    args.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A task with its counts, e.g. `mq-niah (queries 4)`; the name alone without counts.
pub fn task_label(task: &str, args: &BTreeMap<String, usize>) -> String {
    match args.is_empty() {
        true => task.to_string(),
        false => format!("{task} ({})", describe_args(args)),
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
    /// `data.synthetic`; `args` the task's counts. `tokenizer` is needed for s-niah.
    pub fn new(
        task: NiahTask,
        trained: Option<&PasskeyConfig>,
        args: TaskArgs,
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
        (facts.task, facts.n_keys, facts.chains) = match task {
            NiahTask::Passkey | NiahTask::SNiah => (Task::Passkey, 1, 1),
            NiahTask::MkNiah => (Task::MultiKey, args.keys.max(1), 1),
            NiahTask::MqNiah => (Task::MultiQuery, args.queries.max(1), 1),
            NiahTask::Multihop => (Task::MultiHop, args.keys.max(1), 1),
            NiahTask::Vt => (Task::VariableTracking, args.hops + 1, args.chains.max(1)),
        };
        facts.min_gap = 0;
        if facts.task != Task::Passkey {
            // Too many names for the key range would never finish drawing distinct ones.
            facts.validate(i64::MAX, vocab).map_err(|e| match e {
                Error::Config { key, message } => Error::Invalid(format!(
                    "{}: {key} of the checkpoint's task: {message}",
                    task_label(
                        task.name(),
                        &TaskSpec {
                            task,
                            facts: facts.clone()
                        }
                        .args()
                    )
                )),
                e => e,
            })?;
        }
        Ok(TaskSpec { task, facts })
    }

    /// The counts the task was built with, by flag name (none for passkey and s-niah), as
    /// `results.json` records them.
    pub fn args(&self) -> BTreeMap<String, usize> {
        let f = &self.facts;
        let pairs: Vec<(&str, usize)> = match self.task {
            NiahTask::Passkey | NiahTask::SNiah => vec![],
            NiahTask::MkNiah | NiahTask::Multihop => vec![("keys", f.n_keys)],
            NiahTask::MqNiah => vec![("queries", f.n_keys)],
            NiahTask::Vt => vec![("hops", f.n_keys - 1), ("chains", f.chains)],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
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
    /// Where each fact starts, in the order of [`crate::data::synthetic::Drawn::facts`]:
    /// mq-niah's in the order asked, a chain task's chain by chain.
    pub fact_positions: Vec<usize>,
    /// Parts of the answer scored one by one (mq-niah's keys, vt's names), each
    /// `answer.len() / parts` ids.
    pub parts: usize,
}

/// Builds a sample of `length` tokens with the answering fact at `depth`. The other facts:
/// mk-niah's anywhere; mq-niah's one in each other N-th of the haystack (the depth's N-th
/// holds the answering one), so that the N needles are spread; a chain's after the
/// answering fact, in order; a distractor chain's anywhere, in order. All seeded by `rng`.
pub fn build_sample(
    spec: &TaskSpec,
    length: usize,
    depth: f64,
    haystack: &Haystack,
    rng: &mut SplitMix64,
) -> Result<Sample> {
    let f = &spec.facts;
    let drawn = f.draw(rng);
    let (facts, answering) = (&drawn.facts, drawn.answering);
    let tail_len = f.question.len() + drawn.asked.len() + drawn.answer.len();
    let facts_len: usize = facts.iter().map(Vec::len).sum();
    if facts_len + tail_len >= length {
        return Err(Error::Invalid(format!(
            "length {length} is too short for the task's {} fact and question tokens",
            facts_len + tail_len
        )));
    }
    let h = length - tail_len - facts_len;
    let hay = haystack.fill(h, rng)?;
    // Haystack offsets where each fact goes, by fact.
    let at = ((depth.clamp(0.0, 1.0) * h as f64).round() as usize).min(h);
    let mut offsets = vec![at; facts.len()];
    let anywhere = |rng: &mut SplitMix64| rng.below(h as u64 + 1) as usize;
    match f.task {
        Task::Passkey => {}
        Task::MultiKey => {
            for (i, o) in offsets.iter_mut().enumerate() {
                if i != answering {
                    *o = anywhere(rng);
                }
            }
        }
        Task::MultiQuery => {
            // N strata of the haystack; the depth's holds the answering needle, the others
            // one needle each, in shuffled order.
            let n = facts.len();
            let stratum = |s: usize| (s * h / n, (s + 1) * h / n);
            let mine = (0..n).rposition(|s| stratum(s).0 <= at).unwrap_or(0);
            let mut others: Vec<usize> = (0..n).filter(|&s| s != mine).collect();
            crate::data::synthetic::shuffle(&mut others, rng);
            for (i, s) in (1..n).zip(others) {
                let (lo, hi) = stratum(s);
                offsets[i] = lo + rng.below((hi - lo).max(1) as u64) as usize;
            }
        }
        Task::MultiHop | Task::VariableTracking => {
            // The asked chain after its first fact, the others anywhere, each in order.
            for c in 0..f.chains {
                let of: Vec<usize> = (0..facts.len()).filter(|&i| drawn.chain[i] == c).collect();
                let from = if c == 0 { at } else { 0 };
                let skip = usize::from(c == 0);
                let mut places: Vec<usize> = of[skip..]
                    .iter()
                    .map(|_| from + rng.below((h - from) as u64 + 1) as usize)
                    .collect();
                places.sort_unstable();
                for (&i, p) in of[skip..].iter().zip(places) {
                    offsets[i] = p;
                }
            }
        }
    }
    // At one offset the answering fact comes first, then the others in their order.
    let mut places: Vec<(usize, usize)> = offsets.iter().copied().zip(0..).collect();
    places.sort_by_key(|&(p, i)| (p, i != answering, i));
    let mut tokens = Vec::with_capacity(length);
    let mut from = 0;
    let mut fact_positions = vec![0; facts.len()];
    for &(p, i) in &places {
        tokens.extend_from_slice(&hay[from..p]);
        fact_positions[i] = tokens.len();
        tokens.extend_from_slice(&facts[i]);
        from = p;
    }
    tokens.extend_from_slice(&hay[from..]);
    tokens.extend_from_slice(&f.question);
    tokens.extend_from_slice(&drawn.asked);
    let answer_start = tokens.len();
    tokens.extend_from_slice(&drawn.answer);
    debug_assert_eq!(tokens.len(), length);
    Ok(Sample {
        tokens,
        answer_start,
        answer: drawn.answer,
        fact_position: fact_positions[answering],
        fact_positions,
        parts: drawn.parts,
    })
}

/// How a sample's answer is scored (`--score`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// The whole sample is prefilled, answer included; a hit needs every answer token to be
    /// the argmax after the true tokens before it (exact match, teacher-forced).
    #[default]
    TeacherForced,
    /// RULER's: the sample is prefilled up to and including the question, then the answer's
    /// length plus `--slack` tokens are generated greedily; a hit when the answer's ids
    /// appear as a contiguous run in the generated ids (containment).
    Generate,
}

impl Scoring {
    pub fn name(self) -> &'static str {
        match self {
            Scoring::TeacherForced => "teacher-forced",
            Scoring::Generate => "generate",
        }
    }

    /// What a hit means.
    pub fn describe(self) -> &'static str {
        match self {
            Scoring::TeacherForced => "exact match, teacher-forced",
            Scoring::Generate => "greedy generation contains the answer",
        }
    }

    /// [`Scoring::describe`] in a few words (the heatmap's title).
    pub fn short(self) -> &'static str {
        match self {
            Scoring::TeacherForced => "exact match",
            Scoring::Generate => "by generation",
        }
    }
}

/// Tokens generated past the answer's length under [`Scoring::Generate`] unless `--slack`
/// says otherwise: room for a few tokens before the answer.
pub const DEFAULT_SLACK: usize = 8;

/// The scores of one sample from the argmax predictions at its answer positions.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub prediction: Vec<u32>,
    pub hit: bool,
    pub single_token_hit: bool,
    /// For an answer of several parts (mq-niah, vt), whether each part's ids are all the
    /// argmax (teacher-forced, as `hit`); empty for one part.
    pub part_hits: Vec<bool>,
}

/// Whether `needle` occurs in `ids` as a contiguous run (an empty needle always does).
pub fn contains(ids: &[u32], needle: &[u32]) -> bool {
    needle.is_empty() || ids.windows(needle.len()).any(|w| w == needle)
}

/// The scores of one sample under [`Scoring::Generate`]: `hit` when the whole answer occurs
/// in `generated` as a contiguous run, each part (mq-niah's keys, vt's names) hit when its
/// ids occur anywhere in `generated` (RULER's `string_match_all` per part). The single-token
/// score and `prediction` stay the teacher-forced ones, from `prediction`.
pub fn score_generated(
    spec: &TaskSpec,
    sample: &Sample,
    prediction: Vec<u32>,
    generated: &[u32],
) -> Score {
    let mut sc = score(spec, sample, prediction);
    sc.hit = contains(generated, &sample.answer);
    if sample.parts > 1 {
        let len = sample.answer.len() / sample.parts;
        sc.part_hits = sample
            .answer
            .chunks(len)
            .map(|part| contains(generated, part))
            .collect();
    }
    sc
}

pub fn score(spec: &TaskSpec, sample: &Sample, prediction: Vec<u32>) -> Score {
    let single = spec.single_token(sample.answer.len());
    let part_hits = if sample.parts > 1 {
        let len = sample.answer.len() / sample.parts;
        sample
            .answer
            .chunks(len)
            .zip(prediction.chunks(len))
            .map(|(a, p)| a == p)
            .collect()
    } else {
        vec![]
    };
    Score {
        hit: prediction == sample.answer,
        single_token_hit: prediction.get(single) == sample.answer.get(single),
        prediction,
        part_hits,
    }
}

/// The seed of sample `s` of cell (length `li`, depth `di`).
pub fn sample_seed(seed: u64, li: usize, di: usize, s: usize) -> u64 {
    SplitMix64::for_item(seed, ((li as u64) << 40) | ((di as u64) << 20) | s as u64).next_u64()
}
