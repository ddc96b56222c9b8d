//! Passkey accuracy of a model by its full-sequence forward, at any length: rows built by
//! the training sampler itself (the run's haystack and `data.synthetic`, every row a
//! passkey row, a seed stream of its own), scored teacher-forced. For toys and tests; the
//! long-context evaluation is `lcm eval niah`.

use std::path::Path;

use tch::{nn, Device, Kind};

use crate::error::{Error, Result};
use crate::model::{self, LanguageModel};
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use crate::train::sampler::Sampler;

/// The model of checkpoint `path` (a `step-*` folder or a run folder: its newest) with its
/// training config, on `device`, at its training step: a model trained with a residual
/// warm-up is in the faithful layout only once told its step (a fresh model is at step 0).
pub fn load_checkpoint(
    path: &Path,
    device: Device,
) -> Result<(nn::VarStore, Box<dyn LanguageModel>, TrainConfig)> {
    let ckpt = checkpoint::resolve(path)?;
    let state = checkpoint::read_state(&ckpt)?;
    let mut vs = nn::VarStore::new(device);
    let mut m = model::build(&vs.root(), &state.config.model)?;
    let file = ckpt.join("model.safetensors");
    vs.load(&file)
        .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    m.set_step(state.step);
    Ok((vs, m, state.config))
}

/// What a probe measured over its rows.
#[derive(Debug, Clone, Copy)]
pub struct PasskeyScore {
    /// Tokens per row.
    pub len: i64,
    pub rows: u64,
    /// Rows whose every answer token is the argmax.
    pub exact: f64,
    /// Answer tokens that are the argmax.
    pub token: f64,
}

/// Passkey rows of `len` tokens from `cfg`'s haystack and `data.synthetic` (the needle
/// uniformly placed at least `min_gap` tokens before the answer), `rows` of them in
/// batches of `batch`, scored by `model.forward(.., false)`.
pub fn passkey_accuracy(
    model: &dyn LanguageModel,
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
        len,
        rows,
        exact: exact as f64 / rows.max(1) as f64,
        token: hit as f64 / total.max(1) as f64,
    })
}
