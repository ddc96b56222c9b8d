//! `lcm bench kernels`: each attention kernel at its issue shape against its roofline, the
//! pure-tch reference and libtorch SDPA dense attention.
//!
//! The command walks a table of [`Entry`]s (one per kernel and shape); an entry builds its
//! inputs, times the kernel's passes and its comparisons, and returns [`Row`]s. To add a
//! kernel (SWA, HSA, retrieval), add an entry to [`entries`]. Times are medians of
//! per-call CUDA-event timings after warm-up ([`super::median_ms_events`]).
//!
//! Roofline: `max(flops / peak_tflops, bytes / peak_gbps)`, with `bytes` the fewest a pass
//! must move (every input read once, every output written once).

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::median_ms_events;
use crate::error::Result;

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
    ]
}

pub struct HsaShape {
    pub n: i64,
    pub l: i64,
    pub hq: i64,
    pub h: i64,
    pub d: i64,
    /// Chunk size.
    pub s: i64,
    /// Slots per token.
    pub k: i64,
}

impl HsaShape {
    fn label(&self) -> String {
        format!(
            "N{} L{} Hq{} H{} D{} S{} K{}",
            self.n, self.l, self.hq, self.h, self.d, self.s, self.k
        )
    }
    /// Matrix FLOPs of the forward (QK^T and PV over every slot, empty slots included).
    fn fwd_flops(&self) -> f64 {
        4.0 * (self.n * self.l * self.hq * self.k * self.s * self.d) as f64
    }
}

/// Random HSA indices `(N, L, H, K)` int64: each token's K slots are distinct chunks drawn
/// uniformly among those it may see (the chunks wholly before its own, `c < t / S`), most
/// recent first, `-1` where fewer than K are visible.
pub fn hsa_random_indices(n: i64, l: i64, h: i64, k: i64, s: i64, c: i64, dev: Device) -> Tensor {
    let visible = Tensor::arange(l, (Kind::Int64, dev))
        .floor_divide_scalar(s)
        .view([l, 1, 1]);
    let chunk = Tensor::arange(c, (Kind::Int64, dev)).view([1, 1, c]);
    let hidden = chunk.ge_tensor(&visible); // (L, 1, C)
    let per_batch: Vec<Tensor> = (0..n)
        .map(|_| {
            let r = Tensor::rand([l, h, c], (Kind::Float, dev)).masked_fill(&hidden, -1.0);
            let (val, idx) = r.topk(k.min(c), -1, true, false);
            let idx = idx.masked_fill(&val.lt(0.0), -1);
            let (sorted, _) = idx.sort(-1, true);
            if k > c {
                Tensor::cat(
                    &[sorted, Tensor::full([l, h, k - c], -1, (Kind::Int64, dev))],
                    -1,
                )
            } else {
                sorted
            }
        })
        .collect();
    Tensor::stack(&per_batch, 0)
}

