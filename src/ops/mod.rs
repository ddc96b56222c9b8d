//! Ops with two implementations: a pure-tch reference (runs anywhere, with autograd, the
//! ground truth) and a hand-written CUDA kernel (`cuda/<op>*.cu`, the path chosen by
//! [`path`]). The plain function
//! dispatches; the model never knows which one ran.
//!
//! Dispatch picks the kernel for a CUDA tensor when this build has kernels, unless
//! `LCM_REFERENCE_OPS=1` is set (to measure or debug against the reference).

pub mod gca;
pub mod hsa;
pub mod path;
pub mod retrieval;
pub mod rmsnorm;
pub mod ssd;
pub mod swa;
pub mod xent;

pub use gca::{gca, gca_gathered, gca_gathered_reference, gca_reference};
pub use hsa::{hsa, hsa_reference};
pub use retrieval::{
    chunk_retrieval, chunk_retrieval_blocked, chunk_retrieval_reference, token_retrieval,
    token_retrieval_blocked, token_retrieval_reference, Retrieval, SlotWeighting,
};
pub use rmsnorm::{rms_norm, rms_norm_reference};
pub use ssd::{ssd, ssd_chunked, ssd_recurrent, ssd_step};
pub use swa::{
    bidirectional_attention, bidirectional_attention_reference, causal_attention,
    causal_attention_reference, sliding_window_attention, sliding_window_attention_cached,
    sliding_window_attention_reference, sliding_window_attention_sdpa,
};
pub use xent::{cross_entropy, cross_entropy_reference};

use std::sync::OnceLock;

/// Whether `LCM_REFERENCE_OPS=1` asks for the reference ops everywhere.
pub fn reference_forced() -> bool {
    static FORCE_REFERENCE: OnceLock<bool> = OnceLock::new();
    *FORCE_REFERENCE.get_or_init(|| std::env::var("LCM_REFERENCE_OPS").is_ok_and(|v| v == "1"))
}

/// The checks every attention kernel (SWA, GCA, HSA) makes of its inputs: `q` 4-d on a
/// CUDA device, `k` of `kv_dims` dimensions and `v` of its shape, all three bf16, and the
/// same head dim (the last), 64 or 128, in `q` and `k`.
pub(crate) fn attention_kernel_inputs(
    q: &tch::Tensor,
    k: &tch::Tensor,
    v: &tch::Tensor,
    kv_dims: usize,
) -> bool {
    let (qs, ks) = (q.size(), k.size());
    qs.len() == 4
        && ks.len() == kv_dims
        && v.size() == ks
        && q.device().is_cuda()
        && [q.kind(), k.kind(), v.kind()] == [tch::Kind::BFloat16; 3]
        && matches!(qs[3], 64 | 128)
        && ks[kv_dims - 1] == qs[3]
}

/// Whether dispatch should use CUDA kernels for a tensor on `device`.
pub fn use_kernels(device: tch::Device) -> bool {
    crate::cuda::KERNELS_BUILT && device.is_cuda() && !reference_forced()
}
