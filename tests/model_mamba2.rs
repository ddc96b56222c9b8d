//! The Mamba2 block (`lcm::model::mamba2`) on CPU: against a direct token-by-token
//! computation from its named parameters (fp64); the full forward against token-by-token
//! decoding and against segments carrying the state (fp64 and fp32); causality; bf16
//! weights with the fp32 residual; gradients into every parameter; the init of mamba_ssm;
//! and the config (defaults, JSON round trip, errors that name the field).
//!
//! Tolerances, elementwise `|got - want| <= atol + rtol * |want|`: fp64 atol 1e-10, rtol
//! 1e-9; fp32 atol 1e-5 * max(1, max |want|), rtol 1e-4; bf16 weights against fp32 atol
//! 5e-2 * max |want|.

mod common;

use std::collections::HashMap;

use common::assert_close;
use lcm::model::mamba2::{Mamba2Block, Mamba2Config, Mamba2State};
use lcm::Error;
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// A CPU-sized config: d_inner 16, 4 heads of 4, state 3, conv 4, chunks of 4 (which do
/// not divide the lengths tested), `groups` groups of B and C.
fn tiny(groups: i64) -> Mamba2Config {
    Mamba2Config {
        d_state: 3,
        headdim: 4,
        ngroups: groups,
        chunk_size: 4,
        ..Mamba2Config::new(8)
    }
}

/// A block in a fresh store, in `kind`.
fn block(cfg: &Mamba2Config, kind: Kind) -> (VarStore, Mamba2Block) {
    let mut vs = VarStore::new(Device::Cpu);
    let b = Mamba2Block::new(vs.root(), cfg).expect("valid config");
    vs.set_kind(kind);
    (vs, b)
}

fn tolerance(kind: Kind, want: &Tensor) -> (f64, f64) {
    match kind {
        Kind::Double => (1e-10, 1e-9),
        _ => (1e-5 * want.abs().max().double_value(&[]).max(1.0), 1e-4),
    }
}

/// The block written out token by token from its parameters, with no chunking, no
/// conv1d call and no shared code: the conv as a sum over the last `d_conv` inputs, the
/// recurrence per head, the gated norm per group.
fn direct(cfg: &Mamba2Config, p: &HashMap<String, Tensor>, x: &Tensor) -> Tensor {
    let (b, l) = (x.size()[0], x.size()[1]);
    let (di, h, hd, n, g) = (
        cfg.d_inner(),
        cfg.nheads(),
        cfg.headdim,
        cfg.d_state,
        cfg.ngroups,
    );
    let k = cfg.d_conv;
    let w = |name: &str| p[name].shallow_clone();
    let rms = |v: &Tensor| v / (v.square().mean_dim(-1, true, Kind::Double) + cfg.norm_eps).sqrt();
    let u = rms(x) * w("norm.weight");
    let proj = u.matmul(&w("mixer.in_proj.weight").tr()); // (B, L, d_in_proj)
    let z = proj.narrow(-1, 0, di);
    let xbc = proj.narrow(-1, di, cfg.conv_dim());
    let dt_raw = proj.narrow(-1, di + cfg.conv_dim(), h);
    let cw = w("mixer.conv1d.weight"); // (conv_dim, 1, K)
                                       // Output t sees inputs t - (k - 1) ..= t, tap j on input t - (k - 1) + j.
    let conv: Vec<Tensor> = (0..l)
        .map(|t| {
            (0..k)
                .filter(|j| t - (k - 1) + j >= 0)
                .fold(w("mixer.conv1d.bias"), |acc, j| {
                    acc + xbc.select(1, t - (k - 1) + j) * cw.select(2, j).squeeze_dim(1)
                })
                .silu()
        })
        .collect();
    let conv = Tensor::stack(&conv, 1); // (B, L, conv_dim)
    let xs = conv.narrow(-1, 0, di);
    let bs = conv.narrow(-1, di, g * n);
    let cs = conv.narrow(-1, di + g * n, g * n);
    let mut dt = (dt_raw + w("mixer.dt_bias")).softplus();
    if let Some(hi) = cfg.dt_ceiling {
        dt = dt.clamp(cfg.dt_floor, hi);
    }
    let a = -w("mixer.A_log").exp();
    let d = w("mixer.D");
    let mut ys = Vec::new();
    let mut state: Vec<Tensor> = (0..h)
        .map(|_| Tensor::zeros([b, hd, n], (Kind::Double, Device::Cpu)))
        .collect();
    for t in 0..l {
        let mut heads = Vec::new();
        for (hh, s) in state.iter_mut().enumerate() {
            let hh = hh as i64;
            let gi = hh / (h / g);
            let xt = xs.select(1, t).narrow(-1, hh * hd, hd); // (B, P)
            let bt = bs.select(1, t).narrow(-1, gi * n, n); // (B, N)
            let ct = cs.select(1, t).narrow(-1, gi * n, n);
            let dth = dt.select(1, t).select(1, hh).view([b, 1, 1]);
            let decay = (&dth * a.get(hh)).exp();
            *s = &*s * decay + dth * xt.unsqueeze(2) * bt.unsqueeze(1);
            let y = s.matmul(&ct.unsqueeze(2)).squeeze_dim(2) + xt * d.get(hh);
            heads.push(y);
        }
        ys.push(Tensor::cat(&heads, -1));
    }
    let y = Tensor::stack(&ys, 1) * z.silu(); // (B, L, d_inner)
    let groups: Vec<Tensor> = (0..g)
        .map(|gi| rms(&y.narrow(-1, gi * di / g, di / g)))
        .collect();
    let y = Tensor::cat(&groups, -1) * w("mixer.norm.weight");
    x + y.matmul(&w("mixer.out_proj.weight").tr())
}

