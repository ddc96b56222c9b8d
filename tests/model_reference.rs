//! The reference mapping (`lcm::model::reference`, `lcm export --names reference`, `lcm
//! debug`): every DRT parameter gets the name and shape of the reference implementation's
//! `DRTForCausalLM.state_dict()`, nothing is left out or added, the mapping inverts, the
//! configs the reference cannot express are refused, and the export and debug commands
//! write what scripts/fidelity/compare.py reads. The numerical comparison with the
//! reference itself is scripts/fidelity/compare.py (docs/fidelity.md).

mod data_util;

use std::collections::BTreeMap;
use std::path::Path;

use data_util::lcm;
use lcm::model::reference::{
    self, buffer_names, check_mappable, config_from_reference, from_reference, name_pairs,
    reference_config, to_reference,
};
use lcm::model::{self, ModelConfig};
use lcm::train::checkpoint::read_state;
use lcm::train::debug::init_checkpoint;
use lcm::train::export::{export, import_reference, Naming, Options};
use lcm::train::weights::read_weights;
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};

/// The state dict of the reference's `DRTForCausalLM` for [`golden_config`], as the
/// reference itself lists it (`model.state_dict()` of model/DRT.py at aa7fa60 built with
/// scripts/fidelity/standins.py): names in its order, and shapes.
const GOLDEN: &[(&str, &[i64])] = &[
    ("model.embed_tokens.weight", &[10, 8]),
    ("model.lower_layers.0.self_attn.m", &[2]),
    ("model.lower_layers.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.lower_layers.0.self_attn.k_proj.weight", &[8, 8]),
    ("model.lower_layers.0.self_attn.v_proj.weight", &[8, 8]),
    ("model.lower_layers.0.self_attn.o_proj.weight", &[8, 8]),
    ("model.lower_layers.0.mlp.gate_proj.weight", &[16, 8]),
    ("model.lower_layers.0.mlp.up_proj.weight", &[16, 8]),
    ("model.lower_layers.0.mlp.down_proj.weight", &[8, 16]),
    ("model.lower_layers.0.input_layernorm.weight", &[8]),
    ("model.lower_layers.0.post_attention_layernorm.weight", &[8]),
    ("model.upper_layers.0.0.self_attn.m", &[2]),
    ("model.upper_layers.0.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.upper_layers.0.0.self_attn.k_proj.weight", &[8, 8]),
    ("model.upper_layers.0.0.self_attn.v_proj.weight", &[8, 8]),
    ("model.upper_layers.0.0.self_attn.o_proj.weight", &[8, 8]),
    ("model.upper_layers.0.0.gca.pre_norm.weight", &[8]),
    ("model.upper_layers.0.0.gca.q_proj.weight", &[8, 8]),
    ("model.upper_layers.0.0.gca.o_proj.weight", &[8, 8]),
    ("model.upper_layers.0.0.mlp.gate_proj.weight", &[16, 8]),
    ("model.upper_layers.0.0.mlp.up_proj.weight", &[16, 8]),
    ("model.upper_layers.0.0.mlp.down_proj.weight", &[8, 16]),
    ("model.upper_layers.0.0.input_layernorm.weight", &[8]),
    (
        "model.upper_layers.0.0.post_attention_layernorm.weight",
        &[8],
    ),
    ("model.upper_layers.1.0.self_attn.m", &[2]),
    ("model.upper_layers.1.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.upper_layers.1.0.self_attn.k_proj.weight", &[8, 8]),
    ("model.upper_layers.1.0.self_attn.v_proj.weight", &[8, 8]),
    ("model.upper_layers.1.0.self_attn.o_proj.weight", &[8, 8]),
    ("model.upper_layers.1.0.gca.pre_norm.weight", &[8]),
    ("model.upper_layers.1.0.gca.q_proj.weight", &[8, 8]),
    ("model.upper_layers.1.0.gca.o_proj.weight", &[8, 8]),
    ("model.upper_layers.1.0.mlp.gate_proj.weight", &[16, 8]),
    ("model.upper_layers.1.0.mlp.up_proj.weight", &[16, 8]),
    ("model.upper_layers.1.0.mlp.down_proj.weight", &[8, 16]),
    ("model.upper_layers.1.0.input_layernorm.weight", &[8]),
    (
        "model.upper_layers.1.0.post_attention_layernorm.weight",
        &[8],
    ),
    ("model.lmk_norms.0.weight", &[8]),
    ("model.lmk_norms.1.weight", &[8]),
    ("model.encoder.layers.0.self_attn.q_proj.weight", &[8, 8]),
    ("model.encoder.layers.0.self_attn.k_proj.weight", &[8, 8]),
    ("model.encoder.layers.0.self_attn.v_proj.weight", &[8, 8]),
    ("model.encoder.layers.0.self_attn.o_proj.weight", &[8, 8]),
    ("model.encoder.layers.0.mlp.gate_proj.weight", &[16, 8]),
    ("model.encoder.layers.0.mlp.up_proj.weight", &[16, 8]),
    ("model.encoder.layers.0.mlp.down_proj.weight", &[8, 16]),
    ("model.encoder.layers.0.input_layernorm.weight", &[8]),
    (
        "model.encoder.layers.0.post_attention_layernorm.weight",
        &[8],
    ),
    ("model.encoder.norm.weight", &[8]),
    ("model.chunk_k_proj.weight", &[8, 8]),
    ("model.chunk_v_proj.weight", &[8, 8]),
    ("model.enc_prenorm.weight", &[8]),
    ("model.norm.weight", &[8]),
    ("lm_head.weight", &[10, 8]),
];

