//! Free-running generation (`lcm generate`): incremental decoding on the segmented engine.
//!
//! A chunked model ([`LanguageModel::length_multiple`] > 1) only runs whole chunks, so a
//! [`Generator`] keeps the tokens of the unfinished chunk apart (`pending`):
//!
//! * the prompt's whole chunks are prefilled segment by segment ([`Engine::feed`]); the
//!   state then holds the window caches and the chunk memory;
//! * the next token's logits come from `pending` padded to a whole chunk and run on the
//!   state, which is then rolled back ([`InferenceState::snapshot`]). Padding after the last
//!   real token changes nothing before it: attention is causal, and a chunk's landmark and
//!   retrieval serve only later chunks;
//! * once `pending` fills a chunk, the chunk is fed for real (no rollback) and its last
//!   position gives the next logits.
//!
//! So every logit is the full forward's over the same tokens (`tests/generate.rs`), at the
//! cost of one chunk's forward per token; the baselines (chunks of 1) feed each token once.

use tch::{Device, Kind, Tensor};

use super::Engine;
use crate::error::{Error, Result};
use crate::model::{Arch, InferenceState, Placement, StateSnapshot};
use crate::util::SplitMix64;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the logits; 0 means greedy (the argmax).
    pub temperature: f64,
    /// Only the `k` most likely tokens are candidates (none: all).
    pub top_k: Option<usize>,
    /// Only the most likely tokens whose probabilities sum to `p` are candidates (nucleus
    /// sampling; none: all).
    pub top_p: Option<f64>,
    /// Seed of the draws: the same seed, model and prompt give the same tokens.
    pub seed: u64,
}

impl Sampling {
    /// The argmax at every step.
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!(
                "temperature {}: expected a finite number >= 0 (0 = greedy)",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Invalid(
                "top-k 0: expected at least 1 candidate".into(),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Invalid(format!(
                    "top-p {p}: expected a value in (0, 1]"
                )));
            }
        }
        Ok(())
    }
}

/// Where the generator's state lives and how the prompt is prefilled.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Tokens per prefill segment (rounded down to a multiple of the chunk size).
    pub segment: i64,
    pub placement: Placement,
    /// Tokens the generation will add: the chunk memory is reserved for the prompt and
    /// these together.
    pub max_new_tokens: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            segment: 16384,
            placement: Placement::Device,
            max_new_tokens: 64,
        }
    }
}

/// A [`Generator`] as it was ([`Generator::snapshot`]).
pub struct GeneratorSnapshot {
    state: StateSnapshot,
    pending: Vec<i64>,
    logits: Vec<f32>,
    rng: SplitMix64,
}

/// One sequence being extended a token at a time.
pub struct Generator<'a> {
    engine: &'a Engine,
    state: InferenceState,
    /// The tokens after the last whole chunk fed (fewer than a chunk).
    pending: Vec<i64>,
    /// The next token's logits, `(V,)` fp32 on the CPU.
    logits: Vec<f32>,
    /// Ids never chosen: DRT's landmark id (the model inserts it itself; it is no text).
    banned: Vec<i64>,
    /// Ids at or above this are never chosen (a vocabulary padded past the tokenizer's).
    vocab_limit: i64,
    sampling: Sampling,
    rng: SplitMix64,
}

impl<'a> Generator<'a> {
    /// Prefills `prompt` (at least one token, ids in the model's vocabulary) and computes
    /// the first token's logits.
    pub fn new(
        engine: &'a Engine,
        prompt: &[i64],
        sampling: Sampling,
        opts: &GenerateOptions,
    ) -> Result<Self> {
        sampling.validate()?;
        let cfg = engine.config();
        if prompt.is_empty() {
            return Err(Error::Invalid(
                "the prompt is empty: generation needs at least one token".into(),
            ));
        }
        let landmark = match (cfg.arch, &cfg.drt) {
            (Arch::Drt, Some(d)) => Some(d.landmark_id),
            _ => None,
        };
        if let Some((i, &id)) = prompt
            .iter()
            .enumerate()
            .find(|&(_, &id)| !(0..cfg.vocab_size).contains(&id) || Some(id) == landmark)
        {
            let why = if Some(id) == landmark {
                "the model's landmark id, not a text token".to_string()
            } else {
                format!("outside the model's vocabulary of {}", cfg.vocab_size)
            };
            return Err(Error::Invalid(format!(
                "prompt token {i} is id {id}: {why}"
            )));
        }
        let m = engine.model.length_multiple();
        let whole = prompt.len() as i64 / m * m;
        let capacity = prompt.len() as i64 + opts.max_new_tokens as i64 + m;
        let mut state = engine.new_state(1, capacity, opts.placement);
        let mut last = None;
        if whole > 0 {
            let x = Tensor::from_slice(&prompt[..whole as usize]).view([1, whole]);
            engine.feed(
                &mut state,
                &x,
                engine.segment_tokens(opts.segment),
                |_, h| {
                    last = Some(h.narrow(1, h.size()[1] - 1, 1));
                    Ok(())
                },
            )?;
        }
        let mut generator = Generator {
            engine,
            state,
            pending: prompt[whole as usize..].to_vec(),
            logits: Vec::new(),
            banned: landmark.into_iter().collect(),
            vocab_limit: cfg.vocab_size,
            sampling,
            rng: SplitMix64::new(sampling.seed),
        };
        match last {
            Some(h) if generator.pending.is_empty() => generator.set_logits(&h)?,
            _ => generator.peek()?,
        }
        Ok(generator)
    }

