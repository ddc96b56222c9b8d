//! `lcm eval niah`: runs the lengths x depths x samples grid through the engine, prints
//! the accuracy table, and writes `results.json` (every sample, rewritten atomically after
//! each, so an interrupted run keeps what it measured) and `heatmap.png`. A sample is
//! scored teacher-forced (one prefill of the whole sample, the argmax at the answer
//! positions) or by greedy generation after the question ([`Scoring`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::engine::{Engine, PrefillOptions, PrefillStats};
use super::generate::{choose, GenerateOptions, Generator, Sampling};
use super::lengths::format_length;
use super::niah::{
    build_sample, describe_args, sample_seed, score, score_generated, task_label, Haystack, Sample,
    Score, Scoring, TaskSpec,
};
use crate::error::{Error, Result};
use crate::util::{write_atomic, SplitMix64};

pub struct GridOptions {
    pub lengths: Vec<i64>,
    pub depths: Vec<f64>,
    pub samples: usize,
    /// Samples of a cell prefilled side by side (results do not depend on it).
    pub batch: usize,
    pub seed: u64,
    pub prefill: PrefillOptions,
    pub out: PathBuf,
    pub progress: bool,
    /// The share of the grid this process runs (one rank of a data-parallel launch).
    pub part: Part,
    pub scoring: Scoring,
    /// Under [`Scoring::Generate`], the tokens generated past the answer's length.
    pub slack: usize,
}

/// Rank `rank` of `world` runs every `world`-th prefill (a cell's batch of samples) of the
/// grid, starting at its own index: the samples are the same as in one process, since each
/// sample's seed depends only on its place in the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub rank: u64,
    pub world: u64,
}

impl Default for Part {
    fn default() -> Self {
        Part { rank: 0, world: 1 }
    }
}

impl Part {
    pub fn owns(&self, item: usize) -> bool {
        item as u64 % self.world.max(1) == self.rank
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleResult {
    pub length: i64,
    /// The length run: the largest multiple of the chunk size not above `length`.
    pub used_length: i64,
    pub depth: f64,
    pub sample: usize,
    pub seed: u64,
    pub fact_position: usize,
    pub answer: Vec<u32>,
    pub prediction: Vec<u32>,
    pub hit: bool,
    pub single_token_hit: bool,
    /// mq-niah and vt: whether each part of the answer (a queried key, a chain's name) is
    /// hit, by the report's scoring (all argmax teacher-forced; found in `generated`);
    /// absent for one-part answers and older results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_hits: Vec<bool>,
    /// Under [`Scoring::Generate`], the ids generated greedily after the question (the
    /// answer's length plus the report's `slack`); absent when teacher-forced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<u32>,
    /// The prefill's seconds over the samples it held (`batch`): the time a sample cost.
    pub prefill_seconds: f64,
    /// Tokens per second of the prefill, all its samples together.
    pub tokens_per_second: f64,
    /// Samples prefilled side by side with this one, itself included.
    pub batch: usize,
    /// Peak GPU bytes of the whole prefill (all `batch` samples).
    pub peak_device_bytes: Option<u64>,
    /// One sample's chunk memory.
    pub chunk_memory_bytes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    pub length: i64,
    pub depth: f64,
    pub samples: usize,
    pub accuracy: f64,
    pub single_token_accuracy: f64,
    /// The fraction of answer parts hit (mq-niah's keys, vt's names) over the cell's
    /// samples; absent for one-part answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_accuracy: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub task: String,
    /// The task's counts by flag (`queries`, `hops`, `chains`, `keys`); empty for passkey
    /// and s-niah and in results written before lcm recorded them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_args: BTreeMap<String, usize>,
    pub checkpoint: Option<String>,
    pub step: Option<u64>,
    /// SHA-256 of the model's weights (results of other weights never merge); absent in
    /// results written before lcm recorded it, and for random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    pub haystack: String,
    pub device: String,
    pub offload: bool,
    pub segment: i64,
    pub lengths: Vec<i64>,
    pub depths: Vec<f64>,
    pub samples_per_cell: usize,
    /// How `hit` and `part_hits` were scored; results written before lcm recorded it were
    /// teacher-forced.
    #[serde(default)]
    pub scoring: Scoring,
    /// Under [`Scoring::Generate`], the tokens generated past the answer's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<usize>,
    pub cells: Vec<Cell>,
    pub samples: Vec<SampleResult>,
}

/// The fraction of the parts of `samples`' answers hit; None when none has parts.
fn part_accuracy<'a>(samples: impl Iterator<Item = &'a SampleResult>) -> Option<f64> {
    let (hit, all) = samples
        .flat_map(|s| &s.part_hits)
        .fold((0usize, 0usize), |(h, n), &p| (h + usize::from(p), n + 1));
    (all > 0).then(|| hit as f64 / all as f64)
}

impl Report {
    /// The task with its counts, e.g. `mq-niah (queries 4)`.
    pub fn task_label(&self) -> String {
        task_label(&self.task, &self.task_args)
    }

