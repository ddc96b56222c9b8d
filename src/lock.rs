//! Exclusive locks on the places lcm writes to (a run folder, a corpus prefix), so that two
//! processes never write one output at once. The lock is an OS file lock (`flock`) on a
//! small file beside the output: it is released when the process exits, however it exits,
//! so a crashed run never leaves a stale lock behind. The file holds the holder's pid, for
//! the message the second process prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held while the output is being written; dropping it releases the lock.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Locks `path` (created if missing, its parent folder too), or fails at once, naming
    /// `what` is locked and the pid that holds it.
    pub fn acquire(path: &Path, what: &str) -> Result<OutputLock> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(Error::Invalid(format!(
                    "{what} is in use by {by} (lock {}); wait for it to finish or stop it first",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
        let mut record = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())
        };
        record().map_err(|e| Error::io(path, e))?;
        Ok(OutputLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_path_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/.lock");
        let first = OutputLock::acquire(&p, "run folder run").unwrap();
        let err = OutputLock::acquire(&p, "run folder run").unwrap_err().to_string();
        assert!(err.contains("in use by process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        OutputLock::acquire(&p, "run folder run").unwrap();
    }
}
