//! The retrieval top-k kernel (`cuda/retrieval.cu`) against exact computations, on fresh
//! random bf16 inputs: training shapes (C = 1, 2, 5, 100, 1024 chunks; the first chunks
//! see nothing and get only empty slots), inference shapes (a few queries over 1M+ keys,
//! split across CTAs and merged), HSA token visibility with several heads, B > 1, k not a
//! power of two and k = 32, dims 64, 128 and 768; poisoned output buffers; determinism;
//! the tie rule; and the ops that dispatch to it (weights, indices and the gradients
//! w.r.t. queries and keys against the pure-tch reference).
//!
//! Ground truth: scores in f64 from the same bf16 inputs, masked, top-k in f64. The kernel
//! multiplies bf16 on tensor cores with fp32 accumulation, so its scores differ from the
//! f64 ones by summation rounding (~1e-6 relative); a near-tie within that margin may
//! pick the other key. So the test compares (a) the kernel's scores with the exact scores
//! of the keys it names (|diff| <= 1e-4 * (1 + max|score|)), (b) the sorted exact scores
//! of its set with the exact top-k values (same tolerance: a wrong pick beyond a near-tie
//! fails here), (c) the number of rows whose index set differs at all (at most 1%, and 0
//! at the training shapes), (d) empty slots exactly where fewer keys are visible.
//! Tie rule: among equal scores the lower key index wins (checked on keys all equal).
//! Gumbel noise (training) is the kernel's own (a hash, not torch's generator), so it is
//! checked by its law: with top-1, key j must win with probability softmax(scores)_j
//! (the Gumbel-max property), within 4 standard errors over 16K draws; and the dispatched
//! op with noise stays causal and weights the chosen keys by their clean scores.

mod common;

use common::{assert_rel_norm, cuda_or_skip, poison_cuda_allocator};
use lcm::ops::retrieval::{
    chunk_retrieval_blocked_reference, kernel_supports, token_retrieval_blocked_reference,
};
use lcm::ops::{
    chunk_retrieval, chunk_retrieval_blocked, chunk_retrieval_reference, token_retrieval,
    token_retrieval_blocked, token_retrieval_reference, SlotWeighting,
};
use tch::{Device, Kind, Tensor};

/// (N, H, M queries, E keys, D, first, div, topk)
type Case = (i64, i64, i64, i64, i64, i64, i64, i64);

const CASES: &[Case] = &[
    // Training, DRT chunk retrieval (div 1): C = 1 (nothing visible), 2, 5, 100, 1024.
    (1, 1, 1, 1, 64, 0, 1, 8),
    (2, 1, 2, 2, 768, 0, 1, 8),
    (1, 1, 5, 5, 64, 0, 1, 3),
    (2, 1, 100, 100, 128, 0, 1, 7),
    (1, 1, 1024, 1024, 768, 0, 1, 8),
    (2, 1, 1024, 1024, 64, 0, 1, 32),
    // HSA token retrieval (div = chunk size), several heads, k not a power of two.
    (2, 4, 300, 18, 64, 0, 16, 5),
    (1, 2, 1000, 15, 128, 0, 64, 13),
    // Inference: a few queries after 1M landmarks (one segment's tail), DRT and HSA.
    (1, 1, 4, (1 << 20) + 4, 128, 1 << 20, 1, 8),
    (2, 1, 3, 300_003, 768, 300_000, 1, 11),
    (1, 2, 64, 1 << 20, 64, 64 << 20, 64, 16),
];

/// Exact (f64) masked scores `(N, H, M, E)`.
fn exact_scores(q: &Tensor, k: &Tensor, first: i64, div: i64) -> Tensor {
    let (m, d) = (q.size()[1], q.size()[3]);
    let e = k.size()[1];
    let dev = q.device();
    let qd = q.to_kind(Kind::Double).permute([0, 2, 1, 3]); // (N, H, M, D)
    let kd = k.to_kind(Kind::Double).permute([0, 2, 3, 1]); // (N, H, D, E)
    let s = qd.matmul(&kd) / (d as f64).sqrt();
    let lims = (Tensor::arange(m, (Kind::Int64, dev)) + first)
        .floor_divide_scalar(div)
        .clamp_max(e);
    let hidden = Tensor::arange(e, (Kind::Int64, dev))
        .view([1, e])
        .ge_tensor(&lims.view([m, 1]));
    s.masked_fill(&hidden, f64::NEG_INFINITY)
}