fn hsa(bench: &KernelsBench, s: &HsaShape) -> Result<Vec<Row>> {
    let dev = bench.device;
    let opts = (Kind::BFloat16, dev);
    let make = |n: i64| {
        let q = Tensor::randn([n, s.l, s.hq, s.d], opts);
        let k = Tensor::randn([n, s.l, s.h, s.d], opts);
        let v = Tensor::randn([n, s.l, s.h, s.d], opts);
        let w = Tensor::rand([n, s.l, s.h, s.k], (Kind::Float, dev)).softmax(-1, Kind::Float);
        let idx = hsa_random_indices(n, s.l, s.h, s.k, s.s, s.l / s.s, dev);
        let dout = Tensor::randn([n, s.l, s.hq, s.d], opts);
        (q, k, v, w, idx, dout)
    };
    let scale = 1.0 / (s.d as f64).sqrt();
    let (q, k, v, w, idx, dout) = make(s.n);
    // Bytes: q, o read/written once, the memory k/v read once, lse and weights/indices.
    let qo = (s.n * s.l * s.hq * s.d * 2) as f64;
    let kv = (s.n * s.l * s.h * s.d * 2) as f64;
    let small = (s.n * s.l * s.hq * s.k * 4 + s.n * s.l * s.h * s.k * 12) as f64;
    let (fwd_bytes, bwd_bytes) = (2.0 * qo + 2.0 * kv + small, 3.0 * qo + 4.0 * kv + small);
    let (runs, warmup) = ((bench.runs / 5).max(3), bench.warmup.min(2));

    let (ms_fwd, ms_bwd) =
        hsa_kernel_times(bench, &q, &k, &v, &w, &idx, &dout, s, scale, runs, warmup)?;
    drop((q, k, v, w, idx, dout));

    // The reference materialises the gathered chunks (N*L*K*S*D per k and v): it runs at
    // batch 1 and its times are scaled by N.
    let (mut ref_fwd, mut ref_bwd) = (None, None);
    if !bench.no_reference {
        let (q, k, v, w, idx, dout) = make(1);
        let rr = 3;
        let f = tch::no_grad(|| {
            median_ms_events(dev, 1, rr, || {
                let _ = crate::ops::hsa_reference(&q, &k, &v, &w, &idx, s.s, scale, false);
            })
        });
        let leaves: Vec<Tensor> = [&q, &k, &v, &w]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let fb = median_ms_events(dev, 1, rr, || {
            let o = crate::ops::hsa_reference(
                &leaves[0], &leaves[1], &leaves[2], &leaves[3], &idx, s.s, scale, false,
            );
            let loss = (o.to_kind(Kind::Float) * &dout).sum(Kind::Float);
            let _ = Tensor::run_backward(&[&loss], &leaves, false, false);
        });
        ref_fwd = Some(f * s.n as f64);
        ref_bwd = Some((fb - f).max(0.0) * s.n as f64);
    }

    let row = |pass: &str, ms, flops, bytes, ref_ms| Row {
        kernel: "hsa".into(),
        shape: s.label(),
        pass: pass.into(),
        ms,
        flops,
        bytes,
        ref_ms,
        sdpa_ms: None,
        peak_tflops: bench.peak_tflops,
        peak_gbps: bench.peak_gbps,
    };
    let sum = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
    Ok(vec![
        row("fwd", ms_fwd, s.fwd_flops(), fwd_bytes, ref_fwd),
        row("bwd", ms_bwd, 2.5 * s.fwd_flops(), bwd_bytes, ref_bwd),
        row(
            "f+b",
            sum(ms_fwd, ms_bwd),
            3.5 * s.fwd_flops(),
            fwd_bytes + bwd_bytes,
            sum(ref_fwd, ref_bwd),
        ),
    ])
}

#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
fn hsa_kernel_times(
    bench: &KernelsBench,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    w: &Tensor,
    idx: &Tensor,
    dout: &Tensor,
    s: &HsaShape,
    scale: f64,
    runs: usize,
    warmup: usize,
) -> Result<(Option<f64>, Option<f64>)> {
    use crate::ops::hsa::{hsa_cuda_backward_raw, hsa_cuda_forward_raw};
    if !bench.device.is_cuda() {
        return Ok((None, None));
    }
    let (_, lse) = hsa_cuda_forward_raw(q, k, v, w, idx, s.s, scale, false)?;
    let dev = bench.device;
    let fwd = median_ms_events(dev, warmup, runs, || {
        let _ = hsa_cuda_forward_raw(q, k, v, w, idx, s.s, scale, false).unwrap();
    });
    let bwd = median_ms_events(dev, warmup, runs, || {
        let _ = hsa_cuda_backward_raw(q, k, v, w, idx, &lse, dout, s.s, scale, false).unwrap();
    });
    Ok((Some(fwd), Some(bwd)))
}

#[cfg(not(lcm_cuda))]
#[allow(clippy::too_many_arguments)]
fn hsa_kernel_times(
    _bench: &KernelsBench,
    _q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _w: &Tensor,
    _idx: &Tensor,
    _dout: &Tensor,
    _s: &HsaShape,
    _scale: f64,
    _runs: usize,
    _warmup: usize,
) -> Result<(Option<f64>, Option<f64>)> {
    Ok((None, None))
}