    fn cell_results(&self, length: i64, depth: f64) -> impl Iterator<Item = &SampleResult> {
        self.samples
            .iter()
            .filter(move |s| s.length == length && s.depth == depth)
    }

    fn summarise(&mut self) {
        let mut cells = Vec::new();
        for &l in &self.lengths {
            for &d in &self.depths {
                let rs: Vec<_> = self.cell_results(l, d).collect();
                if rs.is_empty() {
                    continue;
                }
                let n = rs.len() as f64;
                cells.push(Cell {
                    length: l,
                    depth: d,
                    samples: rs.len(),
                    accuracy: rs.iter().filter(|r| r.hit).count() as f64 / n,
                    single_token_accuracy: rs.iter().filter(|r| r.single_token_hit).count() as f64
                        / n,
                    part_accuracy: part_accuracy(rs.iter().copied()),
                });
            }
        }
        self.cells = cells;
    }

    /// Adds the samples other ranks ran, in the order one process runs them (length, depth,
    /// sample), and summarises again.
    pub fn absorb(&mut self, samples: Vec<SampleResult>) {
        self.samples.extend(samples);
        let place = |s: &SampleResult| {
            let li = self.lengths.iter().position(|&l| l == s.length);
            let di = self.depths.iter().position(|&d| d == s.depth);
            (li, di, s.sample)
        };
        let mut keyed: Vec<_> = self.samples.drain(..).map(|s| (place(&s), s)).collect();
        keyed.sort_by_key(|a| a.0);
        self.samples = keyed.into_iter().map(|(_, s)| s).collect();
        self.summarise();
    }

    /// Accuracy of every sample at `length` (and the single-token score).
    pub fn length_accuracy(&self, length: i64) -> Option<(f64, f64)> {
        let rs: Vec<_> = self.samples.iter().filter(|s| s.length == length).collect();
        if rs.is_empty() {
            return None;
        }
        let n = rs.len() as f64;
        Some((
            rs.iter().filter(|r| r.hit).count() as f64 / n,
            rs.iter().filter(|r| r.single_token_hit).count() as f64 / n,
        ))
    }

