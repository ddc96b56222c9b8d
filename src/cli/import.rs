use std::path::PathBuf;

use anyhow::Result;
use lcm::train::export;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  lcm import /tmp/drt-ref --out models/drt-from-ref            # what export --names reference wrote
  lcm import /tmp/drt-ref --out /tmp/d --dtype f32
  lcm eval niah --checkpoint models/drt-from-ref --len 4K,16K

SRC holds the reference DRT's config.json (ant-research/long-context-modeling,
config/DRT/config_63.json style) and its weights under the reference's state-dict names as
safetensors (model.safetensors, or model-*.safetensors shards with or without their
index): what `lcm export --names reference` writes, or a reference checkpoint converted
from its pickle (docs/fidelity.md). --out must not exist; it becomes an lcm checkpoint
folder (model.safetensors, state.json at step 0) that lcm eval, lcm export and
lcm pretrain --init read. Configs lcm does not reproduce are refused: eager attention
(_flash_attn_2_enabled false), no ALiBi, grouped kv heads.")]
pub struct Args {
    /// A folder with the reference's config.json and safetensors weights.
    src: PathBuf,
    /// The checkpoint folder to write; it must not exist.
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype: f32 (as checkpoints hold them) or bf16.
    #[arg(long, default_value = "f32", value_parser = ["bf16", "f32"])]
    dtype: String,
}

pub fn run(args: Args) -> Result<()> {
    let kind = super::parse_kind(&args.dtype)?;
    let out = export::import_reference(&args.src, &args.out, kind)?;
    println!("{}", out.display());
    Ok(())
}
