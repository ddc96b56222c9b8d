//! Sliding-window, causal and bidirectional attention against a naive per-query loop:
//! forward and gradients of q, k, v in fp32, on CPU. Tolerance: max |diff| <= 1e-5 +
//! 1e-4 * max |expected| (fp32 rounding of differently ordered sums).

use lcm::model::layers::alibi_slopes;
use lcm::ops::{
    bidirectional_attention, bidirectional_attention_reference, causal_attention_reference,
    sliding_window_attention, sliding_window_attention_reference, sliding_window_attention_sdpa,
};
use tch::{Device, Kind, Tensor};

mod common;

use common::assert_close_to_scale as assert_close;

/// Query `t` attends to keys in `lo(t) ..= hi(t)`, one query at a time.
fn naive(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    range: impl Fn(i64, i64) -> (i64, i64),
    slopes: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let (hq, t) = (q.size()[1], q.size()[2]);
    let g = hq / k.size()[1];
    let k = k.repeat_interleave_self_int(g, 1, None);
    let v = v.repeat_interleave_self_int(g, 1, None);
    let mut rows = Vec::new();
    for i in 0..t {
        let (lo, hi) = range(i, t);
        let ks = k.narrow(2, lo, hi - lo + 1);
        let vs = v.narrow(2, lo, hi - lo + 1);
        let qi = q.narrow(2, i, 1);
        let mut s = qi.matmul(&ks.transpose(-1, -2)) * scale; // (B, Hq, 1, n)
        if let Some(m) = slopes {
            let dist =
                (Tensor::arange_start(lo, hi + 1, (Kind::Float, Device::Cpu)) - i as f64).neg();
            s = s.g_sub(&(m.view([1, hq, 1, 1]) * dist.view([1, 1, 1, -1])));
        }
        rows.push(s.softmax(-1, Kind::Float).matmul(&vs));
    }
    Tensor::cat(&rows, 2)
}

