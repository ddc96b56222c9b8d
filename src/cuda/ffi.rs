//! Raw declarations of the C ABI in `cuda/bridge.h`, and the one safe pattern for calling it.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Error, Result};

extern "C" {
    pub fn lcm_last_error() -> *const c_char;
    pub fn lcm_cuda_runtime_version() -> c_int;
    pub fn lcm_cuda_peak_allocated(device: c_int) -> i64;
    pub fn lcm_cuda_reset_peak(device: c_int) -> c_int;
    pub fn lcm_cuda_empty_cache() -> c_int;
    pub fn lcm_pin_memory(t: *const C_tensor, out: *mut *mut C_tensor) -> c_int;
    pub fn lcm_pinned_empty(
        like: *const C_tensor,
        sizes: *const i64,
        ndim: c_int,
        out: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_cuda_mem_info(device: c_int, free: *mut i64, total: *mut i64) -> c_int;
    pub fn lcm_cuda_event_new() -> *mut std::ffi::c_void;
    pub fn lcm_cuda_event_record(e: *mut std::ffi::c_void) -> c_int;
    pub fn lcm_cuda_event_elapsed_ms(
        start: *mut std::ffi::c_void,
        end: *mut std::ffi::c_void,
    ) -> f32;
    pub fn lcm_cuda_event_free(e: *mut std::ffi::c_void);
    pub fn lcm_cuda_device_describe(index: c_int, buf: *mut c_char, len: c_int) -> c_int;
    pub fn lcm_cuda_capability(index: c_int) -> c_int;
}

/// Declares the kernel entries of `cuda/bridge.h`, each written as its tensor inputs
/// (`in`), its scalar parameters and its output tensors (`out`): the C signature takes them
/// in that order, inputs as `*const C_tensor`, outputs as `*mut *mut C_tensor`, and returns
/// 0 or an error code. Each entry also gets a safe wrapper of the same name in [`safe`].
macro_rules! kernel_entries {
    ($(
        fn $name:ident(in $($input:ident),+; $($param:ident: $pty:ty),*; out $($output:ident),+);
    )+) => {
        extern "C" {
            $(
                pub fn $name(
                    $($input: *const C_tensor,)+
                    $($param: $pty,)*
                    $($output: *mut *mut C_tensor),+
                ) -> c_int;
            )+
        }

        /// The kernel entries as safe functions: inputs are tensors (or, where the kernel
        /// takes an optional one, an `Option`), scalars anything that converts into the C
        /// type (a `bool` or a path into a `c_int` flag), and the outputs come back owned.
        pub mod safe {
            use super::*;
            $(
                #[allow(clippy::too_many_arguments)]
                pub fn $name(
                    $($input: impl TensorArg,)+
                    $($param: impl Into<$pty>,)*
                ) -> Result<[Tensor; [$(stringify!($output)),+].len()]> {
                    $(let $param: $pty = $param.into();)*
                    // SAFETY: the inputs are live tensors (or null where optional) for the
                    // whole call, and on success the entry writes one owned tensor per output.
                    unsafe {
                        call(|out| {
                            let [$($output),+] = out;
                            super::$name($($input.tensor_ptr(),)+ $($param,)* $($output),+)
                        })
                    }
                }
            )+
        }
    };
}

/// A tensor input of a kernel entry: a tensor, or an optional one (null when absent).
pub trait TensorArg {
    fn tensor_ptr(&self) -> *const C_tensor;
}

impl TensorArg for &Tensor {
    fn tensor_ptr(&self) -> *const C_tensor {
        self.as_ptr()
    }
}

impl TensorArg for Option<&Tensor> {
    fn tensor_ptr(&self) -> *const C_tensor {
        self.map_or(std::ptr::null(), |t| t.as_ptr())
    }
}

kernel_entries! {
    // RMSNorm: with autograd; the forward without it (saving `rstd`); its backward.
    fn lcm_rmsnorm(in x, w; eps: f64; out y);
    fn lcm_rmsnorm_forward_raw(in x, w; eps: f64; out y, rstd);
    fn lcm_rmsnorm_backward_raw(in x, w, rstd, dy; ; out dx, dw);

    // Per-token cross-entropy, the same three.
    fn lcm_xent(in logits, targets; ; out loss);
    fn lcm_xent_forward_raw(in logits, targets; ; out loss, lse);
    fn lcm_xent_backward_raw(in logits, targets, lse, dloss; ; out dlogits);

    // GCA over given chunks, and over the chunks `idx` of a chunk memory.
    fn lcm_gca(in q, k, v, w; scale: f64, softmax_one: c_int, path: c_int; out o);
    fn lcm_gca_forward_raw(in q, k, v, w; scale: f64, softmax_one: c_int, path: c_int; out o, lse);
    fn lcm_gca_gathered(
        in q, mem_k, mem_v, idx, w; scale: f64, softmax_one: c_int, path: c_int; out o
    );
    fn lcm_gca_gathered_forward_raw(
        in q, mem_k, mem_v, idx, w; scale: f64, softmax_one: c_int, path: c_int; out o, lse
    );
    fn lcm_gca_backward_raw(
        in q, k, v, w, lse, dout; scale: f64, path: c_int; out dq, dk, dv, dw
    );

    // HSA.
    fn lcm_hsa(
        in q, k, v, w, idx; chunk: i64, scale: f64, softmax_one: c_int, path: c_int; out o
    );
    fn lcm_hsa_forward_raw(
        in q, k, v, w, idx; chunk: i64, scale: f64, softmax_one: c_int, path: c_int; out o, lse
    );
    fn lcm_hsa_backward_raw(
        in q, k, v, w, idx, lse, dout; chunk: i64, scale: f64, softmax_one: c_int;
        out dq, dk, dv, dw
    );

    // Sliding-window attention (bidirectional with `causal` 0); `slopes` may be null.
    fn lcm_swa(
        in q, k, v, slopes; window: i64, causal: c_int, scale: f64, path: c_int; out o
    );
    fn lcm_swa_forward_raw(
        in q, k, v, slopes; window: i64, causal: c_int, scale: f64, path: c_int; out o, lse
    );
    fn lcm_swa_backward_raw(
        in q, k, v, slopes, o, lse, dout; window: i64, causal: c_int, scale: f64, path: c_int;
        out dq, dk, dv
    );

    // The retrieval top-k of queries `q` over keys `k`.
    fn lcm_retrieval_topk(
        in q, k; first: i64, div: i64, topk: i64, scale: f64, seed: i64, gumbel: c_int;
        out scores, indices
    );
}

/// Calls a bridge function that fills `N` output tensor pointers, and takes ownership of
/// them. On failure nothing was allocated and the bridge's message becomes the error.
///
/// # Safety
/// `call` must pass valid tensor pointers and write exactly `N` owned `at::Tensor*`
/// outputs when it returns 0.
pub unsafe fn call<const N: usize>(
    call: impl FnOnce(&mut [*mut C_tensor; N]) -> c_int,
) -> Result<[Tensor; N]> {
    let mut out = [std::ptr::null_mut(); N];
    if call(&mut out) != 0 {
        let msg = CStr::from_ptr(lcm_last_error())
            .to_string_lossy()
            .into_owned();
        return Err(Error::Cuda(msg));
    }
    Ok(out.map(|p| Tensor::from_ptr(p)))
}
