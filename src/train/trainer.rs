//! The training loop, one process or many: on several ranks (a [`Group`] in
//! [`TrainOptions::group`]) each rank reads its own disjoint samples, gradients are averaged
//! by DDP's Reducer, every logged number is global, and rank 0 alone writes checkpoints and
//! metrics (`data_parallel`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use tch::{nn::VarStore, Kind, Tensor};

use crate::dist::Group;
use crate::error::{Error, Result};
use crate::model::{self, LanguageModel};
use crate::ops::cross_entropy;
use crate::train::checkpoint::{self, State};
use crate::train::config::{Precision, TrainConfig};
use crate::train::data_parallel::{DataParallel, PendingStats, StepStats};
use crate::train::metrics::{LogWindow, Metrics, MetricsFile};
use crate::train::optim::{AdamW, StepError};
use crate::train::run_dir::{RunDir, Start, METRICS};
use crate::train::sampler::{sample_range, Batch, Sampler, IGNORE};
use crate::train::schedule::learning_rate;

#[derive(Default, Clone)]
pub struct TrainOptions {
    /// A checkpoint (`step-*` folder) or run folder whose newest checkpoint to resume.
    pub resume: Option<PathBuf>,
    /// A checkpoint (e.g. one `lcm export` wrote) whose weights start a new run at step 0,
    /// with fresh optimizer moments: fine-tuning, or continuing a published model.
    pub init: Option<PathBuf>,
    /// Let a run that starts at step 0 replace the checkpoints and metrics of an earlier
    /// run in `checkpoint.dir` (refused otherwise).
    pub force: bool,
    /// The process group of a data-parallel run (None: one process).
    pub group: Option<Arc<Group>>,
    /// The device to train on, instead of the config's (a data-parallel worker's
    /// `cuda:LOCAL_RANK`).
    pub device: Option<tch::Device>,
    /// Show a progress bar (when stderr is a terminal; plain lines otherwise).
    pub progress: bool,
    /// Stop after this step as if interrupted (saving a checkpoint): for tests and for
    /// splitting a long run into sessions.
    pub stop_after: Option<u64>,
    /// Set (by a signal handler) to save a checkpoint and stop after the current step.
    pub interrupt: Option<Arc<AtomicBool>>,
}

#[derive(Debug)]
pub struct TrainSummary {
    /// The step the run ended at.
    pub step: u64,
    /// Steps this call trained (0: the run was already at `steps`).
    pub steps_run: u64,
    pub last_loss: f64,
    pub checkpoint: Option<PathBuf>,
    pub interrupted: bool,
}

/// Mean cross-entropy over targets that are not IGNORE (fp32, whatever the logits' dtype).
/// With no such target the loss is 0 (and so is its gradient), where PyTorch's mean over
/// nothing would be NaN and stop the trainer over a batch that simply scores nothing.
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let targets = targets.reshape([-1]);
    let count = targets.ne(IGNORE).sum(Kind::Float).clamp_min(1.0);
    per_token_loss(logits, &targets).sum(Kind::Float) / count
}

/// The cross-entropy of each target, 0 at IGNORE (fp32): the fused kernel on a GPU, which
/// neither upcasts the logits nor keeps log-probabilities for the backward.
fn per_token_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = *logits.size().last().expect("logits have a vocabulary axis");
    cross_entropy(&logits.reshape([-1, v]), &targets.reshape([-1]))
}

