//! RMSNorm: the reference against a direct computation (CPU), the dispatch, the bridge's
//! error path (CPU), and the CUDA kernel against the reference (GPU: forward, dx, dw).

mod common;

use common::{assert_close, assert_rel_norm, cuda_or_skip, poison_cuda_allocator};
use lcm::ops::{rms_norm, rms_norm_reference};
use tch::{Device, Kind, Tensor};

const EPS: f64 = 1e-5;

/// Forward and gradients written out row by row in f64, independent of tch's autograd.
fn direct(x: &[f64], w: &[f64], dy: &[f64], d: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / d;
    let (mut y, mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; d]);
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let dyr = &dy[r * d..(r + 1) * d];
        let rstd = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / d as f64 + EPS).sqrt();
        let dot: f64 = (0..d).map(|j| dyr[j] * w[j] * xr[j] * rstd).sum::<f64>() / d as f64;
        for j in 0..d {
            let xhat = xr[j] * rstd;
            y[r * d + j] = xhat * w[j];
            dx[r * d + j] = rstd * (dyr[j] * w[j] - xhat * dot);
            dw[j] += dyr[j] * xhat;
        }
    }
    (y, dx, dw)
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Runs forward + backward with the given implementation; returns (y, dx, dw).
fn run(f: impl Fn(&Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor, dy: &Tensor) -> [Tensor; 3] {
    let xg = x.detach().set_requires_grad(true);
    let wg = w.detach().set_requires_grad(true);
    let y = f(&xg, &wg);
    let acc = if y.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let loss = (y.to_kind(acc) * dy.to_kind(acc)).sum(acc);
    let g = Tensor::run_backward(&[&loss], &[&xg, &wg], false, false);
    [y.detach(), g[0].shallow_clone(), g[1].shallow_clone()]
}

#[test]
fn reference_matches_direct_computation_fp32_and_fp64() {
    tch::manual_seed(1);
    for (shape, kind, tol) in [
        (vec![1i64, 8], Kind::Double, 1e-12),
        (vec![5, 3, 16], Kind::Double, 1e-12),
        (vec![64, 768], Kind::Float, 2e-5),
        (vec![7, 1000], Kind::Float, 2e-5),
    ] {
        let d = *shape.last().unwrap();
        let x = Tensor::randn(&shape, (kind, Device::Cpu)) * 3.0;
        let w = Tensor::randn([d], (kind, Device::Cpu));
        let dy = Tensor::randn(&shape, (kind, Device::Cpu));
        let [y, dx, dw] = run(|a, b| rms_norm_reference(a, b, EPS), &x, &w, &dy);
        let (ey, edx, edw) = direct(&to_vec(&x), &to_vec(&w), &to_vec(&dy), d as usize);
        let t = |v: Vec<f64>, like: &Tensor| Tensor::from_slice(&v).view(like.size().as_slice());
        assert_close(&format!("y {shape:?}"), &y, &t(ey, &y), tol, tol);
        assert_close(&format!("dx {shape:?}"), &dx, &t(edx, &dx), tol, tol);
        assert_close(&format!("dw {shape:?}"), &dw, &t(edw, &dw), tol * 10.0, tol);
    }
}

#[test]
fn reference_rounds_bf16_once_from_fp32() {
    tch::manual_seed(2);
    let x = Tensor::randn([32, 64], (Kind::BFloat16, Device::Cpu));
    let w = Tensor::randn([64], (Kind::BFloat16, Device::Cpu));
    let y = rms_norm_reference(&x, &w, EPS);
    assert_eq!(y.kind(), Kind::BFloat16);
    let y32 = rms_norm_reference(&x.to_kind(Kind::Float), &w.to_kind(Kind::Float), EPS);
    assert!(y
        .to_kind(Kind::Float)
        .equal(&y32.to_kind(Kind::BFloat16).to_kind(Kind::Float)));
}

#[test]
fn dispatch_on_cpu_is_the_reference() {
    tch::manual_seed(3);
    let x = Tensor::randn([9, 40], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([40], (Kind::Float, Device::Cpu));
    assert!(rms_norm(&x, &w, EPS).equal(&rms_norm_reference(&x, &w, EPS)));
}

/// The C++ bridge turns a libtorch exception into a Rust error that names the op (and
/// frees nothing it did not allocate). CPU tensors are rejected by the CUDA op.
#[cfg(lcm_cuda)]
#[test]
fn bridge_reports_cpp_errors_as_rust_errors() {
    use lcm::ops::rmsnorm::rms_norm_cuda;
    let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::ones([8], (Kind::Float, Device::Cpu));
    let err = rms_norm_cuda(&x, &w, EPS).unwrap_err().to_string();
    assert!(
        err.contains("rms_norm") && err.contains("CUDA device"),
        "{err}"
    );
    if let Some(dev) = cuda_or_skip("bridge_reports_cpp_errors_as_rust_errors (shape mismatch)") {
        let x = x.to_device(dev);
        let w = Tensor::ones([9], (Kind::Float, dev));
        let err = rms_norm_cuda(&x, &w, EPS).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}

// Kernel against reference on fresh random inputs at several shapes: aligned and
// unaligned row lengths (the vectorised and scalar paths), one row, many rows,
// a non-contiguous input, a row longer than one pack per thread.
//
// Tolerances: both sides compute in fp32 and round once. fp32: y and dx within
// 1e-5 + 1e-5|ref| (summation order only); bf16: within 1.6e-2 + 1e-2|ref| (one bf16
// ulp is 2^-8 relative, so a rounding-boundary flip shows as ~4e-3 |ref|). dw sums over
// all rows in a different order: relative L2 error 1e-5 (fp32) / 1e-2 (bf16, one
// rounding of the result).
#[cfg(lcm_cuda)]
common::cuda_test!(cuda_kernel_matches_reference, |dev| {
    use lcm::ops::rmsnorm::rms_norm_cuda;
    tch::manual_seed(4);
    let shapes: [&[i64]; 7] = [
        &[1, 768],
        &[3, 17, 768],
        &[4096, 1024],
        &[1000, 1000],
        &[7, 4096],
        &[33, 20],
        &[5, 16384],
    ];
    for kind in [Kind::Float, Kind::BFloat16] {
        let (atol, rtol, dw_tol) = if kind == Kind::Float {
            (1e-5, 1e-5, 1e-5)
        } else {
            (1.6e-2, 1e-2, 1e-2)
        };
        for shape in shapes {
            let d = *shape.last().unwrap();
            let x = Tensor::randn(shape, (kind, dev)) * 2.0;
            let w = Tensor::randn([d], (kind, dev)) * 0.5 + 1.0;
            let dy = Tensor::randn(shape, (kind, dev));
            let want = run(|a, b| rms_norm_reference(a, b, EPS), &x, &w, &dy);
            poison_cuda_allocator(dev);
            let got = run(|a, b| rms_norm_cuda(a, b, EPS).unwrap(), &x, &w, &dy);
            let tag = |n: &str| format!("{n} {kind:?} {shape:?}");
            assert_eq!(got[0].kind(), kind);
            assert_close(&tag("y"), &got[0], &want[0], atol, rtol);
            assert_close(&tag("dx"), &got[1], &want[1], atol, rtol);
            assert_rel_norm(&tag("dw"), &got[2], &want[2], dw_tol);
            // Run to run, the forward is bit-identical.
            let again = rms_norm_cuda(&x, &w, EPS).unwrap();
            assert!(again.equal(&got[0]), "{} not deterministic", tag("y"));
        }
        // A transposed (non-contiguous) input and an fp32 weight with a bf16 input.
        let x = Tensor::randn([256, 96], (kind, dev)).transpose(0, 1);
        let w = Tensor::randn([256], (Kind::Float, dev));
        let dy = Tensor::randn([96, 256], (kind, dev));
        let want = run(
            |a, b| rms_norm_reference(a, &b.to_kind(kind), EPS),
            &x,
            &w,
            &dy,
        );
        let got = run(|a, b| rms_norm_cuda(a, b, EPS).unwrap(), &x, &w, &dy);
        assert_close("y transposed", &got[0], &want[0], atol, rtol);
        assert_close("dx transposed", &got[1], &want[1], atol, rtol);
        assert_eq!(got[2].kind(), Kind::Float, "dw keeps the weight's dtype");
        assert_rel_norm("dw transposed", &got[2], &want[2], dw_tol);
    }
});

// Through the dispatcher on a CUDA tensor the kernel runs (same bits as calling it).
#[cfg(lcm_cuda)]
common::cuda_test!(dispatch_on_cuda_uses_the_kernel, |dev| {
    let x = Tensor::randn([64, 768], (Kind::BFloat16, dev));
    let w = Tensor::randn([768], (Kind::BFloat16, dev));
    let k = lcm::ops::rmsnorm::rms_norm_cuda(&x, &w, EPS).unwrap();
    assert!(rms_norm(&x, &w, EPS).equal(&k));
});
