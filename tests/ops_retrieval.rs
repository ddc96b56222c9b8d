//! Retrieval against naive per-row computations: chunk retrieval (strict causality, top-k,
//! softmax over the chosen scores, empty rows -> 0) and token retrieval (visibility
//! `(d+1)*S <= t`, descending slots, stick-breaking or softmax). Weights and their
//! gradients agree to 1e-5 + 1e-4 * max |expected|; indices agree exactly.

use lcm::ops::{
    chunk_retrieval_blocked, chunk_retrieval_reference, token_retrieval_blocked,
    token_retrieval_reference, Retrieval, SlotWeighting,
};
use tch::{Device, Kind, Tensor};

mod common;

use common::assert_close_to_scale as assert_close;

fn all_finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) == 1
}

/// Top `k` of `(index, score)` candidates by score; returns them in score order.
fn top(mut cands: Vec<(i64, Tensor)>, k: usize) -> Vec<(i64, Tensor)> {
    cands.sort_by(|a, b| b.1.double_value(&[]).total_cmp(&a.1.double_value(&[])));
    cands.truncate(k);
    cands
}

#[test]
fn chunk_retrieval_matches_naive() {
    tch::manual_seed(6);
    let (n, c, d, topk) = (2, 7, 16, 3);
    let opts = (Kind::Float, Device::Cpu);
    let ql = Tensor::randn([n, c, d], opts).set_requires_grad(true);
    let kl = Tensor::randn([n, c, d], opts).set_requires_grad(true);
    let r = chunk_retrieval_reference(&ql, &kl, topk, false);
    assert_eq!(r.indices.size(), [n, c, topk]);
    let mut want_w = Vec::new();
    for b in 0..n {
        for i in 0..c {
            let cands = (0..i)
                .map(|j| {
                    (
                        j,
                        (ql.get(b).get(i) * kl.get(b).get(j)).sum(Kind::Float) / 4.0,
                    )
                })
                .collect();
            let chosen = top(cands, topk as usize);
            let scores: Vec<Tensor> = chosen.iter().map(|(_, s)| s.shallow_clone()).collect();
            let mut w = if scores.is_empty() {
                Vec::new()
            } else {
                let p = Tensor::stack(&scores, 0).softmax(0, Kind::Float);
                (0..scores.len() as i64).map(|x| p.get(x)).collect()
            };
            for (slot, (j, _)) in chosen.iter().enumerate() {
                assert_eq!(
                    r.indices.int64_value(&[b, i, slot as i64]),
                    *j,
                    "chunk {i} slot {slot}"
                );
            }
            for slot in chosen.len() as i64..topk {
                assert_eq!(
                    r.indices.int64_value(&[b, i, slot]),
                    -1,
                    "chunk {i} empty slot"
                );
                w.push(Tensor::zeros([], opts));
            }
            want_w.push(Tensor::stack(&w, 0));
        }
    }
    let want = Tensor::stack(&want_w, 0).view([n, c, topk]);
    assert_close(&r.weights, &want, "weights");
    // Gradients (including the all-masked chunk-0 rows) agree and are finite.
    let g = r.weights.randn_like();
    let xs = [&ql, &kl];
    let gg = Tensor::run_backward(&[(&r.weights * &g).sum(Kind::Float)], &xs, false, false);
    let gw = Tensor::run_backward(&[(&want * &g).sum(Kind::Float)], &xs, false, false);
    for (a, b) in gg.iter().zip(&gw) {
        assert!(all_finite(a), "non-finite gradient");
        assert_close(a, b, "score gradients");
    }
}

