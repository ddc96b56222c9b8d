//! The SSD scan of Mamba2 (state space duality): a selective state space model whose
//! transition is a scalar times the identity per head, so that the whole scan is a masked,
//! decayed linear attention inside chunks plus a recurrence over chunk states.
//!
//! Per batch row, head `h` (of `H`, in group `g = h / (H / G)`) and time `t`:
//! ```text
//! state_t = exp(dt_t[h] * A[h]) * state_{t-1} + dt_t[h] * x_t[h] B_t[g]^T    (P x N)
//! y_t[h]  = state_t C_t[g]                                                  (P)
//! ```
//! Shapes: `x (B, L, H, P)`; `dt (B, L, H)` (after softplus and clamping, >= 0); `a (H,)`
//! (negative); `b`, `c (B, L, G, N)` with `G` dividing `H`; `initial (B, H, P, N)` or none
//! (zeros). Output: `y (B, L, H, P)` in `x`'s dtype and the state after the last token
//! `(B, H, P, N)`. Everything is computed in fp32 (fp64 for fp64 `x`), and the state is
//! returned in that precision: it is carried from segment to segment and must not round.
//! The D skip and the gate belong to the block ([`crate::model::mamba2`]), not to the scan.
//!
//! Three forms:
//! * [`ssd_step`]: one token, state in and state out (decoding).
//! * [`ssd_recurrent`]: [`ssd_step`] over the sequence; the ground truth.
//! * [`ssd_chunked`]: the chunked SSD form, the reference the model runs. Per chunk of `Q`
//!   tokens, the output is the intra-chunk quadratic term (scores `C_t . B_s` times the
//!   decay `exp(cs_t - cs_s)` for `s <= t`, `cs` the in-chunk cumulative sum of `dt * A`)
//!   plus the state entering the chunk read by `C_t` and decayed by `exp(cs_t)`; the
//!   states entering the chunks come from a recurrence over the chunks' own states. The
//!   decay mask is a difference of cumulative sums with the upper triangle set to -inf
//!   before the exponential, so nothing overflows and masked entries get zero gradient;
//!   every exponent is <= 0 (up to rounding).
//!
//! [`ssd`] dispatches: today the chunked reference everywhere (a CUDA kernel comes later,
//! `docs/kernels/ssd.md`). Tests: `tests/ops_ssd.rs`.

use tch::{Kind, Tensor};

/// The sizes of one scan, checked against each other.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: i64,
    len: i64,
    heads: i64,
    headdim: i64,
    groups: i64,
    state: i64,
}

impl Dims {
    /// Heads per group.
    fn per_group(&self) -> i64 {
        self.heads / self.groups
    }
}

