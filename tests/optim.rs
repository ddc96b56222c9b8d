//! AdamW (`lcm::train::optim`): the update over flat buffers against AdamW computed by hand
//! in f64, and against the one-variable-at-a-time path it falls back to when a variable has
//! no gradient.

use lcm::train::config::OptimConfig;
use lcm::train::optim::AdamW;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Deterministic values without the global RNG (the tests of this file run in parallel).
fn wave(n: i64, freq: f64, shape: &[i64]) -> Tensor {
    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * freq + 0.3)
        .sin()
        .view(shape)
}

/// A matrix (weight-decayed), a vector (not decayed) and, if `unused`, a matrix the loss
/// never touches.
fn store(unused: bool) -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let _ = root.var_copy("w", &wave(12, 1.7, &[3, 4]));
    let _ = root.var_copy("b", &wave(4, 2.3, &[4]));
    if unused {
        let _ = root.var_copy("u", &wave(4, 0.9, &[2, 2]));
    }
    vs
}

/// Gradients of a quadratic loss on inputs that change with `seed`.
fn backward(vs: &VarStore, seed: i64) {
    let vars = vs.variables();
    let x = wave(15, 0.37 * seed as f64 + 1.0, &[5, 3]) * 2.0;
    let y = x.matmul(&vars["w"]) + &vars["b"];
    y.square().sum(Kind::Float).backward();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn config(grad_clip: f64) -> OptimConfig {
    OptimConfig {
        weight_decay: 0.1,
        grad_clip,
        ..OptimConfig::default()
    }
}

/// `steps` updates of `vs` through AdamW, each on fresh gradients; returns (name, master).
fn run(vs: &VarStore, o: &OptimConfig, steps: u64) -> (AdamW, Vec<(String, Vec<f64>)>) {
    let mut opt = AdamW::new(vs);
    for s in 0..steps {
        opt.zero_grad();
        backward(vs, 100 + s as i64);
        opt.step(o, 1e-2).unwrap();
    }
    let out = opt
        .names
        .iter()
        .zip(&opt.master)
        .map(|(n, t)| (n.clone(), values(t)))
        .collect();
    (opt, out)
}

#[test]
fn flat_update_matches_adamw_by_hand() {
    for clip in [0.0, 0.5] {
        let o = config(clip);
        let vs = store(false);
        let names = ["b", "w"];
        let init: Vec<Vec<f64>> = names.iter().map(|n| values(&vs.variables()[*n])).collect();
        let (_, got) = run(&vs, &o, 3);

        // The same three steps in f64 from the same gradients.
        let want_vs = store(false);
        let mut p = init.clone();
        let mut m: Vec<Vec<f64>> = p.iter().map(|x| vec![0.0; x.len()]).collect();
        let mut v = m.clone();
        for s in 0..3u64 {
            for t in want_vs.variables().values() {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            tch::no_grad(|| {
                let mut vars = want_vs.variables();
                for (n, x) in names.iter().zip(&p) {
                    let t = vars.get_mut(*n).unwrap();
                    let shape = t.size();
                    t.copy_(&Tensor::from_slice(x).view(shape.as_slice()));
                }
            });
            backward(&want_vs, 100 + s as i64);
            let g: Vec<Vec<f64>> = names
                .iter()
                .map(|n| values(&want_vs.variables()[*n].grad()))
                .collect();
            let norm = g.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
            let scale = if clip > 0.0 && norm > clip {
                clip / (norm + 1e-6)
            } else {
                1.0
            };
            let t = (s + 1) as i32;
            let (bc1, bc2) = (1.0 - o.beta1.powi(t), 1.0 - o.beta2.powi(t));
            for k in 0..names.len() {
                let decay = if names[k] == "w" {
                    1.0 - 1e-2 * o.weight_decay
                } else {
                    1.0
                };
                for j in 0..p[k].len() {
                    let gj = g[k][j] * scale;
                    m[k][j] = m[k][j] * o.beta1 + gj * (1.0 - o.beta1);
                    v[k][j] = v[k][j] * o.beta2 + gj * gj * (1.0 - o.beta2);
                    let update = (m[k][j] / bc1) / ((v[k][j] / bc2).sqrt() + o.eps);
                    p[k][j] = p[k][j] * decay - 1e-2 * update;
                }
            }
        }
        for (k, n) in names.iter().enumerate() {
            let (gn, gv) = &got[k];
            assert_eq!(gn, n);
            for (a, b) in gv.iter().zip(&p[k]) {
                // fp32 arithmetic against f64: a few ulps of a value of order 1
                assert!((a - b).abs() < 1e-5, "clip {clip}, {n}: {a} vs {b}");
            }
            // and the update did move the weights (by ~1e-2 per step)
            let moved = gv
                .iter()
                .zip(&init[k])
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>();
            assert!(moved > 1e-3, "{n} did not move");
        }
    }
}

#[test]
fn a_variable_without_gradient_is_left_alone_and_the_rest_update_as_usual() {
    // clipped: the two paths must also agree on the gradient norm
    let o = config(0.5);
    // Without `u` every variable has a gradient: the flat path. With it, the per-variable
    // path; the variables both have must come out bit for bit the same.
    let (_, flat) = run(&store(false), &o, 3);
    let vs = store(true);
    let u0 = values(&vs.variables()["u"]);
    let (opt, each) = run(&vs, &o, 3);
    for (name, want) in &flat {
        let got = &each.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(got, want, "{name}");
    }
    let iu = opt.names.iter().position(|n| n == "u").unwrap();
    assert_eq!(values(&opt.master[iu]), u0);
    assert!(values(&opt.m[iu]).iter().all(|x| *x == 0.0));
    assert_eq!(values(&vs.variables()["u"]), u0);
}

#[test]
fn the_working_copy_follows_the_master() {
    let vs = store(false);
    let (opt, _) = run(&vs, &config(1.0), 2);
    for (n, master) in opt.names.iter().zip(&opt.master) {
        assert_eq!(values(&vs.variables()[n]), values(master), "{n}");
    }
    assert!(opt.all_finite());
}
