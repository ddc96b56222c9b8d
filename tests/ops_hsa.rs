//! Gathered HSA against a naive loop over (batch, token, head, slot): forward and gradients
//! of q, k, v and the weights, fp32 on CPU, with GQA, off-by-one, repeated indices and
//! masked slots (index -1 / weight 0). Tolerance: max |diff| <= 1e-5 + 1e-4 * max |expected|.

use lcm::ops::hsa_reference;
use tch::{Device, Kind, Tensor};

mod common;

#[allow(clippy::too_many_arguments)]
fn naive(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    w: &Tensor,
    idx: &Tensor,
    s: i64,
    scale: f64,
    one: bool,
) -> Tensor {
    let (n, l, hq, _) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let (h, nk) = (k.size()[2], w.size()[3]);
    let g = hq / h;
    let mut batch = Vec::new();
    for b in 0..n {
        let mut toks = Vec::new();
        for t in 0..l {
            let mut heads = Vec::new();
            for hh in 0..hq {
                let qv = q.get(b).get(t).get(hh); // (D,)
                let mut acc = qv.zeros_like();
                for slot in 0..nk {
                    let c = idx.int64_value(&[b, t, hh / g, slot]);
                    if c < 0 {
                        continue;
                    }
                    let kc = k.get(b).narrow(0, c * s, s).select(1, hh / g); // (S, D)
                    let vc = v.get(b).narrow(0, c * s, s).select(1, hh / g);
                    let mut sc = kc.matmul(&qv) * scale;
                    if one {
                        sc = Tensor::cat(&[sc.shallow_clone(), sc.zeros_like().narrow(0, 0, 1)], 0);
                    }
                    let p = sc.softmax(-1, Kind::Float).narrow(0, 0, s);
                    acc = acc.g_add(&(p.matmul(&vc) * w.get(b).get(t).get(hh / g).get(slot)));
                }
                heads.push(acc);
            }
            toks.push(Tensor::stack(&heads, 0));
        }
        batch.push(Tensor::stack(&toks, 0));
    }
    Tensor::stack(&batch, 0)
}

#[test]
fn hsa_matches_naive_forward_and_backward() {
    tch::manual_seed(5);
    for &(hq, h, one) in &[(4, 2, false), (4, 1, true), (2, 2, false)] {
        let (n, l, d, s, c, nk) = (2, 11, 8, 4, 5, 3);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([n, l, hq, d], opts).set_requires_grad(true);
        let k = Tensor::randn([n, c * s, h, d], opts).set_requires_grad(true);
        let v = Tensor::randn([n, c * s, h, d], opts).set_requires_grad(true);
        let w = Tensor::rand([n, l, h, nk], opts).set_requires_grad(true);
        // Random chunk numbers with some slots masked; duplicates are allowed.
        let idx = Tensor::randint(c, [n, l, h, nk], (Kind::Int64, Device::Cpu));
        let mask = Tensor::rand([n, l, h, nk], opts).lt(0.25);
        let idx = idx.masked_fill(&mask, -1);
        let got = hsa_reference(&q, &k, &v, &w, &idx, s, 0.4, one);
        let want = naive(&q, &k, &v, &w, &idx, s, 0.4, one);
        let what = format!("Hq={hq} H={h} off-by-one={one}");
        let gg = common::assert_attention_close_to_naive(&what, &got, &want, [&q, &k, &v, &w]);
        // Masked slots take no gradient into their weight.
        let masked_dw = gg[3]
            .masked_select(&mask)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert_eq!(masked_dw, 0.0, "{what}: masked slots got weight gradient");
    }
}
