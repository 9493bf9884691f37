//! `spacefs`: the store as a POSIX directory tree, independent of the FUSE library.
//!
//! [`SpaceFs`] implements the operations (lookup, read, write, rename, …) on plain Rust types
//! and errno values, so they can be exercised without a kernel; [`fuse`] only adapts fuser's
//! callbacks to them, and [`daemon`] is the `spacefs` mount helper. Semantics (close-to-open
//! consistency, transformed sizes, on-write overwrites) are specified in docs/SEMANTICS.md.
//!
//! Layout: [`inode_table`] (kernel inode numbers, the virtual range), [`handles`] (open files
//! and their shared per-inode state), [`write_buffer`] (dirty data), [`read_stream`] (on-read
//! chains), [`ops`] (namespace), [`file_ops`] (data), [`xattr`], [`virtual_tree`] (`/.space`),
//! [`stats`].

pub mod daemon;
pub mod file_ops;
pub mod fuse;
pub mod governor;
pub mod handles;
pub mod inode_table;
pub mod ops;
pub mod options;
pub mod read_stream;
pub mod stats;
pub mod view_tree;
pub mod virtual_tree;
pub mod write_buffer;
pub mod xattr;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Space;
use crate::error::SpaceError;
use crate::policy::Policy;
use crate::store::meta::{Ino, Node, NodeKind, TimeNs};

pub use handles::{HandleTable, OpenInode};
pub use stats::Stats;

/// An errno value (positive), what every operation returns on failure.
pub type Errno = i32;
pub type FsResult<T> = std::result::Result<T, Errno>;

/// Converts a store error to an errno, logging what the caller will not see.
pub(crate) fn errno(e: SpaceError) -> Errno {
    let code = e.errno();
    match code {
        libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENOTDIR | libc::EISDIR => {
            log::debug!("{e}")
        }
        _ => log::warn!("{e}"),
    }
    code
}

pub(crate) use crate::util::lock;

/// Who is asking (from the request header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl From<NodeKind> for Kind {
    fn from(k: NodeKind) -> Kind {
        match k {
            NodeKind::File => Kind::File,
            NodeKind::Dir => Kind::Dir,
            NodeKind::Symlink => Kind::Symlink,
            NodeKind::Fifo => Kind::Fifo,
            NodeKind::Socket => Kind::Socket,
            NodeKind::CharDevice => Kind::CharDevice,
            NodeKind::BlockDevice => Kind::BlockDevice,
        }
    }
}

/// What `stat` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: TimeNs,
    pub mtime: TimeNs,
    pub ctime: TimeNs,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number of a device node (Linux `dev_t`); 0 otherwise.
    pub rdev: u64,
    /// `size` is a placeholder (0): a view whose output length is not known yet.
    pub size_unknown: bool,
}

/// Settings of a mount.
#[derive(Debug, Clone)]
pub struct FsOptions {
    pub read_only: bool,
    /// How long the kernel may cache attributes and names (changes made with `spacectl`
    /// while mounted show up after this).
    pub ttl: Duration,
    /// Dirty bytes per open file kept in memory before spilling to a temporary file.
    pub write_mem_limit: usize,
    /// Where spilled write buffers go (unnamed files; default: the store directory).
    pub spill_dir: Option<PathBuf>,
    /// Every metadata commit (close, create, rename, ...) is durable before it returns, as on
    /// a filesystem mounted `-o sync`. Without it a commit survives a crash of the daemon at
    /// once and power loss after the next `fsync`/`fsyncdir`, the unmount, or at most
    /// [`SYNC_INTERVAL`] later; chunk objects are always durable before the commit that
    /// references them.
    pub durable_commits: bool,
}

/// How often a mount without `durable_commits` makes its recent commits durable.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// How often a mount checkpoints the metadata log (see `spawn_checkpointer`).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// The longest a group of file creations, content commits and attribute changes stays
/// uncommitted (each is safe meanwhile in the redo log; docs/SEMANTICS.md): how late
/// `spacectl` may see what a `close()` on the mount committed, and how long its writes may
/// wait for the mount's. Longer groups write less metadata log per change: a B-tree page
/// that several changes touch is written once per group (creating small files, ~19 -> ~14 KiB
/// of log per file from 10 to 100 ms).
pub const DEFER_LIMIT: Duration = Duration::from_millis(50);

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            read_only: false,
            ttl: Duration::from_secs(1),
            write_mem_limit: 16 << 20,
            spill_dir: None,
            durable_commits: false,
        }
    }
}

/// Which chains a policy has (parsed once per distinct policy text).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Chains {
    pub on_read: bool,
    pub on_write: bool,
}