/// The training objective: [`lm_loss`] over every target, or, with `answer_weight`
/// (`data.synthetic.answer_weight`), the mean over the language targets plus `answer_weight`
/// times the mean over the synthetic answers. A plain mean lets a row's 2K text targets
/// drown its 5 answer targets (0.25% of the gradient): a small real-text DRT then learns
/// language and never the passkey (docs/experiments.md, run n1).
/// `logits (..., V)`; `targets` and `answer` have its leading shape.
pub fn training_loss(
    logits: &Tensor,
    targets: &Tensor,
    answer: &Tensor,
    answer_weight: Option<f64>,
) -> Tensor {
    let Some(w) = answer_weight else {
        return lm_loss(logits, targets);
    };
    let targets = targets.reshape([-1]);
    let per_token = per_token_loss(logits, &targets);
    let valid = targets.ne(IGNORE);
    let answer = answer.reshape([-1]).logical_and(&valid);
    let text = valid.logical_and(&answer.logical_not());
    let mean_over = |mask: &Tensor| {
        let n = mask.sum(Kind::Float).clamp_min(1.0);
        (&per_token * mask.to_kind(Kind::Float)).sum(Kind::Float) / n
    };
    mean_over(&text) + mean_over(&answer) * w
}

/// The positions of a batch that a loss scores (target not IGNORE), flattened: their
/// hidden states `(M, d)`, targets `(M)` and answer flags `(M)`.
struct Scored {
    hidden: Tensor,
    targets: Tensor,
    answer: Tensor,
}

impl Scored {
    fn select(hidden: &Tensor, batch: &Batch) -> Self {
        let d = *hidden
            .size()
            .last()
            .expect("hidden states have a model axis");
        let targets = batch.targets.reshape([-1]);
        let at = targets.ne(IGNORE).nonzero().squeeze_dim(1);
        Scored {
            hidden: hidden.reshape([-1, d]).index_select(0, &at),
            targets: targets.index_select(0, &at),
            answer: batch.answer.reshape([-1]).index_select(0, &at),
        }
    }
}

/// [`training_loss`] of a training-mode forward of `batch`, and the answers' (hits, total)
/// if it has any. The head runs only at the scored positions (see [`LanguageModel::hidden`]);
/// the loss is that of the full logits (`tests/train_synthetic.rs`).
pub fn batch_loss(
    model: &dyn LanguageModel,
    batch: &Batch,
    answer_weight: Option<f64>,
) -> (Tensor, Option<(f64, f64)>) {
    let scored = Scored::select(&model.hidden(&batch.inputs, true), batch);
    let logits = model.head(&scored.hidden);
    let loss = training_loss(&logits, &scored.targets, &scored.answer, answer_weight);
    let hits = answer_accuracy(&logits.detach(), &scored.targets, &scored.answer);
    (loss, hits)
}

/// Positions per slice of the output head in [`eval_loss`]: 8K positions of a 50K vocabulary
/// are 1.6 GB of fp32 logits, where a whole 256K-token batch of 2 would be 98 GiB.
const EVAL_HEAD_SLICE: i64 = 8192;

/// [`lm_loss`] of an inference-mode forward of `batch` (the mean cross-entropy over every
/// target that is not IGNORE), with the head applied to the scored positions a slice at a
/// time, so that evaluating long rows costs no more memory than training on them.
pub fn eval_loss(model: &dyn LanguageModel, batch: &Batch) -> f64 {
    eval_loss_in_slices(model, batch, EVAL_HEAD_SLICE)
}

/// [`eval_loss`] with the head applied `slice` positions at a time.
pub fn eval_loss_in_slices(model: &dyn LanguageModel, batch: &Batch, slice: i64) -> f64 {
    tch::no_grad(|| {
        let scored = Scored::select(&model.hidden(&batch.inputs, false), batch);
        let m = scored.targets.size()[0];
        let mut sum = 0.0;
        for start in (0..m).step_by(slice as usize) {
            let len = slice.min(m - start);
            let logits = model.head(&scored.hidden.narrow(0, start, len));
            sum += per_token_loss(&logits, &scored.targets.narrow(0, start, len))
                .sum(Kind::Float)
                .double_value(&[]);
        }
        sum / m as f64
    })
}

/// Exact-match rate of argmax predictions on answer targets, if there are any.
fn answer_accuracy(logits: &Tensor, targets: &Tensor, answer: &Tensor) -> Option<(f64, f64)> {
    let total = answer.sum(Kind::Int64).int64_value(&[]);
    if total == 0 {
        return None;
    }
    let hit = logits
        .argmax(-1, false)
        .eq_tensor(targets)
        .logical_and(answer);
    Some((hit.sum(Kind::Int64).int64_value(&[]) as f64, total as f64))
}

