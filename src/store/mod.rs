//! The store on disk: configuration, key file, metadata engine and chunk backend, opened
//! together. Layout and formats are specified in docs/FORMAT.md.

mod backend;
mod config;
pub mod faulty;
mod local;
mod lock;
pub mod meta;
mod redo;
mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use backend::{ChunkBackend, ObjectBytes, PackLoc};
pub use config::StoreConfig;
pub use local::LocalBackend;
pub use lock::{LockMode, StoreLock};
pub use meta::MetaStore;
pub use redo::set_aside_copies as set_aside_redo_logs;
pub use sqlite::SqliteMeta;

use crate::crypto::{self, DataKeys, KdfParams, KeyFileError, MasterKey};
use crate::error::{Result, SpaceError};

/// A chunk's id: HMAC-SHA256 of its plaintext under the store's id key (docs/FORMAT.md).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let mut a = [0u8; 32];
        hex::decode_to_slice(s, &mut a).ok()?;
        Some(ChunkId(a))
    }
}

impl std::fmt::Display for ChunkId {
    /// Short form (16 hex digits) for messages; `to_hex` gives all 64.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", self)
    }
}

pub const CONFIG_FILE: &str = "store.yaml";
pub const KEY_FILE: &str = "master.key";
pub const META_FILE: &str = "meta.db";
pub const OBJECTS_DIR: &str = "objects";
pub const PACKS_DIR: &str = "packs";
pub const ARTIFACTS_DIR: &str = "artifacts";

/// How to unlock a store.
#[derive(Debug, Clone, Default)]
pub struct Unlock {
    /// Passphrase for a wrapped key file.
    pub passphrase: Option<Vec<u8>>,
    /// Key file to use instead of the one the config names.
    pub key_file: Option<PathBuf>,
}

/// Options for `init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub unlock: Unlock,
    pub kdf: Option<KdfParams>,
}

/// An open store: the handles the pipeline needs.
pub struct Store {
    pub dir: PathBuf,
    pub config: StoreConfig,
    pub meta: Arc<dyn MetaStore>,
    pub chunks: Arc<dyn ChunkBackend>,
    pub keys: Arc<DataKeys>,
    lock: StoreLock,
}

fn key_error(e: KeyFileError) -> SpaceError {
    match e {
        KeyFileError::Io(p, src) => SpaceError::io(format!("key file {p}"), src),
        other => SpaceError::WrongKey(other.to_string()),
    }
}

impl Store {
    /// Whether writers may keep small objects inline in the metadata (format 3 and later).
    pub fn inline_objects_allowed(&self) -> bool {
        self.config.format_version >= config::FORMAT_3
    }

    /// Whether writers seal encrypted objects in segments (format 3 and later).
    pub fn segmented_objects(&self) -> bool {
        self.config.format_version >= config::FORMAT_3
    }

    /// Creates a new store in `dir` (which must be empty or absent).
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<StoreConfig> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SpaceError::io(format!("creating {}", dir.display()), e))?;
        let non_empty = std::fs::read_dir(dir)
            .map_err(|e| SpaceError::io(format!("reading {}", dir.display()), e))?
            .next()
            .is_some();
        if non_empty {
            return Err(SpaceError::AlreadyExists(format!(
                "{} is not empty; a store needs a new or empty directory",
                dir.display()
            )));
        }
        // Metadata (names, sizes, policies) is not encrypted: keep the store private to its owner.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| SpaceError::io(format!("securing {}", dir.display()), e))?;
        }
        let key = MasterKey::generate();
        let key_path = opts
            .unlock
            .key_file
            .clone()
            .unwrap_or_else(|| dir.join(KEY_FILE));
        crypto::write_key_file(
            &key_path,
            &key,
            opts.unlock.passphrase.as_deref(),
            opts.kdf.unwrap_or_default(),
        )
        .map_err(key_error)?;
        let config = StoreConfig::new(&key, opts.unlock.key_file.clone());
        let meta_path = dir.join(META_FILE);
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        SqliteMeta::open(&meta_path, uid, gid)?;
        LocalBackend::open(&dir.join(OBJECTS_DIR), Some(&dir.join(PACKS_DIR)))
            .map_err(|e| SpaceError::io("creating objects directory", e))?;
        std::fs::create_dir_all(dir.join(ARTIFACTS_DIR))
            .map_err(|e| SpaceError::io("creating artifacts directory", e))?;
        // The config is written last: its presence marks a complete store.
        config.write(&dir.join(CONFIG_FILE))?;
        Ok(config)
    }

    /// Opens a store, checking the key before touching any data.
    pub fn open(dir: &Path, unlock: &Unlock) -> Result<Store> {
        let dir = dir
            .canonicalize()
            .map_err(|e| SpaceError::io(format!("store {}", dir.display()), e))?;
        let config = StoreConfig::read(&dir.join(CONFIG_FILE))?;
        let key_path = unlock
            .key_file
            .clone()
            .or_else(|| config.key_file.clone().map(PathBuf::from))
            .map(|p| if p.is_absolute() { p } else { dir.join(p) })
            .unwrap_or_else(|| dir.join(KEY_FILE));
        let key =
            crypto::read_key_file(&key_path, unlock.passphrase.as_deref()).map_err(key_error)?;
        if !crypto::ct_eq(key.check_value().as_bytes(), config.key_check.as_bytes()) {
            return Err(SpaceError::WrongKey(format!(
                "key file {} does not belong to the store at {}",
                key_path.display(),
                dir.display()
            )));
        }
        let lock = StoreLock::open(&dir.join("lock"))?;
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let meta = Arc::new(SqliteMeta::open(&dir.join(META_FILE), uid, gid)?);
        // Format 1 stores keep loose objects; format 2 appends to pack files.
        let packs = (config.format_version >= 2).then(|| dir.join(PACKS_DIR));
        let chunks = Arc::new(
            LocalBackend::open(&dir.join(OBJECTS_DIR), packs.as_deref())
                .map_err(|e| SpaceError::io("opening objects directory", e))?,
        );
        Ok(Store {
            dir,
            config,
            meta,
            chunks,
            keys: Arc::new(DataKeys::new(&key)),
            lock,
        })
    }

    /// Replaces the chunk backend (tests wrap it in a failure-injecting decorator).
    pub fn with_chunk_backend(
        mut self,
        f: impl FnOnce(Arc<dyn ChunkBackend>) -> Arc<dyn ChunkBackend>,
    ) -> Store {
        self.chunks = f(self.chunks);
        self
    }

    /// Writers hold this shared; gc holds it exclusive, so it never deletes an object that an
    /// in-flight write is about to reference.
    pub fn lock(&self, mode: LockMode) -> Result<lock::LockGuard<'_>> {
        self.lock.acquire(mode)
    }

    /// The shared lock on a descriptor of its own, held until the file is closed.
    pub fn hold_shared(&self) -> Result<std::fs::File> {
        self.lock.hold_shared()
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.join(ARTIFACTS_DIR)
    }
}
