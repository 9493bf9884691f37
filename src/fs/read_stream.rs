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
        }
    }

    /// Total output size, once the stream has reached its end.
    pub fn known_size(&self) -> Option<u64> {
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
            if let Some(w) = self.writer.take() {
                match w.finish() {
                    Ok(e) => log::debug!("{}: view cached ({} bytes)", self.name, e.size),
                    Err(e) => log::warn!("{}: view output not cached: {e}", self.name),
                }
            }
        }
        Ok(())
    }

    /// Reads transformed bytes at `offset` (returns fewer than asked only at the end).
    pub fn read(&mut self, offset: u64, size: usize) -> Result<Vec<u8>> {
        if let Some(m) = &self.failed {
            return Err(SpaceError::Transform(m.clone()));
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
            return Ok(Vec::new());
        }
        let from = (offset - self.out_start) as usize;
        let to = (from + size).min(self.out.len());
        Ok(self.out[from..to].to_vec())
    }
}
