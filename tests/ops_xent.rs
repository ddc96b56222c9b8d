//! Cross-entropy per token (CPU): the reference against PyTorch's `cross_entropy_loss`
//! (ignore index included), its autograd gradient against the analytic
//! `(softmax - onehot) * dloss`, out-of-range targets, the dispatch, the trainer's mean over
//! the scored targets, and the bridge's error path. The CUDA kernel's tests are in
//! tests/ops_xent_cuda.rs.

mod common;

use common::assert_close;
use lcm::ops::xent::IGNORE;
use lcm::ops::{cross_entropy, cross_entropy_reference};
use tch::{Device, Kind, Reduction, Tensor};

fn targets(n: i64, v: i64, ignore_every: i64) -> Tensor {
    common::xent_targets(n, v, ignore_every)
}

/// Per-token losses equal PyTorch's (log_softmax then nll_loss) bit for bit on fp32
/// logits, with 0 at IGNORE; bf16 logits give the loss of their fp32 values; leading
/// axes are kept.
#[test]
fn reference_equals_torch_cross_entropy() {
    tch::manual_seed(1);
    for (shape, ignore_every) in [
        (vec![7i64, 1000], 3),
        (vec![5, 50277], 2),
        (vec![300, 8], 5),
        (vec![3, 4, 11], 4),
        (vec![1, 1], 7),
    ] {
        let v = *shape.last().unwrap();
        let lead = &shape[..shape.len() - 1];
        let n: i64 = lead.iter().product();
        let x = Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * 3.0;
        let t = targets(n, v, ignore_every).view(lead);
        let want = x.reshape([-1, v]).cross_entropy_loss::<Tensor>(
            &t.reshape([-1]),
            None,
            Reduction::None,
            IGNORE,
            0.0,
        );
        let got = cross_entropy_reference(&x, &t);
        assert_eq!(got.size(), lead, "{shape:?}: loss keeps the leading shape");
        assert_eq!(got.kind(), Kind::Float);
        assert!(
            got.reshape([-1]).equal(&want),
            "{shape:?}: differs from torch"
        );
        let ignored = t.eq(IGNORE);
        assert_eq!(
            got.masked_select(&ignored)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0,
            "{shape:?}: ignored targets carry loss"
        );
        let xb = x.to_kind(Kind::BFloat16);
        let from_bf16 = cross_entropy_reference(&xb, &t);
        assert_eq!(
            from_bf16.kind(),
            Kind::Float,
            "bf16 logits give an fp32 loss"
        );
        assert!(from_bf16.equal(&cross_entropy_reference(&xb.to_kind(Kind::Float), &t)));
    }
}

/// The mean over scored targets (what the trainer minimises) equals PyTorch's
/// Reduction::Mean to fp32 rounding.
#[test]
fn mean_over_scored_targets_equals_torch_mean() {
    use lcm::train::trainer::lm_loss;
    tch::manual_seed(2);
    for (n, v) in [(64i64, 1000i64), (9, 50277)] {
        let x = Tensor::randn([n, v], (Kind::Float, Device::Cpu)) * 2.0;
        let t = targets(n, v, 4);
        let want = x
            .cross_entropy_loss::<Tensor>(&t, None, Reduction::Mean, IGNORE, 0.0)
            .double_value(&[]);
        let got = lm_loss(&x, &t).double_value(&[]);
        assert!(
            (got - want).abs() <= 1e-6 * want.abs(),
            "n={n} v={v}: {got} vs {want}"
        );
    }
}

/// With no scored target the trainer's loss is 0 with a zero gradient (PyTorch's mean over
/// nothing is NaN).
#[test]
fn mean_over_no_scored_target_is_zero() {
    use lcm::train::trainer::lm_loss;
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let t = Tensor::full([4], IGNORE, (Kind::Int64, Device::Cpu));
    let loss = lm_loss(&x, &t);
    assert_eq!(loss.double_value(&[]), 0.0);
    let g = Tensor::run_backward(&[&loss], &[&x], false, false);
    assert_eq!(g[0].abs().sum(Kind::Float).double_value(&[]), 0.0);
    let empty = Tensor::zeros([0, 10], (Kind::Float, Device::Cpu));
    let none = Tensor::zeros([0], (Kind::Int64, Device::Cpu));
    assert_eq!(lm_loss(&empty, &none).double_value(&[]), 0.0);
}