    /// Never chooses ids at or above `n` (the tokenizer's vocabulary when the model's is
    /// padded past it: such ids decode to nothing).
    pub fn limit_vocab(&mut self, n: i64) {
        self.vocab_limit = self.vocab_limit.min(n);
    }

    /// What the model has kept of the sequence: the whole chunks fed so far.
    pub fn state(&self) -> &InferenceState {
        &self.state
    }

    /// The next token's logits `(V,)`, before any masking or temperature.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// What [`Generator::restore`] needs to come back to this point: the sequence so far,
    /// the next logits and the sampling draws. Nothing is copied but the unfinished chunk and
    /// the logits ([`InferenceState::snapshot`]).
    pub fn snapshot(&self) -> GeneratorSnapshot {
        GeneratorSnapshot {
            state: self.state.snapshot(),
            pending: self.pending.clone(),
            logits: self.logits.clone(),
            rng: self.rng.clone(),
        }
    }

    /// Back to the point [`Generator::snapshot`] saw, forgetting every token pushed or
    /// generated since: the next token comes as it would have come then (e.g. greedy
    /// generation after scoring a forced continuation, `lcm eval niah --score generate`).
    pub fn restore(&mut self, snapshot: GeneratorSnapshot) {
        self.state.restore(snapshot.state);
        self.pending = snapshot.pending;
        self.logits = snapshot.logits;
        self.rng = snapshot.rng;
    }

    /// Chooses the next token ([`Sampling`]) and feeds it; returns it.
    pub fn next_token(&mut self) -> Result<i64> {
        let mut logits = self.logits.clone();
        for &id in &self.banned {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let limit = (self.vocab_limit.max(1) as usize).min(logits.len());
        logits.truncate(limit);
        let id = choose(&logits, &self.sampling, &mut self.rng);
        self.push(id)?;
        Ok(id)
    }

    /// Appends `token` to the sequence (a chosen one, or forced) and computes the logits
    /// after it.
    pub fn push(&mut self, token: i64) -> Result<()> {
        self.pending.push(token);
        let m = self.engine.model.length_multiple();
        if (self.pending.len() as i64) < m {
            return self.peek();
        }
        let x = Tensor::from_slice(&self.pending)
            .view([1, m])
            .to_device(self.engine.device);
        let h = tch::no_grad(|| self.engine.model.forward_segment(&x, &mut self.state));
        self.pending.clear();
        self.set_logits(&h.narrow(1, m - 1, 1))
    }

    /// The logits after the pending tokens: they run padded to a whole chunk, then the
    /// state is rolled back.
    fn peek(&mut self) -> Result<()> {
        let m = self.engine.model.length_multiple();
        let real = self.pending.len() as i64;
        let mut chunk = self.pending.clone();
        // Any text token serves as padding: nothing before it sees it.
        chunk.resize(m as usize, self.pending[0]);
        let x = Tensor::from_slice(&chunk)
            .view([1, m])
            .to_device(self.engine.device);
        let snapshot = self.state.snapshot();
        let h = tch::no_grad(|| self.engine.model.forward_segment(&x, &mut self.state));
        self.state.restore(snapshot);
        self.set_logits(&h.narrow(1, real - 1, 1))
    }

    /// Logits from the final hidden state `(1, 1, d)` of the last real position.
    fn set_logits(&mut self, hidden: &Tensor) -> Result<()> {
        let logits = tch::no_grad(|| self.engine.model.head(hidden))
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .view([-1]);
        self.logits = Vec::<f32>::try_from(&logits)?;
        Ok(())
    }
}

/// The token `sampling` picks from `logits` (masked entries are -inf; at least one is
/// finite): the first argmax at temperature 0, else a draw from the softmax of
/// `logits / temperature` restricted to the top-k, then to the top-p nucleus.
pub fn choose(logits: &[f32], sampling: &Sampling, rng: &mut SplitMix64) -> i64 {
    let greedy = || {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best as i64
    };
    if sampling.temperature == 0.0 {
        return greedy();
    }
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] > f32::NEG_INFINITY)
        .collect();
    if order.is_empty() {
        return greedy();
    }
    // Most likely first; equal logits keep id order, so a draw depends only on the seed.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = sampling.top_k {
        order.truncate(k.max(1));
    }
    let top = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / sampling.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = sampling.top_p {
        let mut sum = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                sum += q;
                sum >= p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.unit() * total;
    for (&i, &q) in order.iter().zip(&probs) {
        if u < q {
            return i as i64;
        }
        u -= q;
    }
    *order.last().unwrap() as i64
}
