//! CPU forward+backward throughput of the shipped tiny model configs.
//!
//! `cargo run --release --example model_throughput [THREADS]` prints, per config, the
//! tokens/s of a forward, a next-token loss and a backward on a (4, ~256) batch, the model's
//! FLOPs per token and the FLOP rate that implies.

use std::time::Instant;

use lcm::model::{self, ModelConfig};
use tch::{nn, Device, Kind, Tensor};

fn main() {
    let threads: i32 = std::env::args()
        .nth(1)
        .map_or(2, |s| s.parse().expect("THREADS"));
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/models");
    for name in ["drt-tiny", "swa-hsa-tiny", "swa-tiny", "dense-tiny"] {
        let text = std::fs::read_to_string(format!("{dir}/{name}.json")).expect("config");
        let cfg: ModelConfig = serde_json::from_str(&text).expect("parse");
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model::build(&vs.root(), &cfg).expect("build");
        let mult = m.length_multiple();
        let t = 256 / mult * mult;
        let b = 4;
        let x = Tensor::randint(50000, [b, t], (Kind::Int64, Device::Cpu));
        let step = || {
            let logits = m.forward(&x, true);
            let v = logits.size()[2];
            let loss = logits
                .narrow(1, 0, t - 1)
                .reshape([-1, v])
                .cross_entropy_for_logits(&x.narrow(1, 1, t - 1).reshape([-1]));
            for p in vs.trainable_variables() {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            loss.backward();
        };
        step(); // warm-up
        let n = 5;
        let t0 = Instant::now();
        for _ in 0..n {
            step();
        }
        let secs = t0.elapsed().as_secs_f64() / n as f64;
        let tps = (b * t) as f64 / secs;
        let params: i64 = vs
            .trainable_variables()
            .iter()
            .map(|p| p.numel() as i64)
            .sum();
        let fpt = m.flops_per_token(t);
        println!(
            "{name:13} params {:6.2}M  T={t:4}  {tps:8.0} tokens/s  {:6.1} MFLOP/token  {:5.2} GFLOP/s  ({threads} threads)",
            params as f64 / 1e6,
            fpt / 1e6,
            tps * fpt / 1e9
        );
    }
}
