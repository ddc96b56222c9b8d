//! The Mamba2 block as mamba_ssm's `Mamba2` configures it (the lower and upper layers of
//! RAMba, seed-report 3.3), over the SSD scan of [`crate::ops::ssd`].
//!
//! ```text
//! block:  x -> residual (fp32) + mixer(RMSNorm(x))
//! mixer:  u (B, L, d_model) -> in_proj -> [z, xBC, dt]
//!   xBC -> causal depthwise conv1d (kernel d_conv, bias) -> SiLU -> [x, B, C]
//!   dt  -> softplus(dt + dt_bias) clamped to [dt_floor, dt_ceiling];  A = -exp(A_log)
//!   y   =  SSD(x (B, L, H, P), dt, A, B, C (B, L, G, N)) + D[h] * x
//!   out =  out_proj(RMSNorm_grouped(y * silu(z)))
//! ```
//! `d_inner = expand * d_model`, `H = d_inner / headdim` heads of width `P = headdim`, `G =
//! ngroups` groups of B and C (head `h` reads group `h / (H / G)`), `N = d_state`. The
//! gated RMSNorm gates before normalising (mamba_ssm's `norm_before_gate=False`) and
//! normalises each of the `G` groups of `d_inner / G` channels on its own. The scan, dt, A,
//! the D skip and the norm run in fp32 (fp64 with fp64 weights); the projections and the
//! conv in the weights' dtype; the residual stream leaves the block in fp32.
//!
//! Inference carries a [`Mamba2State`] per layer: the last `d_conv - 1` conv inputs and the
//! SSM state, constant in the length. [`Mamba2Block::forward_segment`] over consecutive
//! segments and [`Mamba2Block::step`] token by token give the full forward's outputs
//! (`tests/model_mamba2.rs`).
//!
//! Parameters (mamba_ssm's names, under the block's `mixer.`): `in_proj.weight`
//! `(2 d_inner + 2 G N + H, d_model)`, `conv1d.weight (conv_dim, 1, d_conv)` and
//! `conv1d.bias` with `conv_dim = d_inner + 2 G N`, `dt_bias (H)`, `A_log (H)`, `D (H)`,
//! `norm.weight (d_inner)`, `out_proj.weight (d_model, d_inner)`; the block's own
//! `norm.weight (d_model)`. Init as mamba_ssm: linear and conv weights (and the conv bias)
//! U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's defaults), linear biases 0, `dt_bias` the
//! inverse softplus of dt drawn log-uniformly from `[dt_min, dt_max]` and clamped below at
//! `dt_init_floor`, `A_log = ln U(a_init_range)`, `D = 1`, norm weights 1.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::layers::RmsNorm;
use crate::error::{Error, Result};
use crate::ops;

/// The block's shape and init (mamba_ssm's `Mamba2` arguments; defaults are mamba_ssm's
/// and RAMba-370M's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mamba2Config {
    /// Width of the residual stream.
    pub d_model: i64,
    /// SSM state size N per head.
    #[serde(default = "defaults::d_state")]
    pub d_state: i64,
    /// Kernel of the causal depthwise conv.
    #[serde(default = "defaults::d_conv")]
    pub d_conv: i64,
    /// `d_inner = expand * d_model`.
    #[serde(default = "defaults::expand")]
    pub expand: i64,
    /// Head width P; divides `d_inner`.
    #[serde(default = "defaults::headdim")]
    pub headdim: i64,
    /// Groups G of B and C, shared by `H / G` heads each; divides the heads.
    #[serde(default = "defaults::ngroups")]
    pub ngroups: i64,
    /// Tokens per chunk of the chunked scan (speed and memory only; any length works).
    #[serde(default = "defaults::chunk_size")]
    pub chunk_size: i64,
    /// Range of the initial dt (log-uniform).
    #[serde(default = "defaults::dt_min")]
    pub dt_min: f64,
    #[serde(default = "defaults::dt_max")]
    pub dt_max: f64,
    /// Smallest initial dt.
    #[serde(default = "defaults::dt_init_floor")]
    pub dt_init_floor: f64,
    /// dt after the softplus is clamped to `[dt_floor, dt_ceiling]` (the reference's
    /// `dt_limit`, `(0, inf)` by default: no clamp).
    #[serde(default)]
    pub dt_floor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dt_ceiling: Option<f64>,
    /// `-A` is drawn uniformly from this range at init.
    #[serde(default = "defaults::a_init_range")]
    pub a_init_range: [f64; 2],
    /// Epsilon of the block's RMSNorm and of the gated RMSNorm.
    #[serde(default = "defaults::norm_eps")]
    pub norm_eps: f64,
    /// Biases on in_proj and out_proj.
    #[serde(default)]
    pub bias: bool,
    /// A bias on the conv.
    #[serde(default = "defaults::conv_bias")]
    pub conv_bias: bool,
}