/// Max |diff| over the slots where `fin` is 1 (0 elsewhere); NaN counts as 0.
fn valid_max_abs(diff: Tensor, fin: &Tensor) -> f64 {
    (diff.nan_to_num(0.0, 0.0, 0.0) * fin)
        .abs()
        .max()
        .double_value(&[])
}

/// Runs the kernel on a poisoned allocator and checks it against the exact top-k.
fn check_case(c: &Case, dev: Device) {
    let &(n, h, m, e, d, first, div, topk) = c;
    let tag = format!("N={n} H={h} M={m} E={e} D={d} first={first} div={div} k={topk}");
    let q = Tensor::randn([n, m, h, d], (Kind::BFloat16, dev));
    let k = Tensor::randn([n, e, h, d], (Kind::BFloat16, dev));
    let scale = 1.0 / (d as f64).sqrt();
    poison_cuda_allocator(dev);
    let (ks, ki) = lcm::ops::retrieval::retrieval_topk_cuda(&q, &k, first, div, topk, scale, None)
        .unwrap_or_else(|err| panic!("{tag}: {err}"));
    assert_eq!(ks.size(), [n, h, m, topk], "{tag}: score shape");
    assert_eq!(ki.size(), [n, h, m, topk], "{tag}: index shape");
    assert_eq!(ki.kind(), Kind::Int64);

    // (d) empty slots exactly where fewer than topk keys are visible; -inf with them.
    let lims = (Tensor::arange(m, (Kind::Int64, dev)) + first)
        .floor_divide_scalar(div)
        .clamp_max(e);
    let want_valid = Tensor::arange(topk, (Kind::Int64, dev))
        .view([1, 1, 1, topk])
        .lt_tensor(&lims.view([1, 1, m, 1]));
    let valid = ki.ge(0);
    assert!(
        valid.equal(&want_valid.expand_as(&valid)),
        "{tag}: empty slots misplaced"
    );
    assert!(
        ks.isinf()
            .logical_and(&ks.lt(0.0))
            .equal(&valid.logical_not()),
        "{tag}: empty slots must score -inf, the others finite"
    );
    assert!(ks.isnan().any().int64_value(&[]) == 0, "{tag}: NaN score");
    // Indices in range and visible.
    let visible = ki.lt_tensor(&lims.view([1, 1, m, 1]));
    assert!(
        visible
            .logical_or(&valid.logical_not())
            .all()
            .int64_value(&[])
            == 1,
        "{tag}: an invisible key was chosen"
    );
    // Descending scores.
    if topk > 1 {
        let a = ks.narrow(3, 0, topk - 1);
        let b = ks.narrow(3, 1, topk - 1);
        assert!(
            a.ge_tensor(&b)
                .logical_or(&b.isinf())
                .all()
                .int64_value(&[])
                == 1,
            "{tag}: scores not descending"
        );
    }

    let exact = exact_scores(&q, &k, first, div);
    // Exact top-k, padded with empty slots (-inf, -1) where E < topk.
    let (top_s, top_i) = exact.topk(topk.min(e), -1, true, true);
    let (top_s, top_i) = if topk > e {
        let pad = [n, h, m, topk - e];
        (
            Tensor::cat(
                &[
                    top_s,
                    Tensor::full(pad, f64::NEG_INFINITY, (Kind::Double, dev)),
                ],
                -1,
            ),
            Tensor::cat(&[top_i, Tensor::full(pad, -1, (Kind::Int64, dev))], -1),
        )
    } else {
        (top_s, top_i)
    };
    let at_k = exact.gather(-1, &ki.clamp_min(0), false);
    let fin = valid.to_kind(Kind::Double);
    let scale_s = top_s
        .masked_fill(&top_s.isinf(), 0.0)
        .abs()
        .max()
        .double_value(&[]);
    let tol = 1e-4 * (1.0 + scale_s);
    // (a) the kernel's scores are those of the keys it names.
    let da = valid_max_abs(ks.to_kind(Kind::Double) - &at_k, &fin);
    assert!(
        da <= tol,
        "{tag}: kernel scores off by {da:.3e} (tol {tol:.1e})"
    );
    // (b) its set is a top-k set up to near-ties.
    let (sorted_k, _) = at_k
        .masked_fill(&valid.logical_not(), f64::NEG_INFINITY)
        .sort(-1, true);
    let db = valid_max_abs(&sorted_k - &top_s, &fin);
    assert!(
        db <= tol,
        "{tag}: chosen set off by {db:.3e} (tol {tol:.1e})"
    );
    // (c) index sets agree except for rare near-ties.
    let top_i = top_i.masked_fill(&top_s.isinf(), -1);
    let (sk, _) = ki.sort(-1, false);
    let (sr, _) = top_i.sort(-1, false);
    let rows = n * h * m;
    let differ = sk
        .ne_tensor(&sr)
        .any_dim(-1, false)
        .sum(Kind::Int64)
        .int64_value(&[]);
    eprintln!(
        "{tag}: {differ}/{rows} rows with a different set (near-ties), max score diff {da:.2e}"
    );
    let allowed = if e <= 1024 { 0 } else { rows / 100 };
    assert!(differ <= allowed, "{tag}: {differ} of {rows} rows differ");

    // Deterministic: the same output again.
    poison_cuda_allocator(dev);
    let (ks2, ki2) =
        lcm::ops::retrieval::retrieval_topk_cuda(&q, &k, first, div, topk, scale, None).unwrap();
    assert!(ki2.equal(&ki), "{tag}: indices not deterministic");
    assert!(
        ks2.nan_to_num(0.0, 0.0, 0.0)
            .equal(&ks.nan_to_num(0.0, 0.0, 0.0)),
        "{tag}: scores not deterministic"
    );
}

