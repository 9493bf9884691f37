//! Open file handles, and the state shared by all handles of one inode.
//!
//! Dirty data belongs to the inode, not the handle: two descriptors of the same file see each
//! other's writes at once (as on a local filesystem), and whichever is flushed, fsynced or
//! released first commits them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;
use super::read_stream::ChainStream;
use super::write_buffer::WriteBuffer;
use crate::pipeline::CapsuleReader;
use crate::store::meta::{ContentChunk, Ino, Node, TimeNs};

/// Per-inode state while at least one handle is open.
pub struct OpenInode {
    pub ino: Ino,
    pub(crate) state: Mutex<InodeState>,
}

pub(crate) struct InodeState {
    /// The committed version the overlay is based on.
    pub node: Node,
    /// Uncommitted changes; for capsules with an on-write chain, the whole (untransformed)
    /// content written during this open session, kept across commits.
    pub buf: Option<WriteBuffer>,
    pub dirty: bool,
    /// Time of the last write (what `stat` shows until the commit).
    pub mtime: Option<TimeNs>,
    /// Time of the last uncommitted change (write or truncate): the ctime `stat` shows.
    pub changed: Option<TimeNs>,
    /// An mtime set explicitly (utimens) while dirty: re-applied after the commit.
    pub mtime_override: Option<TimeNs>,
    pub on_write: bool,
    pub handles: usize,
    /// The last name went away while open: the node is an orphan, purged at last release.
    pub orphan: bool,
    /// Leading chunks of new content stored ahead of the commit (a large file written front to
    /// back): they are the write buffer's base instead of the committed version.
    pub eager: Option<Eager>,
    /// Leading chunks being stored on a background thread, so the next writes are accepted
    /// while they are encoded; their bytes stay in the buffer until the job is settled.
    pub pending: Option<PendingStore>,
    /// The last batch buffer, reused by the next job (a fresh multi-MiB buffer each time cost
    /// ~10% of a large copy's CPU in page faults and zeroing).
    pub spare_batch: Vec<u8>,
}

/// What `Space::store_prefix` returns: the chunks stored and the write report.
pub(crate) type StoredPrefix =
    crate::Result<(crate::store::meta::Content, crate::pipeline::WriteReport)>;

/// A background `store_prefix` over `[from, to)` of the buffer.
pub(crate) struct PendingStore {
    /// Returns the store's result and the batch buffer (for reuse).
    pub job: std::thread::JoinHandle<(StoredPrefix, Vec<u8>)>,
    /// The buffer's base when the job started (its first byte).
    pub from: u64,
    /// End of the bytes handed to it.
    pub to: u64,
}

/// Chunks stored before the commit, covering `[0, len)` of the new content.
pub(crate) struct Eager {
    pub chunks: Vec<ContentChunk>,
    pub len: u64,
    pub chunks_stored: u64,
    pub chunks_reused: u64,
    /// The shared store lock, held until the commit so gc cannot collect these objects.
    pub _hold: Box<dyn Send>,
}

impl OpenInode {
    pub(crate) fn new(node: Node, on_write: bool) -> OpenInode {
        OpenInode {
            ino: node.ino,
            state: Mutex::new(InodeState {
                node,
                buf: None,
                dirty: false,
                mtime: None,
                changed: None,
                mtime_override: None,
                on_write,
                handles: 0,
                orphan: false,
                eager: None,
                pending: None,
                spare_batch: Vec::new(),
            }),
        }
    }

    /// Size as users see it right now (dirty size if any).
    pub fn size(&self) -> u64 {
        lock(&self.state).size()
    }
}

impl InodeState {
    /// Size as users see it right now (dirty size if any).
    pub fn size(&self) -> u64 {
        self.buf
            .as_ref()
            .map(|b| b.size())
            .unwrap_or(self.node.size)
    }
}

/// What a handle reads from.
pub(crate) enum HandleKind {
    /// A capsule's stored bytes merged with its dirty overlay.
    File {
        inode: Arc<OpenInode>,
        write: bool,
        /// Reader of the committed version (re-created when the version changes).
        reader: Mutex<Option<CapsuleReader>>,
    },
    /// A capsule through a view's chain, computed as it is read (read-only, direct I/O).
    Stream {
        inode: Arc<OpenInode>,
        /// 0 for the default view, else the mount's number of a named view.
        view: u32,
        stream: Box<Mutex<ChainStream>>,
    },
    /// Fixed stored bytes, read-only, random access: `/.space/raw/...` and materialized views
    /// (which hold their capsule's inode, so it outlives an unlink while open).
    Reader {
        reader: Mutex<CapsuleReader>,
        inode: Option<Arc<OpenInode>>,
    },
    /// A snapshot of a virtual file's text.
    Bytes(Vec<u8>),
    /// A directory listing, snapshotted when reading starts.
    Dir {
        ino: u64,
        entries: Mutex<Option<Vec<DirEntry>>>,
    },
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: Vec<u8>,
    pub kind: super::Kind,
}

pub(crate) struct Handle {
    pub kind: HandleKind,
}

#[derive(Default)]
pub struct HandleTable {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl HandleTable {
    pub(crate) fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.map).insert(fh, Arc::new(h));
        fh
    }

    pub(crate) fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        lock(&self.map).get(&fh).cloned()
    }

    pub(crate) fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        lock(&self.map).remove(&fh)
    }
}
