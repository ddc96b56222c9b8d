//! What `lcm info` reports: versions, devices, compiled kernels, the tokenizer's place.

use std::path::PathBuf;

/// Default GPT-NeoX-20B tokenizer: `$LCM_TOKENIZER`, else the copy scripts/setup.sh
/// fetched into `assets/` of this source tree.
pub fn default_tokenizer_path() -> PathBuf {
    std::env::var_os("LCM_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/20B_tokenizer.json")
        })
}

#[derive(serde::Serialize)]
pub struct Info {
    pub lcm_version: &'static str,
    pub libtorch_version: &'static str,
    pub cuda_runtime: Option<String>,
    pub cudnn: Option<i64>,
    pub devices: Vec<String>,
    pub kernels: Vec<&'static str>,
    pub tokenizer: PathBuf,
    pub tokenizer_present: bool,
}

impl Info {
    pub fn gather() -> Self {
        let n = tch::Cuda::device_count().max(0) as usize;
        let devices = (0..n)
            .map(|i| {
                crate::cuda::describe_device(i)
                    .unwrap_or_else(|| format!("cuda:{i} (details need the kernels build)"))
            })
            .collect();
        let tokenizer = default_tokenizer_path();
        Info {
            lcm_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: env!("LCM_LIBTORCH_VERSION"),
            cuda_runtime: crate::cuda::runtime_version(),
            cudnn: tch::Cuda::cudnn_is_available().then(tch::utils::version_cudnn),
            devices,
            kernels: crate::cuda::compiled_kernels(),
            tokenizer_present: tokenizer.is_file(),
            tokenizer,
        }
    }
}

impl std::fmt::Display for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "lcm        {}", self.lcm_version)?;
        writeln!(f, "libtorch   {} (built against)", self.libtorch_version)?;
        match &self.cuda_runtime {
            Some(v) => writeln!(f, "CUDA       runtime {v}")?,
            None => writeln!(
                f,
                "CUDA       runtime not queried (no kernels in this build)"
            )?,
        }
        if let Some(v) = self.cudnn {
            writeln!(f, "cuDNN      {v}")?;
        }
        if self.devices.is_empty() {
            writeln!(f, "devices    cpu only (no CUDA device visible)")?;
        } else {
            for (i, d) in self.devices.iter().enumerate() {
                writeln!(f, "devices    cuda:{i} {d}")?;
            }
        }
        if self.kernels.is_empty() {
            writeln!(
                f,
                "kernels    absent: built without nvcc, every op runs its pure-tch reference"
            )?;
        } else {
            writeln!(
                f,
                "kernels    {} (sm_90a + compute_80 PTX)",
                self.kernels.join(", ")
            )?;
        }
        let state = if self.tokenizer_present {
            "present"
        } else {
            "missing: run scripts/setup.sh or set LCM_TOKENIZER"
        };
        write!(f, "tokenizer  {} ({state})", self.tokenizer.display())
    }
}
