//! GPU check and timing of the models with the reference ops (run on the H200 through
//! `scripts/gpu-test.sh exec`).
//!
//! 1. Each tiny config: fp32 logits and parameter gradients on CUDA against the CPU, with
//!    the same weights and tokens (worst relative difference), and a bf16 forward.
//! 2. Forward+backward tokens/s and MFU (bf16 weights, 989 TFLOP/s dense bf16 peak) of
//!    `drt-128m` at 16380 tokens and the `*-small` configs at 4096, batch 1.

use std::time::Instant;

use lcm::model::{self, LanguageModel, ModelConfig};
use tch::{nn, Cuda, Device, Kind, Tensor};

fn config(name: &str) -> ModelConfig {
    // Relative first: the GPU machine has the repository elsewhere.
    let text = std::fs::read_to_string(format!("configs/models/{name}.json"))
        .or_else(|_| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/models");
            std::fs::read_to_string(format!("{dir}/{name}.json"))
        })
        .expect("config");
    serde_json::from_str(&text).expect("parse")
}

fn loss_of(m: &dyn LanguageModel, x: &Tensor) -> (Tensor, Tensor) {
    let logits = m.forward(x, false);
    let (t, v) = (x.size()[1], logits.size()[2]);
    let loss = logits
        .narrow(1, 0, t - 1)
        .reshape([-1, v])
        .to_kind(Kind::Float)
        .cross_entropy_for_logits(&x.narrow(1, 1, t - 1).reshape([-1]));
    (logits, loss)
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
}

fn check(name: &str, gpu: Device) {
    let cfg = config(name);
    let cpu_vs = nn::VarStore::new(Device::Cpu);
    let cpu = model::build(&cpu_vs.root(), &cfg).unwrap();
    let mut gpu_vs = nn::VarStore::new(gpu);
    let on_gpu = model::build(&gpu_vs.root(), &cfg).unwrap();
    gpu_vs.copy(&cpu_vs).unwrap();
    let t = cpu.length_multiple() * if cpu.length_multiple() > 1 { 8 } else { 128 };
    let x = Tensor::randint(50000, [2, t], (Kind::Int64, Device::Cpu));
    let (lc, loss_c) = loss_of(cpu.as_ref(), &x);
    let (lg, loss_g) = loss_of(on_gpu.as_ref(), &x.to_device(gpu));
    loss_c.backward();
    loss_g.backward();
    let gv = gpu_vs.variables();
    let worst = cpu_vs
        .variables()
        .iter()
        .map(|(n, v)| (rel(&gv[n].grad(), &v.grad()), n.clone()))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    gpu_vs.bfloat16();
    let lb = tch::no_grad(|| on_gpu.forward(&x.to_device(gpu), false));
    let finite = lb.isfinite().all().int64_value(&[]) == 1;
    println!(
        "{name:13} T={t:4} fp32 logits rel diff {:.2e}, worst grad rel diff {:.2e} ({}); bf16 logits rel diff {:.2e} finite={finite}",
        rel(&lg, &lc),
        worst.0,
        worst.1,
        rel(&lb, &lc)
    );
}

fn time(name: &str, t: i64, gpu: Device) {
    let cfg = config(name);
    let mut vs = nn::VarStore::new(gpu);
    let m = model::build(&vs.root(), &cfg).unwrap();
    vs.bfloat16();
    let t = t / m.length_multiple() * m.length_multiple();
    let x = Tensor::randint(50000, [1, t], (Kind::Int64, gpu));
    let step = || {
        let (_, loss) = loss_of(m.as_ref(), &x);
        for p in vs.trainable_variables() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
    };
    step();
    Cuda::synchronize(0);
    let n = 3;
    let t0 = Instant::now();
    for _ in 0..n {
        step();
    }
    Cuda::synchronize(0);
    let secs = t0.elapsed().as_secs_f64() / n as f64;
    let tps = t as f64 / secs;
    let mfu = tps * m.flops_per_token(t) / 989e12;
    println!(
        "{name:13} T={t:5} bf16: {tps:9.0} tokens/s, {:.1} ms/step, MFU {:.2}% (reference ops)",
        secs * 1e3,
        mfu * 100.0
    );
}

fn main() {
    if !Cuda::is_available() {
        println!("no CUDA device");
        return;
    }
    tch::manual_seed(0);
    let gpu = Device::Cuda(0);
    for name in ["drt-tiny", "swa-hsa-tiny", "swa-tiny", "dense-tiny"] {
        check(name, gpu);
    }
    time("drt-128m", 16380, gpu);
    for name in ["drt-small", "swa-hsa-small", "swa-small", "dense-small"] {
        time(name, 4096, gpu);
    }
}
