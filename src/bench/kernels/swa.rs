//! `lcm bench kernels` entries of sliding-window and bidirectional attention.

use tch::{Kind, Tensor};

use super::{autograd_times, KernelsBench, Row};
use crate::error::Result;

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

/// The kernel's rows (ratio columns: the pure-tch reference and the path the kernel
/// replaces, the blocked window through libtorch SDPA / plain SDPA), then one row of dense
/// causal SDPA at the same T for scale (its own FLOPs: half of T^2).
pub(super) fn swa(bench: &KernelsBench, s: &SwaShape) -> Result<Vec<Row>> {
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
    let row = |kernel: &str, pass: &str, ms, flops, bytes, ref_ms, sdpa_ms| {
        bench.row(kernel, s.label(), pass, ms, flops, bytes, ref_ms, sdpa_ms)
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

/// The raw forward and backward kernels' times, ms (`None` without kernels or off CUDA).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(lcm_cuda), allow(unused_variables))]
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
    #[cfg(lcm_cuda)]
    if bench.device.is_cuda() {
        use crate::ops::swa::{swa_cuda_backward_raw, swa_cuda_forward_raw};
        let path = bench.attn_path(q.size()[3]);
        return bench.raw_pass_times(
            || swa_cuda_forward_raw(q, k, v, s.window, slopes, scale, path),
            |(o, lse)| swa_cuda_backward_raw(q, k, v, s.window, slopes, o, lse, dout, scale, path),
        );
    }
    Ok((None, None))
}
