//! Which kernel runs an op: the path of the attention kernels, chosen by small pure
//! functions of the problem and the device (as FlashAttention's `hopper/heuristics.h`) and
//! passed to the kernels as an explicit argument, so that a test can run every path in one
//! process. The C++ side names the same values in `cuda/attn_path.h`; a path the problem
//! does not take (head dim 128, a layout TMA cannot describe) falls back there to the next
//! one down, as documented on each variant.

/// The path of the SWA and GCA kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum AttnPath {
    /// mma.sync m16n8k16 with ldmatrix and cp.async loads (sm_80 and later; the only path
    /// at head dim 128).
    Mma = 0,
    /// Hopper warpgroup MMAs (wgmma) fed by cp.async.
    Wgmma = 1,
    /// Warpgroup MMAs fed by TMA, Q in registers.
    Tma = 2,
    /// The same with the forward's Q tile in shared memory (and in SWA with ALiBi the bias's
    /// column term as an MMA step): the default on Hopper.
    TmaQs = 3,
}

impl AttnPath {
    pub const ALL: [AttnPath; 4] = [
        AttnPath::Mma,
        AttnPath::Wgmma,
        AttnPath::Tma,
        AttnPath::TmaQs,
    ];

    /// The paths a device of compute capability `cap` (10 * major + minor) runs: every one
    /// on Hopper (sm_90), mma.sync elsewhere.
    pub fn available(cap: i32) -> Vec<AttnPath> {
        if cap / 10 == 9 {
            Self::ALL.to_vec()
        } else {
            vec![AttnPath::Mma]
        }
    }

    /// The name `lcm bench kernels --path` takes.
    pub fn name(self) -> &'static str {
        match self {
            AttnPath::Mma => "mma",
            AttnPath::Wgmma => "wgmma",
            AttnPath::Tma => "tma",
            AttnPath::TmaQs => "tma-qs",
        }
    }

    pub fn parse(name: &str) -> Option<AttnPath> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The value `cuda/attn_path.h` gives the path (the kernels' `path` argument).
impl From<AttnPath> for i32 {
    fn from(path: AttnPath) -> i32 {
        path as i32
    }
}

/// The fastest SWA / GCA path for head dim `head_dim` on a device of capability `cap`: the
/// TMA kernels with Q in shared memory at head dim 64 on Hopper, mma.sync otherwise.
pub fn attn_path(cap: i32, head_dim: i64) -> AttnPath {
    if cap / 10 == 9 && head_dim == 64 {
        AttnPath::TmaQs
    } else {
        AttnPath::Mma
    }
}

/// The path of HSA's forward (its backward has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum HsaPath {
    /// CUDA cores, fp32, any supported shape (G up to 32).
    Simt = 0,
    /// Tensor cores, one warp per (token, kv head): G <= 16, chunks of at most 64 keys and a
    /// positive scale (elsewhere it falls back to `Simt`).
    Mma = 1,
}

impl HsaPath {
    pub const ALL: [HsaPath; 2] = [HsaPath::Simt, HsaPath::Mma];
}

/// The value the HSA kernels take as their `path` argument.
impl From<HsaPath> for i32 {
    fn from(path: HsaPath) -> i32 {
        path as i32
    }
}

/// The HSA forward's path for `group` query heads per kv head, chunks of `chunk` keys and
/// `scale`: the tensor cores where they take the shape.
pub fn hsa_path(group: i64, chunk: i64, scale: f64) -> HsaPath {
    if group <= 16 && chunk <= 64 && scale > 0.0 {
        HsaPath::Mma
    } else {
        HsaPath::Simt
    }
}

/// Compute capability (10 * major + minor) of `device`, 0 for the CPU or where it cannot be
/// read (a build without kernels).
pub fn capability(device: tch::Device) -> i32 {
    match device {
        #[cfg(lcm_cuda)]
        tch::Device::Cuda(i) => unsafe { crate::cuda::ffi::lcm_cuda_capability(i as i32) }.max(0),
        _ => 0,
    }
}

/// [`attn_path`] for a tensor on `device`.
pub fn attn_path_on(device: tch::Device, head_dim: i64) -> AttnPath {
    attn_path(capability(device), head_dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hopper_at_head_dim_64_takes_the_tma_kernels() {
        assert_eq!(attn_path(90, 64), AttnPath::TmaQs);
        assert_eq!(attn_path(90, 128), AttnPath::Mma);
        assert_eq!(attn_path(80, 64), AttnPath::Mma);
        assert_eq!(attn_path(100, 64), AttnPath::Mma);
        assert_eq!(attn_path(0, 64), AttnPath::Mma);
        assert_eq!(AttnPath::available(90).len(), 4);
        assert_eq!(AttnPath::available(86), vec![AttnPath::Mma]);
    }

    #[test]
    fn hsa_takes_the_tensor_cores_where_the_shape_allows() {
        assert_eq!(hsa_path(16, 64, 0.125), HsaPath::Mma);
        assert_eq!(hsa_path(17, 64, 0.125), HsaPath::Simt);
        assert_eq!(hsa_path(4, 65, 0.125), HsaPath::Simt);
        assert_eq!(hsa_path(4, 64, -1.0), HsaPath::Simt);
    }

    #[test]
    fn path_names_round_trip() {
        for p in AttnPath::ALL {
            assert_eq!(AttnPath::parse(p.name()), Some(p));
        }
        assert_eq!(AttnPath::parse("tensor"), None);
    }
}
