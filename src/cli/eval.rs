use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lcm::data::stats::check_vocab;
use lcm::data::IndexedCorpus;
use lcm::dist::{Backend, Group, Launch};
use lcm::eval::grid::{self, GridOptions, Part};
use lcm::eval::lengths::{format_length, parse_depths, parse_lengths};
use lcm::eval::niah::{task_label, Haystack, NiahTask, Scoring, TaskArgs, TaskSpec, DEFAULT_SLACK};
use lcm::eval::{plan, ppl, Engine, PrefillOptions};

use super::{parse_device, parse_offload, EngineArgs};
use lcm::model::Placement;
use tch::Device;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Needle in a haystack: accuracy by length x depth through segmented inference.
    #[command(after_help = "Examples:
  lcm eval niah --checkpoint runs/passkey-toy --len 256,4K,64K --samples 20
  lcm eval niah --checkpoint models/drt-128m --len 4K,64K,1M,16M --task passkey
  lcm eval niah --checkpoint models/drt-128m --len 16M --offload cpu --samples 1
  lcm eval niah --checkpoint runs/drt-small --task s-niah --haystack data/tokens/sample_val
  lcm eval niah --checkpoint models/drt-niah-c8 --len 4K,64K,1M --task mq-niah --queries 2
  lcm eval niah --checkpoint models/drt-niah-c8 --len 4K,64K,1M --task vt --hops 2 --chains 2
  lcm eval niah --checkpoint models/drt-niah-c8 --len 4K,64K,1M --score generate
  lcm eval niah --checkpoint models/drt-niah-c8 --len 64K --task mq-niah --score generate --slack 16

mq-niah: --queries needles, all asked, the answer every key in the order asked. vt: a chain
of --hops assignments after the key's among --chains - 1 distractor chains, the answer every
name of the asked chain. Both score the whole answer and each part (key, name) on its own:
the `per part` row and `part_hits` in results.json.

--score teacher-forced (the default) prefills the whole sample: a hit needs every answer
token to be the argmax after the true tokens before it. --score generate scores as RULER
does: the sample is prefilled up to and including the question, then the answer's length
plus --slack (default 8) tokens are generated greedily (as `lcm generate`), and a hit is
the answer's ids appearing as a contiguous run in the generated ids (containment, by ids); a
part is hit when its ids appear anywhere in them. results.json records the scoring, and per
sample the generated ids; the table adds the same samples' teacher-forced score. Samples
then run one at a time (--batch 1).

Writes OUT/results.json (every sample; rewritten after each one) and OUT/heatmap.png.")]
    Niah(NiahArgs),
    /// Language-modelling loss by context length (log-loss in nats/token and perplexity).
    #[command(after_help = "Example:
  lcm eval ppl --checkpoint runs/drt-tiny --corpus data/tokens/sample_val --len 1K,4K,16K")]
    Ppl(PplArgs),
    /// One NIAH table and heatmap from the results of runs over different lengths.
    #[command(after_help = "Example (the 16M cell run on its own, then merged):
  lcm eval niah --checkpoint models/drt-niah-c8 --len 4K,64K,1M --out grid/short
  lcm eval niah --checkpoint models/drt-niah-c8 --len 16M --batch 2 --out grid/16m
  lcm eval merge grid/short/results.json grid/16m/results.json --out grid/all

