//! The fused cross-entropy CUDA kernels (`cuda/xent.cu`) against the reference: per-token
//! loss and dlogits for rows N in {1, 7, 300, 4096} by vocabularies V in {8, 1000, 50277,
//! 50304, 131072}, fp32 and bf16, with ignored targets (and a row of nothing but), the first
//! and last column as targets, a random loss gradient and the expanded one of a sum or mean;
//! logits misaligned in memory (every offset within a 16-byte line), non-contiguous and with
//! leading axes; targets out of range; outputs landing in NaN-poisoned memory, so that an
//! element left unwritten fails; forward and backward bit-identical run to run; the dispatch
//! and the trainer's loss on a GPU.
//!
//! Tolerances. Both sides compute in fp32 from the same logits (the reference upcasts bf16
//! exactly), so the loss has the same bound for both dtypes: its error is a few fp32 ulps of
//! the log-sum-exp, whose size is at most max|x| + ln V; the bound is
//! e = 2e-6 * (max|x| + ln V + 1) absolute. dlogits = (p - onehot) * dloss with p = exp(x -
//! lse): an absolute error of order e in the exponent is a relative error e in p, so fp32
//! dlogits are within e * |want| + e * max|dloss| (the second term for the target's entry,
//! where p - 1 cancels). bf16 dlogits are rounded once from fp32: a rounding-boundary flip
//! is 2^-8 relative, so their rtol is 1e-2 + e. NaN never passes.

// Without the kernels (no nvcc) only the helpers remain, unused.
#![cfg_attr(not(lcm_cuda), allow(dead_code, unused_imports))]

mod common;

use common::poison_cuda_allocator;
use lcm::ops::xent::IGNORE;
use lcm::ops::{cross_entropy, cross_entropy_reference};
use tch::{Device, Kind, Tensor};

const ROWS: [i64; 4] = [1, 7, 300, 4096];
const VOCABS: [i64; 5] = [8, 1000, 50277, 50304, 131072];

fn targets(n: i64, v: i64, ignore_every: i64, dev: Device) -> Tensor {
    common::xent_targets(n, v, ignore_every).to_device(dev)
}

/// max(|got - want| - rtol |want|) <= atol, computed on the device (the large cases are
/// gigabytes); NaN anywhere fails.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let (a, b) = (got.to_kind(Kind::Float), want.to_kind(Kind::Float));
    let diff = (&a - &b).abs();
    let excess = (&diff - b.abs() * rtol).max().double_value(&[]);
    let max_diff = diff.max().double_value(&[]);
    assert!(
        excess <= atol,
        "{what}: max(|got-want| - {rtol:.1e}|want|) = {excess:.3e} exceeds {atol:.1e} \
         (max |got-want| {max_diff:.3e})"
    );
}

/// The loss bound `e` of the module comment for logits `x` of vocabulary `v`.
fn error_scale(x: &Tensor, v: i64) -> f64 {
    let xmax = x.abs().max().to_kind(Kind::Float).double_value(&[]);
    2e-6 * (xmax + (v as f64).ln() + 1.0)
}

/// Loss, then dlogits for `sum(loss * dloss)` (`dloss` None: for `sum(loss)`, whose gradient
/// arrives expanded with stride 0).
fn loss_and_grad(
    f: impl Fn(&Tensor, &Tensor) -> Tensor,
    x: &Tensor,
    t: &Tensor,
    dloss: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let xg = x.detach().set_requires_grad(true);
    let loss = f(&xg, t);
    let objective = match dloss {
        Some(d) => (&loss * d).sum(Kind::Float),
        None => loss.sum(Kind::Float),
    };
    let g = Tensor::run_backward(&[&objective], &[&xg], false, false);
    (loss.detach(), g[0].shallow_clone())
}