common::cuda_test!(kernel_topk_matches_exact_topk, |dev| {
    tch::manual_seed(41);
    for c in CASES {
        check_case(c, dev);
    }
});

common::cuda_test!(kernel_ties_prefer_the_lower_index, |dev| {
    tch::manual_seed(42);
    // Every key equal: every visible key ties; the lowest indices win, in order.
    let (n, m, e, d, topk) = (2, 300, 300, 64, 6);
    let q = Tensor::randn([n, m, 1, d], (Kind::BFloat16, dev));
    let k = Tensor::randn([n, 1, 1, d], (Kind::BFloat16, dev)).expand([n, e, 1, d], false);
    let (_, ki) =
        lcm::ops::retrieval::retrieval_topk_cuda(&q, &k, 0, 1, topk, 0.125, None).unwrap();
    let slots = Tensor::arange(topk, (Kind::Int64, dev)).view([1, 1, 1, topk]);
    let rows = Tensor::arange(m, (Kind::Int64, dev)).view([1, 1, m, 1]);
    let want = slots.where_self(&slots.lt_tensor(&rows), &Tensor::from(-1i64).to_device(dev));
    assert!(ki.equal(&want.expand_as(&ki)), "ties: lower index first");
});

/// Weights where the two index tensors agree (they must, at these shapes) and gradients.
fn compare_retrievals(tag: &str, got: &lcm::ops::Retrieval, want: &lcm::ops::Retrieval) {
    assert_eq!(got.indices.size(), want.indices.size(), "{tag}: shape");
    assert!(got.indices.equal(&want.indices), "{tag}: indices differ");
    let diff = (&got.weights - &want.weights).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "{tag}: weights differ by {diff:.3e}");
    assert!(
        got.weights.isfinite().all().int64_value(&[]) == 1,
        "{tag}: non-finite weight"
    );
}

fn grads(r: &lcm::ops::Retrieval, g: &Tensor, xs: &[&Tensor]) -> Vec<Tensor> {
    Tensor::run_backward(&[(&r.weights * g).sum(Kind::Float)], xs, false, false)
}

