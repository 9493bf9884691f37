//! File data: open, read, write, flush/fsync/release (the commits), truncate.
//!
//! Writes go to the inode's [`WriteBuffer`]; a commit streams base + overlay through
//! `Space::write_content` (on-write chain, chunking, dedup, encryption) and replaces the
//! capsule's content in one metadata transaction. `flush` (every `close`), `fsync` and
//! `release` commit, so after `close()` or `fsync()` returns the data survives a crash.

use std::sync::{Arc, Mutex};

use super::handles::{Eager, Handle, HandleKind, InodeState, OpenInode, PendingStore};
use super::inode_table::{InoKind, classify};
use super::write_buffer::{MergedReader, WriteBuffer};
use super::{Attr, Caller, FsResult, SpaceFs, Stats, errno, lock};
use crate::error::SpaceError;
use crate::pipeline::read_path::{ReaderName, load_chunk_at};
use crate::pipeline::{CapsuleReader, ReadOut};
use crate::store::meta::{ChunkLocation, Node, NodeKind, SetAttr};

/// Largest file size accepted (writes and truncates beyond it fail with EFBIG).
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// How the kernel should treat an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Bypass the page cache (transformed capsules, virtual files).
    pub direct_io: bool,
    /// The page cache still holds this version: keep it.
    pub keep_cache: bool,
}

fn read_exact_at(r: &mut CapsuleReader, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = r
            .read_at(offset + done as u64, &mut buf[done..])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if n == 0 {
            // The committed version is shorter than the overlay expects: a bug, never zeros.
            return Err(std::io::Error::other(format!(
                "committed content ends at {} (expected more)",
                offset + done as u64
            )));
        }
        done += n;
    }
    Ok(())
}

/// Where [`SpaceFs::read_filled`] left a read's bytes.
enum Filled {
    Owned(Vec<u8>),
    /// The first n bytes of the caller's scratch buffer.
    Scratch(usize),
    /// Bytes of a decoded chunk (a read inside one chunk is replied from it, uncopied).
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
}

/// The first `size` bytes of the reused request buffer (grown if needed).
fn sized(scratch: &mut Vec<u8>, size: usize) -> &mut [u8] {
    if scratch.len() < size {
        scratch.resize(size, 0);
    }
    &mut scratch[..size]
}

/// Overlay bytes kept in memory before the leading chunks of a file written front to back are
/// stored ahead of the commit (instead of spilling to a temporary file).
fn early_store_threshold(mem_limit: usize) -> usize {
    mem_limit.max(4 << 20)
}

