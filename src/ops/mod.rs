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
pub mod swa;
pub mod xent;

pub use gca::{gca, gca_gathered, gca_gathered_reference, gca_reference};
pub use hsa::{hsa, hsa_reference};
pub use retrieval::{
    chunk_retrieval, chunk_retrieval_blocked, chunk_retrieval_reference, token_retrieval,
    token_retrieval_blocked, token_retrieval_reference, Retrieval, SlotWeighting,
};
pub use rmsnorm::{rms_norm, rms_norm_reference};
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

/// Whether dispatch should use CUDA kernels for a tensor on `device`.
pub fn use_kernels(device: tch::Device) -> bool {
    crate::cuda::KERNELS_BUILT && device.is_cuda() && !reference_forced()
}
