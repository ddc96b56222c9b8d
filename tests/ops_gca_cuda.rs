//! The GCA CUDA kernels (`cuda/gca_fwd.cu`, `cuda/gca_bwd.cu`) against the reference, on
//! every kernel path the GPU has (`AttnPath`), in this one process: forward and every gradient
//! (dq, dk, dv, dweights) on fresh random inputs at many shapes (K not a power of two,
//! K_CTX not a multiple of the tile, Q of 1, 2 and 64, head dim 64 and 128, GQA, strided
//! views, softmax-off-by-one, zero weights for masked slots, several passes of query rows
//! per kv head), a poisoned allocator so unwritten outputs fail, run-to-run determinism of
//! the forward, and the dispatch's fallback to the reference for inputs the kernel does not
//! take (this part also runs on the CPU).
//!
//! The reference runs in fp32 on the same bf16 inputs (upcast), so the difference is the
//! kernel's bf16 rounding: P (and dS) rounded to bf16 before their matrix products and the
//! outputs rounded to bf16 (2^-9 relative). Tolerances (bf16 kernel vs fp32 reference):
//! relative L2 error ||got - want|| / ||want|| <= 1e-2 for o, dq, dk, dv and dweights, and
//! elementwise |got - want| <= 3e-2 * max|want| + 1e-3 (catches a wrong row that the norm
//! would average away). NaN never passes (the poison is NaN).

mod common;

use common::{
    assert_attention_dtypes, assert_close_scaled, assert_outputs_close, assert_rel_norm,
    attn_paths, kernel_and_reference, per_path, poison_cuda_allocator, unsupported_inputs,
};
use lcm::ops::path::AttnPath;
use lcm::ops::{gca, gca_reference};
use tch::{Device, Kind, Tensor};

/// (B, Hq, Hkv, Q, K, K_CTX, D, softmax_one, zero some weights, strided views)
type Case = (i64, i64, i64, i64, i64, i64, i64, bool, bool, bool);

const CASES: &[Case] = &[
    // The training shape, scaled down in B.
    (3, 4, 4, 64, 8, 64, 64, false, false, false),
    // GQA, G*Q = 128 > 64 rows per pass (fp32 scratch path), K = 3, masked slots.
    (3, 4, 2, 64, 3, 64, 64, false, true, true),
    // K_CTX = 65: two forward tiles, the 128-key backward tile, masked tail.
    (2, 4, 4, 64, 8, 65, 64, true, false, false),
    // K_CTX = 16 (the tiny CPU configs), head dim 128, one chunk.
    (2, 2, 2, 64, 1, 16, 128, false, false, true),
    // Inference-sized Q with K = 32, softmax_one, zeros in the weights.
    (2, 4, 2, 1, 32, 64, 128, true, true, false),
    (3, 4, 4, 2, 8, 16, 64, false, true, true),
    // G = 2 and K = 32.
    (2, 2, 1, 64, 32, 64, 64, true, false, false),
    // Odd Q, K_CTX = 65, head dim 128.
    (2, 3, 3, 17, 3, 65, 128, false, true, false),
    // 5 (b, kv head) units (no multiple of the warp-specialised forward's 2 or 3 per CTA),
    // G = 2 with Q = 20 (one partial pass), K = 7 (more chunks than its ring's 4 stages).
    (5, 2, 1, 20, 7, 64, 64, true, true, false),
    // G = 4, Q = 40: 160 rows in three passes, the last partial; K_CTX = 128.
    (1, 8, 2, 40, 5, 128, 64, true, true, true),
];

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    dout: Tensor,
}

fn inputs(c: &Case, dev: Device) -> Inputs {
    let &(b, hq, hkv, nq, nk, kctx, d, _, zero_w, strided) = c;
    let opts = (Kind::BFloat16, dev);
    let (q, k, v) = if strided {
        // The layouts ops::gca gets from the model: q a transposed view, k/v permuted views
        // of (B, K, K_CTX, Hkv, D) gathered memory.
        let q = Tensor::randn([b, nq, hq, d], opts).transpose(1, 2);
        let kv = |_: ()| Tensor::randn([b, nk, kctx, hkv, d], opts).permute([0, 3, 1, 2, 4]);
        (q, kv(()), kv(()))
    } else {
        (
            Tensor::randn([b, hq, nq, d], opts),
            Tensor::randn([b, hkv, nk, kctx, d], opts),
            Tensor::randn([b, hkv, nk, kctx, d], opts),
        )
    };
    let mut w = Tensor::rand([b, nk], (Kind::Float, dev)).softmax(-1, Kind::Float);
    if zero_w {
        // Masked slots (the first chunks have fewer than K chunks to read): weight 0.
        let keep = Tensor::rand([b, nk], (Kind::Float, dev)).gt(0.4);
        w *= keep.to_kind(Kind::Float);
    }
    let dout = Tensor::randn([b, hq, nq, d], opts);
    Inputs { q, k, v, w, dout }
}

