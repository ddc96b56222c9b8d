use anyhow::{bail, Result};
use lcm::bench::fused::{FusedBench, FusedResult, FusedSize};
use lcm::bench::rmsnorm::RmsNormBench;
use lcm::bench::xent::XentBench;
use tch::Device;

use super::{parse_device, parse_kind, parse_offload};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Fused RMSNorm kernel against the pure-tch reference (forward, backward).
    #[command(
        after_help = "Example:\n  lcm bench rmsnorm --device cuda --rows 262144 --dim 768 --dtype bf16"
    )]
    Rmsnorm(RmsNormArgs),
    /// Fused cross-entropy kernels (the training loss) against the pure-tch reference, the
    /// fp32 log_softmax path: forward, backward, and both through autograd.
    #[command(
        after_help = "Example:\n  lcm bench xent --device cuda --rows 16384 --vocab 50304 --dtype bf16"
    )]
    Xent(XentArgs),
    /// Attention kernels (GCA, SWA, HSA, retrieval) at their issue shapes: time, TFLOP/s,
    /// GB/s, fractions of the matrix rate, copy bandwidth and roofline, and the ratio
    /// against the pure-tch reference and libtorch SDPA dense attention.
    ///
    /// Each time is the median of CUDA-event timings of single calls, each after a 256 MB
    /// L2 flush as in Triton's do_bench (`--flush`). To compare builds, time each entry in a
    /// process of its own (`--only`): after the GCA entries, the SWA rows of the same
    /// process come out slower. `--path` times another kernel path of SWA and GCA than the
    /// one dispatch picks.
    #[command(after_help = "Examples:
  lcm bench kernels --list
  lcm bench kernels --only swa-w512 --runs 50 --no-reference
  lcm bench kernels --only gca-d64-gather --runs 50 --no-reference --json gca.jsonl
  lcm bench kernels --only swa-w512 --runs 50 --no-reference --path wgmma")]
    Kernels(KernelsArgs),
    /// The tokenizer alone on all cores (in-memory texts, no I/O): `tokenizers`' own
    /// encode_fast, then lcm's encoder (its exact ASCII fast path), which is the ceiling
    /// for `lcm preprocess pile` on the same input.
    #[command(
        after_help = "Example:\n  lcm bench tokenizer --input data/sample-pile/train/00.jsonl.zst --repeats 3"
    )]
    Tokenizer(TokenizerArgs),
    /// Segmented prefill (the engine of `lcm eval`): tokens/s and peak memory of a model
    /// with random weights at long lengths, chunk memory on the GPU or offloaded.
    #[command(after_help = "Examples:
  lcm bench prefill --model configs/models/drt-128m.json --len 64K,1M,16M
  lcm bench prefill --model configs/models/drt-128m.json --len 1M --offload cpu
  lcm bench prefill --model configs/models/drt-tiny.json --len 4K --device cpu")]
    Prefill(PrefillArgs),
    /// All-reduce bandwidth of the data-parallel process group at gradient-bucket sizes
    /// (NCCL on CUDA, Gloo on CPU): algorithm and bus bandwidth as nccl-tests reports them.
    /// Run it under the launch a training run uses; alone it is one rank.
    #[command(after_help = "Examples:
  lcm bench allreduce --device cuda                       # one GPU: the collective's fixed cost
  lcm launch --nproc-per-node 8 -- bench allreduce --device cuda
  lcm launch --nproc-per-node 2 -- bench allreduce --device cpu --sizes 1M,25M")]
    Allreduce(AllreduceArgs),
}