common::cuda_test!(
    chunk_and_token_retrieval_dispatch_matches_reference,
    |dev| {
        tch::manual_seed(43);
        // DRT training: (N, C, d, topk)
        for &(n, c, d, topk) in &[
            (1, 1, 64, 8),
            (2, 2, 768, 8),
            (1, 5, 64, 3),
            (2, 100, 768, 8),
            (1, 1024, 768, 8),
            (2, 300, 64, 32),
        ] {
            let tag = format!("chunk N={n} C={c} d={d} k={topk}");
            let q = Tensor::randn([n, c, d], (Kind::BFloat16, dev)).set_requires_grad(true);
            let k = Tensor::randn([n, c, d], (Kind::BFloat16, dev)).set_requires_grad(true);
            assert!(kernel_supports(&q, &k, topk.min(c)));
            poison_cuda_allocator(dev);
            let got = chunk_retrieval(&q, &k, topk, false);
            let want = chunk_retrieval_reference(&q, &k, topk, false);
            compare_retrievals(&tag, &got, &want);
            let g = want.weights.randn_like();
            let (gg, gw) = (grads(&got, &g, &[&q, &k]), grads(&want, &g, &[&q, &k]));
            for (a, b) in gg.iter().zip(&gw) {
                assert!(
                    a.isfinite().all().int64_value(&[]) == 1,
                    "{tag}: non-finite gradient"
                );
                if b.abs().max().double_value(&[]) > 0.0 {
                    assert_rel_norm(&format!("{tag}: gradient"), a, b, 1e-2);
                }
            }
        }
        // HSA training: (N, L, r, dr, S, topk), both weightings.
        for &(n, l, r, dr, s, topk) in &[(2, 256, 4, 64, 16, 5), (1, 512, 1, 128, 64, 3)] {
            for w in [SlotWeighting::StickBreaking, SlotWeighting::Softmax] {
                let tag = format!("token N={n} L={l} r={r} dr={dr} S={s} k={topk} {w:?}");
                let c = l / s;
                let q = Tensor::randn([n, l, r, dr], (Kind::BFloat16, dev)).set_requires_grad(true);
                let k = Tensor::randn([n, c, r, dr], (Kind::BFloat16, dev)).set_requires_grad(true);
                poison_cuda_allocator(dev);
                let got = token_retrieval(&q, &k, s, topk, w, false);
                let want = token_retrieval_reference(&q, &k, s, topk, w, false);
                compare_retrievals(&tag, &got, &want);
                let g = want.weights.randn_like();
                let (gg, gw) = (grads(&got, &g, &[&q, &k]), grads(&want, &g, &[&q, &k]));
                for (a, b) in gg.iter().zip(&gw) {
                    assert_rel_norm(&format!("{tag}: gradient"), a, b, 1e-2);
                }
            }
        }
    }
);

common::cuda_test!(blocked_retrieval_dispatch_matches_reference, |dev| {
    tch::manual_seed(44);
    let _g = tch::no_grad_guard();
    // DRT segment: c queries after `first` landmarks.
    for &(n, c, first, d, topk) in &[
        (1, 64, 100_000, 768, 8),
        (2, 16, 3, 64, 8),
        (1, 7, 40_000, 128, 20),
    ] {
        let tag = format!("chunk blocked N={n} c={c} first={first} d={d} k={topk}");
        let q = Tensor::randn([n, c, d], (Kind::BFloat16, dev));
        let k = Tensor::randn([n, first + c, d], (Kind::BFloat16, dev));
        let got = chunk_retrieval_blocked(&q, &k, first, topk, 16384);
        let want = chunk_retrieval_blocked_reference(&q, &k, first, topk, 16384);
        compare_retrievals(&tag, &got, &want);
    }
    // HSA segment: l tokens from token `first`.
    for &(n, l, r, dr, s, first, topk) in
        &[(1, 128, 2, 64, 64, 64 * 5000, 8), (2, 64, 4, 64, 16, 16, 5)]
    {
        for w in [SlotWeighting::StickBreaking, SlotWeighting::Softmax] {
            let tag = format!("token blocked N={n} L={l} r={r} first={first} k={topk} {w:?}");
            let e = (first + l) / s;
            let q = Tensor::randn([n, l, r, dr], (Kind::BFloat16, dev));
            let k = Tensor::randn([n, e, r, dr], (Kind::BFloat16, dev));
            let got = token_retrieval_blocked(&q, &k, first, s, topk, w, 16384);
            let want = token_retrieval_blocked_reference(&q, &k, first, s, topk, w, 16384);
            compare_retrievals(&tag, &got, &want);
        }
    }
});