impl SpaceFs {
    /// Reads `[offset, offset + buf.len())` of content stored ahead of the commit.
    /// `node` is only named in messages.
    fn read_eager(
        &self,
        e: &Eager,
        node: &Node,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = e
                .chunks
                .partition_point(|c| c.extent.offset + c.extent.len as u64 <= pos);
            let Some(c) = e.chunks.get(i).filter(|c| c.extent.offset <= pos) else {
                return Err(std::io::Error::other(format!(
                    "{}: no chunk stored ahead covers offset {pos}",
                    self.name_of(node)
                )));
            };
            let ext = c.extent;
            let known = c.loc.map(|l| ChunkLocation {
                loc: Some(l),
                stored_len: c.stored_len,
                inline: None,
                head: None,
            });
            let store = &self.space.store;
            let data = self
                .space
                .cache
                .get_or_load(&ext.chunk, &|| {
                    load_chunk_at(store, &ext.chunk, known.clone(), &|| {
                        let name = self.name_of(node);
                        format!("{name}, chunk at offset {} (not committed yet)", ext.offset)
                    })
                })
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let within = (pos - ext.offset) as usize;
            let n = (data.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// Starts storing the leading chunks of a file being written front to back, so its
    /// overlay stays small instead of spilling to a temporary file: the buffered bytes past the
    /// base are copied and handed to a background job, and the write returns while they are
    /// encoded (the job is settled when the next batch is due, or by the commit). Only for new
    /// content (the overlay's base is empty, or is what earlier jobs stored), without an
    /// on-write chain.
    fn store_early(&self, st: &mut InodeState) -> crate::Result<()> {
        self.settle_early(st);
        let buf = st.buf.as_ref().expect("called with a buffer");
        let from = buf.base_len();
        if !buf.is_append_only()
            || from != st.eager.as_ref().map_or(0, |e| e.len)
            || buf.size() == from
        {
            return Ok(());
        }
        let to = buf.size();
        // The previous batch's buffer, reused: only bytes past its old length are zeroed
        // first (all are overwritten by the read below).
        let mut data = std::mem::take(&mut st.spare_batch);
        data.resize((to - from) as usize, 0);
        let mut nobase = |_: u64, _: &mut [u8]| -> std::io::Result<()> {
            Err(std::io::Error::other("append-only overlay read its base"))
        };
        buf.read(from, &mut data, &mut nobase)
            .map_err(|e| SpaceError::io("reading the write buffer", e))?;
        if st.eager.is_none() {
            st.eager = Some(Eager {
                chunks: Vec::new(),
                len: 0,
                chunks_stored: 0,
                chunks_reused: 0,
                _hold: Box::new(self.space.hold_for_writing()?),
            });
        }
        let space = Arc::clone(&self.space);
        let node = st.node.clone();
        let job = std::thread::Builder::new()
            .name("space-early-store".into())
            .spawn(move || {
                let r = space.store_prefix(&node, &data);
                (r, data)
            })
            .map_err(|e| SpaceError::io("starting the early store", e))?;
        st.pending = Some(PendingStore { job, from, to });
        Ok(())
    }

    /// Waits for the background store (if any) and moves what it stored from the buffer to
    /// the eager chunks. Every change to the buffer other than an append, and every commit,
    /// settles first, so the job's bytes are still exactly what it was given. A failed job is
    /// not fatal: its bytes are still in the buffer (which may spill to a temporary file).
    pub(crate) fn settle_early(&self, st: &mut InodeState) {
        let Some(p) = st.pending.take() else { return };
        let result = match p.job.join() {
            Ok((r, batch)) => {
                st.spare_batch = batch;
                r
            }
            Err(_) => Err(SpaceError::io(
                "early store",
                std::io::Error::other("the background job panicked"),
            )),
        };
        match result {
            Ok((content, report)) => {
                let eager = st.eager.as_mut().expect("a job runs with an Eager");
                eager.chunks.extend(content.chunks.into_iter().map(|mut c| {
                    c.extent.offset += p.from;
                    c
                }));
                eager.len = p.from + content.size;
                eager.chunks_stored += report.chunks - report.reused_chunks;
                eager.chunks_reused += report.reused_chunks;
                let len = eager.len;
                st.buf
                    .as_mut()
                    .expect("a job runs with a buffer")
                    .absorb(len);
            }
            Err(e) => {
                log::warn!(
                    "inode {}: storing written data early failed: {e}",
                    st.node.ino
                );
                if st.eager.as_ref().is_some_and(|e| e.chunks.is_empty()) {
                    st.eager = None;
                }
            }
        }
    }

    pub(crate) fn name_of(&self, node: &Node) -> String {
        self.space.describe(node)
    }

    pub(crate) fn new_reader(&self, node: &Node, name: ReaderName) -> CapsuleReader {
        CapsuleReader::new(
            Arc::clone(&self.space.store),
            Arc::clone(&self.space.cache),
            node,
            name,
        )
    }

    /// Registers one more handle on `node`'s inode state.
    pub(crate) fn acquire(&self, node: &Node, on_write: bool) -> Arc<OpenInode> {
        let mut map = lock(&self.open);
        let inode = map
            .entry(node.ino)
            .or_insert_with(|| Arc::new(OpenInode::new(node.clone(), on_write)))
            .clone();
        let mut st = lock(&inode.state);
        st.handles += 1;
        // Nobody here has changes: pick up versions committed elsewhere (spacectl).
        if st.buf.is_none() && !st.dirty && st.node.version != node.version {
            st.node = node.clone();
        }
        st.on_write = on_write;
        drop(st);
        inode
    }

    /// Drops one handle; the last one removes the state and purges an orphan.
    fn unacquire(&self, inode: &Arc<OpenInode>) {
        let mut map = lock(&self.open);
        let mut st = lock(&inode.state);
        st.handles = st.handles.saturating_sub(1);
        if st.handles > 0 {
            return;
        }
        let orphan = st.orphan;
        drop(st);
        map.remove(&inode.ino);
        drop(map);
        if orphan {
            if let Err(e) = self.space.store.meta.purge_orphan(inode.ino) {
                log::warn!("inode {}: removing unlinked file failed: {e}", inode.ino);
            }
            lock(&self.transformed_sizes).retain(|k, _| k.0 != inode.ino);
            lock(&self.cached_versions).remove(&inode.ino);
        }
    }

    fn ensure_buffer<'s>(&self, st: &'s mut InodeState) -> FsResult<&'s mut WriteBuffer> {
        if st.buf.is_none() {
            if st.on_write && st.node.size > 0 {
                log::warn!(
                    "{}: has an on-write transform chain; it can only be rewritten whole \
                     (open with O_TRUNC, or truncate to 0 first) — see docs/SEMANTICS.md",
                    self.name_of(&st.node)
                );
                return Err(libc::EPERM);
            }
            let base = if st.on_write { 0 } else { st.node.size };
            st.buf = Some(WriteBuffer::new(
                base,
                self.opts.write_mem_limit,
                &self.spill_dir,
            ));
        }
        Ok(st.buf.as_mut().expect("created above"))
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        match classify(ino) {
            InoKind::Store(i) => self.open_node(self.node(i)?, write),
            InoKind::Raw(i) => {
                if write {
                    return Err(libc::EROFS);
                }
                let node = self.node(i)?;
                if node.kind != NodeKind::File {
                    return Err(if node.kind == NodeKind::Dir {
                        libc::EISDIR
                    } else {
                        libc::ELOOP
                    });
                }
                let reader = self.new_reader(&node, ReaderName::of_node(&node, " (raw)"));
                let fh = self.handles.insert(Handle {
                    kind: HandleKind::Reader {
                        reader: Mutex::new(reader),
                        inode: None,
                    },
                });
                Ok(Opened {
                    fh,
                    direct_io: false,
                    keep_cache: false,
                })
            }
            InoKind::Stats => {
                if write {
                    return Err(libc::EACCES);
                }
                let text = self.stats.render(&self.space).into_bytes();
                let fh = self.handles.insert(Handle {
                    kind: HandleKind::Bytes(text),
                });
                Ok(Opened {
                    fh,
                    direct_io: true,
                    keep_cache: false,
                })
            }
            InoKind::View { view, ino: i } => {
                if write {
                    return Err(libc::EROFS);
                }
                let node = self.node(i)?;
                match node.kind {
                    NodeKind::File => {}
                    NodeKind::Dir => return Err(libc::EISDIR),
                    _ => return Err(libc::ENOENT),
                }
                let name = self.view_name(view)?;
                self.open_view(&node, Some(&name), view)
            }
            InoKind::SpaceDir | InoKind::ById | InoKind::ViewsDir => Err(libc::EISDIR),
            InoKind::Unknown => Err(libc::ENOENT),
        }
    }

