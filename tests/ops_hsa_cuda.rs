//! The HSA CUDA kernel (`cuda/hsa_fwd.cu`, `cuda/hsa_bwd.cu`) against the reference: forward and every gradient
//! (dq, dk, dv, dweights) on fresh random inputs at several shapes (K not a power of two
//! and K = 32, chunk size 16, 32 and 64, G = 1, 4, 16 (tensor-core forward) and 32
//! (CUDA-core forward), head dim 64 and 128,
//! softmax-off-by-one on and off), with indices drawn at random among each token's visible
//! chunks, most recent first (so the first chunk's tokens have only empty slots, -1), plus
//! extra empty slots, zero weights and duplicated indices; a poisoned allocator so unwritten
//! outputs fail; run-to-run determinism of the forward and of every gradient; the dispatch's fallback to the
//! reference for inputs the kernel does not take (this part also runs on the CPU).
//!
//! The reference runs in fp32 on the same bf16 inputs (upcast); the kernel computes in fp32
//! on tensor cores (bf16 operands: P and dS are rounded to bf16 for their products) and
//! rounds its outputs to bf16 (2^-9 relative; dk/dv are summed per chunk in fp32 registers
//! and rounded once). Tolerances (bf16 kernel vs fp32 reference): relative L2 error
//! ||got - want|| / ||want|| <= 1e-2 for o, dq, dk, dv and dweights, and elementwise
//! |got - want| <= 3e-2 * max|want| + 1e-3. NaN never passes (the poison is NaN). Empty
//! slots must get exactly zero weight gradient. Both forward paths (`HsaPath`: tensor
//! cores where the shape allows, CUDA cores) run every case, in this one process.

mod common;

use common::{
    assert_attention_dtypes, assert_outputs_close, forward_and_grads, kernel_and_reference,
    per_path, poison_cuda_allocator, unsupported_inputs,
};
use lcm::bench::kernels::hsa_random_indices;
use lcm::ops::path::HsaPath;
use lcm::ops::{hsa, hsa_reference};
use tch::{Device, Kind, Tensor};

/// (N, Hq, H, D, chunk S, chunks C, K, softmax_one)
type Case = (i64, i64, i64, i64, i64, i64, i64, bool);

const CASES: &[Case] = &[
    // G = 4, chunk 64, K = 5.
    (2, 4, 1, 64, 64, 6, 5, false),
    // G = 16 (the benchmark's group), softmax_one, K = 8.
    (1, 16, 1, 64, 64, 5, 8, true),
    // G = 1, head dim 128, chunk 16, K = 3.
    (2, 2, 2, 128, 16, 9, 3, true),
    // G = 4 with two kv heads, chunk 32, head dim 128, K = 7.
    (1, 8, 2, 128, 32, 4, 7, false),
    // K = 32 slots, chunk 16, many chunks.
    (1, 4, 4, 64, 16, 40, 32, false),
    // G = 16, head dim 128, chunk 64, softmax_one, K = 6.
    (1, 16, 1, 128, 64, 4, 6, true),
    // G = 32: the CUDA-core forward (the tensor-core one takes G <= 16).
    (1, 32, 1, 64, 16, 4, 3, true),
];

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    idx: Tensor,
    dout: Tensor,
    /// Slots with index -1.
    empty: Tensor,
}

fn inputs(c: &Case, dev: Device) -> Inputs {
    let &(n, hq, h, d, s, nc, nk, _) = c;
    let l = nc * s; // one query per memory position
    let opts = (Kind::BFloat16, dev);
    let q = Tensor::randn([n, l, hq, d], opts);
    let k = Tensor::randn([n, l, h, d], opts);
    let v = Tensor::randn([n, l, h, d], opts);
    let mut idx = hsa_random_indices(n, l, h, nk, s, nc, dev);
    let fo = (Kind::Float, dev);
    if nk >= 2 {
        // Duplicates: slot 1 repeats slot 0 for a quarter of the tokens.
        let dup = Tensor::rand([n, l, h, 1], fo).lt(0.25);
        let s1 = idx.narrow(3, 0, 1).where_self(&dup, &idx.narrow(3, 1, 1));
        idx = Tensor::cat(&[idx.narrow(3, 0, 1), s1, idx.narrow(3, 2, nk - 2)], 3);
    }
    // Extra empty slots.
    idx = idx.masked_fill(&Tensor::rand([n, l, h, nk], fo).lt(0.15), -1);
    let empty = idx.lt(0);
    // Weights: softmax with some zeros (masked slots in the model's sense).
    let keep = Tensor::rand([n, l, h, nk], fo)
        .gt(0.15)
        .to_kind(Kind::Float);
    let w = Tensor::rand([n, l, h, nk], fo).softmax(-1, Kind::Float) * keep;
    let dout = Tensor::randn([n, l, hq, d], opts);
    Inputs {
        q,
        k,
        v,
        w,
        idx,
        dout,
        empty,
    }
}