#[derive(clap::Args)]
pub struct AllreduceArgs {
    /// cuda or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Buffer sizes in bytes with K/M suffixes (x1024, x1024^2), comma-separated.
    #[arg(long, default_value = "1M,4M,25M,100M,256M")]
    sizes: String,
    /// f32 or bf16 (gradients are all-reduced in the model's dtype).
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Also write the rows as JSON lines here (rank 0).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
pub struct PrefillArgs {
    /// Model config (JSON, the `model` section of a training config).
    #[arg(long)]
    model: std::path::PathBuf,
    /// Lengths with K/M suffixes, comma-separated.
    #[arg(long = "len", default_value = "64K,1M")]
    lengths: String,
    /// cuda or cpu.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Keep the chunk memory in host memory.
    #[arg(long, value_name = "cpu")]
    offload: Option<String>,
    /// Tokens per segment.
    #[arg(long, default_value_t = 16384)]
    segment: i64,
    /// Skip the memory planner's check.
    #[arg(long)]
    no_check: bool,
    /// Also time each phase of the forward (synchronising around each: a little slower).
    #[arg(long)]
    profile: bool,
    /// Append the results as JSON lines to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
pub struct TokenizerArgs {
    /// Input shards (.jsonl, .jsonl.zst, .parquet, directories, globs), read into memory first.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// tokenizer.json [default: the GPT-NeoX-20B tokenizer from scripts/setup.sh].
    #[arg(long)]
    tokenizer: Option<std::path::PathBuf>,
    /// Threads [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Timed passes over the texts; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the results as JSON lines to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
pub struct KernelsArgs {
    /// cuda or cpu (on cpu no kernel runs; only the reference is timed).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Run only these entries (repeat); `--list` names them. Default: all.
    #[arg(long)]
    only: Vec<String>,
    /// List the entries and exit.
    #[arg(long)]
    list: bool,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Untimed warm-up runs before each measurement.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Skip the pure-tch reference (slow, and tens of GB at the issue shapes).
    #[arg(long)]
    no_reference: bool,
    /// Dense bf16 matrix rate used as the ceiling, TFLOP/s (H200 measured: 799).
    #[arg(long, default_value_t = 799.0)]
    peak_tflops: f64,
    /// Device memory bandwidth used as the ceiling, GB/s (H200 copy: about 4250).
    #[arg(long, default_value_t = 4250.0)]
    peak_gbps: f64,
    /// Write the rows as JSON lines to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The SWA and GCA kernels' path: mma, wgmma, tma or tma-qs (Hopper only but mma)
    /// [default: the one dispatch picks for the device and head dim].
    #[arg(long)]
    path: Option<String>,
    /// L2 flushes (256 MB zeroings) before each timed call; 0: none.
    #[arg(long, default_value_t = 1)]
    flush: usize,
    /// Print the host's time in each timed call (what the flush must cover).
    #[arg(long)]
    host_time: bool,
}

#[derive(clap::Args)]
pub struct RmsNormArgs {
    /// cuda or cpu (the kernel needs cuda; on cpu only the reference runs).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Rows (tokens) of the input.
    #[arg(long, default_value_t = 262_144)]
    rows: i64,
    /// Row length (model width); repeat to measure several.
    #[arg(long, default_values_t = [768, 1024, 4096])]
    dim: Vec<i64>,
    /// bf16 or f32; repeat to measure both.
    #[arg(long, default_values_t = ["bf16".to_string(), "f32".to_string()])]
    dtype: Vec<String>,
    /// Device memory bandwidth used as the ceiling, in GB/s (H200 copy: about 4250).
    #[arg(long, default_value_t = 4250.0)]
    peak_gbps: f64,
    /// Write the results as JSON lines to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
pub struct XentArgs {
    /// cuda or cpu (the kernels need cuda; on cpu only the reference runs).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Rows (scored tokens) of the logits.
    #[arg(long, default_value_t = 16_384)]
    rows: i64,
    /// Vocabulary size (row length); repeat to measure several.
    #[arg(long, default_values_t = [50_304])]
    vocab: Vec<i64>,
    /// bf16 or f32; repeat to measure both.
    #[arg(long, default_values_t = ["bf16".to_string()])]
    dtype: Vec<String>,
    /// Device memory bandwidth used as the ceiling, in GB/s (H200 specification: 4800).
    #[arg(long, default_value_t = 4800.0)]
    peak_gbps: f64,
    /// Write the results as JSON lines to this file too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Prefill(a) => prefill(a),
        Command::Allreduce(a) => allreduce(a),
        Command::Tokenizer(a) => {
            use anyhow::Context;
            let paths = lcm::data::inputs::expand_inputs(&a.input).context("--input")?;
            let tok_path = a
                .tokenizer
                .unwrap_or_else(lcm::info::default_tokenizer_path);
            let tok = lcm::data::Tokenizer::load(&tok_path, "<|endoftext|>")?;
            let texts = lcm::bench::tokenizer::load_texts(&paths)?;
            let threads = a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            use lcm::bench::tokenizer::{run, Encoder};
            let mut lines = String::new();
            for enc in [Encoder::Tokenizers, Encoder::Lcm] {
                let r = run(&tok, &texts, enc, threads, a.repeats)?;
                println!("{r}");
                lines += &(serde_json::to_string(&r)? + "\n");
            }
            if let Some(path) = a.json {
                lcm::util::write_atomic(&path, lines.as_bytes())?;
            }
            Ok(())
        }
        Command::Kernels(a) => {
            use lcm::bench::kernels::{entries, header, KernelsBench};
            let all = entries();
            if a.list {
                for e in &all {
                    println!("{:<12} {}", e.name, e.about);
                }
                return Ok(());
            }
            for name in &a.only {
                if !all.iter().any(|e| e.name == name) {
                    bail!("--only {name}: no such entry (see --list)");
                }
            }
            let path = match a.path.as_deref() {
                None => None,
                Some(p) => Some(lcm::ops::path::AttnPath::parse(p).ok_or_else(|| {
                    anyhow::anyhow!("--path {p}: not one of mma, wgmma, tma, tma-qs")
                })?),
            };
            let bench = KernelsBench {
                device: parse_device(Some(&a.device))?,
                peak_tflops: a.peak_tflops,
                peak_gbps: a.peak_gbps,
                warmup: a.warmup,
                runs: a.runs.max(1),
                no_reference: a.no_reference,
                path,
                timing: lcm::bench::EventTiming {
                    flush: a.flush,
                    host_time: a.host_time,
                },
            };
            let mut lines = vec![];
            println!("{}", header());
            for e in all
                .iter()
                .filter(|e| a.only.is_empty() || a.only.iter().any(|n| n == e.name))
            {
                if bench.device.is_cuda() {
                    lcm::cuda::empty_cache();
                }
                for r in (e.run)(&bench)? {
                    println!("{r}");
                    lines.push(serde_json::to_string(&r)?);
                }
            }
            write_json_lines(a.json.as_deref(), &lines)
        }
        Command::Xent(a) => {
            if a.rows < 1 {
                bail!("--rows {}: must be at least 1", a.rows);
            }
            if let Some(v) = a.vocab.iter().find(|&&v| v < 1) {
                bail!("--vocab {v}: must be at least 1");
            }
            fused_sweep(
                &a.device,
                a.rows,
                &a.dtype,
                &a.vocab,
                a.peak_gbps,
                a.json.as_deref(),
                XentBench::run,
            )
        }
        Command::Rmsnorm(a) => fused_sweep(
            &a.device,
            a.rows,
            &a.dtype,
            &a.dim,
            a.peak_gbps,
            a.json.as_deref(),
            RmsNormBench::run,
        ),
    }
}

/// `lcm bench rmsnorm` and `lcm bench xent`: the table's header, then `run` at every dtype
/// of `dtypes` and size of `sizes`, each row printed as it comes and written to `json` too.
fn fused_sweep<S: FusedSize>(
    device: &str,
    rows: i64,
    dtypes: &[String],
    sizes: &[i64],
    peak_gbps: f64,
    json: Option<&std::path::Path>,
    run: fn(&FusedBench<S>) -> lcm::Result<FusedResult<S>>,
) -> Result<()> {
    let device = parse_device(Some(device))?;
    println!("{}", S::TABLE.header());
    let lines = sweep(dtypes, sizes, |kind, size| {
        let size = S::new(size);
        run(&FusedBench {
            device,
            rows,
            size,
            kind,
            peak_gbps,
        })
    })?;
    write_json_lines(json, &lines)
}

/// Runs `bench` for every dtype of `dtypes` and size of `sizes` (dtypes outermost), printing
/// each row as it comes; returns the rows as JSON lines.
fn sweep<R: std::fmt::Display + serde::Serialize>(
    dtypes: &[String],
    sizes: &[i64],
    bench: impl Fn(tch::Kind, i64) -> lcm::Result<R>,
) -> Result<Vec<String>> {
    let mut lines = vec![];
    for dtype in dtypes {
        let kind = parse_kind(dtype)?;
        for &size in sizes {
            let r = bench(kind, size)?;
            println!("{r}");
            lines.push(serde_json::to_string(&r)?);
        }
    }
    Ok(lines)
}

/// The rows of a bench as JSON lines, when `--json` names a file (written whole or not at all).
fn write_json_lines(path: Option<&std::path::Path>, lines: &[String]) -> Result<()> {
    if let Some(path) = path {
        lcm::util::write_atomic(path, (lines.join("\n") + "\n").as_bytes())?;
    }
    Ok(())
}

fn allreduce(a: AllreduceArgs) -> Result<()> {
    use lcm::dist::{Backend, Group, Launch};
    let device = match (parse_device(Some(&a.device))?, Launch::from_env()?) {
        (Device::Cuda(_), Some(l)) => Device::Cuda(l.local_rank as usize),
        (d, _) => d,
    };
    let kind = parse_kind(&a.dtype)?;
    let sizes: Vec<i64> = lcm::eval::lengths::parse_lengths(&a.sizes)?;
    // Alone, a group of one on a free local port; under a launch, the launch's group.
    let launch = match Launch::from_env()? {
        Some(l) => l,
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            Launch {
                rank: 0,
                world: 1,
                local_rank: 0,
                local_world: 1,
                master_addr: "127.0.0.1".into(),
                master_port: port,
            }
        }
    };
    let timeout = std::time::Duration::from_secs(600);
    let group = Group::join(&launch, Backend::for_device(device), device, timeout)?;
    let rows = lcm::bench::allreduce::run(&group, device, &sizes, kind, a.warmup, a.iters)?;
    if group.rank() != 0 {
        return Ok(());
    }
    println!(
        "{:>10} {:>6} {:>6} {:>8} {:>11} {:>10} {:>10}",
        "bytes", "dtype", "ranks", "backend", "time_us", "algbw_GB/s", "busbw_GB/s"
    );
    let mut lines = String::new();
    for r in &rows {
        println!(
            "{:>10} {:>6} {:>6} {:>8} {:>11.1} {:>10.1} {:>10.1}",
            r.bytes,
            r.dtype,
            r.ranks,
            r.backend,
            r.seconds * 1e6,
            r.algorithm_gbps,
            r.bus_gbps
        );
        lines += &serde_json::to_string(r)?;
        lines.push('\n');
    }
    if let Some(p) = &a.json {
        lcm::util::write_atomic(p, lines.as_bytes())?;
    }
    Ok(())
}

fn prefill(a: PrefillArgs) -> Result<()> {
    use anyhow::Context;
    use lcm::eval::{lengths::parse_lengths, Engine, PrefillOptions};
    let device = parse_device(Some(&a.device))?;
    let text = std::fs::read_to_string(&a.model).with_context(|| a.model.display().to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| a.model.display().to_string())?;
    let cfg = lcm::model::ModelConfig::from_json(&value)
        .with_context(|| a.model.display().to_string())?;
    let name = a
        .model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    tch::manual_seed(0);
    let engine = Engine::random(&cfg, device)?;
    let opts = PrefillOptions {
        segment: a.segment,
        placement: parse_offload(a.offload.as_deref())?,
    };
    let lengths = parse_lengths(&a.lengths)?;
    println!(
        "{name}: {:.1}M parameters, {:?}, segment {} tokens",
        engine.params as f64 / 1e6,
        engine.kind,
        engine.segment_tokens(a.segment)
    );
    println!("{}", lcm::bench::prefill::header());
    let mut lines = String::new();
    for &l in &lengths {
        if !a.no_check {
            lcm::eval::plan::check_engine(&engine, l, 1, &opts)?;
        }
        let bar = lcm::progress::tokens(engine.usable_length(l) as u64);
        if a.profile {
            lcm::model::profile::enable(device);
        }
        let r = lcm::bench::prefill::run(&engine, &name, l, &opts, Some(&bar))?;
        bar.finish_and_clear();
        println!("{r}");
        let phases = lcm::model::profile::take();
        let total: f64 = phases.iter().map(|p| p.1).sum();
        for (phase, secs) in &phases {
            println!(
                "    {phase:<28} {secs:>8.3} s {:>5.1}%",
                100.0 * secs / total.max(1e-9)
            );
        }
        lines += &(serde_json::to_string(&r)? + "\n");
    }
    if let Some(path) = a.json {
        let mut all = std::fs::read_to_string(&path).unwrap_or_default();
        all += &lines;
        lcm::util::write_atomic(&path, all.as_bytes())?;
    }
    Ok(())
}