mod defaults {
    pub fn d_state() -> i64 {
        128
    }
    pub fn d_conv() -> i64 {
        4
    }
    pub fn expand() -> i64 {
        2
    }
    pub fn headdim() -> i64 {
        64
    }
    pub fn ngroups() -> i64 {
        1
    }
    pub fn chunk_size() -> i64 {
        256
    }
    pub fn dt_min() -> f64 {
        0.001
    }
    pub fn dt_max() -> f64 {
        0.1
    }
    pub fn dt_init_floor() -> f64 {
        1e-4
    }
    pub fn a_init_range() -> [f64; 2] {
        [1.0, 16.0]
    }
    pub fn norm_eps() -> f64 {
        1e-5
    }
    pub fn conv_bias() -> bool {
        true
    }
}

fn config_error(key: String, message: impl std::fmt::Display) -> Error {
    Error::Config {
        key,
        message: message.to_string(),
    }
}

impl Mamba2Config {
    /// The section name [`Mamba2Block::new`] reports errors under.
    pub const SECTION: &'static str = "mamba2";

    /// The defaults at width `d_model`.
    pub fn new(d_model: i64) -> Self {
        Mamba2Config {
            d_model,
            d_state: defaults::d_state(),
            d_conv: defaults::d_conv(),
            expand: defaults::expand(),
            headdim: defaults::headdim(),
            ngroups: defaults::ngroups(),
            chunk_size: defaults::chunk_size(),
            dt_min: defaults::dt_min(),
            dt_max: defaults::dt_max(),
            dt_init_floor: defaults::dt_init_floor(),
            dt_floor: 0.0,
            dt_ceiling: None,
            a_init_range: defaults::a_init_range(),
            norm_eps: defaults::norm_eps(),
            bias: false,
            conv_bias: defaults::conv_bias(),
        }
    }

