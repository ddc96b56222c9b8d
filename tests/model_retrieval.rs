//! Retrieval inside the models: visibility (DRT: the choice serving chunk c only holds
//! chunks <= c-2; HSA, in SWA+HSA and RAMba: token t only reads chunks d with
//! (d+1)*S <= t), with and without Gumbel noise; and gradients of the LM loss reach the
//! retrieval scores (through the retrieval query's parameters and the landmark keys) and
//! every encoder parameter: the property that makes retrieval learnable.

mod model_util;

use lcm::model::drt::Drt;
use lcm::model::ramba::Ramba;
use lcm::model::swa_hsa::SwaHsa;
use lcm::model::{LanguageModel, ModelConfig};
use lcm::ops::Retrieval;
use model_util::{lm_loss, tiny, tokens};
use tch::{nn, Device, Kind, Tensor};

/// A fresh model (`new`, config `tiny(arch)`) on the CPU, with its variables.
fn fresh<M>(
    arch: &str,
    new: impl Fn(&nn::Path, &ModelConfig) -> lcm::Result<M>,
) -> (nn::VarStore, M) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = new(&vs.root(), &tiny(arch)).unwrap();
    (vs, m)
}

#[test]
fn drt_chunk_c_reads_only_chunks_before_c_minus_1() {
    tch::manual_seed(21);
    let (_vs, m) = fresh("drt", Drt::new);
    let (s, c) = (4, 10);
    for train in [false, true, true] {
        let out = tch::no_grad(|| m.forward_detailed(&tokens(3, s * c), train));
        assert_eq!(out.retrievals.len(), 2, "one retrieval per group");
        for r in &out.retrievals {
            assert_eq!(r.indices.size(), [3, c, 2]);
            // Row i is landmark i's choice and serves chunk c = i + 1.
            for i in 0..c {
                let row = r.indices.select(1, i);
                let served = i + 1;
                let max = row.max().int64_value(&[]);
                assert!(
                    max <= served - 2,
                    "chunk {served} may read chunk {max} (train={train})"
                );
                // Every visible chunk count fills the slots it can.
                let filled = row
                    .ge(0)
                    .sum_dim_intlist([-1].as_slice(), false, Kind::Int64);
                assert!(
                    filled.eq(i.min(2)).all().int64_value(&[]) == 1,
                    "row {i} slots"
                );
                let w = r.weights.select(1, i);
                assert!(
                    w.masked_select(&row.lt(0))
                        .abs()
                        .sum(Kind::Float)
                        .double_value(&[])
                        == 0.0
                );
                if i > 0 {
                    let sum = w.sum_dim_intlist([-1].as_slice(), false, Kind::Float);
                    assert!(
                        (sum - 1.0).abs().max().double_value(&[]) < 1e-5,
                        "row {i} weights"
                    );
                }
            }
        }
    }
}

/// Token t of an HSA arch reads only chunks d with (d+1)*S <= t, in descending order.
fn check_hsa_visibility(retrievals: &[Retrieval], s: i64, l: i64) {
    for r in retrievals {
        for t in 0..l {
            let idx = r.indices.select(1, t); // (N, r, K)
            let max = idx.max().int64_value(&[]);
            assert!((max + 1) * s <= t || max < 0, "token {t} reads chunk {max}");
            // Slots are in descending chunk order, empty (-1) ones last.
            let sorted = idx.sort(-1, true).0;
            assert!(
                sorted.eq_tensor(&idx).all().int64_value(&[]) == 1,
                "token {t} order"
            );
        }
    }
}

#[test]
fn hsa_token_t_reads_only_completed_chunks() {
    tch::manual_seed(22);
    let (_vs, m) = fresh("swa_hsa", SwaHsa::new);
    let (s, l) = (4, 40);
    for train in [false, true] {
        let out = tch::no_grad(|| m.forward_detailed(&tokens(2, l), train));
        check_hsa_visibility(&out.retrievals, s, l);
    }
}

