//! Views through the mount: `/.space/views/<view>/<path>` shows every capsule whose policy
//! declares the named view (and every directory, so paths stay the same), read through that
//! view's chain; the default view is the normal tree itself. Sizes are exact once a view is
//! materialized in the derived-output cache, and reads of a materialized view are plain random
//! access to stored chunks (the page cache may keep them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::handles::{Handle, HandleKind};
use super::inode_table::{VIEWS_DIR, view_ino};
use super::read_stream::ChainStream;
use super::{Attr, FsResult, Kind, SpaceFs, errno, lock};
use crate::pipeline::read_path::ReaderName;
use crate::policy::Policy;
use crate::store::meta::{Node, NodeKind};

/// View names seen by this mount ↔ the small numbers inside their inode numbers.
#[derive(Default)]
pub struct ViewRegistry {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl ViewRegistry {
    /// The number of `name` (given out on first sight; 1-based).
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(i) = self.ids.get(name) {
            return *i;
        }
        self.names.push(name.to_string());
        let i = self.names.len() as u32;
        self.ids.insert(name.to_string(), i);
        i
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get((id as usize).checked_sub(1)?).map(|s| &**s)
    }
}

/// Which view a size or stream belongs to: 0 is the default view.
pub type ViewId = u32;

impl SpaceFs {
    pub(crate) fn view_name(&self, id: ViewId) -> FsResult<String> {
        lock(&self.views)
            .name(id)
            .map(str::to_string)
            .ok_or(libc::ENOENT)
    }

