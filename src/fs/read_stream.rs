//! A capsule read through its on-read chain, pulled piece by piece as the kernel asks.
//!
//! Transforms are stream functions: output offset N depends on everything before it. So a
//! handle keeps one chain instance and the stored offset it has fed so far; reads at or after
//! the current position stream forward (skipping output nobody asked for), a read before it
//! restarts the chain from the beginning. Memory is one stored piece plus its output.

use crate::error::{Result, SpaceError};
use crate::pipeline::{CapsuleReader, ChunkTransform};
use crate::space::views::DerivedWriter;

/// Stored bytes fed to the chain per step.
const PIECE: usize = 256 * 1024;

pub struct ChainStream {
    reader: CapsuleReader,
    open_chain: Box<dyn Fn() -> Result<Box<dyn ChunkTransform>> + Send>,
    chain: Option<Box<dyn ChunkTransform>>,
    name: String,
    /// Stored bytes fed so far.
    fed: u64,
    /// Output offset of `out[0]`.
    out_start: u64,
    out: Vec<u8>,
    piece: Vec<u8>,
    finished: bool,
    /// A failure sticks to the handle: later reads fail too.
    failed: Option<String>,
    /// Stores the output in the derived-output cache as it is produced; dropped (storing
    /// nothing) if the stream restarts or fails.
    writer: Option<DerivedWriter>,
    /// Chunk-local chains (`chunk_local` on every transform) run once per stored chunk, so
    /// any chunk's output can be computed alone: this is the offset index of the chunks
    /// computed so far, always a prefix of the capsule, in order.
    local: Option<LocalIndex>,
    /// The chain declares `preserves_size`: the output must be this long.
    expect_size: Option<u64>,
}

/// Output placement of stored chunks, for chunk-local chains.
#[derive(Default)]
struct LocalIndex {
    /// (output offset, output length, stored offset, stored length) per chunk, in order.
    chunks: Vec<(u64, u64, u64, u32)>,
    /// The last chunk's output (index, bytes): consecutive small reads decode it once.
    last: Option<(usize, Vec<u8>)>,
    complete: bool,
    /// The chain preserves sizes: output offset = stored offset, so no index is needed and
    /// any read computes only the chunks it touches.
    fixed: Option<Fixed>,
}

/// Chunk-local and size-preserving: placement is known without computing anything.
struct Fixed {
    /// The last chunk computed: (stored offset, output).
    last: Option<(u64, Vec<u8>)>,
    /// Output fed to the cache writer so far (it only ever gets the output in order).
    fed: u64,
}

impl ChainStream {
    pub fn new(
        reader: CapsuleReader,
        name: String,
        open_chain: Box<dyn Fn() -> Result<Box<dyn ChunkTransform>> + Send>,
        writer: Option<DerivedWriter>,
    ) -> ChainStream {
        ChainStream {
            reader,
            open_chain,
            chain: None,
            name,
            fed: 0,
            out_start: 0,
            out: Vec::new(),
            piece: Vec::new(),
            finished: false,
            failed: None,
            writer,
            local: None,
            expect_size: None,
        }
    }

    /// Fails the stream (rather than serve a wrong length) unless the output is `n` bytes.
    pub fn expect_size(mut self, n: u64) -> ChainStream {
        self.expect_size = Some(n);
        self
    }

    /// Switches to per-chunk processing (every transform of the chain is chunk-local); with
    /// `preserves_size`, chunks are placed without computing the ones before them.
    pub fn chunk_local(mut self, preserves_size: bool) -> ChainStream {
        self.local = Some(LocalIndex {
            fixed: preserves_size.then_some(Fixed { last: None, fed: 0 }),
            ..Default::default()
        });
        self
    }