    /// Opens a stored node (just read, or just created) for reading or writing.
    fn open_node(&self, node: Node, write: bool) -> FsResult<Opened> {
        match node.kind {
            NodeKind::Dir => return Err(libc::EISDIR),
            NodeKind::Symlink => return Err(libc::ELOOP),
            NodeKind::File => {}
            // FIFOs, sockets, devices: the kernel opens those itself.
            _ => return Err(libc::ENXIO),
        }
        if write {
            self.check_writable()?;
        }
        let chains = self.chains(&node);
        if chains.on_read && !write {
            return self.open_view(&node, None, 0);
        }
        let inode = self.acquire(&node, chains.on_write);
        // A capsule with an on-write chain may be opened for writing, but only a whole
        // rewrite is accepted: the first write fails with EPERM unless the content was
        // truncated to 0 first (O_TRUNC does that) — see `ensure_buffer`.
        let direct_io = chains.on_read || chains.on_write;
        let keep_cache = !direct_io && {
            let mut cv = lock(&self.cached_versions);
            let keep = cv.get(&node.ino) == Some(&node.version);
            cv.insert(node.ino, node.version);
            keep
        };
        let fh = self.handles.insert(Handle {
            kind: HandleKind::File {
                inode,
                write,
                reader: Mutex::new(None),
            },
        });
        Ok(Opened {
            fh,
            direct_io,
            keep_cache,
        })
    }

