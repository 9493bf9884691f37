//! The local-directory chunk backend: `objects/<2 hex>/<64 hex>`, written via a temporary file
//! and a rename. Durability is batched: `sync()` calls syncfs(2) once for the whole filesystem,
//! which persists every object written since (data and directory entries) — measured here at
//! about twice the throughput of an fdatasync per object — before any metadata references them.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ChunkId;
use super::backend::ChunkBackend;

pub struct LocalBackend {
    root: PathBuf,
    tmp: PathBuf,
    /// Fan-out directories that gained entries since the last `sync`.
    dirty_dirs: Mutex<HashSet<u8>>,
    /// Held across a whole `sync`: a concurrent caller that finds nothing left to sync must
    /// still wait until the syncfs covering its objects has finished.
    sync_lock: Mutex<()>,
    seq: AtomicU64,
}

impl LocalBackend {
    /// Opens (creating if needed) an object tree at `root`.
    pub fn open(root: &Path) -> io::Result<LocalBackend> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        Ok(LocalBackend {
            root: root.to_path_buf(),
            tmp,
            dirty_dirs: Mutex::new(HashSet::new()),
            sync_lock: Mutex::new(()),
            seq: AtomicU64::new(0),
        })
    }

    fn dir_of(&self, id: &ChunkId) -> PathBuf {
        self.root.join(format!("{:02x}", id.0[0]))
    }

    /// Path of an object (exposed for tests that tamper with stored bytes).
    pub fn object_path(&self, id: &ChunkId) -> PathBuf {
        self.dir_of(id).join(id.to_hex())
    }
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

impl ChunkBackend for LocalBackend {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        let dir = self.dir_of(id);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{}", id.to_hex(), std::process::id(), n));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            drop(f);
            match fs::rename(&tmp, dir.join(id.to_hex())) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                    fsync_dir(&self.root)?;
                    fs::rename(&tmp, dir.join(id.to_hex()))
                }
                other => other,
            }
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        self.dirty_dirs.lock().unwrap().insert(id.0[0]);
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> io::Result<Vec<u8>> {
        fs::read(self.object_path(id))
    }

    fn delete(&self, id: &ChunkId) -> io::Result<()> {
        match fs::remove_file(self.object_path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn exists(&self, id: &ChunkId) -> io::Result<bool> {
        Ok(self.object_path(id).exists())
    }

    fn list(&self) -> io::Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        for d in fs::read_dir(&self.root)? {
            let d = d?;
            let name = d.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !d.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(d.path())? {
                let f = f?;
                if let Some(id) = ChunkId::from_hex(&f.file_name().to_string_lossy()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    fn sync(&self) -> io::Result<()> {
        let _one_at_a_time = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = std::mem::take(&mut *self.dirty_dirs.lock().unwrap());
        if dirty.is_empty() {
            return Ok(());
        }
        let root = File::open(&self.root)?;
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) } != 0 {
            let e = io::Error::last_os_error();
            // Put the marks back so a retry syncs again.
            self.dirty_dirs.lock().unwrap().extend(dirty);
            return Err(e);
        }
        Ok(())
    }

    fn clean_temporaries(&self) -> io::Result<usize> {
        let mut n = 0;
        for f in fs::read_dir(&self.tmp)? {
            fs::remove_file(f?.path())?;
            n += 1;
        }
        Ok(n)
    }

    fn free_space(&self) -> Option<(u64, u64)> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).ok()?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid NUL-terminated path and s a properly sized out-parameter.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        let frsize = s.f_frsize as u64;
        Some((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
    }
}