/// NaN in the memory the next allocations of these shapes get (the caching allocator
/// hands back a freed block of the same size first), and in both allocator pools.
fn poison(dev: Device, shapes: &[(&[i64], Kind)]) {
    poison_cuda_allocator(dev);
    let blocks: Vec<Tensor> = shapes
        .iter()
        .map(|(s, k)| Tensor::full(*s, f64::NAN, (*k, dev)))
        .collect();
    drop(blocks);
}

/// Compares the kernel with the reference on `x`, `t` (loss with a random gradient, then the
/// gradient of the plain sum), and checks that the kernel repeats itself bit for bit.
#[cfg(lcm_cuda)]
fn check(tag: &str, x: &Tensor, t: &Tensor) {
    use lcm::ops::xent::cross_entropy_cuda;
    let dev = x.device();
    let kind = x.kind();
    let v = *x.size().last().unwrap();
    let lead = t.size();
    let dloss = Tensor::randn(lead.as_slice(), (Kind::Float, dev));
    let e = error_scale(x, v);
    let grad_rtol = if kind == Kind::BFloat16 { 1e-2 + e } else { e };
    let x_shape = x.size();

    let kernel = |a: &Tensor, b: &Tensor| cross_entropy_cuda(a, b).unwrap();
    poison(dev, &[(&x_shape, kind), (&lead, Kind::Float)]);
    let (loss, grad) = loss_and_grad(kernel, x, t, Some(&dloss));
    let (want_loss, want_grad) = loss_and_grad(cross_entropy_reference, x, t, Some(&dloss));
    assert_eq!(loss.kind(), Kind::Float, "{tag}: loss dtype");
    assert_eq!(grad.kind(), kind, "{tag}: dlogits dtype");
    assert_eq!(grad.size(), x_shape, "{tag}: dlogits shape");
    assert_close(&format!("{tag}: loss"), &loss, &want_loss, e, 0.0);
    let gmax = dloss.abs().max().double_value(&[]);
    assert_close(
        &format!("{tag}: dlogits"),
        &grad,
        &want_grad,
        e * gmax,
        grad_rtol,
    );

    // Run to run, bit-identical (no atomics; a fixed reduction order).
    poison(dev, &[(&x_shape, kind), (&lead, Kind::Float)]);
    let (loss2, grad2) = loss_and_grad(kernel, x, t, Some(&dloss));
    assert!(loss2.equal(&loss), "{tag}: forward not deterministic");
    assert!(grad2.equal(&grad), "{tag}: backward not deterministic");

    // The gradient of a plain sum reaches the kernel expanded (stride 0).
    poison(dev, &[(&x_shape, kind)]);
    let (_, grad) = loss_and_grad(kernel, x, t, None);
    let (_, want_grad) = loss_and_grad(cross_entropy_reference, x, t, None);
    assert_close(
        &format!("{tag}: dlogits of sum"),
        &grad,
        &want_grad,
        e,
        grad_rtol,
    );
}

#[cfg(lcm_cuda)]
common::cuda_test!(cuda_kernel_matches_reference, |dev| {
    tch::manual_seed(11);
    for kind in [Kind::Float, Kind::BFloat16] {
        for n in ROWS {
            for v in VOCABS {
                let x = (Tensor::randn([n, v], (Kind::Float, dev)) * 3.0).to_kind(kind);
                let t = targets(n, v, 5, dev);
                let tag = format!("{kind:?} N={n} V={v}");
                check(&tag, &x, &t);
                eprintln!("ok: {tag}");
            }
        }
        // Every target ignored: zeros, without reading the logits.
        let x = Tensor::randn([7, 1000], (kind, dev));
        let t = Tensor::full([7], IGNORE, (Kind::Int64, dev));
        check(&format!("{kind:?} all ignored"), &x, &t);
        // Large logits far from zero (the max must be subtracted) and a peaked softmax.
        let x = (Tensor::randn([300, 50277], (Kind::Float, dev)) * 10.0 + 500.0).to_kind(kind);
        check(
            &format!("{kind:?} offset 500"),
            &x,
            &targets(300, 50277, 5, dev),
        );
        let x = (Tensor::randn([64, 1000], (Kind::Float, dev)) * 40.0).to_kind(kind);
        check(
            &format!("{kind:?} scale 40"),
            &x,
            &targets(64, 1000, 5, dev),
        );
    }
});

