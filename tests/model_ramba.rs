//! RAMba as the reference wires it: `configs/models/ramba-370m.json` has the reference
//! 370M's layers (24 Mamba2 blocks, the chunking layer, one retrieval, 3 x [HSA layer
//! without an MLP, 8 Mamba2 blocks]), parameter names and parameter count; the HSA output
//! joins the residual stream (silencing `o_proj` leaves a pure Mamba2 stack); in training,
//! `train_segment` restarts the Mamba2 state while HSA still reads the whole sequence; and
//! the memory planner counts a RAMba's state and chunk memory as the engine allocates them.

mod model_util;

use lcm::eval::plan::estimate;
use lcm::eval::{Engine, PrefillOptions};
use lcm::model::{self, ModelConfig, Placement};
use model_util::{build, tiny, tokens};
use tch::{nn, Device, Kind, Tensor};

fn config(name: &str) -> ModelConfig {
    let text = std::fs::read_to_string(format!("configs/models/{name}.json")).unwrap();
    ModelConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / a.abs().max().double_value(&[]).max(1e-30)
}

#[test]
fn ramba_370m_has_the_references_layers_names_and_size() {
    let cfg = config("ramba-370m");
    let vs = nn::VarStore::new(Device::Cpu);
    let m = model::build(&vs.root(), &cfg).unwrap();
    let vars = vs.variables();
    let shape = |n: &str| {
        vars.get(n)
            .unwrap_or_else(|| panic!("missing parameter {n}"))
            .size()
    };
    let count = |suffix: &str| vars.keys().filter(|k| k.ends_with(suffix)).count();
    // 48 Mamba2 blocks (24 below, 24 above), 3 HSA layers, one retrieval, a 2-layer encoder.
    assert_eq!(count(".mixer.A_log"), 48);
    assert_eq!(count(".o_proj.weight") - count("attn.o_proj.weight"), 3);
    assert_eq!(count("retrieval.q_proj.weight"), 1);
    assert_eq!(
        count("mlp.down_proj.weight"),
        2,
        "only the encoder has MLPs"
    );
    // d_inner 2048, d_state 128, 32 heads of 64: in_proj 2 * 2048 + 2 * 128 + 32 outputs.
    assert_eq!(shape("lower.0.mixer.in_proj.weight"), [4384, 1024]);
    assert_eq!(shape("lower.23.mixer.conv1d.weight"), [2304, 1, 4]);
    assert_eq!(
        shape("groups.0.layers.23.mixer.out_proj.weight"),
        [1024, 2048]
    );
    assert_eq!(shape("groups.0.hsa.2.q_proj.weight"), [1024, 1024]);
    assert_eq!(shape("groups.0.hsa.2.attn_norm.weight"), [1024]);
    // The memory has the reference's 1 kv head (num_kv_heads) and 1 retrieval head; the
    // encoder its 4 (num_key_value_heads) and SwiGLU width floor(8 * 1024 / 3 / 64) * 64.
    assert_eq!(shape("chunking.k_proj.weight"), [64, 1024]);
    assert_eq!(shape("chunking.lmk_proj.weight"), [1024, 1024]);
    assert_eq!(
        shape("chunking.encoder.layers.1.attn.k_proj.weight"),
        [256, 1024]
    );
    assert_eq!(shape("chunking.encoder.layers.1.attn.q_proj.bias"), [1024]);
    assert_eq!(
        shape("chunking.encoder.layers.0.mlp.up_proj.weight"),
        [2688, 1024]
    );
    for absent in [
        "lower.24.norm.weight",
        "groups.0.hsa.3.q_proj.weight",
        "groups.0.layers.24.norm.weight",
        "groups.0.hsa.0.q_norm.weight",
        "chunking.k_norm.weight",
        "lm_head.weight",
    ] {
        assert!(!vars.contains_key(absent), "unexpected parameter {absent}");
    }
    // The reference's modules at this config: embedding 50280 x 1024, 48 x 6,601,056 per
    // Mamba2 block, 2 x 10,882,688 per encoder layer and its norm, the chunking
    // projections and CLS, the retrieval, 3 HSA layers of q/o and a norm, the final norm.
    let n: i64 = vars.values().map(|t| t.numel() as i64).sum();
    assert_eq!(n, 398_629_632, "parameters");
    assert_eq!(m.length_multiple(), 64);
    let embed = 50280 * 1024;
    let f = m.flops_per_token(16384);
    assert!(
        f > 6.0 * (n - embed) as f64 && f < 2.0 * 6.0 * n as f64,
        "flops {f:e}"
    );
}

