//! The bridge to our CUDA kernels (compiled by build.rs from `cuda/` when nvcc is present).
//!
//! Each op family has a C++ autograd Function in `cuda/<op>.cpp` exposed through the C ABI
//! of `cuda/bridge.h`; [`ffi`] declares it and the functions here wrap each call so that
//! Rust owns the returned tensors and C++ failures become [`Error::Cuda`](crate::Error).

#[cfg(lcm_cuda)]
pub mod ffi;

/// Whether this build contains our CUDA kernels.
pub const KERNELS_BUILT: bool = cfg!(lcm_cuda);

/// Names of the kernel families compiled in (one per op: `cuda/<op>.cu`, or its
/// `<op>_fwd.cu` and `<op>_bwd.cu`), empty without nvcc.
pub fn compiled_kernels() -> Vec<&'static str> {
    let mut ops: Vec<&'static str> = env!("LCM_CUDA_KERNELS")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_suffix("_fwd")
                .or_else(|| s.strip_suffix("_bwd"))
                .unwrap_or(s)
        })
        .collect();
    ops.dedup();
    ops
}

/// CUDA runtime version as "major.minor", when the kernels were built and a runtime loads.
pub fn runtime_version() -> Option<String> {
    #[cfg(lcm_cuda)]
    {
        let v = unsafe { ffi::lcm_cuda_runtime_version() };
        if v > 0 {
            return Some(format!("{}.{}", v / 1000, (v % 1000) / 10));
        }
    }
    None
}

/// A one-line description of CUDA device `index` (name, compute capability, SMs, memory).
pub fn describe_device(index: usize) -> Option<String> {
    #[cfg(lcm_cuda)]
    {
        let mut buf = vec![0u8; 256];
        let rc = unsafe {
            ffi::lcm_cuda_device_describe(index as i32, buf.as_mut_ptr().cast(), buf.len() as i32)
        };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
    }
    let _ = index;
    None
}

/// Peak bytes allocated on CUDA device `index` by libtorch's caching allocator (the
/// figure `torch.cuda.max_memory_allocated` reports), when the kernels were built.
pub fn peak_allocated(index: usize) -> Option<u64> {
    #[cfg(lcm_cuda)]
    {
        let v = unsafe { ffi::lcm_cuda_peak_allocated(index as i32) };
        if v >= 0 {
            return Some(v as u64);
        }
    }
    let _ = index;
    None
}

/// Free and total bytes of CUDA device `index` as the driver reports them, when the kernels
/// were built (the memory planner of `lcm eval` reads this).
pub fn mem_info(index: usize) -> Option<(u64, u64)> {
    #[cfg(lcm_cuda)]
    {
        let (mut free, mut total) = (0i64, 0i64);
        let rc = unsafe { ffi::lcm_cuda_mem_info(index as i32, &mut free, &mut total) };
        if rc == 0 {
            return Some((free as u64, total as u64));
        }
    }
    let _ = index;
    None
}

/// Starts a new peak for [`peak_allocated`] on CUDA device `index` (no-op without kernels).
pub fn reset_peak(index: usize) {
    #[cfg(lcm_cuda)]
    unsafe {
        ffi::lcm_cuda_reset_peak(index as i32);
    }
    let _ = index;
}

/// Returns the caching allocator's unused device memory to the driver (no-op without
/// kernels): `lcm bench kernels` calls it between entries, so that the next entry starts
/// with the memory an earlier one cached (the GCA entries' ~10 GB) free. It does not make
/// an entry's timings those of a process of its own (docs/benchmarks.md).
pub fn empty_cache() {
    #[cfg(lcm_cuda)]
    unsafe {
        ffi::lcm_cuda_empty_cache();
    }
}

/// A page-locked (pinned) copy of host tensor `t`, for asynchronous copies to a GPU.
pub fn pin_memory(t: &tch::Tensor) -> tch::Tensor {
    #[cfg(lcm_cuda)]
    {
        let pinned = unsafe { ffi::call::<1>(|out| ffi::lcm_pin_memory(t.as_ptr(), &mut out[0])) };
        if let Ok([p]) = pinned {
            return p;
        }
    }
    t.pin_memory(tch::Device::Cuda(0))
}

/// An uninitialised pinned host tensor of `shape` and `kind`, allocated page-locked.
pub fn pinned_empty(shape: &[i64], kind: tch::Kind) -> tch::Tensor {
    #[cfg(lcm_cuda)]
    {
        let like = tch::Tensor::empty([0], (kind, tch::Device::Cpu));
        let t = unsafe {
            ffi::call::<1>(|out| {
                ffi::lcm_pinned_empty(
                    like.as_ptr(),
                    shape.as_ptr(),
                    shape.len() as i32,
                    &mut out[0],
                )
            })
        };
        if let Ok([t]) = t {
            return t;
        }
    }
    pin_memory(&tch::Tensor::empty(shape, (kind, tch::Device::Cpu)))
}