#[test]
fn ramba_token_t_reads_only_completed_chunks() {
    tch::manual_seed(25);
    let (_vs, m) = fresh("ramba", Ramba::new);
    let (s, l) = (4, 40);
    for train in [false, true] {
        let out = tch::no_grad(|| m.forward_detailed(&tokens(2, l), train));
        assert_eq!(out.retrievals.len(), 2, "one retrieval per group");
        check_hsa_visibility(&out.retrievals, s, l);
    }
}

fn grad_norm(vs: &nn::VarStore, name: &str) -> f64 {
    let vars = vs.variables();
    let v = vars
        .get(name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    v.grad().norm().double_value(&[])
}

fn check_grads(vs: &nn::VarStore, loss: Tensor, retrieval: &[&str], encoder_prefix: &str) {
    loss.backward();
    for name in retrieval {
        let g = grad_norm(vs, name);
        assert!(g > 0.0 && g.is_finite(), "{name}: gradient norm {g}");
    }
    let mut n = 0;
    for (name, v) in vs.variables() {
        assert!(
            v.grad().isfinite().all().int64_value(&[]) == 1,
            "{name}: non-finite gradient"
        );
        if name.starts_with(encoder_prefix) {
            let g = v.grad().norm().double_value(&[]);
            assert!(g > 0.0, "{name}: no gradient reaches the encoder");
            n += 1;
        }
    }
    assert!(n > 5, "expected encoder parameters under {encoder_prefix}");
}

/// The LM loss of a fresh model (`fresh`) on random tokens, with its variables; `hidden` is
/// the model's final hidden states of the tokens.
fn fresh_loss<M: LanguageModel>(
    arch: &str,
    new: impl Fn(&nn::Path, &ModelConfig) -> lcm::Result<M>,
    hidden: impl Fn(&M, &Tensor) -> Tensor,
) -> (nn::VarStore, Tensor) {
    let (vs, m) = fresh(arch, new);
    let x = tokens(2, 40);
    let loss = lm_loss(&m.head(&hidden(&m, &x)), &x);
    (vs, loss)
}

#[test]
fn drt_gradients_reach_retrieval_scores_and_encoder() {
    tch::manual_seed(23);
    let (vs, loss) = fresh_loss("drt", Drt::new, |m, x| m.forward_detailed(x, true).hidden);
    // The landmark RMSNorm weights act only through the retrieval scores.
    check_grads(
        &vs,
        loss,
        &["groups.0.lmk_norm.weight", "groups.1.lmk_norm.weight"],
        "encoder.",
    );
}

#[test]
fn hsa_gradients_reach_retrieval_scores_and_encoder() {
    tch::manual_seed(24);
    let (vs, loss) = fresh_loss("swa_hsa", SwaHsa::new, |m, x| {
        m.forward_detailed(x, true).hidden
    });
    let names = [
        "groups.0.retrieval.q_proj.weight",
        "groups.1.retrieval.q_proj.weight",
        "chunking.lmk_proj.weight",
        "chunking.cls_emb",
    ];
    check_grads(&vs, loss, &names, "chunking.encoder.");
}

#[test]
fn ramba_gradients_reach_retrieval_scores_and_encoder() {
    tch::manual_seed(26);
    let (vs, loss) = fresh_loss("ramba", Ramba::new, |m, x| {
        m.forward_detailed(x, true).hidden
    });
    let names = [
        "groups.0.retrieval.q_proj.weight",
        "groups.1.retrieval.q_proj.weight",
        "chunking.lmk_proj.weight",
        "chunking.cls_emb",
        "groups.1.hsa.0.q_proj.weight",
        "lower.0.mixer.A_log",
        "groups.1.layers.0.mixer.dt_bias",
    ];
    check_grads(&vs, loss, &names, "chunking.encoder.");
}