/// A seed for the model's own randomness (Gumbel noise) at (step, micro-batch, rank), so
/// that a resumed run draws the same noise as an uninterrupted one, and `k` ranks draw what
/// one rank accumulating `k` micro-batches would (the index is `micro * world + rank`).
fn step_seed(seed: u64, step: u64, micro: u64) -> i64 {
    let mut g = crate::util::SplitMix64::for_item(seed ^ 0x5eed, step * 1_000_003 + micro);
    (g.next_u64() >> 1) as i64
}

/// Where a run stands: optimizer steps taken, samples read (all ranks), tokens trained.
#[derive(Clone, Copy)]
struct Position {
    step: u64,
    samples: u64,
    tokens: u64,
}

impl Position {
    /// One step further: `rows` samples of `seq_len` tokens.
    fn advance(self, rows: u64, seq_len: i64) -> Position {
        Position {
            step: self.step + 1,
            samples: self.samples + rows,
            tokens: self.tokens + rows * seq_len as u64,
        }
    }
}

/// Loads `--resume` (weights, moments, position) or `--init` (weights) into `opt`.
fn load_start(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    world: u64,
    opt: &mut AdamW,
) -> Result<Position> {
    if let Some(path) = &opts.resume {
        let ckpt = checkpoint::resolve(path)?;
        let state = checkpoint::load(&ckpt, opt, true)?;
        let rows = |w: u64, c: &TrainConfig| w * c.batch_size as u64 * c.grad_accum;
        let (was, now) = (rows(state.world, &state.config), rows(world, cfg));
        if opt_rank(opts) == 0 {
            eprintln!(
                "resumed from {} at step {} (sample {})",
                ckpt.display(),
                state.step,
                state.samples
            );
            if state.world != world || was != now {
                eprintln!(
                    "the run now has {world} rank(s) x {} rows x {} micro-batches = {now} rows a \
                     step (the checkpoint's: {} x {} x {} = {was}); sample indices are global, so \
                     the data stream continues at sample {}{}",
                    cfg.batch_size,
                    cfg.grad_accum,
                    state.world,
                    state.config.batch_size,
                    state.config.grad_accum,
                    state.samples,
                    if was == now {
                        ""
                    } else {
                        " (the global batch changed: each step now takes a different number of samples)"
                    }
                );
            }
        }
        return Ok(Position {
            step: state.step,
            samples: state.samples,
            tokens: state.tokens,
        });
    }
    if let Some(path) = &opts.init {
        let ckpt = checkpoint::resolve(path)?;
        let state = checkpoint::load(&ckpt, opt, false)?;
        if opt_rank(opts) == 0 {
            eprintln!(
                "weights from {} (its step {}); starting at step 0",
                ckpt.display(),
                state.step
            );
        }
    }
    Ok(Position {
        step: 0,
        samples: 0,
        tokens: 0,
    })
}

fn opt_rank(opts: &TrainOptions) -> u64 {
    opts.group.as_ref().map_or(0, |g| g.rank())
}

pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    // The run re-seeds the generator every micro-batch: no one else may draw meanwhile.
    let _generator = crate::util::lock_torch_generator();
    let mut run = Run::start(cfg, opts)?;
    let start = run.pos.step;
    let mut summary = TrainSummary {
        step: start,
        steps_run: 0,
        last_loss: f64::NAN,
        checkpoint: None,
        interrupted: false,
    };
    if start >= cfg.steps {
        if run.rank == 0 {
            eprintln!(
                "already at step {start} of {}: nothing to train (raise it with --set steps=N)",
                cfg.steps
            );
        }
        return Ok(summary);
    }
    let bar = progress_bar(opts.progress && run.rank == 0, start, cfg.steps);
    let mut window = LogWindow::default();
    for step in start..cfg.steps {
        let numbers = run.forward_backward(step, &summary.checkpoint)?;
        let lr = learning_rate(&cfg.optim, step, cfg.steps);
        // The optimizer's kernels queue behind the backward while the ranks sum the step's
        // numbers. A rank's non-finite loss makes every rank's averaged gradients
        // non-finite, which the optimizer refuses without updating anything; the error
        // then names the rank.
        let stepped = run.opt.step(&cfg.optim, lr);
        let stats = numbers.finish(step, &summary.checkpoint)?;
        let grad_norm = stepped.map_err(|e| match e {
            StepError::NonFinite(norm) => diverged(
                format!("gradient norm is {norm}"),
                step,
                &summary.checkpoint,
            ),
            StepError::Dist(e) => e,
        })?;
        run.opt.zero_grad();
        let done = step + 1;
        run.pos = run.pos.advance(run.rows_per_step(), cfg.seq_len_at(step));
        window.add(
            run.rows_per_step() * cfg.seq_len_at(step) as u64,
            stats.scored,
        );
        summary.last_loss = stats.loss_sum / stats.micro_batches.max(1.0);
        let line = run.log(done, &stats, summary.last_loss, lr, grad_norm, &mut window)?;
        match (&bar, line) {
            (Some(b), Some(line)) => b.set_message(line),
            (None, Some(line)) => eprintln!("step {done}/{} {line}", cfg.steps),
            _ => {}
        }
        if let Some(b) = &bar {
            b.set_position(done);
        }
        let stop = opts.stop_after.is_some_and(|s| done >= s) || stats.stop;
        summary.interrupted = stats.stop;
        let periodic = cfg.checkpoint.every > 0 && done % cfg.checkpoint.every == 0;
        if periodic || stop || done == cfg.steps {
            summary.checkpoint = run.save(step, &summary.checkpoint)?;
        }
        if stop {
            break;
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    summary.step = run.opt.step;
    summary.steps_run = run.opt.step - start;
    Ok(summary)
}

/// A run between steps: the model and its optimizer, where it stands, its data, and, on
/// several ranks, its data-parallel group; rank 0 also holds the run folder and metrics.
struct Run<'a> {
    cfg: &'a TrainConfig,
    opts: &'a TrainOptions,
    rank: u64,
    world: u64,
    device: tch::Device,
    model: Box<dyn LanguageModel>,
    opt: AdamW,
    /// Where the run is; `first_sample` is where this call's samples begin.
    pos: Position,
    first_sample: u64,
    start: u64,
    dp: Option<DataParallel>,
    run_dir: Option<RunDir>,
    metrics: Option<MetricsFile>,
    sampler: Sampler,
    eval_sampler: Option<Sampler>,
    /// All ranks' peak FLOP/s, for MFU.
    peak: Option<f64>,
    // The store owns the model's variables; it lives as long as the model.
    _vs: VarStore,
}