pub struct GcaShape {
    pub b: i64,
    pub hq: i64,
    pub hkv: i64,
    pub q: i64,
    pub d: i64,
    pub k: i64,
    pub kctx: i64,
}

impl GcaShape {
    pub fn new(b: i64, hq: i64, hkv: i64, q: i64, d: i64, k: i64, kctx: i64) -> Self {
        Self {
            b,
            hq,
            hkv,
            q,
            d,
            k,
            kctx,
        }
    }
    fn label(&self) -> String {
        format!(
            "B{} Hq{} Hkv{} Q{} D{} K{} Kctx{}",
            self.b, self.hq, self.hkv, self.q, self.d, self.k, self.kctx
        )
    }
    /// Matrix FLOPs of the forward (QK^T and PV); the backward does 2.5 times as many.
    fn fwd_flops(&self) -> f64 {
        4.0 * (self.b * self.hq * self.q * self.k * self.kctx * self.d) as f64
    }
    /// (forward, backward) bytes: bf16 q, k, v, o (dO, dq, dk, dv), fp32 lse and weights.
    fn bytes(&self) -> (f64, f64) {
        let qo = (self.b * self.hq * self.q * self.d * 2) as f64;
        let kv = (self.b * self.hkv * self.k * self.kctx * self.d * 2) as f64;
        let lse = (self.b * self.hq * self.k * self.q * 4) as f64;
        let w = (self.b * self.k * 4) as f64;
        (
            2.0 * qo + 2.0 * kv + lse + w,
            3.0 * qo + 4.0 * kv + lse + 2.0 * w,
        )
    }
}

fn gca(bench: &KernelsBench, s: &GcaShape) -> Result<Vec<Row>> {
    let dev = bench.device;
    let opts = (Kind::BFloat16, dev);
    let q = Tensor::randn([s.b, s.hq, s.q, s.d], opts);
    let k = Tensor::randn([s.b, s.hkv, s.k, s.kctx, s.d], opts);
    let v = Tensor::randn([s.b, s.hkv, s.k, s.kctx, s.d], opts);
    let w = Tensor::rand([s.b, s.k], (Kind::Float, dev)).softmax(-1, Kind::Float);
    let dout = Tensor::randn([s.b, s.hq, s.q, s.d], opts);
    let scale = 1.0 / (s.d as f64).sqrt();
    let (fwd_bytes, bwd_bytes) = s.bytes();
    let (runs, warmup) = (bench.runs, bench.warmup);

    let (ms_fwd, ms_bwd) = gca_kernel_times(bench, &q, &k, &v, &w, &dout, scale)?;

    // The reference, fwd alone and fwd+bwd through autograd; fewer runs (it is slow).
    let (mut ref_fwd, mut ref_bwd) = (None, None);
    if !bench.no_reference {
        let rr = (runs / 5).max(3);
        let f = tch::no_grad(|| {
            median_ms_events(dev, 1, rr, || {
                let _ = crate::ops::gca_reference(&q, &k, &v, &w, scale, false);
            })
        });
        let leaves: Vec<Tensor> = [&q, &k, &v, &w]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let fb = median_ms_events(dev, 1, rr, || {
            let o = crate::ops::gca_reference(
                &leaves[0], &leaves[1], &leaves[2], &leaves[3], scale, false,
            );
            let loss = (o.to_kind(Kind::Float) * &dout).sum(Kind::Float);
            let _ = Tensor::run_backward(&[&loss], &leaves, false, false);
        });
        ref_fwd = Some(f);
        ref_bwd = Some((fb - f).max(0.0));
    }

    // SDPA, causal, with the same query count and FLOPs: sequences of L = 2 * K * K_CTX
    // tokens (a causal query sees L/2 keys on average, as many as a GCA query), counting
    // half of the dense FLOPs. Not for Q < 64 (decode) shapes.
    let (mut sdpa_fwd, mut sdpa_bwd) = (None, None);
    let l = 2 * s.k * s.kctx;
    let rows = s.b * s.q;
    if s.q >= 64 && rows % l == 0 && dev.is_cuda() {
        let bs = rows / l;
        let sq = Tensor::randn([bs, s.hq, l, s.d], opts);
        let sk = Tensor::randn([bs, s.hq, l, s.d], opts);
        let sv = Tensor::randn([bs, s.hq, l, s.d], opts);
        let sdpa = |a: &Tensor, b: &Tensor, c: &Tensor| {
            Tensor::scaled_dot_product_attention(a, b, c, None::<Tensor>, 0.0, true, scale, false)
        };
        let f = tch::no_grad(|| {
            median_ms_events(dev, warmup, runs, || {
                let _ = sdpa(&sq, &sk, &sv);
            })
        });
        let leaves: Vec<Tensor> = [&sq, &sk, &sv]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let sdo = Tensor::randn([bs, s.hq, l, s.d], opts);
        let fb = median_ms_events(dev, warmup, runs, || {
            let o = sdpa(&leaves[0], &leaves[1], &leaves[2]);
            let loss = (o * &sdo).sum(Kind::Float);
            let _ = Tensor::run_backward(&[&loss], &leaves, false, false);
        });
        sdpa_fwd = Some(f);
        sdpa_bwd = Some((fb - f).max(0.0));
    }

    let row = |pass: &str, ms, flops, bytes, ref_ms, sdpa_ms| Row {
        kernel: "gca".into(),
        shape: s.label(),
        pass: pass.into(),
        ms,
        flops,
        bytes,
        ref_ms,
        sdpa_ms,
        peak_tflops: bench.peak_tflops,
        peak_gbps: bench.peak_gbps,
    };
    let mut out = vec![row(
        "fwd",
        ms_fwd,
        s.fwd_flops(),
        fwd_bytes,
        ref_fwd,
        sdpa_fwd,
    )];
    if s.q >= 64 {
        out.push(row(
            "bwd",
            ms_bwd,
            2.5 * s.fwd_flops(),
            bwd_bytes,
            ref_bwd,
            sdpa_bwd,
        ));
    }
    Ok(out)
}