/// The mounted filesystem.
pub struct SpaceFs {
    pub space: Arc<Space>,
    pub opts: FsOptions,
    pub stats: Arc<Stats>,
    pub(crate) handles: HandleTable,
    /// Inodes with open handles (their dirty state lives there).
    pub(crate) open: Mutex<HashMap<Ino, Arc<OpenInode>>>,
    /// Output sizes of views not kept in the cache, learned when a stream reached its end:
    /// (ino, view number; 0 = default view) → (version, size).
    pub(crate) transformed_sizes: Mutex<HashMap<(Ino, view_tree::ViewId), (u64, u64)>>,
    /// Named views seen by this mount ↔ numbers in their inode numbers.
    pub(crate) views: Mutex<view_tree::ViewRegistry>,
    /// Version whose bytes the kernel page cache may hold, per inode (for FOPEN_KEEP_CACHE).
    pub(crate) cached_versions: Mutex<HashMap<Ino, u64>>,
    chains: Mutex<HashMap<String, Chains>>,
    spill_dir: PathBuf,
    /// Some node may have a `security.*` extended attribute (checked at mount, set by any
    /// setxattr of one here). While false, `security.capability` lookups — one per write(2)
    /// — are answered without a metadata query. A `security.*` attribute set by another
    /// mount of the same store shows up here at the next mount.
    pub(crate) security_xattrs: std::sync::atomic::AtomicBool,
    /// The policy new files in a directory inherit, by directory, with when it was looked
    /// up: a burst of creates in one directory walks up to the nearest policy once per
    /// attribute timeout instead of once per file (a recursive query, 4% of a small file's
    /// create). Policy changes, renames and removals made through this mount clear it;
    /// changes made by other processes (spacectl) show within the attribute timeout, as
    /// their other changes do.
    inherited_policies: Mutex<InheritedPolicies>,
}

/// See [`SpaceFs::inherited_policies`].
#[derive(Default)]
struct InheritedPolicies {
    by_dir: HashMap<Ino, (Option<String>, std::time::Instant)>,
    /// Bumped by every clearing, so a lookup that raced with one does not store what it
    /// found before the change.
    generation: u64,
}

/// Entries of [`SpaceFs::inherited_policies`] before it is started afresh.
const INHERITED_POLICIES: usize = 4096;

impl SpaceFs {
    /// Wraps `space` (with its transform runtime, if any) for mounting. Purges orphans left by
    /// a crash (files that were unlinked while open).
    pub fn new(space: Space, opts: FsOptions) -> crate::Result<SpaceFs> {
        let stats = Arc::new(Stats::default());
        let space = match space.transforms().cloned() {
            Some(inner) => space.with_transforms(Arc::new(stats::CountingFactory {
                inner,
                stats: Arc::clone(&stats),
            })),
            None => space,
        };
        for ino in space.store.meta.orphans()? {
            if space.store.meta.purge_orphan(ino)? {
                log::info!("removed orphan inode {ino} (unlinked while open before a crash)");
            }
        }
        let spill_dir = opts
            .spill_dir
            .clone()
            .unwrap_or_else(|| space.store.dir.clone());
        let security_xattrs = space.store.meta.any_xattr_with_prefix("security.")?;
        if !opts.durable_commits && !opts.read_only {
            space.store.meta.set_durable_commits(false)?;
            spawn_syncer(Arc::downgrade(&space.store.meta));
            spawn_committer(Arc::downgrade(&space.store.meta));
            spawn_checkpointer(Arc::downgrade(&space.store.meta));
        }
        Ok(SpaceFs {
            space: Arc::new(space),
            opts,
            stats,
            handles: HandleTable::default(),
            open: Mutex::new(HashMap::new()),
            transformed_sizes: Mutex::new(HashMap::new()),
            views: Mutex::default(),
            cached_versions: Mutex::new(HashMap::new()),
            chains: Mutex::new(HashMap::new()),
            spill_dir,
            security_xattrs: std::sync::atomic::AtomicBool::new(security_xattrs),
            inherited_policies: Mutex::default(),
        })
    }

    /// The policy a new capsule in directory `dir` inherits (see
    /// [`SpaceFs::inherited_policies`]).
    pub(crate) fn inherited_policy(&self, dir: &Node) -> crate::Result<Option<String>> {
        if dir.policy.is_some() || self.opts.ttl.is_zero() {
            return self.space.inherited_policy(dir);
        }
        let generation = {
            let cache = lock(&self.inherited_policies);
            if let Some((policy, at)) = cache.by_dir.get(&dir.ino) {
                if at.elapsed() < self.opts.ttl {
                    return Ok(policy.clone());
                }
            }
            cache.generation
        };
        let at = std::time::Instant::now();
        let policy = self.space.inherited_policy(dir)?;
        let mut cache = lock(&self.inherited_policies);
        if cache.generation == generation {
            if cache.by_dir.len() >= INHERITED_POLICIES {
                cache.by_dir.clear();
            }
            cache.by_dir.insert(dir.ino, (policy.clone(), at));
        }
        Ok(policy)
    }

