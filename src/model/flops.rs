//! FLOP counting for MFU, shared by the archs.
//!
//! Convention: a multiply-add is 2 FLOPs; only matrix products count (norms, softmax,
//! activations and RoPE are ignored); a backward pass costs twice the forward, so
//! forward+backward is `3 x` the forward. Attention counts the keys a query actually sees
//! (`QK^T` and `PV`: `4 * Hq * head_dim` per query-key pair), averaged over the positions of
//! a sequence, so a sliding window costs `O(W)` per token and causal attention `O(T/2)`.

use super::config::ModelConfig;

/// Weights of the linear layers of one self-attention block (q, k, v, o and the SwiGLU MLP).
pub fn block_weights(cfg: &ModelConfig) -> f64 {
    let hd = cfg.head_dim();
    let attn = 2 * cfg.d_model * cfg.n_heads * hd + 2 * cfg.d_model * cfg.n_kv_heads * hd;
    (attn + 3 * cfg.d_model * cfg.d_ff) as f64
}

/// Forward FLOPs of the attention of one query over `keys` keys.
pub fn attention(cfg: &ModelConfig, keys: f64) -> f64 {
    4.0 * (cfg.n_heads * cfg.head_dim()) as f64 * keys
}

/// Mean number of keys a query sees in a causal window `window` over `t` positions.
pub fn mean_window_keys(t: i64, window: i64) -> f64 {
    if t <= 0 {
        return 0.0;
    }
    let (t, w) = (t as f64, window as f64);
    let total = if t <= w + 1.0 {
        t * (t + 1.0) / 2.0
    } else {
        (w + 1.0) * (w + 2.0) / 2.0 + (t - w - 1.0) * (w + 1.0)
    };
    total / t
}

/// Mean number of keys a query sees under full causal attention over `t` positions.
pub fn mean_causal_keys(t: i64) -> f64 {
    (t as f64 + 1.0) / 2.0
}

/// Forward FLOPs of a self-attention block per position.
pub fn block_forward(cfg: &ModelConfig, keys: f64) -> f64 {
    2.0 * block_weights(cfg) + attention(cfg, keys)
}

/// Forward FLOPs of the output head per token.
pub fn lm_head_forward(cfg: &ModelConfig) -> f64 {
    2.0 * (cfg.d_model * cfg.vocab_size) as f64
}

/// FLOPs per token of a training step whose output head ran at a fraction `scored` of the
/// positions (the trainer applies it only where a target is scored: answer-only rows score
/// 3 positions of 512K), from the arch's `per_token` (which counts the head at every
/// position). For a 7M model with a 50K vocabulary the head is ~88% of `per_token`, so
/// counting it at unscored positions overstated MFU eightfold (docs/benchmarks.md).
pub fn trained_per_token(cfg: &ModelConfig, per_token: f64, scored: f64) -> f64 {
    per_token - 3.0 * lm_head_forward(cfg) * (1.0 - scored.clamp(0.0, 1.0))
}