/// GCA over a chunk memory: `rows` sequences of `s.b / rows + 1` chunks, memory `(M, K_CTX,
/// Hkv, D)`; query chunk j of a row reads K chunks drawn at random (with repeats) from
/// that row's chunks 0..=j, the ones its landmark may choose. Forward only (the backward is
/// the plain one on a host gather). Bytes: the memory read once, q, o, lse, w, indices.
fn gca_gathered(bench: &KernelsBench, s: &GcaShape, rows: i64) -> Result<Vec<Row>> {
    let dev = bench.device;
    let opts = (Kind::BFloat16, dev);
    let c = s.b / rows + 1;
    let m = rows * c;
    let q = Tensor::randn([s.b, s.hq, s.q, s.d], opts);
    let mem_k = Tensor::randn([m, s.kctx, s.hkv, s.d], opts);
    let mem_v = Tensor::randn([m, s.kctx, s.hkv, s.d], opts);
    let j = Tensor::arange(c - 1, (Kind::Int64, dev))
        .repeat([rows])
        .view([s.b, 1]);
    let first = (Tensor::arange(rows, (Kind::Int64, dev)) * c)
        .repeat_interleave_self_int(c - 1, 0, None)
        .view([s.b, 1]);
    let pick = (Tensor::rand([s.b, s.k], (Kind::Float, dev)) * (&j + 1).to_kind(Kind::Float))
        .floor()
        .to_kind(Kind::Int64)
        .minimum(&j);
    let idx = pick + first;
    let w = Tensor::rand([s.b, s.k], (Kind::Float, dev)).softmax(-1, Kind::Float);
    let scale = 1.0 / (s.d as f64).sqrt();
    let bytes = (2 * m * s.kctx * s.hkv * s.d * 2
        + 2 * s.b * s.hq * s.q * s.d * 2
        + s.b * s.hq * s.k * s.q * 4
        + s.b * s.k * 12) as f64;
    let ms = gca_gathered_kernel_time(bench, &q, &mem_k, &mem_v, &idx, &w, scale)?;
    let mut ref_ms = None;
    if !bench.no_reference {
        ref_ms = Some(tch::no_grad(|| {
            median_ms_events(dev, 1, (bench.runs / 5).max(3), || {
                let _ =
                    crate::ops::gca_gathered_reference(&q, &mem_k, &mem_v, &idx, &w, scale, false);
            })
        }));
    }
    Ok(vec![Row {
        kernel: "gca-gather".into(),
        shape: format!("{} M{m}", s.label()),
        pass: "fwd".into(),
        ms,
        flops: s.fwd_flops(),
        bytes,
        ref_ms,
        sdpa_ms: None,
        peak_tflops: bench.peak_tflops,
        peak_gbps: bench.peak_gbps,
    }])
}

