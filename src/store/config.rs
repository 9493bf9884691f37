//! `store.yaml`: the store's identity, format version and settings.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::error::{Result, SpaceError};

pub const FORMAT_NAME: &str = "space-store";
/// Written by `init`. Version 3 keeps small objects inline in the metadata; version 2 stores
/// every object in pack files; version 1 (loose objects) is still read and written as such.
pub const FORMAT_VERSION: u32 = 3;
/// The first version whose writers keep small objects inline in the metadata (FORMAT.md 4.5)
/// and seal encrypted objects in segments (object version 2, FORMAT.md 4.2).
pub const FORMAT_3: u32 = 3;
pub const OLDEST_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub format: String,
    pub format_version: u32,
    pub store_id: uuid::Uuid,
    /// Public fingerprint of the master key (docs/FORMAT.md); refuses a wrong key up front.
    pub key_check: String,
    /// Key file location if not `master.key` in the store (relative paths are to the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Decoded-chunk cache size for readers, in bytes.
    #[serde(default = "default_cache")]
    pub chunk_cache_bytes: u64,
    /// Budget for cached view outputs (derived entries), by their size; least recently used
    /// entries are dropped past it. 0 turns the derived-output cache off.
    #[serde(default = "default_derived_cache")]
    pub derived_cache_bytes: u64,
    /// Recompute the chunk id of every chunk read, also of encrypted objects stored raw,
    /// whose AES-GCM tag already binds their bytes to the id (an end-to-end check against
    /// faults in the writer's memory; about 0.5 CPU-seconds per GiB). fsck always does.
    #[serde(default)]
    pub recompute_chunk_ids: bool,
    /// Refuse WASM modules without a valid signature by a trusted publisher.
    #[serde(default)]
    pub require_signatures: bool,
    /// Publisher name → hex ed25519 public key, trusted to sign WASM modules.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub trusted_publishers: std::collections::BTreeMap<String, String>,
}

fn default_cache() -> u64 {
    64 << 20
}

fn default_derived_cache() -> u64 {
    4 << 30
}

impl StoreConfig {
    pub fn new(key: &MasterKey, key_file: Option<std::path::PathBuf>) -> StoreConfig {
        StoreConfig {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            store_id: uuid::Uuid::new_v4(),
            key_check: key.check_value(),
            key_file: key_file.map(|p| p.display().to_string()),
            chunk_cache_bytes: default_cache(),
            derived_cache_bytes: default_derived_cache(),
            recompute_chunk_ids: false,
            require_signatures: false,
            trusted_publishers: Default::default(),
        }
    }

    pub fn read(path: &Path) -> Result<StoreConfig> {
        let bad = |reason: String| SpaceError::BadStore {
            path: path.parent().unwrap_or(path).to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad(format!(
                "no {} (not a SPACE store; run `spacectl init`)",
                path.display()
            )),
            _ => SpaceError::io(format!("reading {}", path.display()), e),
        })?;
        let c: StoreConfig =
            serde_yaml::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if c.format != FORMAT_NAME {
            return Err(bad(format!("format `{}` is not {FORMAT_NAME}", c.format)));
        }
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&c.format_version) {
            return Err(bad(format!(
                "format version {} is not supported (this build reads versions \
                 {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})",
                c.format_version
            )));
        }
        Ok(c)
    }

    /// Atomic replace: temp file, fsync, rename, fsync directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_yaml::to_string(self).expect("config serializes");
        crate::util::write_atomic(path, text.as_bytes())
    }
}
