//! Throwaway harness (issue 7, until `lcm eval niah`): passkey exact match of a DRT
//! checkpoint at several lengths by its full forward, and how often the last chunk's
//! retrieval holds the key's chunk.
//!
//! `cargo run --release --example passkey_probe -- CKPT ROWS LEN [LEN ...]`

use std::path::Path;

use lcm::model::drt::Drt;
use lcm::model::LanguageModel;
use lcm::train::checkpoint;
use lcm::train::probe::{load_checkpoint, passkey_accuracy};
use lcm::train::sampler::Sampler;
use tch::{nn, Device};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = checkpoint::resolve(Path::new(&args[1])).unwrap();
    let rows: u64 = args[2].parse().unwrap();
    let state = checkpoint::read_state(&ckpt).unwrap();
    let (_, _, cfg) = load_checkpoint(&ckpt, Device::Cpu).unwrap();
    // The same weights as a `Drt`, for its retrievals.
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut model = Drt::new(&vs.root(), &cfg.model).unwrap();
    vs.load(ckpt.join("model.safetensors")).unwrap();
    model.set_step(state.step);
    let d = cfg.model.drt.clone().unwrap();
    let syn = cfg.data.synthetic.clone().unwrap();
    println!("checkpoint {} (step {})", ckpt.display(), state.step);
    for len in &args[3..] {
        let len: i64 = len.parse().unwrap();
        let t0 = std::time::Instant::now();
        let batch = (16384 / len).max(1) as u64;
        let s = passkey_accuracy(&model, &cfg, len, rows, batch, 1, Device::Cpu).unwrap();
        // Retrieval: does landmark C-2 (serving the last chunk) choose a key chunk?
        let mut c2 = cfg.clone();
        c2.seq_len = len;
        c2.seed ^= 0x9a55_0000_0000_0000 ^ 1;
        c2.data.synthetic.as_mut().unwrap().rate = 1.0;
        let sampler = Sampler::for_training(&c2).unwrap();
        let mut found = 0;
        let n = rows.min(64);
        for i in 0..n {
            let b = sampler.batch(i..i + 1, Device::Cpu);
            let out = tch::no_grad(|| model.forward_detailed(&b.inputs, false));
            let toks: Vec<i64> = Vec::try_from(b.inputs.view([-1])).unwrap();
            let nl = syn.needle.len();
            let p = (0..toks.len() - nl)
                .find(|&p| (0..nl).all(|j| toks[p + j] == syn.needle[j] as i64))
                .unwrap();
            let k0 = (p + nl) as i64 / d.chunk_size;
            let k1 = (p + nl + syn.key_len - 1) as i64 / d.chunk_size;
            let c = len / d.chunk_size;
            let idx: Vec<i64> = Vec::try_from(out.retrievals[0].indices.get(0).get(c - 2)).unwrap();
            if idx.iter().any(|&j| j >= k0 && j <= k1) {
                found += 1;
            }
        }
        println!(
            "len {len:6}: exact {:5.1}%  token {:5.1}%  key chunk retrieved {:5.1}%  ({} rows, {:.1}s)",
            100.0 * s.exact,
            100.0 * s.token,
            100.0 * found as f64 / n as f64,
            s.rows,
            t0.elapsed().as_secs_f64()
        );
    }
}
