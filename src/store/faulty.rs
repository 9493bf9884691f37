//! A failure-injecting decorator over any chunk backend, so "disk full", "torn write" and
//! "tampered chunk" are tested on purpose rather than hoped for.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ChunkId;
use super::backend::{ChunkBackend, ObjectBytes, PackLoc};

pub struct FaultyBackend {
    inner: Arc<dyn ChunkBackend>,
    /// Puts fail with ENOSPC once this many bytes have been written (u64::MAX = never).
    pub space_left: AtomicU64,
    /// Every get flips bit 0 of byte `flip_at` when set (u64::MAX = never).
    pub flip_at: AtomicU64,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn ChunkBackend>) -> FaultyBackend {
        FaultyBackend {
            inner,
            space_left: AtomicU64::new(u64::MAX),
            flip_at: AtomicU64::new(u64::MAX),
        }
    }
}

impl ChunkBackend for FaultyBackend {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<Option<PackLoc>> {
        let n = bytes.len() as u64;
        let ok = self
            .space_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                if left == u64::MAX {
                    Some(left)
                } else {
                    left.checked_sub(n)
                }
            })
            .is_ok();
        if !ok {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.put(id, bytes)
    }

    fn get(&self, id: &ChunkId, loc: Option<PackLoc>, len: u32) -> io::Result<ObjectBytes> {
        let mut b = self.inner.get(id, loc, len)?;
        let at = self.flip_at.load(Ordering::SeqCst);
        if at != u64::MAX && (at as usize) < b.len() {
            b[at as usize] ^= 1;
        }
        Ok(b)
    }

    fn delete(&self, id: &ChunkId) -> io::Result<()> {
        self.inner.delete(id)
    }
    fn list(&self) -> io::Result<Vec<ChunkId>> {
        self.inner.list()
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn clean_temporaries(&self) -> io::Result<usize> {
        self.inner.clean_temporaries()
    }
    fn free_space(&self) -> Option<(u64, u64)> {
        self.inner.free_space()
    }
    fn packs(&self) -> io::Result<Vec<(u64, u64)>> {
        self.inner.packs()
    }
    fn delete_pack(&self, pack: u64) -> io::Result<bool> {
        self.inner.delete_pack(pack)
    }
    fn pack_in_use(&self, pack: u64) -> bool {
        self.inner.pack_in_use(pack)
    }
}
