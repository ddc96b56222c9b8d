//! `lcm bench kernels`: each attention kernel at its issue shape against its roofline, the
//! pure-tch reference and libtorch SDPA dense attention.
//!
//! The command walks a table of [`Entry`]s (one per kernel and shape); an entry builds its
//! inputs, times the kernel's passes and its comparisons, and returns [`Row`]s. Each op's
//! entries live in a file of their own (`gca.rs`, `hsa.rs`, `swa.rs`, `retrieval.rs`,
//! `norm.rs` for RMSNorm and the cross-entropy); to add a kernel, add its entries to
//! [`entries`]. Times are medians of per-call CUDA-event timings after warm-up
//! ([`super::median_ms_events`]).
//!
//! Roofline: `max(flops / peak_tflops, bytes / peak_gbps)`, with `bytes` the fewest a pass
//! must move (every input read once, every output written once).

use serde::Serialize;
use tch::{Device, Kind, Tensor};

mod gca;
mod hsa;
mod norm;
mod retrieval;
mod swa;

pub use hsa::hsa_random_indices;

use gca::{gca, gca_gathered, GcaShape};
use hsa::{hsa, HsaShape};
use norm::{rmsnorm, xent};
use retrieval::{retrieval, RetrievalShape};
use swa::{swa, SwaShape};

use super::{median_ms_events, EventTiming};
use crate::error::Result;
use crate::ops::path::{attn_path_on, AttnPath};

pub struct KernelsBench {
    pub device: Device,
    /// Dense bf16 matrix rate, TFLOP/s (H200 measured: 799).
    pub peak_tflops: f64,
    /// Device copy bandwidth, GB/s (H200 measured: 4250).
    pub peak_gbps: f64,
    pub warmup: usize,
    pub runs: usize,
    /// Skip the pure-tch reference (slow, and memory-hungry at the issue shapes).
    pub no_reference: bool,
    /// The SWA and GCA kernels' path; `None`: the one dispatch picks ([`attn_path_on`]).
    pub path: Option<AttnPath>,
    /// The L2 flush and host-time report of each timed call.
    pub timing: EventTiming,
}

impl KernelsBench {
    /// The SWA / GCA path the entries time at head dim `head_dim`.
    pub fn attn_path(&self, head_dim: i64) -> AttnPath {
        self.path
            .unwrap_or_else(|| attn_path_on(self.device, head_dim))
    }

    /// A row at this bench's peaks: `kernel` at `shape`, one `pass`'s kernel time, its FLOPs
    /// and bytes, and the reference's and SDPA's times.
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &self,
        kernel: &str,
        shape: String,
        pass: &str,
        ms: Option<f64>,
        flops: f64,
        bytes: f64,
        ref_ms: Option<f64>,
        sdpa_ms: Option<f64>,
    ) -> Row {
        Row {
            kernel: kernel.into(),
            shape,
            pass: pass.into(),
            ms,
            flops,
            bytes,
            ref_ms,
            sdpa_ms,
            peak_tflops: self.peak_tflops,
            peak_gbps: self.peak_gbps,
        }
    }

    /// Milliseconds of a kernel's raw forward and of its raw backward, each after one
    /// untimed call; every backward takes what that first forward returned.
    #[cfg(lcm_cuda)]
    pub fn raw_pass_times<S, B>(
        &self,
        forward: impl Fn() -> Result<S>,
        backward: impl Fn(&S) -> Result<B>,
    ) -> Result<(Option<f64>, Option<f64>)> {
        let saved = forward()?;
        let _ = backward(&saved)?;
        let fwd = self.time_ms(self.warmup, self.runs, || {
            let _ = forward().unwrap();
        });
        let bwd = self.time_ms(self.warmup, self.runs, || {
            let _ = backward(&saved).unwrap();
        });
        Ok((Some(fwd), Some(bwd)))
    }

    /// Median milliseconds of one call of `f` (see [`median_ms_events`]).
    pub fn time_ms(&self, warmup: usize, runs: usize, f: impl FnMut()) -> f64 {
        median_ms_events(self.device, warmup, runs, &self.timing, f)
    }
}