#[cfg(lcm_cuda)]
fn gca_gathered_kernel_time(
    bench: &KernelsBench,
    q: &Tensor,
    mem_k: &Tensor,
    mem_v: &Tensor,
    idx: &Tensor,
    w: &Tensor,
    scale: f64,
) -> Result<Option<f64>> {
    use crate::ops::gca::gca_gathered_cuda_forward_raw;
    if !bench.device.is_cuda() {
        return Ok(None);
    }
    let _ = gca_gathered_cuda_forward_raw(q, mem_k, mem_v, idx, w, scale, false)?;
    Ok(Some(median_ms_events(
        bench.device,
        bench.warmup,
        bench.runs,
        || {
            let _ = gca_gathered_cuda_forward_raw(q, mem_k, mem_v, idx, w, scale, false).unwrap();
        },
    )))
}

#[cfg(not(lcm_cuda))]
fn gca_gathered_kernel_time(
    _bench: &KernelsBench,
    _q: &Tensor,
    _mem_k: &Tensor,
    _mem_v: &Tensor,
    _idx: &Tensor,
    _w: &Tensor,
    _scale: f64,
) -> Result<Option<f64>> {
    Ok(None)
}

#[cfg(lcm_cuda)]
fn gca_kernel_times(
    bench: &KernelsBench,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    w: &Tensor,
    dout: &Tensor,
    scale: f64,
) -> Result<(Option<f64>, Option<f64>)> {
    use crate::ops::gca::{gca_cuda_backward_raw, gca_cuda_forward_raw};
    if !bench.device.is_cuda() {
        return Ok((None, None));
    }
    let (_, lse) = gca_cuda_forward_raw(q, k, v, w, scale, false)?;
    let _ = gca_cuda_backward_raw(q, k, v, w, &lse, dout, scale)?;
    let (dev, warmup, runs) = (bench.device, bench.warmup, bench.runs);
    let fwd = median_ms_events(dev, warmup, runs, || {
        let _ = gca_cuda_forward_raw(q, k, v, w, scale, false).unwrap();
    });
    let bwd = median_ms_events(dev, warmup, runs, || {
        let _ = gca_cuda_backward_raw(q, k, v, w, &lse, dout, scale).unwrap();
    });
    Ok((Some(fwd), Some(bwd)))
}

#[cfg(not(lcm_cuda))]
fn gca_kernel_times(
    _bench: &KernelsBench,
    _q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _w: &Tensor,
    _dout: &Tensor,
    _scale: f64,
) -> Result<(Option<f64>, Option<f64>)> {
    Ok((None, None))
}

/// DRT chunk retrieval: `m` landmark queries, the last of `e` landmarks (training: m = e,
/// the causal C x C problem; inference: a segment's queries against the whole memory).
pub struct RetrievalShape {
    pub n: i64,
    pub m: i64,
    pub e: i64,
    pub d: i64,
    pub k: i64,
}