/// The tiny RAMba with `train_segment` and without Gumbel noise.
fn tiny_with_train_segment(tokens: i64) -> ModelConfig {
    let mut v = serde_json::to_value(tiny("ramba")).unwrap();
    v["ramba"]["train_segment"] = tokens.into();
    v["ramba"]["gumbel"] = false.into();
    ModelConfig::from_json(&v).unwrap()
}

#[test]
fn hsa_joins_the_residual_and_train_segment_restarts_only_the_mamba_state() {
    tch::set_num_threads(1);
    tch::manual_seed(41);
    let (vs, model) = build(&tiny_with_train_segment(8));
    let x = tokens(2, 24);
    // Other tokens in the first chunk (positions 0..4).
    let y = Tensor::cat(
        &[(x.narrow(1, 0, 4) + 1).remainder(39), x.narrow(1, 4, 20)],
        1,
    );
    let run = |x: &Tensor, train| tch::no_grad(|| model.forward(x, train));

    // In training the state restarts at 8, but HSA still reads chunk 0 from there: tokens
    // 8..12 see chunks 0 and 1 only, and retrieve both (top-2).
    let d = max_rel_diff(
        &run(&x, true).narrow(1, 8, 4),
        &run(&y, true).narrow(1, 8, 4),
    );
    assert!(d > 1e-4, "HSA reaches past a restart: {d:e}");

    // Silence every HSA layer: a pure Mamba2 stack, so the output at 8.. is the eval
    // forward of the segment alone in training, and the carried state's in eval.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.contains(".hsa.") && name.ends_with("o_proj.weight") {
                let _ = t.zero_();
            }
        }
    });
    let train = run(&x, true);
    for start in [0, 8, 16] {
        let alone = run(&x.narrow(1, start, 8), false);
        let d = max_rel_diff(&alone, &train.narrow(1, start, 8));
        assert!(d <= 1e-5, "segment at {start}: {d:e}");
    }
    let eval = run(&x, false);
    assert!(
        max_rel_diff(&eval.narrow(1, 8, 16), &train.narrow(1, 8, 16)) > 1e-4,
        "in eval the state runs through"
    );
    assert!(max_rel_diff(&eval.narrow(1, 0, 8), &train.narrow(1, 0, 8)) <= 1e-5);
    // Nothing then reaches back past a restart in training: the first chunk's tokens move
    // no logit from 8 on.
    let d = max_rel_diff(&train.narrow(1, 8, 16), &run(&y, true).narrow(1, 8, 16));
    assert!(d <= 1e-5, "without HSA: {d:e}");
}

#[test]
fn the_planner_counts_a_rambas_state_and_memory_as_allocated() {
    tch::set_num_threads(1);
    let cfg = config("ramba-tiny");
    let engine = Engine::random(&cfg, Device::Cpu).unwrap();
    let (t, segment) = (2048, 512);
    let est = estimate(&cfg, engine.params, t, segment, Placement::Device, 4);
    let x = Tensor::randint(50000, [1, t], (Kind::Int64, Device::Cpu));
    let opts = PrefillOptions {
        segment,
        placement: Placement::Device,
    };
    let stats = engine.prefill(&x, &opts, None, |_, _| Ok(())).unwrap();
    assert_eq!(est.memory, stats.memory_bytes as f64, "chunk memory");
    assert_eq!(est.landmarks, stats.landmark_bytes as f64, "landmarks");
    let mut state = engine.new_state(1, t, Placement::Device);
    let before = state.cache_bytes();
    engine.feed(&mut state, &x, segment, |_, _| Ok(())).unwrap();
    assert_eq!(est.caches, before as f64, "Mamba2 states");
    assert_eq!(state.cache_bytes(), before, "constant in the length");
    assert_eq!(est.weights, engine.params as f64 * 4.0);

    // RAMba-370M at 16M tokens in bf16: 262,144 chunks of 64 x 1 kv head x 64 for k and v
    // (4 GiB), landmarks of 1024 (512 MiB), 48 Mamba2 states; offloading moves the memory.
    let cfg = config("ramba-370m");
    let at = |placement| estimate(&cfg, 398_629_632, 1 << 24, 16384, placement, 2);
    let (dev, host) = (at(Placement::Device), at(Placement::Host));
    assert_eq!(dev.memory, (4u64 << 30) as f64);
    assert_eq!(dev.landmarks, (512u64 << 20) as f64);
    assert_eq!(
        dev.caches,
        48.0 * (2304.0 * 3.0 * 2.0 + 32.0 * 64.0 * 128.0 * 4.0)
    );
    let moved = dev.device_bytes() - host.device_bytes();
    assert!((moved - 1.25 * dev.memory).abs() < 1.0, "{moved}");
    assert_eq!(host.host_bytes(), 1.05 * dev.memory);
    assert!(
        dev.activations > 1e9 && dev.activations < 24e9,
        "{}",
        dev.describe()
    );
}