// Forward and gradients: [o, dq, dk, dv, dw].
#[cfg(lcm_cuda)]
common::cuda_test!(cuda_kernel_matches_reference_forward_and_gradients, |dev| {
    use lcm::ops::hsa::{hsa_cuda, kernel_supports};
    tch::manual_seed(16);
    for (path, c) in per_path(&HsaPath::ALL, CASES) {
        let &(n, hq, h, d, s, nc, nk, one) = c;
        let tag = format!("{path:?} N={n} Hq={hq} H={h} D={d} S={s} C={nc} K={nk} one={one}");
        let x = inputs(c, dev);
        assert!(
            kernel_supports(&x.q, &x.k, &x.v, &x.w, &x.idx, s),
            "{tag}: not supported"
        );
        let scale = 1.0 / (d as f64).sqrt();
        let kernel = |l: &[Tensor]| {
            hsa_cuda(&l[0], &l[1], &l[2], &l[3], &x.idx, s, scale, one, path).unwrap()
        };
        let xs = [&x.q, &x.k, &x.v, &x.w];
        let (got, want) = kernel_and_reference(
            kernel,
            |l| hsa_reference(&l[0], &l[1], &l[2], &l[3], &x.idx, s, scale, one),
            &xs,
            &x.dout,
        );
        assert_attention_dtypes(&tag, &got);
        assert_outputs_close(&tag, &["o", "dq", "dk", "dv", "dweights"], &got, &want);
        let empty_dw = got[4]
            .masked_select(&x.empty)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert_eq!(empty_dw, 0.0, "{tag}: empty slots got weight gradient");
        // Run to run, the forward is bit-identical.
        poison_cuda_allocator(dev);
        let again =
            tch::no_grad(|| hsa_cuda(&x.q, &x.k, &x.v, &x.w, &x.idx, s, scale, one, path).unwrap());
        assert!(again.equal(&got[0]), "{tag}: forward not deterministic");
        // And so is the backward (no atomics: dk/dv are summed per chunk in a fixed order).
        poison_cuda_allocator(dev);
        let again = forward_and_grads(kernel, &xs, &x.dout);
        for (i, name) in ["dq", "dk", "dv", "dweights"].iter().enumerate() {
            assert!(
                again[i + 1].equal(&got[i + 1]),
                "{tag}: {name} not deterministic"
            );
        }
        eprintln!("ok: {tag}");
    }
});

/// Inputs the kernel does not take run the reference, bit for bit: fp32, head dim 32,
/// chunk size 128, CPU tensors.
#[test]
fn dispatch_falls_back_to_the_reference() {
    tch::manual_seed(17);
    for (dev, kind, d, s) in unsupported_inputs("dispatch_falls_back_to_the_reference", 128) {
        let opts = (kind, dev);
        let (n, l, nk) = (1, 2 * s, 2);
        let q = Tensor::randn([n, l, 2, d], opts);
        let k = Tensor::randn([n, l, 1, d], opts);
        let v = Tensor::randn([n, l, 1, d], opts);
        let w = Tensor::rand([n, l, 1, nk], (Kind::Float, dev));
        let idx = Tensor::zeros([n, l, 1, nk], (Kind::Int64, dev));
        assert!(
            !lcm::ops::hsa::kernel_supports(&q, &k, &v, &w, &idx, s) || dev == Device::Cpu,
            "{kind:?} D={d} S={s} should be unsupported"
        );
        let a = hsa(&q, &k, &v, &w, &idx, s, 0.3, false);
        let b = hsa_reference(&q, &k, &v, &w, &idx, s, 0.3, false);
        assert!(
            a.equal(&b),
            "{dev:?} {kind:?} D={d} S={s}: not the reference"
        );
    }
}

// Through the dispatcher on supported CUDA inputs the kernel runs (same bits).
#[cfg(lcm_cuda)]
common::cuda_test!(dispatch_on_cuda_uses_the_kernel, |dev| {
    let x = inputs(&(1, 4, 1, 64, 64, 3, 3, false), dev);
    let path = lcm::ops::path::hsa_path(4, 64, 0.125);
    let a =
        lcm::ops::hsa::hsa_cuda(&x.q, &x.k, &x.v, &x.w, &x.idx, 64, 0.125, false, path).unwrap();
    assert!(hsa(&x.q, &x.k, &x.v, &x.w, &x.idx, 64, 0.125, false).equal(&a));
});

/// The bridge turns a libtorch exception into a Rust error naming the op.
#[cfg(lcm_cuda)]
#[test]
fn bridge_reports_errors() {
    let opts = (Kind::BFloat16, Device::Cpu);
    let q = Tensor::randn([1, 4, 1, 64], opts);
    let k = Tensor::randn([1, 4, 1, 64], opts);
    let w = Tensor::ones([1, 4, 1, 1], (Kind::Float, Device::Cpu));
    let idx = Tensor::zeros([1, 4, 1, 1], (Kind::Int64, Device::Cpu));
    let err = lcm::ops::hsa::hsa_cuda(&q, &k, &k, &w, &idx, 4, 1.0, false, HsaPath::Mma)
        .unwrap_err()
        .to_string();
    assert!(err.contains("hsa") && err.contains("CUDA device"), "{err}");
}