impl<'a> Run<'a> {
    fn start(cfg: &'a TrainConfig, opts: &'a TrainOptions) -> Result<Run<'a>> {
        let (rank, world) = opts
            .group
            .as_ref()
            .map_or((0, 1), |g| (g.rank(), g.world()));
        let device = match opts.device {
            Some(d) => d,
            None => cfg.device()?,
        };
        // Rank 0 owns the run folder: locked, checked, swept before anything is trained.
        let run_dir = match (rank, &opts.resume) {
            (0, Some(p)) => Some(RunDir::open(
                &cfg.checkpoint.dir,
                Start::Resume(&checkpoint::resolve(p)?),
                opts.force,
            )?),
            (0, None) => Some(RunDir::open(&cfg.checkpoint.dir, Start::Fresh, opts.force)?),
            _ => None,
        };
        tch::manual_seed(cfg.seed as i64);
        let mut vs = VarStore::new(device);
        let model = model::build(&vs.root(), &cfg.model)?;
        let multiple = model.length_multiple();
        if let Some(len) = cfg.lengths().find(|l| l % multiple != 0) {
            return Err(Error::Config {
                key: "seq_len".into(),
                message: format!("{len} is not a multiple of the model's chunk size {multiple}"),
            });
        }
        let mut opt = AdamW::new(&vs);
        if cfg.precision == Precision::Bf16 {
            opt.split_bf16(&mut vs);
        }
        let pos = load_start(cfg, opts, world, &mut opt)?;
        if let (Some(dir), Some(_)) = (&run_dir, &opts.resume) {
            dir.truncate_metrics(pos.step)?;
        }
        let dp = match &opts.group {
            Some(g) => {
                let bucket_bytes = (cfg.dist.bucket_mib * (1 << 20) as f64) as i64;
                let dp = DataParallel::new(g.clone(), &mut opt, bucket_bytes)?;
                if cfg.dist.shard_optimizer {
                    opt.shard(g.clone());
                }
                if rank == 0 {
                    let buckets = dp.bucket_bytes()?;
                    eprintln!(
                        "data parallel: {world} ranks ({}), gradients in {} bucket(s) of up to \
                         {:.1} MiB{}",
                        g.backend().name(),
                        buckets.len(),
                        buckets.iter().copied().max().unwrap_or(0) as f64 / (1 << 20) as f64,
                        if cfg.dist.shard_optimizer {
                            ", optimizer state sharded across ranks"
                        } else {
                            ""
                        }
                    );
                }
                Some(dp)
            }
            None => None,
        };
        let eval_sampler = match (cfg.log.eval_every, rank) {
            (1.., 0) => Some(Sampler::for_eval(cfg)?),
            _ => None,
        };
        let metrics = match &run_dir {
            Some(d) => Some(MetricsFile::open(&d.path().join(METRICS))?),
            None => None,
        };
        let peak = cfg
            .log
            .peak_tflops
            .or(if device.is_cuda() { Some(799.0) } else { None })
            .map(|p| p * world as f64);
        Ok(Run {
            cfg,
            opts,
            rank,
            world,
            device,
            model,
            opt,
            first_sample: pos.samples,
            start: pos.step,
            pos,
            dp,
            run_dir,
            metrics,
            sampler: Sampler::for_training(cfg)?,
            eval_sampler,
            peak,
            _vs: vs,
        })
    }

    /// Rows of one optimizer step, all ranks together.
    fn rows_per_step(&self) -> u64 {
        self.cfg.batch_size as u64 * self.cfg.grad_accum * self.world
    }

    /// The forward and backward of this rank's micro-batches of `step` (its samples:
    /// `first_sample` + their global index), gradients averaged across ranks, and the
    /// step's numbers (being summed over the ranks). A non-finite loss stops a single
    /// process here; on several ranks, once the numbers are shared.
    fn forward_backward(&mut self, step: u64, last: &Option<PathBuf>) -> Result<StepNumbers> {
        let cfg = self.cfg;
        self.model.set_step(step);
        let seq_len = cfg.seq_len_at(step);
        let mut stats = StepStats::default();
        for micro in 0..cfg.grad_accum {
            tch::manual_seed(step_seed(cfg.seed, step, micro * self.world + self.rank));
            let b = cfg.batch_size as u64;
            let local = sample_range(
                step - self.start,
                micro,
                cfg.grad_accum,
                self.rank,
                self.world,
                b,
            );
            let range = self.first_sample + local.start..self.first_sample + local.end;
            let stage = cfg.stage_at(step);
            let batch = self
                .sampler
                .batch_at(range, seq_len as usize, stage, self.device);
            let answer_weight = cfg.data.synthetic.as_ref().and_then(|s| s.answer_weight);
            let (loss, hits) = batch_loss(self.model.as_ref(), &batch, answer_weight);
            // Armed before the host waits for the loss, so the Reducer's walk of the graph
            // overlaps the forward still running on the device.
            if let (Some(dp), true) = (&self.dp, micro + 1 == cfg.grad_accum) {
                dp.arm(&loss)?;
            }
            stats.scored.0 += batch.targets.ne(IGNORE).sum(Kind::Int64).int64_value(&[]) as f64;
            stats.scored.1 += batch.targets.numel() as f64;
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                let what = nonfinite_loss(value, &batch, cfg);
                if self.dp.is_none() {
                    return Err(diverged(what, step, last));
                }
                // The other ranks are inside this step's collectives: finish it with
                // them, and stop together once the step's numbers are shared.
                eprintln!("rank {}: {what} at step {}", self.rank, step + 1);
                stats.nonfinite_ranks.push(self.rank);
            }
            (loss / cfg.grad_accum as f64)
                .f_backward()
                .map_err(|e| backward_error(e, &self.dp))?;
            stats.loss_sum += value;
            stats.micro_batches += 1.0;
            if let Some((h, t)) = hits {
                stats.answers.0 += h;
                stats.answers.1 += t;
            }
        }
        stats.stop = self
            .opts
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        Ok(match &self.dp {
            Some(dp) => StepNumbers::Summing(dp.reduce(&stats, self.device)?),
            None => StepNumbers::Local(stats),
        })
    }

    /// The metrics line of step `done` when one is due (rank 0 writes it to metrics.jsonl
    /// and returns it for the terminal), with the eval loss when that is due too.
    fn log(
        &mut self,
        done: u64,
        stats: &StepStats,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        window: &mut LogWindow,
    ) -> Result<Option<String>> {
        let cfg = self.cfg;
        let eval_due = cfg.log.eval_every > 0
            && (done.is_multiple_of(cfg.log.eval_every) || done == cfg.steps);
        if self.rank != 0
            || !(done.is_multiple_of(cfg.log.every.max(1)) || done == cfg.steps || eval_due)
        {
            return Ok(None);
        }
        let seq_len = cfg.seq_len_at(done - 1);
        let (tps, scored) = window.take();
        let flops = crate::model::flops::trained_per_token(
            &cfg.model,
            self.model.flops_per_token(seq_len),
            scored,
        );
        let eval_loss = match &self.eval_sampler {
            Some(es) if eval_due => Some(evaluate(self.model.as_ref(), es, cfg, self.device)),
            _ => None,
        };
        let m = Metrics {
            step: done,
            loss,
            lr,
            grad_norm,
            tokens: self.pos.tokens,
            tokens_per_s: tps,
            mfu: self.peak.map(|p| flops * tps / (p * 1e12)),
            peak_memory: match self.device {
                tch::Device::Cuda(i) => crate::cuda::peak_allocated(i),
                _ => None,
            },
            answer_acc: (stats.answers.1 > 0.0).then(|| stats.answers.0 / stats.answers.1),
            eval_loss,
        };
        if let Some(f) = self.metrics.as_mut() {
            f.write(&m)?;
        }
        Ok(Some(format_metrics(&m)))
    }

    /// A checkpoint of the step after loop index `step`: every rank checks its weights
    /// and waits for the others, then rank 0 writes it.
    fn save(&self, step: u64, last: &Option<PathBuf>) -> Result<Option<PathBuf>> {
        let full = self.opt.full_state()?;
        if !full.all_finite() {
            return Err(diverged("weights are not finite".into(), step, last));
        }
        if let Some(dp) = &self.dp {
            dp.barrier()?;
        }
        if self.run_dir.is_none() {
            return Ok(last.clone());
        }
        let state = State {
            step: self.pos.step,
            samples: self.pos.samples,
            tokens: self.pos.tokens,
            seed: self.cfg.seed,
            world: self.world,
            lcm_version: env!("CARGO_PKG_VERSION").into(),
            config: self.cfg.clone(),
        };
        let ckpt = &self.cfg.checkpoint;
        checkpoint::save(&ckpt.dir, &self.opt.names, &full, &state, ckpt.keep).map(Some)
    }
}

