//! The metadata engine interface: namespace (nodes and directory entries), capsule content (the
//! ordered chunk list), chunk reference counts and extended attributes.
//!
//! A trait so a server database can replace the embedded SQLite engine later. Every method is
//! one transaction: callers never see half of an operation.

use uuid::Uuid;

use super::ChunkId;
use crate::error::Result;

/// Inode number: stable for the life of a node; 1 is the root directory.
pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    /// Named pipe (FIFO).
    Fifo = 4,
    /// UNIX domain socket.
    Socket = 5,
    /// Character device node (`rdev` names the device).
    CharDevice = 6,
    /// Block device node (`rdev` names the device).
    BlockDevice = 7,
}

impl NodeKind {
    pub fn from_i64(v: i64) -> Option<NodeKind> {
        match v {
            1 => Some(NodeKind::File),
            2 => Some(NodeKind::Dir),
            3 => Some(NodeKind::Symlink),
            4 => Some(NodeKind::Fifo),
            5 => Some(NodeKind::Socket),
            6 => Some(NodeKind::CharDevice),
            7 => Some(NodeKind::BlockDevice),
            _ => None,
        }
    }

    /// FIFOs, sockets and device nodes: no content, no target; only a name, attributes and
    /// (devices) a device number.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDevice | NodeKind::BlockDevice
        )
    }
}

/// Time as nanoseconds since the Unix epoch.
pub type TimeNs = i64;

pub fn now_ns() -> TimeNs {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_nanos() as i64
}

/// A file (capsule), directory, symlink or special file (FIFO, socket, device node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub ino: Ino,
    pub uuid: Uuid,
    pub kind: NodeKind,
    /// Permission bits (and setuid/setgid/sticky), without the file-type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Logical size of the stored bytes (before on-read transforms).
    pub size: u64,
    pub atime: TimeNs,
    pub mtime: TimeNs,
    pub ctime: TimeNs,
    pub nlink: u32,
    /// Content version: bumped by every committed write.
    pub version: u64,
    /// Canonical policy YAML; for directories, what new children inherit.
    pub policy: Option<String>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Device number of a device node (Linux `dev_t`, glibc `makedev` encoding); 0 otherwise.
    pub rdev: u64,
}

/// What a new node starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub policy: Option<String>,
    pub target: Option<Vec<u8>>,
    /// Device number (device nodes only; 0 for everything else).
    pub rdev: u64,
}

/// One entry of a capsule's chunk list: bytes `[offset, offset+len)` come from `chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u32,
    pub chunk: ChunkId,
}

/// Where a chunk's object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    /// In a pack file (None: a loose object found by id, or an inline one).
    pub loc: Option<super::PackLoc>,
    /// Length of the object in bytes.
    pub stored_len: u32,
    /// The object itself, kept in the chunk's metadata row (format 3, small objects).
    pub inline: Option<Vec<u8>>,
    /// A copy of the object's first bytes (segmented objects, format 3).
    pub head: Option<Vec<u8>>,
}

/// A chunk referenced by new content, with its object's size (0 if it already existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentChunk {
    pub extent: Extent,
    pub stored_len: u32,
    /// Where the object was written by this write (None: reused, or a loose object).
    pub loc: Option<super::PackLoc>,
    /// The first bytes of a segmented object written by this write (kept with the chunk so a
    /// partial read needs no read of them).
    pub head: Option<ObjectHead>,
}

/// A copy of an object's first bytes (header, salt, nonce: at most 40), kept in its chunk's
/// metadata row (docs/FORMAT.md 5, `chunks.head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHead {
    len: u8,
    bytes: [u8; ObjectHead::MAX],
}

impl ObjectHead {
    pub const MAX: usize = 40;

