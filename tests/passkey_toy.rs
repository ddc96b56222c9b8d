//! The passkey toy (issue 7): `configs/passkey-toy.json` trains on CPU, from scratch, to
//! find a 3-token passkey by retrieval, and keeps finding it at 16x its training length.
//! A shortened run: the curriculum's first two stages (40 then 64 tokens, the needle past
//! the window) and the residual warm-up, without the last stage that adds needles inside
//! the window; so the rows scored keep the needle past the window too (`min_gap` 24).
//! Accuracy is teacher-forced exact match of the whole key by the model's full forward
//! (`lcm::train::probe`). An untrained model scores about 0.

use std::path::Path;
use std::time::Instant;

use lcm::train::checkpoint::read_state;
use lcm::train::probe::{load_checkpoint, passkey_accuracy};
use lcm::train::{train, TrainConfig, TrainOptions};
use tch::Device;

#[test]
fn passkey_toy_learns_and_extrapolates() {
    // One intra-op thread: on a loaded 2-core machine more threads are many times slower.
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/passkey-toy.json");
    let steps = 1000;
    let cfg = TrainConfig::load(
        &config,
        &[
            format!("steps={steps}"),
            format!("checkpoint.dir={}", dir.path().display()),
            "data.synthetic.min_gap=24".into(),
            "log.every=100".into(),
        ],
    )
    .unwrap();
    let t0 = Instant::now();
    let summary = train(&cfg, &TrainOptions::default()).unwrap();
    eprintln!(
        "trained {steps} steps in {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    let ckpt = summary.checkpoint.unwrap();
    // Each curriculum stage trained at its own length.
    let tokens: i64 = (0..steps).map(|s| cfg.seq_len_at(s)).sum::<i64>() * cfg.batch_size;
    assert_eq!(cfg.seq_len_at(0), 40);
    assert_eq!(read_state(&ckpt).unwrap().tokens, tokens as u64);
    let (_vs, model, cfg) = load_checkpoint(&ckpt, Device::Cpu).unwrap();
    for (len, rows, batch) in [(cfg.seq_len, 128, 32), (16 * cfg.seq_len, 48, 8)] {
        let t0 = Instant::now();
        let s = passkey_accuracy(model.as_ref(), &cfg, len, rows, batch, 7, Device::Cpu).unwrap();
        eprintln!(
            "len {len}: exact {:.1}% token {:.1}% ({rows} rows, {:.0}s)",
            100.0 * s.exact,
            100.0 * s.token,
            t0.elapsed().as_secs_f64()
        );
        assert!(
            s.exact >= 0.9,
            "passkey exact match {:.3} at {len} tokens after {steps} steps (want >= 0.9)",
            s.exact
        );
    }
}
