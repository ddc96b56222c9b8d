//! The SSD scan (`lcm::ops::ssd`): the chunked form against the token-by-token recurrence
//! on CPU, forward (y and the final state) and the gradients of every input (x, dt, A, B,
//! C, the initial state) through autograd, at shapes where the chunk divides the length and
//! where it does not, with one group and several, with and without an initial state.
//!
//! Tolerances, elementwise `|got - want| <= atol + rtol * |want|`: fp64 atol 1e-10, rtol
//! 1e-9; fp32 atol 1e-4 * max(1, max |want|), rtol 1e-4 (the two forms sum in different
//! orders, and the gradients of A and dt sum over whole sequences; the largest fp32 excess
//! seen is about 1e-5, in dA under strong decay).

mod common;

use common::assert_close;
use lcm::ops::{ssd_chunked, ssd_recurrent};
use tch::{Device, Kind, Tensor};

/// One scan's shape: batch, length, heads, head dim, groups, state size, chunk, and whether
/// an initial state is given.
#[derive(Debug, Clone, Copy)]
struct Case {
    b: i64,
    l: i64,
    h: i64,
    p: i64,
    g: i64,
    n: i64,
    chunk: i64,
    initial: bool,
}

/// The shapes tested, as (b, l, h, p, g, n, chunk, initial): the chunk divides the length
/// with one group; it does not, with two groups and an initial state; one group per head
/// and a one-token tail; a chunk longer than the sequence; chunks of one token.
const SHAPES: [([i64; 7], bool); 5] = [
    ([2, 16, 4, 3, 1, 5, 4], false),
    ([2, 13, 4, 3, 2, 5, 4], true),
    ([1, 15, 3, 2, 3, 4, 7], true),
    ([2, 6, 2, 4, 1, 3, 16], true),
    ([1, 5, 2, 2, 2, 2, 1], false),
];

fn cases() -> Vec<Case> {
    SHAPES
        .iter()
        .map(|&([b, l, h, p, g, n, chunk], initial)| Case {
            b,
            l,
            h,
            p,
            g,
            n,
            chunk,
            initial,
        })
        .collect()
}

/// The leaves of one scan: x, dt (positive), A (negative), B, C and maybe the initial
/// state. `decay` scales dt and A (1 for typical values; large for strong decay).
fn inputs(c: &Case, kind: Kind, decay: f64) -> Vec<Tensor> {
    let o = (kind, Device::Cpu);
    let mut v = vec![
        Tensor::randn([c.b, c.l, c.h, c.p], o),
        ((Tensor::randn([c.b, c.l, c.h], o) - 1.0).softplus() * decay),
        -(Tensor::rand([c.h], o) * 3.0 + 0.5) * decay,
        Tensor::randn([c.b, c.l, c.g, c.n], o),
        Tensor::randn([c.b, c.l, c.g, c.n], o),
    ];
    if c.initial {
        v.push(Tensor::randn([c.b, c.h, c.p, c.n], o));
    }
    v.into_iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect()
}

/// `f`'s (y, final state) and the gradients of all leaves for fixed random cotangents of
/// y and the state.
fn run(
    f: impl Fn(&[Tensor]) -> (Tensor, Tensor),
    leaves: &[Tensor],
    gy: &Tensor,
    gs: &Tensor,
) -> Vec<Tensor> {
    let (y, s) = f(leaves);
    let acc = s.kind();
    let loss = (y.to_kind(acc) * gy).sum(acc) + (&s * gs).sum(acc);
    let grads = Tensor::run_backward(&[&loss], leaves, false, false);
    let mut out = vec![y.detach(), s.detach()];
    out.extend(grads);
    out
}

const NAMES: [&str; 8] = [
    "y",
    "final state",
    "dx",
    "ddt",
    "dA",
    "dB",
    "dC",
    "dinitial",
];

/// Chunked against recurrent on `case`: every output and gradient within the tolerance of
/// `kind` (see the header).
fn check(case: &Case, kind: Kind, decay: f64) {
    let leaves = inputs(case, kind, decay);
    let o = (kind, Device::Cpu);
    let gy = Tensor::randn([case.b, case.l, case.h, case.p], o);
    let gs = Tensor::randn([case.b, case.h, case.p, case.n], o);
    let init = |v: &[Tensor]| v.get(5).map(|t| t.shallow_clone());
    let chunked = run(
        |v| {
            ssd_chunked(
                &v[0],
                &v[1],
                &v[2],
                &v[3],
                &v[4],
                init(v).as_ref(),
                case.chunk,
            )
        },
        &leaves,
        &gy,
        &gs,
    );
    let recurrent = run(
        |v| ssd_recurrent(&v[0], &v[1], &v[2], &v[3], &v[4], init(v).as_ref()),
        &leaves,
        &gy,
        &gs,
    );
    assert_eq!(chunked[0].kind(), kind, "y keeps x's dtype");
    for (i, (got, want)) in chunked.iter().zip(&recurrent).enumerate() {
        let what = format!("{case:?} {kind:?} decay {decay}: {}", NAMES[i]);
        assert!(
            got.isfinite().all().int64_value(&[]) == 1,
            "{what}: not finite"
        );
        let scale = want.abs().max().double_value(&[]);
        let (atol, rtol) = match kind {
            Kind::Double => (1e-10, 1e-9),
            _ => (1e-4 * scale.max(1.0), 1e-4),
        };
        assert_close(&what, got, want, atol, rtol);
    }
}