    /// The terminal table: depth rows x length columns, exact-match accuracy in percent.
    pub fn table(&self) -> String {
        let mut s = format!("{:<14}", "depth \\ length");
        for &l in &self.lengths {
            s += &format!("{:>9}", format_length(l));
        }
        s.push('\n');
        for &d in &self.depths {
            s += &format!("{:<14}", format!("{d:.2}"));
            for &l in &self.lengths {
                match self.cells.iter().find(|c| c.length == l && c.depth == d) {
                    Some(c) => s += &format!("{:>9.1}", 100.0 * c.accuracy),
                    None => s += &format!("{:>9}", "-"),
                }
            }
            s.push('\n');
        }
        for (name, pick) in [("all", 0), ("first token", 1)] {
            s += &format!("{name:<14}");
            for &l in &self.lengths {
                match self.length_accuracy(l) {
                    Some(a) => s += &format!("{:>9.1}", 100.0 * if pick == 0 { a.0 } else { a.1 }),
                    None => s += &format!("{:>9}", "-"),
                }
            }
            s.push('\n');
        }
        if self.scoring == Scoring::Generate {
            // The same samples' exact match, teacher-forced, from their predictions.
            s += &format!("{:<14}", "teacher-forced");
            for &l in &self.lengths {
                let rs: Vec<_> = self.samples.iter().filter(|r| r.length == l).collect();
                match rs.is_empty() {
                    true => s += &format!("{:>9}", "-"),
                    false => {
                        let hit = rs.iter().filter(|r| r.prediction == r.answer).count();
                        s += &format!("{:>9.1}", 100.0 * hit as f64 / rs.len() as f64)
                    }
                }
            }
            s.push('\n');
        }
        if part_accuracy(self.samples.iter()).is_some() {
            s += &format!("{:<14}", "per part");
            for &l in &self.lengths {
                match part_accuracy(self.samples.iter().filter(|r| r.length == l)) {
                    Some(a) => s += &format!("{:>9.1}", 100.0 * a),
                    None => s += &format!("{:>9}", "-"),
                }
            }
            s.push('\n');
        }
        s
    }

    /// Reads a `results.json` written by [`run`].
    pub fn load(path: &std::path::Path) -> Result<Report> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: not NIAH results: {e}", path.display())))
    }

    /// One report from the grids of several runs over different lengths (e.g. 16M alone, on
    /// a machine that had the time for it later): the same task, scoring (and slack), model
    /// weights (their hash; for results without one, the same checkpoint folder and step),
    /// haystack and depths, or an error naming the file that differs. Lengths come out in
    /// increasing order. A length's samples are seeded by its place in `--len`, so a length
    /// run alone draws other samples (from the same distribution) than it does second in a
    /// list.
    pub fn merge(reports: Vec<(PathBuf, Report)>) -> Result<Report> {
        let mut it = reports.into_iter();
        let (first_path, mut merged) = it
            .next()
            .ok_or_else(|| Error::Invalid("no results to merge".into()))?;
        let none = || "none".to_string();
        let step = |r: &Report| r.step.map_or_else(none, |s| s.to_string());
        let ckpt = |r: &Report| r.checkpoint.clone().unwrap_or_else(none);
        for (path, r) in it {
            let differs = |what: &str, a: String, b: String| {
                Error::Invalid(format!(
                    "{}: {what} {b}, but {} has {a}; results of different runs do not merge",
                    path.display(),
                    first_path.display()
                ))
            };
            if r.task != merged.task {
                return Err(differs("task", merged.task.clone(), r.task.clone()));
            }
            if (r.scoring, r.slack) != (merged.scoring, merged.slack) {
                let how = |r: &Report| match r.slack {
                    Some(n) => format!("{} (slack {n})", r.scoring.name()),
                    None => r.scoring.name().to_string(),
                };
                return Err(differs("scoring", how(&merged), how(&r)));
            }
            if r.task_args != merged.task_args {
                let args = |r: &Report| match r.task_args.is_empty() {
                    true => "none recorded".to_string(),
                    false => describe_args(&r.task_args),
                };
                return Err(differs("task counts", args(&merged), args(&r)));
            }
            match (&merged.weights_sha256, &r.weights_sha256) {
                (Some(a), Some(b)) if a != b => {
                    let short = |h: &str| h.chars().take(12).collect::<String>();
                    return Err(Error::Invalid(format!(
                        "{}: other model weights than {} (checkpoint {} at step {}, weights \
                         SHA-256 {}..., against checkpoint {} at step {}, {}...); results of \
                         different models do not merge",
                        path.display(),
                        first_path.display(),
                        ckpt(&r),
                        step(&r),
                        short(b),
                        ckpt(&merged),
                        step(&merged),
                        short(a)
                    )));
                }
                (Some(_), Some(_)) => {}
                // Results written before lcm recorded the weights' hash: the same checkpoint
                // folder and step is the best evidence of the same weights.
                _ => {
                    if r.step != merged.step {
                        return Err(differs("checkpoint step", step(&merged), step(&r)));
                    }
                    if r.checkpoint != merged.checkpoint {
                        return Err(differs(
                            "checkpoint (and one of the two records no hash of its weights)",
                            ckpt(&merged),
                            ckpt(&r),
                        ));
                    }
                }
            }
            if r.haystack != merged.haystack {
                return Err(differs(
                    "haystack",
                    merged.haystack.clone(),
                    r.haystack.clone(),
                ));
            }
            if r.depths != merged.depths {
                let list = |d: &[f64]| {
                    d.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                return Err(differs("depths", list(&merged.depths), list(&r.depths)));
            }
            if let Some(l) = r.lengths.iter().find(|l| merged.lengths.contains(l)) {
                return Err(Error::Invalid(format!(
                    "{}: length {} is also in {}",
                    path.display(),
                    format_length(*l),
                    first_path.display()
                )));
            }
            merged.lengths.extend(r.lengths);
            merged.samples.extend(r.samples);
            merged.samples_per_cell = merged.samples_per_cell.max(r.samples_per_cell);
        }
        merged.lengths.sort_unstable();
        merged.summarise();
        Ok(merged)
    }

    /// Writes `OUT/results.json` atomically, first removing the temporaries of writes
    /// that were interrupted (a run stopped while saving).
    pub fn save(&self, out: &std::path::Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(format!("results: {e}")))?;
        let path = out.join("results.json");
        crate::util::sweep_atomic_temps(&path);
        write_atomic(&path, &json)
    }
}