The runs must share the task, checkpoint step, haystack and depths.")]
    Merge(MergeArgs),
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// results.json files written by `lcm eval niah`.
    #[arg(required = true, num_args = 2..)]
    results: Vec<PathBuf>,
    /// Folder for the merged results.json and heatmap.png.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct Common {
    /// A checkpoint folder (step-*) or a run folder (its newest checkpoint is used).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Lengths in tokens, comma-separated, with K/M suffixes (x1024, x1024^2). Each is
    /// rounded down to a multiple of the model's chunk size.
    #[arg(long = "len", value_name = "LENGTHS")]
    lengths: String,
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct NiahArgs {
    #[command(flatten)]
    common: Common,
    /// Depths of the needle in the haystack, comma-separated, each in [0, 1].
    #[arg(long, default_value = "0,0.25,0.5,0.75,1")]
    depths: String,
    /// Samples per (length, depth) cell, at least 1.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    #[arg(long, value_enum, default_value_t = NiahTask::Passkey)]
    task: NiahTask,
    /// Needles for mk-niah, hops for multihop (at least 1) [default: 2].
    #[arg(long)]
    keys: Option<usize>,
    /// Needles for mq-niah, every one asked (at least 1) [default: 4].
    #[arg(long)]
    queries: Option<usize>,
    /// Assignments after the key's in vt's chains, RULER's count (at least 1) [default: 2].
    #[arg(long)]
    hops: Option<usize>,
    /// Chains in vt, the asked one and distractors (at least 1) [default: 2].
    #[arg(long)]
    chains: Option<usize>,
    /// A token corpus prefix, or `random` (ids from the training config's data.random)
    /// [default: the haystack the model trained on: data.random, else data.eval, else the
    /// sample corpus data/tokens/sample_val].
    #[arg(long)]
    haystack: Option<String>,
    /// tokenizer.json for s-niah's phrases [default: the NeoX tokenizer from set-up].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Samples of a cell prefilled side by side: on a GPU a small model leaves most of the
    /// chip idle at batch 1. Memory grows with it (the planner checks).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How a sample is scored: teacher-forced (every answer token the argmax after the true
    /// tokens) or generate (greedy generation after the question contains the answer's ids,
    /// RULER's containment).
    #[arg(long = "score", value_enum, default_value_t = Scoring::TeacherForced)]
    scoring: Scoring,
    /// With --score generate: tokens generated past the answer's length [default: 8].
    #[arg(long)]
    slack: Option<usize>,
    /// Output folder [default: runs/eval-niah].
    #[arg(long, default_value = "runs/eval-niah")]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct PplArgs {
    #[command(flatten)]
    common: Common,
    /// Token corpus prefix (.bin/.idx).
    #[arg(long)]
    corpus: PathBuf,
    /// Windows per length, at least 1.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Write the table as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Niah(a) => niah(a),
        Command::Ppl(a) => ppl_cmd(a),
        Command::Merge(a) => merge(a),
    }
}

