//! The read path: extent lookup → fetch → authenticate/decrypt → decompress → verify id.
//!
//! Two shapes: [`CapsuleReader::read_at`] for random access (offsets map to chunks through the
//! metadata index, never by reading earlier chunks; decoded chunks are kept in a shared
//! [`ChunkCache`]), and [`stream_chunks`] for whole-capsule reads, which decodes ahead in
//! parallel workers and hands chunks over in order. Neither holds more than a bounded number
//! of chunks, whatever the capsule's size.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use lru::LruCache;

use crate::error::{Result, SpaceError};
use crate::pipeline::chunk_codec::{self, IdCheck};
use crate::store::meta::{ChunkLocation, Extent, Ino, Node};
use crate::store::{ChunkId, ObjectBytes, Store};
use crate::util::lock;

/// Decoded chunks shared by all readers, bounded by bytes (not entries).
///
/// Also tracks chunks being decoded right now (by a reader or a read-ahead worker), so two
/// readers of the same chunk decode it once: the second waits for the first.
pub struct ChunkCache {
    inner: Mutex<CacheState>,
    budget: u64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Reads served from a few segments of a chunk instead of the whole chunk.
    pub partial_reads: AtomicU64,
    inflight: Mutex<HashMap<ChunkId, Arc<Inflight>>>,
    /// How to read parts of recently read segmented objects (`None`: read them whole), so a
    /// repeated small read costs one read of its segments, not also a metadata lookup and a
    /// read of the object's header.
    parts: Mutex<LruCache<ChunkId, Option<Arc<PartPlan>>>>,
}

/// Entries of [`ChunkCache::parts`] (~200 bytes each).
const PART_PLANS: usize = 16384;

/// Where a segmented object is and its parsed header.
struct PartPlan {
    loc: crate::store::PackLoc,
    stored_len: u32,
    object: chunk_codec::SegmentedObject,
    /// Parsed from the metadata's copy of the head, not from the object.
    head_from_metadata: bool,
}

/// A decode in progress; `done` flips (and waiters wake) when it finished, successfully or not.
#[derive(Default)]
struct Inflight {
    done: Mutex<bool>,
    cv: Condvar,
}

/// Releases an in-flight mark when the decode ends (also on panic or when a queued read-ahead
/// job is dropped unrun).
struct LoadGuard<C: Deref<Target = ChunkCache>> {
    cache: C,
    id: ChunkId,
    flag: Arc<Inflight>,
}

impl<C: Deref<Target = ChunkCache>> Drop for LoadGuard<C> {
    fn drop(&mut self) {
        {
            let mut m = lock(&self.cache.inflight);
            if m.get(&self.id).is_some_and(|f| Arc::ptr_eq(f, &self.flag)) {
                m.remove(&self.id);
            }
        }
        *lock(&self.flag.done) = true;
        self.flag.cv.notify_all();
    }
}

/// Decoded bytes read ahead of a sequential reader (at most this many chunks, and no more than
/// [`READAHEAD_BYTES`] past the read position once two chunks are queued).
const READAHEAD_CHUNKS: usize = 8;
const READAHEAD_BYTES: u64 = 4 << 20;
/// A read starting this close to where the previous one ended counts as sequential (the kernel
/// may deliver concurrent read-ahead requests slightly out of order): four times its own
/// length, at least 256 KiB and at most 2 MiB, so that small random reads in a small file are
/// not mistaken for a stream.
const SEQUENTIAL_SLACK: u64 = 2 << 20;
const SEQUENTIAL_SLACK_MIN: u64 = 256 << 10;

type PoolJob = Box<dyn FnOnce() + Send>;

