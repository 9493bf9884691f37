//! Compiled-module caches.
//!
//! * In memory: an LRU of [`CompiledModule`]s (module + `InstancePre` + ABI info) keyed by
//!   `(module sha256, engine flavour)` — never by image string, so two images with the same
//!   bytes share one compilation and a changed file can never hit a stale entry.
//! * On disk (optional): `Module::serialize` output in `<dir>/<sha256>-<flavour>.cwasm`,
//!   authenticated with HMAC-SHA256 under a caller-provided key. `Module::deserialize` maps
//!   the bytes as executable code *without validation*, so we only ever hand it bytes whose
//!   MAC verifies and whose header matches this engine; anything else (bad MAC, other wasmtime
//!   or config, other module, truncation) is logged and recompiled.
//!
//! File layout (little endian):
//! ```text
//! magic "SPWASMC1" | u32 format=1 | u16 n + n bytes wasmtime series | [32] engine fingerprint
//! | [32] module sha256 | u64 artifact len | [32] HMAC | artifact bytes
//! ```
//! The HMAC covers every byte before it plus the artifact.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use lru::LruCache;
use sha2::Sha256;
use wasmtime::{InstancePre, Linker, Module};

use super::abi::{AbiInfo, validate_module};
use super::engine::{Engines, Flavour, HostState};
use super::error::ModuleLoadError;

const MAGIC: &[u8; 8] = b"SPWASMC1";
const FORMAT: u32 = 1;
/// Informational; exact compatibility is carried by the engine fingerprint, which includes
/// wasmtime's own version-aware compatibility hash.
const WASMTIME_SERIES: &str = "wasmtime-48";

/// Where and how to persist compiled artifacts.
#[derive(Clone)]
pub struct ArtifactConfig {
    pub dir: PathBuf,
    /// HMAC key (the store derives it from its master key). Must be non-empty.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ArtifactConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactConfig")
            .field("dir", &self.dir)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A module ready to instantiate.
pub struct CompiledModule {
    pub sha256: [u8; 32],
    pub flavour: Flavour,
    pub module: Module,
    pub pre: InstancePre<HostState>,
    pub abi: AbiInfo,
}

/// Counters, for tests, benches and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules compiled from wasm bytes.
    pub compiles: u64,
    /// Modules loaded from a persisted artifact (no compilation).
    pub artifact_loads: u64,
    /// Persisted artifacts rejected (bad MAC, stale, truncated, ...) and recompiled.
    pub artifact_rejects: u64,
    /// In-memory LRU hits.
    pub memory_hits: u64,
}

pub struct ModuleCache {
    lru: Mutex<LruCache<Key, Arc<CompiledModule>>>,
    /// Per-module gates serialising concurrent compilations of the same module.
    in_flight: Mutex<HashMap<Key, Arc<Mutex<()>>>>,
    artifacts: Option<ArtifactConfig>,
    compiles: AtomicU64,
    artifact_loads: AtomicU64,
    artifact_rejects: AtomicU64,
    memory_hits: AtomicU64,
}

type HmacSha256 = Hmac<Sha256>;
/// Cache key: module sha256 + engine flavour.
type Key = ([u8; 32], Flavour);