    /// Creates and opens a new capsule.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let node = self.create_file(parent, name, mode, caller)?;
        let attr = self.node_attr(&node);
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        Ok((attr, self.open_node(node, write)?))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.read_with(fh, offset, size, |b| b.to_vec())
    }

    /// Reads and hands the bytes to `reply` (the FUSE reply, which copies them to the kernel):
    /// reads of stored bytes land in a per-thread buffer reused across requests, so a 1 MiB
    /// read costs no allocation, page faults or zeroing.
    pub fn read_with<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(&[u8]) -> R,
    ) -> FsResult<R> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let filled = self.read_filled(fh, offset, size as usize, &mut scratch)?;
            let bytes = match &filled {
                Filled::Owned(v) => &v[..],
                Filled::Scratch(n) => &scratch[..*n],
                Filled::Shared(chunk, range) => &chunk[range.clone()],
            };
            Stats::inc(&self.stats.read_requests);
            Stats::add(&self.stats.bytes_read, bytes.len() as u64);
            Ok(reply(bytes))
        })
    }

    fn read_filled(
        &self,
        fh: u64,
        offset: u64,
        size: usize,
        scratch: &mut Vec<u8>,
    ) -> FsResult<Filled> {
        let into_scratch =
            |scratch: &mut Vec<u8>, read: &mut dyn FnMut(&mut [u8]) -> FsResult<usize>| {
                read(sized(scratch, size)).map(Filled::Scratch)
            };
        let from_reader = |scratch: &mut Vec<u8>, reader: &mut CapsuleReader| match reader
            .read_shared_or_into(offset, sized(scratch, size))
        {
            Ok(ReadOut::Shared(chunk, range)) => Ok(Filled::Shared(chunk, range)),
            Ok(ReadOut::Copied(n)) => Ok(Filled::Scratch(n)),
            Err(e) => Err(errno(e)),
        };
        let h = self.handles.get(fh).ok_or(libc::EBADF)?;
        let out = match &h.kind {
            HandleKind::File { inode, reader, .. } => {
                let st = lock(&inode.state);
                let mut r = lock(reader);
                if r.as_ref().map(|r| r.version()) != Some(st.node.version) {
                    *r = Some(self.new_reader(&st.node, ReaderName::of_node(&st.node, "")));
                }
                let reader = r.as_mut().expect("created above");
                match &st.buf {
                    Some(buf) => {
                        let mut out = vec![0u8; size];
                        let eager = st.eager.as_ref();
                        let mut base = |off: u64, b: &mut [u8]| match eager {
                            Some(e) => self.read_eager(e, &st.node, off, b),
                            None => read_exact_at(reader, off, b),
                        };
                        let n = buf.read(offset, &mut out, &mut base).map_err(|e| {
                            log::error!("{}: reading at {offset}: {e}", self.name_of(&st.node));
                            libc::EIO
                        })?;
                        out.truncate(n);
                        out
                    }
                    None => {
                        drop(st);
                        return from_reader(scratch, reader);
                    }
                }
            }
            HandleKind::Stream {
                inode,
                view,
                stream,
            } => {
                let mut s = lock(stream);
                let filled = into_scratch(scratch, &mut |buf| {
                    s.read_into(offset, buf).map_err(|e| {
                        // Names capsule, transform and chunk; only this handle fails.
                        log::error!("{e}");
                        libc::EIO
                    })
                })?;
                if let Some(total) = s.known_size() {
                    lock(&self.transformed_sizes).insert((inode.ino, *view), (s.version(), total));
                }
                return Ok(filled);
            }
            HandleKind::Reader { reader, .. } => {
                return from_reader(scratch, &mut lock(reader));
            }
            HandleKind::Bytes(b) => {
                let from = (offset as usize).min(b.len());
                b[from..(from + size).min(b.len())].to_vec()
            }
            HandleKind::Dir { .. } => return Err(libc::EISDIR),
        };
        Ok(Filled::Owned(out))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handles.get(fh).ok_or(libc::EBADF)?;
        let HandleKind::File {
            inode, write: true, ..
        } = &h.kind
        else {
            return Err(libc::EBADF);
        };
        if offset.saturating_add(data.len() as u64) > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let mut st = lock(&inode.state);
        self.ensure_buffer(&mut st)?;
        let st = &mut *st;
        let buf = st.buf.as_ref().expect("ensured above");
        let append = offset == buf.size() && buf.is_append_only();
        // Bytes not yet handed to a background store.
        let unstored = buf.size() - st.pending.as_ref().map_or(buf.base_len(), |p| p.to);
        let half = early_store_threshold(self.opts.write_mem_limit) as u64 / 2;
        let early = !st.on_write
            && append
            && buf.base_len() == st.eager.as_ref().map_or(0, |e| e.len)
            && buf.size() - buf.base_len() >= half
            && (unstored >= half || buf.would_spill(offset, data.len()));
        if early {
            if let Err(e) = self.store_early(st) {
                // Not fatal: the overlay spills to a temporary file as usual.
                log::warn!(
                    "inode {}: storing written data early failed: {e}",
                    inode.ino
                );
            }
        } else if !append {
            // Anything but an append may touch bytes a background store is encoding.
            self.settle_early(st);
        }
        let buf = st.buf.as_mut().expect("ensured above");
        let spilled = buf.spilled();
        buf.write(offset, data).map_err(|e| {
            log::error!("inode {}: buffering a write failed: {e}", inode.ino);
            e.raw_os_error().unwrap_or(libc::EIO)
        })?;
        if !spilled && buf.spilled() {
            Stats::inc(&self.stats.spills);
        }
        st.dirty = true;
        st.mtime = Some(Self::now());
        st.changed = st.mtime;
        Stats::inc(&self.stats.write_requests);
        Stats::add(&self.stats.bytes_written, data.len() as u64);
        Ok(data.len() as u32)
    }

    /// Commits the inode's pending changes, if any. Returns after the metadata transaction.
    pub fn commit(&self, inode: &OpenInode) -> FsResult<()> {
        let mut st = lock(&inode.state);
        self.settle_early(&mut st);
        if !st.dirty {
            // Nothing written. A new file's creation is committed with later changes; its
            // record in the redo log already keeps it safe from a crash (docs/SEMANTICS.md).
            return Ok(());
        }
        let current = self.node(inode.ino)?;
        // Only an on-write chain names the file while storing (its path costs queries);
        // failures name it below.
        let what = if self.chains(&current).on_write {
            self.name_of(&current)
        } else {
            String::new()
        };
        let buf = st.buf.as_ref().expect("dirty implies a buffer");
        let mut reader = self.new_reader(&st.node, ReaderName::of_node(&st.node, ""));
        let result = match &st.eager {
            None => {
                let expect = (buf.base_len() > 0).then_some(st.node.version);
                let mut base = |off: u64, b: &mut [u8]| read_exact_at(&mut reader, off, b);
                let mut input = MergedReader::new(buf, &mut base);
                self.space
                    .write_content_named(&current, &what, &mut input, expect)
            }
            // Only appended to since the chunks stored ahead: store the rest after them.
            Some(e) if buf.base_len() == e.len && buf.dirty_start().is_none_or(|s| s >= e.len) => {
                let mut nobase = |_: u64, _: &mut [u8]| -> std::io::Result<()> {
                    Err(std::io::Error::other("read before the appended range"))
                };
                let mut input = MergedReader::starting_at(buf, &mut nobase, e.len);
                self.space
                    .write_content_after(&current, &what, &e.chunks, e.len, &mut input)
            }
            // Rewritten or truncated inside them: re-chunk the whole merged content.
            Some(e) => {
                let mut base = |off: u64, b: &mut [u8]| self.read_eager(e, &current, off, b);
                let mut input = MergedReader::new(buf, &mut base);
                self.space
                    .write_content_named(&current, &what, &mut input, None)
            }
        };
        let (mut node, report) = match result {
            Ok(r) => r,
            Err(e) => {
                Stats::inc(&self.stats.commit_failures);
                let code = match &e {
                    SpaceError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
                    _ => libc::EIO,
                };
                log::error!("{}: committing writes failed: {e}", self.name_of(&current));
                return Err(code);
            }
        };
        if let Some(m) = st.mtime_override.take() {
            let a = SetAttr {
                mtime: Some(m),
                ..Default::default()
            };
            node = self
                .space
                .store
                .meta
                .set_attr(inode.ino, &a)
                .map_err(errno)?;
        }
        let (early_stored, early_reused) = match st.eager.take() {
            Some(e) => (e.chunks_stored, e.chunks_reused),
            None => (0, 0),
        };
        Stats::inc(&self.stats.commits);
        Stats::add(&self.stats.bytes_committed, report.bytes);
        Stats::add(
            &self.stats.chunks_committed,
            report.chunks + early_stored + early_reused,
        );
        Stats::add(
            &self.stats.chunks_reused,
            report.reused_chunks + early_reused,
        );
        lock(&self.cached_versions).insert(inode.ino, node.version);
        st.node = node;
        st.dirty = false;
        st.mtime = None;
        st.changed = None;
        if !st.on_write {
            st.buf = None;
        }
        st.spare_batch = Vec::new();
        Ok(())
    }

    fn handle_inode(&self, fh: u64) -> FsResult<Option<Arc<OpenInode>>> {
        let h = self.handles.get(fh).ok_or(libc::EBADF)?;
        Ok(match &h.kind {
            HandleKind::File { inode, .. }
            | HandleKind::Stream { inode, .. }
            | HandleKind::Reader {
                inode: Some(inode), ..
            } => Some(Arc::clone(inode)),
            _ => None,
        })
    }

    /// close(2) of one descriptor: commits pending writes of the inode.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        match self.handle_inode(fh)? {
            Some(i) => self.commit(&i),
            None => Ok(()),
        }
    }

    /// fsync(2): commits, then makes the commit (and every earlier one) durable.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh)?;
        self.sync_metadata()
    }

    /// Last close of a handle: commits what is left and forgets the handle.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.remove(fh) else {
            return Err(libc::EBADF);
        };
        let inode = match &h.kind {
            HandleKind::File { inode, .. }
            | HandleKind::Stream { inode, .. }
            | HandleKind::Reader {
                inode: Some(inode), ..
            } => Arc::clone(inode),
            _ => return Ok(()),
        };
        let r = self.commit(&inode);
        self.unacquire(&inode);
        r
    }

    /// truncate/ftruncate. Without a handle (`truncate(2)` by path) the change is committed
    /// before returning; through a handle it is committed with the handle's other writes.
    pub(crate) fn truncate(&self, ino: u64, size: u64, through_handle: bool) -> FsResult<()> {
        self.resize(ino, size, through_handle, false)
    }

    /// fallocate(2) on an open file. Mode 0 extends the file with zeros to `offset + length`
    /// if it is shorter (committed with the handle's writes, as ftruncate); KEEP_SIZE does
    /// nothing. Neither reserves disk space: the store compresses and deduplicates, so what
    /// a later write takes is not known in advance (docs/SEMANTICS.md). Punching holes,
    /// zeroing, collapsing and inserting ranges are not supported (`EOPNOTSUPP`).
    pub(crate) fn fallocate_file(
        &self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        let end = offset.checked_add(length).ok_or(libc::EFBIG)?;
        match mode {
            0 => self.resize(ino, end, true, true),
            libc::FALLOC_FL_KEEP_SIZE if end <= MAX_FILE_SIZE => Ok(()),
            libc::FALLOC_FL_KEEP_SIZE => Err(libc::EFBIG),
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    /// Sets the size of file `ino` (only if that grows it, with `grow_only`).
    fn resize(&self, ino: u64, size: u64, through_handle: bool, grow_only: bool) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let node = self.node(ino)?;
        match node.kind {
            NodeKind::Dir => return Err(libc::EISDIR),
            NodeKind::Symlink => return Err(libc::EINVAL),
            NodeKind::File => {}
            _ => return Err(libc::EINVAL),
        }
        let chains = self.chains(&node);
        let apply = |inode: &OpenInode| -> FsResult<()> {
            let mut st = lock(&inode.state);
            self.settle_early(&mut st);
            if grow_only && st.size() >= size {
                return Ok(()); // nothing to grow: no write buffer needed
            }
            if st.on_write && st.buf.is_none() && size == 0 {
                st.buf = Some(WriteBuffer::new(
                    0,
                    self.opts.write_mem_limit,
                    &self.spill_dir,
                ));
            }
            let buf = self.ensure_buffer(&mut st)?;
            if buf.size() == size && buf.is_pristine() {
                return Ok(());
            }
            buf.truncate(size)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            st.dirty = true;
            st.mtime = Some(Self::now());
            st.changed = st.mtime;
            Ok(())
        };
        if let Some(open) = self.open_inode(ino) {
            apply(&open)?;
            if !through_handle {
                self.commit(&open)?;
            }
            return Ok(());
        }
        if (size == node.size && !chains.on_write) || (grow_only && size <= node.size) {
            return Ok(());
        }
        if size == 0 && !chains.on_write {
            self.space.clear_content(&node).map_err(errno)?;
            return Ok(());
        }
        let tmp = OpenInode::new(node, chains.on_write);
        apply(&tmp)?;
        self.commit(&tmp)
    }
}
