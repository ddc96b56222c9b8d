//! Data parallelism on libtorch's distributed engine (c10d), as PyTorch DDP runs it: the
//! launch environment torchrun and Slurm set ([`Launch`]), a process group over a TCPStore
//! rendezvous with the Gloo (CPU) or NCCL (CUDA) backend ([`Group`]), and DDP's gradient
//! Reducer ([`Reducer`]). The C++ side is `cpp/dist.cpp`; nothing here implements a
//! collective.

mod ffi;
pub mod launch;
pub mod launcher;

use std::ffi::{c_void, CStr, CString};
use std::os::raw::c_int;
use std::time::Duration;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Error, Result};

pub use launch::Launch;

/// The message of the bridge's last failure on this thread.
fn last_error() -> String {
    unsafe { CStr::from_ptr(ffi::lcm_dist_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn check(status: c_int, rank: u64) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(Error::Dist {
            rank,
            msg: last_error(),
        })
    }
}

/// Whether this build has the Gloo backend (CPU) and the NCCL backend (CUDA).
pub fn backends() -> (bool, bool) {
    unsafe { (ffi::lcm_dist_has_gloo() != 0, ffi::lcm_dist_has_nccl() != 0) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    /// NCCL for CUDA tensors, Gloo for CPU ones (what `torch.distributed` picks by default).
    pub fn for_device(device: tch::Device) -> Backend {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum ReduceOp {
    Sum = 0,
    Max = 1,
}

/// A c10d process group joined by every rank of a launch.
pub struct Group {
    ptr: *mut c_void,
    rank: u64,
    world: u64,
    backend: Backend,
}

// c10d's ProcessGroup is used from several threads by PyTorch itself; lcm calls it from one.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

fn tensor_ptr(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

impl Group {
    /// Joins the group of `launch` (rank 0 serves the rendezvous at MASTER_ADDR:MASTER_PORT;
    /// every rank waits for all of them). `timeout` bounds the rendezvous and every
    /// collective: a rank that dies or stops answering makes the others fail within it,
    /// never hang. `device` is the CUDA device an NCCL group binds to.
    pub fn join(
        launch: &Launch,
        backend: Backend,
        device: tch::Device,
        timeout: Duration,
    ) -> Result<Group> {
        let host = CString::new(launch.master_addr.as_str())
            .map_err(|_| Error::Invalid("MASTER_ADDR holds a NUL byte".into()))?;
        let device_index = match device {
            tch::Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        let mut ptr = std::ptr::null_mut();
        let status = unsafe {
            ffi::lcm_dist_init(
                match backend {
                    Backend::Gloo => 0,
                    Backend::Nccl => 1,
                },
                host.as_ptr(),
                launch.master_port as c_int,
                launch.rank as c_int,
                launch.world as c_int,
                timeout.as_millis() as i64,
                device_index,
                &mut ptr,
            )
        };
        check(status, launch.rank)?;
        Ok(Group {
            ptr,
            rank: launch.rank,
            world: launch.world,
            backend,
        })
    }

    pub fn rank(&self) -> u64 {
        self.rank
    }

    pub fn world(&self) -> u64 {
        self.world
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Reduces each tensor in place across ranks (one collective each), waiting for it.
    pub fn all_reduce(&self, tensors: &[&Tensor], op: ReduceOp) -> Result<()> {
        let ptrs: Vec<*mut C_tensor> = tensors.iter().map(|t| tensor_ptr(t)).collect();
        let status = unsafe {
            ffi::lcm_dist_all_reduce(self.ptr, ptrs.as_ptr(), ptrs.len() as c_int, op as c_int)
        };
        check(status, self.rank)
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: u64) -> Result<()> {
        check(
            unsafe { ffi::lcm_dist_broadcast(self.ptr, tensor_ptr(t), root as c_int) },
            self.rank,
        )
    }

    /// Every rank's `input` (equal sizes) end to end in rank order into `out`
    /// (`world` times `input`'s elements, contiguous).
    pub fn all_gather(&self, out: &Tensor, input: &Tensor) -> Result<()> {
        check(
            unsafe { ffi::lcm_dist_all_gather(self.ptr, tensor_ptr(out), tensor_ptr(input)) },
            self.rank,
        )
    }

    pub fn barrier(&self) -> Result<()> {
        check(unsafe { ffi::lcm_dist_barrier(self.ptr) }, self.rank)
    }

    /// Publishes `bytes` under `key` in the rendezvous store.
    pub fn store_set(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let key = CString::new(key).expect("store keys hold no NUL");
        let status = unsafe {
            ffi::lcm_dist_store_set(self.ptr, key.as_ptr(), bytes.as_ptr(), bytes.len() as i64)
        };
        check(status, self.rank)
    }

    /// The bytes some rank published under `key`, waiting for them up to the timeout.
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        let key = CString::new(key).expect("store keys hold no NUL");
        let mut data = std::ptr::null_mut();
        let mut len = 0i64;
        check(
            unsafe { ffi::lcm_dist_store_get(self.ptr, key.as_ptr(), &mut data, &mut len) },
            self.rank,
        )?;
        let bytes = unsafe { std::slice::from_raw_parts(data, len as usize) }.to_vec();
        unsafe { ffi::lcm_dist_free_bytes(data) };
        Ok(bytes)
    }

    /// Every rank's `value` at rank 0, in rank order (None on the other ranks), through the
    /// rendezvous store under `key`: for small results such as evaluation scores, not for
    /// tensors. Rank 0 waits for each rank up to the group's timeout.
    pub fn gather_to_root<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &str,
        value: T,
    ) -> Result<Option<Vec<T>>> {
        let bad = |e: serde_json::Error| Error::Invalid(format!("gathering {key}: {e}"));
        if self.rank != 0 {
            let bytes = serde_json::to_vec(&value).map_err(bad)?;
            self.store_set(&format!("{key}/{}", self.rank), &bytes)?;
            return Ok(None);
        }
        let mut all = vec![value];
        for r in 1..self.world {
            let bytes = self.store_get(&format!("{key}/{r}"))?;
            all.push(serde_json::from_slice(&bytes).map_err(bad)?);
        }
        Ok(Some(all))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { ffi::lcm_dist_free(self.ptr) }
    }
}

/// DDP's gradient Reducer over a model's parameters: once armed for a backward
/// ([`Reducer::prepare`]), it averages each bucket's gradients across ranks as soon as the
/// bucket's last gradient is ready, overlapping the all-reduce with the rest of the
/// backward, and has every `.grad` averaged when the backward returns. Backwards it is not
/// armed for (accumulation micro-steps) only accumulate, with no communication.
pub struct Reducer {
    ptr: *mut c_void,
    rank: u64,
}

unsafe impl Send for Reducer {}

/// DDP's default bucket sizes: 1 MiB for the first bucket, 25 MiB for the rest.
pub const FIRST_BUCKET_BYTES: i64 = 1 << 20;
pub const BUCKET_BYTES: i64 = 25 << 20;

impl Reducer {
    /// `params` are the model's trainable leaf tensors, in the same order on every rank.
    pub fn new(group: &Group, params: &[Tensor], bucket_bytes: i64) -> Result<Reducer> {
        let ptrs: Vec<*mut C_tensor> = params.iter().map(tensor_ptr).collect();
        let mut ptr = std::ptr::null_mut();
        let status = unsafe {
            ffi::lcm_dist_reducer_new(
                group.ptr,
                ptrs.as_ptr(),
                ptrs.len() as c_int,
                bucket_bytes,
                FIRST_BUCKET_BYTES.min(bucket_bytes),
                1,
                &mut ptr,
            )
        };
        check(status, group.rank)?;
        Ok(Reducer {
            ptr,
            rank: group.rank,
        })
    }

    /// Arms the Reducer for the backward of `loss`.
    pub fn prepare(&self, loss: &Tensor) -> Result<()> {
        check(
            unsafe { ffi::lcm_dist_reducer_prepare(self.ptr, tensor_ptr(loss)) },
            self.rank,
        )
    }

    /// The size in bytes of each gradient bucket.
    pub fn bucket_bytes(&self) -> Result<Vec<i64>> {
        let mut sizes = vec![0i64; 4096];
        let mut count = 0;
        check(
            unsafe {
                ffi::lcm_dist_reducer_buckets(
                    self.ptr,
                    sizes.as_mut_ptr(),
                    sizes.len() as c_int,
                    &mut count,
                )
            },
            self.rank,
        )?;
        sizes.truncate((count as usize).min(sizes.len()));
        Ok(sizes)
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        unsafe { ffi::lcm_dist_reducer_free(self.ptr) }
    }
}