#[test]
fn chunked_matches_recurrent_fp64() {
    tch::manual_seed(1);
    for case in &cases() {
        check(case, Kind::Double, 1.0);
    }
}

#[test]
fn chunked_matches_recurrent_fp32() {
    tch::manual_seed(2);
    for case in &cases() {
        check(case, Kind::Float, 1.0);
    }
}

/// dt and A ten times larger: in-chunk decays down to about exp(-600), where a
/// subtraction of cumulative sums without the mask, or an exponential of a positive
/// exponent, would overflow.
#[test]
fn chunked_is_stable_under_strong_decay() {
    tch::manual_seed(3);
    for case in &cases()[..3] {
        check(case, Kind::Float, 10.0);
        check(case, Kind::Double, 10.0);
    }
}

/// A scan split in two, the second part starting from the first's final state, equals the
/// whole scan (the contract segmented inference relies on).
#[test]
fn split_scan_with_carried_state_equals_whole() {
    tch::manual_seed(4);
    let case = cases()[1];
    let v = inputs(&case, Kind::Double, 1.0);
    let (y, s) = ssd_chunked(&v[0], &v[1], &v[2], &v[3], &v[4], Some(&v[5]), case.chunk);
    for cut in [1, 5, 8, 12] {
        let part = |t: &Tensor, from: i64, len: i64| t.narrow(1, from, len);
        let rest = case.l - cut;
        let (y1, s1) = ssd_chunked(
            &part(&v[0], 0, cut),
            &part(&v[1], 0, cut),
            &v[2],
            &part(&v[3], 0, cut),
            &part(&v[4], 0, cut),
            Some(&v[5]),
            case.chunk,
        );
        let (y2, s2) = ssd_chunked(
            &part(&v[0], cut, rest),
            &part(&v[1], cut, rest),
            &v[2],
            &part(&v[3], cut, rest),
            &part(&v[4], cut, rest),
            Some(&s1),
            case.chunk,
        );
        let what = format!("cut at {cut}");
        assert_close(&what, &Tensor::cat(&[y1, y2], 1), &y, 1e-10, 1e-9);
        assert_close(&what, &s2, &s, 1e-10, 1e-9);
    }
}

/// bf16 inputs: y comes back in bf16, the state in fp32, close to the fp64 scan of the
/// same (rounded) inputs.
#[test]
fn bf16_inputs_scan_in_fp32() {
    tch::manual_seed(5);
    let case = cases()[1];
    let v: Vec<Tensor> = inputs(&case, Kind::Float, 1.0)
        .iter()
        .map(|t| t.detach().to_kind(Kind::BFloat16))
        .collect();
    let (y, s) = ssd_chunked(&v[0], &v[1], &v[2], &v[3], &v[4], Some(&v[5]), case.chunk);
    assert_eq!((y.kind(), s.kind()), (Kind::BFloat16, Kind::Float));
    let d: Vec<Tensor> = v.iter().map(|t| t.to_kind(Kind::Double)).collect();
    let (yd, sd) = ssd_recurrent(&d[0], &d[1], &d[2], &d[3], &d[4], Some(&d[5]));
    let scale = yd.abs().max().double_value(&[]);
    assert_close("bf16 y", &y, &yd, 1e-2 * scale, 1e-2);
    assert_close("bf16 state", &s, &sd, 1e-4, 1e-4);
}

#[test]
#[should_panic(expected = "G dividing H")]
fn groups_must_divide_heads() {
    let o = (Kind::Float, Device::Cpu);
    let x = Tensor::zeros([1, 4, 3, 2], o);
    let dt = Tensor::zeros([1, 4, 3], o);
    let a = Tensor::zeros([3], o);
    let b = Tensor::zeros([1, 4, 2, 5], o);
    let _ = ssd_chunked(&x, &dt, &a, &b, &b, None, 2);
}
