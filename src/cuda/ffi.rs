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

    pub fn lcm_rmsnorm(
        x: *const C_tensor,
        w: *const C_tensor,
        eps: f64,
        y: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_rmsnorm_forward_raw(
        x: *const C_tensor,
        w: *const C_tensor,
        eps: f64,
        y: *mut *mut C_tensor,
        rstd: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_rmsnorm_backward_raw(
        x: *const C_tensor,
        w: *const C_tensor,
        rstd: *const C_tensor,
        dy: *const C_tensor,
        dx: *mut *mut C_tensor,
        dw: *mut *mut C_tensor,
    ) -> c_int;

    pub fn lcm_xent(
        logits: *const C_tensor,
        targets: *const C_tensor,
        loss: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_xent_forward_raw(
        logits: *const C_tensor,
        targets: *const C_tensor,
        loss: *mut *mut C_tensor,
        lse: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_xent_backward_raw(
        logits: *const C_tensor,
        targets: *const C_tensor,
        lse: *const C_tensor,
        dloss: *const C_tensor,
        dlogits: *mut *mut C_tensor,
    ) -> c_int;

    pub fn lcm_gca(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        w: *const C_tensor,
        scale: f64,
        softmax_one: c_int,
        path: c_int,
        o: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_gca_forward_raw(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        w: *const C_tensor,
        scale: f64,
        softmax_one: c_int,
        path: c_int,
        o: *mut *mut C_tensor,
        lse: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_gca_gathered(
        q: *const C_tensor,
        mem_k: *const C_tensor,
        mem_v: *const C_tensor,
        idx: *const C_tensor,
        w: *const C_tensor,
        scale: f64,
        softmax_one: c_int,
        path: c_int,
        o: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_gca_gathered_forward_raw(
        q: *const C_tensor,
        mem_k: *const C_tensor,
        mem_v: *const C_tensor,
        idx: *const C_tensor,
        w: *const C_tensor,
        scale: f64,
        softmax_one: c_int,
        path: c_int,
        o: *mut *mut C_tensor,
        lse: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_gca_backward_raw(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        w: *const C_tensor,
        lse: *const C_tensor,
        dout: *const C_tensor,
        scale: f64,
        path: c_int,
        dq: *mut *mut C_tensor,
        dk: *mut *mut C_tensor,
        dv: *mut *mut C_tensor,
        dw: *mut *mut C_tensor,
    ) -> c_int;

    pub fn lcm_hsa(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        w: *const C_tensor,
        idx: *const C_tensor,
        chunk: i64,
        scale: f64,
        softmax_one: c_int,
        path: c_int,
        o: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_hsa_forward_raw(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        w: *const C_tensor,
        idx: *const C_tensor,
        chunk: i64,
        scale: f64,
        softmax_one: c_int,
        path: c_int,
        o: *mut *mut C_tensor,
        lse: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_hsa_backward_raw(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        w: *const C_tensor,
        idx: *const C_tensor,
        lse: *const C_tensor,
        dout: *const C_tensor,
        chunk: i64,
        scale: f64,
        softmax_one: c_int,
        dq: *mut *mut C_tensor,
        dk: *mut *mut C_tensor,
        dv: *mut *mut C_tensor,
        dw: *mut *mut C_tensor,
    ) -> c_int;

    pub fn lcm_swa(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        slopes: *const C_tensor,
        window: i64,
        causal: c_int,
        scale: f64,
        path: c_int,
        o: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_swa_forward_raw(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        slopes: *const C_tensor,
        window: i64,
        causal: c_int,
        scale: f64,
        path: c_int,
        o: *mut *mut C_tensor,
        lse: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_swa_backward_raw(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        slopes: *const C_tensor,
        o: *const C_tensor,
        lse: *const C_tensor,
        dout: *const C_tensor,
        window: i64,
        causal: c_int,
        scale: f64,
        path: c_int,
        dq: *mut *mut C_tensor,
        dk: *mut *mut C_tensor,
        dv: *mut *mut C_tensor,
    ) -> c_int;
    pub fn lcm_retrieval_topk(
        q: *const C_tensor,
        k: *const C_tensor,
        first: i64,
        div: i64,
        topk: i64,
        scale: f64,
        seed: i64,
        gumbel: c_int,
        scores: *mut *mut C_tensor,
        indices: *mut *mut C_tensor,
    ) -> c_int;
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
