//! The memory planner: before any work, what a segmented prefill of `tokens` tokens will
//! need on the compute device and in host memory, and whether that fits.
//!
//! The estimate adds the weights, the chunk memory (the only part that grows with the
//! length), the window caches or Mamba2 states and one segment's activations, with the
//! reference ops' largest intermediates spelled out (blocked sliding-window scores, GCA/HSA
//! per-chunk scores and gathered chunks, retrieval score blocks, the chunked SSD scan's
//! per-chunk decay matrices), then a 25% margin and 1 GiB for
//! the allocator and libraries. `lcm bench prefill` prints it beside the measured peak.
//! A prefill is admitted only when that estimate fits in [`USABLE`] of the memory free now:
//! the rest is a safety margin for what the estimate misses and for what other processes
//! take meanwhile.

use crate::eval::lengths::format_length;
use crate::eval::{Engine, PrefillOptions};
use crate::model::hsa::HsaSpec;
use crate::model::{Arch, ModelConfig, Placement};
use crate::ops::retrieval::RETRIEVAL_BLOCK;

const GIB: f64 = (1u64 << 30) as f64;

/// The share of the free device (or available host) memory a prefill may plan on.
pub const USABLE: f64 = 0.9;

/// Bytes by purpose, for one sample of `tokens` tokens fed in segments of `segment`.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub weights: f64,
    /// Chunk keys and values (where the placement puts them).
    pub memory: f64,
    /// Landmarks (always on the compute device).
    pub landmarks: f64,
    /// Window caches (attention archs) or Mamba2 states (ramba): constant in the length
    /// except for `dense`.
    pub caches: f64,
    pub activations: f64,
    pub placement: Placement,
}

impl Estimate {
    /// The estimate for `n` samples prefilled side by side: everything but the weights
    /// scales with them.
    pub fn for_batch(self, n: i64) -> Self {
        let n = n.max(1) as f64;
        Estimate {
            memory: self.memory * n,
            landmarks: self.landmarks * n,
            caches: self.caches * n,
            activations: self.activations * n,
            ..self
        }
    }

    /// Bytes on the compute device, margin included.
    pub fn device_bytes(&self) -> f64 {
        let on_device = match self.placement {
            Placement::Device => self.memory,
            Placement::Host => 0.0,
        };
        (self.weights + on_device + self.landmarks + self.caches + self.activations) * 1.25 + GIB
    }

    /// Bytes of host memory beyond the process's baseline.
    pub fn host_bytes(&self) -> f64 {
        match self.placement {
            Placement::Host => self.memory * 1.05,
            Placement::Device => 0.0,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "weights {:.2} GiB, chunk memory {:.2} GiB ({}), landmarks {:.2} GiB, caches {:.2} GiB, \
             one segment's activations {:.2} GiB, plus 25% and 1 GiB for the allocator",
            self.weights / GIB,
            self.memory / GIB,
            match self.placement {
                Placement::Device => "on the device",
                Placement::Host => "in host memory",
            },
            self.landmarks / GIB,
            self.caches / GIB,
            self.activations / GIB
        )
    }
}

/// Estimates a prefill of `tokens` tokens (batch 1) in segments of `segment` tokens.
/// `elt` is the activation dtype's size (2 for bf16), `params` the parameter count.
pub fn estimate(
    cfg: &ModelConfig,
    params: i64,
    tokens: i64,
    segment: i64,
    placement: Placement,
    elt: usize,
) -> Estimate {
    if cfg.arch == Arch::Ramba {
        return estimate_ramba(cfg, params, tokens, segment, placement, elt);
    }
    let e = elt as f64;
    let (d, hq, hkv, hd) = (
        cfg.d_model as f64,
        cfg.n_heads as f64,
        cfg.n_kv_heads as f64,
        cfg.head_dim() as f64,
    );
    let w = cfg.window as f64;
    // Positions of a segment (DRT adds a landmark per chunk), chunks per segment, and the
    // sample's chunks, memory rows per chunk and landmark width.
    let (p, c, total_chunks, rows, lmk_dim, layers) = match cfg.arch {
        Arch::Drt => {
            let dr = cfg.drt.as_ref().expect("validated");
            let s = dr.chunk_size as f64;
            (
                segment as f64 * (s + 1.0) / s,
                segment as f64 / s,
                (tokens as f64 / s).ceil(),
                s + 1.0,
                d,
                dr.decoder_layers.iter().sum::<i64>() as f64,
            )
        }
        Arch::SwaHsa => {
            let h = cfg.hsa.as_ref().expect("validated");
            let s = h.chunk_size as f64;
            (
                segment as f64,
                segment as f64 / s,
                (tokens as f64 / s).ceil(),
                s,
                h.retrieval_dim as f64,
                (h.lower_layers + h.upper_layers) as f64,
            )
        }
        Arch::Swa | Arch::Dense | Arch::Ramba => (
            segment as f64,
            0.0,
            0.0,
            0.0,
            0.0,
            cfg.n_layers.unwrap_or(0) as f64,
        ),
    };
    let memory = total_chunks * rows * hkv * hd * 2.0 * e;
    let landmarks = total_chunks * lmk_dim * e;
    let caches = match cfg.arch {
        Arch::Dense => layers * 2.0 * tokens as f64 * hkv * hd * e,
        _ => layers * 2.0 * w * hkv * hd * e,
    };
    // Blocked sliding-window scores: fp32 scores, their softmax and the rounded
    // probabilities over (queries + cached) x 2 windows per head.
    let keys = match cfg.arch {
        Arch::Dense => tokens as f64,
        _ => 2.0 * w.min(p + w),
    };
    let attn = hq * (p + w) * keys * (4.0 + 4.0 + e);
    let mlp = p * cfg.d_ff as f64 * e * 3.0;
    let hidden = p * d * e * 12.0;
    let mut act = attn + mlp + hidden;
    match cfg.arch {
        Arch::Drt => {
            let dr = cfg.drt.as_ref().expect("validated");
            let (k, span) = (dr.topk as f64, (dr.chunk_size + 1) as f64);
            // Gathered chunks (k and v) and GCA's per-chunk scores and outputs.
            let gathered = c * k * rows * hkv * hd * 2.0 * e;
            let gca = c * hq * k * span * (rows * (4.0 + 4.0 + e) + hd * 4.0);
            let retrieval = c * (total_chunks.min(RETRIEVAL_BLOCK as f64) + 2.0 * k) * 4.0 * 3.0;
            let encoder = c * hq * span * span * (8.0 + e) + c * span * d * e * 12.0;
            act += gathered + gca + retrieval + encoder;
        }
        Arch::SwaHsa => {
            let spec = HsaSpec::of(cfg).expect("validated");
            act += hsa_activations(cfg, &spec, p, total_chunks, e);
        }
        _ => {}
    }
    Estimate {
        weights: params as f64 * e,
        memory,
        landmarks,
        caches,
        activations: act,
        placement,
    }
}

