//! `lcm debug` (hidden from `lcm --help`): the lcm side of the fidelity harness against the
//! reference implementation (scripts/fidelity/compare.py, docs/fidelity.md).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lcm::model::ModelConfig;
use lcm::train::config::apply_override;
use lcm::train::debug::{self, ProbeOptions};
use lcm::train::export::Naming;
use lcm::train::weights;
use tch::{Kind, Tensor};

use super::{parse_device, parse_kind};

#[derive(clap::Subcommand)]
pub enum Command {
    /// A freshly initialised model as a checkpoint folder (state.json, fp32
    /// model.safetensors) that `lcm export`, `lcm eval` and `pretrain --init` read.
    #[command(after_help = "Examples:
  lcm debug init --model configs/models/drt-128m.json --seed 0 --out /tmp/drt-init
  lcm debug init --model configs/models/drt-tiny.json --set drt.chunk_size=63 --out /tmp/d")]
    Init(InitArgs),
    /// One forward (no Gumbel noise) and backward of a checkpoint's model on the tokens of a
    /// safetensors file, with the training loss: writes `logits`, `loss`, `grad.<param>`
    /// for every parameter and, for a DRT, `retrieval.<g>.{indices,weights}`.
    #[command(after_help = "Examples:
  lcm debug grads --checkpoint /tmp/drt-init --tokens tokens.safetensors --out lcm.safetensors
  lcm debug grads --checkpoint /tmp/drt-init --tokens tokens.safetensors --out lcm.safetensors \\
      --names reference --device cuda --dtype bf16

The tokens file holds one int64 tensor `tokens` of shape (N, T), T a multiple of the chunk
size. --names reference names the gradients as the reference DRT's parameters
(DRTForCausalLM.named_parameters(); see lcm export --names reference).")]
    Grads(GradsArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// A model config (JSON, the `model` section of a training config).
    #[arg(long)]
    model: PathBuf,
    /// Override a model config value by its dotted key (repeatable), as `pretrain --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The checkpoint folder to write; it must not exist.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct GradsArgs {
    /// A checkpoint (step-* folder, export or `lcm debug init` folder) or a run folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// A safetensors file holding `tokens`, int64 (N, T).
    #[arg(long)]
    tokens: PathBuf,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
    /// Gradient names: lcm's or the reference DRT's.
    #[arg(long, default_value = "lcm", value_parser = ["lcm", "reference"])]
    names: String,
    /// cuda or cpu [default: cuda when available].
    #[arg(long)]
    device: Option<String>,
    /// The weights' dtype in forward and backward: f32, or bf16 as `precision: bf16` trains.
    #[arg(long, default_value = "f32", value_parser = ["bf16", "f32"])]
    dtype: String,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Init(a) => {
            let text = std::fs::read_to_string(&a.model)
                .with_context(|| format!("reading {}", a.model.display()))?;
            let mut v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", a.model.display()))?;
            for o in &a.overrides {
                apply_override(&mut v, o)?;
            }
            let cfg = ModelConfig::from_json(&v)?;
            let out = debug::init_checkpoint(&cfg, a.seed, &a.out)?;
            println!("{}", out.display());
        }
        Command::Grads(a) => {
            let tensors = Tensor::read_safetensors(&a.tokens)
                .with_context(|| format!("reading {}", a.tokens.display()))?;
            let Some((_, tokens)) = tensors.into_iter().find(|(n, _)| n == "tokens") else {
                bail!("{}: no tensor `tokens`", a.tokens.display());
            };
            let opts = ProbeOptions {
                device: parse_device(a.device.as_deref())?,
                kind: parse_kind(&a.dtype)?,
                names: match a.names.as_str() {
                    "reference" => Naming::Reference,
                    _ => Naming::Lcm,
                },
            };
            let out = debug::forward_backward(&a.checkpoint, &tokens.to_kind(Kind::Int64), &opts)?;
            let loss = out
                .iter()
                .find(|(n, _)| n == "loss")
                .map(|(_, t)| t.double_value(&[]))
                .unwrap_or(f64::NAN);
            weights::write(&a.out, &out)?;
            println!("loss {loss:.6} -> {}", a.out.display());
        }
    }
    Ok(())
}