    /// Chunk-local, size-preserving read: only the chunks under the range are computed.
    fn read_fixed(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let total = self.reader.size();
        let end = (offset + buf.len() as u64).min(total);
        let mut pos = offset;
        while pos < end {
            let Some(ext) = self.reader.chunk_at(pos)? else {
                break;
            };
            let fixed = self.fixed_mut();
            let cached = match &fixed.last {
                Some((o, out)) if *o == ext.offset => Some(out.clone()),
                _ => None,
            };
            let out = match cached {
                Some(out) => out,
                None => {
                    let out = self.compute_chunk(ext)?;
                    if out.len() != ext.len as usize {
                        return Err(crate::space::views::size_broken(
                            &self.name,
                            ext.offset,
                            ext.len as usize,
                            out.len(),
                        ));
                    }
                    self.feed_fixed(ext.offset, &out);
                    self.fixed_mut().last = Some((ext.offset, out.clone()));
                    out
                }
            };
            let from = (pos - ext.offset) as usize;
            let to = ((end - ext.offset) as usize).min(out.len());
            let at = (pos - offset) as usize;
            buf[at..at + to - from].copy_from_slice(&out[from..to]);
            pos = ext.offset + to as u64;
        }
        Ok((pos - offset) as usize)
    }

    fn fixed_mut(&mut self) -> &mut Fixed {
        self.local
            .as_mut()
            .and_then(|l| l.fixed.as_mut())
            .expect("size-preserving chunk-local stream")
    }

    /// Feeds the cache writer while chunks are computed in order from the start; a jump
    /// ahead abandons it (backward reads do not matter: that output was fed already).
    fn feed_fixed(&mut self, at: u64, out: &[u8]) {
        let total = self.reader.size();
        let fed = self.fixed_mut().fed;
        if at != fed {
            if at > fed {
                self.writer = None;
            }
            return;
        }
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        w.push(out);
        let fed = at + out.len() as u64;
        self.fixed_mut().fed = fed;
        if fed == total {
            self.finish_writer();
        }
    }

