use std::path::PathBuf;

use anyhow::Result;
use lcm::train::checkpoint;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  lcm export runs/drt-niah --out models/drt-niah
  lcm export runs/drt-niah/step-00003000 --out /tmp/m --dtype f32 --shard-mib 64

The folder holds model-0000i-of-0000N.safetensors and state.json (the training config):
`lcm eval niah --checkpoint models/drt-niah` loads it, `lcm pretrain --init` starts from it.")]
pub struct Args {
    /// A checkpoint (step-* folder) or a run folder (its newest checkpoint).
    checkpoint: PathBuf,
    /// The folder to write (replaced whole if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype: bf16 (half the size; what inference on a GPU uses) or f32.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    dtype: String,
    /// Largest shard in MiB (the device tool and git hosts limit file sizes).
    #[arg(long, default_value_t = 15)]
    shard_mib: usize,
}

pub fn run(args: Args) -> Result<()> {
    let ckpt = checkpoint::resolve(&args.checkpoint)?;
    let kind = match args.dtype.as_str() {
        "bf16" => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    let files = checkpoint::export(&ckpt, &args.out, kind, args.shard_mib << 20)?;
    for f in &files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!(
            "{} ({:.1} MiB)",
            f.display(),
            size as f64 / (1u64 << 20) as f64
        );
    }
    Ok(())
}