#[test]
fn block_matches_direct_computation() {
    // Hundreds of tiny ops: one thread beats a pool that other processes contend for.
    tch::set_num_threads(1);
    tch::manual_seed(1);
    let clamped = Mamba2Config {
        dt_floor: 0.02,
        dt_ceiling: Some(0.05),
        ..tiny(2)
    };
    for cfg in [tiny(1), tiny(2), clamped] {
        let (vs, blk) = block(&cfg, Kind::Double);
        let x = Tensor::randn([2, 11, 8], (Kind::Double, Device::Cpu));
        let got = blk.forward(&x);
        let want = direct(&cfg, &vs.variables(), &x);
        let what = format!(
            "G={} dt limit ({}, {:?})",
            cfg.ngroups, cfg.dt_floor, cfg.dt_ceiling
        );
        assert_close(&what, &got, &want, 1e-10, 1e-9);
    }
}

/// The outputs of `blk` on `x (B, L, d)` token by token with [`Mamba2Block::step`], and
/// the state after the last.
fn stepped(blk: &Mamba2Block, x: &Tensor) -> (Tensor, Mamba2State) {
    let mut state = blk.new_state(x.size()[0], Device::Cpu);
    let ys: Vec<Tensor> = (0..x.size()[1])
        .map(|t| blk.step(&x.select(1, t), &mut state))
        .collect();
    (Tensor::stack(&ys, 1), state)
}

/// The outputs of `blk` on `x` in consecutive segments of the given lengths, from
/// `state` (left after the last segment).
fn segmented(blk: &Mamba2Block, x: &Tensor, lens: &[i64], state: &mut Mamba2State) -> Tensor {
    let mut start = 0;
    let mut ys = Vec::new();
    for &len in lens {
        ys.push(blk.forward_segment(&x.narrow(1, start, len), state));
        start += len;
    }
    assert_eq!(start, x.size()[1]);
    Tensor::cat(&ys, 1)
}

#[test]
fn full_forward_equals_step_decoding_and_segments() {
    // Hundreds of tiny ops: one thread beats a pool that other processes contend for.
    tch::set_num_threads(1);
    tch::manual_seed(2);
    for kind in [Kind::Double, Kind::Float] {
        for cfg in [
            tiny(1),
            tiny(2),
            Mamba2Config {
                d_conv: 2,
                chunk_size: 16,
                ..tiny(4)
            },
        ] {
            let (_vs, blk) = block(&cfg, kind);
            let x = Tensor::randn([2, 13, 8], (kind, Device::Cpu));
            let full = blk.forward(&x);
            let (atol, rtol) = tolerance(kind, &full);
            let what =
                |how: &str| format!("{kind:?} G={} d_conv={}: {how}", cfg.ngroups, cfg.d_conv);
            // The state after the whole sequence in one segment: what the others must leave.
            let mut whole = blk.new_state(2, Device::Cpu);
            let _ = blk.forward_segment(&x, &mut whole);
            let (steps, mut state) = stepped(&blk, &x);
            let mut runs = vec![("steps".to_string(), steps)];
            let mut states = vec![("steps".to_string(), state.snapshot())];
            for lens in [&[5, 8][..], &[1, 2, 6, 1, 3], &[12, 1]] {
                state = blk.new_state(2, Device::Cpu);
                let how = format!("segments {lens:?}");
                runs.push((how.clone(), segmented(&blk, &x, lens, &mut state)));
                states.push((how, state.snapshot()));
            }
            for (how, y) in &runs {
                assert_close(&what(how), y, &full, atol, rtol);
            }
            for (how, s) in &states {
                assert_close(
                    &what(&format!("{how}: conv state")),
                    &s.conv,
                    &whole.conv,
                    atol,
                    rtol,
                );
                assert_close(
                    &what(&format!("{how}: ssm state")),
                    &s.ssm,
                    &whole.ssm,
                    atol,
                    rtol,
                );
            }
        }
    }
}