fn inputs(b: i64, hq: i64, hkv: i64, t: i64, d: i64) -> (Tensor, Tensor, Tensor) {
    let mk = |h| Tensor::randn([b, h, t, d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (mk(hq), mk(hkv), mk(hkv))
}

fn grads(out: &Tensor, r: &Tensor, xs: &[&Tensor]) -> Vec<Tensor> {
    let loss = (out * r).sum(Kind::Float);
    Tensor::run_backward(&[loss], xs, false, false)
}

#[test]
fn sliding_window_matches_naive_forward_and_backward() {
    tch::manual_seed(1);
    let scale = 0.35;
    for &(t, window, hkv, alibi) in &[
        (1, 3, 2, true),
        (13, 0, 4, true),
        (13, 1, 1, false),
        (37, 5, 2, true),
        (37, 8, 1, true),
        (37, 12, 4, false),
        (20, 40, 2, true), // window longer than the sequence
        (24, 8, 2, true),  // T a multiple of the window
    ] {
        let (q, k, v) = inputs(2, 4, hkv, t, 8);
        let slopes = alibi.then(|| alibi_slopes(4, Device::Cpu));
        let got = sliding_window_attention_reference(&q, &k, &v, window, slopes.as_ref(), scale);
        let range = |i: i64, _| ((i - window).max(0), i);
        let want = naive(&q, &k, &v, range, slopes.as_ref(), scale);
        let what = format!("T={t} W={window} Hkv={hkv} alibi={alibi}");
        assert_close(&got, &want, &format!("{what} forward"));
        let r = got.randn_like();
        let gg = grads(&got, &r, &[&q, &k, &v]);
        let gw = grads(&want, &r, &[&q, &k, &v]);
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(gg.iter().zip(&gw)) {
            assert_close(a, b, &format!("{what} {name}"));
        }
        // The windowed dense reference agrees too.
        let dense = causal_attention_reference(&q, &k, &v, Some(window), slopes.as_ref(), scale);
        assert_close(&dense, &want, &format!("{what} dense-windowed"));
        // And the same blocking through libtorch's fused attention (math backend on CPU).
        let fused = sliding_window_attention_sdpa(&q, &k, &v, window, slopes.as_ref(), scale);
        assert_close(&fused, &want, &format!("{what} sdpa forward"));
        let gf = grads(&fused, &r, &[&q, &k, &v]);
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(gf.iter().zip(&gw)) {
            assert_close(a, b, &format!("{what} sdpa {name}"));
        }
    }
}

#[test]
fn causal_and_bidirectional_match_naive() {
    tch::manual_seed(2);
    let (q, k, v) = inputs(2, 6, 3, 19, 4);
    let slopes = alibi_slopes(6, Device::Cpu);
    let got = causal_attention_reference(&q, &k, &v, None, Some(&slopes), 0.5);
    let want = naive(&q, &k, &v, |i, _| (0, i), Some(&slopes), 0.5);
    assert_close(&got, &want, "causal forward");
    let r = got.randn_like();
    for (a, b) in grads(&got, &r, &[&q, &k, &v])
        .iter()
        .zip(&grads(&want, &r, &[&q, &k, &v]))
    {
        assert_close(a, b, "causal grads");
    }
    let got = bidirectional_attention_reference(&q, &k, &v, 0.5);
    let want = naive(&q, &k, &v, |_, t| (0, t - 1), None, 0.5);
    assert_close(&got, &want, "bidirectional forward");
    for (a, b) in grads(&got, &r, &[&q, &k, &v])
        .iter()
        .zip(&grads(&want, &r, &[&q, &k, &v]))
    {
        assert_close(a, b, "bidirectional grads");
    }
}

#[test]
fn alibi_slopes_follow_the_formula() {
    let m = alibi_slopes(12, Device::Cpu);
    for i in 0..12 {
        let want = 2f64.powf(-8.0 * (i as f64 + 1.0) / 12.0);
        assert!((m.double_value(&[i]) - want).abs() < 1e-7);
    }
}

// On the GPU, bf16 inputs dispatch to the fused (SDPA) blocked window: forward and every
// gradient against the fp32 reference on the same bf16 values, at the 128M DRT's shape
// (window 512, 12 heads, D 64, ALiBi) and with GQA, T not a multiple of the window, a
// window longer than T. Tolerance: relative L2 error <= 1e-2 (bf16 inputs, outputs and
// probabilities; the fp32 reference rounds only its probabilities).
common::cuda_test!(fused_sliding_window_matches_the_reference_on_cuda, |dev| {
    tch::manual_seed(3);
    for &(b, hq, hkv, t, w, d, alibi) in &[
        (2, 12, 12, 2048, 512, 64, true),
        (1, 8, 2, 1500, 512, 128, true),
        (2, 4, 4, 300, 512, 64, false),
        (1, 4, 1, 777, 64, 64, true),
    ] {
        let mk = |h| Tensor::randn([b, h, t, d], (Kind::BFloat16, dev));
        let (q, k, v) = (mk(hq), mk(hkv), mk(hkv));
        let slopes = alibi.then(|| alibi_slopes(hq, dev));
        let scale = 1.0 / (d as f64).sqrt();
        let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor, kind: Kind| {
            let (q, k, v) = (
                q.to_kind(kind).set_requires_grad(true),
                k.to_kind(kind).set_requires_grad(true),
                v.to_kind(kind).set_requires_grad(true),
            );
            let o = f(&q, &k, &v);
            let r = Tensor::ones_like(&o).to_kind(Kind::Float) * 0.01;
            let loss = (o.to_kind(Kind::Float) * r).sum(Kind::Float);
            let g = Tensor::run_backward(&[loss], &[&q, &k, &v], false, false);
            let mut all = vec![o.to_kind(Kind::Float)];
            all.extend(g.into_iter().map(|x| x.to_kind(Kind::Float)));
            all
        };
        let fused = run(
            &|q, k, v| sliding_window_attention(q, k, v, w, slopes.as_ref(), scale),
            Kind::BFloat16,
        );
        let reference = run(
            &|q, k, v| sliding_window_attention_reference(q, k, v, w, slopes.as_ref(), scale),
            Kind::Float,
        );
        let fused_bi = run(
            &|q, k, v| bidirectional_attention(q, k, v, scale),
            Kind::BFloat16,
        );
        let reference_bi = run(
            &|q, k, v| bidirectional_attention_reference(q, k, v, scale),
            Kind::Float,
        );
        let pairs = fused
            .iter()
            .zip(&reference)
            .chain(fused_bi.iter().zip(&reference_bi));
        let names = [
            "out",
            "dq",
            "dk",
            "dv",
            "bidirectional out",
            "bidirectional dq",
        ];
        for (name, (a, b)) in names
            .iter()
            .chain(&["bidirectional dk", "bidirectional dv"])
            .zip(pairs)
        {
            let err =
                ((a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)) as f32;
            println!("T={t} W={w} Hq={hq} Hkv={hkv} D={d} {name}: relative L2 error {err:e}");
            assert!(
                err <= 1e-2,
                "T={t} W={w} Hq={hq} Hkv={hkv} D={d} {name}: {err:e}"
            );
        }
    }
});