    /// Forgets every cached inherited policy (a policy changed, or a directory moved or went
    /// away).
    pub(crate) fn forget_inherited_policies(&self) {
        let mut cache = lock(&self.inherited_policies);
        cache.by_dir.clear();
        cache.generation += 1;
    }

    pub(crate) fn chains(&self, node: &Node) -> Chains {
        let Some(yaml) = &node.policy else {
            return Chains::default();
        };
        if node.kind != NodeKind::File || !yaml.contains("transform") {
            return Chains::default();
        }
        if let Some(c) = lock(&self.chains).get(yaml) {
            return *c;
        }
        let c = match Policy::from_yaml(yaml) {
            Ok(p) => Chains {
                on_read: p.on_read().next().is_some(),
                on_write: p.on_write().next().is_some(),
            },
            Err(e) => {
                log::warn!("inode {}: unreadable policy: {e}", node.ino);
                Chains::default()
            }
        };
        let mut m = lock(&self.chains);
        if m.len() > 1024 {
            m.clear();
        }
        m.insert(yaml.clone(), c);
        c
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.opts.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    /// Commits every pending write and makes every commit durable (on unmount and on
    /// SIGTERM/SIGINT).
    pub fn commit_all(&self) {
        let inodes: Vec<Arc<OpenInode>> = lock(&self.open).values().cloned().collect();
        for i in inodes {
            if let Err(e) = self.commit(&i) {
                log::error!(
                    "inode {}: pending writes could not be committed (errno {e})",
                    i.ino
                );
            }
        }
        if let Err(e) = self.space.store.meta.sync() {
            log::error!("making the metadata durable failed: {e}");
        }
    }

    /// Makes every commit so far durable (fsync, fsyncdir).
    pub fn sync_metadata(&self) -> FsResult<()> {
        self.space.store.meta.sync().map_err(|e| {
            log::error!("making the metadata durable failed: {e}");
            libc::EIO
        })
    }
}

/// Makes relaxed commits durable every [`SYNC_INTERVAL`] until the store is dropped.
fn spawn_syncer(meta: std::sync::Weak<dyn crate::store::MetaStore>) {
    let spawned = crate::util::spawn_periodic("spacefs-sync", SYNC_INTERVAL, meta, |meta| {
        if let Err(e) = meta.sync() {
            log::error!("periodic metadata sync failed: {e}");
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the metadata sync thread: {e}; syncing on fsync only");
    }
}

/// Copies the metadata write-ahead log into the database every [`CHECKPOINT_INTERVAL`], off
/// the request path, until the store is dropped. (Checkpoints inside commits copied up to
/// 64 MiB of log while every request waiting for the metadata connection waited: Python
/// creating files on a store past its first checkpoint made 2,657-3,084 files/s, 3,143-3,694
/// with this.)
fn spawn_checkpointer(meta: std::sync::Weak<dyn crate::store::MetaStore>) {
    let failing = std::sync::atomic::AtomicBool::new(false);
    let spawned = crate::util::spawn_periodic(
        "spacefs-checkpoint",
        CHECKPOINT_INTERVAL,
        meta,
        move |meta| {
            use std::sync::atomic::Ordering::Relaxed;
            match meta.checkpoint() {
                // Once per spell of failures; commits checkpoint by themselves meanwhile.
                Err(e) if !failing.swap(true, Relaxed) => {
                    log::warn!("metadata checkpoint failed (retried): {e}")
                }
                Err(_) => {}
                Ok(()) => failing.store(false, Relaxed),
            }
        },
    );
    if let Err(e) = spawned {
        log::error!("cannot start the metadata checkpoint thread: {e}; commits checkpoint");
    }
}

/// Commits grouped metadata transactions (creations, content commits, attribute changes) at the latest
/// [`DEFER_LIMIT`] after they opened, until the store is dropped.
fn spawn_committer(meta: std::sync::Weak<dyn crate::store::MetaStore>) {
    let spawned = std::thread::Builder::new()
        .name("spacefs-commit".into())
        .spawn(move || {
            while let Some(m) = meta.upgrade() {
                if let Err(e) = m.commit_deferred_when_due(DEFER_LIMIT, Duration::from_secs(1)) {
                    log::error!("committing deferred metadata changes failed: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the metadata commit thread: {e}");
    }
}

/// Nanoseconds since the epoch → what fuser wants.
pub(crate) fn to_system_time(t: TimeNs) -> std::time::SystemTime {
    if t >= 0 {
        std::time::UNIX_EPOCH + Duration::from_nanos(t as u64)
    } else {
        std::time::UNIX_EPOCH - Duration::from_nanos(t.unsigned_abs())
    }
}

pub(crate) fn from_system_time(t: std::time::SystemTime) -> TimeNs {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as TimeNs,
        Err(e) => -(e.duration().as_nanos() as TimeNs),
    }
}