/// Runs the grid. `spec` is the task, `haystack` where its text comes from.
pub fn run(
    engine: &Engine,
    spec: &TaskSpec,
    haystack: &Haystack,
    opts: &GridOptions,
) -> Result<Report> {
    if opts.samples == 0 || opts.batch == 0 || opts.lengths.is_empty() || opts.depths.is_empty() {
        return Err(Error::Invalid(format!(
            "an empty grid: {} samples per cell (--samples), {} at a time (--batch), {} \
             lengths, {} depths; each needs at least one",
            opts.samples,
            opts.batch,
            opts.lengths.len(),
            opts.depths.len()
        )));
    }
    if opts.scoring == Scoring::Generate && opts.batch != 1 {
        return Err(Error::Invalid(format!(
            "batch {} with scoring by generation: each sample generates alone (batch 1)",
            opts.batch
        )));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let mut report = Report {
        task: spec.task.name().to_string(),
        task_args: spec.args(),
        checkpoint: engine
            .checkpoint
            .as_ref()
            .map(|(p, _)| p.display().to_string()),
        step: engine.checkpoint.as_ref().map(|(_, s)| *s),
        weights_sha256: engine.weights_sha256.clone(),
        haystack: haystack.describe(),
        device: format!("{:?}", engine.device),
        offload: opts.prefill.placement == crate::model::Placement::Host,
        segment: engine.segment_tokens(opts.prefill.segment),
        lengths: opts.lengths.clone(),
        depths: opts.depths.clone(),
        samples_per_cell: opts.samples,
        scoring: opts.scoring,
        slack: (opts.scoring == Scoring::Generate).then_some(opts.slack),
        cells: vec![],
        samples: vec![],
    };
    // The prefills of the grid in order, (length index, depth index, its samples): the
    // part's share of them is this process's work.
    let mut items = vec![];
    for li in 0..opts.lengths.len() {
        for di in 0..opts.depths.len() {
            let cell: Vec<usize> = (0..opts.samples).collect();
            for group in cell.chunks(opts.batch.max(1)) {
                items.push((li, di, group.to_vec()));
            }
        }
    }
    let mine: Vec<(usize, usize, Vec<usize>)> = items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| opts.part.owns(*i))
        .map(|(_, item)| item)
        .collect();
    let total: u64 = mine
        .iter()
        .map(|(li, _, group)| engine.usable_length(opts.lengths[*li]) as u64 * group.len() as u64)
        .sum();
    let bar = opts.progress.then(|| crate::progress::tokens(total));
    for (li, di, group) in &mine {
        let (li, di) = (*li, *di);
        let (length, depth) = (opts.lengths[li], opts.depths[di]);
        let used = engine.usable_length(length);
        let built: Vec<(u64, Sample)> = group
            .iter()
            .map(|&s| {
                let seed = sample_seed(opts.seed, li, di, s);
                let mut rng = SplitMix64::new(seed);
                build_sample(spec, used as usize, depth, haystack, &mut rng)
                    .map(|sample| (seed, sample))
            })
            .collect::<Result<_>>()?;
        if let Some(b) = &bar {
            let (a, z) = (group[0], group[group.len() - 1]);
            let which = if a == z {
                format!("#{a}")
            } else {
                format!("#{a}-{z}")
            };
            let label = format!("{} depth {depth:.2} {which}", format_length(length));
            b.set_message(format!("{label:>22} "));
        }
        let ids: Vec<i64> = built
            .iter()
            .flat_map(|(_, x)| x.tokens.iter().map(|&t| t as i64))
            .collect();
        let vocab = engine.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::Invalid(format!(
                "sample token id {bad} is outside the model's vocabulary \
                         (model.vocab_size {vocab}); the haystack ({}) or the task's ids do not \
                         fit this model",
                haystack.describe()
            )));
        }
        let rows = built.len() as i64;
        // Per sample: its scores, generated ids (none teacher-forced) and the prefill's
        // stats over the samples it held.
        let scored: Vec<(Score, Vec<u32>, PrefillStats)> = match opts.scoring {
            Scoring::TeacherForced => teacher_forced(
                engine,
                spec,
                &built,
                &ids,
                used,
                &opts.prefill,
                bar.as_ref(),
            )?,
            Scoring::Generate => built
                .iter()
                .map(|(_, sample)| {
                    let (prediction, generated, stats) =
                        generate_sample(engine, sample, opts.slack, &opts.prefill)?;
                    if let Some(b) = &bar {
                        b.inc(used as u64);
                    }
                    let sc = score_generated(spec, sample, prediction, &generated);
                    Ok((sc, generated, stats))
                })
                .collect::<Result<_>>()?,
        };
        for ((&s, (seed, sample)), (sc, generated, stats)) in group.iter().zip(built).zip(scored) {
            report.samples.push(SampleResult {
                length,
                used_length: used,
                depth,
                sample: s,
                seed,
                fact_position: sample.fact_position,
                answer: sample.answer.clone(),
                prediction: sc.prediction,
                hit: sc.hit,
                single_token_hit: sc.single_token_hit,
                part_hits: sc.part_hits,
                generated,
                prefill_seconds: stats.seconds / rows as f64,
                tokens_per_second: stats.tokens_per_second(),
                batch: rows as usize,
                peak_device_bytes: stats.peak_device_bytes,
                chunk_memory_bytes: stats.memory_bytes / rows,
            });
        }
        report.summarise();
        if opts.part.rank == 0 {
            report.save(&opts.out)?;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(report)
}

