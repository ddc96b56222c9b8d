//! `lcm bench kernels` entries of GCA, plain and reading a chunk memory.

use tch::{Kind, Tensor};

use super::{KernelsBench, Row};
use crate::error::Result;

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

pub(super) fn gca(bench: &KernelsBench, s: &GcaShape) -> Result<Vec<Row>> {
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
            bench.time_ms(1, rr, || {
                let _ = crate::ops::gca_reference(&q, &k, &v, &w, scale, false);
            })
        });
        let leaves: Vec<Tensor> = [&q, &k, &v, &w]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let fb = bench.time_ms(1, rr, || {
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
            bench.time_ms(warmup, runs, || {
                let _ = sdpa(&sq, &sk, &sv);
            })
        });
        let leaves: Vec<Tensor> = [&sq, &sk, &sv]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let sdo = Tensor::randn([bs, s.hq, l, s.d], opts);
        let fb = bench.time_ms(warmup, runs, || {
            let o = sdpa(&leaves[0], &leaves[1], &leaves[2]);
            let loss = (o * &sdo).sum(Kind::Float);
            let _ = Tensor::run_backward(&[&loss], &leaves, false, false);
        });
        sdpa_fwd = Some(f);
        sdpa_bwd = Some((fb - f).max(0.0));
    }

    let row = |pass: &str, ms, flops, bytes, ref_ms, sdpa_ms| {
        bench.row("gca", s.label(), pass, ms, flops, bytes, ref_ms, sdpa_ms)
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
pub(super) fn gca_gathered(bench: &KernelsBench, s: &GcaShape, rows: i64) -> Result<Vec<Row>> {
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
            bench.time_ms(1, (bench.runs / 5).max(3), || {
                let _ =
                    crate::ops::gca_gathered_reference(&q, &mem_k, &mem_v, &idx, &w, scale, false);
            })
        }));
    }
    let shape = format!("{} M{m}", s.label());
    let flops = s.fwd_flops();
    let row = bench.row("gca-gather", shape, "fwd", ms, flops, bytes, ref_ms, None);
    Ok(vec![row])
}

/// The gathered forward kernel's time, ms (`None` without kernels or off CUDA).
#[cfg_attr(not(lcm_cuda), allow(unused_variables))]
fn gca_gathered_kernel_time(
    bench: &KernelsBench,
    q: &Tensor,
    mem_k: &Tensor,
    mem_v: &Tensor,
    idx: &Tensor,
    w: &Tensor,
    scale: f64,
) -> Result<Option<f64>> {
    #[cfg(lcm_cuda)]
    if bench.device.is_cuda() {
        use crate::ops::gca::gca_gathered_cuda_forward_raw;
        let path = bench.attn_path(q.size()[3]);
        let _ = gca_gathered_cuda_forward_raw(q, mem_k, mem_v, idx, w, scale, false, path)?;
        return Ok(Some(bench.time_ms(bench.warmup, bench.runs, || {
            let _ =
                gca_gathered_cuda_forward_raw(q, mem_k, mem_v, idx, w, scale, false, path).unwrap();
        })));
    }
    Ok(None)
}

/// The raw forward and backward kernels' times, ms (`None` without kernels or off CUDA).
#[cfg_attr(not(lcm_cuda), allow(unused_variables))]
fn gca_kernel_times(
    bench: &KernelsBench,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    w: &Tensor,
    dout: &Tensor,
    scale: f64,
) -> Result<(Option<f64>, Option<f64>)> {
    #[cfg(lcm_cuda)]
    if bench.device.is_cuda() {
        use crate::ops::gca::{gca_cuda_backward_raw, gca_cuda_forward_raw};
        let path = bench.attn_path(q.size()[3]);
        return bench.raw_pass_times(
            || gca_cuda_forward_raw(q, k, v, w, scale, false, path).map(|(_, lse)| lse),
            |lse| gca_cuda_backward_raw(q, k, v, w, lse, dout, scale, path),
        );
    }
    Ok((None, None))
}
