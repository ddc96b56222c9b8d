//! A DRT under the names of the reference implementation: `DRTForCausalLM` of
//! ant-research/long-context-modeling (`model/DRT.py` with `model/llama.py`), so that its
//! `load_state_dict` (strict) takes the weights of an lcm DRT, and back.
//!
//! The two models hold the same tensors in the same layout (every projection is an
//! `nn.Linear` weight `(out, in)` on both sides, heads split `(h d)` with the head outer,
//! no fused or split projections, the landmark is an ordinary embedding row), so the
//! mapping is a renaming:
//!
//! ```text
//! lcm                                   reference (DRTForCausalLM.state_dict())
//! embed.weight                          model.embed_tokens.weight (and lm_head.weight, tied)
//! lower.<i>.attn_norm.weight            model.lower_layers.<i>.input_layernorm.weight
//! lower.<i>.attn.{q,k,v,o}_proj.weight  model.lower_layers.<i>.self_attn.{q,k,v,o}_proj.weight
//! lower.<i>.mlp_norm.weight             model.lower_layers.<i>.post_attention_layernorm.weight
//! lower.<i>.mlp.{gate,up,down}_proj.w.  model.lower_layers.<i>.mlp.{gate,up,down}_proj.weight
//! encoder.prenorm.weight                model.enc_prenorm.weight
//! encoder.layers.<i>.<block>            model.encoder.layers.<i>.<block>   (as lower.<i>)
//! encoder.norm.weight                   model.encoder.norm.weight
//! chunk_{k,v}_proj.weight               model.chunk_{k,v}_proj.weight
//! groups.<g>.lmk_norm.weight            model.lmk_norms.<g>.weight
//! groups.<g>.layers.<i>.<block>         model.upper_layers.<g>.<i>.<block>  (as lower.<i>)
//! groups.<g>.layers.<i>.gca_norm.weight model.upper_layers.<g>.<i>.gca.pre_norm.weight
//! groups.<g>.layers.<i>.gca.{q,o}_proj. model.upper_layers.<g>.<i>.gca.{q,o}_proj.weight
//! norm.weight                           model.norm.weight
//! lm_head.weight (untied)               lm_head.weight
//! ```
//!
//! plus one buffer per decoder self-attention, `model.{lower,upper}_layers.….self_attn.m`:
//! the ALiBi slopes `2^(-8(i+1)/h)` (fp32, `(h,)`), which the reference keeps in its state
//! dict. The reference's `config.json` comes from [`reference_config`], and
//! [`config_from_reference`] reads one back.
//!
//! Only the DRTs the reference can express map ([`check_mappable`]): ALiBi and no RoPE in
//! the decoder, no q/k norm, as many kv heads as heads (the reference's chunk memory and
//! encoder are multi-head), RoPE base 10000 (its encoder's fixed base), a chunk of
//! `S = 63 (mod 64)` with the landmark slot zeroed or `S = 0 (mod 64)` with it dropped (the
//! reference picks the slot rule from `S` alone), and the faithful upper-layer residual
//! (no residual warm-up left). Differences that remain by design are in docs/fidelity.md.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::config::{Arch, DrtConfig, LandmarkSlot, ModelConfig, Positional};
use super::layers::alibi_slopes;
use crate::error::{Error, Result};

/// The RoPE base of the reference's chunk encoder (`LlamaConfig`'s default; its
/// `encoder_config` passes none).
const REFERENCE_ROPE_THETA: f64 = 10000.0;

fn unmappable(what: String) -> Error {
    Error::Invalid(format!(
        "this model has no counterpart in the reference DRT (ant-research \
         model/DRT.py): {what}"
    ))
}