/// The read-ahead workers, shared by every reader of the process (started on first use).
fn readahead_pool() -> &'static mpsc::Sender<PoolJob> {
    static POOL: OnceLock<mpsc::Sender<PoolJob>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<PoolJob>();
        let rx = Arc::new(Mutex::new(rx));
        // Twice the cores: a worker waiting for the disk leaves its core to another.
        let n = std::thread::available_parallelism()
            .map(|n| 2 * n.get())
            .unwrap_or(4)
            .clamp(4, 16);
        for i in 0..n {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("space-readahead-{i}"))
                .spawn(move || {
                    loop {
                        let job = lock(&rx).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("starting a read-ahead worker failed: {e}");
            }
        }
        tx
    })
}

struct CacheState {
    lru: LruCache<ChunkId, Arc<Vec<u8>>>,
    used: u64,
}

impl ChunkCache {
    pub fn new(budget_bytes: u64) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(CacheState {
                lru: LruCache::unbounded(),
                used: 0,
            }),
            budget: budget_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            partial_reads: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            parts: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(PART_PLANS).expect("nonzero"),
            )),
        }
    }

    /// A cached chunk, without counting a hit or miss.
    fn lookup(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        lock(&self.inner).lru.get(id).cloned()
    }

    fn contains(&self, id: &ChunkId) -> bool {
        lock(&self.inner).lru.contains(id)
    }

    /// Marks `id` as being decoded by the caller, or returns the decode already under way.
    fn claim(&self, id: &ChunkId) -> std::result::Result<Arc<Inflight>, Arc<Inflight>> {
        let mut m = lock(&self.inflight);
        match m.get(id) {
            Some(f) => Err(Arc::clone(f)),
            None => {
                let f = Arc::new(Inflight::default());
                m.insert(*id, Arc::clone(&f));
                Ok(f)
            }
        }
    }

    /// The decoded chunk `id`: from the cache, from a decode already in flight (waiting for it),
    /// or from `load` (whose result is cached). A failed decode is never cached: the caller
    /// then runs `load` itself and gets the error.
    pub fn get_or_load(
        &self,
        id: &ChunkId,
        load: &dyn Fn() -> Result<Vec<u8>>,
    ) -> Result<Arc<Vec<u8>>> {
        if let Some(d) = self.lookup(id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        // A hit now, or decode here and cache the result.
        let hit_or_load = || {
            if let Some(d) = self.lookup(id) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(d);
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            let d = Arc::new(load()?);
            self.insert(*id, Arc::clone(&d));
            Ok(d)
        };
        match self.claim(id) {
            Ok(flag) => {
                let _guard = LoadGuard {
                    cache: self,
                    id: *id,
                    flag,
                };
                // Another decode may have finished between the lookup and the claim.
                hit_or_load()
            }
            Err(flag) => {
                let mut done = lock(&flag.done);
                while !*done {
                    done = flag.cv.wait(done).unwrap_or_else(|p| p.into_inner());
                }
                drop(done);
                // If that decode failed (or its result was evicted already), decode here.
                hit_or_load()
            }
        }
    }

    /// Queues a background decode of `id` into the cache (no-op if cached or in flight).
    /// Failures are dropped: a reader that needs the chunk decodes it and reports the error.
    /// `known`: where the chunk is stored, if the caller read it already.
    pub fn prefetch(
        self: &Arc<Self>,
        store: &Arc<Store>,
        id: ChunkId,
        known: Option<ChunkLocation>,
        context: Box<dyn Fn(&Store) -> String + Send>,
    ) {
        // A cache too small to hold the read-ahead window would evict it before use.
        if self.budget < 4 * READAHEAD_BYTES || self.contains(&id) {
            return;
        }
        let Ok(flag) = self.claim(&id) else {
            return;
        };
        let guard = LoadGuard {
            cache: Arc::clone(self),
            id,
            flag,
        };
        let store = Arc::clone(store);
        // If the pool is gone the job (and with it the guard) is dropped: the mark is released.
        let _ = readahead_pool().send(Box::new(move || {
            let cache = &guard.cache;
            if cache.contains(&id) {
                return;
            }
            match load_chunk_in_order(&store, &id, known, &|| context(&store)) {
                Ok(d) => cache.insert(id, Arc::new(d)),
                Err(e) => log::debug!("read-ahead of chunk {id} failed: {e}"),
            }
            drop(guard);
        }));
    }

    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let mut g = lock(&self.inner);
        let hit = g.lru.get(id).cloned();
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    pub fn insert(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        if data.len() as u64 > self.budget {
            return;
        }
        let mut g = lock(&self.inner);
        let CacheState { lru, used } = &mut *g;
        *used += data.len() as u64;
        if let Some(old) = lru.put(id, data) {
            *used -= old.len() as u64;
        }
        while *used > self.budget {
            match lru.pop_lru() {
                Some((_, v)) => *used -= v.len() as u64,
                None => break,
            }
        }
    }
}