/// Changing the input at position t0 leaves every earlier output unchanged and changes
/// the output at t0 and after (through the conv within d_conv - 1 positions, through the
/// state beyond).
#[test]
fn block_is_causal() {
    // Hundreds of tiny ops: one thread beats a pool that other processes contend for.
    tch::set_num_threads(1);
    tch::manual_seed(3);
    let cfg = tiny(2);
    let (_vs, blk) = block(&cfg, Kind::Double);
    let x = Tensor::randn([1, 12, 8], (Kind::Double, Device::Cpu));
    let y = blk.forward(&x);
    for t0 in [0, 5, 11] {
        let x2 = x.copy();
        x2.narrow(1, t0, 1)
            .copy_(&Tensor::randn([1, 1, 8], (Kind::Double, Device::Cpu)));
        let y2 = blk.forward(&x2);
        let diff = (&y2 - &y).abs().amax([0, 2].as_slice(), false); // (L,)
        for t in 0..12 {
            let d = diff.double_value(&[t]);
            if t < t0 {
                assert!(d <= 1e-12, "t0={t0}: output {t} changed by {d:e}");
            } else {
                assert!(d > 1e-6, "t0={t0}: output {t} did not change ({d:e})");
            }
        }
    }
}

/// bf16 weights: the residual stream leaves the block in fp32, the conv state keeps the
/// weights' bf16 and the SSM state fp32, and the output is close to the fp32 block's.
#[test]
fn bf16_weights_keep_an_fp32_residual_and_state() {
    tch::manual_seed(4);
    let cfg = tiny(2);
    let (vs, blk) = block(&cfg, Kind::Float);
    let x = Tensor::randn([2, 9, 8], (Kind::Float, Device::Cpu));
    let want = blk.forward(&x);
    let (mut vs16, blk16) = block(&cfg, Kind::Float);
    vs16.copy(&vs).unwrap();
    vs16.bfloat16();
    let got = blk16.forward(&x.to_kind(Kind::BFloat16));
    assert_eq!(got.kind(), Kind::Float, "residual in fp32");
    let scale = want.abs().max().double_value(&[]);
    assert_close("bf16 weights", &got, &want, 5e-2 * scale, 0.0);
    let mut state = blk16.new_state(2, Device::Cpu);
    let _ = blk16.forward_segment(&x.to_kind(Kind::BFloat16), &mut state);
    assert_eq!(
        (state.conv.kind(), state.ssm.kind()),
        (Kind::BFloat16, Kind::Float)
    );
}

/// A loss over the output reaches every parameter with a finite, non-zero gradient.
#[test]
fn gradients_reach_every_parameter() {
    tch::manual_seed(5);
    let cfg = tiny(2);
    let (vs, blk) = block(&cfg, Kind::Float);
    let x = Tensor::randn([2, 10, 8], (Kind::Float, Device::Cpu));
    let y = blk.forward(&x);
    (&y * Tensor::randn_like(&y)).sum(Kind::Float).backward();
    for (name, v) in vs.variables() {
        let g = v.grad();
        assert!(g.defined(), "{name}: no gradient");
        let norm = g.norm().double_value(&[]);
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
    }
}

/// Names and shapes as mamba_ssm's, and its init: softplus(dt_bias) in [dt_min, dt_max],
/// -A in [1, 16], D = 1, norm weights 1, linear and conv weights within 1/sqrt(fan_in).
#[test]
fn parameters_follow_mamba_ssm() {
    tch::manual_seed(6);
    let cfg = Mamba2Config {
        headdim: 8,
        d_state: 16,
        ..Mamba2Config::new(32)
    };
    let (vs, _blk) = block(&cfg, Kind::Float);
    let v = vs.variables();
    let (h, di, cd) = (cfg.nheads(), cfg.d_inner(), cfg.conv_dim());
    let mut names: Vec<_> = v.iter().map(|(k, t)| (k.as_str(), t.size())).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("mixer.A_log", vec![h]),
            ("mixer.D", vec![h]),
            ("mixer.conv1d.bias", vec![cd]),
            ("mixer.conv1d.weight", vec![cd, 1, cfg.d_conv]),
            ("mixer.dt_bias", vec![h]),
            ("mixer.in_proj.weight", vec![2 * di + 2 * 16 + h, 32]),
            ("mixer.norm.weight", vec![di]),
            ("mixer.out_proj.weight", vec![32, di]),
            ("norm.weight", vec![32]),
        ]
    );
    let range = |t: &Tensor| (t.min().double_value(&[]), t.max().double_value(&[]));
    let (lo, hi) = range(&v["mixer.dt_bias"].softplus());
    assert!(
        lo >= cfg.dt_min * 0.999 && hi <= cfg.dt_max * 1.001,
        "dt in [{lo}, {hi}]"
    );
    let (lo, hi) = range(&v["mixer.A_log"].exp());
    assert!(lo >= 1.0 && hi <= 16.0 && hi > lo, "-A in [{lo}, {hi}]");
    for name in ["mixer.D", "mixer.norm.weight", "norm.weight"] {
        assert_eq!(range(&v[name]), (1.0, 1.0), "{name}");
    }
    for (name, fan_in) in [
        ("mixer.in_proj.weight", 32),
        ("mixer.out_proj.weight", di),
        ("mixer.conv1d.weight", cfg.d_conv),
        ("mixer.conv1d.bias", cfg.d_conv),
    ] {
        let (lo, hi) = range(&v[name]);
        let b = 1.0 / (fan_in as f64).sqrt();
        assert!(
            lo >= -b && hi <= b && hi - lo > b,
            "{name}: [{lo}, {hi}] vs {b}"
        );
    }
}

