//! A cross-process store lock (flock): writers share it, gc takes it exclusively.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Result, SpaceError};
use crate::util::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// The lock file. flock locks belong to the open file description, so an exclusive
/// acquisition opens its own descriptor, and the threads of this process share one shared
/// lock: the first holder takes it on a descriptor kept open, the last releases it (a mount
/// committing small files would otherwise open and close the file for every commit).
pub struct StoreLock {
    path: std::path::PathBuf,
    /// Shared holders in this process, and the descriptor their lock is on.
    shared: Mutex<(usize, Option<File>)>,
}

pub enum LockGuard<'a> {
    Shared(&'a StoreLock),
    Exclusive(File),
}

fn flock(file: &File, op: libc::c_int) -> Result<()> {
    loop {
        // SAFETY: flock on a descriptor the caller owns.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(SpaceError::io("locking store", e));
        }
    }
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
            shared: Mutex::new((0, None)),
        })
    }

    fn open_file(&self) -> Result<File> {
        File::open(&self.path).map_err(|e| SpaceError::io("opening store lock", e))
    }

    /// Blocks until the lock is granted.
    pub fn acquire(&self, mode: LockMode) -> Result<LockGuard<'_>> {
        match mode {
            LockMode::Exclusive => {
                let file = self.open_file()?;
                flock(&file, libc::LOCK_EX)?;
                Ok(LockGuard::Exclusive(file))
            }
            LockMode::Shared => {
                // Held while the first holder waits for gc to finish: the others wait too.
                let mut shared = lock(&self.shared);
                if shared.0 == 0 {
                    if shared.1.is_none() {
                        shared.1 = Some(self.open_file()?);
                    }
                    flock(shared.1.as_ref().expect("opened above"), libc::LOCK_SH)?;
                }
                shared.0 += 1;
                Ok(LockGuard::Shared(self))
            }
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY (both arms): flock on a descriptor we own.
        match self {
            // Closing the descriptor releases the lock; unlock explicitly for clarity.
            LockGuard::Exclusive(file) => unsafe {
                libc::flock(file.as_raw_fd(), libc::LOCK_UN);
            },
            LockGuard::Shared(store_lock) => {
                let mut shared = lock(&store_lock.shared);
                shared.0 -= 1;
                if shared.0 == 0 {
                    if let Some(file) = &shared.1 {
                        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another process's view of the lock: whether an exclusive lock is free right now.
    fn exclusive_free(path: &Path) -> bool {
        let f = File::open(path).unwrap();
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    #[test]
    fn shared_holders_share_one_lock_released_by_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let lock = StoreLock::open(&path).unwrap();
        let a = lock.acquire(LockMode::Shared).unwrap();
        let b = lock.acquire(LockMode::Shared).unwrap();
        assert!(!exclusive_free(&path));
        drop(a);
        assert!(!exclusive_free(&path), "still held by the second holder");
        drop(b);
        assert!(exclusive_free(&path), "released by the last");
        let c = lock.acquire(LockMode::Shared).unwrap();
        assert!(!exclusive_free(&path), "taken again on the kept descriptor");
        drop(c);
        let x = lock.acquire(LockMode::Exclusive).unwrap();
        assert!(!exclusive_free(&path));
        drop(x);
        assert!(exclusive_free(&path));
    }
}
