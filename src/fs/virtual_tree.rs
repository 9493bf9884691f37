//! The virtual `/.space` directory: `raw/<path>` (stored bytes, no on-read chain), `by-id/<uuid>`
//! (a capsule by UUID; not listable), `views/<view>/<path>` (named views, see `view_tree`) and
//! `stats` (counters, read-only). Hidden from the root's
//! listing so `find`, `du` and `rm -r` never walk it; reachable by name.

use super::handles::DirEntry;
use super::inode_table::{
    BY_ID_DIR, InoKind, RAW_DIR, SPACE_DIR, STATS_FILE, VIEWS_DIR, classify, raw_ino,
};
use super::{Attr, FsResult, Kind, SpaceFs, errno};
use crate::store::meta::Node;

impl SpaceFs {
    fn synthetic(&self, ino: u64, kind: Kind, perm: u16) -> Attr {
        let root = self.node(crate::store::meta::ROOT_INO).ok();
        let (uid, gid, t) = root.map(|r| (r.uid, r.gid, r.mtime)).unwrap_or((0, 0, 0));
        Attr {
            ino,
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            kind,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            size_unknown: false,
        }
    }

    fn raw_attr(&self, node: &Node) -> Attr {
        Attr {
            ino: raw_ino(node.ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            kind: node.kind.into(),
            perm: (node.mode & 0o7555) as u16,
            nlink: node.nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: node.rdev,
            size_unknown: false,
        }
    }

    pub(crate) fn virtual_attr(&self, ino: u64) -> FsResult<Attr> {
        match classify(ino) {
            InoKind::SpaceDir | InoKind::ById | InoKind::ViewsDir => {
                Ok(self.synthetic(ino, Kind::Dir, 0o555))
            }
            InoKind::View { view, ino } => self.view_node_attr(view, ino),
            InoKind::Stats => Ok(self.synthetic(ino, Kind::File, 0o444)),
            InoKind::Raw(i) => Ok(self.raw_attr(&self.node(i)?)),
            InoKind::Store(_) | InoKind::Unknown => Err(libc::ENOENT),
        }
    }

    pub(crate) fn virtual_lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        match classify(parent) {
            InoKind::SpaceDir => match name {
                b"raw" => self.virtual_attr(RAW_DIR),
                b"by-id" => self.virtual_attr(BY_ID_DIR),
                b"stats" => self.virtual_attr(STATS_FILE),
                b"views" => self.virtual_attr(VIEWS_DIR),
                _ => Err(libc::ENOENT),
            },
            InoKind::ViewsDir => self.views_lookup(name),
            InoKind::View { view, ino } => self.view_lookup(view, ino, name),
            InoKind::ById => {
                let id = std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .ok_or(libc::ENOENT)?;
                let n = self
                    .space
                    .store
                    .meta
                    .get_by_uuid(id)
                    .map_err(errno)?
                    .ok_or(libc::ENOENT)?;
                Ok(self.node_attr(&n))
            }
            InoKind::Raw(i) => {
                let n = self
                    .space
                    .store
                    .meta
                    .lookup(i, name)
                    .map_err(errno)?
                    .ok_or(libc::ENOENT)?;
                Ok(self.raw_attr(&n))
            }
            InoKind::Stats => Err(libc::ENOTDIR),
            InoKind::Store(_) | InoKind::Unknown => Err(libc::ENOENT),
        }
    }

    pub(crate) fn virtual_list(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let e = |ino, name: &[u8], kind| DirEntry {
            ino,
            name: name.to_vec(),
            kind,
        };
        match classify(ino) {
            InoKind::SpaceDir => Ok(vec![
                e(RAW_DIR, b"raw", Kind::Dir),
                e(BY_ID_DIR, b"by-id", Kind::Dir),
                e(STATS_FILE, b"stats", Kind::File),
                e(VIEWS_DIR, b"views", Kind::Dir),
            ]),
            InoKind::ViewsDir => self.views_list(),
            InoKind::View { view, ino } => self.view_list(view, ino),
            InoKind::ById => Ok(Vec::new()),
            InoKind::Raw(i) => Ok(self
                .space
                .store
                .meta
                .list(i)
                .map_err(errno)?
                .into_iter()
                .map(|(name, n)| e(raw_ino(n.ino), &name, n.kind.into()))
                .collect()),
            _ => Err(libc::ENOTDIR),
        }
    }
}

/// Inode of `/.space` (for the adapter's tests).
pub const SPACE_DIR_INO: u64 = SPACE_DIR;