// Logits starting at every element offset within a 16-byte line (the forward splits each
// row at its own boundary; the backward, whose gradient buffer is aligned, falls back to
// the scalar kernel), a transposed (non-contiguous) view, and leading axes (B, T, V).
#[cfg(lcm_cuda)]
common::cuda_test!(
    cuda_kernel_takes_misaligned_strided_and_batched_logits,
    |dev| {
        tch::manual_seed(12);
        for kind in [Kind::Float, Kind::BFloat16] {
            let per_line = 16 / kind.elt_size_in_bytes() as i64;
            for (n, v) in [(5i64, 1000i64), (3, 50277), (4, 13)] {
                let flat =
                    (Tensor::randn([n * v + per_line], (Kind::Float, dev)) * 3.0).to_kind(kind);
                for offset in 0..=per_line {
                    let x = flat.narrow(0, offset, n * v).view([n, v]);
                    let t = targets(n, v, 3, dev);
                    check(&format!("{kind:?} N={n} V={v} offset {offset}"), &x, &t);
                }
            }
            let x = (Tensor::randn([50277, 6], (Kind::Float, dev)) * 3.0)
                .to_kind(kind)
                .transpose(0, 1);
            check(
                &format!("{kind:?} transposed"),
                &x,
                &targets(6, 50277, 3, dev),
            );
            let x = (Tensor::randn([2, 150, 1000], (Kind::Float, dev)) * 3.0).to_kind(kind);
            let t = targets(300, 1000, 4, dev).view([2, 150]);
            check(&format!("{kind:?} (B, T, V)"), &x, &t);
        }
    }
);

// A target outside [0, V) other than IGNORE gives a NaN loss and a zero gradient row, as
// the reference does; the other rows are unaffected.
#[cfg(lcm_cuda)]
common::cuda_test!(cuda_out_of_range_target_gives_nan_loss, |dev| {
    use lcm::ops::xent::cross_entropy_cuda;
    tch::manual_seed(13);
    let v = 1000i64;
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = (Tensor::randn([6, v], (Kind::Float, dev)) * 3.0).to_kind(kind);
        let t = Tensor::from_slice(&[3i64, v, -1, IGNORE, 7, -7]).to_device(dev);
        let (loss, grad) = loss_and_grad(|a, b| cross_entropy_cuda(a, b).unwrap(), &x, &t, None);
        let l: Vec<f64> = Vec::try_from(loss.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap();
        assert!(l[0].is_finite() && l[4].is_finite(), "{kind:?}: {l:?}");
        assert!(
            l[1].is_nan() && l[2].is_nan() && l[5].is_nan(),
            "{kind:?}: {l:?}"
        );
        assert_eq!(l[3], 0.0, "{kind:?}");
        let bad = Tensor::from_slice(&[1i64, 2, 3, 5]).to_device(dev);
        let zero = grad
            .index_select(0, &bad)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert_eq!(zero, 0.0, "{kind:?}: gradient of invalid or ignored rows");
        let good = Tensor::from_slice(&[0i64, 4]).to_device(dev);
        let (want_loss, want_grad) = loss_and_grad(cross_entropy_reference, &x, &t, None);
        let e = error_scale(&x, v);
        let rtol = if kind == Kind::BFloat16 { 1e-2 + e } else { e };
        assert_close(
            "valid rows' loss",
            &loss.index_select(0, &good),
            &want_loss.index_select(0, &good),
            e,
            0.0,
        );
        assert_close("dlogits", &grad, &want_grad, e, rtol);
        assert!(
            want_loss.isnan().equal(&loss.isnan()),
            "{kind:?}: NaN rows differ from the reference's"
        );
    }
});

