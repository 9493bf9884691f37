//! SPACE: one capsule, many views.
//!
//! A capsule store that chunks, compresses, deduplicates and encrypts what it holds, runs
//! WebAssembly transforms over capsules as they are read or written, and mounts over FUSE.
//!
//! Data flows one way: `fs`/`cli` → [`space`] (namespace operations) → [`pipeline`] →
//! {`wasm`, [`crypto`], [`store`]}.

pub mod cli;
pub mod crypto;
pub mod error;
pub mod fs;
pub mod pipeline;
pub mod policy;
pub mod space;
pub mod store;
pub mod util;
pub mod wasm;

pub use error::{Result, SpaceError};
pub use space::Space;
