//! Training and eval batches: random windows of `seq_len + 1` tokens, sample `i` fully
//! determined by (seed, i), so a run's data does not depend on how it was interrupted.
//!
//! A window starts uniformly at random in the concatenated token stream of a corpus, which
//! weights documents by their length (the reference's length-weighted choice) and lets a
//! window cross document boundaries (EOD tokens separate them). With several corpora, the
//! corpus is drawn by the mixture weights first.

use std::ops::Range;
use std::path::Path;

use tch::{Device, Tensor};

use crate::data::indexed::IndexedCorpus;
use crate::data::synthetic::PasskeyConfig;
use crate::error::{Error, Result};
use crate::train::config::{CurriculumStage, RandomHaystack, TrainConfig};
use crate::util::SplitMix64;

/// Targets that carry no loss: the cross-entropy op's ignore index.
pub use crate::ops::xent::IGNORE;

enum Haystack {
    Corpora {
        corpora: Vec<IndexedCorpus>,
        cumulative: Vec<f64>,
    },
    Random(RandomHaystack),
}

pub struct Sampler {
    haystack: Haystack,
    seq_len: usize,
    seed: u64,
    passkey: Option<PasskeyConfig>,
}

/// One micro-batch on its device: inputs and targets (B, T) int64, targets IGNORE where
/// there is no loss, and `answer` (B, T) bool marking the targets of synthetic answers.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub answer: Tensor,
}

impl Sampler {
    pub fn for_training(cfg: &TrainConfig) -> Result<Self> {
        let haystack = match &cfg.data.random {
            Some(r) => Haystack::Random(r.clone()),
            None => {
                let corpora = cfg
                    .data
                    .train
                    .iter()
                    .enumerate()
                    .map(|(i, c)| open_corpus(&c.prefix, cfg, &format!("data.train[{i}]")))
                    .collect::<Result<Vec<_>>>()?;
                let total: f64 = cfg.data.train.iter().map(|c| c.weight).sum();
                let cumulative = cfg
                    .data
                    .train
                    .iter()
                    .scan(0.0, |acc, c| {
                        *acc += c.weight / total;
                        Some(*acc)
                    })
                    .collect();
                Haystack::Corpora {
                    corpora,
                    cumulative,
                }
            }
        };
        Ok(Sampler {
            haystack,
            seq_len: cfg.seq_len as usize,
            seed: cfg.seed,
            passkey: cfg.data.synthetic.clone(),
        })
    }

    /// Held-out windows: the eval corpus (or the training haystack), a separate seed
    /// stream, and the same synthetic mixture so that the eval loss includes answers.
    pub fn for_eval(cfg: &TrainConfig) -> Result<Self> {
        let mut s = Self::for_training(cfg)?;
        if let Some(prefix) = &cfg.data.eval {
            s.haystack = Haystack::Corpora {
                corpora: vec![open_corpus(prefix, cfg, "data.eval")?],
                cumulative: vec![1.0],
            };
        }
        s.seed = cfg.seed ^ 0x0e7a_1000_0000_0000;
        Ok(s)
    }

    /// Sample `index`: the window (seq_len + 1 ids), targets to ignore, answer targets.
    pub fn sample(&self, index: u64) -> (Vec<u32>, Vec<bool>, Vec<bool>) {
        self.sample_len(index, self.seq_len)
    }

    /// Sample `index` at `seq_len` tokens (a curriculum's shorter windows).
    pub fn sample_len(&self, index: u64, seq_len: usize) -> (Vec<u32>, Vec<bool>, Vec<bool>) {
        self.sample_at(index, seq_len, None)
    }

    /// Sample `index` at `seq_len` tokens, synthetic rows as curriculum stage `stage`
    /// changes them, if given.
    pub fn sample_at(
        &self,
        index: u64,
        seq_len: usize,
        stage: Option<&CurriculumStage>,
    ) -> (Vec<u32>, Vec<bool>, Vec<bool>) {
        let staged = self.staged(stage);
        self.sample_with(index, seq_len, staged.as_ref())
    }

    /// The synthetic rows as curriculum stage `stage` changes them, if it changes them.
    fn staged(&self, stage: Option<&CurriculumStage>) -> Option<PasskeyConfig> {
        let p = self.passkey.as_ref()?;
        stage?.synthetic(p)
    }

