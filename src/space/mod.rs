//! `Space`: the store as users see it — paths, capsules, policies — on top of the pipeline.
//! Both frontends (the `spacectl` CLI and the FUSE daemon) call this; it knows neither.

mod io;
mod maintenance;
pub mod modules;
mod namespace;
pub mod views;

use std::sync::Arc;

use uuid::Uuid;

use crate::error::{Result, SpaceError};
use crate::pipeline::{ChunkCache, TransformFactory};
use crate::policy::Policy;
use crate::store::meta::{MetaStore, Node, NodeKind, ROOT_INO};
use crate::store::{Store, Unlock};

pub use io::{PutOptions, PutResult, View};
pub use maintenance::{FsckReport, GcReport};

pub struct Space {
    pub store: Arc<Store>,
    pub cache: Arc<ChunkCache>,
    transforms: Option<Arc<dyn TransformFactory>>,
    derived: Arc<views::DerivedCounters>,
    source_memo: views::SourceMemo,
}

/// A path split into its components; `/` and empty components are ignored.
pub fn components(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// Normalizes a user path to `/a/b` form for messages.
pub fn display_path(path: &str) -> String {
    format!("/{}", components(path).join("/"))
}

/// Walks `path` from the root; also returns the innermost directory policy on the way (what
/// a new capsule under it inherits).
pub(crate) fn walk(meta: &dyn MetaStore, path: &str) -> Result<(Node, Option<String>)> {
    let mut node = meta.get(ROOT_INO)?.ok_or_else(|| SpaceError::BadStore {
        path: "meta.db".into(),
        reason: "root directory missing".into(),
    })?;
    let mut inherited = node.policy.clone();
    let comps = components(path);
    for (i, c) in comps.iter().enumerate() {
        if *c == ".." {
            return Err(SpaceError::InvalidArgument(format!(
                "`..` is not allowed in store paths: {path}"
            )));
        }
        if node.kind != NodeKind::Dir {
            return Err(SpaceError::NotADirectory(format!(
                "/{}",
                comps[..i].join("/")
            )));
        }
        node = meta
            .lookup(node.ino, c.as_bytes())?
            .ok_or_else(|| SpaceError::NotFound(format!("/{}", comps[..=i].join("/"))))?;
        if node.kind == NodeKind::Dir && node.policy.is_some() {
            inherited = node.policy.clone();
        }
    }
    Ok((node, inherited))
}

impl Space {
    pub fn open(dir: &std::path::Path, unlock: &Unlock) -> Result<Space> {
        Ok(Space::new(Store::open(dir, unlock)?))
    }

    pub fn new(store: Store) -> Space {
        let cache = Arc::new(ChunkCache::new(store.config.chunk_cache_bytes));
        Space {
            store: Arc::new(store),
            cache,
            transforms: None,
            derived: Arc::default(),
            source_memo: views::new_source_memo(),
        }
    }

    /// Installs the transform runtime (the WASM engine) used for policies with chains.
    pub fn with_transforms(mut self, factory: Arc<dyn TransformFactory>) -> Space {
        self.transforms = Some(factory);
        self
    }

    pub fn transforms(&self) -> Option<&Arc<dyn TransformFactory>> {
        self.transforms.as_ref()
    }

    fn walk(&self, path: &str) -> Result<(Node, Option<String>)> {
        walk(self.store.meta.as_ref(), path).map_err(|e| match e {
            SpaceError::BadStore { reason, .. } => SpaceError::BadStore {
                path: self.store.dir.clone(),
                reason,
            },
            other => other,
        })
    }

    /// The node at `path`.
    pub fn resolve(&self, path: &str) -> Result<Node> {
        Ok(self.walk(path)?.0)
    }

    /// `ID|PATH` as the CLI accepts it: a UUID names a capsule directly.
    pub fn resolve_target(&self, target: &str) -> Result<(Node, String)> {
        if let Ok(id) = Uuid::parse_str(target) {
            let node = self
                .store
                .meta
                .get_by_uuid(id)?
                .ok_or_else(|| SpaceError::NotFound(format!("no capsule with id {id}")))?;
            let path = self
                .store
                .meta
                .path_of(node.ino)?
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_else(|| format!("<{id}>"));
            return Ok((node, path));
        }
        Ok((self.resolve(target)?, display_path(target)))
    }

    /// Parent directory and final name of `path` (which must not be the root).
    fn parent_of<'p>(&self, path: &'p str) -> Result<(Node, &'p str, Option<String>)> {
        let comps = components(path);
        let (name, parents) = comps.split_last().ok_or_else(|| {
            SpaceError::InvalidArgument("the root directory cannot be used here".into())
        })?;
        let parent_path = parents.join("/");
        let (parent, inherited) = self.walk(&parent_path).map_err(|e| match e {
            SpaceError::NotFound(p) => {
                SpaceError::NotFound(format!("{p} (parent directory of {})", display_path(path)))
            }
            other => other,
        })?;
        if parent.kind != NodeKind::Dir {
            return Err(SpaceError::NotADirectory(format!("/{parent_path}")));
        }
        Ok((parent, name, inherited))
    }

    /// The policy that governs a node (its own, or the store default).
    pub fn policy_of(&self, node: &Node) -> Result<Policy> {
        match &node.policy {
            Some(y) => Ok(Policy::from_yaml(y)?),
            None => Ok(Policy::default()),
        }
    }

    /// A name for messages: `capsule PATH (UUID)`, the path as of now.
    pub fn describe(&self, node: &Node) -> String {
        crate::pipeline::read_path::ReaderName::of_node(node, "").render(&self.store)
    }
}