/// One segment's HSA intermediates (`swa_hsa`, `ramba`) over `p` positions with
/// `total_chunks` chunks in the memory: HSA's gathered chunks per token, its per-slot
/// scores and outputs; retrieval scores per token and retrieval head over a block of
/// chunks; the encoder over the segment's chunks.
fn hsa_activations(cfg: &ModelConfig, h: &HsaSpec, p: f64, total_chunks: f64, e: f64) -> f64 {
    let (d, hq, hkv, hd) = (
        cfg.d_model as f64,
        h.n_heads as f64,
        h.kv_heads as f64,
        h.head_dim as f64,
    );
    let (k, s) = (h.topk as f64, h.chunk_size as f64);
    let c = p / s;
    let g = hq / hkv;
    let gathered = p * hkv * k * s * hd * 2.0 * e;
    let hsa = p * hkv * k * g * (s * (4.0 + 4.0 + e) + hd * 4.0);
    let r = h.retrieval_heads as f64;
    let retrieval = p * r * (total_chunks.min(RETRIEVAL_BLOCK as f64) + 2.0 * k) * 4.0 * 3.0;
    let encoder = c * hq * (s + 1.0) * (s + 1.0) * (8.0 + e) + c * (s + 1.0) * d * e * 12.0;
    gathered + hsa + retrieval + encoder
}

/// [`estimate`] for `ramba`: the chunk memory and landmarks as `swa_hsa`'s; per Mamba2
/// block its state (conv inputs in the weights' dtype, the SSM state in fp32); one
/// segment's activations: the fp32 residual stream, one Mamba2 block's (in_proj output,
/// conv, the scan's fp32 inputs, its per-chunk `(Q, Q)` decay and score matrices per head,
/// per-chunk states, the gated norm) and the HSA intermediates.
fn estimate_ramba(
    cfg: &ModelConfig,
    params: i64,
    tokens: i64,
    segment: i64,
    placement: Placement,
    elt: usize,
) -> Estimate {
    let e = elt as f64;
    let (r, m) = (
        cfg.ramba.as_ref().expect("validated"),
        cfg.mamba2.as_ref().expect("validated"),
    );
    let spec = HsaSpec::of(cfg).expect("validated");
    let (s, p) = (r.chunk_size as f64, segment as f64);
    let total_chunks = (tokens as f64 / s).ceil();
    let (hkv, hd) = (spec.kv_heads as f64, spec.head_dim as f64);
    let memory = total_chunks * s * hkv * hd * 2.0 * e;
    let landmarks = total_chunks * r.retrieval_dim as f64 * e;
    let (h, pd, n) = (m.nheads() as f64, m.headdim as f64, m.d_state as f64);
    let (di, conv) = (m.d_inner() as f64, m.conv_dim() as f64);
    let blocks = (r.lower_layers + r.upper_layers) as f64;
    let caches = blocks * (conv * (m.d_conv - 1) as f64 * e + h * pd * n * 4.0);
    let q = m.chunk_size.min(segment.max(1)) as f64;
    let scan = p * h * q * 4.0 * 5.0
        + p * m.ngroups as f64 * q * 4.0 * 2.0
        + 3.0 * (p / q).ceil() * h * pd * n * 4.0;
    let block = p * m.d_in_proj() as f64 * e + p * conv * (2.0 * e + 4.0) + p * di * 4.0 * 8.0;
    let hidden = p * cfg.d_model as f64 * 4.0 * 6.0;
    let activations = hidden + block + scan + hsa_activations(cfg, &spec, p, total_chunks, e);
    Estimate {
        weights: params as f64 * e,
        memory,
        landmarks,
        caches,
        activations,
        placement,
    }
}

