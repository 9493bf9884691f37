//! A cross-process store lock (flock): writers share it, gc takes it exclusively.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Result, SpaceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// The lock file. Each acquisition opens its own descriptor, because flock locks belong to the
/// open file description: threads of one process then get independent shared locks.
pub struct StoreLock {
    path: std::path::PathBuf,
}

pub struct LockGuard<'a> {
    file: File,
    _store: std::marker::PhantomData<&'a ()>,
}

impl StoreLock {
    pub fn open(path: &Path) -> Result<StoreLock> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| SpaceError::io(format!("lock file {}", path.display()), e))?;
        Ok(StoreLock {
            path: path.to_path_buf(),
        })
    }

    /// Blocks until the lock is granted.
    pub fn acquire(&self, mode: LockMode) -> Result<LockGuard<'_>> {
        let file = File::open(&self.path).map_err(|e| SpaceError::io("opening store lock", e))?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        loop {
            // SAFETY: flock on a descriptor we own.
            let r = unsafe { libc::flock(file.as_raw_fd(), op) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(SpaceError::io("locking store", e));
            }
        }
        Ok(LockGuard {
            file,
            _store: std::marker::PhantomData,
        })
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock; unlock explicitly for clarity.
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
