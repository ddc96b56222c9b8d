//! One module per subcommand: its clap arguments and the call into the library; here the
//! parsers of the flags that several subcommands share.

pub mod bench;
pub mod corpus;
pub mod debug;
pub mod eval;
pub mod export;
pub mod generate;
pub mod import;
pub mod info;
pub mod launch;
pub mod plot;
pub mod preprocess;
pub mod pretrain;

use anyhow::{bail, Result};
use lcm::model::Placement;
use tch::{Device, Kind};

/// `--device`: `cuda` (there must be one), `cpu`, or when not given the GPU if there is one.
pub fn parse_device(name: Option<&str>) -> Result<Device> {
    Ok(match name {
        None => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: no CUDA device is available (try --device cpu)");
            }
            Device::Cuda(0)
        }
        Some(other) => bail!("--device {other}: expected cuda or cpu"),
    })
}

/// `--dtype`: `bf16` or `f32`.
pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "bf16" => Ok(Kind::BFloat16),
        "f32" => Ok(Kind::Float),
        _ => bail!("--dtype {s}: expected bf16 or f32"),
    }
}

/// Where and how the inference engine runs (`eval`, `generate`).
#[derive(clap::Args)]
pub struct EngineArgs {
    /// cuda or cpu [default: cuda when available].
    #[arg(long)]
    pub device: Option<String>,
    /// Keep the chunk memory in (pinned) host memory, only landmarks on the GPU.
    #[arg(long, value_name = "cpu")]
    pub offload: Option<String>,
    /// Tokens per prefill segment (rounded down to a multiple of the chunk size).
    #[arg(long, default_value_t = 16384)]
    pub segment: i64,
}

/// `--offload`: the chunk memory on the compute device (not given) or in host memory (`cpu`).
pub fn parse_offload(v: Option<&str>) -> Result<Placement> {
    match v {
        None => Ok(Placement::Device),
        Some("cpu") => Ok(Placement::Host),
        Some(other) => bail!("--offload {other}: the only offload target is cpu"),
    }
}
