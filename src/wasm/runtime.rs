//! [`TransformRuntime`]: the one object the pipeline holds (`Arc<TransformRuntime>`, shared
//! across threads) to turn transform specs into per-stream [`ChunkTransform`] chains.
//!
//! Loading order for each spec: parse/resolve image → sha256 → verify (pin + signature)
//! → compiled-module cache (memory, then authenticated artifact, then compile) → ABI
//! validation. Nothing from an unverified module is compiled or deserialized.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use lru::LruCache;

use super::abi::{CallLimits, GuestInstance, encode_args};
use super::cache::{ArtifactConfig, CacheStats, CompiledModule, ModuleCache};
use super::chain::{Chain, Stage};
use super::engine::{EngineConfig, Engines, Flavour, WASM_PAGE};
use super::error::ModuleLoadError;
use super::resolver::{ImageRef, ModuleSource, parse_image, resolve};
use super::verify::{TrustPolicy, sha256, verify_module};
use crate::pipeline::transform::{ChunkTransform, TransformError, TransformFailure};
use crate::policy::TransformSpec;

/// Smallest / largest piece fed to a guest (see `docs/ABI.md`).
pub const MIN_PIECE: u64 = 4096;
pub const MAX_PIECE: u64 = 1 << 20;

/// Everything needed to build a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub engine: EngineConfig,
    pub trust: TrustPolicy,
    /// Persist compiled artifacts here (HMAC-authenticated). `None` = memory cache only.
    pub artifacts: Option<ArtifactConfig>,
    /// Compiled modules kept in memory (per flavour entries count separately). Default 64.
    pub cache_capacity: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            trust: TrustPolicy::default(),
            artifacts: None,
            cache_capacity: 64,
        }
    }
}

/// Runtime construction failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid engine configuration: {0}")]
    Engine(String),
    #[error("artifact HMAC key must not be empty")]
    EmptyArtifactKey,
}

/// A verified, compiled transform with its resolved limits: cheap to clone, and
/// [`TransformRuntime::open_prepared`] instantiates it in microseconds. The pipeline may keep
/// these per capsule to skip resolution/hashing on every stream.
#[derive(Clone)]
pub struct PreparedTransform {
    name: String,
    compiled: Arc<CompiledModule>,
    encoded_args: Arc<[u8]>,
    limits: CallLimits,
    piece: usize,
    publisher: Option<String>,
}

impl std::fmt::Debug for PreparedTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedTransform")
            .field("name", &self.name)
            .field("sha256", &hex::encode(self.compiled.sha256))
            .field("flavour", &self.compiled.flavour)
            .field("piece", &self.piece)
            .field("limits", &self.limits)
            .field("publisher", &self.publisher)
            .finish()
    }
}

impl PreparedTransform {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Hex sha256 of the module bytes.
    pub fn sha256(&self) -> String {
        hex::encode(self.compiled.sha256)
    }
    /// Piece size P used for this transform.
    pub fn piece_size(&self) -> usize {
        self.piece
    }
    /// Name of the trusted publisher whose key verified the signature, if signed.
    pub fn publisher(&self) -> Option<&str> {
        self.publisher.as_deref()
    }
}

/// `file://` resolution memo: (len, mtime) → sha256, to skip re-reading and re-hashing an
/// unchanged module file when its compiled form is already cached.
type FileMemo = LruCache<PathBuf, (u64, SystemTime, [u8; 32])>;

/// Shared, thread-safe transform runtime.
pub struct TransformRuntime {
    engines: Arc<Engines>,
    cache: ModuleCache,
    trust: TrustPolicy,
    source: Arc<dyn ModuleSource>,
    file_memo: Mutex<FileMemo>,
    /// `(sha256, signature hex)` pairs already verified → publisher (ed25519 verify is ~50 µs).
    verified: Mutex<LruCache<([u8; 32], String), String>>,
}

impl TransformRuntime {
    pub fn new(config: RuntimeConfig, source: Arc<dyn ModuleSource>) -> Result<Self, RuntimeError> {
        if config.artifacts.as_ref().is_some_and(|a| a.key.is_empty()) {
            return Err(RuntimeError::EmptyArtifactKey);
        }
        let engines = Engines::new(config.engine).map_err(RuntimeError::Engine)?;
        let cap = std::num::NonZeroUsize::new(256).expect("non-zero");
        Ok(Self {
            engines,
            cache: ModuleCache::new(config.cache_capacity, config.artifacts),
            trust: config.trust,
            source,
            file_memo: Mutex::new(LruCache::new(cap)),
            verified: Mutex::new(LruCache::new(cap)),
        })
    }