#[test]
fn dispatch_falls_back_to_the_reference() {
    // Runs on the CPU too: CPU tensors, fp32 and Gumbel noise never take the kernel.
    tch::manual_seed(45);
    let q = Tensor::randn([1, 9, 16], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, 9, 16], (Kind::Float, Device::Cpu));
    assert!(!kernel_supports(&q, &k, 4));
    let a = chunk_retrieval(&q, &k, 4, false);
    let b = chunk_retrieval_reference(&q, &k, 4, false);
    assert!(a.indices.equal(&b.indices) && a.weights.equal(&b.weights));
    let Some(dev) = cuda_or_skip("dispatch_falls_back_to_the_reference (GPU part)") else {
        return;
    };
    let (qf, kf) = (q.to_device(dev), k.to_device(dev));
    assert!(!kernel_supports(&qf, &kf, 4), "fp32 takes the reference");
    let (qb, kb) = (qf.to_kind(Kind::BFloat16), kf.to_kind(Kind::BFloat16));
    assert!(kernel_supports(&qb, &kb, 4));
    assert!(!kernel_supports(&qb, &kb, 33), "k > 32 takes the reference");
    // Gumbel noise on bf16 CUDA: the kernel; causal, weights from the clean scores.
    let r = chunk_retrieval(&qb, &kb, 4, true);
    let rows = Tensor::arange(9, (Kind::Int64, dev)).view([1, 9, 1]);
    assert!(r.indices.lt_tensor(&rows).all().int64_value(&[]) == 1);
    let valid = r.indices.ge(0);
    let slots = Tensor::arange(4, (Kind::Int64, dev)).view([1, 1, 4]);
    assert!(
        valid.equal(&slots.lt_tensor(&rows)),
        "empty slots only where < 4 visible"
    );
    let clean = lcm::ops::retrieval::chunk_retrieval_scores(&qb, &kb)
        .gather(-1, &r.indices.clamp_min(0), false)
        .masked_fill(&valid.logical_not(), -1e30);
    let want = clean.softmax(-1, Kind::Float) * valid.to_kind(Kind::Float);
    let diff = (&r.weights - &want).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-4,
        "gumbel: weights off the clean softmax by {diff:.3e}"
    );
}

common::cuda_test!(kernel_gumbel_noise_samples_the_softmax, |dev| {
    tch::manual_seed(46);
    // One query repeated over m rows, each seeing the same e keys: independent draws.
    let (m, e, d) = (16384, 5, 64);
    let q = Tensor::randn([1, 1, 1, d], (Kind::BFloat16, dev)).expand([1, m, 1, d], false);
    let k = (Tensor::randn([1, e, 1, d], (Kind::Float, dev)) * 0.15).to_kind(Kind::BFloat16);
    let scale = 1.0 / (d as f64).sqrt();
    let topk = |seed| lcm::ops::retrieval::retrieval_topk_cuda(&q, &k, e, 1, 1, scale, Some(seed));
    let (_, idx) = topk(1234).unwrap();
    let (_, again) = topk(1234).unwrap();
    let (_, other) = topk(99).unwrap();
    assert!(idx.equal(&again), "gumbel: not reproducible for a seed");
    assert!(!idx.equal(&other), "gumbel: the seed changes nothing");
    let counts = idx
        .view([-1])
        .bincount::<Tensor>(None, e)
        .to_kind(Kind::Double)
        / m as f64;
    let p = exact_scores(&q.narrow(1, 0, 1), &k, e, 1)
        .view([e])
        .softmax(0, Kind::Double);
    for j in 0..e {
        let (c, pj) = (counts.double_value(&[j]), p.double_value(&[j]));
        let se = (pj * (1.0 - pj) / m as f64).sqrt();
        eprintln!("gumbel: key {j}: chosen {c:.4}, softmax {pj:.4}");
        assert!(
            (c - pj).abs() <= 4.0 * se + 1e-3,
            "gumbel: key {j} chosen {c:.4}, want {pj:.4}"
        );
    }
});