// Forward and gradients: [o, dq, dk, dv, dw].
#[cfg(lcm_cuda)]
common::cuda_test!(cuda_kernel_matches_reference_forward_and_gradients, |dev| {
    use lcm::ops::gca::{gca_cuda, kernel_supports};
    tch::manual_seed(6);
    for (path, c) in per_path(&attn_paths(dev), CASES) {
        let &(b, hq, hkv, nq, nk, kctx, d, one, zero_w, strided) = c;
        let tag = format!(
            "{path:?} B={b} Hq={hq} Hkv={hkv} Q={nq} K={nk} K_CTX={kctx} D={d} one={one} zero_w={zero_w} strided={strided}"
        );
        let x = inputs(c, dev);
        assert!(
            kernel_supports(&x.q, &x.k, &x.v, &x.w),
            "{tag}: not supported"
        );
        let scale = 1.0 / (d as f64).sqrt();
        let (got, want) = kernel_and_reference(
            |l| gca_cuda(&l[0], &l[1], &l[2], &l[3], scale, one, path).unwrap(),
            |l| gca_reference(&l[0], &l[1], &l[2], &l[3], scale, one),
            &[&x.q, &x.k, &x.v, &x.w],
            &x.dout,
        );
        assert_attention_dtypes(&tag, &got);
        assert_outputs_close(&tag, &["o", "dq", "dk", "dv", "dweights"], &got, &want);
        // Run to run, the forward is bit-identical.
        poison_cuda_allocator(dev);
        let again = tch::no_grad(|| gca_cuda(&x.q, &x.k, &x.v, &x.w, scale, one, path).unwrap());
        assert!(again.equal(&got[0]), "{tag}: forward not deterministic");
        eprintln!("ok: {tag}");
    }
});

// The forward alone takes any K_CTX (tiles of 64 keys with an online softmax); the
// backward stops at 128, so dispatch sends such inputs to the reference.
#[cfg(lcm_cuda)]
common::cuda_test!(cuda_forward_takes_long_chunks, |dev| {
    use lcm::ops::gca::gca_cuda_forward_raw;
    tch::manual_seed(7);
    for (path, &(kctx, one)) in per_path(&attn_paths(dev), &[(200i64, false), (257, true)]) {
        let c: Case = (2, 4, 2, 64, 3, kctx, 64, one, true, false);
        let x = inputs(&c, dev);
        let want = gca_reference(
            &x.q.to_kind(Kind::Float),
            &x.k.to_kind(Kind::Float),
            &x.v.to_kind(Kind::Float),
            &x.w,
            0.125,
            one,
        );
        poison_cuda_allocator(dev);
        let (got, _) = gca_cuda_forward_raw(&x.q, &x.k, &x.v, &x.w, 0.125, one, path).unwrap();
        let what = format!("{path:?} K_CTX={kctx} one={one} forward");
        assert_rel_norm(&what, &got, &want, 1e-2);
        assert_close_scaled(&what, &got, &want);
    }
});

/// Inputs the kernel does not take run the reference, bit for bit: fp32, head dim 32,
/// K_CTX 129, CPU tensors.
#[test]
fn dispatch_falls_back_to_the_reference() {
    tch::manual_seed(8);
    for (dev, kind, d, kctx) in unsupported_inputs("dispatch_falls_back_to_the_reference", 129) {
        let opts = (kind, dev);
        let q = Tensor::randn([2, 2, 3, d], opts);
        let k = Tensor::randn([2, 2, 2, kctx, d], opts);
        let v = Tensor::randn([2, 2, 2, kctx, d], opts);
        let w = Tensor::rand([2, 2], (Kind::Float, dev));
        assert!(
            !lcm::ops::gca::kernel_supports(&q, &k, &v, &w) || dev == Device::Cpu,
            "{kind:?} D={d} K_CTX={kctx} should be unsupported"
        );
        let a = gca(&q, &k, &v, &w, 0.3, false);
        let b = gca_reference(&q, &k, &v, &w, 0.3, false);
        assert!(
            a.equal(&b),
            "{dev:?} {kind:?} D={d} K_CTX={kctx}: not the reference"
        );
    }
}