    /// Cache counters (compiles, artifact loads/rejects, memory hits).
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    pub fn engine_config(&self) -> &EngineConfig {
        &self.engines.config
    }

    /// Build a chain for one stream from specs, in order. An empty list yields an identity
    /// transform.
    pub fn open_chain(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Box<dyn ChunkTransform>, TransformError> {
        let prepared = specs
            .iter()
            .map(|s| self.prepare(s))
            .collect::<Result<Vec<_>, _>>()?;
        self.open_prepared(&prepared)
    }

    /// What each spec's output depends on (module hash, args) and who signed it.
    pub fn identify(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Vec<crate::pipeline::transform::ModuleIdentity>, TransformError> {
        specs
            .iter()
            .map(|s| {
                let p = self.prepare(s)?;
                Ok(crate::pipeline::transform::ModuleIdentity {
                    name: p.name.clone(),
                    sha256: p.sha256(),
                    args_sha256: hex::encode(sha256(&p.encoded_args)),
                    publisher: p.publisher.clone(),
                })
            })
            .collect()
    }

    /// Instantiate and configure prepared transforms into a chain for one stream.
    pub fn open_prepared(
        &self,
        stages: &[PreparedTransform],
    ) -> Result<Box<dyn ChunkTransform>, TransformError> {
        let mut out = Vec::with_capacity(stages.len());
        for p in stages {
            let err = |c| TransformError::new(p.name.clone(), 0, c);
            let mut instance = GuestInstance::instantiate(
                &p.compiled.pre,
                &p.compiled.abi,
                p.limits,
                self.engines.config.max_table_elements,
            )
            .map_err(err)?;
            instance.configure(&p.encoded_args).map_err(err)?;
            out.push(Stage {
                name: p.name.clone(),
                instance,
                piece: p.piece,
                fed: 0,
                scratch: Vec::new(),
            });
        }
        Ok(Box::new(Chain::new(out, self.engines.clone())))
    }

    /// Resolve, verify and compile (or fetch from cache) one spec.
    pub fn prepare(&self, spec: &TransformSpec) -> Result<PreparedTransform, TransformError> {
        let err = |c: TransformFailure| TransformError::new(spec.name.clone(), 0, c);
        let cfg = &self.engines.config;
        // Limits first: cheap, and a bad spec should not cost a compile.
        let pages = spec
            .resources
            .max_memory_pages
            .unwrap_or(cfg.default_memory_pages);
        if pages == 0 || pages > cfg.max_memory_pages {
            return Err(err(TransformFailure::InvalidResources(format!(
                "max_memory_pages {pages} outside 1..={}",
                cfg.max_memory_pages
            ))));
        }
        if spec.resources.fuel_limit == Some(0) {
            return Err(err(TransformFailure::InvalidResources(
                "fuel_limit must be > 0".into(),
            )));
        }
        let timeout_ms = spec
            .resources
            .timeout_ms
            .unwrap_or(cfg.default_timeout_ms)
            .max(1);
        let encoded_args: Arc<[u8]> = encode_args(&spec.args).map_err(err)?.into();
        let flavour = if spec.resources.fuel_limit.is_some() {
            Flavour::Fueled
        } else {
            Flavour::Epoch
        };

        let (compiled, publisher) = self
            .load(spec, flavour)
            .map_err(|e| err(TransformFailure::Load(e)))?;

        let memory_limit_bytes = pages as u64 * WASM_PAGE;
        let initial = compiled.abi.initial_memory_bytes;
        if initial > memory_limit_bytes {
            return Err(err(TransformFailure::MemoryLimit {
                wanted_bytes: initial,
                limit_bytes: memory_limit_bytes,
            }));
        }
        Ok(PreparedTransform {
            name: spec.name.to_string(),
            encoded_args,
            limits: CallLimits {
                fuel: spec.resources.fuel_limit,
                timeout_ms,
                deadline_ticks: self.engines.deadline_ticks(timeout_ms),
                memory_limit_bytes,
                max_output: cfg.max_output_per_call,
            },
            piece: piece_size(memory_limit_bytes, initial),
            publisher,
            compiled,
        })
    }

    fn load(
        &self,
        spec: &TransformSpec,
        flavour: Flavour,
    ) -> Result<(Arc<CompiledModule>, Option<String>), ModuleLoadError> {
        // Fast path for unchanged files whose compiled module is already in memory.
        let image_str = spec.image.to_string();
        let image = parse_image(&image_str)?;
        if let ImageRef::File(path) = &image
            && let Some(sha) = self.memo_lookup(path)
            && let Some(hit) = self.cache.get(&sha, flavour)
        {
            let publisher = self.verify(&sha, spec)?;
            return Ok((hit, publisher));
        }
        let bytes = resolve(
            &image_str,
            self.source.as_ref(),
            self.engines.config.max_module_bytes,
        )?;
        let sha = sha256(&bytes);
        let publisher = self.verify(&sha, spec)?;
        let compiled = self
            .cache
            .get_or_compile(&self.engines, flavour, &sha, &bytes)?;
        if let ImageRef::File(path) = &image {
            self.memo_store(path, bytes.len() as u64, sha);
        }
        Ok((compiled, publisher))
    }

    fn verify(
        &self,
        sha: &[u8; 32],
        spec: &TransformSpec,
    ) -> Result<Option<String>, ModuleLoadError> {
        let v = &spec.verification;
        if let Some(sig) = &v.signature {
            // Pin check is cheap; only the signature verification is memoised.
            let pin_only = crate::policy::Verification {
                sha256: v.sha256.clone(),
                signature: None,
            };
            let lenient = TrustPolicy {
                trusted: Vec::new(),
                require_signatures: false,
            };
            verify_module(sha, &pin_only, &lenient)?;
            let key = (*sha, sig.trim().to_ascii_lowercase());
            if let Some(p) = self
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                return Ok(Some(p.clone()));
            }
            let publisher = verify_module(sha, v, &self.trust)?;
            if let Some(p) = &publisher {
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .put(key, p.clone());
            }
            return Ok(publisher);
        }
        Ok(verify_module(sha, v, &self.trust)?)
    }

    fn memo_lookup(&self, path: &PathBuf) -> Option<[u8; 32]> {
        let md = std::fs::metadata(path).ok()?;
        let mtime = md.modified().ok()?;
        let mut memo = self.file_memo.lock().unwrap_or_else(|p| p.into_inner());
        match memo.get(path) {
            Some((len, t, sha)) if *len == md.len() && *t == mtime => Some(*sha),
            _ => None,
        }
    }

    fn memo_store(&self, path: &PathBuf, len: u64, sha: [u8; 32]) {
        // Record the metadata *after* reading; if the file changed in between, the length or
        // mtime will most likely differ next time, and a stale memo only costs a re-read.
        let Ok(md) = std::fs::metadata(path) else {
            return;
        };
        let Ok(mtime) = md.modified() else { return };
        if md.len() == len {
            self.file_memo
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(path.clone(), (len, mtime, sha));
        }
    }
}

// The pipeline shares one runtime across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TransformRuntime>();
    assert_send_sync::<PreparedTransform>();
};

/// P = clamp((memory_limit - initial_memory) / 4, 4 KiB, 1 MiB), rounded down to 4 KiB.
/// Leaves room in the guest for input copy, output buffer and allocator slack.
pub fn piece_size(memory_limit_bytes: u64, initial_memory_bytes: u64) -> usize {
    let room = memory_limit_bytes.saturating_sub(initial_memory_bytes) / 4;
    let p = room.clamp(MIN_PIECE, MAX_PIECE);
    (p / MIN_PIECE * MIN_PIECE) as usize
}

#[cfg(test)]
mod tests {
    use super::piece_size;

    #[test]
    fn piece_sizes() {
        // The seed: 16-page (1 MiB) limit, 1 page initial → 240 KiB pieces.
        assert_eq!(piece_size(16 * 65536, 65536), 245760);
        assert_eq!(piece_size(64 << 20, 65536), 1 << 20);
        assert_eq!(piece_size(65536, 65536), 4096);
        assert_eq!(piece_size(10, 65536), 4096);
        assert_eq!(piece_size(16 * 65536 + 5000, 0), 262144);
    }
}