    /// Every view name declared by some policy in the store.
    pub(crate) fn declared_views(&self) -> FsResult<Vec<String>> {
        let mut names: Vec<String> = Vec::new();
        for yaml in self
            .space
            .store
            .meta
            .policies_containing("views:")
            .map_err(errno)?
        {
            if let Ok(p) = Policy::from_yaml(&yaml) {
                names.extend(p.views.keys().map(|k| k.to_string()));
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Whether `node` shows up under view `name`: directories always, capsules that declare it.
    fn in_view(&self, node: &Node, name: &str) -> bool {
        match node.kind {
            NodeKind::Dir => true,
            NodeKind::File => self
                .space
                .policy_of(node)
                .is_ok_and(|p| p.views.contains_key(name)),
            _ => false,
        }
    }

    /// Size of a view of a capsule: exact once materialized (or once a stream reached the
    /// end), else 0 so readers read to EOF (docs/SEMANTICS.md).
    /// Returns (size, known).
    pub(crate) fn view_size(&self, node: &Node, view: Option<&str>, id: ViewId) -> (u64, bool) {
        match self.space.derivation(node, view) {
            Ok(None) => return (node.size, true),
            Ok(Some(d)) if d.preserves_size => return (node.size, true),
            Ok(Some(d)) => match self.space.materialized(&d) {
                Ok(Some(e)) => return (e.size, true),
                Ok(None) => {}
                Err(e) => log::warn!("{}: cache lookup failed: {e}", self.name_of(node)),
            },
            Err(e) => log::debug!("{}: view unavailable: {e}", self.name_of(node)),
        }
        match lock(&self.transformed_sizes).get(&(node.ino, id)) {
            Some((v, s)) if *v == node.version => (*s, true),
            _ => (0, false),
        }
    }

    fn view_attr(&self, node: &Node, id: ViewId, name: &str) -> FsResult<Attr> {
        let ino = view_ino(id, node.ino).ok_or(libc::EOVERFLOW)?;
        let (size, known) = match node.kind {
            NodeKind::File => self.view_size(node, Some(name), id),
            _ => (0, true),
        };
        Ok(Attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            kind: node.kind.into(),
            perm: (node.mode & 0o7555) as u16,
            nlink: if node.kind == NodeKind::Dir { 2 } else { 1 },
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            size_unknown: !known,
        })
    }

    /// `/.space/views/<name>`: the view's root.
    pub(crate) fn views_lookup(&self, name: &[u8]) -> FsResult<Attr> {
        let name = std::str::from_utf8(name).map_err(|_| libc::ENOENT)?;
        if !self.declared_views()?.iter().any(|v| v == name) {
            return Err(libc::ENOENT);
        }
        let id = lock(&self.views).id(name);
        self.view_attr(&self.node(crate::store::meta::ROOT_INO)?, id, name)
    }

    pub(crate) fn views_list(&self) -> FsResult<Vec<super::handles::DirEntry>> {
        let mut out = Vec::new();
        for name in self.declared_views()? {
            let id = lock(&self.views).id(&name);
            if let Some(ino) = view_ino(id, crate::store::meta::ROOT_INO) {
                out.push(super::handles::DirEntry {
                    ino,
                    name: name.into_bytes(),
                    kind: Kind::Dir,
                });
            }
        }
        Ok(out)
    }

    pub(crate) fn view_node_attr(&self, id: ViewId, ino: u64) -> FsResult<Attr> {
        let name = self.view_name(id)?;
        let node = self.node(ino)?;
        if !self.in_view(&node, &name) {
            return Err(libc::ENOENT);
        }
        self.view_attr(&node, id, &name)
    }

    pub(crate) fn view_lookup(&self, id: ViewId, dir: u64, name: &[u8]) -> FsResult<Attr> {
        let view = self.view_name(id)?;
        let parent = self.node(dir)?;
        if parent.kind != NodeKind::Dir {
            return Err(libc::ENOTDIR);
        }
        if dir == crate::store::meta::ROOT_INO && name == super::inode_table::SPACE_NAME {
            return Err(libc::ENOENT);
        }
        let node = self
            .space
            .store
            .meta
            .lookup(dir, name)
            .map_err(errno)?
            .ok_or(libc::ENOENT)?;
        if !self.in_view(&node, &view) {
            return Err(libc::ENOENT);
        }
        self.view_attr(&node, id, &view)
    }

    pub(crate) fn view_list(
        &self,
        id: ViewId,
        dir: u64,
    ) -> FsResult<Vec<super::handles::DirEntry>> {
        let view = self.view_name(id)?;
        let mut out = Vec::new();
        for (name, n) in self.space.store.meta.list(dir).map_err(errno)? {
            if dir == crate::store::meta::ROOT_INO && name == super::inode_table::SPACE_NAME {
                continue;
            }
            if self.in_view(&n, &view) {
                if let Some(ino) = view_ino(id, n.ino) {
                    out.push(super::handles::DirEntry {
                        ino,
                        name,
                        kind: n.kind.into(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Opens a view of a capsule for reading: the cached output when materialized (random
    /// access, page cache allowed), else a stream through the chain that stores its output in
    /// the cache as it goes.
    pub(crate) fn open_view(
        &self,
        node: &Node,
        view: Option<&str>,
        id: ViewId,
    ) -> FsResult<super::file_ops::Opened> {
        let name = match view {
            None => self.name_of(node),
            Some(v) => format!("{} (view {v})", self.name_of(node)),
        };
        let d = self
            .space
            .derivation(node, view)
            .map_err(errno)?
            .ok_or(libc::EIO)?;
        let inode = self.acquire(node, false);
        let entry = match self.space.cached(&d) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("{name}: cache lookup failed, streaming instead: {e}");
                None
            }
        };
        if let Some(e) = entry {
            let reader = self.space.entry_reader(&e, format!("{name} (cached view)"));
            let fh = self.handles.insert(Handle {
                kind: HandleKind::Reader {
                    reader: Mutex::new(reader),
                    inode: Some(inode),
                },
            });
            return Ok(super::file_ops::Opened {
                fh,
                direct_io: false,
                keep_cache: false,
            });
        }
        let writer = self.space.begin_derived(&d);
        let space = Arc::clone(&self.space);
        let what = name.clone();
        let chain = d.chain;
        let mut stream = ChainStream::new(
            self.new_reader(node, ReaderName::Text(name.as_str().into())),
            name,
            Box::new(move || space.open_chain(&chain, &what)),
            writer,
        );
        if d.chunk_local {
            stream = stream.chunk_local(d.preserves_size);
        } else if d.preserves_size {
            stream = stream.expect_size(node.size);
        }
        let fh = self.handles.insert(Handle {
            kind: HandleKind::Stream {
                inode,
                view: id,
                stream: Box::new(Mutex::new(stream)),
            },
        });
        Ok(super::file_ops::Opened {
            fh,
            direct_io: true,
            keep_cache: false,
        })
    }
}

/// Inode of `/.space/views` (for the adapter's tests).
pub const VIEWS_DIR_INO: u64 = VIEWS_DIR;
