use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lcm::data::inputs::{expand_inputs, BatchLimits};
use lcm::data::preprocess::{self, Format, Options, Progress};
use lcm::data::Tokenizer;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The Pile (jsonl, jsonl.zst, parquet shards) to a Megatron/GPT-NeoX token corpus.
    #[command(after_help = "\
Examples:
  lcm preprocess pile --input data/sample-pile/train --output data/tokens/pile_train
  lcm preprocess pile --input 'pile/train/*.jsonl.zst' --output /data/pile_text_document --resume
  lcm preprocess pile --input dedup/ --output data/tokens/dedup --format raw --workers 16
  lcm preprocess pile --input val.jsonl.zst --output data/tokens/val --skip-bad-lines --force

Writes PREFIX.bin + PREFIX.idx (or PREFIX.data with --format raw) and PREFIX.json (inputs,
tokenizer hash, counts per pile_set_name, skipped records). Byte for byte what GPT-NeoX's
tools/datasets/preprocess_data.py --append-eod writes for the same documents and tokenizer.
Inspect the result with `lcm corpus stats PREFIX` and `lcm corpus cat PREFIX --doc 0`.")]
    Pile(PileArgs),
}

#[derive(clap::Args)]
pub struct PileArgs {
    /// Input files, directories (searched recursively) or glob patterns of .jsonl,
    /// .jsonl.zst and .parquet (with a `text` column); taken in the order given, each
    /// directory or pattern sorted by path.
    #[arg(long, short, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Output prefix: PREFIX.bin, PREFIX.idx, PREFIX.json.
    #[arg(long, short)]
    output: PathBuf,
    /// A HF tokenizer.json [default: the GPT-NeoX-20B tokenizer from scripts/setup.sh,
    /// or $LCM_TOKENIZER].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The end-of-document token appended to every document.
    #[arg(long, default_value = "<|endoftext|>")]
    eod_token: String,
    /// Tokenising threads [default: the number of cores].
    #[arg(long, short)]
    workers: Option<usize>,
    /// indexed: Megatron/GPT-NeoX .bin/.idx; raw: the reference system's flat uint16 file.
    #[arg(long, value_enum, default_value_t = FormatArg::Indexed)]
    format: FormatArg,
    /// Keep the shards an interrupted run finished and go on from there.
    #[arg(long)]
    resume: bool,
    /// Replace an existing corpus at PREFIX.
    #[arg(long)]
    force: bool,
    /// Skip and count records that are not usable documents (bad JSON, no string `text`,
    /// invalid UTF-8, null parquet values) and empty files, instead of stopping.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Longest accepted line, in MB (guards memory against a file without newlines).
    #[arg(long, default_value_t = 1024)]
    max_line_mb: usize,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, default_value_t = 10.0)]
    progress_secs: f64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Indexed,
    Raw,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Pile(a) => pile(a),
    }
}