    /// None if `b` is longer than [`ObjectHead::MAX`].
    pub fn new(b: &[u8]) -> Option<ObjectHead> {
        let mut bytes = [0u8; Self::MAX];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(ObjectHead {
            len: b.len() as u8,
            bytes,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A capsule's complete new content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub chunks: Vec<ContentChunk>,
    pub size: u64,
    /// What produced these bytes (an on-write chain's modules), recorded with the commit.
    pub provenance: Option<String>,
    /// Objects of new chunks kept in the metadata instead of the chunk backend (format 3):
    /// committed in the same transaction as the content, so they need no separate sync.
    pub inline_objects: Vec<(ChunkId, Vec<u8>)>,
}

/// Attribute changes (`None` = unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<TimeNs>,
    pub mtime: Option<TimeNs>,
}

/// A row of the chunk table.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRow {
    pub id: ChunkId,
    pub refcount: i64,
    pub plain_len: u64,
    pub stored_len: u64,
}

/// Aggregate figures for `spacectl stats` and `/.space/stats`.
#[derive(Debug, Clone, Default)]
pub struct MetaStats {
    pub files: u64,
    pub directories: u64,
    /// Sum of capsule sizes.
    pub logical_bytes: u64,
    /// Sum over all extents (what would be stored without dedup).
    pub referenced_bytes: u64,
    /// Plaintext bytes of distinct live chunks.
    pub unique_bytes: u64,
    /// Object bytes of distinct live chunks (after compression and encryption overhead).
    pub stored_bytes: u64,
    pub chunks: u64,
    /// Chunks with no references left (gc removes them).
    pub unreferenced_chunks: u64,
}

/// A metadata inconsistency found by `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaProblem {
    RefcountMismatch {
        chunk: ChunkId,
        recorded: i64,
        actual: i64,
    },
    MissingChunkRow {
        ino: Ino,
        offset: u64,
        chunk: ChunkId,
    },
    ExtentGap {
        ino: Ino,
        expected_offset: u64,
        found_offset: u64,
    },
    SizeMismatch {
        ino: Ino,
        size: u64,
        extents_end: u64,
    },
    DanglingEntry {
        parent: Ino,
        name: String,
    },
    LinkCountMismatch {
        ino: Ino,
        recorded: u32,
        actual: u32,
    },
    Unreachable {
        ino: Ino,
    },
}

impl std::fmt::Display for MetaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaProblem::RefcountMismatch {
                chunk,
                recorded,
                actual,
            } => {
                write!(
                    f,
                    "chunk {chunk}: refcount {recorded} recorded, {actual} references"
                )
            }
            MetaProblem::MissingChunkRow { ino, offset, chunk } => {
                write!(
                    f,
                    "inode {ino} offset {offset}: references unknown chunk {chunk}"
                )
            }
            MetaProblem::ExtentGap {
                ino,
                expected_offset,
                found_offset,
            } => write!(
                f,
                "inode {ino}: chunk list has a gap or overlap (expected offset {expected_offset}, found {found_offset})"
            ),
            MetaProblem::SizeMismatch {
                ino,
                size,
                extents_end,
            } => {
                write!(
                    f,
                    "inode {ino}: size {size} but chunks cover {extents_end} bytes"
                )
            }
            MetaProblem::DanglingEntry { parent, name } => {
                write!(
                    f,
                    "directory {parent}: entry `{name}` points to a missing node"
                )
            }
            MetaProblem::LinkCountMismatch {
                ino,
                recorded,
                actual,
            } => {
                write!(
                    f,
                    "inode {ino}: link count {recorded} recorded, {actual} entries"
                )
            }
            MetaProblem::Unreachable { ino } => {
                write!(f, "inode {ino}: no directory entry reaches it")
            }
        }
    }
}

/// The metadata engine.
/// Extents of derived entries live under pseudo-inodes with this bit set; store nodes never
/// get one (SQLite row ids stay below 2^63).
pub const DERIVED_INO_BIT: u64 = 1 << 63;

/// A materialized view: the cached output of an on-read chain (docs/FORMAT.md, "Derived
/// outputs"). Its bytes are stored like a capsule's: chunked, deduplicated, encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedEntry {
    /// Pseudo-inode holding the entry's extents (`DERIVED_INO_BIT | row id`).
    pub ino: Ino,
    /// What determines the bytes (source content, modules, args, ABI version).
    pub key: [u8; 32],
    pub size: u64,
    pub created: TimeNs,
    pub used: TimeNs,
    pub hits: u64,
    /// YAML: modules (sha256, signer), args digests, engine and ABI version.
    pub provenance: String,
}

/// Totals over all derived entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DerivedTotals {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
}

pub trait MetaStore: Send + Sync {
    fn get(&self, ino: Ino) -> Result<Option<Node>>;
    fn get_by_uuid(&self, uuid: Uuid) -> Result<Option<Node>>;
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Node>>;
    /// Directory entries in name order (`.`/`..` not included).
    fn list(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Node)>>;
    /// One name of a node (for messages and `stat`): its path from the root, if reachable.
    fn path_of(&self, ino: Ino) -> Result<Option<Vec<u8>>>;

