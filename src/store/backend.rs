//! Where chunk objects live. A trait so that an S3-compatible object store can be added beside
//! the local directory without touching the pipeline; decorators (see `faulty.rs`) wrap it.

use crate::store::ChunkId;

/// Content-addressed object storage for sealed chunks.
///
/// Durability contract: after `sync` returns, every object of an earlier `put` — bytes and
/// name — is on stable storage. The metadata commit that references an object happens only
/// after that, so a crash never leaves a committed reference to a missing or partial object.
pub trait ChunkBackend: Send + Sync {
    /// Stores an object under `id`, replacing any leftover (uncommitted) object with that name.
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> std::io::Result<()>;
    /// Reads a whole object.
    fn get(&self, id: &ChunkId) -> std::io::Result<Vec<u8>>;
    fn delete(&self, id: &ChunkId) -> std::io::Result<()>;
    fn exists(&self, id: &ChunkId) -> std::io::Result<bool>;
    /// Every object id present (for gc and fsck).
    fn list(&self) -> std::io::Result<Vec<ChunkId>>;
    /// Makes earlier puts' names durable.
    fn sync(&self) -> std::io::Result<()>;
    /// Removes leftovers of interrupted puts (temporary files).
    fn clean_temporaries(&self) -> std::io::Result<usize>;
    /// Bytes free for new objects, for `df` (None if unknown).
    fn free_space(&self) -> Option<(u64, u64)> {
        None
    }
}