/// The DRT section of `cfg`, if its model is one that the reference expresses at training
/// step `step` (the step matters for `residual_warmup_steps`); the error names the first
/// difference.
pub fn check_mappable(cfg: &ModelConfig, step: u64) -> Result<&DrtConfig> {
    let d = match (cfg.arch, &cfg.drt) {
        (Arch::Drt, Some(d)) => d,
        _ => {
            let arch = serde_json::to_value(cfg.arch).unwrap_or_default();
            return Err(unmappable(format!(
                "arch {arch}; only drt has a reference counterpart here"
            )));
        }
    };
    if cfg.positional != Positional::Alibi {
        return Err(unmappable(format!(
            "model.positional is {:?}; the reference's decoder uses ALiBi only",
            cfg.positional
        )));
    }
    if cfg.qk_norm {
        return Err(unmappable(
            "model.qk_norm is on; the reference has no q/k norm".into(),
        ));
    }
    if cfg.n_kv_heads != cfg.n_heads {
        return Err(unmappable(format!(
            "model.n_kv_heads {} != model.n_heads {}; the reference's chunk memory \
             (chunk_k_proj: d -> d) and encoder are multi-head",
            cfg.n_kv_heads, cfg.n_heads
        )));
    }
    if cfg.rope_theta != REFERENCE_ROPE_THETA {
        return Err(unmappable(format!(
            "model.rope_theta {}; the reference's encoder uses RoPE base {REFERENCE_ROPE_THETA}",
            cfg.rope_theta
        )));
    }
    let slots = d.chunk_size + 1;
    let rule = match slots % 64 {
        0 => LandmarkSlot::Zeroed,
        1 => LandmarkSlot::Dropped,
        _ => {
            return Err(unmappable(format!(
                "model.drt.chunk_size {}; the reference takes S + 1 = 0 or 1 (mod 64) \
                 (S = 63 with the landmark slot zeroed, S = 64 with it dropped)",
                d.chunk_size
            )))
        }
    };
    if d.landmark_slot != rule {
        return Err(unmappable(format!(
            "model.drt.landmark_slot {:?} with chunk_size {}; the reference {} the slot for \
             this chunk size",
            d.landmark_slot,
            d.chunk_size,
            match rule {
                LandmarkSlot::Zeroed => "zeroes",
                LandmarkSlot::Dropped => "drops",
            }
        )));
    }
    if step < d.residual_warmup_steps {
        return Err(unmappable(format!(
            "at step {step} the model is still in its residual warm-up \
             (model.drt.residual_warmup_steps {}): the GCA output joins the residual \
             stream, which the reference never does",
            d.residual_warmup_steps
        )));
    }
    if cfg.vocab_size < 2 {
        return Err(unmappable(
            "model.vocab_size < 2 leaves no pad id besides the landmark".into(),
        ));
    }
    Ok(d)
}

/// The reference's `pad_id`: its embedding's `padding_idx`, a row whose gradient is always
/// zero and which negative ids map to. lcm has no pad token, so it is the last id that is
/// not the landmark (unused by GPT-NeoX, whose 50 277 ids lcm's 50 304 rows pad).
pub fn pad_id(cfg: &ModelConfig) -> i64 {
    let last = cfg.vocab_size - 1;
    match cfg.drt.as_ref() {
        Some(d) if d.landmark_id == last => last - 1,
        _ => last,
    }
}

/// The block of a pre-norm transformer layer: (lcm suffix, reference suffix).
const BLOCK: [(&str, &str); 9] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn.q_proj.weight", "self_attn.q_proj.weight"),
    ("attn.k_proj.weight", "self_attn.k_proj.weight"),
    ("attn.v_proj.weight", "self_attn.v_proj.weight"),
    ("attn.o_proj.weight", "self_attn.o_proj.weight"),
    ("mlp_norm.weight", "post_attention_layernorm.weight"),
    ("mlp.gate_proj.weight", "mlp.gate_proj.weight"),
    ("mlp.up_proj.weight", "mlp.up_proj.weight"),
    ("mlp.down_proj.weight", "mlp.down_proj.weight"),
];

fn block(pairs: &mut Vec<(String, String)>, lcm: &str, reference: &str) {
    for (a, b) in BLOCK {
        pairs.push((format!("{lcm}.{a}"), format!("{reference}.{b}")));
    }
}

/// Every parameter as (lcm name, reference name), in the lcm model's order of layers. The
/// tied output head is not a parameter of its own on either side (the reference's state
/// dict repeats it as `lm_head.weight`, see [`to_reference`]).
pub fn name_pairs(cfg: &ModelConfig) -> Result<Vec<(String, String)>> {
    let d = check_mappable(cfg, u64::MAX)?;
    let mut p = vec![(
        "embed.weight".to_string(),
        "model.embed_tokens.weight".into(),
    )];
    for i in 0..d.decoder_layers[0] {
        block(
            &mut p,
            &format!("lower.{i}"),
            &format!("model.lower_layers.{i}"),
        );
    }
    p.push((
        "encoder.prenorm.weight".into(),
        "model.enc_prenorm.weight".into(),
    ));
    for i in 0..d.encoder_layers {
        block(
            &mut p,
            &format!("encoder.layers.{i}"),
            &format!("model.encoder.layers.{i}"),
        );
    }
    p.push((
        "encoder.norm.weight".into(),
        "model.encoder.norm.weight".into(),
    ));
    for kv in ["k", "v"] {
        p.push((
            format!("chunk_{kv}_proj.weight"),
            format!("model.chunk_{kv}_proj.weight"),
        ));
    }
    for (g, &n) in d.decoder_layers[1..].iter().enumerate() {
        p.push((
            format!("groups.{g}.lmk_norm.weight"),
            format!("model.lmk_norms.{g}.weight"),
        ));
        for i in 0..n {
            let (l, r) = (
                format!("groups.{g}.layers.{i}"),
                format!("model.upper_layers.{g}.{i}"),
            );
            block(&mut p, &l, &r);
            p.push((
                format!("{l}.gca_norm.weight"),
                format!("{r}.gca.pre_norm.weight"),
            ));
            for w in ["q", "o"] {
                p.push((
                    format!("{l}.gca.{w}_proj.weight"),
                    format!("{r}.gca.{w}_proj.weight"),
                ));
            }
        }
    }
    p.push(("norm.weight".into(), "model.norm.weight".into()));
    if !cfg.tie_embeddings {
        p.push(("lm_head.weight".into(), "lm_head.weight".into()));
    }
    Ok(p)
}