    /// Creates an empty node; fails with AlreadyExists if the name is taken.
    fn create(&self, parent: Ino, name: &[u8], new: NewNode) -> Result<Node>;
    /// Atomically creates `name` with `content`, or replaces the content of the existing file
    /// there (a new version, same identity). Returns the node and whether it existed.
    fn put_capsule(
        &self,
        parent: Ino,
        name: &[u8],
        new: NewNode,
        content: &Content,
    ) -> Result<(Node, bool)>;
    /// Atomically replaces a file's content. `expect_version` guards against lost updates.
    fn commit_content(
        &self,
        ino: Ino,
        content: &Content,
        expect_version: Option<u64>,
    ) -> Result<Node>;
    /// Removes a name (file or symlink). Content is released when the last link goes.
    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()>;
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()>;
    /// POSIX rename: replaces a compatible target atomically unless `no_replace`.
    fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        no_replace: bool,
    ) -> Result<()>;
    /// renameat2(RENAME_EXCHANGE): swaps what two existing names refer to, atomically.
    fn exchange(
        &self,
        parent: Ino,
        name: &[u8],
        other_parent: Ino,
        other_name: &[u8],
    ) -> Result<()>;
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Node>;
    fn set_attr(&self, ino: Ino, attr: &SetAttr) -> Result<Node>;
    fn set_policy(&self, ino: Ino, policy: Option<&str>) -> Result<Node>;

    /// Up to `limit` extents starting with the one containing `offset`, in order.
    fn extents_from(&self, ino: Ino, offset: u64, limit: usize) -> Result<Vec<Extent>>;
    /// [`MetaStore::extents_from`] with each chunk's object location and stored length, in one
    /// query (a streaming reader would otherwise look every chunk up separately). `None` when
    /// the chunk has no row (an object stored ahead of its commit).
    fn extents_located_from(
        &self,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<(Extent, Option<ChunkLocation>)>>;
    fn has_chunk(&self, id: &ChunkId) -> Result<bool>;

    fn get_xattr(&self, ino: Ino, name: &str) -> Result<Option<Vec<u8>>>;
    /// Whether any node has an extended attribute whose name starts with `prefix`.
    fn any_xattr_with_prefix(&self, prefix: &str) -> Result<bool>;
    fn set_xattr(&self, ino: Ino, name: &str, value: &[u8]) -> Result<()>;
    fn list_xattr(&self, ino: Ino) -> Result<Vec<String>>;
    fn remove_xattr(&self, ino: Ino, name: &str) -> Result<bool>;

    /// Like [`MetaStore::unlink`], but if this removes the last link of a node for which
    /// `keep(ino)` is true (a file still open somewhere), the node is kept as an *orphan*
    /// (nlink 0, no name) instead of destroyed; returns its inode. The caller purges it with
    /// [`MetaStore::purge_orphan`] when done; leftovers after a crash are purged at next use.
    fn unlink_keep(
        &self,
        parent: Ino,
        name: &[u8],
        keep: &dyn Fn(Ino) -> bool,
    ) -> Result<Option<Ino>> {
        let _ = keep;
        self.unlink(parent, name).map(|_| None)
    }
    /// [`MetaStore::rename`] with the orphan rule of [`MetaStore::unlink_keep`] for a replaced
    /// target.
    fn rename_keep(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        no_replace: bool,
        keep: &dyn Fn(Ino) -> bool,
    ) -> Result<Option<Ino>> {
        let _ = keep;
        self.rename(parent, name, new_parent, new_name, no_replace)
            .map(|_| None)
    }
    /// Destroys an orphan (a non-directory node with no links left); false if `ino` is not one.
    fn purge_orphan(&self, ino: Ino) -> Result<bool> {
        let _ = ino;
        Ok(false)
    }
    /// All orphans (left by a crash while unlinked files were open).
    fn orphans(&self) -> Result<Vec<Ino>> {
        Ok(Vec::new())
    }

    /// The policy of `dir` or of its nearest ancestor directory that has one (what a node
    /// created in `dir` inherits), in one query; None if none has one or `dir` is unlinked
    /// and has none.
    fn nearest_policy(&self, dir: Ino) -> Result<Option<String>>;

    /// Whether each commit is durable (survives power loss) before it returns; the default.
    /// With `false`, a commit is atomic and survives the process being killed at once, and
    /// becomes durable at the next [`MetaStore::sync`] (a local filesystem's `close()` vs
    /// `fsync()`). Objects a commit references are synced before it either way.
    fn set_durable_commits(&self, durable: bool) -> Result<()>;
    /// Makes every earlier commit durable (a no-op if each already was).
    fn sync(&self) -> Result<()>;
    /// Copies committed changes from the write-ahead log into the database, from a connection
    /// of its own so that writers go on meanwhile; once the log is long and fully copied, also
    /// commits the open group and starts the log over, briefly holding up writers. With relaxed
    /// commits this is how the log is kept short (a mount calls it periodically); automatic
    /// checkpoints, which run inside a commit and hold up every request waiting for the
    /// connection, only happen at a much larger log.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
    /// Waits until no other process has a write transaction open (a mount's group of
    /// changes, docs/FORMAT.md 5.3) and re-applies any a dead process left in the redo log, so
    /// that what this connection reads next includes every change whose call has returned.
    /// gc needs this before it decides which objects nothing references.
    fn barrier(&self) -> Result<()>;
    /// Commits changes whose commit was deferred (with relaxed commits, creating a file and
    /// committing its content leave the transaction open for later changes to join, each
    /// kept safe from a crash of the process by a record in the redo log).
    fn commit_deferred(&self) -> Result<()> {
        Ok(())
    }
    /// For a background thread: waits up to `idle` for a deferred transaction to open, then
    /// commits it once it has been open for `limit` (unless something committed it first).
    fn commit_deferred_when_due(
        &self,
        limit: std::time::Duration,
        idle: std::time::Duration,
    ) -> Result<()> {
        let _ = limit;
        std::thread::sleep(idle);
        Ok(())
    }

    /// Distinct policy texts containing `needle` (e.g. every policy declaring views).
    fn policies_containing(&self, needle: &str) -> Result<Vec<String>>;

    /// Where a chunk's object is and how long it is (None: no such chunk row).
    fn chunk_location(&self, id: &ChunkId) -> Result<Option<ChunkLocation>>;
    /// Live bytes (objects of chunks with references, plus record headers) per pack.
    fn pack_usage(&self) -> Result<Vec<(u64, u64)>>;
    /// Live chunks stored in `pack`: (id, location, object length).
    fn chunks_in_pack(&self, pack: u64) -> Result<Vec<(ChunkId, super::PackLoc, u32)>>;
    /// Points chunks at new locations (after repacking), in one transaction.
    fn relocate(&self, moves: &[(ChunkId, super::PackLoc)]) -> Result<()>;

    /// Provenance recorded with a node's current content (set by on-write chains).
    fn provenance(&self, ino: Ino) -> Result<Option<String>>;

    /// The derived entry for `key`, if materialized.
    fn derived_get(&self, key: &[u8; 32]) -> Result<Option<DerivedEntry>>;
    /// Records a use (LRU order and hit counter).
    fn derived_touch(&self, ino: Ino, now: TimeNs) -> Result<()>;
    /// Commits a derived entry in one transaction (content must be durable already). If one
    /// with the same key appeared meanwhile, that one is kept and returned.
    fn derived_put(
        &self,
        key: &[u8; 32],
        content: &Content,
        provenance: &str,
    ) -> Result<DerivedEntry>;
    /// Drops least-recently-used entries until their total size is at most `budget` bytes,
    /// never `keep`. Returns what was dropped (chunks are reclaimed by gc).
    fn derived_evict(&self, budget: u64, keep: Option<Ino>) -> Result<DerivedTotals>;
    /// Drops every derived entry.
    fn derived_clear(&self) -> Result<DerivedTotals>;
    fn derived_totals(&self) -> Result<DerivedTotals>;

    fn stats(&self) -> Result<MetaStats>;
    /// All chunk rows (gc, fsck).
    fn chunk_rows(&self) -> Result<Vec<ChunkRow>>;
    /// Every (ino, extent offset) referencing each of `chunks`, in (ino, offset) order (to
    /// name damaged capsules). One pass over every extent, whatever the number of chunks:
    /// extents have no index by chunk.
    fn referrers(
        &self,
        chunks: &[ChunkId],
    ) -> Result<std::collections::HashMap<ChunkId, Vec<(Ino, u64)>>>;
    /// Deletes, in one transaction, the rows of chunks with refcount <= 0 that no extent names
    /// (and their inline objects); returns the rows deleted.
    fn delete_unreferenced_chunks(&self) -> Result<Vec<ChunkRow>>;
    /// Structural consistency check (fsck's metadata half).
    fn check(&self) -> Result<Vec<MetaProblem>>;
}
