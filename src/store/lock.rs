//! A cross-process store lock (flock): writers share it, gc takes it exclusively.
//!
//! flock(2) grants shared locks while an exclusive request waits, so on a busy mount (whose
//! commits overlap, keeping its shared lock held) gc could wait until the writing stops. A
//! second file, the gate, gives gc a turn: gc holds the gate exclusively while it tries for
//! the lock, and every shared acquisition first passes the gate (waits while gc holds it),
//! so the writes in flight finish, the lock falls free and gc takes it. gc holds the gate
//! for at most [`GATE_WINDOW`], then waits for the lock without it: a write that holds the
//! lock for long (a large file open on a mount), or a writer that needs the lock again to
//! finish, delays new writes by at most that window, never for good.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Result, SpaceError};
use crate::util::lock;

/// How long gc holds the gate while it tries for the lock.
pub const GATE_WINDOW: Duration = Duration::from_secs(1);
/// How often gc tries for the lock inside the window.
const GATE_POLL: Duration = Duration::from_millis(2);

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
    path: PathBuf,
    /// The gate file (the lock's path with `.gate` appended).
    gate_path: PathBuf,
    /// Shared holders in this process, and the descriptor their lock is on.
    shared: Mutex<(usize, Option<File>)>,
    /// This process's descriptor of the gate, for passing it.
    gate: File,
}

pub enum LockGuard<'a> {
    Shared(&'a StoreLock),
    Exclusive(File),
}

fn flock(file: &File, op: libc::c_int) -> Result<()> {
    try_flock(file, op).and_then(|granted| {
        granted
            .then_some(())
            .ok_or_else(|| SpaceError::io("locking store", std::io::ErrorKind::WouldBlock.into()))
    })
}

/// flock, retried on EINTR; `Ok(false)` when `op` has LOCK_NB and the lock is taken.
fn try_flock(file: &File, op: libc::c_int) -> Result<bool> {
    loop {
        // SAFETY: flock on a descriptor the caller owns.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock if op & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(SpaceError::io("locking store", e)),
        }
    }
}

/// Opens `path`, creating it if missing.
fn create(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| SpaceError::io(format!("lock file {}", path.display()), e))
}

impl StoreLock {
    pub fn open(path: &Path) -> Result<StoreLock> {
        let mut gate_path = path.as_os_str().to_owned();
        gate_path.push(".gate");
        let gate_path = PathBuf::from(gate_path);
        create(path)?;
        let gate = create(&gate_path)?;
        Ok(StoreLock {
            path: path.to_path_buf(),
            gate_path,
            shared: Mutex::new((0, None)),
            gate,
        })
    }

    fn open_file(&self) -> Result<File> {
        File::open(&self.path).map_err(|e| SpaceError::io("opening store lock", e))
    }

    /// Waits while a gc holds the gate (at most [`GATE_WINDOW`]).
    fn pass_gate(&self) -> Result<()> {
        flock(&self.gate, libc::LOCK_SH)?;
        // Other threads may be passing on the same descriptor: unlocking theirs too is fine,
        // nobody holds the gate shared for longer than this.
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.gate.as_raw_fd(), libc::LOCK_UN) };
        Ok(())
    }

    /// A shared lock on a descriptor of its own, held until the file is closed (for holds
    /// that outlive any one call, such as a large file open on a mount).
    pub fn hold_shared(&self) -> Result<File> {
        self.pass_gate()?;
        let file = self.open_file()?;
        flock(&file, libc::LOCK_SH)?;
        Ok(file)
    }

    /// Blocks until the lock is granted.
    pub fn acquire(&self, mode: LockMode) -> Result<LockGuard<'_>> {
        match mode {
            LockMode::Exclusive => {
                let file = self.open_file()?;
                let gate = File::open(&self.gate_path)
                    .map_err(|e| SpaceError::io("opening store lock", e))?;
                // One gc at a time holds the gate; the next waits here.
                flock(&gate, libc::LOCK_EX)?;
                let deadline = Instant::now() + GATE_WINDOW;
                let mut granted = try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)?;
                while !granted && Instant::now() < deadline {
                    std::thread::sleep(GATE_POLL);
                    granted = try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)?;
                }
                drop(gate); // closing it opens the gate
                if !granted {
                    flock(&file, libc::LOCK_EX)?;
                }
                Ok(LockGuard::Exclusive(file))
            }
            LockMode::Shared => {
                self.pass_gate()?;
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

    /// Two holders in one "process" (StoreLock) whose holds overlap, so its shared lock is
    /// never released while they run; until `stop`.
    fn busy_writers(
        lock: std::sync::Arc<StoreLock>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Vec<std::thread::JoinHandle<Duration>> {
        use std::sync::atomic::Ordering;
        (0..2u64)
            .map(|i| {
                let (lock, stop) = (lock.clone(), stop.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(15 * i));
                    let mut longest_wait = Duration::ZERO;
                    while !stop.load(Ordering::SeqCst) {
                        let t = Instant::now();
                        let g = lock.acquire(LockMode::Shared).unwrap();
                        longest_wait = longest_wait.max(t.elapsed());
                        std::thread::sleep(Duration::from_millis(30));
                        drop(g);
                    }
                    longest_wait
                })
            })
            .collect()
    }

    #[test]
    fn gc_gets_its_turn_while_a_writer_keeps_the_lock_held() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        // Two StoreLocks: two processes, as far as flock is concerned.
        let writer = Arc::new(StoreLock::open(&path).unwrap());
        let gc = StoreLock::open(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = busy_writers(writer.clone(), stop.clone());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!exclusive_free(&path), "the writers hold the lock");
        // Without the gate the writers' holds overlap for good; a deadline ends them anyway.
        let deadline = std::thread::spawn({
            let stop = stop.clone();
            move || {
                std::thread::sleep(Duration::from_secs(20));
                stop.store(true, Ordering::SeqCst)
            }
        });
        let g = gc.acquire(LockMode::Exclusive).unwrap();
        let writers_still_running = !stop.swap(true, Ordering::SeqCst);
        drop(g);
        let waits: Vec<Duration> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            writers_still_running,
            "gc got the lock only once the writers stopped"
        );
        // A writer waited for the gc's turn, never much longer than the gate's window.
        for w in waits {
            assert!(w < GATE_WINDOW + Duration::from_secs(2), "{w:?}");
        }
        drop(deadline);
    }

    #[test]
    fn a_writer_that_needs_the_lock_again_to_finish_is_only_delayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let writer = StoreLock::open(&path).unwrap();
        let outer = writer.hold_shared().unwrap();
        let gc = std::thread::spawn(move || {
            let gc = StoreLock::open(&path).unwrap();
            drop(gc.acquire(LockMode::Exclusive).unwrap());
        });
        std::thread::sleep(Duration::from_millis(200));
        // gc holds the gate now; this acquisition waits for the window to end, then goes on.
        let t = Instant::now();
        let inner = writer.acquire(LockMode::Shared).unwrap();
        assert!(t.elapsed() < GATE_WINDOW + Duration::from_secs(2));
        drop(inner);
        drop(outer);
        gc.join().unwrap();
    }
}
