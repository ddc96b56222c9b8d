//! Small model configs and helpers shared by the `model_*` tests.
#![allow(dead_code)]

use lcm::model::{self, LanguageModel, ModelConfig};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

pub const VOCAB: i64 = 40;

/// A CPU-sized config of `arch` where every path matters at short lengths: chunks of 4,
/// a window of 5 positions (so retrieval is the only way past about one chunk), top-2.
pub fn tiny(arch: &str) -> ModelConfig {
    let mut v = json!({
        "arch": arch, "vocab_size": VOCAB, "d_model": 32, "n_heads": 4, "n_kv_heads": 2,
        "d_ff": 64, "window": 5
    });
    let o = v.as_object_mut().unwrap();
    match arch {
        "drt" => {
            o.insert(
                "drt".into(),
                json!({"chunk_size": 4, "landmark_id": VOCAB - 1, "topk": 2, "encoder_layers": 1,
                       "decoder_layers": [1, 1, 1]}),
            );
        }
        "swa_hsa" => {
            o.insert(
                "hsa".into(),
                json!({"chunk_size": 4, "topk": 2, "lower_layers": 1, "upper_layers": 2,
                       "groups": 2, "weighting": "softmax", "gumbel": true}),
            );
        }
        "ramba" => {
            // Mamba2 below and above two groups of one HSA layer each; the scan in chunks of
            // 8, so a 48-token sequence and every segment boundary cross scan chunks.
            o.insert(
                "ramba".into(),
                json!({"chunk_size": 4, "topk": 2, "lower_layers": 1, "upper_layers": 2,
                       "groups": 2, "mamba_per_hsa": 1, "weighting": "softmax",
                       "gumbel": true}),
            );
            o.insert(
                "mamba2".into(),
                json!({"d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 8}),
            );
        }
        _ => {
            o.insert("n_layers".into(), json!(2));
        }
    }
    ModelConfig::from_json(&v).expect("tiny config")
}

pub const ARCHS: [&str; 5] = ["drt", "swa_hsa", "ramba", "swa", "dense"];

pub fn build(cfg: &ModelConfig) -> (nn::VarStore, Box<dyn LanguageModel>) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = model::build(&vs.root(), cfg).expect("build");
    (vs, m)
}

/// Random real tokens (never the landmark id).
pub fn tokens(b: i64, t: i64) -> Tensor {
    Tensor::randint(VOCAB - 1, [b, t], (Kind::Int64, Device::Cpu))
}

/// Next-token cross-entropy of `logits (B, T, V)` against `tokens (B, T)`.
pub fn lm_loss(logits: &Tensor, tokens: &Tensor) -> Tensor {
    let (b, t, v) = (logits.size()[0], logits.size()[1], logits.size()[2]);
    let pred = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]);
    let target = tokens.narrow(1, 1, t - 1).reshape([b * (t - 1)]);
    pred.cross_entropy_for_logits(&target)
}