/// The reference's ALiBi buffers (`….self_attn.m`), one per decoder self-attention.
pub fn buffer_names(cfg: &ModelConfig) -> Result<Vec<String>> {
    let d = check_mappable(cfg, u64::MAX)?;
    let mut names: Vec<String> = (0..d.decoder_layers[0])
        .map(|i| format!("model.lower_layers.{i}.self_attn.m"))
        .collect();
    for (g, &n) in d.decoder_layers[1..].iter().enumerate() {
        names.extend((0..n).map(|i| format!("model.upper_layers.{g}.{i}.self_attn.m")));
    }
    Ok(names)
}

/// Whether reference name `name` is a buffer (the ALiBi slopes), which stays fp32 in any
/// export: the reference's flash attention takes fp32 slopes, and a bf16 copy would round
/// them.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".self_attn.m")
}

/// The tied output head's name in the reference's state dict.
const TIED_HEAD: &str = "lm_head.weight";

/// An lcm DRT's weights (every parameter by its lcm name) under the reference's names,
/// with its ALiBi buffers, and `lm_head.weight` repeating the embedding when tied: the
/// complete `state_dict()` of the reference's `DRTForCausalLM`. `step` is the checkpoint's
/// training step ([`check_mappable`]).
pub fn to_reference(
    cfg: &ModelConfig,
    step: u64,
    weights: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>> {
    check_mappable(cfg, step)?;
    let pairs = name_pairs(cfg)?;
    let map: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut have: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, t) in weights {
        let Some(r) = map.get(name.as_str()) else {
            return Err(Error::Invalid(format!(
                "weight `{name}` is not a parameter of this DRT (reference mapping)"
            )));
        };
        have.insert(r.to_string(), t);
    }
    if let Some((l, _)) = pairs.iter().find(|(_, r)| !have.contains_key(r)) {
        return Err(Error::Invalid(format!(
            "weight `{l}` of this DRT is missing (reference mapping)"
        )));
    }
    if cfg.tie_embeddings {
        let e = have["model.embed_tokens.weight"].shallow_clone();
        have.insert(TIED_HEAD.into(), e);
    }
    let slopes = alibi_slopes(cfg.n_heads, tch::Device::Cpu);
    for b in buffer_names(cfg)? {
        have.insert(b, slopes.copy());
    }
    Ok(have.into_iter().collect())
}

/// The inverse of [`to_reference`]: a reference state dict (parameters, optionally the
/// ALiBi buffers and the repeated tied head) under lcm's names. Buffers must hold the
/// slopes lcm computes and a repeated tied head the embedding, or the reference model
/// would compute something else than the lcm model built from them.
pub fn from_reference(
    cfg: &ModelConfig,
    weights: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>> {
    check_mappable(cfg, u64::MAX)?;
    let pairs = name_pairs(cfg)?;
    let map: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(a, b)| (b.as_str(), a.as_str()))
        .collect();
    let buffers: BTreeSet<String> = buffer_names(cfg)?.into_iter().collect();
    let slopes = alibi_slopes(cfg.n_heads, tch::Device::Cpu);
    let mut have: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut head = None;
    for (name, t) in weights {
        if buffers.contains(&name) {
            let m = t.to_device(tch::Device::Cpu).to_kind(Kind::Float);
            if m.size() != slopes.size() || !m.allclose(&slopes, 1e-6, 0.0, false) {
                return Err(Error::Invalid(format!(
                    "buffer `{name}` does not hold the ALiBi slopes 2^(-8(i+1)/h) for h = {}",
                    cfg.n_heads
                )));
            }
            continue;
        }
        if name == TIED_HEAD && cfg.tie_embeddings {
            head = Some(t);
            continue;
        }
        let Some(l) = map.get(name.as_str()) else {
            return Err(Error::Invalid(format!(
                "tensor `{name}` is not in the reference DRT of this config"
            )));
        };
        have.insert(l.to_string(), t);
    }
    if let Some((_, r)) = pairs.iter().find(|(l, _)| !have.contains_key(l)) {
        return Err(Error::Invalid(format!(
            "tensor `{r}` of the reference DRT is missing"
        )));
    }
    if let Some(h) = head {
        let e = &have["embed.weight"];
        if h.size() != e.size() || !h.to_kind(Kind::Float).equal(&e.to_kind(Kind::Float)) {
            return Err(Error::Invalid(format!(
                "`{TIED_HEAD}` differs from model.embed_tokens.weight, but the config ties \
                 them (tie_word_embeddings)"
            )));
        }
    }
    Ok(have.into_iter().collect())
}