// Through the dispatcher on supported CUDA inputs the kernel runs (same bits).
#[cfg(lcm_cuda)]
common::cuda_test!(dispatch_on_cuda_uses_the_kernel, |dev| {
    let x = inputs(&(2, 4, 4, 64, 3, 64, 64, false, false, true), dev);
    let path = lcm::ops::path::attn_path_on(dev, 64);
    let a = lcm::ops::gca::gca_cuda(&x.q, &x.k, &x.v, &x.w, 0.125, false, path).unwrap();
    assert!(gca(&x.q, &x.k, &x.v, &x.w, 0.125, false).equal(&a));
});

/// The bridge turns a libtorch exception into a Rust error naming the op.
#[cfg(lcm_cuda)]
#[test]
fn bridge_reports_errors() {
    let opts = (Kind::BFloat16, Device::Cpu);
    let q = Tensor::randn([1, 1, 1, 64], opts);
    let k = Tensor::randn([1, 1, 1, 4, 64], opts);
    let w = Tensor::ones([1, 1], (Kind::Float, Device::Cpu));
    let err = lcm::ops::gca::gca_cuda(&q, &k, &k, &w, 1.0, false, AttnPath::Mma)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gca") && err.contains("CUDA device"), "{err}");
}

// The memory-reading form (`gca_gathered`, memory `(M, K_CTX, Hkv, D)` and int64 indices
// `(B, K)`, repeats included so that the memory's gradient sums chunks): its forward is
// bit-identical to the kernel on the gathered chunks (the TMA gather on Hopper at head dim
// 64 and K_CTX 64; the host gather elsewhere), and every gradient (q, memory k and v,
// weights) matches the reference within the tolerances above.
#[cfg(lcm_cuda)]
common::cuda_test!(gathered_memory_matches_gathered_chunks, |dev| {
    use lcm::ops::gca::{gather_chunks, gca_cuda, gca_gathered_cuda, gca_gathered_reference};
    tch::manual_seed(9);
    // (B query chunks, M memory rows, Hq, Hkv, Q, K, K_CTX, D, softmax_one)
    type Gathered = (i64, i64, i64, i64, i64, i64, i64, i64, bool);
    const GATHERED: &[Gathered] = &[
        (24i64, 40i64, 4i64, 4i64, 64i64, 8i64, 64i64, 64i64, false), // the TMA gather
        (7, 9, 4, 2, 64, 3, 64, 64, true),                            // GQA, K = 3
        (5, 6, 2, 2, 16, 5, 16, 64, false),                           // K_CTX 16: the host gather
        (3, 4, 2, 1, 8, 2, 64, 128, false), // head dim 128: the host gather
    ];
    for (path, &(b, m, hq, hkv, nq, nk, kctx, d, one)) in per_path(&attn_paths(dev), GATHERED) {
        let tag =
            format!("{path:?} B={b} M={m} Hq={hq} Hkv={hkv} Q={nq} K={nk} K_CTX={kctx} D={d}");
        let opts = (Kind::BFloat16, dev);
        let q = Tensor::randn([b, hq, nq, d], opts);
        let mk = Tensor::randn([m, kctx, hkv, d], opts);
        let mv = Tensor::randn([m, kctx, hkv, d], opts);
        let idx = Tensor::randint(m, [b, nk], (Kind::Int64, dev));
        let w = Tensor::rand([b, nk], (Kind::Float, dev)).softmax(-1, Kind::Float);
        let dout = Tensor::randn([b, hq, nq, d], opts);
        let scale = 1.0 / (d as f64).sqrt();

        let (got, want) = kernel_and_reference(
            |l| gca_gathered_cuda(&l[0], &l[1], &l[2], &idx, &l[3], scale, one, path).unwrap(),
            |l| gca_gathered_reference(&l[0], &l[1], &l[2], &idx, &l[3], scale, one),
            &[&q, &mk, &mv, &w],
            &dout,
        );
        let plain = tch::no_grad(|| {
            gca_cuda(
                &q,
                &gather_chunks(&mk, &idx),
                &gather_chunks(&mv, &idx),
                &w,
                scale,
                one,
                path,
            )
            .unwrap()
        });
        assert!(
            got[0].equal(&plain),
            "{tag}: forward differs from the gathered chunks'"
        );
        let names = ["o", "dq", "dmem_k", "dmem_v", "dweights"];
        assert_outputs_close(&tag, &names, &got, &want);
        eprintln!("ok: {tag}");
    }
});
