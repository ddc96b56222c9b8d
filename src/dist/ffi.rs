//! Raw declarations of the C ABI in `cpp/dist.cpp`.

use std::ffi::c_void;
use std::os::raw::{c_char, c_int};
use torch_sys::C_tensor;

extern "C" {
    pub fn lcm_dist_last_error() -> *const c_char;
    pub fn lcm_dist_has_gloo() -> c_int;
    pub fn lcm_dist_has_nccl() -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn lcm_dist_init(
        backend: c_int,
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn lcm_dist_free(group: *mut c_void);
    pub fn lcm_dist_all_reduce(
        group: *mut c_void,
        tensors: *const *mut C_tensor,
        n: c_int,
        op: c_int,
    ) -> c_int;
    pub fn lcm_dist_broadcast(group: *mut c_void, t: *mut C_tensor, root: c_int) -> c_int;
    pub fn lcm_dist_all_gather(
        group: *mut c_void,
        out: *mut C_tensor,
        input: *mut C_tensor,
    ) -> c_int;
    pub fn lcm_dist_barrier(group: *mut c_void) -> c_int;
    pub fn lcm_dist_store_set(
        group: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: i64,
    ) -> c_int;
    pub fn lcm_dist_store_get(
        group: *mut c_void,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut i64,
    ) -> c_int;
    pub fn lcm_dist_free_bytes(data: *mut u8);
    pub fn lcm_dist_reducer_new(
        group: *mut c_void,
        params: *const *mut C_tensor,
        n: c_int,
        bucket_bytes: i64,
        first_bucket_bytes: i64,
        find_unused: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn lcm_dist_reducer_buckets(
        reducer: *mut c_void,
        sizes: *mut i64,
        cap: c_int,
        count: *mut c_int,
    ) -> c_int;
    pub fn lcm_dist_reducer_prepare(reducer: *mut c_void, loss: *mut C_tensor) -> c_int;
    pub fn lcm_dist_reducer_free(reducer: *mut c_void);
}