/// Fetches and decodes one chunk; `context` names the capsule and chunk for error messages.
pub fn load_chunk(store: &Store, id: &ChunkId, context: &dyn Fn() -> String) -> Result<Vec<u8>> {
    load_chunk_at(store, id, None, context)
}

/// [`load_chunk`] that recomputes the chunk id whatever the store's setting (fsck).
pub fn load_chunk_recomputing_id(
    store: &Store,
    id: &ChunkId,
    context: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    load_chunk_checked(store, id, None, IdCheck::Always, Access::Random, context)
}

/// How this store's readers check chunk ids (docs/FORMAT.md 4.2).
fn id_check(store: &Store) -> IdCheck {
    if store.config.recompute_chunk_ids {
        IdCheck::Always
    } else {
        IdCheck::Unauthenticated
    }
}

/// [`load_chunk`] with the object's location when the caller knows it (objects stored ahead
/// of their metadata commit have no chunk row yet).
pub fn load_chunk_at(
    store: &Store,
    id: &ChunkId,
    known: Option<ChunkLocation>,
    context: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    load_chunk_checked(store, id, known, id_check(store), Access::Random, context)
}

/// [`load_chunk_at`] for a reader going through a capsule's chunks in order (read-ahead of a
/// sequential reader, whole-capsule streams): the backend may read ahead of it
/// ([`crate::store::ChunkBackend::get_sequential`]).
pub fn load_chunk_in_order(
    store: &Store,
    id: &ChunkId,
    known: Option<ChunkLocation>,
    context: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    load_chunk_checked(store, id, known, id_check(store), Access::InOrder, context)
}

/// How a chunk's object is read from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Random,
    InOrder,
}

fn load_chunk_checked(
    store: &Store,
    id: &ChunkId,
    known: Option<ChunkLocation>,
    check: IdCheck,
    access: Access,
    context: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let get = |loc, len| match access {
        Access::Random => store.chunks.get(id, loc, len),
        Access::InOrder => store.chunks.get_sequential(id, loc, len),
    };
    let fetch = |located: Option<ChunkLocation>| -> std::io::Result<ObjectBytes> {
        match located {
            Some(ChunkLocation {
                inline: Some(object),
                ..
            }) => Ok(object.into()),
            Some(ChunkLocation {
                loc, stored_len, ..
            }) => get(loc, stored_len),
            // No row: a loose object stored ahead of its commit (format 1), or nothing.
            None => get(None, 0),
        }
    };
    let lookup = || -> std::io::Result<ObjectBytes> {
        fetch(
            store
                .meta
                .chunk_location(id)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        )
    };
    // A concurrent gc may have moved the object (repacked) since its location was read (by
    // the caller or by the first lookup): a fresh lookup finds its new place.
    let first = match known {
        Some(located) => fetch(Some(located)),
        None => lookup(),
    };
    let object = first.or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => lookup(),
        _ => Err(e),
    });
    let object = object.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SpaceError::Integrity {
                context: context(),
                chunk: *id,
                reason: "object is missing".into(),
            }
        } else {
            SpaceError::io(format!("{}: reading chunk {id}", context()), e)
        }
    })?;
    chunk_codec::decode(&store.keys, id, object, check).map_err(|e| {
        log::error!("{}: chunk {id} failed verification: {e}", context());
        SpaceError::Integrity {
            context: context(),
            chunk: *id,
            reason: e.to_string(),
        }
    })
}

