//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * w` over the last dimension.
//!
//! Both implementations normalise in fp32 and round once to the input dtype, so bf16
//! results agree to one rounding. Kernel: `cuda/rmsnorm.cu`; test: `tests/ops_rmsnorm.rs`.

use tch::{Kind, Tensor};

#[cfg(lcm_cuda)]
use crate::cuda::ffi::safe::{lcm_rmsnorm, lcm_rmsnorm_backward_raw, lcm_rmsnorm_forward_raw};
#[cfg(lcm_cuda)]
use crate::error::Result;

/// The pure-tch reference, differentiable by autograd on any device.
/// Computes in fp32 (fp64 for fp64 inputs) and rounds once to `x`'s dtype.
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let acc = if x.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let xf = x.to_kind(acc);
    let rstd = (xf.square().mean_dim(-1, true, acc) + eps).rsqrt();
    (xf * rstd * w.to_kind(acc)).to_kind(x.kind())
}

/// The fused CUDA kernel (forward and backward through a C++ autograd Function).
/// Takes fp32 or bf16 CUDA tensors; `w` is cast to `x`'s dtype inside the graph.
#[cfg(lcm_cuda)]
pub fn rms_norm_cuda(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let [y] = lcm_rmsnorm(x, w, eps)?;
    Ok(y)
}

/// The kernels without autograd: `(y, rstd)` then `(dx, dw)`. For benchmarks.
#[cfg(lcm_cuda)]
pub fn rms_norm_cuda_forward_raw(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let [y, rstd] = lcm_rmsnorm_forward_raw(x, w, eps)?;
    Ok((y, rstd))
}

#[cfg(lcm_cuda)]
pub fn rms_norm_cuda_backward_raw(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let [dx, dw] = lcm_rmsnorm_backward_raw(x, w, rstd, dy)?;
    Ok((dx, dw))
}

/// RMSNorm by whichever implementation suits `x` (see [`crate::ops`]). Panics, as tch's
/// own ops do, if the kernel rejects its inputs.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    #[cfg(lcm_cuda)]
    if super::use_kernels(x.device()) && matches!(x.kind(), Kind::Float | Kind::BFloat16) {
        return rms_norm_cuda(x, w, eps).unwrap_or_else(|e| panic!("{e}"));
    }
    rms_norm_reference(x, w, eps)
}
