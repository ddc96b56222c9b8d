//! Small helpers shared across the library.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so that readers see either the old file or the whole new one, never a partial write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = (parent_dir(path), file_name(path)?);
    let tmp = atomic_tmp(dir, &name, std::process::id());
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// The folder `path` lies in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The file name of `path`; an error for a path without one (`/`, `..`).
fn file_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    Ok(name.to_string_lossy().into_owned())
}

/// The entries of `dir` that `keep` accepts, sorted by path; none where `dir` does not
/// exist.
pub fn list_dir(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut found = vec![];
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in entries {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if keep(&p) {
            found.push(p);
        }
    }
    found.sort();
    Ok(found)
}

/// Whether process `pid` is running on this machine (Linux: `/proc/PID` exists). A
/// temporary file named by the pid of a process that is gone is a stale one.
pub fn pid_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the entries of `dir` named `{prefix}{pid}{suffix}` whose process is no longer
/// running: the temporaries that a killed writer left behind. Those of a live process
/// (another lcm writing beside this one, or this process) are left alone. Best effort: a
/// folder that cannot be read or an entry that cannot be removed is skipped.
pub fn sweep_stale(dir: &Path, prefix: &str, suffix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// The temporary name [`write_atomic`] writes `path` under for process `pid`.
fn atomic_tmp(dir: &Path, name: &str, pid: u32) -> PathBuf {
    dir.join(format!(".{name}.tmp-{pid}"))
}

/// Removes what interrupted [`write_atomic`]s of `path` left behind (their processes are
/// gone): call it before writing `path` again.
pub fn sweep_atomic_temps(path: &Path) {
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        sweep_stale(parent_dir(path), &format!(".{name}.tmp-"), "");
    }
}

/// Writes a file through `write(tmp)` into a temporary name beside `out`, then renames it
/// to `out`; on any failure the temporary is removed, so nothing half-written stays.
/// `ext` is the temporary's extension (a PNG encoder picks its format by it).
pub fn write_via_temp<E: std::fmt::Display>(
    out: &Path,
    ext: &str,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> Result<()> {
    let (dir, name) = (parent_dir(out), file_name(out)?);
    let prefix = format!(".{name}.tmp-");
    let suffix = format!(".{ext}");
    sweep_stale(dir, &prefix, &suffix);
    if out.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a folder; name a file to write",
            out.display()
        )));
    }
    let tmp = dir.join(format!("{prefix}{}{suffix}", std::process::id()));
    let result = write(&tmp)
        .map_err(|e| Error::Invalid(format!("{}: {e}", out.display())))
        .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A libtorch error in words, for a message that names the file itself. tch shows the
/// safetensors library's errors as Rust `Debug` text after the file's path
/// (`IoError(Os { code: 28, kind: StorageFull, .. })`); these are worded here without the
/// path, the OS error as the OS says it.
pub fn tch_message(e: &tch::TchError) -> String {
    use safetensors::SafeTensorError as S;
    let tch::TchError::SafeTensorError { err, .. } = e else {
        return e.to_string();
    };
    let what = match err {
        S::IoError(io) => io.to_string(),
        S::JsonError(j) => format!("not a safetensors file (its header is no JSON: {j})"),
        S::InvalidHeader
        | S::InvalidHeaderStart
        | S::InvalidHeaderDeserialization
        | S::HeaderTooLarge
        | S::HeaderTooSmall
        | S::InvalidHeaderLength => "not a safetensors file (a bad header)".into(),
        S::TensorNotFound(name) => format!("no tensor `{name}`"),
        S::InvalidOffset(name) => {
            format!("tensor `{name}` lies outside the file (a truncated or corrupt file)")
        }
        S::TensorInvalidInfo
        | S::InvalidTensorView(..)
        | S::MetadataIncompleteBuffer
        | S::ValidationOverflow => "a truncated or corrupt safetensors file".into(),
    };
    what
}

/// A device as the command line names it: `cpu`, `cuda:0`.
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

/// SplitMix64: a tiny generator whose output is fixed by its definition, so sample `i` of
/// a run is the same tokens in every version of lcm (data order is part of exact resume).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator for item `index` of stream `seed`, independent of every other item.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut g = SplitMix64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let s = g.next_u64() ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        SplitMix64(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (n > 0), by rejection so that no value is favoured.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

static TORCH_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// libtorch's default generator is one per process: two seeded computations in one process
/// (a training run, a test that compares two forwards with the same Gumbel noise) interleave
/// their draws unless each holds this guard while it seeds and draws.
pub fn lock_torch_generator() -> std::sync::MutexGuard<'static, ()> {
    // A holder that panicked left it poisoned; the generator itself is still fine.
    TORCH_GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors write that fails reads as the OS's words, not Rust's `Debug` text.
    #[test]
    fn tch_errors_read_as_words() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no-such-folder/x.safetensors");
        let t = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
        let e = tch::Tensor::write_safetensors(&[("t", &t)], &p).unwrap_err();
        let debug_text = e.to_string();
        assert!(
            debug_text.contains("IoError(Os"),
            "tch's own text: {debug_text}"
        );
        let words = tch_message(&e);
        assert!(words.contains("No such file or directory"), "{words}");
        assert!(
            !words.contains("Os {") && !words.contains("IoError"),
            "{words}"
        );
    }
}
