//! Each arch, tiny, overfits one fixed batch with tch's Adam: the loss falls from about
//! ln(V) = 3.7 to below 0.5 within 40 steps. Proves the models and their gradients train
//! end to end (the retrieval archs train through their retrieval paths too).

mod model_util;

use model_util::{build, lm_loss, tiny, tokens, ARCHS};
use tch::nn::OptimizerConfig;

#[test]
fn tiny_models_overfit_a_fixed_batch() {
    // One intra-op thread: on a loaded 2-core machine more threads are 10x slower here.
    tch::set_num_threads(1);
    for arch in ARCHS {
        tch::manual_seed(31);
        let (vs, mut model) = build(&tiny(arch));
        let mut opt = tch::nn::Adam::default().build(&vs, 1e-2).unwrap();
        let x = tokens(4, 32);
        let mut first = None;
        let mut last = f64::INFINITY;
        for step in 0..40 {
            model.set_step(step);
            let loss = lm_loss(&model.forward(&x, true), &x);
            opt.backward_step(&loss);
            last = loss.double_value(&[]);
            first.get_or_insert(last);
        }
        let first = first.unwrap();
        assert!(
            first > 3.0,
            "{arch}: initial loss {first} (expected about ln 40)"
        );
        assert!(last < 0.5, "{arch}: loss {first} -> {last} after 40 steps");
    }
}