/// The precision of the scan: fp64 for fp64 `x`, fp32 otherwise.
fn acc_kind(x: &Tensor) -> Kind {
    if x.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Checks the shapes of a scan's inputs; panics, as tch's own ops do, naming them.
fn dims(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    initial: Option<&Tensor>,
) -> Dims {
    let (xs, ds, bs) = (x.size(), dt.size(), b.size());
    assert!(
        xs.len() == 4 && ds.len() == 3 && bs.len() == 4,
        "ssd: x {xs:?} (B, L, H, P), dt {ds:?} (B, L, H), b {bs:?} (B, L, G, N)"
    );
    let d = Dims {
        batch: xs[0],
        len: xs[1],
        heads: xs[2],
        headdim: xs[3],
        groups: bs[2],
        state: bs[3],
    };
    assert!(d.len >= 1, "ssd: empty sequence, x {xs:?}");
    assert!(
        ds == [d.batch, d.len, d.heads] && a.size() == [d.heads],
        "ssd: dt {ds:?} must be (B, L, H) = {:?} and a {:?} (H,) = [{}]",
        &xs[..3],
        a.size(),
        d.heads
    );
    assert!(
        bs[..2] == xs[..2] && d.groups > 0 && d.heads % d.groups == 0 && c.size() == bs,
        "ssd: b {bs:?} and c {:?} must be (B, L, G, N) with G dividing H = {} (x {xs:?})",
        c.size(),
        d.heads
    );
    if let Some(s) = initial {
        assert!(
            s.size() == [d.batch, d.heads, d.headdim, d.state],
            "ssd: initial state {:?} must be (B, H, P, N) = [{}, {}, {}, {}]",
            s.size(),
            d.batch,
            d.heads,
            d.headdim,
            d.state
        );
    }
    d
}

/// One token: `state (B, H, P, N)`, `x (B, H, P)`, `dt (B, H)`, `a (H,)`, `b`, `c (B, G, N)`
/// -> `(y (B, H, P)` in `x`'s dtype, the new state in the scan's precision).
pub fn ssd_step(
    state: &Tensor,
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
) -> (Tensor, Tensor) {
    let xs = x.size();
    assert!(xs.len() == 3, "ssd_step: x {xs:?} must be (B, H, P)");
    let d = dims(
        &x.unsqueeze(1),
        &dt.unsqueeze(1),
        a,
        &b.unsqueeze(1),
        &c.unsqueeze(1),
        Some(state),
    );
    let acc = acc_kind(x);
    let (bz, g, r, p, n) = (d.batch, d.groups, d.per_group(), d.headdim, d.state);
    let dt = dt.to_kind(acc).reshape([bz, g, r, 1, 1]);
    let decay = (&dt * a.to_kind(acc).reshape([1, g, r, 1, 1])).exp();
    let x5 = x.to_kind(acc).reshape([bz, g, r, p, 1]);
    let b5 = b.to_kind(acc).reshape([bz, g, 1, 1, n]);
    let c5 = c.to_kind(acc).reshape([bz, g, 1, 1, n]);
    let h = state.to_kind(acc).reshape([bz, g, r, p, n]) * decay + dt * x5 * b5;
    let y = (&h * c5).sum_dim_intlist([-1].as_slice(), false, acc);
    (
        y.reshape([bz, d.heads, p]).to_kind(x.kind()),
        h.reshape([bz, d.heads, p, n]),
    )
}

/// The scan token by token through [`ssd_step`]: the ground truth of [`ssd_chunked`].
pub fn ssd_recurrent(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    initial: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let d = dims(x, dt, a, b, c, initial);
    let mut h = match initial {
        Some(s) => s.to_kind(acc_kind(x)),
        None => Tensor::zeros(
            [d.batch, d.heads, d.headdim, d.state],
            (acc_kind(x), x.device()),
        ),
    };
    let mut ys = Vec::with_capacity(d.len as usize);
    for t in 0..d.len {
        let (y, next) = ssd_step(
            &h,
            &x.select(1, t),
            &dt.select(1, t),
            a,
            &b.select(1, t),
            &c.select(1, t),
        );
        ys.push(y);
        h = next;
    }
    (Tensor::stack(&ys, 1), h)
}

/// The chunked SSD form with chunks of `chunk` tokens (the sequence is padded to a
/// multiple with `dt = 0` and `x = b = c = 0`, which leaves the state unchanged, and the
/// padding is cut from `y`). Differentiable by autograd in every input.
pub fn ssd_chunked(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    initial: Option<&Tensor>,
    chunk: i64,
) -> (Tensor, Tensor) {
    assert!(
        chunk > 0,
        "ssd_chunked: chunk size {chunk} must be positive"
    );
    let d = dims(x, dt, a, b, c, initial);
    let acc = acc_kind(x);
    let dev = x.device();
    let (bz, g, r, p, n, q) = (d.batch, d.groups, d.per_group(), d.headdim, d.state, chunk);
    let nc = (d.len + q - 1) / q;
    let pad = nc * q - d.len;
    // Pads dim 1 (time) at its end and casts to the scan's precision.
    let padded = |t: &Tensor| {
        let mut spec = vec![0i64; 2 * (t.dim() - 2)];
        spec.push(0);
        spec.push(pad);
        t.to_kind(acc).constant_pad_nd(spec)
    };
    let xc = padded(x).reshape([bz, nc, q, g, r, p]);
    let dtc = padded(dt).reshape([bz, nc, q, g, r]);
    let bc = padded(b).reshape([bz, nc, q, g, n]);
    let cc = padded(c).reshape([bz, nc, q, g, n]);
    let da = &dtc * a.to_kind(acc).reshape([1, 1, 1, g, r]);
    let cs = da.cumsum(2, acc); // (B, C, Q, G, R), inclusive, within each chunk

    // Intra-chunk: y_t += sum_{s <= t} (C_t . B_s) exp(cs_t - cs_s) dt_s x_s.
    let scores = Tensor::einsum("bctgn,bcsgn->bcgts", &[&cc, &bc], None::<i64>);
    let csr = cs.permute([0, 1, 3, 4, 2]); // (B, C, G, R, Q)
    let future = Tensor::ones([q, q], (Kind::Bool, dev)).triu(1);
    let decay = (csr.unsqueeze(-1) - csr.unsqueeze(-2))
        .masked_fill(&future, f64::NEG_INFINITY)
        .exp(); // (B, C, G, R, Q_t, Q_s)
    let dts = dtc.permute([0, 1, 3, 4, 2]).unsqueeze(-2); // (B, C, G, R, 1, Q_s)
    let m = scores.unsqueeze(3) * decay * dts;
    let y_diag = Tensor::einsum("bcgrts,bcsgrp->bctgrp", &[&m, &xc], None::<i64>);

    // Each chunk's own state: sum_s exp(cs_last - cs_s) dt_s x_s B_s^T.
    let last = cs.narrow(2, q - 1, 1); // (B, C, 1, G, R)
    let w = (&last - &cs).exp() * &dtc;
    let own = Tensor::einsum("bcsgr,bcsgrp,bcsgn->bcgrpn", &[&w, &xc, &bc], None::<i64>);

    // The states entering the chunks: h_{c+1} = exp(cs_last,c) h_c + own_c.
    let chunk_decay = last.squeeze_dim(2).exp().reshape([bz, nc, g, r, 1, 1]);
    let mut h = match initial {
        Some(s) => s.to_kind(acc).reshape([bz, g, r, p, n]),
        None => Tensor::zeros([bz, g, r, p, n], (acc, dev)),
    };
    let mut entering = Vec::with_capacity(nc as usize);
    for i in 0..nc {
        entering.push(h.shallow_clone());
        h = h * chunk_decay.select(1, i) + own.select(1, i);
    }
    let entering = Tensor::stack(&entering, 1); // (B, C, G, R, P, N)

    // Inter-chunk: y_t += exp(cs_t) h_c C_t.
    let y_off = Tensor::einsum("bctgn,bcgrpn->bctgrp", &[&cc, &entering], None::<i64>)
        * cs.exp().unsqueeze(-1);
    let y = (y_diag + y_off)
        .reshape([bz, nc * q, d.heads, p])
        .narrow(1, 0, d.len)
        .to_kind(x.kind());
    (y, h.reshape([bz, d.heads, p, n]))
}

/// The scan by whichever implementation suits the inputs (see [`crate::ops`]); today the
/// chunked reference everywhere.
pub fn ssd(
    x: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    initial: Option<&Tensor>,
    chunk: i64,
) -> (Tensor, Tensor) {
    ssd_chunked(x, dt, a, b, c, initial, chunk)
}