/// Scores a cell's batch of samples (`ids`, their tokens side by side, `used` each)
/// teacher-forced: one prefill of the whole samples, the argmax at each answer position.
fn teacher_forced(
    engine: &Engine,
    spec: &TaskSpec,
    built: &[(u64, Sample)],
    ids: &[i64],
    used: i64,
    prefill: &PrefillOptions,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Vec<(Score, Vec<u32>, PrefillStats)>> {
    let rows = built.len() as i64;
    let tokens = Tensor::from_slice(ids).view([rows, used]);
    // Targets: logits at p predict token p+1. Each row keeps its answer span.
    let spans: Vec<(i64, i64)> = built
        .iter()
        .map(|(_, x)| (x.answer_start as i64 - 1, x.answer.len() as i64))
        .collect();
    let mut picked: Vec<Vec<Tensor>> = built.iter().map(|_| Vec::new()).collect();
    let stats = engine.prefill(&tokens, prefill, bar, |start, h| {
        let len = h.size()[1];
        for (row, &(first, n_ans)) in spans.iter().enumerate() {
            let lo = first.max(start);
            let hi = (first + n_ans).min(start + len);
            if lo < hi {
                picked[row].push(h.get(row as i64).narrow(0, lo - start, hi - lo));
            }
        }
        Ok(())
    })?;
    built
        .iter()
        .zip(picked)
        .zip(spans)
        .map(|(((_, sample), parts), (_, n_ans))| {
            debug_assert_eq!(parts.iter().map(|p| p.size()[0]).sum::<i64>(), n_ans);
            let hidden = Tensor::cat(&parts, 0);
            let logits = tch::no_grad(|| engine.model.head(&hidden)).to_kind(Kind::Float);
            let pred: Vec<i64> = Vec::try_from(logits.argmax(-1, false).view([-1]))
                .map_err(|e| Error::Invalid(format!("predictions: {e}")))?;
            let sc = score(spec, sample, pred.iter().map(|&p| p as u32).collect());
            Ok((sc, vec![], stats))
        })
        .collect()
}

/// One sample under [`Scoring::Generate`], through the [`Generator`] of `lcm generate`: its
/// tokens up to and including the question are prefilled; the teacher-forced argmax at
/// each answer position is read by pushing the answer, which is then rolled back; the
/// answer's length plus `slack` tokens are generated greedily. Returns the teacher-forced
/// prediction, the generated ids and the stats of the prefill (its tokens and seconds; the
/// peak GPU memory of the whole sample).
pub fn generate_sample(
    engine: &Engine,
    sample: &Sample,
    slack: usize,
    prefill: &PrefillOptions,
) -> Result<(Vec<u32>, Vec<u32>, PrefillStats)> {
    let prompt: Vec<i64> = sample.tokens[..sample.answer_start]
        .iter()
        .map(|&t| t as i64)
        .collect();
    let new_tokens = sample.answer.len() + slack;
    let opts = GenerateOptions {
        segment: prefill.segment,
        placement: prefill.placement,
        max_new_tokens: new_tokens,
    };
    let cuda_index = match engine.device {
        tch::Device::Cuda(i) => Some(i),
        _ => None,
    };
    if let Some(i) = cuda_index {
        tch::Cuda::synchronize(i as i64);
        crate::cuda::reset_peak(i);
    }
    let started = std::time::Instant::now();
    let mut g = Generator::new(engine, &prompt, Sampling::greedy(), &opts)?;
    if let Some(i) = cuda_index {
        tch::Cuda::synchronize(i as i64);
    }
    let seconds = started.elapsed().as_secs_f64();
    let (memory_bytes, landmark_bytes) = g.state().store.as_ref().map_or((0, 0), |s| s.bytes());
    let after_question = g.snapshot();
    // The first argmax over every id, as the teacher-forced prefill reads it (greedy
    // choice draws nothing from the generator).
    let mut unused = SplitMix64::new(0);
    let mut prediction = Vec::with_capacity(sample.answer.len());
    for &id in &sample.answer {
        prediction.push(choose(g.logits(), &Sampling::greedy(), &mut unused) as u32);
        g.push(id as i64)?;
    }
    g.restore(after_question);
    let generated = (0..new_tokens)
        .map(|_| g.next_token().map(|id| id as u32))
        .collect::<Result<Vec<u32>>>()?;
    let stats = PrefillStats {
        tokens: prompt.len() as i64,
        seconds,
        peak_device_bytes: cuda_index.and_then(crate::cuda::peak_allocated),
        memory_bytes,
        landmark_bytes,
    };
    Ok((prediction, generated, stats))
}