/// What a non-finite loss says, with its likeliest cause when the batch shows one.
fn nonfinite_loss(value: f64, batch: &Batch, cfg: &TrainConfig) -> String {
    let mut what = format!("loss is {value}");
    if let Some(t) = target_outside_vocabulary(&batch.targets, cfg.model.vocab_size) {
        what += &format!(
            " (target token {t} is outside model.vocab_size {})",
            cfg.model.vocab_size
        );
    }
    what
}

/// A failed backward: on several ranks most likely a gradient all-reduce whose peer died.
fn backward_error(e: tch::TchError, dp: &Option<DataParallel>) -> Error {
    match dp {
        Some(dp) => Error::Dist {
            rank: dp.rank(),
            msg: format!("backward (gradient all-reduce): {e}"),
        },
        None => Error::Torch(e),
    }
}

/// A target that is neither IGNORE nor a token id below `vocab`, if `targets` has one: the
/// cross-entropy op gives such a row a NaN loss (checking every batch would synchronise with
/// the GPU), so a NaN loss looks here for the cause.
fn target_outside_vocabulary(targets: &Tensor, vocab: i64) -> Option<i64> {
    let t = targets.reshape([-1]);
    let bad = t.ne(IGNORE).logical_and(&t.lt(0).logical_or(&t.ge(vocab)));
    let at = bad.nonzero();
    (at.size()[0] > 0).then(|| t.int64_value(&[at.int64_value(&[0, 0])]))
}

