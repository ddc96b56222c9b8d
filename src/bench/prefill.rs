//! `lcm bench prefill`: segmented-prefill speed and memory of a model (random weights, random
//! tokens) at long lengths, with the memory planner's estimate beside the measured peak.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::eval::lengths::format_length;
use crate::eval::{plan, Engine, PrefillOptions};
use crate::model::Placement;

#[derive(Debug, Serialize)]
pub struct PrefillResult {
    pub model: String,
    pub length: i64,
    pub segment: i64,
    pub offload: bool,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub peak_device_gib: Option<f64>,
    pub estimated_device_gib: f64,
    pub chunk_memory_gib: f64,
    pub host_rss_gib: Option<f64>,
}

impl std::fmt::Display for PrefillResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<10} {:>6} {:>8} {:>9.2} {:>11.0} {:>11} {:>10.1} {:>13.2} {:>9}",
            self.model,
            format_length(self.length),
            if self.offload { "host" } else { "device" },
            self.seconds,
            self.tokens_per_second,
            self.peak_device_gib
                .map_or("-".into(), |g| format!("{g:.1}")),
            self.estimated_device_gib,
            self.chunk_memory_gib,
            self.host_rss_gib.map_or("-".into(), |g| format!("{g:.1}")),
        )
    }
}

pub fn header() -> String {
    format!(
        "{:<10} {:>6} {:>8} {:>9} {:>11} {:>11} {:>10} {:>13} {:>9}",
        "model",
        "length",
        "memory",
        "seconds",
        "tokens/s",
        "peak GiB",
        "est. GiB",
        "chunk mem GiB",
        "RSS GiB"
    )
}

/// Resident set size of this process, from /proc/self/status.
fn rss_gib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1u64 << 20) as f64)
}

/// Prefills one random sequence of `length` tokens.
pub fn run(
    engine: &Engine,
    name: &str,
    length: i64,
    opts: &PrefillOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<PrefillResult> {
    let used = engine.usable_length(length);
    let vocab = engine.config().vocab_size;
    // Real-token ids only (DRT's landmark id is the last one).
    let tokens = Tensor::randint(vocab - 1, [1, used], (Kind::Int64, Device::Cpu));
    let est = plan::estimate(
        engine.config(),
        engine.params,
        used,
        engine.segment_tokens(opts.segment),
        opts.placement,
        engine.kind.elt_size_in_bytes(),
    );
    let stats = engine.prefill(&tokens, opts, progress, |_, _| Ok(()))?;
    let gib = (1u64 << 30) as f64;
    Ok(PrefillResult {
        model: name.to_string(),
        length: used,
        segment: engine.segment_tokens(opts.segment),
        offload: opts.placement == Placement::Host,
        seconds: stats.seconds,
        tokens_per_second: stats.tokens_per_second(),
        peak_device_gib: stats.peak_device_bytes.map(|b| b as f64 / gib),
        estimated_device_gib: est.device_bytes() / gib,
        chunk_memory_gib: (stats.memory_bytes + stats.landmark_bytes) as f64 / gib,
        host_rss_gib: rss_gib(),
    })
}
