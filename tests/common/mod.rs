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

/// Declares test `$name` that needs a CUDA device and runs `$body` (a closure) on it; on a
/// machine without one the test passes after saying so (`cuda_or_skip`, under the test's
/// name). Put `#[cfg(lcm_cuda)]` on the call where the test needs the kernels built.
#[allow(unused_macros)] // the CPU-only tests that include this module declare none
macro_rules! cuda_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            let body: fn(tch::Device) = $body;
            if let Some(dev) = $crate::common::cuda_or_skip(stringify!($name)) {
                body(dev)
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use cuda_test;

/// The CPU, then the CUDA device when there is one (`cuda_or_skip` names `test`'s CUDA part
/// otherwise): the devices of a test whose CUDA part is optional.
pub fn cpu_and_cuda(test: &str) -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    devices.extend(cuda_or_skip(&format!("{test} (CUDA part)")));
    devices
}

/// The inputs the GCA and HSA kernels do not take, for their dispatch-fallback tests:
/// (device, dtype, head dim, n), n being K_CTX or the chunk size: fp32, head dim 32, and n =
/// `too_long` (16 otherwise), on every device of `cpu_and_cuda(test)`.
pub fn unsupported_inputs(test: &str, too_long: i64) -> Vec<(Device, Kind, i64, i64)> {
    let cases = [
        (Kind::Float, 64, 16),
        (Kind::BFloat16, 32, 16),
        (Kind::BFloat16, 64, too_long),
    ];
    cpu_and_cuda(test)
        .into_iter()
        .flat_map(|dev| cases.map(|(kind, d, n)| (dev, kind, d, n)))
        .collect()
}

/// The kernel's output dtypes of the GCA and HSA tests ([o, dq, dk, dv, dweights]): bf16 out,
/// and dweights in the weights' fp32.
pub fn assert_attention_dtypes(tag: &str, got: &[Tensor]) {
    assert_eq!(got[0].kind(), Kind::BFloat16, "{tag}: output dtype");
    assert_eq!(
        got[4].kind(),
        Kind::Float,
        "{tag}: dweights keeps the weights' dtype"
    );
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

/// A reference attention `got` against its naive loops `want`, both computed from the leaves
/// `xs` (q, k, v, weights): the forward, then the gradients [dq, dk, dv, dw] of both for one
/// random output gradient, each by `assert_close_to_scale` naming `what`. Returns got's
/// gradients.
pub fn assert_attention_close_to_naive(
    what: &str,
    got: &Tensor,
    want: &Tensor,
    xs: [&Tensor; 4],
) -> Vec<Tensor> {
    assert_close_to_scale(got, want, &format!("{what} forward"));
    let r = got.randn_like();
    let gg = Tensor::run_backward(&[(got * &r).sum(Kind::Float)], &xs, false, false);
    let gw = Tensor::run_backward(&[(want * &r).sum(Kind::Float)], &xs, false, false);
    for (name, (a, b)) in ["dq", "dk", "dv", "dw"].iter().zip(gg.iter().zip(&gw)) {
        assert_close_to_scale(a, b, &format!("{what} {name}"));
    }
    gg
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

/// A bf16 kernel and its fp32 reference on the same inputs (upcast), each through
/// `forward_and_grads`, the kernel on a NaN-poisoned allocator (an output it leaves unwritten
/// fails): (got, want), each [output, gradient of every input...].
pub fn kernel_and_reference(
    kernel: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
    xs: &[&Tensor],
    dout: &Tensor,
) -> (Vec<Tensor>, Vec<Tensor>) {
    let f32s: Vec<Tensor> = xs.iter().map(|t| t.to_kind(Kind::Float)).collect();
    let want = forward_and_grads(reference, &f32s.iter().collect::<Vec<_>>(), dout);
    poison_cuda_allocator(dout.device());
    let got = forward_and_grads(kernel, xs, dout);
    (got, want)
}

/// Each of `names` (the output, then the gradients) of a bf16 kernel against the fp32
/// reference: relative L2 error <= 1e-2 and `assert_close_scaled`, failing with `tag` and the
/// name.
pub fn assert_outputs_close(tag: &str, names: &[&str], got: &[Tensor], want: &[Tensor]) {
    for (i, name) in names.iter().enumerate() {
        let what = format!("{tag} {name}");
        assert_rel_norm(&what, &got[i], &want[i], 1e-2);
        assert_close_scaled(&what, &got[i], &want[i]);
    }
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
