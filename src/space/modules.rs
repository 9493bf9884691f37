//! Wiring the WASM runtime to the store: `capsule://` images are read from the store itself,
//! compiled artifacts persist under `STORE/artifacts` authenticated with a store key, and the
//! trusted publishers come from the store's configuration. The runtime is built on first use,
//! so commands that run no transform never start an engine.

use std::sync::{Arc, OnceLock};

use super::Space;
use crate::error::{Result, SpaceError};
use crate::pipeline::read_path::stream_chunks;
use crate::pipeline::transform::{
    ChunkTransform, ModuleIdentity, TransformError, TransformFactory, TransformFailure,
};
use crate::policy::TransformSpec;
use crate::store::meta::{MetaStore, NodeKind};
use crate::store::{Store, StoreConfig};
use crate::wasm::verify::decode_verifying_key;
use crate::wasm::{
    ArtifactConfig, CapsuleRef, ModuleLoadError, ModuleSource, RuntimeConfig, SourceError,
    TransformRuntime, TrustPolicy,
};

impl TransformFactory for TransformRuntime {
    fn open_chain(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Box<dyn ChunkTransform>, TransformError> {
        TransformRuntime::open_chain(self, specs)
    }

    fn identify(&self, specs: &[TransformSpec]) -> Result<Vec<ModuleIdentity>, TransformError> {
        TransformRuntime::identify(self, specs)
    }
}

/// Reads module images stored as capsules (their stored bytes; on-read chains don't apply).
pub struct StoreModuleSource {
    store: Arc<Store>,
}

impl StoreModuleSource {
    pub fn new(store: Arc<Store>) -> StoreModuleSource {
        StoreModuleSource { store }
    }
}

impl ModuleSource for StoreModuleSource {
    fn load_capsule(&self, reference: CapsuleRef) -> Result<Vec<u8>, SourceError> {
        let meta: &dyn MetaStore = self.store.meta.as_ref();
        let other = |message: String| SourceError::Other {
            reference: reference.clone(),
            message,
        };
        let node = match &reference {
            CapsuleRef::Id(id) => {
                let uuid = uuid::Uuid::parse_str(id).map_err(|e| other(e.to_string()))?;
                meta.get_by_uuid(uuid).map_err(|e| other(e.to_string()))?
            }
            CapsuleRef::Path(p) => super::walk(meta, p).ok().map(|(n, _)| n),
        }
        .ok_or_else(|| SourceError::NotFound(reference.clone()))?;
        if node.kind != NodeKind::File {
            return Err(other("not a capsule".into()));
        }
        let mut bytes = Vec::with_capacity(node.size as usize);
        stream_chunks(&self.store, &node, &reference.to_string(), &mut |d| {
            bytes.extend_from_slice(d);
            Ok(())
        })
        .map_err(|e| other(e.to_string()))?;
        Ok(bytes)
    }
}

/// The trust policy a store's configuration describes.
pub fn trust_policy(config: &StoreConfig) -> Result<TrustPolicy> {
    let mut trusted = Vec::new();
    for (name, hex) in &config.trusted_publishers {
        let key = decode_verifying_key(hex).map_err(|e| SpaceError::BadStore {
            path: "store.yaml".into(),
            reason: format!("trusted publisher `{name}`: {e}"),
        })?;
        trusted.push((name.clone(), key));
    }
    Ok(TrustPolicy {
        trusted,
        require_signatures: config.require_signatures,
    })
}

/// The runtime a store uses: its module source, trust and artifact cache.
pub fn store_runtime(store: &Arc<Store>) -> Result<TransformRuntime> {
    let config = RuntimeConfig {
        trust: trust_policy(&store.config)?,
        artifacts: Some(ArtifactConfig {
            dir: store.artifacts_dir(),
            key: store.keys.artifact_mac_key.to_vec(),
        }),
        ..Default::default()
    };
    TransformRuntime::new(config, Arc::new(StoreModuleSource::new(Arc::clone(store))))
        .map_err(|e| SpaceError::Transform(format!("starting the WASM runtime: {e}")))
}

/// Builds the store's runtime on first use.
pub struct LazyRuntime {
    store: Arc<Store>,
    runtime: OnceLock<std::result::Result<Arc<TransformRuntime>, String>>,
}

impl LazyRuntime {
    pub fn new(store: Arc<Store>) -> LazyRuntime {
        LazyRuntime {
            store,
            runtime: OnceLock::new(),
        }
    }

    pub fn get(&self) -> std::result::Result<&Arc<TransformRuntime>, String> {
        self.runtime
            .get_or_init(|| {
                store_runtime(&self.store)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl LazyRuntime {
    /// The runtime, or why it could not be built, blamed on the chain's first transform.
    fn runtime_for(
        &self,
        specs: &[TransformSpec],
    ) -> Result<&Arc<TransformRuntime>, TransformError> {
        self.get().map_err(|e| TransformError {
            transform: specs
                .first()
                .map(|s| s.name.to_string())
                .unwrap_or_default(),
            chunk: 0,
            cause: TransformFailure::Load(ModuleLoadError::Engine(e)),
        })
    }
}

impl TransformFactory for LazyRuntime {
    fn open_chain(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Box<dyn ChunkTransform>, TransformError> {
        self.runtime_for(specs)?.open_chain(specs)
    }

    fn identify(&self, specs: &[TransformSpec]) -> Result<Vec<ModuleIdentity>, TransformError> {
        self.runtime_for(specs)?.identify(specs)
    }
}

impl Space {
    /// Opens a store with its WASM runtime installed (the normal way to open one).
    pub fn open_with_runtime(
        dir: &std::path::Path,
        unlock: &crate::store::Unlock,
    ) -> Result<Space> {
        let space = Space::open(dir, unlock)?;
        let lazy = Arc::new(LazyRuntime::new(Arc::clone(&space.store)));
        Ok(space.with_transforms(lazy))
    }
}
