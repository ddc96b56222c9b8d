//! The residual warm-up (issue 7): before `residual_warmup_steps` the GCA/HSA output also
//! joins the residual stream; from that step on (set by the trainer through `set_step`)
//! the model is exactly the faithful layout, i.e. equal to the same weights built with no
//! warm-up.

mod model_util;

use lcm::model::{self, ModelConfig};
use model_util::{tiny, tokens};
use tch::{nn, Device};

fn with_warmup(arch: &str, steps: u64) -> ModelConfig {
    let mut cfg = tiny(arch);
    if let Some(d) = cfg.drt.as_mut() {
        d.residual_warmup_steps = steps;
    }
    if let Some(h) = cfg.hsa.as_mut() {
        h.residual_warmup_steps = steps;
    }
    cfg
}

#[test]
fn warm_up_switches_to_the_faithful_layout_at_its_step() {
    tch::set_num_threads(1);
    for arch in ["drt", "swa_hsa"] {
        let x = tokens(2, 32);
        let faithful_vs = nn::VarStore::new(Device::Cpu);
        let faithful = model::build(&faithful_vs.root(), &with_warmup(arch, 0)).unwrap();
        let mut warm_vs = nn::VarStore::new(Device::Cpu);
        let mut warm = model::build(&warm_vs.root(), &with_warmup(arch, 10)).unwrap();
        warm_vs.copy(&faithful_vs).unwrap();
        let want = tch::no_grad(|| faithful.forward(&x, false));
        warm.set_step(9);
        let during = tch::no_grad(|| warm.forward(&x, false));
        warm.set_step(10);
        let after = tch::no_grad(|| warm.forward(&x, false));
        let diff = |a: &tch::Tensor| (a - &want).abs().max().double_value(&[]);
        assert!(diff(&during) > 1e-4, "{arch}: warm-up changed nothing");
        assert_eq!(
            diff(&after),
            0.0,
            "{arch}: after the warm-up the layout is not faithful"
        );
    }
}