    /// The whole output went to the cache writer: commit the entry (a failure only means the
    /// view stays uncached).
    fn finish_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            match w.finish() {
                Ok(e) => log::debug!("{}: view cached ({} bytes)", self.name, e.size),
                Err(e) => log::warn!("{}: view output not cached: {e}", self.name),
            }
        }
    }

    /// Total output size, once the stream has reached its end.
    pub fn known_size(&self) -> Option<u64> {
        if let Some(l) = &self.local {
            if l.fixed.is_some() {
                return Some(self.reader.size());
            }
            return l
                .complete
                .then(|| l.chunks.last().map(|c| c.0 + c.1).unwrap_or(0));
        }
        self.finished
            .then_some(self.out_start + self.out.len() as u64)
    }

    pub fn version(&self) -> u64 {
        self.reader.version()
    }

    fn restart(&mut self) {
        self.writer = None;
        self.chain = None;
        self.fed = 0;
        self.out_start = 0;
        self.out.clear();
        self.finished = false;
    }

    /// Feeds the next stored piece (or the end of stream) through the chain.
    fn step(&mut self) -> Result<()> {
        if self.chain.is_none() {
            self.chain = Some((self.open_chain)()?);
        }
        let chain = self.chain.as_mut().expect("chain opened above");
        if self.piece.len() != PIECE {
            self.piece = vec![0; PIECE];
        }
        let n = self.reader.read_at(self.fed, &mut self.piece)?;
        let what = |e| SpaceError::Transform(format!("{}: {e}", self.name));
        let before = self.out.len();
        if n == 0 {
            chain.finish(&mut self.out).map_err(what)?;
            self.finished = true;
            self.piece = Vec::new();
            let total = self.out_start + self.out.len() as u64;
            if let Some(want) = self.expect_size.filter(|w| *w != total) {
                self.writer = None;
                return Err(SpaceError::Transform(format!(
                    "{}: the chain declares preserves_size but gave {total} bytes from {want}",
                    self.name
                )));
            }
        } else {
            chain
                .process(&self.piece[..n], &mut self.out)
                .map_err(what)?;
            self.fed += n as u64;
        }
        if let Some(w) = self.writer.as_mut() {
            w.push(&self.out[before..]);
        }
        if self.finished {
            self.finish_writer();
        }
        Ok(())
    }

    /// Runs the chain over stored chunk `ext` alone (a fresh instance).
    fn compute_chunk(&mut self, ext: crate::store::meta::Extent) -> Result<Vec<u8>> {
        let mut data = vec![0u8; ext.len as usize];
        let n = self.reader.read_at(ext.offset, &mut data)?;
        data.truncate(n);
        let mut chain = (self.open_chain)()?;
        let mut out = Vec::new();
        let what = |e| SpaceError::Transform(format!("{}: {e}", self.name));
        chain.process(&data, &mut out).map_err(what)?;
        chain.finish(&mut out).map_err(what)?;
        Ok(out)
    }

    /// Output of indexed chunk `i` (recomputed unless it was the last one used).
    fn local_output(&mut self, i: usize) -> Result<Vec<u8>> {
        let l = self.local.as_ref().expect("chunk-local stream");
        if let Some((j, out)) = &l.last {
            if *j == i {
                return Ok(out.clone());
            }
        }
        let (_, _, src, len) = l.chunks[i];
        let out = self.compute_chunk(crate::store::meta::Extent {
            offset: src,
            len,
            chunk: crate::store::ChunkId([0; 32]),
        })?;
        self.local.as_mut().expect("chunk-local stream").last = Some((i, out.clone()));
        Ok(out)
    }

    /// Computes the next stored chunk after the indexed prefix (feeding the cache writer,
    /// which thus always sees the output in order); returns false at the end.
    fn extend_local(&mut self) -> Result<bool> {
        let l = self.local.as_ref().expect("chunk-local stream");
        if l.complete {
            return Ok(false);
        }
        let (out_end, src_end) = l
            .chunks
            .last()
            .map(|c| (c.0 + c.1, c.2 + c.3 as u64))
            .unwrap_or((0, 0));
        let Some(ext) = self.reader.chunk_at(src_end)? else {
            self.local.as_mut().expect("chunk-local stream").complete = true;
            self.finish_writer();
            return Ok(false);
        };
        let out = self.compute_chunk(ext)?;
        if let Some(w) = self.writer.as_mut() {
            w.push(&out);
        }
        let l = self.local.as_mut().expect("chunk-local stream");
        l.chunks
            .push((out_end, out.len() as u64, ext.offset, ext.len));
        l.last = Some((l.chunks.len() - 1, out));
        Ok(true)
    }

    /// Chunk-local read: find (or compute up to) the chunks covering the range; only chunks
    /// past the indexed prefix are computed in order, any other is computed alone.
    fn read_local(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let l = self.local.as_ref().expect("chunk-local stream");
            let i = l.chunks.partition_point(|c| c.0 + c.1 <= pos);
            if i == l.chunks.len() {
                if !self.extend_local()? {
                    break;
                }
                continue;
            }
            // Chunks with empty output never contain `pos`, so `i` has output.
            let out_off = l.chunks[i].0;
            let out = self.local_output(i)?;
            let from = (pos - out_off) as usize;
            let to = ((end - out_off) as usize).min(out.len());
            let at = (pos - offset) as usize;
            buf[at..at + to - from].copy_from_slice(&out[from..to]);
            pos = out_off + to as u64;
        }
        Ok((pos - offset) as usize)
    }

    /// Reads transformed bytes at `offset` into `buf` (the request's buffer, reused across
    /// requests: no allocation per read); returns how many, fewer than asked only at the end.
    pub fn read_into(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = buf.len();
        if let Some(m) = &self.failed {
            return Err(SpaceError::Transform(m.clone()));
        }
        if self.local.is_some() {
            let r = if self.local.as_ref().is_some_and(|l| l.fixed.is_some()) {
                self.read_fixed(offset, buf)
            } else {
                self.read_local(offset, buf)
            };
            return r.inspect_err(|e| {
                self.failed = Some(e.to_string());
                self.writer = None;
            });
        }
        if offset < self.out_start {
            self.restart();
        }
        let want_end = offset + size as u64;
        loop {
            // Drop output before the requested offset: nobody will ask for it without seeking
            // back, which restarts.
            let have_end = self.out_start + self.out.len() as u64;
            if offset > self.out_start {
                let drop = (offset.min(have_end) - self.out_start) as usize;
                self.out.drain(..drop);
                self.out_start += drop as u64;
            }
            if have_end >= want_end || self.finished {
                break;
            }
            if let Err(e) = self.step() {
                self.failed = Some(e.to_string());
                self.chain = None;
                self.writer = None;
                return Err(e);
            }
        }
        if offset >= self.out_start + self.out.len() as u64 {
            return Ok(0);
        }
        let from = (offset - self.out_start) as usize;
        let to = (from + size).min(self.out.len());
        buf[..to - from].copy_from_slice(&self.out[from..to]);
        Ok(to - from)
    }
}
