//! Segmented inference (the engine behind `lcm eval`) against the full-sequence forward:
//! feeding a sequence segment by segment, with the window caches and the chunk memory
//! carried between segments, gives the same logits as one forward over the whole sequence,
//! for every arch, uneven segment lengths, segments shorter than the window (and, for
//! RAMba, than a chunk of the SSD scan), and the chunk memory on the device or offloaded to
//! the host. fp32 on CPU: logits agree to 2e-5 of
//! their largest magnitude (the only differences are summation orders, e.g. retrieval scores
//! taken in blocks).

mod common;
mod model_util;

use lcm::model::{InferenceState, LanguageModel, Placement, StateOptions};
use model_util::{build, tiny, tokens, ARCHS, VOCAB};
use tch::{Device, Kind, Tensor};

/// A fresh fp32 inference state of `model` for `batch` rows and `capacity` tokens.
fn fp32_state(
    model: &dyn LanguageModel,
    batch: i64,
    capacity: i64,
    placement: Placement,
    device: Device,
) -> InferenceState {
    model.new_state(&StateOptions {
        batch,
        capacity_tokens: capacity,
        placement,
        kind: Kind::Float,
        device,
    })
}

fn segmented(
    model: &dyn LanguageModel,
    x: &Tensor,
    segments: &[i64],
    placement: Placement,
) -> (Tensor, InferenceState) {
    let (b, t) = (x.size()[0], x.size()[1]);
    assert_eq!(segments.iter().sum::<i64>(), t);
    // Capacity less than needed: the chunk memory must grow by itself.
    let mut state = fp32_state(model, b, t / 3, placement, x.device());
    let mut start = 0;
    let mut logits = Vec::new();
    for &len in segments {
        let h = model.forward_segment(&x.narrow(1, start, len), &mut state);
        logits.push(model.head(&h));
        start += len;
    }
    (Tensor::cat(&logits, 1), state)
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / a.abs().max().double_value(&[]).max(1e-30)
}

#[test]
fn segmented_inference_matches_the_full_forward() {
    // Chunks of 4 and a window of 5 positions: every segment boundary cuts through the
    // window, and retrieval reaches across many segments.
    let layouts: [&[i64]; 3] = [&[8, 4, 12, 4, 20], &[48], &[4; 12]];
    for arch in ARCHS {
        tch::manual_seed(5);
        let (_vs, model) = build(&tiny(arch));
        let x = tokens(2, 48);
        let full = tch::no_grad(|| model.forward(&x, false));
        assert_eq!(full.size(), [2, 48, VOCAB]);
        for segments in layouts {
            for placement in [Placement::Device, Placement::Host] {
                let (seg, state) = tch::no_grad(|| segmented(&*model, &x, segments, placement));
                let diff = max_rel_diff(&full, &seg);
                assert!(
                    diff <= 2e-5,
                    "{arch} segments {segments:?} {placement:?}: logits differ by {diff:e}"
                );
                if let Some(store) = &state.store {
                    assert_eq!(store.len(), 12, "{arch}: one memory entry per chunk");
                }
            }
        }
    }
}

#[test]
fn window_caches_stay_bounded_while_the_memory_grows() {
    // RAMba's per-layer state is its Mamba2 blocks' conv inputs and SSM states.
    for arch in ["drt", "swa_hsa", "ramba", "swa"] {
        tch::manual_seed(6);
        let (_vs, model) = build(&tiny(arch));
        let x = tokens(1, 160);
        let mut state = fp32_state(&*model, 1, 160, Placement::Device, Device::Cpu);
        let mut sizes = Vec::new();
        tch::no_grad(|| {
            for i in 0..10 {
                let _ = model.forward_segment(&x.narrow(1, i * 16, 16), &mut state);
                sizes.push(state.cache_bytes());
            }
        });
        assert!(sizes[0] > 0);
        assert!(
            sizes.iter().all(|&s| s == sizes[0]),
            "{arch}: window caches changed size with the length: {sizes:?}"
        );
        if let Some(store) = &state.store {
            assert_eq!(store.len(), 40, "{arch}: the memory holds every chunk");
        }
    }
    // The dense baseline keeps every position: its cache grows.
    let (_vs, model) = build(&tiny("dense"));
    let x = tokens(1, 32);
    let mut state = fp32_state(&*model, 1, 32, Placement::Device, Device::Cpu);
    let first = tch::no_grad(|| {
        let _ = model.forward_segment(&x.narrow(1, 0, 16), &mut state);
        state.cache_bytes()
    });
    let _ = tch::no_grad(|| model.forward_segment(&x.narrow(1, 16, 16), &mut state));
    assert_eq!(state.cache_bytes(), 2 * first);
}

// The same on the GPU, at a size closer to use: the repository's tiny configs (chunk 15 or
// 16, window 32, top-4), 2 x 2048 tokens in uneven segments, fp32, memory on the device
// and offloaded to pinned host memory.
common::cuda_test!(
    segmented_inference_matches_the_full_forward_on_cuda,
    |dev| {
        for name in [
            "drt-tiny",
            "swa-hsa-tiny",
            "ramba-tiny",
            "swa-tiny",
            "dense-tiny",
        ] {
            let path = format!("configs/models/{name}.json");
            let text = std::fs::read_to_string(&path).expect("config");
            let cfg =
                lcm::model::ModelConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
            tch::manual_seed(7);
            let vs = tch::nn::VarStore::new(dev);
            let model = lcm::model::build(&vs.root(), &cfg).expect("build");
            let m = model.length_multiple();
            let t = 2048 / m * m;
            let x = Tensor::randint(cfg.vocab_size - 1, [2, t], (Kind::Int64, dev));
            let full = tch::no_grad(|| model.forward(&x, false));
            let a = (t / 3) / m * m;
            let b = m * 5;
            let segments = [a, b, t - a - b];
            for placement in [Placement::Device, Placement::Host] {
                let (seg, _) = tch::no_grad(|| segmented(&*model, &x, &segments, placement));
                let diff = max_rel_diff(&full, &seg);
                println!("{name} {placement:?}: max relative difference {diff:e}");
                assert!(
                    diff <= 1e-4,
                    "{name} {placement:?}: logits differ by {diff:e}"
                );
            }
        }
    }
);
