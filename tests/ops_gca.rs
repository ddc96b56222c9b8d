//! Two-stage GCA against a naive loop over (batch, head, chunk): forward and gradients of
//! q, k, v and the weights, fp32 on CPU, with and without softmax-off-by-one and GQA.
//! Tolerance: max |diff| <= 1e-5 + 1e-4 * max |expected|.

use lcm::ops::gca_reference;
use tch::{Device, Kind, Tensor};

mod common;

use common::assert_close_to_scale as assert_close;

fn naive(q: &Tensor, k: &Tensor, v: &Tensor, w: &Tensor, scale: f64, one: bool) -> Tensor {
    let (b, hq) = (q.size()[0], q.size()[1]);
    let (hkv, nk) = (k.size()[1], k.size()[2]);
    let g = hq / hkv;
    let mut out = Vec::new();
    for bi in 0..b {
        let mut heads = Vec::new();
        for h in 0..hq {
            let qh = q.get(bi).get(h); // (Q, D)
            let mut acc = qh.zeros_like();
            for c in 0..nk {
                let kc = k.get(bi).get(h / g).get(c); // (K_CTX, D)
                let vc = v.get(bi).get(h / g).get(c);
                let mut s = qh.matmul(&kc.tr()) * scale;
                if one {
                    // A zero logit whose value row is zero: the off-by-one denominator.
                    s = Tensor::cat(&[s.shallow_clone(), s.zeros_like().narrow(1, 0, 1)], 1);
                }
                let mut p = s.softmax(-1, Kind::Float);
                if one {
                    p = p.narrow(1, 0, kc.size()[0]);
                }
                acc = acc.g_add(&(p.matmul(&vc) * w.get(bi).get(c)));
            }
            heads.push(acc);
        }
        out.push(Tensor::stack(&heads, 0));
    }
    Tensor::stack(&out, 0)
}

#[test]
fn gca_matches_naive_forward_and_backward() {
    tch::manual_seed(3);
    for &(hq, hkv, nk, kctx, one) in &[
        (4, 4, 3, 8, false),
        (4, 2, 3, 8, true),
        (6, 1, 2, 5, false),
        (2, 2, 1, 4, true),
    ] {
        let (b, nq, d) = (3, 7, 8);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([b, hq, nq, d], opts).set_requires_grad(true);
        let k = Tensor::randn([b, hkv, nk, kctx, d], opts).set_requires_grad(true);
        let v = Tensor::randn([b, hkv, nk, kctx, d], opts).set_requires_grad(true);
        let w = Tensor::randn([b, nk], opts)
            .softmax(-1, Kind::Float)
            .set_requires_grad(true);
        let got = gca_reference(&q, &k, &v, &w, 0.3, one);
        let want = naive(&q, &k, &v, &w, 0.3, one);
        let what = format!("Hq={hq} Hkv={hkv} K={nk} K_CTX={kctx} off-by-one={one}");
        let gg = common::assert_attention_close_to_naive(&what, &got, &want, [&q, &k, &v, &w]);
        assert!(
            gg[3].abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{what}: dw is zero"
        );
    }
}

#[test]
fn zero_slot_gives_the_off_by_one_softmax() {
    // DRT's S=63 trick: a zeroed K/V slot equals softmax-off-by-one over the other slots.
    tch::manual_seed(4);
    let opts = (Kind::Float, Device::Cpu);
    let q = Tensor::randn([2, 2, 5, 4], opts);
    let k = Tensor::randn([2, 2, 3, 6, 4], opts);
    let v = Tensor::randn([2, 2, 3, 6, 4], opts);
    let w = Tensor::rand([2, 3], opts);
    let zero = Tensor::zeros([2, 2, 3, 1, 4], opts);
    let kz = Tensor::cat(&[&k, &zero], 3);
    let vz = Tensor::cat(&[&v, &zero], 3);
    let a = gca_reference(&q, &kz, &vz, &w, 0.5, false);
    let b = gca_reference(&q, &k, &v, &w, 0.5, true);
    assert_close(&a, &b, "zeroed slot vs off-by-one");
}

/// The memory-reading form's reference is the plain reference on the gathered chunks, and
/// `gca_gathered` dispatches to it on the CPU (bit for bit).
#[test]
fn gathered_reference_is_the_reference_on_gathered_chunks() {
    use lcm::ops::gca::{gather_chunks, gca_gathered, gca_gathered_reference};
    tch::manual_seed(10);
    let opts = (Kind::Float, Device::Cpu);
    let (b, m, hq, hkv, nq, nk, kctx, d) = (5, 7, 4, 2, 3, 3, 4, 8);
    let q = Tensor::randn([b, hq, nq, d], opts);
    let mk = Tensor::randn([m, kctx, hkv, d], opts);
    let mv = Tensor::randn([m, kctx, hkv, d], opts);
    let idx = Tensor::randint(m, [b, nk], (Kind::Int64, Device::Cpu));
    let w = Tensor::rand([b, nk], opts);
    let (k, v) = (gather_chunks(&mk, &idx), gather_chunks(&mv, &idx));
    assert_eq!(k.size(), [b, hkv, nk, kctx, d]);
    // Row r of the memory, head h, is chunk slot c of query chunk i when idx[i, c] = r.
    let (i, c, h) = (3, 1, 1);
    let r = idx.int64_value(&[i, c]);
    assert!(k.get(i).get(h).get(c).equal(&mk.get(r).select(1, h)));
    let want = lcm::ops::gca_reference(&q, &k, &v, &w, 0.3, true);
    assert!(gca_gathered_reference(&q, &mk, &mv, &idx, &w, 0.3, true).equal(&want));
    assert!(gca_gathered(&q, &mk, &mv, &idx, &w, 0.3, true).equal(&want));
}