fn pile(a: PileArgs) -> Result<()> {
    let t0 = Instant::now();
    let inputs = expand_inputs(&a.input).context("--input")?;
    let tok_path = a
        .tokenizer
        .clone()
        .unwrap_or_else(lcm::info::default_tokenizer_path);
    let tok = Tokenizer::load(&tok_path, &a.eod_token).context("--tokenizer")?;
    let workers = a
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = Options {
        inputs,
        output: a.output.clone(),
        format: match a.format {
            FormatArg::Indexed => Format::Indexed,
            FormatArg::Raw => Format::Raw,
        },
        workers,
        resume: a.resume,
        force: a.force,
        skip_bad_lines: a.skip_bad_lines,
        limits: BatchLimits {
            max_line_bytes: a.max_line_mb << 20,
            ..Default::default()
        },
    };
    eprintln!(
        "[preprocess] {} input files -> {} ({}), {workers} workers, tokenizer {}",
        opts.inputs.len(),
        a.output.display(),
        match opts.format {
            Format::Indexed => "indexed .bin/.idx",
            Format::Raw => "raw .data",
        },
        tok_path.display()
    );
    let mut reporter = Reporter::new(a.progress_secs);
    let summary = preprocess::run(&opts, &tok, &mut |p| reporter.update(p)).with_context(|| {
        let state = lcm::data::indexed::with_suffix(&a.output, ".resume.tmp");
        let kept = if state.exists() {
            format!(
                " (the shards finished so far are kept, {}: fix the input and rerun with \
                 --resume to go on from there; a run without --resume starts over)",
                state.display()
            )
        } else {
            String::new()
        };
        format!("preprocessing into {}{kept}", a.output.display())
    })?;
    if reporter.updates == 0 {
        println!(
            "{}: already complete (--resume), nothing to do: {} documents, {} tokens",
            a.output.display(),
            summary.counts.documents,
            summary.counts.tokens
        );
        return Ok(());
    }
    reporter.finish();
    let secs = t0.elapsed().as_secs_f64();
    let new_tokens = (reporter.last.tokens - reporter.first_tokens) as f64;
    println!(
        "{} documents, {} tokens ({}) from {} files in {secs:.2} s: {:.0} tokens/s end to end \
         ({:.0} tokens/s over the {:.2} s after the tokenizer was loaded)",
        summary.counts.documents,
        summary.counts.tokens,
        summary.dtype.name(),
        summary.inputs.len(),
        new_tokens / secs.max(1e-9),
        new_tokens / reporter.last.seconds.max(1e-9),
        reporter.last.seconds,
    );
    let s = &summary.skipped;
    println!(
        "skipped: {} empty documents, {} bad lines, {} blank lines, {} empty files",
        s.empty_documents, s.bad_lines, s.blank_lines, s.empty_files
    );
    for e in summary.bad_line_examples.iter().take(5) {
        println!("  {e}");
    }
    for f in &summary.files {
        println!("wrote {}", f.display());
    }
    println!(
        "wrote {}",
        lcm::data::indexed::with_suffix(&a.output, ".json").display()
    );
    Ok(())
}

/// An indicatif bar on a terminal, plain periodic lines otherwise.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    every: Duration,
    next: Instant,
    last: Progress,
    updates: usize,
    /// Tokens already written by the run being resumed (not counted in the rate).
    first_tokens: u64,
}

impl Reporter {
    fn new(every_secs: f64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} (eta {eta}) {msg}",
                )
                .unwrap(),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Reporter {
            bar,
            every: Duration::from_secs_f64(every_secs.max(0.1)),
            next: Instant::now() + Duration::from_secs_f64(every_secs.max(0.1)),
            last: Progress::default(),
            updates: 0,
            first_tokens: 0,
        }
    }

    fn rates(&self, p: &Progress) -> String {
        let s = p.seconds.max(1e-9);
        format!(
            "{:.1} MB/s text, {:.2}M tokens/s, {} docs, shard {}/{}",
            p.input_bytes as f64 / s / 1e6,
            (p.tokens - self.first_tokens) as f64 / s / 1e6,
            p.documents,
            p.shards_done,
            p.shards_total
        )
    }

    fn update(&mut self, p: &Progress) {
        if self.updates == 0 {
            self.first_tokens = p.tokens;
        }
        self.updates += 1;
        self.last = p.clone();
        match &self.bar {
            Some(b) => {
                b.set_length(p.file_bytes_total);
                b.set_position(p.file_bytes_read.min(p.file_bytes_total));
                b.set_message(self.rates(p));
            }
            None => {
                if Instant::now() >= self.next {
                    self.next = Instant::now() + self.every;
                    eprintln!(
                        "[preprocess] {:5.1}% of {:.1} MB read, {}",
                        100.0 * p.file_bytes_read as f64 / p.file_bytes_total.max(1) as f64,
                        p.file_bytes_total as f64 / 1e6,
                        self.rates(p)
                    );
                }
            }
        }
    }

    fn finish(&self) {
        match &self.bar {
            Some(b) => b.finish_with_message(self.rates(&self.last)),
            None => eprintln!("[preprocess] done: {}", self.rates(&self.last)),
        }
    }
}