/// The reference's `config.json` for the model `cfg` (a `LlamaConfig` with the DRT keys of
/// its `config/DRT/config_63.json`), `dtype` naming the weights' dtype. Keys the
/// reference's model never reads (`mask_probability`, `chunk_window`, …) are left out.
pub fn reference_config(cfg: &ModelConfig, step: u64, dtype: Kind) -> Result<Value> {
    let d = check_mappable(cfg, step)?;
    Ok(json!({
        "architectures": ["DRTForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": false,
        "pretraining_tp": 1,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "num_hidden_layers": -1,
        "max_position_embeddings": -1,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": REFERENCE_ROPE_THETA,
        "rope_scaling": null,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "pad_id": pad_id(cfg),
        "chunk_id": d.landmark_id,
        "enc_chunk_size": d.chunk_size,
        "chunk_topk": d.topk,
        "slide_window": cfg.window,
        "encoder_layers": d.encoder_layers,
        "decoder_layers": d.decoder_layers,
        "enable_alibi": true,
        "enable_softmax_one": d.landmark_slot == LandmarkSlot::Zeroed,
        "_flash_attn_2_enabled": true,
        "_triton_gca": true,
        "use_cache": true,
        "torch_dtype": match dtype {
            Kind::BFloat16 => "bfloat16",
            _ => "float32",
        },
    }))
}

/// The lcm model of a reference `config.json` (as [`reference_config`] writes or the
/// reference ships, e.g. `config/DRT/config_63.json`). Refuses a config whose reference
/// model lcm does not build: eager attention (`_flash_attn_2_enabled` false ignores ALiBi and
/// the window), no ALiBi, grouped kv heads.
pub fn config_from_reference(v: &Value) -> Result<ModelConfig> {
    let get = |k: &str| {
        v.get(k)
            .ok_or_else(|| Error::Invalid(format!("reference config: `{k}` is missing")))
    };
    let int = |k: &str| -> Result<i64> {
        get(k)?
            .as_i64()
            .ok_or_else(|| Error::Invalid(format!("reference config: `{k}` is not an integer")))
    };
    let flag = |k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
    if !flag("_flash_attn_2_enabled", false) {
        return Err(Error::Invalid(
            "reference config: `_flash_attn_2_enabled` is not true; the reference's eager \
             attention ignores ALiBi and the sliding window, which lcm does not reproduce"
                .into(),
        ));
    }
    if !flag("enable_alibi", false) {
        return Err(Error::Invalid(
            "reference config: `enable_alibi` is not true; lcm maps ALiBi decoders only".into(),
        ));
    }
    if let Some(h) = v.get("hidden_act").and_then(Value::as_str) {
        if h != "silu" && h != "swish" {
            return Err(Error::Invalid(format!(
                "reference config: hidden_act `{h}`; the SwiGLU MLP needs silu"
            )));
        }
    }
    if flag("attention_bias", false) || flag("gpt2_mlp", false) {
        return Err(Error::Invalid(
            "reference config: attention_bias or gpt2_mlp is set; lcm's DRT has neither".into(),
        ));
    }
    let s = int("enc_chunk_size")?;
    let slot = match (s + 1) % 64 {
        0 => "zeroed",
        _ => "dropped",
    };
    let heads = int("num_attention_heads")?;
    let m = json!({
        "arch": "drt",
        "vocab_size": int("vocab_size")?,
        "d_model": int("hidden_size")?,
        "n_heads": heads,
        "n_kv_heads": v.get("num_key_value_heads").and_then(Value::as_i64).unwrap_or(heads),
        "d_ff": int("intermediate_size")?,
        "norm_eps": v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
        "window": int("slide_window")?,
        "positional": "alibi",
        "qk_norm": false,
        "rope_theta": REFERENCE_ROPE_THETA,
        "tie_embeddings": flag("tie_word_embeddings", true),
        "init_std": v.get("initializer_range").and_then(Value::as_f64).unwrap_or(0.02),
        "drt": {
            "chunk_size": s,
            "landmark_id": int("chunk_id")?,
            "landmark_slot": slot,
            "topk": int("chunk_topk")?,
            "encoder_layers": int("encoder_layers")?,
            "decoder_layers": get("decoder_layers")?,
            "gumbel": true,
            "residual_warmup_steps": 0,
        }
    });
    let cfg = ModelConfig::from_json(&m)?;
    check_mappable(&cfg, u64::MAX)?;
    Ok(cfg)
}
