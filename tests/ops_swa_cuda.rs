//! The sliding-window / bidirectional attention CUDA kernel (`cuda/swa_fwd.cu`, `cuda/swa_bwd.cu`) against the
//! fp32 reference: forward and every gradient (dq, dk, dv) on fresh random inputs at many
//! shapes (T not a multiple of the 64-row tile, T shorter than the window, windows 512, 64,
//! 16 and 0, ALiBi on and off, GQA, head dim 64 and 128, B > 1, strided views), the
//! bidirectional mode (the encoder's chunks, S = 64 and longer), a poisoned allocator so
//! unwritten outputs fail, run-to-run bit-identical forward and backward, and the dispatch
//! (this part also runs on the CPU). Every kernel path the GPU has (`AttnPath`) runs each
//! case, in this one process.
//!
//! The reference runs in fp32 on the same bf16 inputs (upcast), so the difference is the
//! kernel's bf16 rounding: P and dS rounded to bf16 before their matrix products and the
//! outputs rounded to bf16 (2^-9 relative). Tolerances (bf16 kernel vs fp32 reference):
//! relative L2 error ||got - want|| / ||want|| <= 1e-2 for o, dq, dk, dv, and elementwise
//! |got - want| <= 3e-2 * max|want| + 1e-3 (catches a wrong row that the norm would
//! average away). NaN never passes (the poison is NaN).

mod common;

use common::{
    assert_close_scaled, assert_rel_norm, attn_paths, cpu_and_cuda, forward_and_grads,
    kernel_and_reference, per_path, poison_cuda_allocator,
};
use lcm::model::layers::alibi_slopes;
use lcm::ops::path::AttnPath;
use lcm::ops::{
    bidirectional_attention, bidirectional_attention_reference, sliding_window_attention,
    sliding_window_attention_reference,
};
use tch::{Device, Kind, Tensor};

/// (B, Hq, Hkv, T, D, window (None: bidirectional), ALiBi, strided views)
type Case = (i64, i64, i64, i64, i64, Option<i64>, bool, bool);

const CASES: &[Case] = &[
    // The 128M DRT's layer: window 512, ALiBi, 12 heads, D 64; T not a multiple of 64.
    (2, 12, 12, 1100, 64, Some(512), true, false),
    // T < window, no ALiBi, strided (the model's transposed views).
    (2, 4, 4, 300, 64, Some(512), false, true),
    // GQA G = 4, head dim 128, ALiBi, window 512 over several tiles.
    (1, 8, 2, 1500, 128, Some(512), true, false),
    // Small windows: 16 (inside one tile) and 64 (one tile edge), T odd.
    (2, 4, 2, 333, 64, Some(16), true, true),
    (1, 4, 1, 777, 64, Some(64), true, false),
    (2, 2, 2, 200, 128, Some(16), false, false),
    // Window 0 (each query sees itself) and a window not a multiple of 64.
    (1, 2, 1, 130, 64, Some(0), false, false),
    (2, 3, 3, 517, 64, Some(100), true, false),
    // A window of 1000 keys: 17 key tiles per query tile, several laps of the K/V ring.
    (1, 4, 4, 1300, 64, Some(1000), true, false),
    // T of 1 and of 63.
    (3, 2, 2, 1, 64, Some(512), true, false),
    (1, 2, 2, 63, 128, Some(512), false, true),
    // Bidirectional: encoder chunks (B*C, H, S = 64, D), and longer / ragged sequences.
    (48, 4, 4, 64, 64, None, false, false),
    (16, 4, 2, 64, 128, None, false, true),
    (2, 4, 4, 300, 64, None, false, false),
    (1, 2, 2, 700, 64, None, false, true),
    (3, 2, 1, 17, 64, None, false, false),
];

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
}

impl Inputs {
    /// Random bf16 inputs of case `c` on `dev`.
    fn random(c: &Case, dev: Device) -> Self {
        let &(b, hq, hkv, t, d, _, _, strided) = c;
        let opts = (Kind::BFloat16, dev);
        let (q, k, v) = if strided {
            // (B, T, H, D) memory seen as (B, H, T, D), as the model's projections give.
            let mk = |h| Tensor::randn([b, t, h, d], opts).transpose(1, 2);
            (mk(hq), mk(hkv), mk(hkv))
        } else {
            let mk = |h| Tensor::randn([b, h, t, d], opts);
            (mk(hq), mk(hkv), mk(hkv))
        };
        let dout = Tensor::randn([b, hq, t, d], opts);
        Self { q, k, v, dout }
    }
}