impl ModuleCache {
    pub fn new(capacity: usize, artifacts: Option<ArtifactConfig>) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("non-zero");
        Self {
            lru: Mutex::new(LruCache::new(cap)),
            in_flight: Mutex::new(HashMap::new()),
            artifacts,
            compiles: AtomicU64::new(0),
            artifact_loads: AtomicU64::new(0),
            artifact_rejects: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            compiles: self.compiles.load(Ordering::Relaxed),
            artifact_loads: self.artifact_loads.load(Ordering::Relaxed),
            artifact_rejects: self.artifact_rejects.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// In-memory lookup only.
    pub fn get(&self, sha: &[u8; 32], flavour: Flavour) -> Option<Arc<CompiledModule>> {
        let hit = self
            .lru
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(*sha, flavour))
            .cloned();
        if hit.is_some() {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Memory LRU, then persisted artifact, then compile (and persist). `bytes` must already
    /// be verified and hash to `sha`. Compilation runs outside the LRU lock but under a
    /// per-module "in flight" lock, so concurrent streams opening the same new module wait for
    /// one compilation instead of each compiling it.
    pub fn get_or_compile(
        &self,
        engines: &Engines,
        flavour: Flavour,
        sha: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Arc<CompiledModule>, ModuleLoadError> {
        if let Some(hit) = self.get(sha, flavour) {
            return Ok(hit);
        }
        let key = (*sha, flavour);
        let gate = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let result = {
            let _guard = gate.lock().unwrap_or_else(|p| p.into_inner());
            match self.get(sha, flavour) {
                Some(hit) => Ok(hit),
                None => self.load_or_compile(engines, flavour, sha, bytes),
            }
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // Last one out removes the gate (2 = the map's reference + ours).
        if Arc::strong_count(&gate) <= 2 {
            in_flight.remove(&key);
        }
        result
    }

    fn load_or_compile(
        &self,
        engines: &Engines,
        flavour: Flavour,
        sha: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Arc<CompiledModule>, ModuleLoadError> {
        let engine = engines.get(flavour).map_err(ModuleLoadError::Engine)?;
        let module = match self.load_artifact(engines, flavour, sha) {
            Some(m) => m,
            None => {
                // Binary only: WAT text is not an accepted deployment format.
                if !bytes.starts_with(b"\0asm") {
                    return Err(ModuleLoadError::Invalid(
                        "not a WebAssembly binary (missing \\0asm magic)".into(),
                    ));
                }
                let m = Module::from_binary(engine, bytes)
                    .map_err(|e| ModuleLoadError::Invalid(format!("{e:#}")))?;
                self.compiles.fetch_add(1, Ordering::Relaxed);
                // Validate before persisting so we never store ABI-invalid modules.
                validate_module(&m)?;
                self.store_artifact(engines, flavour, sha, &m);
                m
            }
        };
        let abi = validate_module(&module)?;
        let pre = Linker::<HostState>::new(engine)
            .instantiate_pre(&module)
            .map_err(|e| ModuleLoadError::Engine(format!("{e:#}")))?;
        let compiled = Arc::new(CompiledModule {
            sha256: *sha,
            flavour,
            module,
            pre,
            abi,
        });
        self.lru
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put((*sha, flavour), compiled.clone());
        Ok(compiled)
    }

    fn artifact_path(dir: &Path, sha: &[u8; 32], flavour: Flavour) -> PathBuf {
        dir.join(format!("{}-{}.cwasm", hex::encode(sha), flavour.as_str()))
    }

    fn header(fingerprint: &[u8; 32], sha: &[u8; 32], len: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(128);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&FORMAT.to_le_bytes());
        h.extend_from_slice(&(WASMTIME_SERIES.len() as u16).to_le_bytes());
        h.extend_from_slice(WASMTIME_SERIES.as_bytes());
        h.extend_from_slice(fingerprint);
        h.extend_from_slice(sha);
        h.extend_from_slice(&len.to_le_bytes());
        h
    }

    fn mac(key: &[u8], header: &[u8], artifact: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
        m.update(header);
        m.update(artifact);
        m
    }

    /// Write atomically (temp file + rename); failures only log (the cache is an optimisation).
    fn store_artifact(&self, engines: &Engines, flavour: Flavour, sha: &[u8; 32], m: &Module) {
        let Some(cfg) = &self.artifacts else { return };
        let result = (|| -> Result<(), String> {
            let fp = engines.fingerprint(flavour)?;
            let artifact = m.serialize().map_err(|e| format!("serialize: {e:#}"))?;
            let header = Self::header(&fp, sha, artifact.len() as u64);
            let tag = Self::mac(&cfg.key, &header, &artifact)
                .finalize()
                .into_bytes();
            std::fs::create_dir_all(&cfg.dir).map_err(|e| e.to_string())?;
            let path = Self::artifact_path(&cfg.dir, sha, flavour);
            let tmp = cfg.dir.join(format!(
                ".{}.{}.{:?}.tmp",
                hex::encode(sha),
                std::process::id(),
                std::thread::current().id()
            ));
            let mut data = header;
            data.extend_from_slice(&tag);
            data.extend_from_slice(&artifact);
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
                f.write_all(&data)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| e.to_string())?;
            }
            std::fs::rename(&tmp, &path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                e.to_string()
            })
        })();
        if let Err(e) = result {
            log::warn!(
                "could not persist compiled module {}: {e}",
                hex::encode(sha)
            );
        }
    }

    /// Load and authenticate a persisted artifact. `None` = absent or rejected (logged).
    fn load_artifact(&self, engines: &Engines, flavour: Flavour, sha: &[u8; 32]) -> Option<Module> {
        let cfg = self.artifacts.as_ref()?;
        let path = Self::artifact_path(&cfg.dir, sha, flavour);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!("cannot read artifact {}: {e}; recompiling", path.display());
                return None;
            }
        };
        match Self::authenticate(cfg, engines, flavour, sha, &data) {
            Ok(range) => {
                // SAFETY: the bytes were produced by `Module::serialize` on an engine with the
                // same fingerprint and are authenticated by an HMAC under the store's key, so
                // they are exactly what we wrote; wasmtime additionally checks compatibility.
                match unsafe { Module::deserialize(engines.get(flavour).ok()?, &data[range]) } {
                    Ok(m) => {
                        self.artifact_loads.fetch_add(1, Ordering::Relaxed);
                        Some(m)
                    }
                    Err(e) => {
                        self.artifact_rejects.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "artifact {} failed to deserialize: {e:#}; recompiling",
                            path.display()
                        );
                        None
                    }
                }
            }
            Err(why) => {
                self.artifact_rejects.fetch_add(1, Ordering::Relaxed);
                log::warn!("rejecting artifact {}: {why}; recompiling", path.display());
                None
            }
        }
    }

    /// Parse + check MAC and header; returns the artifact byte range.
    fn authenticate(
        cfg: &ArtifactConfig,
        engines: &Engines,
        flavour: Flavour,
        sha: &[u8; 32],
        data: &[u8],
    ) -> Result<std::ops::Range<usize>, String> {
        let fixed = MAGIC.len() + 4 + 2;
        if data.len() < fixed || &data[..8] != MAGIC {
            return Err("bad magic or truncated header".into());
        }
        let vlen = u16::from_le_bytes([data[12], data[13]]) as usize;
        let header_len = fixed + vlen + 32 + 32 + 8;
        if data.len() < header_len + 32 {
            return Err("truncated header".into());
        }
        let header = &data[..header_len];
        let art_len = u64::from_le_bytes(header[header_len - 8..].try_into().expect("8"));
        let tag = &data[header_len..header_len + 32];
        let start = header_len + 32;
        if (data.len() - start) as u64 != art_len {
            return Err(format!(
                "truncated or padded: artifact is {} bytes, header says {art_len}",
                data.len() - start
            ));
        }
        Self::mac(&cfg.key, header, &data[start..])
            .verify_slice(tag)
            .map_err(|_| "HMAC mismatch (tampered, or written under another key)".to_string())?;
        // Authentic: now check that it was made for *this* engine and module.
        let format = u32::from_le_bytes(data[8..12].try_into().expect("4"));
        if format != FORMAT {
            return Err(format!("format {format}, expected {FORMAT}"));
        }
        if &data[14..14 + vlen] != WASMTIME_SERIES.as_bytes() {
            return Err("made by another wasmtime version".into());
        }
        let fp = engines.fingerprint(flavour)?;
        if data[14 + vlen..14 + vlen + 32] != fp {
            return Err("stale engine configuration fingerprint".into());
        }
        if &data[14 + vlen + 32..14 + vlen + 64] != sha {
            return Err("artifact is for another module".into());
        }
        Ok(start..data.len())
    }
}