/// The defaults are mamba_ssm's and RAMba-370M's, and a config survives JSON.
#[test]
fn config_defaults_and_round_trip() {
    let c = Mamba2Config::from_json("m", &json!({"d_model": 1024})).unwrap();
    assert_eq!(
        (
            c.d_state,
            c.d_conv,
            c.expand,
            c.headdim,
            c.ngroups,
            c.chunk_size
        ),
        (128, 4, 2, 64, 1, 256)
    );
    assert_eq!((c.nheads(), c.conv_dim(), c.d_in_proj()), (32, 2304, 4384));
    assert_eq!((c.dt_min, c.dt_max, c.dt_init_floor), (0.001, 0.1, 1e-4));
    assert_eq!(
        (c.dt_floor, c.dt_ceiling, c.a_init_range),
        (0.0, None, [1.0, 16.0])
    );
    assert_eq!((c.norm_eps, c.bias, c.conv_bias), (1e-5, false, true));
    let custom = Mamba2Config {
        dt_ceiling: Some(0.5),
        ngroups: 2,
        ..tiny(1)
    };
    let v = serde_json::to_value(&custom).unwrap();
    assert_eq!(Mamba2Config::from_json("m", &v).unwrap(), custom);
}

/// Each bad config is rejected with an error naming its key and saying why.
#[test]
fn config_errors_name_the_field() {
    let cases = [
        (json!({}), "model.mamba2", "d_model"),
        (
            json!({"d_model": 8, "heads": 2}),
            "model.mamba2.heads",
            "unknown field",
        ),
        (
            json!({"d_model": 8, "headdim": "4"}),
            "model.mamba2.headdim",
            "expected i64",
        ),
        (
            json!({"d_model": 8, "headdim": 6}),
            "model.mamba2.headdim",
            "does not divide",
        ),
        (
            json!({"d_model": 8, "headdim": 4, "ngroups": 3}),
            "model.mamba2.ngroups",
            "does not divide",
        ),
        (
            json!({"d_model": 8, "headdim": 4, "d_conv": 0}),
            "model.mamba2.d_conv",
            "positive",
        ),
        (
            json!({"d_model": 8, "headdim": 4, "dt_max": 0.0001}),
            "model.mamba2.dt_max",
            "dt_min",
        ),
        (
            json!({"d_model": 8, "headdim": 4, "dt_floor": 0.1, "dt_ceiling": 0.1}),
            "model.mamba2.dt_ceiling",
            "exceed",
        ),
        (
            json!({"d_model": 8, "headdim": 4, "a_init_range": [0.0, 16.0]}),
            "model.mamba2.a_init_range",
            "0 < lo",
        ),
        (
            json!({"d_model": 8, "headdim": 4, "norm_eps": -1.0}),
            "model.mamba2.norm_eps",
            "positive",
        ),
    ];
    for (v, key, says) in cases {
        match Mamba2Config::from_json("model.mamba2", &v) {
            Err(Error::Config { key: k, message }) => {
                assert_eq!(k, key, "{v}: {message}");
                assert!(message.contains(says), "{v}: `{message}` lacks `{says}`");
            }
            other => panic!("{v}: expected a config error, got {other:?}"),
        }
    }
    // The constructor checks too, under the section's own name.
    let bad = Mamba2Config {
        headdim: 5,
        ..tiny(1)
    };
    let vs = VarStore::new(Device::Cpu);
    match Mamba2Block::new(vs.root(), &bad) {
        Err(Error::Config { key, .. }) => assert_eq!(key, "mamba2.headdim"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}