    /// Sample `index` at `seq_len` tokens, synthetic rows from `staged` where given, else
    /// from the sampler's own config.
    fn sample_with(
        &self,
        index: u64,
        seq_len: usize,
        staged: Option<&PasskeyConfig>,
    ) -> (Vec<u32>, Vec<bool>, Vec<bool>) {
        let mut rng = SplitMix64::for_item(self.seed, index);
        let n = seq_len + 1;
        let mut window: Vec<u32> = match &self.haystack {
            Haystack::Random(r) => (0..n)
                .map(|_| r.lo + rng.below((r.hi - r.lo) as u64) as u32)
                .collect(),
            Haystack::Corpora {
                corpora,
                cumulative,
            } => {
                let u = rng.unit();
                let k = cumulative
                    .iter()
                    .position(|&c| u < c)
                    .unwrap_or(corpora.len() - 1);
                let tokens = corpora[k].tokens();
                let start = rng.below((tokens.len() - n + 1) as u64) as usize;
                tokens.slice(start..start + n).to_vec()
            }
        };
        let mut ignore = vec![false; seq_len];
        let mut answer = vec![false; seq_len];
        if let Some(p) = &self.passkey {
            if rng.unit() < p.rate {
                staged
                    .unwrap_or(p)
                    .insert(&mut window, &mut ignore, &mut answer, &mut rng);
                if p.answer_only {
                    ignore.iter_mut().zip(&answer).for_each(|(i, &a)| *i = !a);
                }
            }
        }
        (window, ignore, answer)
    }

    /// The samples `indices` as one batch on `device`.
    pub fn batch(&self, indices: Range<u64>, device: Device) -> Batch {
        self.batch_len(indices, self.seq_len, device)
    }

    /// The samples `indices` at `seq_len` tokens (at most the sampler's) as one batch.
    pub fn batch_len(&self, indices: Range<u64>, seq_len: usize, device: Device) -> Batch {
        self.batch_at(indices, seq_len, None, device)
    }

    /// As [`Sampler::batch_len`], synthetic rows as curriculum stage `stage` changes them.
    pub fn batch_at(
        &self,
        indices: Range<u64>,
        seq_len: usize,
        stage: Option<&CurriculumStage>,
        device: Device,
    ) -> Batch {
        assert!(
            seq_len <= self.seq_len,
            "batch_at: {seq_len} > {}",
            self.seq_len
        );
        let b = (indices.end - indices.start) as i64;
        let t = seq_len;
        let mut inputs = Vec::with_capacity(b as usize * t);
        let mut targets = Vec::with_capacity(b as usize * t);
        let mut answers = Vec::with_capacity(b as usize * t);
        let staged = self.staged(stage);
        for i in indices {
            let (w, ignore, answer) = self.sample_with(i, t, staged.as_ref());
            inputs.extend(w[..t].iter().map(|&x| x as i64));
            targets.extend((0..t).map(|j| if ignore[j] { IGNORE } else { w[j + 1] as i64 }));
            answers.extend(answer);
        }
        let shape = [b, t as i64];
        Batch {
            inputs: Tensor::from_slice(&inputs).view(shape).to_device(device),
            targets: Tensor::from_slice(&targets).view(shape).to_device(device),
            answer: Tensor::from_slice(&answers).view(shape).to_device(device),
        }
    }
}

/// The corpus at `prefix`, which config `key` names, if it holds one window of the run and
/// only ids the model embeds (below `model.vocab_size`: checked here, before any step).
fn open_corpus(prefix: &Path, cfg: &TrainConfig, key: &str) -> Result<IndexedCorpus> {
    let seq_len = cfg.seq_len;
    let c = IndexedCorpus::open(prefix)?;
    crate::data::stats::check_vocab(prefix, &c, cfg.model.vocab_size).map_err(|e| {
        Error::Config {
            key: key.into(),
            message: e.to_string(),
        }
    })?;
    if c.num_tokens() < seq_len as u64 + 1 {
        return Err(Error::Config {
            key: key.into(),
            message: format!(
                "{}: {} tokens, fewer than one window of seq_len + 1 = {} ({})",
                prefix.display(),
                c.num_tokens(),
                seq_len + 1,
                if key == "data.eval" {
                    "evaluate on a longer corpus, e.g. --set data.eval=data/tokens/sample_train"
                } else {
                    "a longer corpus, or a shorter seq_len"
                }
            ),
        });
    }
    Ok(c)
}

/// Global sample indices of micro-batch `micro` of optimizer step `step` on `rank`: every
/// (step, micro, rank) gets its own disjoint block, so ranks never share samples and a
/// resumed run continues the same sequence.
pub fn sample_range(
    step: u64,
    micro: u64,
    grad_accum: u64,
    rank: u64,
    world: u64,
    batch: u64,
) -> Range<u64> {
    let block = ((step * grad_accum + micro) * world + rank) * batch;
    block..block + batch
}