/// A DRT as JSON: d 8, 2 heads, S = 63 (landmark slot zeroed), encoder 1, `layers`, with
/// `extra` merged into the top level.
fn drt_json(layers: &[i64], tie: bool, extra: Value) -> Value {
    let mut v = json!({
        "arch": "drt", "vocab_size": 10, "d_model": 8, "n_heads": 2, "d_ff": 16, "window": 4,
        "tie_embeddings": tie,
        "drt": { "chunk_size": 63, "landmark_id": 9, "landmark_slot": "zeroed", "topk": 2,
                 "encoder_layers": 1, "decoder_layers": layers }
    });
    let o = v.as_object_mut().unwrap();
    for (k, x) in extra.as_object().unwrap() {
        if k == "drt" {
            let d = o.get_mut("drt").unwrap().as_object_mut().unwrap();
            for (k2, x2) in x.as_object().unwrap() {
                d.insert(k2.clone(), x2.clone());
            }
        } else {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

fn config(v: Value) -> ModelConfig {
    ModelConfig::from_json(&v).unwrap()
}

/// The config the golden state dict was listed for: untied, two retrieval groups.
fn golden_config() -> ModelConfig {
    config(drt_json(&[1, 1, 1], false, json!({})))
}

/// An lcm model's parameters, by name.
fn weights(cfg: &ModelConfig) -> Vec<(String, Tensor)> {
    let vs = nn::VarStore::new(Device::Cpu);
    model::build(&vs.root(), cfg).unwrap();
    let mut w: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn by_name(w: Vec<(String, Tensor)>) -> BTreeMap<String, Tensor> {
    w.into_iter().collect()
}

#[test]
fn names_and_shapes_are_the_reference_state_dict() {
    let cfg = golden_config();
    let out = by_name(to_reference(&cfg, 0, weights(&cfg)).unwrap());
    let got: BTreeMap<&str, Vec<i64>> = out.iter().map(|(n, t)| (n.as_str(), t.size())).collect();
    let want: BTreeMap<&str, Vec<i64>> = GOLDEN.iter().map(|(n, s)| (*n, s.to_vec())).collect();
    assert_eq!(got, want);
}

#[test]
fn every_parameter_has_one_reference_name() {
    for (layers, tie, enc) in [
        (&[1, 1, 1][..], false, 1),
        (&[2, 3][..], true, 2),
        (&[0, 1][..], true, 1),
    ] {
        let cfg = config(drt_json(
            layers,
            tie,
            json!({"drt": {"encoder_layers": enc}}),
        ));
        let pairs = name_pairs(&cfg).unwrap();
        let lcm_names: Vec<String> = weights(&cfg).into_iter().map(|(n, _)| n).collect();
        let mut mapped: Vec<String> = pairs.iter().map(|(l, _)| l.clone()).collect();
        mapped.sort();
        assert_eq!(mapped, lcm_names, "{layers:?} tie {tie}");
        let mut refs: Vec<&String> = pairs.iter().map(|(_, r)| r).collect();
        refs.sort();
        refs.dedup();
        assert_eq!(refs.len(), pairs.len(), "reference names are distinct");
        let layers_total: i64 = layers.iter().sum();
        assert_eq!(buffer_names(&cfg).unwrap().len() as i64, layers_total);
        // The tied head: not a parameter of its own, repeated in the state dict.
        let out = by_name(to_reference(&cfg, 0, weights(&cfg)).unwrap());
        assert_eq!(
            out.len(),
            pairs.len() + layers_total as usize + usize::from(tie)
        );
        assert!(out.contains_key("lm_head.weight"));
    }
}

#[test]
fn tensors_are_carried_unchanged_with_alibi_buffers() {
    let cfg = config(drt_json(&[1, 1], true, json!({"n_heads": 4})));
    let w = by_name(weights(&cfg));
    let out = by_name(
        to_reference(
            &cfg,
            0,
            w.iter().map(|(n, t)| (n.clone(), t.copy())).collect(),
        )
        .unwrap(),
    );
    for (l, r) in name_pairs(&cfg).unwrap() {
        assert!(out[&r].equal(&w[&l]), "{l} -> {r}");
    }
    assert!(out["lm_head.weight"].equal(&w["embed.weight"]));
    let m = &out["model.upper_layers.0.0.self_attn.m"];
    assert_eq!(m.kind(), Kind::Float);
    let want = Tensor::from_slice(&[0.25f32, 0.0625, 0.015625, 0.00390625]);
    assert!(m.allclose(&want, 0.0, 0.0, false), "{m}");
}

#[test]
fn from_reference_inverts_to_reference() {
    for tie in [false, true] {
        let cfg = config(drt_json(&[2, 1, 1], tie, json!({})));
        let w = weights(&cfg);
        let refd = to_reference(
            &cfg,
            0,
            w.iter().map(|(n, t)| (n.clone(), t.copy())).collect(),
        )
        .unwrap();
        // Without the buffers and the repeated head too: both are optional on the way in.
        let bare: Vec<(String, Tensor)> = refd
            .iter()
            .filter(|(n, _)| !reference::is_buffer(n) && (n != "lm_head.weight" || !tie))
            .map(|(n, t)| (n.clone(), t.copy()))
            .collect();
        for input in [refd, bare] {
            let back = from_reference(&cfg, input).unwrap();
            assert_eq!(back.len(), w.len());
            for ((a, ta), (b, tb)) in back.iter().zip(&w) {
                assert_eq!(a, b);
                assert!(ta.equal(tb), "{a}");
            }
        }
    }
}

#[test]
fn from_reference_refuses_what_would_compute_otherwise() {
    let cfg = config(drt_json(&[1, 1], true, json!({})));
    let refd = || to_reference(&cfg, 0, weights(&cfg)).unwrap();
    let err = |w: Vec<(String, Tensor)>| from_reference(&cfg, w).unwrap_err().to_string();
    let mut w = refd();
    let m = w.iter_mut().find(|(n, _)| reference::is_buffer(n)).unwrap();
    m.1 = m.1.ones_like();
    assert!(err(w).contains("ALiBi slopes"));
    let mut w = refd();
    let h = w.iter_mut().find(|(n, _)| n == "lm_head.weight").unwrap();
    h.1 = h.1.zeros_like();
    assert!(err(w).contains("tie_word_embeddings"));
    let mut w = refd();
    w.retain(|(n, _)| n != "model.chunk_v_proj.weight");
    assert!(err(w).contains("`model.chunk_v_proj.weight` of the reference DRT is missing"));
    let mut w = refd();
    w.push((
        "model.extra.weight".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    assert!(err(w).contains("`model.extra.weight` is not in the reference DRT"));
}

#[test]
fn configs_the_reference_cannot_express_are_refused() {
    let cases = [
        (json!({"n_kv_heads": 1}), "n_kv_heads 1 != model.n_heads 2"),
        (json!({"positional": "rope"}), "ALiBi only"),
        (json!({"qk_norm": true}), "no q/k norm"),
        (json!({"rope_theta": 5e5}), "RoPE base 10000"),
        (
            json!({"drt": {"chunk_size": 15}}),
            "S + 1 = 0 or 1 (mod 64)",
        ),
        (
            json!({"drt": {"landmark_slot": "dropped"}}),
            "zeroes the slot",
        ),
        (json!({"drt": {"chunk_size": 64}}), "drops the slot"),
    ];
    for (extra, want) in cases {
        let cfg = config(drt_json(&[1, 1], true, extra.clone()));
        let e = check_mappable(&cfg, 0).unwrap_err().to_string();
        assert!(e.contains(want), "{extra}: {e}");
        assert!(e.contains("no counterpart in the reference DRT"), "{e}");
    }
    let ok = config(drt_json(
        &[1, 1],
        true,
        json!({"drt": {"chunk_size": 64, "landmark_slot": "dropped"}}),
    ));
    check_mappable(&ok, 0).unwrap();
    let warm = config(drt_json(
        &[1, 1],
        true,
        json!({"drt": {"residual_warmup_steps": 100}}),
    ));
    assert!(check_mappable(&warm, 99)
        .unwrap_err()
        .to_string()
        .contains("residual warm-up"));
    check_mappable(&warm, 100).unwrap();
    let swa = config(
        json!({"arch": "swa", "vocab_size": 10, "d_model": 8, "n_heads": 2,
                            "d_ff": 16, "window": 4, "n_layers": 1}),
    );
    assert!(check_mappable(&swa, 0)
        .unwrap_err()
        .to_string()
        .contains("only drt"));
}

#[test]
fn reference_config_reads_back_and_the_shipped_one_reads() {
    let cfg = config(drt_json(
        &[2, 1, 1],
        false,
        json!({"norm_eps": 1e-6, "init_std": 0.01, "drt": {"topk": 3, "encoder_layers": 2}}),
    ));
    let v = reference_config(&cfg, 0, Kind::Float).unwrap();
    assert_eq!(
        v["pad_id"],
        json!(8),
        "the last id that is not the landmark"
    );
    assert_eq!(v["chunk_id"], json!(9));
    assert_eq!(v["_flash_attn_2_enabled"], json!(true));
    assert_eq!(v["num_key_value_heads"], json!(2));
    assert_eq!(config_from_reference(&v).unwrap(), cfg);
    // config/DRT/config_63.json of the reference (its keys that the model reads).
    let shipped = json!({
        "pad_id": 50257, "bos_id": 50256, "chunk_id": 50264, "mask_id": 50263,
        "attention_bias": false, "hidden_act": "silu", "hidden_size": 768,
        "initializer_range": 0.02, "intermediate_size": 2048, "max_position_embeddings": -1,
        "model_type": "llama", "num_attention_heads": 12, "num_hidden_layers": -1,
        "num_key_value_heads": 12, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": null, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "vocab_size": 50265, "chunk_topk": 8, "slide_window": 512, "encoder_layers": 2,
        "decoder_layers": [6, 6], "enc_chunk_size": 63, "enable_alibi": true,
        "enable_softmax_one": true, "_flash_attn_2_enabled": true, "_triton_gca": true
    });
    let c = config_from_reference(&shipped).unwrap();
    let want = config(json!({
        "arch": "drt", "vocab_size": 50265, "d_model": 768, "n_heads": 12, "d_ff": 2048,
        "window": 512, "drt": { "chunk_size": 63, "landmark_id": 50264, "topk": 8,
        "encoder_layers": 2, "decoder_layers": [6, 6] }
    }));
    assert_eq!(c, want);
    let mut eager = shipped.clone();
    eager["_flash_attn_2_enabled"] = json!(false);
    assert!(config_from_reference(&eager)
        .unwrap_err()
        .to_string()
        .contains("eager"));
}

fn export_to(ckpt: &Path, out: &Path, kind: Kind, names: Naming, force: bool) -> lcm::Result<()> {
    let opts = Options {
        kind,
        shard_bytes: 1 << 20,
        split_rows: false,
        force,
        names,
    };
    export(ckpt, out, &opts).map(|_| ())
}

#[test]
fn export_names_reference_writes_the_state_dict_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = golden_config();
    let ckpt = init_checkpoint(&cfg, 3, &dir.path().join("init")).unwrap();
    let out = dir.path().join("ref");
    export_to(&ckpt, &out, Kind::BFloat16, Naming::Reference, false).unwrap();
    let (_, w) = read_weights(&out).unwrap();
    let w = by_name(w);
    let names: Vec<&str> = w.keys().map(String::as_str).collect();
    let mut golden: Vec<&str> = GOLDEN.iter().map(|(n, _)| *n).collect();
    golden.sort();
    assert_eq!(names, golden);
    for (n, t) in &w {
        let want = if reference::is_buffer(n) {
            Kind::Float
        } else {
            Kind::BFloat16
        };
        assert_eq!(t.kind(), want, "{n}");
    }
    assert!(!out.join("state.json").exists());
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(v, reference_config(&cfg, 0, Kind::BFloat16).unwrap());
    // Replacing: the same naming with --force; never an export of the other naming.
    export_to(&ckpt, &out, Kind::Float, Naming::Reference, true).unwrap();
    let e = export_to(&ckpt, &out, Kind::Float, Naming::Lcm, true).unwrap_err();
    assert!(
        e.to_string()
            .contains("a reference-named export (config.json)"),
        "{e}"
    );
    let lcm_out = dir.path().join("lcm");
    export_to(&ckpt, &lcm_out, Kind::Float, Naming::Lcm, false).unwrap();
    let e = export_to(&ckpt, &lcm_out, Kind::Float, Naming::Reference, true).unwrap_err();
    assert!(e.to_string().contains("an lcm export (state.json)"), "{e}");
    // A model without a reference counterpart: refused, nothing written.
    let gqa = config(drt_json(&[1, 1], true, json!({"n_kv_heads": 1})));
    let ckpt = init_checkpoint(&gqa, 0, &dir.path().join("gqa")).unwrap();
    let out = dir.path().join("gqa-ref");
    let e = export_to(&ckpt, &out, Kind::Float, Naming::Reference, false).unwrap_err();
    assert!(e.to_string().contains("n_kv_heads"), "{e}");
    assert!(!out.exists());
}

#[test]
fn debug_commands_write_what_the_harness_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let model = p("model.json");
    let v = drt_json(&[1, 1], true, json!({"drt": {"topk": 2}}));
    std::fs::write(&model, serde_json::to_vec(&v).unwrap()).unwrap();
    let (ok, _, err) = lcm(&[
        "debug",
        "init",
        "--model",
        &model,
        "--set",
        "window=8",
        "--seed",
        "1",
        "--out",
        &p("init"),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = lcm(&[
        "export",
        &p("init"),
        "--out",
        &p("ref"),
        "--names",
        "reference",
        "--dtype",
        "f32",
    ]);
    assert!(ok, "{err}");
    let tokens = Tensor::randint(9, [2, 4 * 63], (Kind::Int64, Device::Cpu));
    Tensor::write_safetensors(&[("tokens", &tokens)], p("tokens.safetensors")).unwrap();
    let (ok, stdout, err) = lcm(&[
        "debug",
        "grads",
        "--checkpoint",
        &p("init"),
        "--tokens",
        &p("tokens.safetensors"),
        "--out",
        &p("out.safetensors"),
        "--names",
        "reference",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with("loss "), "{stdout}");
    let out = by_name(Tensor::read_safetensors(p("out.safetensors")).unwrap());
    assert_eq!(out["logits"].size(), [2, 4 * 63, 10]);
    assert_eq!(out["loss"].size(), Vec::<i64>::new());
    assert_eq!(out["retrieval.0.indices"].size(), [2, 4, 2]);
    // Every parameter of the reference (its named_parameters: the state dict less the
    // buffers and the tied head) has a gradient, and nothing else does.
    let (_, refd) = read_weights(Path::new(&p("ref"))).unwrap();
    let mut want: Vec<String> = refd
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !reference::is_buffer(n) && n != "lm_head.weight")
        .map(|n| format!("grad.{n}"))
        .collect();
    want.sort();
    let got: Vec<String> = out
        .keys()
        .filter(|n| n.starts_with("grad."))
        .cloned()
        .collect();
    assert_eq!(got, want);
    assert!(out.values().all(|t| t.isnan().any().int64_value(&[]) == 0));
    // The gradient is that of the loss printed: a nonzero one for the landmark queries.
    assert!(
        out["grad.model.lmk_norms.0.weight"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            > 0.0
    );
}

#[test]
fn import_brings_an_export_back_as_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for (i, tie) in [false, true].into_iter().enumerate() {
        let cfg = config(drt_json(&[1, 2], tie, json!({"drt": {"topk": 3}})));
        let init = init_checkpoint(&cfg, 5, &dir.path().join(format!("init{i}"))).unwrap();
        let refd = dir.path().join(format!("ref{i}"));
        export_to(&init, &refd, Kind::Float, Naming::Reference, false).unwrap();
        let back = dir.path().join(format!("back{i}"));
        import_reference(&refd, &back, Kind::Float).unwrap();
        assert_eq!(read_state(&back).unwrap().config.model, cfg);
        let (_, a) = read_weights(&init).unwrap();
        let (_, b) = read_weights(&back).unwrap();
        let (a, b) = (by_name(a), by_name(b));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (n, t) in &a {
            assert!(t.equal(&b[n]), "{n}");
        }
        let e = import_reference(&refd, &back, Kind::Float).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
    }
}