/// dlogits by autograd through the reference equal (softmax(x) - onehot(t)) * dloss,
/// written out in f64, and are 0 on ignored rows; fp64 logits give fp64 results.
#[test]
fn reference_gradient_is_softmax_minus_onehot() {
    tch::manual_seed(3);
    for (n, v, kind, tol) in [
        (6i64, 1000i64, Kind::Double, 1e-12),
        (4, 50277, Kind::Double, 1e-12),
        (33, 8, Kind::Float, 1e-6),
        (17, 1000, Kind::Float, 1e-6),
    ] {
        let x = (Tensor::randn([n, v], (kind, Device::Cpu)) * 3.0).set_requires_grad(true);
        let t = targets(n, v, 3);
        let dloss = Tensor::randn([n], (kind, Device::Cpu));
        let loss = cross_entropy_reference(&x, &t);
        assert_eq!(loss.kind(), kind);
        let g = Tensor::run_backward(&[&(&loss * &dloss).sum(kind)], &[&x], false, false);

        let xd: Vec<f64> = Vec::try_from(x.detach().to_kind(Kind::Double).reshape([-1])).unwrap();
        let td: Vec<i64> = Vec::try_from(&t).unwrap();
        let gd: Vec<f64> = Vec::try_from(dloss.to_kind(Kind::Double)).unwrap();
        let mut want = vec![0.0f64; (n * v) as usize];
        let mut want_loss = vec![0.0f64; n as usize];
        for r in 0..n as usize {
            if td[r] == IGNORE {
                continue;
            }
            let row = &xd[r * v as usize..(r + 1) * v as usize];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|&a| (a - m).exp()).sum();
            let lse = m + s.ln();
            want_loss[r] = lse - row[td[r] as usize];
            for j in 0..v as usize {
                let onehot = if j as i64 == td[r] { 1.0 } else { 0.0 };
                want[r * v as usize + j] = ((row[j] - lse).exp() - onehot) * gd[r];
            }
        }
        let tag = format!("n={n} v={v} {kind:?}");
        let want = Tensor::from_slice(&want).view([n, v]);
        assert_close(
            &format!("loss {tag}"),
            &loss.detach(),
            &Tensor::from_slice(&want_loss),
            tol,
            tol,
        );
        assert_close(&format!("dlogits {tag}"), &g[0], &want, tol, tol);
    }
}

/// A target outside [0, V) other than IGNORE gives a NaN loss and a zero gradient row (what
/// the kernel does, since it cannot raise an error without a device synchronisation); the
/// other rows are untouched.
#[test]
fn out_of_range_target_gives_nan_loss() {
    tch::manual_seed(4);
    let v = 50;
    let x = Tensor::randn([5, v], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let t = Tensor::from_slice(&[3i64, v, -1, IGNORE, 7]);
    let loss = cross_entropy_reference(&x, &t);
    let l: Vec<f64> = Vec::try_from(loss.detach().to_kind(Kind::Double)).unwrap();
    assert!(l[0].is_finite() && l[4].is_finite(), "{l:?}");
    assert!(l[1].is_nan() && l[2].is_nan(), "{l:?}");
    assert_eq!(l[3], 0.0);
    let valid = Tensor::from_slice(&[3i64, IGNORE, IGNORE, IGNORE, 7]);
    let want = cross_entropy_reference(&x.detach(), &valid);
    assert!(loss
        .detach()
        .index_select(0, &Tensor::from_slice(&[0i64, 4]))
        .equal(&want.index_select(0, &Tensor::from_slice(&[0i64, 4]))));
    let finite_sum = loss.masked_fill(&loss.isnan(), 0.0).sum(Kind::Float);
    let g = Tensor::run_backward(&[&finite_sum], &[&x], false, false);
    assert_eq!(
        g[0].narrow(0, 1, 3)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    assert!(g[0].isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn dispatch_on_cpu_is_the_reference() {
    tch::manual_seed(5);
    for kind in [Kind::Float, Kind::BFloat16] {
        let x = Tensor::randn([9, 1000], (kind, Device::Cpu));
        let t = targets(9, 1000, 4);
        assert!(cross_entropy(&x, &t).equal(&cross_entropy_reference(&x, &t)));
    }
}

/// The C++ bridge turns a libtorch exception into a Rust error that names the op and the
/// bad input (these checks run before anything touches a GPU).
#[cfg(lcm_cuda)]
#[test]
fn bridge_reports_cpp_errors_as_rust_errors() {
    use lcm::ops::xent::cross_entropy_cuda;
    let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let err = cross_entropy_cuda(&x, &t).unwrap_err().to_string();
    assert!(
        err.contains("cross_entropy") && err.contains("CUDA device"),
        "{err}"
    );
    let t5 = Tensor::zeros([5], (Kind::Int64, Device::Cpu));
    let err = cross_entropy_cuda(&x, &t5).unwrap_err().to_string();
    assert!(
        err.contains("cross_entropy") && err.contains("do not match"),
        "{err}"
    );
}
