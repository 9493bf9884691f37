//! Per-stream chains of guest instances.
//!
//! Each stage is one fresh instance of one transform. Input is cut into pieces of at most the
//! stage's piece size P; each piece's output is immediately cut into pieces for the next stage
//! and pushed through, so the memory held is bounded by piece sizes and per-call output, not by
//! stream length. At end of stream, stage i's `finish` tail is pushed through stages i+1.. before
//! stage i+1 is finished.

use std::sync::Arc;

use super::abi::GuestInstance;
use super::engine::Engines;
use crate::pipeline::transform::{ChunkTransform, TransformError, TransformFailure};

/// One transform instance inside a chain.
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) instance: GuestInstance,
    /// Largest piece fed to this stage (P, see `docs/ABI.md`).
    pub(crate) piece: usize,
    /// Pieces fed so far: the `chunk` index reported on failure.
    pub(crate) fed: u64,
    /// Reused output buffer for this stage (when it is not the last stage).
    pub(crate) scratch: Vec<u8>,
}

impl Stage {
    fn err(&self, cause: TransformFailure) -> TransformError {
        TransformError::new(self.name.clone(), self.fed, cause)
    }
}

/// A running chain. Implements [`ChunkTransform`]; after any error it refuses further use
/// (its instances may be in an arbitrary state and are dropped with it).
pub struct Chain {
    stages: Vec<Stage>,
    state: State,
    /// Keeps the engines (and thus the epoch ticker) alive while guest code can run.
    _engines: Arc<Engines>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Failed,
    Finished,
}

impl Chain {
    pub(crate) fn new(stages: Vec<Stage>, engines: Arc<Engines>) -> Self {
        Self {
            stages,
            state: State::Open,
            _engines: engines,
        }
    }

    fn check_open(&self) -> Result<(), TransformError> {
        let why = match self.state {
            State::Open => return Ok(()),
            State::Failed => "a previous call failed; the instance was discarded",
            State::Finished => "finish was already called",
        };
        let name = self
            .stages
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        Err(TransformError::new(
            name,
            0,
            TransformFailure::InvalidState(why.into()),
        ))
    }
}

/// Push `input` through `stages` (split per stage by its piece size), appending the final
/// output to `out`.
fn push(stages: &mut [Stage], input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
    let Some((stage, rest)) = stages.split_first_mut() else {
        out.extend_from_slice(input);
        return Ok(());
    };
    for piece in input.chunks(stage.piece) {
        if rest.is_empty() {
            stage
                .instance
                .process(piece, out)
                .map_err(|c| stage.err(c))?;
        } else {
            let mut buf = std::mem::take(&mut stage.scratch);
            buf.clear();
            let r = stage
                .instance
                .process(piece, &mut buf)
                .map_err(|c| stage.err(c));
            if r.is_ok() {
                stage.fed += 1;
                let r2 = push(rest, &buf, out);
                stage.scratch = buf;
                r2?;
                continue;
            }
            return r;
        }
        stage.fed += 1;
    }
    Ok(())
}

impl ChunkTransform for Chain {
    fn fuel_used(&self) -> u64 {
        self.stages.iter().map(|s| s.instance.fuel_used()).sum()
    }

    /// Empty input is a no-op (the guest is not called).
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        self.check_open()?;
        let r = push(&mut self.stages, input, out);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError> {
        self.check_open()?;
        let mut r = Ok(());
        for i in 0..self.stages.len() {
            let (head, rest) = self.stages.split_at_mut(i + 1);
            let stage = &mut head[i];
            let mut tail = std::mem::take(&mut stage.scratch);
            tail.clear();
            if let Err(c) = stage.instance.finish(&mut tail) {
                r = Err(stage.err(c));
                break;
            }
            if let Err(e) = push(rest, &tail, out) {
                r = Err(e);
                break;
            }
        }
        self.state = if r.is_ok() {
            State::Finished
        } else {
            State::Failed
        };
        // Drop scratch buffers and instances early: the stream is over.
        self.stages.iter_mut().for_each(|s| s.scratch = Vec::new());
        r
    }
}