/// The error for a run that diverged at loop index `step`, named as the log names it
/// (1-based: the step that would have completed); the last good checkpoint is never
/// overwritten.
fn diverged(what: String, step: u64, last: &Option<PathBuf>) -> Error {
    Error::Invalid(format!(
        "{what} at step {}: stopping; the last good checkpoint ({}) is intact. \
         A lower optim.lr or a smaller optim.grad_clip may help.",
        step + 1,
        last.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none saved yet".into())
    ))
}

/// A step's numbers: this process's own, or being summed over the ranks.
enum StepNumbers {
    Local(StepStats),
    Summing(PendingStats),
}

impl StepNumbers {
    /// The step's global numbers; a non-finite loss on any rank stops the run here.
    fn finish(self, step: u64, last: &Option<PathBuf>) -> Result<StepStats> {
        let stats = match self {
            StepNumbers::Local(stats) => stats,
            StepNumbers::Summing(pending) => pending.finish()?,
        };
        if !stats.nonfinite_ranks.is_empty() {
            let ranks: Vec<String> = stats
                .nonfinite_ranks
                .iter()
                .map(|r| r.to_string())
                .collect();
            let what = format!("the loss is not finite on rank(s) {}", ranks.join(", "));
            return Err(diverged(what, step, last));
        }
        Ok(stats)
    }
}

/// Mean loss over `log.eval_batches` fixed held-out batches, without gradients or noise.
pub fn evaluate(
    model: &dyn LanguageModel,
    sampler: &Sampler,
    cfg: &TrainConfig,
    device: tch::Device,
) -> f64 {
    tch::no_grad(|| {
        let b = cfg.batch_size as u64;
        let losses: Vec<f64> = (0..cfg.log.eval_batches.max(1))
            .map(|i| eval_loss(model, &sampler.batch(i * b..(i + 1) * b, device)))
            .collect();
        losses.iter().sum::<f64>() / losses.len() as f64
    })
}

fn format_metrics(m: &Metrics) -> String {
    let mut s = format!(
        "loss {:.4} lr {:.2e} gnorm {:.3} {:.0} tok/s",
        m.loss, m.lr, m.grad_norm, m.tokens_per_s
    );
    if let Some(mfu) = m.mfu {
        s += &format!(" mfu {:.1}%", 100.0 * mfu);
    }
    if let Some(a) = m.answer_acc {
        s += &format!(" answer {:.0}%", 100.0 * a);
    }
    if let Some(e) = m.eval_loss {
        s += &format!(" eval {e:.4}");
    }
    s
}

fn progress_bar(wanted: bool, start: u64, total: u64) -> Option<ProgressBar> {
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total).with_position(start);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    Some(bar)
}