    /// Parses and validates the section at dotted path `section` (errors name
    /// `section.<field>`).
    pub fn from_json(section: &str, v: &Value) -> Result<Self> {
        let c: Self = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                section.to_string()
            } else {
                format!("{section}.{path}")
            };
            config_error(key, e.into_inner())
        })?;
        c.validate(section)?;
        Ok(c)
    }

    /// `expand * d_model`.
    pub fn d_inner(&self) -> i64 {
        self.expand * self.d_model
    }

    /// Heads H.
    pub fn nheads(&self) -> i64 {
        self.d_inner() / self.headdim
    }

    /// Channels of the conv: x, B and C.
    pub fn conv_dim(&self) -> i64 {
        self.d_inner() + 2 * self.ngroups * self.d_state
    }

    /// Outputs of in_proj: z, x, B, C and dt.
    pub fn d_in_proj(&self) -> i64 {
        self.d_inner() + self.conv_dim() + self.nheads()
    }

    /// Checks values and their consistency; errors name `section.<field>`.
    pub fn validate(&self, section: &str) -> Result<()> {
        let key = |k: &str| format!("{section}.{k}");
        let ensure = |ok: bool, k: &str, msg: String| {
            if ok {
                Ok(())
            } else {
                Err(config_error(key(k), msg))
            }
        };
        for (k, v) in [
            ("d_model", self.d_model),
            ("d_state", self.d_state),
            ("d_conv", self.d_conv),
            ("expand", self.expand),
            ("headdim", self.headdim),
            ("ngroups", self.ngroups),
            ("chunk_size", self.chunk_size),
        ] {
            ensure(v > 0, k, format!("must be positive, got {v}"))?;
        }
        ensure(
            self.d_inner() % self.headdim == 0,
            "headdim",
            format!(
                "{} does not divide expand * d_model = {}",
                self.headdim,
                self.d_inner()
            ),
        )?;
        ensure(
            self.nheads() % self.ngroups == 0,
            "ngroups",
            format!(
                "{} does not divide the heads, expand * d_model / headdim = {}",
                self.ngroups,
                self.nheads()
            ),
        )?;
        let pos = |v: f64| v.is_finite() && v > 0.0;
        ensure(
            pos(self.dt_min),
            "dt_min",
            format!("must be positive, got {}", self.dt_min),
        )?;
        ensure(
            self.dt_max.is_finite() && self.dt_max >= self.dt_min,
            "dt_max",
            format!(
                "must be at least dt_min = {}, got {}",
                self.dt_min, self.dt_max
            ),
        )?;
        ensure(
            self.dt_init_floor.is_finite() && self.dt_init_floor >= 0.0,
            "dt_init_floor",
            format!("must be >= 0, got {}", self.dt_init_floor),
        )?;
        ensure(
            self.dt_floor.is_finite() && self.dt_floor >= 0.0,
            "dt_floor",
            format!("must be >= 0, got {}", self.dt_floor),
        )?;
        if let Some(c) = self.dt_ceiling {
            ensure(
                c.is_finite() && c > self.dt_floor,
                "dt_ceiling",
                format!("must exceed dt_floor = {}, got {c}", self.dt_floor),
            )?;
        }
        let [lo, hi] = self.a_init_range;
        ensure(
            pos(lo) && hi.is_finite() && hi >= lo,
            "a_init_range",
            format!("must be [lo, hi] with 0 < lo <= hi, got [{lo}, {hi}]"),
        )?;
        ensure(
            pos(self.norm_eps),
            "norm_eps",
            format!("must be positive, got {}", self.norm_eps),
        )
    }
}

/// What one Mamba2 layer carries from segment to segment, per batch row: constant in the
/// length.
#[derive(Debug)]
pub struct Mamba2State {
    /// The last `d_conv - 1` conv inputs `(B, conv_dim, d_conv - 1)`, oldest first, in the
    /// weights' dtype (zeros before the first token).
    pub conv: Tensor,
    /// The SSM state `(B, H, P, N)`, fp32 (fp64 with fp64 weights).
    pub ssm: Tensor,
}

impl Mamba2State {
    /// A copy that shares no storage (or autograd history) with this one.
    pub fn snapshot(&self) -> Mamba2State {
        Mamba2State {
            conv: self.conv.detach().copy(),
            ssm: self.ssm.detach().copy(),
        }
    }
}

/// The fp32 working precision of weights of `kind` (fp64 stays fp64).
fn acc_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// `RMSNorm(y * silu(z)) * w`, normalised over each of `groups` equal groups of the last
/// dimension, in `y`'s precision (fp32 or fp64).
fn gated_rms_norm(y: &Tensor, z: &Tensor, w: &Tensor, groups: i64, eps: f64) -> Tensor {
    let acc = y.kind();
    let g = y * z.to_kind(acc).silu();
    let shape = g.size();
    let d = shape[shape.len() - 1];
    let mut grouped = shape[..shape.len() - 1].to_vec();
    grouped.extend([groups, d / groups]);
    let g = g.reshape(grouped);
    let rstd = (g.square().mean_dim(-1, true, acc) + eps).rsqrt();
    (g * rstd).reshape(shape) * w.to_kind(acc)
}