// Through the dispatcher a CUDA tensor of fp32 or bf16 runs the kernel (same bits); fp16
// runs the reference. The trainer's mean over scored targets on a GPU matches the
// reference's, gradient included.
#[cfg(lcm_cuda)]
common::cuda_test!(dispatch_on_cuda_uses_the_kernel, |dev| {
    use lcm::ops::xent::cross_entropy_cuda;
    use lcm::train::trainer::lm_loss;
    tch::manual_seed(14);
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = Tensor::randn([64, 50304], (kind, dev));
        let t = targets(64, 50304, 4, dev);
        assert!(cross_entropy(&x, &t).equal(&cross_entropy_cuda(&x, &t).unwrap()));
    }
    let x = Tensor::randn([16, 1000], (Kind::Half, dev));
    let t = targets(16, 1000, 4, dev);
    assert!(cross_entropy(&x, &t).equal(&cross_entropy_reference(&x, &t)));

    let x = (Tensor::randn([2, 300, 50304], (Kind::Float, dev)) * 3.0).to_kind(Kind::BFloat16);
    let t = targets(600, 50304, 4, dev).view([2, 300]);
    let (got, grad) = {
        let xg = x.detach().set_requires_grad(true);
        let l = lm_loss(&xg, &t);
        let g = Tensor::run_backward(&[&l], &[&xg], false, false);
        (l.double_value(&[]), g[0].shallow_clone())
    };
    let (want, want_grad) = {
        let xg = x.detach().set_requires_grad(true);
        let per = cross_entropy_reference(&xg, &t);
        let l = per.sum(Kind::Float) / t.ne(IGNORE).sum(Kind::Float);
        let g = Tensor::run_backward(&[&l], &[&xg], false, false);
        (l.double_value(&[]), g[0].shallow_clone())
    };
    let e = error_scale(&x, 50304);
    assert!((got - want).abs() <= e, "lm_loss {got} vs {want}");
    // The mean's gradient reaches each row as 1 / (scored targets).
    let dloss = 1.0 / t.ne(IGNORE).sum(Kind::Float).double_value(&[]);
    assert_close("lm_loss dlogits", &grad, &want_grad, e * dloss, 1e-2 + e);
});

// The bridge's checks on CUDA inputs name the bad input.
#[cfg(lcm_cuda)]
common::cuda_test!(bridge_reports_errors_on_cuda, |dev| {
    use lcm::ops::xent::{cross_entropy_cuda, cross_entropy_cuda_forward_raw};
    let x = Tensor::randn([4, 8], (Kind::Float, dev));
    let err = |r: lcm::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(cross_entropy_cuda(
        &x,
        &Tensor::zeros([4], (Kind::Int, dev)),
    ));
    assert!(e.contains("int64"), "{e}");
    let e = err(cross_entropy_cuda(
        &x,
        &Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
    ));
    assert!(
        e.contains("targets on cpu") || e.contains("CUDA device"),
        "{e}"
    );
    let e = err(cross_entropy_cuda(
        &x,
        &Tensor::zeros([2, 2], (Kind::Int64, dev)),
    ));
    assert!(e.contains("do not match"), "{e}");
    let e = err(cross_entropy_cuda(
        &Tensor::zeros([4, 8], (Kind::Half, dev)),
        &Tensor::zeros([4], (Kind::Int64, dev)),
    ));
    assert!(e.contains("unsupported dtype"), "{e}");
    let e = cross_entropy_cuda_forward_raw(
        &Tensor::zeros([4, 0], (Kind::Float, dev)),
        &Tensor::zeros([4], (Kind::Int64, dev)),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vocabulary size 0"), "{e}");
    // No rows: empty results.
    let l = cross_entropy_cuda(
        &Tensor::zeros([0, 8], (Kind::Float, dev)),
        &Tensor::zeros([0], (Kind::Int64, dev)),
    )
    .unwrap();
    assert_eq!(l.size(), [0]);
});
