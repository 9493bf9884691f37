//! Views ("one capsule, many views"): a capsule's bytes through a chain — the policy's on-read
//! chain (the default view) or one of its named `views:` — and the derived-output cache that
//! keeps each view's output in the store itself, so the chain runs once per distinct input.
//!
//! A derived entry is keyed by everything its bytes depend on (docs/FORMAT.md, "Derived
//! outputs"): the source content (its chunk ids), each module's sha256, its canonical args and
//! the ABI version. Change any of them and the key changes, so a stale entry is never found.
//! Entries are written like capsules (chunked, deduplicated, compressed, encrypted, durable
//! before one metadata commit), so a crash mid-write leaves nothing that can be served.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Space;
use crate::error::{Result, SpaceError};
use crate::pipeline::chunk_codec::EncodeSettings;
use crate::pipeline::read_path::{stream_chunks, stream_extents};
use crate::pipeline::transform::ModuleIdentity;
use crate::pipeline::{CapsuleReader, write_stream};
use crate::policy::{Chunking, Policy, TransformSpec};
use crate::store::meta::{Content, DerivedEntry, DerivedTotals, Ino, Node, NodeKind, now_ns};
use crate::store::{LockMode, Store};
use crate::wasm::{ABI_VERSION, ENGINE};

/// Domain separation for derived keys (bump to invalidate every entry on a format change).
const KEY_DOMAIN: &[u8] = b"space-derived-v1\0";

/// Output pieces queued between the chain and the cache writer.
const WRITER_QUEUE: usize = 8;

/// What produced a capsule's bytes or a derived entry: shown by `spacectl stat` and
/// `getfattr -n user.space.provenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub engine: String,
    pub abi: u32,
    /// Which view (derived entries only): `default` or the view's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Digest of the source content (derived entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub modules: Vec<ModuleProvenance>,
    /// The chain ran once per stored chunk (derived entries of chunk-local views).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chunk_local: bool,
    /// When it was produced (RFC 3339, UTC).
    pub produced: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleProvenance {
    pub name: String,
    pub sha256: String,
    pub args_sha256: String,
    /// `publisher (key fingerprint)` when the module's signature verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// Everything a view's bytes depend on, resolved for one capsule version.
#[derive(Debug, Clone)]
pub struct Derivation {
    pub key: [u8; 32],
    pub chain: Vec<TransformSpec>,
    /// Recorded with the cache entry (its `produced` time is set when the entry is written).
    pub provenance: Provenance,
    /// The capsule's policy allows caching and the store has a budget.
    pub cacheable: bool,
    /// Every transform declares `chunk_local`: the chain runs once per stored chunk.
    pub chunk_local: bool,
    /// Every transform declares `preserves_size`: the view is as long as the capsule.
    pub preserves_size: bool,
    /// How the cached output is encoded (the capsule's policy, compressed at zstd <= 1).
    pub settings: EncodeSettings,
}

/// A cache entry is re-creatable: zstd's fastest regular level keeps the writer from competing
/// with the chain the reader is waiting for (levels above 1 cost 2-3x the CPU on text for a
/// few percent of size).
fn cache_entry_settings(policy: &Policy) -> EncodeSettings {
    let mut fast = policy.clone();
    fast.compression.level = crate::policy::ZstdLevel(policy.compression.level.0.min(1));
    EncodeSettings::from(&fast)
}

/// Counters of this process's use of the derived-output cache (for `/.space/stats`).
#[derive(Debug, Default)]
pub struct DerivedCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stored: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub evicted: AtomicU64,
    /// Outputs not kept (read stopped early, failed, or larger than the budget).
    pub abandoned: AtomicU64,
}

/// Source digests per (inode, version): a version's extents never change.
pub(super) type SourceMemo = Mutex<LruCache<(Ino, u64), [u8; 32]>>;

pub(super) fn new_source_memo() -> SourceMemo {
    Mutex::new(LruCache::new(
        std::num::NonZeroUsize::new(4096).expect("non-zero"),
    ))
}

