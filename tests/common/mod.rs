//! Helpers shared by the integration tests.
#![allow(dead_code)]

use tch::{Device, Kind, Tensor};

/// The CUDA device for GPU tests, or `None` after printing that the test was not run:
/// such a test passes on a machine without CUDA but says so (scripts/gpu-test.sh runs
/// them on a GPU machine).
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        // Written to the raw stderr handle, which the test harness does not capture, so
        // the line shows in the log of a passing run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "[gpu test not run: no CUDA device] {test}"
        );
        None
    }
}

/// The SWA / GCA kernel paths `device` runs (every one on Hopper), for tests that run
/// each in turn.
pub fn attn_paths(device: Device) -> Vec<lcm::ops::path::AttnPath> {
    lcm::ops::path::AttnPath::available(lcm::ops::path::capability(device))
}

/// Every path crossed with every case, paths outermost.
pub fn per_path<P: Copy, C>(paths: &[P], cases: &'static [C]) -> Vec<(P, &'static C)> {
    paths
        .iter()
        .flat_map(|&p| cases.iter().map(move |c| (p, c)))
        .collect()
}

/// Largest |a - b| - rtol * |b| over all elements (<= atol means allclose).
pub fn excess(a: &Tensor, b: &Tensor, rtol: f64) -> f64 {
    let a = a.to_kind(Kind::Double).to_device(Device::Cpu);
    let b = b.to_kind(Kind::Double).to_device(Device::Cpu);
    ((&a - &b).abs() - b.abs() * rtol).max().double_value(&[])
}

/// Asserts elementwise |a - b| <= atol + rtol * |b|, naming what was compared.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let e = excess(a, b, rtol);
    assert!(
        e <= atol,
        "{what}: max(|a-b| - rtol|b|) = {e:.3e} exceeds atol {atol:.1e}"
    );
}

/// Asserts ||a - b|| / ||b|| <= tol (for reductions whose summation order differs).
pub fn assert_rel_norm(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let a = a.to_kind(Kind::Double).to_device(Device::Cpu);
    let b = b.to_kind(Kind::Double).to_device(Device::Cpu);
    let rel = (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30);
    assert!(
        rel <= tol,
        "{what}: relative error {rel:.3e} exceeds {tol:.1e}"
    );
}

/// Fills memory that the CUDA caching allocator will hand out next with NaN, so that a
/// kernel output left partly unwritten (outputs come from `at::empty`) fails the
/// comparison instead of passing on stale data. Covers both allocator pools: one large
/// block (split for big requests) and many small (< 1 MiB) ones.
pub fn poison_cuda_allocator(device: Device) {
    let big = Tensor::full([64 << 20], f64::NAN, (Kind::Float, device));
    let small: Vec<Tensor> = (0..64)
        .map(|_| Tensor::full([(1 << 18) - 1024], f64::NAN, (Kind::Float, device)))
        .collect();
    drop(big);
    drop(small);
}

/// Asserts max |got - want| <= 1e-5 + 1e-4 * max |want|: the fp32 tolerance of the
/// reference ops against their naive loops (the scale makes it relative to the output).
pub fn assert_close_to_scale(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shapes");
    let diff = (got - want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    assert!(
        diff <= 1e-5 + 1e-4 * scale,
        "{what}: max diff {diff} (scale {scale})"
    );
}

/// The output of `f` on fresh leaves copied from `xs`, then the gradient of
/// `sum(out * dout)` with respect to each leaf, in order (the GPU op tests).
pub fn forward_and_grads(
    f: impl Fn(&[Tensor]) -> Tensor,
    xs: &[&Tensor],
    dout: &Tensor,
) -> Vec<Tensor> {
    let leaves: Vec<Tensor> = xs
        .iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect();
    let o = f(&leaves);
    let loss = (o.to_kind(Kind::Float) * dout.to_kind(Kind::Float)).sum(Kind::Float);
    let grads = Tensor::run_backward(&[&loss], &leaves, false, false);
    std::iter::once(o.detach()).chain(grads).collect()
}

/// Max |got - want| <= 3e-2 * max |want| + 1e-3 (bf16 kernels against an fp32 reference).
pub fn assert_close_scaled(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let got = got.to_kind(Kind::Double).to_device(Device::Cpu);
    let want = want.to_kind(Kind::Double).to_device(Device::Cpu);
    let diff = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    let tol = 3e-2 * scale + 1e-3;
    assert!(
        diff <= tol,
        "{what}: max |got - want| = {diff:.3e} exceeds {tol:.3e} (max |want| {scale:.3e})"
    );
}

/// Cross-entropy targets: random ids in [0, v) with every `ignore_every`-th one IGNORE
/// (-100), and the first and last column as the targets of rows 1 and 2 (the edges of a
/// row, where the kernel's loose elements around its 16-byte packs lie). On the CPU.
pub fn xent_targets(n: i64, v: i64, ignore_every: i64) -> Tensor {
    let mut t: Vec<i64> =
        Vec::try_from(Tensor::randint(v, [n], (Kind::Int64, Device::Cpu))).unwrap();
    for (i, x) in t.iter_mut().enumerate() {
        if i as i64 % ignore_every == ignore_every - 1 {
            *x = lcm::ops::xent::IGNORE;
        }
    }
    if n > 2 {
        t[1] = 0;
        t[2] = v - 1;
    }
    Tensor::from_slice(&t)
}
