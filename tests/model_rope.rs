//! RoPE encodes relative positions: the score between a query and a key rotated at absolute
//! positions `p + i` and `p + j` depends on `i - j` alone, also past 2^24 (16.7M), where a
//! 16M-token DRT sample's positions (landmarks included) go. Angles taken in f32 there broke
//! the toy's in-window copy at 16M tokens; they are taken in f64.

use lcm::model::layers::rope_at;
use tch::{Device, Kind, Tensor};

#[test]
fn rope_scores_depend_only_on_the_offset_even_past_2_pow_24() {
    tch::manual_seed(4);
    let (t, d) = (64, 16);
    let q = Tensor::randn([1, 2, t, d], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([1, 2, t, d], (Kind::Float, Device::Cpu));
    let scores = |start: i64| {
        rope_at(&q, start, 10000.0).matmul(&rope_at(&k, start, 10000.0).transpose(-1, -2))
    };
    let near = scores(1000);
    for start in [(1i64 << 24) + 12345, 18_900_000, 1i64 << 30] {
        let far = scores(start);
        let diff = (&far - &near).abs().max().double_value(&[]);
        let scale = near.abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4 * scale,
            "at position {start}: scores moved by {diff:e} (scale {scale:e})"
        );
    }
}