/// PyTorch's default init of a linear or conv weight (and conv bias): U(-b, b), b =
/// 1/sqrt(fan_in).
fn torch_default(fan_in: i64) -> nn::Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -b, up: b }
}

/// The Mamba2 mixer (mamba_ssm's `Mamba2` module): in_proj to out_proj, no norm or
/// residual around it.
#[derive(Debug)]
pub struct Mamba2Mixer {
    cfg: Mamba2Config,
    in_proj: nn::Linear,
    conv_weight: Tensor,
    conv_bias: Option<Tensor>,
    dt_bias: Tensor,
    a_log: Tensor,
    d: Tensor,
    norm_weight: Tensor,
    out_proj: nn::Linear,
}

/// The split outputs of in_proj: gate `z (.., d_inner)`, conv input `xbc (.., conv_dim)`
/// and raw `dt (.., H)`.
struct Projected {
    z: Tensor,
    xbc: Tensor,
    dt: Tensor,
}

impl Mamba2Mixer {
    /// Creates the parameters under `vs` (names in the module doc); errors name the config
    /// field under [`Mamba2Config::SECTION`].
    pub fn new(vs: nn::Path, cfg: &Mamba2Config) -> Result<Self> {
        cfg.validate(Mamba2Config::SECTION)?;
        let (d, di, h) = (cfg.d_model, cfg.d_inner(), cfg.nheads());
        let linear = |name: &str, d_in: i64, d_out: i64| {
            let c = nn::LinearConfig {
                ws_init: torch_default(d_in),
                bs_init: Some(nn::Init::Const(0.0)),
                bias: cfg.bias,
            };
            nn::linear(&vs / name, d_in, d_out, c)
        };
        let conv = &vs / "conv1d";
        let conv_init = torch_default(cfg.d_conv);
        let conv_weight = conv.var("weight", &[cfg.conv_dim(), 1, cfg.d_conv], conv_init);
        let conv_bias = cfg
            .conv_bias
            .then(|| conv.var("bias", &[cfg.conv_dim()], conv_init));
        // dt log-uniform in [dt_min, dt_max], floored; dt_bias its inverse softplus.
        let opts = (Kind::Double, Device::Cpu);
        let (lmin, lmax) = (cfg.dt_min.ln(), cfg.dt_max.ln());
        let dt = (Tensor::rand([h], opts) * (lmax - lmin) + lmin)
            .exp()
            .clamp_min(cfg.dt_init_floor);
        let inv_dt = &dt + (-(-&dt).expm1()).log();
        let [lo, hi] = cfg.a_init_range;
        let a = Tensor::rand([h], opts) * (hi - lo) + lo;
        Ok(Mamba2Mixer {
            in_proj: linear("in_proj", d, cfg.d_in_proj()),
            conv_weight,
            conv_bias,
            dt_bias: vs.var_copy("dt_bias", &inv_dt),
            a_log: vs.var_copy("A_log", &a.log()),
            d: vs.ones("D", &[h]),
            norm_weight: (&vs / "norm").ones("weight", &[di]),
            out_proj: linear("out_proj", di, d),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Mamba2Config {
        &self.cfg
    }

    /// A state before the first token for `batch` rows on `device`.
    pub fn new_state(&self, batch: i64, device: Device) -> Mamba2State {
        let c = &self.cfg;
        let kind = self.conv_weight.kind();
        Mamba2State {
            conv: Tensor::zeros([batch, c.conv_dim(), c.d_conv - 1], (kind, device)),
            ssm: Tensor::zeros(
                [batch, c.nheads(), c.headdim, c.d_state],
                (acc_kind(kind), device),
            ),
        }
    }

    /// `u (B, L, d_model)` -> `(B, L, d_model)`, from the zero state.
    pub fn forward(&self, u: &Tensor) -> Tensor {
        self.run(u, None)
    }

    /// A segment `u (B, L, d_model)` after the tokens `state` has seen; leaves in `state`
    /// what the next segment needs.
    pub fn forward_segment(&self, u: &Tensor, state: &mut Mamba2State) -> Tensor {
        self.run(u, Some(state))
    }

    /// One token `u (B, d_model)` -> `(B, d_model)`: the conv over the stored inputs and one
    /// step of the recurrence ([`ops::ssd_step`]).
    pub fn step(&self, u: &Tensor, state: &mut Mamba2State) -> Tensor {
        let c = &self.cfg;
        let bz = u.size()[0];
        let p = self.project(u);
        let kind = p.xbc.kind();
        let window = Tensor::cat(&[state.conv.to_kind(kind), p.xbc.unsqueeze(-1)], 2);
        let xbc = (&window * self.conv_weight.squeeze_dim(1)).sum_dim_intlist(
            [-1].as_slice(),
            false,
            kind,
        );
        let xbc = match &self.conv_bias {
            Some(b) => xbc + b,
            None => xbc,
        }
        .silu();
        state.conv = window.narrow(2, 1, c.d_conv - 1);
        let (x, b, cc) = self.split_xbc(&xbc, &[bz]);
        let acc = acc_kind(kind);
        let (y, ssm) = ops::ssd_step(&state.ssm, &x, &self.dt(&p.dt, acc), &self.a(acc), &b, &cc);
        state.ssm = ssm;
        self.output(&y, &x, &p.z)
    }

    fn project(&self, u: &Tensor) -> Projected {
        let c = &self.cfg;
        let zxbcdt = self.in_proj.forward(u);
        let parts = zxbcdt.split_with_sizes([c.d_inner(), c.conv_dim(), c.nheads()], -1);
        let [z, xbc, dt] = <[Tensor; 3]>::try_from(parts).expect("three parts");
        Projected { z, xbc, dt }
    }

    /// Splits the conv output `(lead.., conv_dim)` into `x (lead.., H, P)` and `B`, `C`
    /// `(lead.., G, N)`, all in the scan's precision.
    fn split_xbc(&self, xbc: &Tensor, lead: &[i64]) -> (Tensor, Tensor, Tensor) {
        let c = &self.cfg;
        let gn = c.ngroups * c.d_state;
        let acc = acc_kind(xbc.kind());
        let parts = xbc.split_with_sizes([c.d_inner(), gn, gn], -1);
        let shape = |last: [i64; 2]| [lead, &last[..]].concat();
        (
            parts[0]
                .to_kind(acc)
                .reshape(shape([c.nheads(), c.headdim])),
            parts[1].to_kind(acc).reshape(shape([c.ngroups, c.d_state])),
            parts[2].to_kind(acc).reshape(shape([c.ngroups, c.d_state])),
        )
    }

    /// `softplus(dt + dt_bias)` clamped to `[dt_floor, dt_ceiling]`, in `acc`.
    fn dt(&self, dt: &Tensor, acc: Kind) -> Tensor {
        let c = &self.cfg;
        let dt = (dt.to_kind(acc) + self.dt_bias.to_kind(acc)).softplus();
        match c.dt_ceiling {
            Some(hi) => dt.clamp(c.dt_floor, hi),
            None if c.dt_floor > 0.0 => dt.clamp_min(c.dt_floor),
            None => dt,
        }
    }

    /// `A = -exp(A_log)`, in `acc`.
    fn a(&self, acc: Kind) -> Tensor {
        -self.a_log.to_kind(acc).exp()
    }

    /// The scan's `y (lead.., H, P)` plus the D skip of `x`, gated, normed and projected.
    fn output(&self, y: &Tensor, x: &Tensor, z: &Tensor) -> Tensor {
        let c = &self.cfg;
        let acc = y.kind();
        let y = y + x * self.d.to_kind(acc).unsqueeze(-1);
        let mut shape = y.size();
        shape.truncate(shape.len() - 2);
        shape.push(c.d_inner());
        let y = y.reshape(shape);
        let y = gated_rms_norm(&y, z, &self.norm_weight, c.ngroups, c.norm_eps);
        self.out_proj.forward(&y.to_kind(z.kind()))
    }

    fn run(&self, u: &Tensor, state: Option<&mut Mamba2State>) -> Tensor {
        let c = &self.cfg;
        let (bz, l) = (u.size()[0], u.size()[1]);
        let p = self.project(u);
        let kind = p.xbc.kind();
        // The causal conv: the previous d_conv - 1 inputs (zeros at the start) then this
        // segment's, convolved without padding.
        let prev = match &state {
            Some(s) => s.conv.to_kind(kind),
            None => Tensor::zeros([bz, c.conv_dim(), c.d_conv - 1], (kind, u.device())),
        };
        let inputs = Tensor::cat(&[prev, p.xbc.transpose(1, 2)], 2); // (B, conv_dim, K-1+L)
        let xbc = inputs
            .conv1d(
                &self.conv_weight,
                self.conv_bias.as_ref(),
                [1],
                [0],
                [1],
                c.conv_dim(),
            )
            .silu()
            .transpose(1, 2); // (B, L, conv_dim)
        let (x, b, cc) = self.split_xbc(&xbc, &[bz, l]);
        let acc = acc_kind(kind);
        let dt = self.dt(&p.dt, acc);
        let a = self.a(acc);
        let y = match state {
            Some(s) => {
                let (y, ssm) = ops::ssd(&x, &dt, &a, &b, &cc, Some(&s.ssm), c.chunk_size);
                s.conv = inputs.narrow(2, l, c.d_conv - 1);
                s.ssm = ssm;
                y
            }
            None => ops::ssd(&x, &dt, &a, &b, &cc, None, c.chunk_size).0,
        };
        self.output(&y, &x, &p.z)
    }
}

/// The pre-norm residual block: `x + mixer(RMSNorm(x))` with the residual in fp32
/// (mamba_ssm's `Block` with `residual_in_fp32`, RAMba's `Mamba2Block`). Parameters
/// `norm.weight` and `mixer.*`.
#[derive(Debug)]
pub struct Mamba2Block {
    norm: RmsNorm,
    mixer: Mamba2Mixer,
}

impl Mamba2Block {
    pub fn new(vs: nn::Path, cfg: &Mamba2Config) -> Result<Self> {
        Ok(Mamba2Block {
            mixer: Mamba2Mixer::new(&vs / "mixer", cfg)?,
            norm: RmsNorm::new(&vs / "norm", cfg.d_model, cfg.norm_eps),
        })
    }

    pub fn mixer(&self) -> &Mamba2Mixer {
        &self.mixer
    }

    pub fn new_state(&self, batch: i64, device: Device) -> Mamba2State {
        self.mixer.new_state(batch, device)
    }

    /// `x (B, L, d_model)` of any float dtype -> `(B, L, d_model)` fp32 (fp64 for fp64 `x`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.residual(x) + self.mixer.forward(&self.normed(x))
    }

    /// As [`Mamba2Block::forward`] for a segment after the tokens `state` has seen.
    pub fn forward_segment(&self, x: &Tensor, state: &mut Mamba2State) -> Tensor {
        self.residual(x) + self.mixer.forward_segment(&self.normed(x), state)
    }

    /// One token `x (B, d_model)` -> `(B, d_model)` fp32 (fp64 for fp64 `x`).
    pub fn step(&self, x: &Tensor, state: &mut Mamba2State) -> Tensor {
        self.residual(x) + self.mixer.step(&self.normed(x), state)
    }

    fn residual(&self, x: &Tensor) -> Tensor {
        x.to_kind(acc_kind(x.kind()))
    }

    /// The norm of `x` in the weights' dtype (the mixer's input).
    fn normed(&self, x: &Tensor) -> Tensor {
        self.norm.forward(&x.to_kind(self.norm.weight.kind()))
    }
}