/// One timed pass of one kernel at one shape.
#[derive(Serialize, Clone)]
pub struct Row {
    pub kernel: String,
    pub shape: String,
    /// "fwd" or "bwd" (the backward kernels alone, given the forward's saved state).
    pub pass: String,
    /// Median milliseconds of the kernel; `None` where no kernel ran (CPU, no nvcc).
    pub ms: Option<f64>,
    pub flops: f64,
    pub bytes: f64,
    /// The pure-tch reference for the same pass (bwd: fwd+bwd minus fwd).
    pub ref_ms: Option<f64>,
    /// libtorch SDPA dense attention with the same FLOPs (see the entry's note).
    pub sdpa_ms: Option<f64>,
    pub peak_tflops: f64,
    pub peak_gbps: f64,
}

impl Row {
    pub fn tflops(&self) -> Option<f64> {
        self.ms.map(|t| self.flops / (t * 1e-3) / 1e12)
    }
    pub fn gbps(&self) -> Option<f64> {
        self.ms.map(|t| self.bytes / (t * 1e-3) / 1e9)
    }
    /// The roofline's time in milliseconds.
    pub fn roofline_ms(&self) -> f64 {
        (self.flops / (self.peak_tflops * 1e12)).max(self.bytes / (self.peak_gbps * 1e9)) * 1e3
    }
}

/// A kernel at one shape: `run` returns its rows.
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&KernelsBench) -> Result<Vec<Row>>,
}

/// Every benchmark `lcm bench kernels` knows, in order.
pub fn entries() -> Vec<Entry> {
    vec![
        Entry {
            name: "gca-d64",
            about: "GCA, issue 6 shape: B=4096 chunks, Hq=Hkv=12, Q=64, D=64, K=8, K_CTX=64",
            run: |b| gca(b, &GcaShape::new(4096, 12, 12, 64, 64, 8, 64)),
        },
        Entry {
            name: "gca-d64-gather",
            about: "GCA reading a chunk memory by index (gca_gathered), issue 6 shape: 16 rows of 257 chunks (B=4096 query chunks), Hq=Hkv=12, Q=64, D=64, K=8 of the chunks each may see, K_CTX=64",
            run: |b| gca_gathered(b, &GcaShape::new(4096, 12, 12, 64, 64, 8, 64), 16),
        },
        Entry {
            name: "gca-d128",
            about: "GCA, head dim 128: B=2048, Hq=Hkv=12, Q=64, D=128, K=8, K_CTX=64",
            run: |b| gca(b, &GcaShape::new(2048, 12, 12, 64, 128, 8, 64)),
        },
        Entry {
            name: "gca-decode",
            about: "GCA inference forward, one query token: B=4096, Hq=Hkv=12, Q=1, D=64, K=8, K_CTX=64",
            run: |b| gca(b, &GcaShape::new(4096, 12, 12, 1, 64, 8, 64)),
        },
        Entry {
            name: "hsa-64k",
            about: "HSA, issue 6 shape: N=8 x L=64K tokens, Hq=16, H=1, D=64, chunk 64, top-8 random visible chunks",
            run: |b| hsa(b, &HsaShape { n: 8, l: 65536, hq: 16, h: 1, d: 64, s: 64, k: 8 }),
        },
        Entry {
            name: "swa-w512",
            about: "sliding window 512 with ALiBi: B=1, Hq=Hkv=12, T=16K, D=64 (the 128M DRT's SWA layer)",
            run: |b| swa(b, &SwaShape { b: 1, hq: 12, hkv: 12, t: 16384, d: 64, window: Some(512) }),
        },
        Entry {
            name: "swa-w512-d128",
            about: "sliding window 512 with ALiBi, head dim 128: B=1, Hq=Hkv=12, T=16K, D=128",
            run: |b| swa(b, &SwaShape { b: 1, hq: 12, hkv: 12, t: 16384, d: 128, window: Some(512) }),
        },
        Entry {
            name: "enc-s64",
            about: "bidirectional attention in encoder chunks: B*C=4096, H=12, S=64, D=64",
            run: |b| swa(b, &SwaShape { b: 4096, hq: 12, hkv: 12, t: 64, d: 64, window: None }),
        },
        Entry {
            name: "retrieval-c256",
            about: "DRT retrieval, training: N=1, C=256 chunks, d=768 (d_model of drt-128m), top-8, causal",
            run: |b| retrieval(b, &RetrievalShape { n: 1, m: 256, e: 256, d: 768, k: 8 }),
        },
        Entry {
            name: "retrieval-c1024",
            about: "DRT retrieval, training: N=1, C=1024 chunks, d=768, top-8, causal",
            run: |b| retrieval(b, &RetrievalShape { n: 1, m: 1024, e: 1024, d: 768, k: 8 }),
        },
        Entry {
            name: "retrieval-16m",
            about: "DRT retrieval, inference: one 64K-token segment (1024 landmark queries) after 16M tokens (262,144 landmark keys), d=768, top-8",
            run: |b| retrieval(b, &RetrievalShape { n: 1, m: 1024, e: 262_144, d: 768, k: 8 }),
        },
        Entry {
            name: "rmsnorm",
            about: "fused RMSNorm: 262,144 rows of 768 (drt-128m's width), bf16 (`lcm bench rmsnorm` sweeps shapes)",
            run: |b| rmsnorm(b, 262_144, 768),
        },
        Entry {
            name: "xent",
            about: "fused cross-entropy: 16,384 rows of the 50,304-token NeoX vocabulary, bf16 logits (`lcm bench xent` sweeps shapes)",
            run: |b| xent(b, 16_384, 50_304),
        },
    ]
}