impl RetrievalShape {
    fn label(&self) -> String {
        format!(
            "N{} M{} E{} d{} K{}",
            self.n, self.m, self.e, self.d, self.k
        )
    }
    /// Index of the first query's landmark: query i sees keys `j < first + i`.
    fn first(&self) -> i64 {
        self.e - self.m
    }
    /// Score FLOPs over the visible (query, key) pairs only.
    fn flops(&self) -> f64 {
        let f = self.first() as f64;
        let m = self.m as f64;
        let pairs = m * f + m * (m - 1.0) / 2.0;
        2.0 * self.n as f64 * pairs * self.d as f64
    }
    /// q and k read once (bf16), indices and scores written (int64 + fp32).
    fn bytes(&self) -> f64 {
        ((self.n * (self.m + self.e) * self.d * 2) + self.n * self.m * self.k * 12) as f64
    }
}

/// The retrieval op (top-k and weights, no gradient) through the dispatch (the kernel on
/// bf16 CUDA), against the pure-tch path the models used before: the full score matrix
/// for training shapes, the blocked running top-k for inference.
fn retrieval(bench: &KernelsBench, s: &RetrievalShape) -> Result<Vec<Row>> {
    use crate::ops::retrieval::{
        chunk_retrieval, chunk_retrieval_blocked, chunk_retrieval_blocked_reference,
        chunk_retrieval_reference, kernel_supports, RETRIEVAL_BLOCK,
    };
    let dev = bench.device;
    let _g = tch::no_grad_guard();
    let opts = (Kind::BFloat16, dev);
    // Rotate among input sets larger than L2 together (the keys are 400 MB at 16M tokens).
    let sets = if s.e >= 65536 { 2 } else { 4 };
    let inputs: Vec<(Tensor, Tensor)> = (0..sets)
        .map(|_| {
            (
                Tensor::randn([s.n, s.m, s.d], opts),
                Tensor::randn([s.n, s.e, s.d], opts),
            )
        })
        .collect();
    let training = s.m == s.e;
    let first = s.first();
    let run = |q: &Tensor, k: &Tensor| {
        if training {
            chunk_retrieval(q, k, s.k, false)
        } else {
            chunk_retrieval_blocked(q, k, first, s.k, RETRIEVAL_BLOCK)
        }
    };
    let reference = |q: &Tensor, k: &Tensor| {
        if training {
            chunk_retrieval_reference(q, k, s.k, false)
        } else {
            chunk_retrieval_blocked_reference(q, k, first, s.k, RETRIEVAL_BLOCK)
        }
    };
    let mut ms = None;
    if kernel_supports(&inputs[0].0, &inputs[0].1, s.k.min(s.m)) {
        let mut i = 0;
        ms = Some(median_ms_events(dev, bench.warmup, bench.runs, || {
            let (q, k) = &inputs[i % sets];
            i += 1;
            let _ = run(q, k);
        }));
    }
    let mut ref_ms = None;
    if !bench.no_reference {
        let mut i = 0;
        ref_ms = Some(median_ms_events(dev, 1, (bench.runs / 5).max(3), || {
            let (q, k) = &inputs[i % sets];
            i += 1;
            let _ = reference(q, k);
        }));
    }
    Ok(vec![Row {
        kernel: "retr".into(),
        shape: s.label(),
        pass: "fwd".into(),
        ms,
        flops: s.flops(),
        bytes: s.bytes(),
        ref_ms,
        sdpa_ms: None,
        peak_tflops: bench.peak_tflops,
        peak_gbps: bench.peak_gbps,
    }])
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

/// Sliding-window (`window = Some(w)`, with ALiBi) or bidirectional (`None`) attention.
pub struct SwaShape {
    pub b: i64,
    pub hq: i64,
    pub hkv: i64,
    pub t: i64,
    pub d: i64,
    pub window: Option<i64>,
}

impl SwaShape {
    fn label(&self) -> String {
        let w = self.window.map_or("bidir".to_string(), |w| format!("W{w}"));
        format!(
            "B{} Hq{} Hkv{} T{} D{} {w}",
            self.b, self.hq, self.hkv, self.t, self.d
        )
    }
    /// Keys seen by all queries together: `sum_t min(t, w) + 1` (causal band), `T^2`
    /// (bidirectional).
    fn pairs(&self) -> f64 {
        let t = self.t as f64;
        match self.window {
            Some(w) => {
                let w = w.min(self.t - 1) as f64;
                // t = 0..w sees t + 1 keys, the rest w + 1.
                (w + 1.0) * (w + 2.0) / 2.0 + (t - w - 1.0) * (w + 1.0)
            }
            None => t * t,
        }
    }
    /// Matrix FLOPs of the forward over the band only (QK^T and PV); backward 2.5 times.
    fn fwd_flops(&self) -> f64 {
        4.0 * (self.b * self.hq * self.d) as f64 * self.pairs()
    }
    /// (forward, backward) bytes: bf16 q, k, v, o (dO, dq, dk, dv), fp32 lse.
    fn bytes(&self) -> (f64, f64) {
        let qo = (self.b * self.hq * self.t * self.d * 2) as f64;
        let kv = (self.b * self.hkv * self.t * self.d * 2) as f64;
        let lse = (self.b * self.hq * self.t * 4) as f64;
        (2.0 * qo + 2.0 * kv + lse, 4.0 * qo + 4.0 * kv + 2.0 * lse)
    }
}

/// Fwd time and fwd+bwd-minus-fwd time of `f` through autograd.
fn autograd_times(
    bench: &KernelsBench,
    xs: &[&Tensor],
    dout: &Tensor,
    runs: usize,
    warmup: usize,
    f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) -> (f64, f64) {
    let dev = bench.device;
    let fwd = tch::no_grad(|| {
        median_ms_events(dev, warmup, runs, || {
            let _ = f(xs[0], xs[1], xs[2]);
        })
    });
    let leaves: Vec<Tensor> = xs
        .iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect();
    let fb = median_ms_events(dev, warmup, runs, || {
        let o = f(&leaves[0], &leaves[1], &leaves[2]);
        let loss = (o.to_kind(Kind::Float) * dout).sum(Kind::Float);
        let _ = Tensor::run_backward(&[&loss], &leaves, false, false);
    });
    (fwd, (fb - fwd).max(0.0))
}

/// The kernel's rows (ratio columns: the pure-tch reference and the path the kernel
/// replaces, the blocked window through libtorch SDPA / plain SDPA), then one row of dense
/// causal SDPA at the same T for scale (its own FLOPs: half of T^2).
fn swa(bench: &KernelsBench, s: &SwaShape) -> Result<Vec<Row>> {
    let dev = bench.device;
    let opts = (Kind::BFloat16, dev);
    let q = Tensor::randn([s.b, s.hq, s.t, s.d], opts);
    let k = Tensor::randn([s.b, s.hkv, s.t, s.d], opts);
    let v = Tensor::randn([s.b, s.hkv, s.t, s.d], opts);
    let dout = Tensor::randn([s.b, s.hq, s.t, s.d], opts);
    let slopes = s
        .window
        .map(|_| crate::model::layers::alibi_slopes(s.hq, dev));
    let scale = 1.0 / (s.d as f64).sqrt();
    let (fwd_bytes, bwd_bytes) = s.bytes();
    let (runs, warmup) = (bench.runs, bench.warmup);

    let (ms_fwd, ms_bwd) = swa_kernel_times(bench, &q, &k, &v, slopes.as_ref(), &dout, s, scale)?;

    let (mut ref_fwd, mut ref_bwd) = (None, None);
    if !bench.no_reference {
        let rr = (runs / 5).max(3);
        let (f, b) = autograd_times(
            bench,
            &[&q, &k, &v],
            &dout,
            rr,
            1,
            &|q, k, v| match s.window {
                Some(w) => crate::ops::sliding_window_attention_reference(
                    q,
                    k,
                    v,
                    w,
                    slopes.as_ref(),
                    scale,
                ),
                None => crate::ops::bidirectional_attention_reference(q, k, v, scale),
            },
        );
        ref_fwd = Some(f);
        ref_bwd = Some(b);
    }
    // The path the kernel replaces (SDPA), and dense causal SDPA at the same T.
    let (mut sdpa_fwd, mut sdpa_bwd, mut dense) = (None, None, None);
    if dev.is_cuda() {
        let (f, b) = autograd_times(
            bench,
            &[&q, &k, &v],
            &dout,
            runs,
            warmup,
            &|q, k, v| match s.window {
                Some(w) => {
                    crate::ops::sliding_window_attention_sdpa(q, k, v, w, slopes.as_ref(), scale)
                }
                None => Tensor::scaled_dot_product_attention::<Tensor>(
                    q, k, v, None, 0.0, false, scale, false,
                ),
            },
        );
        sdpa_fwd = Some(f);
        sdpa_bwd = Some(b);
        if s.window.is_some() {
            dense = Some(autograd_times(
                bench,
                &[&q, &k, &v],
                &dout,
                runs,
                warmup,
                &|q, k, v| {
                    Tensor::scaled_dot_product_attention::<Tensor>(
                        q, k, v, None, 0.0, true, scale, false,
                    )
                },
            ));
        }
    }
    let row = |kernel: &str, pass: &str, ms, flops, bytes, ref_ms, sdpa_ms| Row {
        kernel: kernel.into(),
        shape: s.label(),
        pass: pass.into(),
        ms,
        flops,
        bytes,
        ref_ms,
        sdpa_ms,
        peak_tflops: bench.peak_tflops,
        peak_gbps: bench.peak_gbps,
    };
    let mut out = vec![
        row(
            "swa",
            "fwd",
            ms_fwd,
            s.fwd_flops(),
            fwd_bytes,
            ref_fwd,
            sdpa_fwd,
        ),
        row(
            "swa",
            "bwd",
            ms_bwd,
            2.5 * s.fwd_flops(),
            bwd_bytes,
            ref_bwd,
            sdpa_bwd,
        ),
    ];
    if let Some((f, b)) = dense {
        // Dense causal attention: T(T+1)/2 pairs per head.
        let t = s.t as f64;
        let flops = 4.0 * (s.b * s.hq * s.d) as f64 * t * (t + 1.0) / 2.0;
        out.push(row("sdpa-c", "fwd", Some(f), flops, fwd_bytes, None, None));
        out.push(row(
            "sdpa-c",
            "bwd",
            Some(b),
            2.5 * flops,
            bwd_bytes,
            None,
            None,
        ));
    }
    Ok(out)
}

#[cfg(lcm_cuda)]
#[allow(clippy::too_many_arguments)]
fn swa_kernel_times(
    bench: &KernelsBench,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    slopes: Option<&Tensor>,
    dout: &Tensor,
    s: &SwaShape,
    scale: f64,
) -> Result<(Option<f64>, Option<f64>)> {
    use crate::ops::swa::{swa_cuda_backward_raw, swa_cuda_forward_raw};
    if !bench.device.is_cuda() {
        return Ok((None, None));
    }
    let (o, lse) = swa_cuda_forward_raw(q, k, v, s.window, slopes, scale)?;
    let _ = swa_cuda_backward_raw(q, k, v, s.window, slopes, &o, &lse, dout, scale)?;
    let (dev, warmup, runs) = (bench.device, bench.warmup, bench.runs);
    let fwd = median_ms_events(dev, warmup, runs, || {
        let _ = swa_cuda_forward_raw(q, k, v, s.window, slopes, scale).unwrap();
    });
    let bwd = median_ms_events(dev, warmup, runs, || {
        let _ = swa_cuda_backward_raw(q, k, v, s.window, slopes, &o, &lse, dout, scale).unwrap();
    });
    Ok((Some(fwd), Some(bwd)))
}

#[cfg(not(lcm_cuda))]
#[allow(clippy::too_many_arguments)]
fn swa_kernel_times(
    _bench: &KernelsBench,
    _q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _slopes: Option<&Tensor>,
    _dout: &Tensor,
    _s: &SwaShape,
    _scale: f64,
) -> Result<(Option<f64>, Option<f64>)> {
    Ok((None, None))
}
