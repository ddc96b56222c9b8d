//! The `lcm` command line: parses arguments and calls into the library; no logic of its own.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lcm",
    version,
    about = "Pretrain and evaluate long-context LMs with retrieval attention (GCA/DRT, HSA)",
    after_help = "Examples:\n  lcm info\n  lcm bench rmsnorm --device cuda --dtype bf16\n  lcm preprocess pile --input data/sample-pile/train --output data/tokens/sample_train\n  lcm corpus stats data/tokens/sample_train\n  lcm pretrain --config configs/drt-tiny.json\n  lcm plot runs/drt-tiny/metrics.jsonl\n  lcm eval niah --checkpoint runs/drt-tiny --len 1K,4K --samples 2\n  lcm generate --checkpoint runs/drt-tiny --prompt-file prompt.txt --max-new-tokens 100\n  lcm export runs/drt-tiny --out models/drt-tiny\n  lcm export runs/drt-128m --out /tmp/drt-ref --names reference --dtype f32"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Versions, devices, compiled CUDA kernels and the tokenizer's location.
    Info(cli::info::Args),
    /// Benchmarks of the ops: CUDA kernels against their pure-tch references.
    #[command(subcommand)]
    Bench(cli::bench::Command),
    /// Raw text to token corpora: `lcm preprocess pile` (Megatron/GPT-NeoX .bin/.idx).
    #[command(subcommand)]
    Preprocess(cli::preprocess::Command),
    /// Inspect a token corpus: `stats`, `cat --doc N`.
    #[command(subcommand)]
    Corpus(cli::corpus::Command),
    /// Train a model (drt, swa_hsa, ramba, swa, dense) from a JSON config.
    Pretrain(cli::pretrain::Args),
    /// Evaluate a checkpoint at long context: `niah` (needle in a haystack), `ppl`.
    #[command(subcommand)]
    Eval(cli::eval::Command),
    /// Continue a prompt of any length, streaming the tokens (greedy or sampled).
    Generate(cli::generate::Args),
    /// Weights of a checkpoint as bf16 safetensors shards with their index, to publish a model
    /// (`--names reference`: a DRT under the reference implementation's names).
    Export(cli::export::Args),
    /// A DRT under the reference implementation's names (config.json, safetensors) as an lcm
    /// checkpoint.
    Import(cli::import::Args),
    /// Start the data-parallel workers of one node: `lcm launch --nproc-per-node 8 -- pretrain ...`.
    Launch(cli::launch::Args),
    /// Draw the loss curve of a training run's metrics.jsonl as a PNG.
    Plot(cli::plot::Args),
    /// The lcm side of the fidelity harness against the reference implementation
    /// (docs/fidelity.md): `init` a model, `grads` of one forward and backward.
    #[command(subcommand, hide = true)]
    Debug(cli::debug::Command),
}

fn main() {
    let cli = Cli::parse();
    // A worker of a data-parallel launch names its rank in errors, and ends through `_exit`:
    // exit handlers must not tear down a process group that peers still talk to.
    let rank = std::env::var("WORLD_SIZE")
        .ok()
        .and(std::env::var("RANK").ok());
    let result = match cli.command {
        Command::Info(args) => cli::info::run(args).map(|()| 0),
        Command::Bench(cmd) => cli::bench::run(cmd).map(|()| 0),
        Command::Preprocess(cmd) => cli::preprocess::run(cmd).map(|()| 0),
        Command::Corpus(cmd) => cli::corpus::run(cmd).map(|()| 0),
        Command::Pretrain(args) => cli::pretrain::run(args),
        Command::Plot(args) => cli::plot::run(args).map(|()| 0),
        Command::Eval(cmd) => cli::eval::run(cmd).map(|()| 0),
        Command::Generate(args) => cli::generate::run(args).map(|()| 0),
        Command::Export(args) => cli::export::run(args).map(|()| 0),
        Command::Import(args) => cli::import::run(args).map(|()| 0),
        Command::Launch(args) => cli::launch::run(args),
        Command::Debug(cmd) => cli::debug::run(cmd).map(|()| 0),
    };
    let code = result.unwrap_or_else(|e| {
        match &rank {
            Some(r) => eprintln!("error (rank {r}): {e:#}"),
            None => eprintln!("error: {e:#}"),
        }
        1
    });
    if rank.is_some() {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        signal_hook::low_level::exit(code);
    }
    std::process::exit(code);
}