pub fn header() -> String {
    format!(
        "{:<6} {:<36} {:<4} | {:>9} {:>7} {:>6} {:>7} {:>6} | {:>9} {:>6} | {:>9} {:>6} | {:>9} {:>6}",
        "kernel",
        "shape",
        "pass",
        "time",
        "TFLOP/s",
        "%799",
        "GB/s",
        "%copy",
        "roofline",
        "%roof",
        "ref",
        "x ref",
        "sdpa",
        "x sdpa"
    )
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}ms"));
        let num = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        let ratio = |other: Option<f64>| match (other, self.ms) {
            (Some(o), Some(t)) if t > 0.0 => format!("{:.2}x", o / t),
            _ => "-".into(),
        };
        let roof = self.roofline_ms();
        write!(
            f,
            "{:<6} {:<36} {:<4} | {:>9} {:>7} {:>6} {:>7} {:>6} | {:>9} {:>6} | {:>9} {:>6} | {:>9} {:>6}",
            self.kernel,
            self.shape,
            self.pass,
            ms(self.ms),
            num(self.tflops(), 1),
            num(self.tflops().map(|t| 100.0 * t / self.peak_tflops), 1),
            num(self.gbps(), 0),
            num(self.gbps().map(|g| 100.0 * g / self.peak_gbps), 1),
            format!("{roof:.3}ms"),
            num(self.ms.map(|t| 100.0 * roof / t), 1),
            ms(self.ref_ms),
            ratio(self.ref_ms),
            ms(self.sdpa_ms),
            ratio(self.sdpa_ms),
        )
    }
}

/// Fwd time and fwd+bwd-minus-fwd time of `f` through autograd.
pub(crate) fn autograd_times(
    bench: &KernelsBench,
    xs: &[&Tensor],
    dout: &Tensor,
    runs: usize,
    warmup: usize,
    f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> (f64, f64) {
    let fwd = tch::no_grad(|| {
        bench.time_ms(warmup, runs, || {
            let _ = f(xs[0], xs[1], xs[2]);
        })
    });
    let leaves: Vec<Tensor> = xs
        .iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect();
    let fb = bench.time_ms(warmup, runs, || {
        let o = f(&leaves[0], &leaves[1], &leaves[2]);
        let loss = (o.to_kind(Kind::Float) * dout).sum(Kind::Float);
        let _ = Tensor::run_backward(&[&loss], &leaves, false, false);
    });
    (fwd, (fb - fwd).max(0.0))
}
