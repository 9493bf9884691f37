//! SPACE's WebAssembly transform engine.
//!
//! A capsule's transforms are WASM modules following the small ABI in `docs/ABI.md`. This
//! module turns a list of [`TransformSpec`](crate::policy::TransformSpec)s into a
//! [`ChunkTransform`](crate::pipeline::transform::ChunkTransform) chain:
//!
//! * [`resolver`] turns image strings into module bytes (files or capsules),
//! * [`verify`] enforces sha256 pins and ed25519 publisher signatures *before* compiling,
//! * [`cache`] keeps compiled modules in memory (LRU by module sha256) and on disk
//!   (HMAC-authenticated artifacts),
//! * [`engine`] owns the sandbox configuration (pooling allocator, epoch deadlines, fuel,
//!   memory/stack caps),
//! * [`abi`] validates exports and drives the guest call sequence with bounds checks,
//! * [`chain`] / [`runtime`] glue it together into per-stream chains.

pub mod abi;
pub mod cache;
pub mod chain;
pub mod engine;
pub mod error;
pub mod resolver;
pub mod runtime;
pub mod verify;

/// Version of the host ABI (docs/ABI.md): v0 plus the optional `configure`, `last_error` and
/// `finish` exports. Part of every derived-output key, so a change of ABI never serves old output.
pub const ABI_VERSION: u32 = 1;

/// The engine recorded in provenance.
pub const ENGINE: &str = "wasmtime 48";

pub use cache::{ArtifactConfig, CacheStats};
pub use chain::Chain;
pub use engine::{EngineConfig, Flavour};
pub use error::ModuleLoadError;
pub use resolver::{CapsuleRef, ImageRef, ModuleSource, NoCapsules, SourceError};
pub use runtime::{PreparedTransform, RuntimeConfig, RuntimeError, TransformRuntime};
pub use verify::{TrustPolicy, VerifyError};
