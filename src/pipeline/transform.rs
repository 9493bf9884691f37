//! The pipeline's transform hook: anything that turns a byte stream into another, piece by piece.
//! The WASM runtime implements it; the pipeline only knows this trait.

use std::io::Read;

use crate::policy::TransformSpec;
use crate::wasm::ModuleLoadError;

pub trait ChunkTransform: Send {
    /// Feed one piece of input; append any output to `out`.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError>;
    /// End of stream: append any buffered tail to `out`. Called exactly once.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError>;
    /// Fuel consumed so far by every module of the chain that runs with a fuel limit.
    fn fuel_used(&self) -> u64 {
        0
    }
}

/// A transform failed.
///
/// `chunk` is the 0-based index of the piece *fed to that transform* (after the engine
/// re-split the stream into pieces of at most P bytes, see `docs/ABI.md`) when the failure
/// happened. Failures in `configure` or while loading report chunk 0; failures in `finish`
/// report the number of pieces that transform had processed (i.e. "one past the last").
/// The caller (pipeline) adds the capsule name to the message.
#[derive(Debug, thiserror::Error)]
#[error("transform `{transform}` failed at chunk {chunk}: {cause}")]
pub struct TransformError {
    pub transform: String,
    pub chunk: u64,
    pub cause: TransformFailure,
}

impl TransformError {
    pub fn new(transform: impl Into<String>, chunk: u64, cause: TransformFailure) -> Self {
        Self {
            transform: transform.into(),
            chunk,
            cause,
        }
    }
}

/// Why a transform failed. Every variant is a clean, typed refusal: the host never panics on
/// guest misbehaviour, and the instance that produced the failure is discarded.
#[derive(Debug, thiserror::Error)]
pub enum TransformFailure {
    /// The guest trapped (unreachable, out-of-bounds access inside the guest, ...).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest exhausted its native stack budget (`max_wasm_stack`), e.g. deep recursion.
    #[error("guest exhausted its stack (deep recursion?)")]
    StackOverflow,
    /// The per-call fuel budget (`resources.fuel_limit`) ran out.
    #[error("fuel exhausted (limit {limit} per call)")]
    FuelExhausted { limit: u64 },
    /// The per-call wall-clock deadline (`resources.timeout_ms`) passed.
    #[error("timed out after {ms} ms in one call")]
    Timeout { ms: u64 },
    /// The guest tried to use more linear memory than allowed.
    #[error("memory limit exceeded: guest wanted {wanted_bytes} bytes, limit is {limit_bytes}")]
    MemoryLimit { wanted_bytes: u64, limit_bytes: u64 },
    /// The guest broke the ABI contract (bad pointer/length, bad alloc result, ...).
    #[error("ABI violation: {0}")]
    AbiViolation(String),
    /// `configure` returned non-zero, or args were given to a module that takes none.
    #[error("configuration rejected: {0}")]
    ConfigRejected(String),
    /// One call produced more output than the engine accepts per call.
    #[error("output of {len} bytes exceeds the per-call limit of {limit} bytes")]
    OutputTooLarge { len: u64, limit: u64 },
    /// The module could not be resolved, verified, compiled or validated.
    #[error(transparent)]
    Load(#[from] ModuleLoadError),
    /// The spec asks for something the engine will not grant (e.g. memory above the hard cap).
    #[error("invalid resources: {0}")]
    InvalidResources(String),
    /// Instantiation failed for a host-side reason (e.g. instance pool exhausted).
    #[error("could not instantiate: {0}")]
    Instantiate(String),
    /// The transform was used after it failed or after `finish`.
    #[error("transform unusable: {0}")]
    InvalidState(String),
}

/// One module of a chain as it will run: what its output depends on, and who vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleIdentity {
    /// The transform's name in the policy.
    pub name: String,
    /// Hex sha256 of the module bytes.
    pub sha256: String,
    /// Hex sha256 of the canonical argument encoding handed to `configure` (docs/ABI.md).
    pub args_sha256: String,
    /// The trusted publisher whose signature verified, if the module is signed.
    pub publisher: Option<String>,
}

/// Builds chains from policy entries (implemented by the WASM runtime).
pub trait TransformFactory: Send + Sync {
    fn open_chain(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Box<dyn ChunkTransform>, TransformError>;

    /// Resolves and verifies each module (as `open_chain` would) without instantiating it.
    fn identify(&self, specs: &[TransformSpec]) -> Result<Vec<ModuleIdentity>, TransformError>;
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
