//! Cross-entropy per token: `loss[i] = logsumexp(logits[i]) - logits[i, targets[i]]`, 0 where
//! `targets[i]` is [`IGNORE`], computed in fp32 whatever the logits' dtype. The gradient
//! `(softmax(logits[i]) - onehot(targets[i])) * dloss[i]` comes back in the logits' dtype.
//!
//! A target outside `[0, V)` other than [`IGNORE`] gives a NaN loss (and a zero gradient
//! row) in both implementations: the kernel cannot report it without a device
//! synchronisation, and the reference follows it so that the two agree. A NaN loss stops
//! the trainer, which then names the bad target.
//!
//! Kernel: `cuda/xent.cu` (one pass over the row each way, saving only the fp32
//! log-sum-exp per row); tests: `tests/ops_xent.rs`, `tests/ops_xent_cuda.rs`.

use tch::{Kind, Tensor};

#[cfg(lcm_cuda)]
use crate::cuda::ffi::safe::{lcm_xent, lcm_xent_backward_raw, lcm_xent_forward_raw};
#[cfg(lcm_cuda)]
use crate::error::Result;

/// The target index that carries no loss (PyTorch's default `ignore_index`).
pub const IGNORE: i64 = -100;

/// The pure-tch reference, differentiable by autograd on any device: `logits (..., V)`,
/// int64 `targets` of the logits' leading shape, per-token loss of that shape. Computes in
/// fp32 (fp64 for fp64 logits), as `log_softmax` then a gather: the same per-token values
/// as `cross_entropy_loss` on fp32 logits.
pub fn cross_entropy_reference(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = *logits.size().last().expect("logits have a vocabulary axis");
    let acc = if logits.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let logp = logits.to_kind(acc).reshape([-1, v]).log_softmax(-1, acc);
    let t = targets.reshape([-1]);
    let in_range = t.ge(0).logical_and(&t.lt(v));
    let nll = -logp
        .gather(1, &t.where_scalarother(&in_range, 0).unsqueeze(1), false)
        .squeeze_dim(1);
    // `where` rather than a product with the mask: no gradient reaches ignored rows even
    // where their log-probability is infinite.
    let fill = nll
        .detach()
        .full_like(f64::NAN)
        .masked_fill(&t.eq(IGNORE), 0.0);
    nll.where_self(&in_range, &fill).reshape(targets.size())
}

/// The fused CUDA kernel (forward and backward through a C++ autograd Function), on fp32
/// or bf16 CUDA logits `(..., V)` and int64 targets of their leading shape.
#[cfg(lcm_cuda)]
pub fn cross_entropy_cuda(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let [loss] = lcm_xent(logits, targets)?;
    Ok(loss)
}

/// The kernels without autograd, on `(N, V)` logits: `(loss, lse)`. For benchmarks.
#[cfg(lcm_cuda)]
pub fn cross_entropy_cuda_forward_raw(
    logits: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let [loss, lse] = lcm_xent_forward_raw(logits, targets)?;
    Ok((loss, lse))
}

/// `dlogits` from the saved `lse` and the loss gradient `dloss (N)`. For benchmarks.
#[cfg(lcm_cuda)]
pub fn cross_entropy_cuda_backward_raw(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    dloss: &Tensor,
) -> Result<Tensor> {
    let [dlogits] = lcm_xent_backward_raw(logits, targets, lse, dloss)?;
    Ok(dlogits)
}

/// Per-token cross-entropy by whichever implementation suits `logits` (see
/// [`crate::ops`]). Panics, as tch's own ops do, if the kernel rejects its inputs.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    #[cfg(lcm_cuda)]
    if super::use_kernels(logits.device()) && matches!(logits.kind(), Kind::Float | Kind::BFloat16)
    {
        return cross_entropy_cuda(logits, targets).unwrap_or_else(|e| panic!("{e}"));
    }
    cross_entropy_reference(logits, targets)
}
