//! The pipeline's transform hook: anything that turns a byte stream into another, piece by piece.
//! The WASM runtime implements it; the pipeline only knows this trait.

use std::io::Read;

use crate::policy::TransformSpec;

pub trait ChunkTransform: Send {
    /// Feed one piece of input; append any output to `out`.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError>;
    /// End of stream: append any buffered tail to `out`. Called exactly once.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError>;
}

/// A transform that failed: which one, at which piece, and why.
#[derive(Debug, thiserror::Error)]
#[error("transform `{transform}` failed at chunk {chunk}: {cause}")]
pub struct TransformError {
    pub transform: String,
    /// 0-based index of the piece fed to that transform (docs/ABI.md).
    pub chunk: u64,
    pub cause: String,
}

/// Builds chains from policy entries (implemented by the WASM runtime).
pub trait TransformFactory: Send + Sync {
    fn open_chain(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Box<dyn ChunkTransform>, TransformError>;
}

/// Adapts a `Read` through a transform, so the rest of the write path sees plain bytes.
pub struct TransformReader<R> {
    inner: R,
    transform: Box<dyn ChunkTransform>,
    piece: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    finished: bool,
}

impl<R: Read> TransformReader<R> {
    pub fn new(inner: R, transform: Box<dyn ChunkTransform>, piece_size: usize) -> Self {
        TransformReader {
            inner,
            transform,
            piece: vec![0; piece_size],
            out: Vec::new(),
            pos: 0,
            finished: false,
        }
    }
}

impl<R: Read> Read for TransformReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            if self.finished {
                return Ok(0);
            }
            self.out.clear();
            self.pos = 0;
            let n = read_full(&mut self.inner, &mut self.piece)?;
            let r = if n == 0 {
                self.finished = true;
                self.transform.finish(&mut self.out)
            } else {
                self.transform.process(&self.piece[..n], &mut self.out)
            };
            r.map_err(|e| std::io::Error::other(TransformFailed(e)))?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Marks an I/O error that is really a transform failure, so callers can report it as such.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransformFailed(pub TransformError);

/// Reads until `buf` is full or EOF.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
