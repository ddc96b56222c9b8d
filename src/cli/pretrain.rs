use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use lcm::train::{checkpoint, train, TrainConfig, TrainOptions};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  lcm pretrain --config configs/drt-tiny.json
  lcm pretrain --config configs/drt-tiny.json --set steps=50 --set optim.lr=3e-3
  lcm pretrain --config configs/drt-tiny.json --print-config
  lcm pretrain --config configs/drt-tiny.json --resume runs/drt-tiny
  lcm pretrain --config configs/drt-niah.json --init models/drt-niah --set steps=1000

Ctrl-C saves a checkpoint and exits; --resume continues exactly where it stopped.")]
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
    /// Print the resolved config (defaults filled in) and exit.
    #[arg(long)]
    print_config: bool,
    /// Stop after this step, saving a checkpoint (to split a long run into sessions).
    #[arg(long)]
    stop_after: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = TrainConfig::load(&args.config, &args.overrides)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    let opts = TrainOptions {
        resume: args.resume,
        init: args.init,
        progress: true,
        stop_after: args.stop_after,
        interrupt: Some(interrupt),
        ..Default::default()
    };
    let summary =
        train(&cfg, &opts).with_context(|| format!("training {}", args.config.display()))?;
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
    Ok(())
}