/// Reads plaintext bytes `[offset, offset + out.len())` of a chunk into `out` by
/// authenticating and decrypting only the segments holding them (object version 2,
/// uncompressed payload); returns how many bytes the chunk had there. `None` when the object
/// cannot be read in part (inline, loose, version 1, compressed, or moved by a gc): the
/// caller reads it whole. The bytes are authenticated (AES-GCM, bound to the chunk id,
/// the segment's position and the segment count), which for these uncompressed bodies is
/// what a whole decode guarantees too (docs/FORMAT.md 4.2); fsck recomputes every id.
pub fn load_chunk_part(
    store: &Store,
    cache: &ChunkCache,
    id: &ChunkId,
    offset: usize,
    out: &mut [u8],
    context: &dyn Fn() -> String,
) -> Result<Option<usize>> {
    let len = out.len();
    let integrity = |reason: String| SpaceError::Integrity {
        context: context(),
        chunk: *id,
        reason,
    };
    let io_error =
        |e: std::io::Error| SpaceError::io(format!("{}: reading chunk {id}", context()), e);
    // First with the object's head as the metadata keeps it; if that fails to authenticate
    // (a damaged copy), once more with the head read from the object itself.
    let mut trust_metadata_head = true;
    loop {
        let cached = lock(&cache.parts).get(id).cloned();
        let plan = match cached {
            Some(None) => return Ok(None),
            Some(Some(plan)) => plan,
            None => {
                let planned =
                    plan_part_reads(store, id, trust_metadata_head).map_err(|e| match e {
                        PlanError::Io(e) => io_error(e),
                        PlanError::Decode(e) => integrity(e.to_string()),
                    })?;
                let Some(plan) = planned else {
                    lock(&cache.parts).put(*id, None);
                    return Ok(None);
                };
                let plan = Arc::new(plan);
                lock(&cache.parts).put(*id, Some(Arc::clone(&plan)));
                plan
            }
        };
        let (segments, range) = plan.object.span(offset, len);
        let sealed = match store
            .chunks
            .get_range(id, Some(plan.loc), plan.stored_len, range)
        {
            Ok(s) => s,
            // Moved by a gc since: forget the plan, read the object whole (a fresh lookup).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lock(&cache.parts).pop(id);
                return Ok(None);
            }
            Err(e) => return Err(io_error(e)),
        };
        let start = segments.start as usize * plan.object.segment_len();
        let plain = match plan.object.open(&store.keys, segments, sealed) {
            Ok(p) => p,
            Err(_) if plan.head_from_metadata => {
                lock(&cache.parts).pop(id);
                trust_metadata_head = false;
                continue;
            }
            Err(e) => {
                log::error!("{}: chunk {id} failed verification: {e}", context());
                return Err(integrity(e.to_string()));
            }
        };
        let from = offset - start;
        let to = (from + len).min(plain.len());
        if from > to {
            return Err(integrity("range past the end of the chunk".into()));
        }
        cache.partial_reads.fetch_add(1, Ordering::Relaxed);
        out[..to - from].copy_from_slice(&plain[from..to]);
        return Ok(Some(to - from));
    }
}

enum PlanError {
    Io(std::io::Error),
    Decode(chunk_codec::DecodeError),
}