fn merge(args: MergeArgs) -> Result<()> {
    let reports = args
        .results
        .iter()
        .map(|p| Ok((p.clone(), grid::Report::load(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let report = grid::Report::merge(reports)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    report.save(&args.out)?;
    let heat = args.out.join("heatmap.png");
    lcm::report::heatmap::draw(&report, &heat)?;
    print!("{}", report.table());
    println!(
        "results: {} and {}",
        args.out.join("results.json").display(),
        heat.display()
    );
    Ok(())
}

/// The data-parallel launch an evaluation runs in (`lcm launch`, torchrun): its group, which
/// carries the ranks' results to rank 0, and this rank's share of the samples. A worker on
/// a GPU machine evaluates on `cuda:LOCAL_RANK`.
struct Shared {
    group: Option<Group>,
    part: Part,
    device: Device,
}

/// How long rank 0 waits for the other ranks' results: their whole share of the grid.
const EVAL_GATHER_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

fn shared(common: &Common) -> Result<Shared> {
    let device = parse_device(common.engine.device.as_deref())?;
    let Some(launch) = Launch::from_env()? else {
        return Ok(Shared {
            group: None,
            part: Part::default(),
            device,
        });
    };
    let device = match device {
        Device::Cuda(_) => Device::Cuda(launch.local_rank as usize),
        d => d,
    };
    // Only the rendezvous store carries results: Gloo's group is the cheaper one to form.
    let backend = match lcm::dist::backends() {
        (true, _) => Backend::Gloo,
        _ => Backend::for_device(device),
    };
    let group = Group::join(&launch, backend, device, EVAL_GATHER_TIMEOUT)?;
    Ok(Shared {
        part: Part {
            rank: launch.rank,
            world: launch.world,
        },
        group: Some(group),
        device,
    })
}

fn load(common: &Common, batch: i64, device: Device) -> Result<(Engine, Vec<i64>, PrefillOptions)> {
    let placement = parse_offload(common.engine.offload.as_deref())?;
    let lengths = parse_lengths(&common.lengths)?;
    let engine = Engine::load(&common.checkpoint, device)
        .with_context(|| format!("loading {}", common.checkpoint.display()))?;
    let prefill = PrefillOptions {
        segment: common.engine.segment,
        placement,
    };
    engine.check_lengths(&lengths)?;
    let longest = *lengths.iter().max().expect("at least one length");
    plan::check_engine(&engine, longest, batch, &prefill)?;
    Ok((engine, lengths, prefill))
}

fn haystack_for(args: &NiahArgs, engine: &Engine) -> Result<Haystack> {
    let train = engine.train.as_ref();
    let random = || {
        train
            .and_then(|t| t.data.random.as_ref())
            .map(|r| Haystack::Random { lo: r.lo, hi: r.hi })
    };
    let corpus = |p: PathBuf| -> Result<Haystack> {
        let corpus =
            IndexedCorpus::open(&p).with_context(|| format!("haystack {}", p.display()))?;
        check_vocab(&p, &corpus, engine.config().vocab_size).context("--haystack")?;
        Ok(Haystack::Corpus { prefix: p, corpus })
    };
    match args.haystack.as_deref() {
        Some("random") => random().context(
            "--haystack random: the checkpoint's training config has no data.random range",
        ),
        Some(p) => corpus(PathBuf::from(p)),
        None => match (random(), train.and_then(|t| t.data.eval.clone())) {
            (Some(r), _) => Ok(r),
            (None, Some(p)) => corpus(p),
            (None, None) => corpus(PathBuf::from("data/tokens/sample_val")),
        },
    }
}

/// The task's counts from the flags: each at least 1 and given only to a task that reads it.
fn task_args(args: &NiahArgs) -> Result<TaskArgs> {
    let mut out = TaskArgs::default();
    let task = args.task;
    for (flag, value, slot, tasks) in [
        (
            "--keys",
            args.keys,
            &mut out.keys,
            &[NiahTask::MkNiah, NiahTask::Multihop][..],
        ),
        (
            "--queries",
            args.queries,
            &mut out.queries,
            &[NiahTask::MqNiah],
        ),
        ("--hops", args.hops, &mut out.hops, &[NiahTask::Vt]),
        ("--chains", args.chains, &mut out.chains, &[NiahTask::Vt]),
    ] {
        let Some(v) = value else { continue };
        let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
        if !tasks.contains(&task) {
            bail!(
                "{flag} is for --task {}, not {}",
                names.join(" and "),
                task.name()
            );
        }
        if v == 0 {
            bail!("{flag} 0: {} needs at least 1", task.name());
        }
        *slot = v;
    }
    Ok(out)
}

fn niah(args: NiahArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch 0: at least one sample at a time");
    }
    if args.samples == 0 {
        bail!("--samples 0: a cell's accuracy needs at least one sample");
    }
    let task_args = task_args(&args)?;
    let slack = match (args.scoring, args.slack) {
        (Scoring::Generate, slack) => slack.unwrap_or(DEFAULT_SLACK),
        (scoring, Some(_)) => bail!(
            "--slack is for --score generate, not {} (teacher-forced scoring generates nothing)",
            scoring.name()
        ),
        (_, None) => 0,
    };
    if args.scoring == Scoring::Generate && args.batch != 1 {
        bail!(
            "--batch {} with --score generate: each sample generates alone; use --batch 1",
            args.batch
        );
    }
    let shared = shared(&args.common)?;
    let (engine, lengths, prefill) = load(&args.common, args.batch as i64, shared.device)?;
    let depths = parse_depths(&args.depths)?;
    let trained = engine
        .train
        .as_ref()
        .and_then(|t| t.data.synthetic.as_ref());
    let spec = TaskSpec::new(
        args.task,
        trained,
        task_args,
        engine.config().vocab_size,
        args.tokenizer.as_deref(),
    )?;
    let haystack = haystack_for(&args, &engine)?;
    let (ckpt, step) = engine.checkpoint.clone().expect("loaded from a checkpoint");
    let scoring = match args.scoring {
        Scoring::TeacherForced => Scoring::TeacherForced.describe().to_string(),
        Scoring::Generate => format!("{} (slack {slack})", Scoring::Generate.describe()),
    };
    eprintln!(
        "{} on {} (step {step}), {}{}, haystack: {}, {} sample(s) per cell, scored: {scoring}",
        task_label(spec.task.name(), &spec.args()),
        ckpt.display(),
        lcm::util::device_name(engine.device),
        if prefill.placement == Placement::Host {
            ", chunk memory offloaded to the host"
        } else {
            ""
        },
        haystack.describe(),
        args.samples
    );
    let opts = GridOptions {
        lengths,
        depths,
        samples: args.samples,
        batch: args.batch,
        seed: args.common.seed,
        prefill,
        out: args.out.clone(),
        progress: !args.common.quiet && shared.part.rank == 0,
        part: shared.part,
        scoring: args.scoring,
        slack,
    };
    let mut report = grid::run(&engine, &spec, &haystack, &opts)?;
    if let Some(group) = &shared.group {
        let Some(parts) = group.gather_to_root("niah", report.samples.clone())? else {
            return Ok(());
        };
        report.samples.clear();
        report.absorb(parts.into_iter().flatten().collect());
        report.save(&args.out)?;
        eprintln!(
            "{} ranks: the grid's samples merged on rank 0",
            group.world()
        );
    }
    print!("{}", report.table());
    let tps: Vec<String> = report
        .lengths
        .iter()
        .filter_map(|&l| {
            let rs: Vec<_> = report.samples.iter().filter(|s| s.length == l).collect();
            (!rs.is_empty()).then(|| {
                let secs: f64 = rs.iter().map(|s| s.prefill_seconds).sum::<f64>() / rs.len() as f64;
                format!(
                    "{}: {:.2} s ({:.0} tok/s)",
                    format_length(l),
                    secs,
                    rs[0].used_length as f64 / secs.max(1e-9)
                )
            })
        })
        .collect();
    println!("prefill per sample: {}", tps.join(", "));
    let heat = args.out.join("heatmap.png");
    if let Err(e) = lcm::report::heatmap::draw(&report, &heat) {
        eprintln!("warning: no heatmap: {e}");
    }
    println!(
        "results: {} and {}",
        args.out.join("results.json").display(),
        heat.display()
    );
    Ok(())
}

fn ppl_cmd(args: PplArgs) -> Result<()> {
    if args.samples == 0 {
        bail!("--samples 0: a loss needs at least one window per length");
    }
    let shared = shared(&args.common)?;
    let (engine, lengths, prefill) = load(&args.common, 1, shared.device)?;
    let corpus = IndexedCorpus::open(&args.corpus)
        .with_context(|| format!("corpus {}", args.corpus.display()))?;
    check_vocab(&args.corpus, &corpus, engine.config().vocab_size).context("--corpus")?;
    let total: u64 = lengths
        .iter()
        .map(|&l| (engine.usable_length(l) as u64) * args.samples as u64)
        .sum();
    let bar = (!args.common.quiet && shared.part.rank == 0).then(|| lcm::progress::tokens(total));
    let rows = ppl::run(
        &engine,
        &corpus,
        &args.corpus.display().to_string(),
        &lengths,
        args.samples,
        args.common.seed,
        &prefill,
        bar.as_ref(),
        shared.part,
    )?;
    let rows = match &shared.group {
        None => rows,
        Some(group) => match group.gather_to_root("ppl", rows)? {
            None => return Ok(()),
            Some(parts) => (0..lengths.len())
                .filter_map(|i| {
                    let same: Vec<ppl::PplRow> = parts.iter().map(|p| p[i].clone()).collect();
                    ppl::PplRow::combine(&same)
                })
                .collect(),
        },
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "{:>8} {:>10} {:>12} {:>11} {:>10}",
        "length", "tokens", "log-loss", "perplexity", "tok/s"
    );
    for r in &rows {
        println!(
            "{:>8} {:>10} {:>12.4} {:>11.2} {:>10.0}",
            format_length(r.length),
            r.tokens,
            r.log_loss,
            r.perplexity,
            r.tokens_per_second
        );
    }
    println!("log-loss: mean next-token cross-entropy in nats/token; perplexity = exp(log-loss)");
    if let Some(p) = &args.json {
        let json = serde_json::to_vec_pretty(&rows)?;
        lcm::util::write_atomic(p, &json)?;
    }
    Ok(())
}