fn tag(c: &Case) -> String {
    let &(b, hq, hkv, t, d, w, alibi, strided) = c;
    let w = w.map_or("bidirectional".to_string(), |w| format!("window={w}"));
    format!("B={b} Hq={hq} Hkv={hkv} T={t} D={d} {w} alibi={alibi} strided={strided}")
}

fn reference(c: &Case, q: &Tensor, k: &Tensor, v: &Tensor, slopes: Option<&Tensor>) -> Tensor {
    let d = c.4;
    let scale = 1.0 / (d as f64).sqrt();
    match c.5 {
        Some(w) => sliding_window_attention_reference(q, k, v, w, slopes, scale),
        None => bidirectional_attention_reference(q, k, v, scale),
    }
}

// Forward and gradients: [o, dq, dk, dv] against the fp32 reference; determinism.
#[cfg(lcm_cuda)]
common::cuda_test!(cuda_kernel_matches_reference_forward_and_gradients, |dev| {
    tch::manual_seed(16);
    for (path, c) in per_path(&attn_paths(dev), CASES) {
        check_against_reference(c, &Inputs::random(c, dev), dev, path);
    }
});

// The forward's lazy rescaling (cuda/swa_fwd.cu, softmax_update): key tiles are visited newest
// first and the running max moves only when a row's max passes it by more than 8 (base 2).
// Here every 150th key is 6 times longer, so that a row meets its largest scores in an
// older tile (well past the slack: the accumulator must be rescaled mid-row), with and
// without ALiBi.
#[cfg(lcm_cuda)]
common::cuda_test!(cuda_kernel_rescales_when_an_older_key_dominates, |dev| {
    tch::manual_seed(17);
    const SPIKED: &[Case] = &[
        (1, 4, 4, 1100, 64, Some(512), false, false),
        (1, 12, 12, 1100, 64, Some(512), true, false),
    ];
    for (path, &c) in per_path(&attn_paths(dev), SPIKED) {
        let mut x = Inputs::random(&c, dev);
        let t = c.3;
        let spikes = Tensor::arange(t, (Kind::Int64, dev)).remainder(150).eq(7);
        let gain = spikes.to_kind(Kind::BFloat16) * 5.0 + 1.0;
        x.k = &x.k * gain.view([1, 1, t, 1]);
        check_against_reference(&c, &x, dev, path);
    }
});

#[cfg(lcm_cuda)]
fn check_against_reference(c: &Case, x: &Inputs, dev: Device, path: AttnPath) {
    use lcm::ops::swa::{kernel_supports, swa_cuda};
    let tag = format!("{path:?} {}", tag(c));
    let slopes = c.6.then(|| alibi_slopes(c.1, dev));
    let scale = 1.0 / (c.4 as f64).sqrt();
    assert!(
        kernel_supports(&x.q, &x.k, &x.v, slopes.as_ref(), scale),
        "{tag}: not supported"
    );
    let kernel =
        |l: &[Tensor]| swa_cuda(&l[0], &l[1], &l[2], c.5, slopes.as_ref(), scale, path).unwrap();
    let xs = [&x.q, &x.k, &x.v];
    let (got, want) = kernel_and_reference(
        kernel,
        |l| reference(c, &l[0], &l[1], &l[2], slopes.as_ref()),
        &xs,
        &x.dout,
    );
    assert_eq!(got[0].kind(), Kind::BFloat16, "{tag}: output dtype");
    let mut errs = Vec::new();
    for (i, name) in ["o", "dq", "dk", "dv"].iter().enumerate() {
        let what = format!("{tag} {name}");
        let (a, b) = (
            got[i].to_kind(Kind::Double).to_device(Device::Cpu),
            want[i].to_kind(Kind::Double).to_device(Device::Cpu),
        );
        let rel = (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30);
        let maxd = (&a - &b).abs().max().double_value(&[]);
        errs.push(format!("{name} rel {rel:.2e} max {maxd:.2e}"));
        // With window 0 (each query sees only itself) dq and dk are exactly zero in
        // the reference, so only the elementwise bound (1e-3 absolute there) applies.
        if b.abs().max().double_value(&[]) > 0.0 {
            assert_rel_norm(&what, &got[i], &want[i], 1e-2);
        }
        assert_close_scaled(&what, &got[i], &want[i]);
    }
    // Run to run, forward and backward are bit-identical (no atomics).
    poison_cuda_allocator(dev);
    let again = forward_and_grads(kernel, &xs, &x.dout);
    for (i, name) in ["o", "dq", "dk", "dv"].iter().enumerate() {
        assert!(again[i].equal(&got[i]), "{tag}: {name} not deterministic");
    }
    eprintln!("ok: {tag}: {}", errs.join(", "));
}