/// Memory available for a prefill: free bytes on the compute device (None on CPU or when
/// unknown) and available host bytes (None when unknown).
#[derive(Debug, Clone, Copy)]
pub struct Available {
    pub device: Option<f64>,
    pub host: Option<f64>,
}

impl Available {
    /// What this machine has now for `device`.
    pub fn query(device: tch::Device) -> Self {
        let gpu = match device {
            tch::Device::Cuda(i) => crate::cuda::mem_info(i).map(|(f, _)| f as f64),
            _ => None,
        };
        Available {
            device: gpu,
            host: host_available(),
        }
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn host_available() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Whether `est` fits in `avail`; if not, a message naming what does not fit and the flag
/// that would make it fit (`alternatives`: the same prefill offloaded, and with a smaller
/// segment). `on_cpu`: the compute device is the host itself.
pub fn check(
    est: &Estimate,
    avail: &Available,
    on_cpu: bool,
    offloaded: Option<&Estimate>,
    smaller_segment: Option<(i64, &Estimate)>,
) -> Result<(), String> {
    let dev_ok =
        |e: &Estimate| on_cpu || avail.device.is_none_or(|f| e.device_bytes() <= f * USABLE);
    let host_need = |e: &Estimate| {
        if on_cpu {
            e.device_bytes() + e.host_bytes()
        } else {
            e.host_bytes()
        }
    };
    let fits = |e: &Estimate| dev_ok(e) && avail.host.is_none_or(|h| host_need(e) <= h * USABLE);
    if fits(est) {
        return Ok(());
    }
    let margin = format!(
        "a prefill plans on at most {:.0}% of it, keeping the rest as a safety margin",
        100.0 * USABLE
    );
    let (need, have, place) = if !dev_ok(est) {
        let free = avail.device.unwrap_or(0.0);
        let place = format!("on the GPU, with {:.1} GiB free", free / GIB);
        (est.device_bytes(), free, place)
    } else {
        let free = avail.host.unwrap_or(0.0);
        let place = format!("of host memory, with {:.1} GiB available", free / GIB);
        (host_need(est), free, place)
    };
    let mut msg = format!(
        "this needs about {:.1} GiB {place} ({margin}: {:.1} GiB); the estimate: {}",
        need / GIB,
        have * USABLE / GIB,
        est.describe()
    );
    if let Some(o) = offloaded.filter(|o| fits(o)) {
        msg += &format!(
            "; with --offload cpu it needs about {:.1} GiB on the GPU and {:.1} GiB of host memory",
            o.device_bytes() / GIB,
            o.host_bytes() / GIB
        );
    } else if let Some((seg, s)) = smaller_segment.filter(|(_, s)| fits(s)) {
        msg += &format!(
            "; with --segment {seg} it needs about {:.1} GiB",
            s.device_bytes() / GIB
        );
    } else {
        msg += "; no segment size or offloading makes it fit on this machine";
    }
    Err(msg)
}

/// Checks, before any work, that `engine` can prefill `longest` tokens with `batch` samples
/// side by side as `prefill` says; the error names what does not fit and the flag that
/// would (`--offload cpu`, a smaller `--segment` or `--batch`). `lcm eval` and `lcm bench
/// prefill` call it.
pub fn check_engine(
    engine: &Engine,
    longest: i64,
    batch: i64,
    prefill: &PrefillOptions,
) -> crate::Result<()> {
    let cfg = engine.config();
    let elt = engine.kind.elt_size_in_bytes();
    let segment = engine.segment_tokens(prefill.segment);
    let est = |seg: i64, placement| {
        estimate(cfg, engine.params, longest, seg, placement, elt).for_batch(batch)
    };
    let chosen = est(segment, prefill.placement);
    let offloaded = (prefill.placement == Placement::Device && engine.device.is_cuda())
        .then(|| est(segment, Placement::Host));
    let smaller = engine.segment_tokens(segment / 4);
    let smaller_est = (smaller < segment).then(|| (smaller, est(smaller, prefill.placement)));
    let avail = Available::query(engine.device);
    check(
        &chosen,
        &avail,
        !engine.device.is_cuda(),
        offloaded.as_ref(),
        smaller_est.as_ref().map(|(s, e)| (*s, e)),
    )
    .map_err(|m| {
        let fewer = if batch > 1 {
            format!(" (or a smaller --batch: {batch} samples side by side each add their chunk memory and activations)")
        } else {
            String::new()
        };
        crate::Error::Invalid(format!("length {}: {m}{fewer}", format_length(longest)))
    })
}