#[test]
fn chunk_retrieval_with_gumbel_stays_causal_and_uses_clean_scores() {
    tch::manual_seed(7);
    let (n, c, d) = (4, 9, 8);
    let ql = Tensor::randn([n, c, d], (Kind::Float, Device::Cpu));
    let kl = Tensor::randn([n, c, d], (Kind::Float, Device::Cpu));
    let clean = lcm::ops::retrieval::chunk_retrieval_scores(&ql, &kl);
    for _ in 0..5 {
        let r = chunk_retrieval_reference(&ql, &kl, 4, true);
        for b in 0..n {
            for i in 0..c {
                let mut chosen = Vec::new();
                for slot in 0..4 {
                    let j = r.indices.int64_value(&[b, i, slot]);
                    assert!(j < i, "chunk {i} retrieved {j}");
                    assert!(
                        j >= 0 || i < 4,
                        "chunk {i} has an empty slot with {i} visible"
                    );
                    if j >= 0 {
                        chosen.push(clean.double_value(&[b, i, j]));
                    }
                }
                // Weights are the softmax of the noise-free scores of the chosen chunks.
                let mx = chosen.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = chosen.iter().map(|s| (s - mx).exp()).sum();
                let mut k = 0;
                for slot in 0..4 {
                    let w = r.weights.double_value(&[b, i, slot]);
                    if r.indices.int64_value(&[b, i, slot]) >= 0 {
                        assert!((w - (chosen[k] - mx).exp() / z).abs() < 1e-5);
                        k += 1;
                    } else {
                        assert_eq!(w, 0.0);
                    }
                }
            }
        }
    }
}

fn naive_token(
    q: &Tensor,
    lmk: &Tensor,
    s: i64,
    topk: i64,
    weighting: SlotWeighting,
) -> (Tensor, Vec<i64>) {
    let (n, l, r, dr) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let c = lmk.size()[1];
    let kk = topk.min(c);
    let mut ws = Vec::new();
    let mut idx = Vec::new();
    for b in 0..n {
        for t in 0..l {
            for h in 0..r {
                let cands = (0..c)
                    .filter(|d| (d + 1) * s <= t)
                    .map(|d| {
                        let sc =
                            (q.get(b).get(t).get(h) * lmk.get(b).get(d).get(h)).sum(Kind::Float);
                        (d, sc / (dr as f64).sqrt())
                    })
                    .collect();
                let mut chosen = top(cands, kk as usize);
                chosen.sort_by_key(|(d, _)| -d); // most recent first
                let mut w: Vec<Tensor> = Vec::new();
                match weighting {
                    SlotWeighting::StickBreaking => {
                        let mut rest = Tensor::ones([], (Kind::Float, Device::Cpu));
                        for (_, sc) in &chosen {
                            let sig = sc.sigmoid();
                            w.push(&rest * &sig);
                            rest = rest.g_mul(&(1.0 - sig));
                        }
                    }
                    SlotWeighting::Softmax => {
                        if !chosen.is_empty() {
                            let v: Vec<Tensor> =
                                chosen.iter().map(|(_, s)| s.shallow_clone()).collect();
                            let p = Tensor::stack(&v, 0).softmax(0, Kind::Float);
                            w.extend((0..v.len() as i64).map(|x| p.get(x)));
                        }
                    }
                }
                for (d, _) in &chosen {
                    idx.push(*d);
                }
                for _ in chosen.len() as i64..kk {
                    idx.push(-1);
                    w.push(Tensor::zeros([], (Kind::Float, Device::Cpu)));
                }
                ws.push(Tensor::stack(&w, 0));
            }
        }
    }
    (Tensor::stack(&ws, 0).view([n, l, r, kk]), idx)
}

