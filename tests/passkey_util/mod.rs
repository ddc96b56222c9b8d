//! The passkey toys' CI check (issue 7 for DRT, issue 21 for SWA+HSA): a shortened run of a
//! toy config, then teacher-forced exact match of the whole key by the model's full forward
//! ([`passkey_accuracy`]) at multiples of the training length. An untrained model scores
//! about 0.
//!
//! The run keeps the curriculum's first two stages (40 then 64 tokens, the needle past the
//! window) and the residual warm-up, without the last stage that adds needles inside the
//! window; so the rows scored keep the needle past the window too (`min_gap` 24).
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;

use lcm::error::{Error, Result};
use lcm::train::checkpoint::read_state;
use lcm::train::sampler::Sampler;
use lcm::train::{train, TrainConfig, TrainOptions};
use tch::{nn, Device, Kind};

/// One length to score: `times` the training length, `rows` rows in batches of `batch`.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub times: i64,
    pub rows: u64,
    pub batch: u64,
}

/// The probe at `times` the training length: `rows` rows in batches of `batch`.
pub const fn probe(times: i64, rows: u64, batch: u64) -> Probe {
    Probe { times, rows, batch }
}

/// Trains `config` (relative to the crate root) for `steps` steps with the needle past the
/// window, checks that each curriculum stage trained at its own length, then asserts an
/// exact match of at least `want` at every probe.
pub fn train_and_check(config: &str, steps: u64, probes: &[Probe], want: f64) {
    // One intra-op thread: on a loaded 2-core machine more threads are many times slower.
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(config);
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
    let tokens: i64 = (0..steps).map(|s| cfg.seq_len_at(s)).sum::<i64>() * cfg.batch_size;
    assert_eq!(cfg.seq_len_at(0), 40);
    assert_eq!(read_state(&ckpt).unwrap().tokens, tokens as u64);
    let (_vs, model, cfg) = load_checkpoint(&ckpt, Device::Cpu).unwrap();
    for p in probes {
        let len = p.times * cfg.seq_len;
        let t0 = Instant::now();
        let s =
            passkey_accuracy(model.as_ref(), &cfg, len, p.rows, p.batch, 7, Device::Cpu).unwrap();
        eprintln!(
            "len {len}: exact {:.1}% token {:.1}% ({} rows, {:.0}s)",
            100.0 * s.exact,
            100.0 * s.token,
            p.rows,
            t0.elapsed().as_secs_f64()
        );
        assert!(
            s.exact >= want,
            "passkey exact match {:.3} at {len} tokens after {steps} steps (want >= {want})",
            s.exact
        );
    }
}

/// The model of checkpoint `path` (a `step-*` folder or a run folder: its newest) with its
/// training config, on `device`, at its training step: a model trained with a residual
/// warm-up is in the faithful layout only once told its step (a fresh model is at step 0).
pub fn load_checkpoint(
    path: &Path,
    device: Device,
) -> Result<(
    nn::VarStore,
    Box<dyn lcm::model::LanguageModel>,
    TrainConfig,
)> {
    let ckpt = lcm::train::checkpoint::resolve(path)?;
    let state = lcm::train::checkpoint::read_state(&ckpt)?;
    let mut vs = nn::VarStore::new(device);
    let mut m = lcm::model::build(&vs.root(), &state.config.model)?;
    let file = ckpt.join("model.safetensors");
    vs.load(&file)
        .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    m.set_step(state.step);
    Ok((vs, m, state.config))
}

/// What [`passkey_accuracy`] measured over its rows.
#[derive(Debug, Clone, Copy)]
pub struct PasskeyScore {
    /// Rows whose every answer token is the argmax.
    pub exact: f64,
    /// Answer tokens that are the argmax.
    pub token: f64,
}

/// Passkey rows of `len` tokens from `cfg`'s haystack and `data.synthetic` (the needle
/// uniformly placed at least `min_gap` tokens before the answer), `rows` of them in
/// batches of `batch`, scored by `model.forward(.., false)`.
pub fn passkey_accuracy(
    model: &dyn lcm::model::LanguageModel,
    cfg: &TrainConfig,
    len: i64,
    rows: u64,
    batch: u64,
    seed: u64,
    device: Device,
) -> Result<PasskeyScore> {
    let mut c = cfg.clone();
    let Some(s) = c.data.synthetic.as_mut() else {
        return Err(Error::Invalid(
            "passkey probe: the config has no data.synthetic".into(),
        ));
    };
    s.rate = 1.0;
    c.seq_len = len;
    c.seed = seed ^ 0x9a55_0000_0000_0000;
    c.validate()?;
    let sampler = Sampler::for_training(&c)?;
    let (mut exact, mut hit, mut total) = (0u64, 0i64, 0i64);
    tch::no_grad(|| {
        let mut start = 0;
        while start < rows {
            let end = (start + batch.max(1)).min(rows);
            let b = sampler.batch(start..end, device);
            let logits = model.forward(&b.inputs, false);
            let right = logits.argmax(-1, false).eq_tensor(&b.targets);
            let wrong = right.logical_not().logical_and(&b.answer);
            exact += wrong
                .any_dim(1, false)
                .logical_not()
                .sum(Kind::Int64)
                .int64_value(&[]) as u64;
            hit += right
                .logical_and(&b.answer)
                .sum(Kind::Int64)
                .int64_value(&[]);
            total += b.answer.sum(Kind::Int64).int64_value(&[]);
            start = end;
        }
    });
    Ok(PasskeyScore {
        exact: exact as f64 / rows.max(1) as f64,
        token: hit as f64 / total.max(1) as f64,
    })
}
