//! AdamW with its state sharded over a Gloo group of two ranks (two threads of this
//! process): the weights, moments and working copies after a few steps are bit for bit
//! those of the unsharded optimizer on the same gradients, with slices that cut through a
//! variable, the weight-decayed range ending inside a slice, a variable without gradient
//! and padding after the last variable.

use std::sync::Arc;
use std::time::Duration;

use lcm::dist::{Backend, Group, Launch};
use lcm::train::config::OptimConfig;
use lcm::train::optim::{AdamW, FullState};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn wave(n: i64, freq: f64, shape: &[i64]) -> Tensor {
    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * freq + 0.3)
        .sin()
        .view(shape)
}

/// 21 elements: `u` (4, decayed, never used), `w` (12, decayed), `b` (5): two slices of
/// 11, the second ending in one element of padding.
fn store() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let _ = root.var_copy("w", &wave(12, 1.7, &[3, 4]));
    let _ = root.var_copy("b", &wave(5, 2.3, &[5]));
    let _ = root.var_copy("u", &wave(4, 0.9, &[2, 2]));
    vs
}

fn backward(vs: &VarStore, seed: i64) {
    let vars = vs.variables();
    let x = wave(15, 0.37 * seed as f64 + 1.0, &[5, 3]) * 2.0;
    let y = x.matmul(&vars["w"]).sum_dim_intlist(1, true, Kind::Float) + &vars["b"];
    y.square().sum(Kind::Float).backward();
}

fn values(ts: &[Tensor]) -> Vec<Vec<f64>> {
    ts.iter()
        .map(|t| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap())
        .collect()
}

/// Master, moments and working copy after `steps` steps, sharded over `group` or not.
fn train(group: Option<Group>, steps: i64) -> [Vec<Vec<f64>>; 4] {
    let o = OptimConfig {
        weight_decay: 0.1,
        grad_clip: 0.5,
        ..OptimConfig::default()
    };
    let vs = store();
    let mut opt = AdamW::new(&vs);
    if let Some(g) = group {
        opt.shard(Arc::new(g));
    }
    for s in 0..steps {
        opt.zero_grad();
        backward(&vs, 100 + s);
        opt.step(&o, 1e-2).unwrap();
    }
    let FullState { master, m, v, .. } = opt.full_state().unwrap();
    let vars = vs.variables();
    let work: Vec<Tensor> = opt.names.iter().map(|n| vars[n].shallow_clone()).collect();
    [values(&master), values(&m), values(&v), values(&work)]
}

#[test]
fn sharded_state_updates_bit_for_bit_as_the_whole() {
    let (has_gloo, _) = lcm::dist::backends();
    assert!(
        has_gloo,
        "lcm was built without Gloo (scripts/setup.sh unpacks its headers)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ranks: Vec<_> = (0..2u64)
        .map(|rank| {
            std::thread::spawn(move || {
                let launch = Launch {
                    rank,
                    world: 2,
                    local_rank: rank,
                    local_world: 2,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                };
                let g = Group::join(&launch, Backend::Gloo, Device::Cpu, Duration::from_secs(30))
                    .unwrap();
                train(Some(g), 3)
            })
        })
        .collect();
    let whole = train(None, 3);
    for (rank, r) in ranks.into_iter().enumerate() {
        let got = r.join().unwrap();
        for (what, (g, w)) in ["master", "m", "v", "working copy"]
            .iter()
            .zip(got.iter().zip(&whole))
        {
            assert_eq!(
                g, w,
                "rank {rank}: {what} differs from the unsharded optimizer's"
            );
        }
    }
    // The unused variable kept its initial weights and zero moments.
    let iu = 1; // names sorted: b, u, w
    assert_eq!(whole[0][iu], values(&[wave(4, 0.9, &[2, 2])])[0]);
    assert!(whole[1][iu].iter().all(|x| *x == 0.0));
}