#[test]
fn token_retrieval_matches_naive() {
    tch::manual_seed(8);
    let (n, l, r, dr, s, c) = (2, 20, 2, 8, 3, 6);
    let opts = (Kind::Float, Device::Cpu);
    for weighting in [SlotWeighting::StickBreaking, SlotWeighting::Softmax] {
        let q = Tensor::randn([n, l, r, dr], opts).set_requires_grad(true);
        let lmk = Tensor::randn([n, c, r, dr], opts).set_requires_grad(true);
        let got = token_retrieval_reference(&q, &lmk, s, 3, weighting, false);
        let (want, want_idx) = naive_token(&q, &lmk, s, 3, weighting);
        let got_idx = Vec::<i64>::try_from(got.indices.reshape([-1])).unwrap();
        assert_eq!(got_idx, want_idx, "{weighting:?} indices");
        assert_close(&got.weights, &want, &format!("{weighting:?} weights"));
        let g = want.randn_like();
        let xs = [&q, &lmk];
        let gg = Tensor::run_backward(&[(&got.weights * &g).sum(Kind::Float)], &xs, false, false);
        let gw = Tensor::run_backward(&[(&want * &g).sum(Kind::Float)], &xs, false, false);
        for (a, b) in gg.iter().zip(&gw) {
            assert!(all_finite(a), "{weighting:?}: non-finite gradient");
            assert_close(a, b, &format!("{weighting:?} gradients"));
        }
        let total = got
            .weights
            .sum_dim_intlist([-1].as_slice(), false, Kind::Float);
        assert!(
            total.le(1.0 + 1e-5).all().int64_value(&[]) == 1,
            "weights sum above 1"
        );
    }
}

/// `got`, a blocked retrieval of the segment of `len` positions from `first`, picks the
/// reference's chunks there (the same indices) with its weights; `what` names the case.
fn assert_segment_of(got: &Retrieval, want: &Retrieval, first: i64, len: i64, what: &str) {
    let idx = want.indices.narrow(1, first, len);
    assert!(
        got.indices.equal(&idx),
        "{what}: {:?} vs {:?}",
        got.indices,
        idx
    );
    let weights = want.weights.narrow(1, first, len);
    assert_close(&got.weights, &weights, &format!("{what} weights"));
}

/// The blocked retrievals of segmented inference pick the same chunks with the same weights
/// as the full references, for any block size (1 key per block, blocks that do not divide
/// the memory, one block for all) and for a segment anywhere in the sequence; slots beyond
/// the reference's `min(C, topk)` are empty.
#[test]
fn blocked_retrievals_match_the_references() {
    tch::manual_seed(8);
    let opts = (Kind::Float, Device::Cpu);
    let (n, c, d, topk) = (2, 11, 16, 4);
    let ql = Tensor::randn([n, c, d], opts);
    let kl = Tensor::randn([n, c, d], opts);
    let want = chunk_retrieval_reference(&ql, &kl, topk, false);
    for block in [1, 3, 4, 64] {
        for (first, len) in [(0, 11), (0, 2), (3, 5), (8, 3)] {
            // Keys of every chunk up to the segment's end, as a store would hold them.
            let r = chunk_retrieval_blocked(
                &ql.narrow(1, first, len),
                &kl.narrow(1, 0, first + len),
                first,
                topk,
                block,
            );
            let what = format!("chunk block {block} segment {first}+{len}");
            assert_segment_of(&r, &want, first, len, &what);
        }
    }

    let (l, r_heads, dr, s, topk) = (40, 2, 8, 4, 3);
    let q = Tensor::randn([n, l, r_heads, dr], opts);
    let lmk = Tensor::randn([n, l / s, r_heads, dr], opts);
    for weighting in [SlotWeighting::StickBreaking, SlotWeighting::Softmax] {
        let want = token_retrieval_reference(&q, &lmk, s, topk, weighting, false);
        for block in [1, 3, 64] {
            for (first, len) in [(0, 40), (0, 8), (12, 16), (36, 4)] {
                let chunks = (first + len) / s;
                let got = token_retrieval_blocked(
                    &q.narrow(1, first, len),
                    &lmk.narrow(1, 0, chunks),
                    first,
                    s,
                    topk,
                    weighting,
                    block,
                );
                let what = format!("token {weighting:?} block {block} segment {first}+{len}");
                assert_segment_of(&got, &want, first, len, &what);
            }
        }
    }
}