/// Looks a chunk's object up and parses its head (from the metadata's copy when there is one
/// and `use_metadata_head`, else read from the object); `None` if it cannot be read in part.
fn plan_part_reads(
    store: &Store,
    id: &ChunkId,
    use_metadata_head: bool,
) -> std::result::Result<Option<PartPlan>, PlanError> {
    let located = store
        .meta
        .chunk_location(id)
        .map_err(|e| PlanError::Io(std::io::Error::other(e.to_string())))?;
    let Some(located) = located else {
        return Ok(None);
    };
    let (Some(loc), None) = (located.loc, &located.inline) else {
        return Ok(None);
    };
    let stored_len = located.stored_len as usize;
    let (head, head_from_metadata) = match located.head {
        Some(h) if use_metadata_head => (h, true),
        _ => {
            let head_len = stored_len.min(chunk_codec::SegmentedObject::HEAD_LEN);
            match store
                .chunks
                .get_range(id, Some(loc), located.stored_len, 0..head_len)
            {
                Ok(h) => (h.into_vec(), false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(PlanError::Io(e)),
            }
        }
    };
    match chunk_codec::SegmentedObject::parse(id, &head, stored_len) {
        Ok(parsed) => Ok(parsed.map(|object| PartPlan {
            loc,
            stored_len: located.stored_len,
            object,
            head_from_metadata,
        })),
        // A damaged copy in the metadata: the object's own head decides.
        Err(_) if head_from_metadata => plan_part_reads(store, id, false),
        Err(e) => Err(PlanError::Decode(e)),
    }
}

/// How a reader names its capsule in messages. Working out a path costs metadata queries and
/// most readers never report anything, so `Node` does it only when a message needs it.
#[derive(Debug, Clone)]
pub enum ReaderName {
    Text(Arc<str>),
    /// `capsule PATH (UUID)` of the node, its path as of the message (`<unlinked>` if it has
    /// none), then `suffix`.
    Node {
        ino: Ino,
        uuid: uuid::Uuid,
        suffix: &'static str,
    },
}

impl ReaderName {
    pub fn of_node(node: &Node, suffix: &'static str) -> ReaderName {
        ReaderName::Node {
            ino: node.ino,
            uuid: node.uuid,
            suffix,
        }
    }

    pub fn render(&self, store: &Store) -> String {
        match self {
            ReaderName::Text(s) => s.to_string(),
            ReaderName::Node { ino, uuid, suffix } => {
                let path = store.meta.path_of(*ino).ok().flatten();
                let path = path.as_deref().map(String::from_utf8_lossy);
                let path = path.as_deref().unwrap_or("<unlinked>");
                format!("capsule {path} ({uuid}){suffix}")
            }
        }
    }
}

/// What [`CapsuleReader::read_shared_or_into`] read.
pub enum ReadOut {
    /// Bytes `range` of a decoded chunk.
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
    /// The first n bytes of the caller's buffer.
    Copied(usize),
}

/// Random access to one version of a capsule's stored bytes.
pub struct CapsuleReader {
    store: Arc<Store>,
    cache: Arc<ChunkCache>,
    ino: Ino,
    size: u64,
    version: u64,
    name: ReaderName,
    /// A window of the extent list around the last read (sequential reads need one query per
    /// 64 chunks, random reads one per miss).
    window: Vec<Extent>,
    /// Where the window's chunks are stored (same order), read in the same query, so loading
    /// a chunk needs no query of its own (for a small file: one query per read, not two).
    /// Taken when used; a later miss looks the chunk up.
    window_at: Vec<Option<ChunkLocation>>,
    /// Extents met by random reads, by offset (at most [`RANDOM_EXTENTS`], then started
    /// afresh): random reads over a region the reader has seen need no query.
    seen: BTreeMap<u64, Extent>,
    /// Where the last read ended (None before the first read), to detect sequential access.
    last_end: Option<u64>,
    /// Read-ahead has been queued for every chunk starting before this offset.
    ahead_to: u64,
    /// The current read does not follow the previous one.
    random: bool,
    /// Reads in a row that followed their predecessor (0: the current read is random).
    streak: u32,
}

const WINDOW: usize = 64;
/// Extents a reader remembers for random reads: 4096 rows (~200 KiB) cover about 1 GiB of a
/// capsule at the default chunk size; memory per reader stays fixed whatever the capsule size.
const RANDOM_EXTENTS: usize = 4096;

impl CapsuleReader {
    pub fn new(
        store: Arc<Store>,
        cache: Arc<ChunkCache>,
        node: &Node,
        name: ReaderName,
    ) -> CapsuleReader {
        Self::for_extents(store, cache, node.ino, node.size, node.version, name)
    }

    /// A reader of the extents filed under `ino` (a node, or a derived entry's pseudo-inode).
    pub fn for_extents(
        store: Arc<Store>,
        cache: Arc<ChunkCache>,
        ino: Ino,
        size: u64,
        version: u64,
        name: ReaderName,
    ) -> CapsuleReader {
        CapsuleReader {
            store,
            cache,
            ino,
            size,
            version,
            name,
            window: Vec::new(),
            window_at: Vec::new(),
            seen: BTreeMap::new(),
            last_end: None,
            ahead_to: 0,
            random: false,
            streak: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    fn extent_at(&mut self, offset: u64) -> Result<Extent> {
        let find = |w: &[Extent]| {
            w.iter()
                .find(|e| e.offset <= offset && offset < e.offset + e.len as u64)
                .copied()
        };
        if let Some(e) = find(&self.window) {
            return Ok(e);
        }
        let covering = |seen: &BTreeMap<u64, Extent>| {
            seen.range(..=offset)
                .next_back()
                .map(|(_, e)| *e)
                .filter(|e| offset < e.offset + e.len as u64)
        };
        if !self.random {
            self.load_window(offset)?;
            return find(&self.window).ok_or_else(|| self.no_extent(offset));
        }
        if let Some(e) = covering(&self.seen) {
            return Ok(e);
        }
        let rows = self.store.meta.extents_from(self.ino, offset, WINDOW)?;
        if self.seen.len() + rows.len() > RANDOM_EXTENTS {
            self.seen.clear();
        }
        self.seen.extend(rows.into_iter().map(|e| (e.offset, e)));
        covering(&self.seen).ok_or_else(|| self.no_extent(offset))
    }

    /// Reads the window of extents (with their chunks' locations) from the one holding
    /// `offset` on.
    fn load_window(&mut self, offset: u64) -> Result<()> {
        let rows = self
            .store
            .meta
            .extents_located_from(self.ino, offset, WINDOW)?;
        (self.window, self.window_at) = rows.into_iter().unzip();
        Ok(())
    }

    /// The location of extent `e`'s chunk if the window read it and nobody used it yet.
    fn take_location(&mut self, e: &Extent) -> Option<ChunkLocation> {
        let i = self.window.iter().position(|w| w == e)?;
        self.window_at[i].take()
    }

    fn no_extent(&self, offset: u64) -> SpaceError {
        SpaceError::Integrity {
            context: format!("{} at offset {offset}", self.name.render(&self.store)),
            chunk: ChunkId([0; 32]),
            reason: "no chunk covers this offset (metadata damaged or capsule replaced)".into(),
        }
    }

    /// The stored chunk holding byte `offset` (for per-chunk processing); `None` at or past
    /// the end.
    pub fn chunk_at(&mut self, offset: u64) -> Result<Option<Extent>> {
        if offset >= self.size {
            return Ok(None);
        }
        self.extent_at(offset).map(Some)
    }

    /// Sequential access: queues decodes of the chunks after the one holding `offset` on the
    /// shared read-ahead workers, so they are ready (or under way) when the reader gets there.
    fn read_ahead(&mut self, offset: u64) -> Result<()> {
        let horizon = offset.saturating_add(READAHEAD_BYTES).min(self.size);
        let covered = |w: &[Extent]| {
            let (Some(first), Some(last)) = (w.first(), w.last()) else {
                return false;
            };
            first.offset <= offset
                && (last.offset + last.len as u64 >= horizon
                    || w.iter().filter(|e| e.offset > offset).count() >= READAHEAD_CHUNKS)
        };
        if !covered(&self.window) {
            self.load_window(offset)?;
        }
        let mut ahead_to = self.ahead_to;
        let following = (0..self.window.len()).filter(|&i| self.window[i].offset > offset);
        for (queued, i) in following.enumerate() {
            let e = self.window[i];
            if queued >= READAHEAD_CHUNKS || (queued >= 2 && e.offset >= horizon) {
                break;
            }
            if e.offset < self.ahead_to {
                continue; // queued by an earlier read
            }
            let name = self.name.clone();
            self.cache.prefetch(
                &self.store,
                e.chunk,
                self.window_at[i].take(),
                Box::new(move |store| {
                    let name = name.render(store);
                    format!("{name}, chunk at offset {} (read-ahead)", e.offset)
                }),
            );
            ahead_to = ahead_to.max(e.offset + e.len as u64);
        }
        self.ahead_to = ahead_to;
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at end of capsule.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.note_read(offset, buf.len())?;
        self.copy_out(offset, buf)
    }

    /// [`CapsuleReader::read_at`] without a copy when the bytes asked for lie in one chunk:
    /// then it returns the chunk's decoded bytes (shared with the cache) and the range of
    /// them asked for, so a reply can be sent straight from them. Otherwise it fills `buf`.
    pub fn read_shared_or_into(&mut self, offset: u64, buf: &mut [u8]) -> Result<ReadOut> {
        self.note_read(offset, buf.len())?;
        if offset < self.size {
            let e = self.extent_at(offset)?;
            let within = (offset - e.offset) as usize;
            let want = buf.len().min((self.size - offset) as usize);
            let in_one_chunk = within + want <= e.len as usize;
            // copy_out decodes only the segments under such a read.
            if in_one_chunk && !self.reads_in_part(&e, want) {
                let data = self.decoded(&e)?;
                if data.len() >= within + want {
                    self.last_end = Some(offset + want as u64);
                    return Ok(ReadOut::Shared(data, within..within + want));
                }
            }
        }
        self.copy_out(offset, buf).map(ReadOut::Copied)
    }

    /// Bookkeeping of a read of `len` bytes at `offset`: sequential or random, and read-ahead.
    fn note_read(&mut self, offset: u64, len: usize) -> Result<()> {
        let slack = (len as u64 * 4).clamp(SEQUENTIAL_SLACK_MIN, SEQUENTIAL_SLACK);
        let sequential = match self.last_end {
            None => offset == 0,
            Some(end) => offset.abs_diff(end) <= slack,
        };
        self.random = !sequential;
        self.streak = if sequential { self.streak + 1 } else { 0 };
        if !sequential {
            self.ahead_to = 0;
        }
        // Read ahead from the start of a file, or once two reads in a row followed each
        // other: a random read that happens to land near the previous one is not a stream.
        if sequential && (offset == 0 || self.streak >= 2) && offset < self.size {
            self.read_ahead(offset)?;
        }
        Ok(())
    }

    /// Whether a read of `want` bytes of extent `e`'s chunk authenticates and decrypts just
    /// the segments under it instead of the whole chunk: a small read out of sequence, unless
    /// the chunk is decoded already.
    fn reads_in_part(&self, e: &Extent, want: usize) -> bool {
        self.random && want * 2 < e.len as usize && !self.cache.contains(&e.chunk)
    }

    /// The decoded bytes of extent `e`'s chunk (from the cache, or loaded into it).
    fn decoded(&mut self, e: &Extent) -> Result<Arc<Vec<u8>>> {
        let known = std::cell::Cell::new(self.take_location(e));
        let (name, store) = (&self.name, &self.store);
        self.cache.get_or_load(&e.chunk, &|| {
            load_chunk_at(store, &e.chunk, known.take(), &|| {
                format!("{}, chunk at offset {}", name.render(store), e.offset)
            })
        })
    }

    /// Copies the bytes at `offset` into `buf` (see [`CapsuleReader::read_at`]).
    fn copy_out(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0usize;
        while done < buf.len() && offset + (done as u64) < self.size {
            let pos = offset + done as u64;
            let e = self.extent_at(pos)?;
            let name = || self.name.render(&self.store);
            let store = &self.store;
            let within = (pos - e.offset) as usize;
            let want = (e.len as usize - within).min(buf.len() - done);
            if self.reads_in_part(&e, want) {
                let out = &mut buf[done..done + want];
                let part = load_chunk_part(store, &self.cache, &e.chunk, within, out, &|| {
                    format!("{}, chunk at offset {}", name(), e.offset)
                })?;
                if let Some(n) = part {
                    done += n;
                    if n < want {
                        return Err(SpaceError::Integrity {
                            context: format!("{} at offset {pos}", name()),
                            chunk: e.chunk,
                            reason: "chunk shorter than its extent".into(),
                        });
                    }
                    continue;
                }
            }
            let data = self.decoded(&e)?;
            let n = (data.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        self.last_end = Some(offset + done as u64);
        Ok(done)
    }
}

/// Streams a capsule's stored bytes chunk by chunk, in order, decoding ahead in parallel.
/// `sink` receives each chunk's plaintext; returning an error stops the stream.
pub fn stream_chunks(
    store: &Store,
    node: &Node,
    name: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    stream_extents(store, node.ino, node.size, name, sink)
}

/// [`stream_chunks`] over the extents filed under `ino` (a node or a derived entry), which
/// must cover exactly `size` bytes.
pub fn stream_extents(
    store: &Store,
    ino: Ino,
    size: u64,
    name: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let n_workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let depth = n_workers * 2;
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Extent, Option<ChunkLocation>)>(depth);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Result<Vec<u8>>)>(depth);
    std::thread::scope(|scope| {
        for _ in 0..n_workers {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((seq, e, located)) = job else { return };
                    let context = || format!("{name}, chunk {seq} at offset {}", e.offset);
                    let r = load_chunk_in_order(store, &e.chunk, located, &context);
                    if done_tx.send((seq, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Only workers hold the job receiver now: if they all stop, the feeder's send fails.
        drop(job_rx);
        // Feeder: walks the extent list in windows, so memory is bounded by the queue depth.
        let feeder = scope.spawn(move || -> Result<u64> {
            let mut offset = 0u64;
            let mut seq = 0u64;
            while offset < size {
                let window = store.meta.extents_located_from(ino, offset, WINDOW)?;
                if window.is_empty() {
                    break;
                }
                for (e, located) in window {
                    if e.offset < offset {
                        continue;
                    }
                    offset = e.offset + e.len as u64;
                    if job_tx.send((seq, e, located)).is_err() {
                        return Ok(seq);
                    }
                    seq += 1;
                }
            }
            Ok(seq)
        });
        let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut next = 0u64;
        let mut total = 0u64;
        let mut result: Result<()> = Ok(());
        for (seq, r) in done_rx.iter() {
            match r {
                Ok(d) => {
                    pending.insert(seq, d);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            while let Some(d) = pending.remove(&next) {
                total += d.len() as u64;
                if let Err(e) = sink(&d) {
                    result = Err(e);
                    break;
                }
                next += 1;
            }
            if result.is_err() {
                break;
            }
        }
        // Dropping the receiver stops the workers; the feeder stops when they do.
        drop(done_rx);
        let fed = feeder.join().expect("feeder thread panicked")?;
        result?;
        if next != fed || total != size {
            return Err(SpaceError::Integrity {
                context: format!("{name}: chunks cover {total} of {size} bytes"),
                chunk: ChunkId([0; 32]),
                reason: "chunk list does not match the capsule size".into(),
            });
        }
        Ok(total)
    })
}