// Through the dispatchers on supported CUDA inputs the kernel runs (same bits), and
// `sliding_window_attention_cached` (queries after a cache) matches the reference.
#[cfg(lcm_cuda)]
common::cuda_test!(dispatch_on_cuda_uses_the_kernel, |dev| {
    use lcm::ops::swa::swa_cuda;
    let path = lcm::ops::path::attn_path_on(dev, 64);
    tch::manual_seed(17);
    let c: Case = (2, 4, 2, 200, 64, Some(64), true, true);
    let x = Inputs::random(&c, dev);
    let slopes = alibi_slopes(4, dev);
    let a = swa_cuda(&x.q, &x.k, &x.v, Some(64), Some(&slopes), 0.125, path).unwrap();
    assert!(sliding_window_attention(&x.q, &x.k, &x.v, 64, Some(&slopes), 0.125).equal(&a));
    let a = swa_cuda(&x.q, &x.k, &x.v, None, None, 0.125, path).unwrap();
    assert!(bidirectional_attention(&x.q, &x.k, &x.v, 0.125).equal(&a));
    // 50 queries after 150 cached positions.
    let qs = x.q.narrow(2, 150, 50);
    let got = lcm::ops::sliding_window_attention_cached(&qs, &x.k, &x.v, 64, Some(&slopes), 0.125);
    let want = sliding_window_attention_reference(
        &x.q.to_kind(Kind::Float),
        &x.k.to_kind(Kind::Float),
        &x.v.to_kind(Kind::Float),
        64,
        Some(&slopes),
        0.125,
    )
    .narrow(2, 150, 50);
    assert_rel_norm("cached", &got, &want, 1e-2);
    assert_close_scaled("cached", &got, &want);
});

/// Inputs the kernel does not take run the previous path: fp32 and head dim 32 (CPU and
/// CUDA) are the reference bit for bit.
#[test]
fn dispatch_falls_back_for_unsupported_inputs() {
    tch::manual_seed(18);
    for dev in cpu_and_cuda("dispatch_falls_back_for_unsupported_inputs") {
        for &(kind, d) in &[(Kind::Float, 64i64), (Kind::BFloat16, 32)] {
            if kind == Kind::BFloat16 && dev.is_cuda() {
                continue; // goes to SDPA on CUDA, not the reference
            }
            let mk = |h| Tensor::randn([2, h, 70, d], (kind, dev));
            let (q, k, v) = (mk(4), mk(2), mk(2));
            assert!(
                !lcm::ops::swa::kernel_supports(&q, &k, &v, None, 0.3) || dev == Device::Cpu,
                "{kind:?} D={d} should be unsupported"
            );
            let a = sliding_window_attention(&q, &k, &v, 16, None, 0.3);
            let b = sliding_window_attention_reference(&q, &k, &v, 16, None, 0.3);
            assert!(a.equal(&b), "{dev:?} {kind:?} D={d}: not the reference");
        }
    }
}

/// The bridge turns a libtorch exception into a Rust error naming the op.
#[cfg(lcm_cuda)]
#[test]
fn bridge_reports_errors() {
    let opts = (Kind::BFloat16, Device::Cpu);
    let q = Tensor::randn([1, 1, 4, 64], opts);
    let err = lcm::ops::swa::swa_cuda(&q, &q, &q, Some(4), None, 1.0, AttnPath::Mma)
        .unwrap_err()
        .to_string();
    assert!(err.contains("swa") && err.contains("CUDA device"), "{err}");
}