fn rfc3339_now() -> String {
    format!("{}Z", crate::util::utc_string(now_ns(), 'T'))
}

impl Space {
    /// The chain of `view` (None = the default view, i.e. the on-read chain) for `node`.
    pub fn view_chain(&self, node: &Node, view: Option<&str>) -> Result<Vec<TransformSpec>> {
        self.chain_in(node, &self.policy_of(node)?, view)
    }

    /// [`Space::view_chain`] for a policy already parsed.
    fn chain_in(
        &self,
        node: &Node,
        policy: &Policy,
        view: Option<&str>,
    ) -> Result<Vec<TransformSpec>> {
        policy.view_chain(view).ok_or_else(|| {
            let names: Vec<&str> = policy.views.keys().map(|k| &**k).collect();
            SpaceError::NotFound(format!(
                "{} has no view `{}` (its views: {})",
                self.describe(node),
                view.unwrap_or_default(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })
    }

    /// Provenance of the modules of `chain`, as they resolve now.
    pub fn chain_provenance(
        &self,
        chain: &[TransformSpec],
        what: &str,
    ) -> Result<(Vec<ModuleIdentity>, Provenance)> {
        let factory = self.transforms.as_ref().ok_or_else(|| {
            SpaceError::Transform(format!(
                "{what}: the policy has transforms but no WASM runtime is loaded"
            ))
        })?;
        let ids = factory
            .identify(chain)
            .map_err(|e| SpaceError::Transform(format!("{what}: {e}")))?;
        let trusted = &self.store.config.trusted_publishers;
        let modules = ids
            .iter()
            .map(|m| ModuleProvenance {
                name: m.name.clone(),
                sha256: m.sha256.clone(),
                args_sha256: m.args_sha256.clone(),
                signer: m.publisher.as_ref().map(|p| {
                    let fp = trusted
                        .get(p)
                        .and_then(|k| crate::wasm::verify::decode_verifying_key(k).ok())
                        .map(|k| crate::wasm::verify::key_fingerprint(&k))
                        .unwrap_or_else(|| "key unknown".into());
                    format!("{p} ({fp})")
                }),
            })
            .collect();
        Ok((
            ids,
            Provenance {
                engine: ENGINE.into(),
                abi: ABI_VERSION,
                view: None,
                source: None,
                modules,
                chunk_local: false,
                produced: rfc3339_now(),
            },
        ))
    }

    /// Digest of a capsule version's content: its size and ordered chunk ids (which are MACs
    /// of the plaintext, so equal digests mean equal bytes).
    fn source_digest(&self, node: &Node) -> Result<[u8; 32]> {
        let memo_key = (node.ino, node.version);
        if let Some(d) = self
            .source_memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&memo_key)
        {
            return Ok(*d);
        }
        let mut h = Sha256::new();
        h.update(node.size.to_le_bytes());
        let mut offset = 0u64;
        while offset < node.size {
            let window = self.store.meta.extents_from(node.ino, offset, 1024)?;
            let Some(last) = window.last() else { break };
            let next = last.offset + last.len as u64;
            for e in window.iter().filter(|e| e.offset >= offset) {
                h.update(e.offset.to_le_bytes());
                h.update(e.len.to_le_bytes());
                h.update(e.chunk.0);
            }
            if next <= offset {
                break;
            }
            offset = next;
        }
        let d: [u8; 32] = h.finalize().into();
        self.source_memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(memo_key, d);
        Ok(d)
    }

    /// Resolves what `view` of `node` depends on. `None` when the view has no transforms (its
    /// bytes are the stored bytes).
    pub fn derivation(&self, node: &Node, view: Option<&str>) -> Result<Option<Derivation>> {
        if node.kind != NodeKind::File {
            return Err(SpaceError::InvalidArgument(format!(
                "{} is not a regular file",
                self.describe(node)
            )));
        }
        let policy = self.policy_of(node)?;
        let chain = self.chain_in(node, &policy, view)?;
        if chain.is_empty() {
            return Ok(None);
        }
        let what = self.describe(node);
        let (ids, mut prov) = self.chain_provenance(&chain, &what)?;
        let source = self.source_digest(node)?;
        let chunk_local = Policy::is_chunk_local(&chain);
        let preserves_size = Policy::is_size_preserving(&chain);
        let mut h = Sha256::new();
        h.update(KEY_DOMAIN);
        h.update(ABI_VERSION.to_le_bytes());
        h.update([u8::from(chunk_local) | (u8::from(preserves_size) << 1)]);
        h.update(source);
        h.update((ids.len() as u64).to_le_bytes());
        for m in &ids {
            h.update(m.sha256.as_bytes());
            h.update(b"\0");
            h.update(m.args_sha256.as_bytes());
            h.update(b"\0");
        }
        prov.view = Some(view.unwrap_or("default").to_string());
        prov.chunk_local = chunk_local;
        prov.source = Some(hex::encode(source));
        Ok(Some(Derivation {
            key: h.finalize().into(),
            chain,
            provenance: prov,
            cacheable: policy.cache && self.store.config.derived_cache_bytes > 0,
            chunk_local,
            preserves_size,
            settings: cache_entry_settings(&policy),
        }))
    }

    /// The materialized output of a derivation, if the cache has it, without counting a use
    /// (for sizes in `stat`).
    pub fn materialized(&self, d: &Derivation) -> Result<Option<DerivedEntry>> {
        if !d.cacheable {
            return Ok(None);
        }
        self.store.meta.derived_get(&d.key)
    }

    /// The materialized output of a derivation for a read: counts a hit or a miss, and moves
    /// the entry to the young end of the LRU order.
    pub fn cached(&self, d: &Derivation) -> Result<Option<DerivedEntry>> {
        let entry = self.materialized(d)?;
        match &entry {
            Some(e) => {
                self.derived.hits.fetch_add(1, Ordering::Relaxed);
                self.store.meta.derived_touch(e.ino, now_ns())?;
            }
            None if d.cacheable => {
                self.derived.misses.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        Ok(entry)
    }

    /// Random access to a materialized view.
    pub fn entry_reader(&self, entry: &DerivedEntry, name: String) -> CapsuleReader {
        CapsuleReader::for_extents(
            Arc::clone(&self.store),
            Arc::clone(&self.cache),
            entry.ino,
            entry.size,
            0,
            crate::pipeline::read_path::ReaderName::Text(name.into()),
        )
    }

    /// Starts storing a view's output as it is produced; `None` when it is not to be cached.
    pub fn begin_derived(&self, d: &Derivation) -> Option<DerivedWriter> {
        d.cacheable
            .then(|| DerivedWriter::start(Arc::clone(&self.store), Arc::clone(&self.derived), d))
    }

    /// Streams `view` of `node` to `out`: from the cache when materialized, else through the
    /// chain, storing the output as it goes. Returns the bytes written.
    pub fn read_view_to(
        &self,
        node: &Node,
        view: Option<&str>,
        out: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<u64> {
        let what = self.describe(node);
        let Some(d) = self.derivation(node, view)? else {
            return self.read_to(node, super::View::Raw, out, progress);
        };
        let io_err = |e: std::io::Error| SpaceError::io("writing output", e);
        if let Some(entry) = self.cached(&d)? {
            let mut written = 0u64;
            stream_extents(
                &self.store,
                entry.ino,
                entry.size,
                &format!("{what} (cached view)"),
                &mut |b| {
                    out.write_all(b).map_err(io_err)?;
                    written += b.len() as u64;
                    progress(written);
                    Ok(())
                },
            )?;
            return Ok(written);
        }
        let mut writer = self.begin_derived(&d);
        let mut t = self.open_chain(&d.chain, &what)?;
        let fail =
            |e: crate::pipeline::TransformError| SpaceError::Transform(format!("{what}: {e}"));
        let mut buf = Vec::new();
        let mut written = 0u64;
        let mut read = 0u64;
        stream_chunks(&self.store, node, &what, &mut |data| {
            buf.clear();
            if d.chunk_local {
                // A fresh instance per stored chunk: the same output a random read computes.
                let mut c = self.open_chain(&d.chain, &what)?;
                c.process(data, &mut buf).map_err(fail)?;
                c.finish(&mut buf).map_err(fail)?;
                if d.preserves_size && buf.len() != data.len() {
                    return Err(size_broken(&what, read, data.len(), buf.len()));
                }
            } else {
                t.process(data, &mut buf).map_err(fail)?;
            }
            out.write_all(&buf).map_err(io_err)?;
            written += buf.len() as u64;
            if let Some(w) = writer.as_mut() {
                w.push(&buf);
            }
            read += data.len() as u64;
            progress(read);
            Ok(())
        })?;
        buf.clear();
        if !d.chunk_local {
            t.finish(&mut buf).map_err(fail)?;
        }
        out.write_all(&buf).map_err(io_err)?;
        written += buf.len() as u64;
        if d.preserves_size && written != node.size {
            return Err(SpaceError::Transform(format!(
                "{what}: the chain declares preserves_size but gave {written} bytes from {}",
                node.size
            )));
        }
        if let Some(mut w) = writer {
            w.push(&buf);
            // The output is already delivered: failing to cache it is not the reader's error.
            if let Err(e) = w.finish() {
                log::warn!("{what}: view output not cached: {e}");
            }
        }
        Ok(written)
    }

    /// Materializes `view` of `node` ahead of reads (`spacectl cache warm`).
    pub fn warm(
        &self,
        node: &Node,
        view: Option<&str>,
        progress: &dyn Fn(u64),
    ) -> Result<Option<DerivedEntry>> {
        let Some(d) = self.derivation(node, view)? else {
            return Ok(None);
        };
        if !d.cacheable {
            return Err(SpaceError::InvalidArgument(format!(
                "{}: caching is off (policy `cache: false` or store derived_cache_bytes 0)",
                self.describe(node)
            )));
        }
        if let Some(e) = self.store.meta.derived_get(&d.key)? {
            return Ok(Some(e));
        }
        self.read_view_to(node, view, &mut std::io::sink(), progress)?;
        self.store.meta.derived_get(&d.key)
    }

    /// `node` itself if it is a capsule, else every capsule below it (depth first, by name).
    pub fn files_under(&self, node: &Node, path: &str) -> Result<Vec<(Node, String)>> {
        let mut out = Vec::new();
        let mut stack = vec![(node.clone(), path.to_string())];
        while let Some((n, p)) = stack.pop() {
            match n.kind {
                NodeKind::File => out.push((n, p)),
                NodeKind::Dir => {
                    let mut children = self.store.meta.list(n.ino)?;
                    children.reverse();
                    for (name, child) in children {
                        let name = String::from_utf8_lossy(&name);
                        stack.push((child, format!("{}/{name}", p.trim_end_matches('/'))));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Totals of the derived-output cache and this process's counters.
    pub fn derived_totals(&self) -> Result<DerivedTotals> {
        self.store.meta.derived_totals()
    }

    pub fn derived_counters(&self) -> &DerivedCounters {
        &self.derived
    }

    /// Drops every cached view output, then collects the chunks only they used.
    pub fn cache_clear(&self) -> Result<(DerivedTotals, super::GcReport)> {
        let dropped = self.store.meta.derived_clear()?;
        let gc = self.gc()?;
        Ok((dropped, gc))
    }
}

/// A chunk-local chain declared `preserves_size` and broke it.
pub fn size_broken(what: &str, offset: u64, input: usize, output: usize) -> SpaceError {
    SpaceError::Transform(format!(
        "{what}: the chain declares preserves_size but turned the {input}-byte chunk at offset \
         {offset} into {output} bytes"
    ))
}

/// One output piece for the cache writer.
enum Piece {
    Data(Vec<u8>),
    End,
}

/// Feeds the write path from the queue; a dropped sender without `End` is an abort.
struct QueueReader {
    rx: Receiver<Piece>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for QueueReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Ok(Piece::End) => self.ended = true,
                Err(_) => {
                    return Err(std::io::Error::other(
                        "view output abandoned before its end",
                    ));
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Stores a view's output as a derived entry while the reader consumes it: a writer thread
/// runs the normal write path over a bounded queue, and [`DerivedWriter::finish`] commits the
/// entry. Dropped without `finish` (read stopped early, failed, restarted), it stores nothing
/// that is referenced: the objects already written are unreferenced and gc removes them.
pub struct DerivedWriter {
    tx: Option<SyncSender<Piece>>,
    worker: Option<std::thread::JoinHandle<Result<Content>>>,
    store: Arc<Store>,
    counters: Arc<DerivedCounters>,
    key: [u8; 32],
    provenance: String,
    failed: bool,
}

impl DerivedWriter {
    fn start(store: Arc<Store>, counters: Arc<DerivedCounters>, d: &Derivation) -> DerivedWriter {
        let (tx, rx) = sync_channel::<Piece>(WRITER_QUEUE);
        let settings = d.settings;
        let worker_store = Arc::clone(&store);
        let worker = std::thread::Builder::new()
            .name("space-derive".into())
            .spawn(move || {
                // Yield to the reader's thread (nice 10; the write path's workers inherit it).
                // SAFETY: setpriority on the calling thread (who = 0); failure only loses a hint.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                let store = worker_store;
                let _guard = store.lock(LockMode::Shared)?;
                let mut input = QueueReader {
                    rx,
                    cur: Vec::new(),
                    pos: 0,
                    ended: false,
                };
                let (content, _) =
                    write_stream(&store, &mut input, Chunking::default(), settings, &|_| {})?;
                Ok(content)
            })
            .ok();
        DerivedWriter {
            failed: worker.is_none(),
            tx: Some(tx),
            worker,
            store,
            counters,
            key: d.key,
            // Serialized here, not per derivation: `stat` of a view resolves one every time.
            provenance: serde_yaml::to_string(&Provenance {
                produced: rfc3339_now(),
                ..d.provenance.clone()
            })
            .expect("provenance serializes"),
        }
    }

    /// Queues output bytes (blocks while the writer is a queue's length behind).
    pub fn push(&mut self, data: &[u8]) {
        if self.failed || data.is_empty() {
            return;
        }
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Piece::Data(data.to_vec())).is_ok());
        if !sent {
            // The writer stopped (e.g. disk full): keep serving the reader, cache nothing.
            self.failed = true;
        }
    }

    /// Ends the output and commits the entry (then evicts past the budget).
    pub fn finish(mut self) -> Result<DerivedEntry> {
        let tx = self.tx.take().expect("finish called once");
        let _ = tx.send(Piece::End);
        drop(tx);
        let worker = self.worker.take();
        let content = match worker.map(|w| w.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(SpaceError::Transform("cache writer panicked".into())),
            None => return Err(SpaceError::Transform("cache writer did not start".into())),
        };
        let budget = self.store.config.derived_cache_bytes;
        if content.size > budget {
            self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            return Err(SpaceError::InvalidArgument(format!(
                "view output of {} bytes is larger than the cache budget ({budget} bytes)",
                content.size
            )));
        }
        let entry = self
            .store
            .meta
            .derived_put(&self.key, &content, &self.provenance)?;
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
        self.counters
            .stored_bytes
            .fetch_add(entry.size, Ordering::Relaxed);
        let dropped = self.store.meta.derived_evict(budget, Some(entry.ino))?;
        self.counters
            .evicted
            .fetch_add(dropped.entries, Ordering::Relaxed);
        Ok(entry)
    }
}

impl Drop for DerivedWriter {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Abandoned: closing the queue without `End` makes the writer fail, storing nothing.
            drop(tx);
            self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = self.worker.take() {
                let _ = w.join();
            }
        }
    }
}
