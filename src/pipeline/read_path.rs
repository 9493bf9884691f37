//! The read path: extent lookup → fetch → authenticate/decrypt → decompress → verify id.
//!
//! Two shapes: [`CapsuleReader::read_at`] for random access (offsets map to chunks through the
//! metadata index, never by reading earlier chunks; decoded chunks are kept in a shared
//! [`ChunkCache`]), and [`stream_chunks`] for whole-capsule reads, which decodes ahead in
//! parallel workers and hands chunks over in order. Neither holds more than a bounded number
//! of chunks, whatever the capsule's size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::error::{Result, SpaceError};
use crate::pipeline::chunk_codec;
use crate::store::meta::{Extent, Ino, Node};
use crate::store::{ChunkId, Store};

/// Decoded chunks shared by all readers, bounded by bytes (not entries).
pub struct ChunkCache {
    inner: Mutex<CacheState>,
    budget: u64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
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
        }
    }

    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
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
    let object = store.chunks.get(id).map_err(|e| {
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
    chunk_codec::decode(&store.keys, id, object).map_err(|e| {
        log::error!("{}: chunk {id} failed verification: {e}", context());
        SpaceError::Integrity {
            context: context(),
            chunk: *id,
            reason: e.to_string(),
        }
    })
}

/// How a capsule is named in errors: path if known, and UUID.
pub fn describe(node: &Node, path: &str) -> String {
    format!("capsule {path} ({})", node.uuid)
}

/// Random access to one version of a capsule's stored bytes.
pub struct CapsuleReader {
    store: Arc<Store>,
    cache: Arc<ChunkCache>,
    ino: Ino,
    size: u64,
    version: u64,
    name: String,
    /// A window of the extent list around the last read (sequential reads need one query per
    /// 64 chunks, random reads one per miss).
    window: Vec<Extent>,
}

const WINDOW: usize = 64;

impl CapsuleReader {
    pub fn new(
        store: Arc<Store>,
        cache: Arc<ChunkCache>,
        node: &Node,
        name: String,
    ) -> CapsuleReader {
        CapsuleReader {
            store,
            cache,
            ino: node.ino,
            size: node.size,
            version: node.version,
            name,
            window: Vec::new(),
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
        self.window = self.store.meta.extents_from(self.ino, offset, WINDOW)?;
        find(&self.window).ok_or_else(|| SpaceError::Integrity {
            context: format!("{} at offset {offset}", self.name),
            chunk: ChunkId([0; 32]),
            reason: "no chunk covers this offset (metadata damaged or capsule replaced)".into(),
        })
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at end of capsule.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0usize;
        while done < buf.len() && offset + (done as u64) < self.size {
            let pos = offset + done as u64;
            let e = self.extent_at(pos)?;
            let data = match self.cache.get(&e.chunk) {
                Some(d) => d,
                None => {
                    let name = &self.name;
                    let d = Arc::new(load_chunk(&self.store, &e.chunk, &|| {
                        format!("{name}, chunk at offset {}", e.offset)
                    })?);
                    self.cache.insert(e.chunk, Arc::clone(&d));
                    d
                }
            };
            let within = (pos - e.offset) as usize;
            let n = (data.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
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
    let n_workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let depth = n_workers * 2;
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Extent)>(depth);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Result<Vec<u8>>)>(depth);
    std::thread::scope(|scope| {
        for _ in 0..n_workers {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((seq, e)) = job else { return };
                    let r = load_chunk(store, &e.chunk, &|| {
                        format!("{name}, chunk {seq} at offset {}", e.offset)
                    });
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
            while offset < node.size {
                let window = store.meta.extents_from(node.ino, offset, WINDOW)?;
                if window.is_empty() {
                    break;
                }
                for e in window {
                    if e.offset < offset {
                        continue;
                    }
                    offset = e.offset + e.len as u64;
                    if job_tx.send((seq, e)).is_err() {
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
        if next != fed || total != node.size {
            return Err(SpaceError::Integrity {
                context: format!("{name}: chunks cover {total} of {} bytes", node.size),
                chunk: ChunkId([0; 32]),
                reason: "chunk list does not match the capsule size".into(),
            });
        }
        Ok(total)
    })
}
