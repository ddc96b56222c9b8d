use std::path::PathBuf;

use anyhow::{bail, Result};
use lcm::train::{checkpoint, export};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  lcm export runs/drt-niah --out models/drt-niah
  lcm export runs/drt-niah/step-00003000 --out /tmp/m --dtype f32 --shard-mib 64
  lcm export runs/drt-niah --out models/drt-niah --force     # replace that export
  lcm export runs/drt-niah --out /tmp/m --split-rows         # no file over --shard-mib
  lcm export runs/drt-128m --out /tmp/drt-ref --names reference --dtype f32

The folder holds model-0000i-of-0000N.safetensors shards of whole tensors, their index
model.safetensors.index.json (as HF transformers reads it) and state.json (the training config):
`lcm eval niah --checkpoint models/drt-niah` loads it, `lcm pretrain --init` starts from it.
--out must not exist; with --force it may be an earlier export (its shards and state.json
are replaced, other files such as a model card stay) or an empty folder. It is never the
source checkpoint or run folder, inside one or around one, a file, or another folder.

--names reference writes a DRT under the state-dict names of the reference implementation
(ant-research/long-context-modeling, model/DRT.py: DRTForCausalLM), with its ALiBi buffers
(fp32) and the tied lm_head.weight, and its config.json instead of state.json, so that
  model = DRTForCausalLM(LlamaConfig(**json.load(open('OUT/config.json'))))
  model.load_state_dict(<the shards' tensors>)       # strict
takes them as they are. Only DRTs the reference expresses export so (ALiBi, no q/k norm,
n_kv_heads = n_heads, rope_theta 10000, chunk_size 63 mod 64 with the landmark slot zeroed
or 0 mod 64 with it dropped); docs/fidelity.md says what the names map and what differs.")]
pub struct Args {
    /// A checkpoint (step-* folder) or a run folder (its newest checkpoint).
    checkpoint: PathBuf,
    /// The folder to write; it must not exist (see --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace the export in an existing --out folder (an export folder or an empty one).
    #[arg(long)]
    force: bool,
    /// Weight dtype: bf16 (half the size; what inference on a GPU uses) or f32.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    dtype: String,
    /// Largest shard in MiB, at least 1; a larger tensor has a shard of its own (see
    /// --split-rows).
    #[arg(long, default_value_t = 15)]
    shard_mib: usize,
    /// Split a tensor larger than --shard-mib into row blocks (NAME.__rows000, ...), so
    /// that no file exceeds it (the device tool and git hosts limit file sizes); lcm joins
    /// them on load, other tools see the blocks.
    #[arg(long)]
    split_rows: bool,
    /// Parameter names: lcm's own (lcm loads them), or `reference`: the reference DRT's
    /// state dict with its config.json (a DRT only; see below).
    #[arg(long, default_value = "lcm", value_parser = ["lcm", "reference"])]
    names: String,
}

pub fn run(args: Args) -> Result<()> {
    // 1 TiB: far above any shard a file host takes, and no overflow in bytes.
    if !(1..=1 << 20).contains(&args.shard_mib) {
        bail!(
            "--shard-mib {}: a shard holds between 1 MiB and 1 TiB (1048576)",
            args.shard_mib
        );
    }
    let ckpt = checkpoint::resolve(&args.checkpoint)?;
    let kind = super::parse_kind(&args.dtype)?;
    let opts = export::Options {
        kind,
        shard_bytes: args.shard_mib << 20,
        split_rows: args.split_rows,
        force: args.force,
        names: match args.names.as_str() {
            "reference" => export::Naming::Reference,
            _ => export::Naming::Lcm,
        },
    };
    let files = export::export(&ckpt, &args.out, &opts)?;
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
