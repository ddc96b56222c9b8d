use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lcm::dist::{Backend, Group, Launch};
use lcm::train::{checkpoint, train, TrainConfig, TrainOptions};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  lcm pretrain --config configs/drt-tiny.json
  lcm pretrain --config configs/drt-tiny.json --set steps=50 --set optim.lr=3e-3
  lcm pretrain --config configs/drt-tiny.json --print-config
  lcm pretrain --config configs/drt-tiny.json --resume runs/drt-tiny
  lcm pretrain --config configs/drt-tiny.json --force        # start over in runs/drt-tiny
  lcm pretrain --config configs/drt-niah.json --init models/drt-niah --set steps=1000
  lcm launch --nproc-per-node 8 -- pretrain --config configs/drt-128m.json   # 8 GPUs

Ctrl-C or SIGTERM saves a checkpoint after the current step and exits with status 130 or
143; --resume continues exactly where it stopped. A second signal quits at once.
Under `lcm launch` or torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) the run
is data-parallel: see docs/training.md.")]
pub struct Args {
    /// Training config (JSON): model, data, optim, steps, batch_size, seq_len, ...
    #[arg(long)]
    config: PathBuf,
    /// Override a config value by its dotted key (repeatable); the value is JSON or a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Resume from a checkpoint folder (step-*) or the newest checkpoint of a run folder.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start from the weights of a checkpoint or an exported model (step 0, fresh optimizer).
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Start at step 0 even though checkpoint.dir holds an earlier run: its checkpoints and
    /// metrics.jsonl are deleted first.
    #[arg(long)]
    force: bool,
    /// Print the resolved config (defaults filled in) and exit.
    #[arg(long)]
    print_config: bool,
    /// Stop after this step, saving a checkpoint (to split a long run into sessions).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stop_after: Option<u64>,
}

/// Returns the exit status: 0 when the run ended, 128 + signal when a signal stopped it.
pub fn run(args: Args) -> Result<i32> {
    let cfg = TrainConfig::load(&args.config, &args.overrides)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(0);
    }
    let stop = lcm::signals::install("saving a checkpoint after this step")?;
    let launch = Launch::from_env()?;
    let (group, device) = match &launch {
        None => (None, None),
        Some(l) => {
            let device = match cfg.device()? {
                tch::Device::Cuda(_) => tch::Device::Cuda(l.local_rank as usize),
                d => d,
            };
            let timeout = Duration::from_secs_f64(cfg.dist.timeout_s);
            let group = Group::join(l, Backend::for_device(device), device, timeout)?;
            (Some(Arc::new(group)), Some(device))
        }
    };
    let rank0 = launch.as_ref().is_none_or(|l| l.rank == 0);
    let opts = TrainOptions {
        resume: args.resume,
        init: args.init,
        force: args.force,
        group,
        device,
        progress: true,
        stop_after: args.stop_after,
        interrupt: Some(stop.flag.clone()),
    };
    let summary =
        train(&cfg, &opts).with_context(|| format!("training {}", args.config.display()))?;
    let code = match (summary.interrupted, stop.exit_code()) {
        (true, Some(code)) => code,
        (true, None) => 130, // another rank's signal stopped the run
        _ => 0,
    };
    if !rank0 || summary.steps_run == 0 {
        return Ok(code);
    }
    match &summary.checkpoint {
        Some(p) => eprintln!(
            "step {}: loss {:.4}; checkpoint {}",
            summary.step,
            summary.last_loss,
            p.display()
        ),
        None => eprintln!("step {}: loss {:.4}", summary.step, summary.last_loss),
    }
    if let Ok(all) = checkpoint::list(&cfg.checkpoint.dir) {
        eprintln!(
            "{} checkpoint(s) kept in {}",
            all.len(),
            cfg.checkpoint.dir.display()
        );
    }
    if code != 0 {
        eprintln!("stopped by signal: exiting with status {code}");
    }
    Ok(code)
}
