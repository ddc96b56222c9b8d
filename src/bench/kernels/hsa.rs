//! `lcm bench kernels` entries of HSA.

use tch::{Device, Kind, Tensor};

use super::{KernelsBench, Row};
use crate::error::Result;

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

pub(super) fn hsa(bench: &KernelsBench, s: &HsaShape) -> Result<Vec<Row>> {
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
            bench.time_ms(1, rr, || {
                let _ = crate::ops::hsa_reference(&q, &k, &v, &w, &idx, s.s, scale, false);
            })
        });
        let leaves: Vec<Tensor> = [&q, &k, &v, &w]
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        let fb = bench.time_ms(1, rr, || {
            let o = crate::ops::hsa_reference(
                &leaves[0], &leaves[1], &leaves[2], &leaves[3], &idx, s.s, scale, false,
            );
            let loss = (o.to_kind(Kind::Float) * &dout).sum(Kind::Float);
            let _ = Tensor::run_backward(&[&loss], &leaves, false, false);
        });
        ref_fwd = Some(f * s.n as f64);
        ref_bwd = Some((fb - f).max(0.0) * s.n as f64);
    }

    let row = |pass: &str, ms, flops, bytes, ref_ms| {
        bench.row("hsa", s.label(), pass, ms, flops, bytes, ref_ms, None)
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

/// The raw forward and backward kernels' times, ms, over `runs` calls after `warmup`
/// (`None` without kernels or off CUDA).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(lcm_cuda), allow(unused_variables))]
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
    #[cfg(lcm_cuda)]
    if bench.device.is_cuda() {
        use crate::ops::hsa::{hsa_cuda_backward_raw, hsa_cuda_forward_raw};
        let path = crate::ops::path::hsa_path(s.hq / s.h, s.s, scale);
        let (_, lse) = hsa_cuda_forward_raw(q, k, v, w, idx, s.s, scale, false, path)?;
        let fwd = bench.time_ms(warmup, runs, || {
            let _ = hsa_cuda_forward_raw(q, k, v, w, idx, s.s, scale, false, path).unwrap();
        });
        let bwd = bench.time_ms(warmup, runs, || {
            let _ = hsa_cuda_backward_raw(q, k, v, w, idx, &lse, dout, s.s, scale, false).unwrap();
        });
        return Ok((Some(fwd), Some(bwd)));
    }
    Ok((None, None))
}
