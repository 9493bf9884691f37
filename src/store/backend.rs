//! Where chunk objects live. A trait so that an S3-compatible object store can be added beside
//! the local directory without touching the pipeline; decorators (see `faulty.rs`) wrap it.

use crate::store::ChunkId;

/// Where a packed object sits: pack file number and the byte offset of the object (after its
/// record header, docs/FORMAT.md 4.2). Its length is the chunk's `stored_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackLoc {
    pub pack: u64,
    pub offset: u64,
}

/// Content-addressed object storage for sealed chunks.
///
/// Objects are either *loose* (one object per name, found by id alone; store format 1 and
/// backends like S3) or *packed* (appended to pack files; `put` returns the location, which
/// the metadata keeps with the chunk).
///
/// Durability contract: after `sync` returns, every object of an earlier `put` — bytes and
/// name — is on stable storage. The metadata commit that references an object happens only
/// after that, so a crash never leaves a committed reference to a missing or partial object.
pub trait ChunkBackend: Send + Sync {
    /// Stores an object; returns its pack location, or None if it is addressed by id alone.
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> std::io::Result<Option<PackLoc>>;
    /// [`ChunkBackend::put`], asking that byte `align_at` of the object land on a 4 KiB
    /// boundary of its pack (segmented objects: their segments then occupy whole pages, so a
    /// small read of one reads whole pages only). Backends without packs ignore the hint.
    fn put_aligned(
        &self,
        id: &ChunkId,
        bytes: &[u8],
        align_at: usize,
    ) -> std::io::Result<Option<PackLoc>> {
        let _ = align_at;
        self.put(id, bytes)
    }
    /// Reads an object of `len` bytes: at `loc` if packed, else by id.
    fn get(&self, id: &ChunkId, loc: Option<PackLoc>, len: u32) -> std::io::Result<ObjectBytes>;
    /// [`ChunkBackend::get`] for a reader that goes through a capsule's objects in order (a
    /// sequential reader's read-ahead, a whole-capsule stream): the backend may read ahead of
    /// it. The default is `get`.
    fn get_sequential(
        &self,
        id: &ChunkId,
        loc: Option<PackLoc>,
        len: u32,
    ) -> std::io::Result<ObjectBytes> {
        self.get(id, loc, len)
    }
    /// Reads bytes `range` of an object of `len` bytes (for partial reads of segmented
    /// objects). The default reads the whole object.
    fn get_range(
        &self,
        id: &ChunkId,
        loc: Option<PackLoc>,
        len: u32,
        range: std::ops::Range<usize>,
    ) -> std::io::Result<ObjectBytes> {
        range_of(self.get(id, loc, len)?, range)
    }
    /// Deletes a loose object (packed objects are reclaimed by repacking).
    fn delete(&self, id: &ChunkId) -> std::io::Result<()>;
    /// Every loose object id present (for gc and fsck).
    fn list(&self) -> std::io::Result<Vec<ChunkId>>;
    /// Makes earlier puts durable.
    fn sync(&self) -> std::io::Result<()>;
    /// Removes leftovers of interrupted puts (temporary files).
    fn clean_temporaries(&self) -> std::io::Result<usize>;
    /// Bytes free for new objects, for `df` (None if unknown).
    fn free_space(&self) -> Option<(u64, u64)> {
        None
    }
    /// Every pack file and its size in bytes.
    fn packs(&self) -> std::io::Result<Vec<(u64, u64)>> {
        Ok(Vec::new())
    }
    /// Deletes a pack file unless some process still appends to it; returns whether it did.
    fn delete_pack(&self, pack: u64) -> std::io::Result<bool> {
        let _ = pack;
        Ok(false)
    }
    /// Whether some process (this one included) still appends to `pack`.
    fn pack_in_use(&self, pack: u64) -> bool {
        let _ = pack;
        true
    }
}

/// An object's bytes as read: they start `start` bytes into the buffer. A direct (O_DIRECT)
/// read lands at an aligned address before the object; keeping that prefix instead of moving
/// the object to the front lets the decoder move each segment's plaintext only once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectBytes {
    buf: Vec<u8>,
    start: usize,
}

impl ObjectBytes {
    /// The object is `buf[start..]`.
    pub fn new(buf: Vec<u8>, start: usize) -> ObjectBytes {
        assert!(start <= buf.len(), "object start past the buffer");
        ObjectBytes { buf, start }
    }

    /// The buffer and where the object starts in it.
    pub fn into_parts(self) -> (Vec<u8>, usize) {
        (self.buf, self.start)
    }

    /// The object alone (moves it to the front of its buffer if needed).
    pub fn into_vec(self) -> Vec<u8> {
        let (mut buf, start) = self.into_parts();
        buf.drain(..start);
        buf
    }
}

impl From<Vec<u8>> for ObjectBytes {
    fn from(buf: Vec<u8>) -> ObjectBytes {
        ObjectBytes { buf, start: 0 }
    }
}

impl std::ops::Deref for ObjectBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl std::ops::DerefMut for ObjectBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
}

/// Bytes `range` of a whole object (for backends that cannot read part of one), in the
/// object's own buffer.
pub(crate) fn range_of(
    whole: ObjectBytes,
    range: std::ops::Range<usize>,
) -> std::io::Result<ObjectBytes> {
    if range.start > range.end || range.end > whole.len() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let (mut buf, start) = whole.into_parts();
    buf.truncate(start + range.end);
    Ok(ObjectBytes::new(buf, start + range.start))
}
