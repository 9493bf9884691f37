//! Namespace operations: lookup, attributes, directories, names, links, statfs.

use std::sync::Arc;

use super::handles::{DirEntry, Handle, HandleKind, OpenInode};
use super::inode_table::{InoKind, SPACE_DIR, SPACE_NAME, classify};
use super::{Attr, Caller, Errno, FsResult, Kind, SpaceFs, errno, lock};
use crate::store::meta::{NewNode, Node, NodeKind, ROOT_INO, SetAttr, TimeNs, now_ns};

/// Longest name and symlink target accepted (Linux's NAME_MAX and PATH_MAX - 1).
pub const NAME_MAX: usize = 255;
const TARGET_MAX: usize = 4095;

/// Attribute changes asked for by `setattr` (`None` = unchanged).
#[derive(Debug, Clone, Default)]
pub struct SetAttrRequest {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeNs>,
    pub mtime: Option<TimeNs>,
}

/// `statfs` figures, in blocks of `bsize`.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

impl SpaceFs {
    pub(crate) fn node(&self, ino: u64) -> FsResult<Node> {
        self.space
            .store
            .meta
            .get(ino)
            .map_err(errno)?
            .ok_or(libc::ENOENT)
    }

    /// A store directory that may be modified.
    fn writable_dir(&self, parent: u64) -> FsResult<Node> {
        match classify(parent) {
            InoKind::Store(p) => {
                self.check_writable()?;
                let n = self.node(p)?;
                if n.kind != NodeKind::Dir {
                    return Err(libc::ENOTDIR);
                }
                Ok(n)
            }
            _ => Err(libc::EROFS),
        }
    }

    pub(crate) fn open_inode(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.open).get(&ino).cloned()
    }

    /// `stat` of a store node, with what only the mount knows (dirty size, transformed size).
    pub(crate) fn node_attr(&self, node: &Node) -> Attr {
        let mut size = node.size;
        let mut size_unknown = false;
        let mut mtime = node.mtime;
        let mut ctime = node.ctime;
        if node.kind == NodeKind::File {
            let open = self.open_inode(node.ino);
            let dirty = open.as_ref().and_then(|o| {
                let st = lock(&o.state);
                let times = if st.dirty {
                    (st.mtime, st.changed)
                } else {
                    (None, None)
                };
                st.buf.as_ref().map(|b| (b.size(), times))
            });
            if let Some((s, (m, c))) = dirty {
                size = s;
                if let Some(m) = m {
                    mtime = m;
                }
                if let Some(c) = c {
                    ctime = ctime.max(c);
                }
            } else if self.chains(node).on_read {
                // Unknown until a stream reached the end: 0 makes `tail`, `cp`, … read to EOF
                // (docs/SEMANTICS.md, "Sizes of transformed capsules").
                let (s, known) = self.view_size(node, None, 0);
                size = s;
                size_unknown = !known;
            }
        }
        Attr {
            ino: node.ino,
            size,
            blocks: node.size.div_ceil(512),
            atime: node.atime,
            mtime,
            ctime,
            kind: node.kind.into(),
            perm: (node.mode & 0o7777) as u16,
            nlink: node.nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: node.rdev,
            size_unknown,
        }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        check_name(name)?;
        match classify(parent) {
            InoKind::Store(p) => {
                if p == ROOT_INO && name == SPACE_NAME {
                    return self.virtual_attr(SPACE_DIR);
                }
                let n = self
                    .space
                    .store
                    .meta
                    .lookup(p, name)
                    .map_err(errno)?
                    .ok_or(libc::ENOENT)?;
                Ok(self.node_attr(&n))
            }
            _ => self.virtual_lookup(parent, name),
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        match classify(ino) {
            InoKind::Store(i) => Ok(self.node_attr(&self.node(i)?)),
            _ => self.virtual_attr(ino),
        }
    }

    pub fn setattr(&self, ino: u64, req: &SetAttrRequest, fh: Option<u64>) -> FsResult<Attr> {
        let InoKind::Store(ino) = classify(ino) else {
            return Err(libc::EROFS);
        };
        self.check_writable()?;
        if let Some(size) = req.size {
            // The kernel refuses truncate(2) of anything but a regular file itself; this
            // covers callers that ask anyway.
            if self.node(ino)?.kind.is_special() {
                return Err(libc::EINVAL);
            }
            self.truncate(ino, size, fh.is_some())?;
        }
        let a = SetAttr {
            mode: req.mode.map(|m| m & 0o7777),
            uid: req.uid,
            gid: req.gid,
            atime: req.atime,
            mtime: req.mtime,
        };
        if a.mode.is_some()
            || a.uid.is_some()
            || a.gid.is_some()
            || a.atime.is_some()
            || a.mtime.is_some()
        {
            if let (Some(m), Some(open)) = (a.mtime, self.open_inode(ino)) {
                let mut st = lock(&open.state);
                if st.dirty {
                    st.mtime_override = Some(m);
                    st.mtime = Some(m);
                }
            }
            self.space.store.meta.set_attr(ino, &a).map_err(errno)?;
        }
        self.getattr(ino)
    }

    /// fallocate(2) through an open handle (the kernel has checked it is open for writing).
    pub fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let InoKind::Store(ino) = classify(ino) else {
            return Err(libc::EROFS);
        };
        self.check_writable()?;
        self.fallocate_file(ino, offset, length, mode)
    }

    /// New node's owner: the caller, with the group of a setgid parent directory.
    fn new_node(&self, parent: &Node, kind: NodeKind, mode: u32, caller: Caller) -> NewNode {
        let sgid_parent = parent.mode & libc::S_ISGID != 0;
        let mut mode = mode & 0o7777;
        if kind == NodeKind::Dir && sgid_parent {
            mode |= libc::S_ISGID;
        }
        NewNode {
            kind,
            mode,
            uid: caller.uid,
            gid: if sgid_parent { parent.gid } else { caller.gid },
            policy: None,
            target: None,
            rdev: 0,
        }
    }

    fn check_new_name(&self, parent: &Node, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        if parent.ino == ROOT_INO && name == SPACE_NAME {
            return Err(libc::EEXIST);
        }
        Ok(())
    }

    /// Creates a node of `kind` under a writable `parent`; `adjust` fills kind-specific fields.
    fn create_node(
        &self,
        parent: u64,
        name: &[u8],
        kind: NodeKind,
        mode: u32,
        caller: Caller,
        adjust: impl FnOnce(&Node, &mut NewNode) -> FsResult<()>,
    ) -> FsResult<Node> {
        let p = self.writable_dir(parent)?;
        self.check_new_name(&p, name)?;
        let mut new = self.new_node(&p, kind, mode, caller);
        adjust(&p, &mut new)?;
        self.space
            .store
            .meta
            .create(p.ino, name, new)
            .map_err(errno)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, caller: Caller) -> FsResult<Attr> {
        let n = self.create_node(parent, name, NodeKind::Dir, mode, caller, |_, _| Ok(()))?;
        Ok(self.node_attr(&n))
    }

    /// Creates an empty capsule, with the policy its directory passes on.
    pub(crate) fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        caller: Caller,
    ) -> FsResult<Node> {
        self.create_node(parent, name, NodeKind::File, mode, caller, |p, new| {
            new.policy = self.inherited_policy(p).map_err(errno)?;
            Ok(())
        })
    }

    /// mknod(2)/mkfifo(3): a FIFO, socket or device node (`rdev`, a Linux `dev_t`, names the
    /// device), or an empty regular file (as `create`). Directories are made with `mkdir`.
    /// The kernel has applied the umask to `mode` already (spacefs does not ask for
    /// FUSE_DONT_MASK) and checked CAP_MKNOD for devices.
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> FsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => {
                let n = self.create_file(parent, name, mode, caller)?;
                return Ok(self.node_attr(&n));
            }
            libc::S_IFIFO => NodeKind::Fifo,
            libc::S_IFSOCK => NodeKind::Socket,
            libc::S_IFCHR => NodeKind::CharDevice,
            libc::S_IFBLK => NodeKind::BlockDevice,
            libc::S_IFDIR => return Err(libc::EPERM),
            _ => return Err(libc::EINVAL),
        };
        let n = self.create_node(parent, name, kind, mode, caller, |_, new| {
            if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
                new.rdev = rdev;
            }
            Ok(())
        })?;
        Ok(self.node_attr(&n))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> FsResult<Attr> {
        let p = self.writable_dir(parent)?;
        self.check_new_name(&p, name)?;
        if target.len() > TARGET_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        let mut new = self.new_node(&p, NodeKind::Symlink, 0o777, caller);
        new.gid = if p.mode & libc::S_ISGID != 0 {
            p.gid
        } else {
            caller.gid
        };
        new.target = Some(target.to_vec());
        let n = self
            .space
            .store
            .meta
            .create(p.ino, name, new)
            .map_err(errno)?;
        Ok(self.node_attr(&n))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let i = match classify(ino) {
            InoKind::Store(i) | InoKind::Raw(i) => i,
            _ => return Err(libc::EINVAL),
        };
        let n = self.node(i)?;
        match (n.kind, n.target) {
            (NodeKind::Symlink, Some(t)) => Ok(t),
            _ => Err(libc::EINVAL),
        }
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let p = self.writable_dir(parent)?;
        check_name(name)?;
        if p.ino == ROOT_INO && name == SPACE_NAME {
            return Err(libc::EBUSY);
        }
        let open = lock(&self.open);
        let kept = self
            .space
            .store
            .meta
            .unlink_keep(p.ino, name, &|ino| open.contains_key(&ino))
            .map_err(errno)?;
        if let Some(ino) = kept {
            if let Some(o) = open.get(&ino) {
                lock(&o.state).orphan = true;
            }
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let p = self.writable_dir(parent)?;
        check_name(name)?;
        if p.ino == ROOT_INO && name == SPACE_NAME {
            return Err(libc::EBUSY);
        }
        if name == b"." {
            return Err(libc::EINVAL);
        }
        self.space.store.meta.rmdir(p.ino, name).map_err(errno)?;
        self.forget_inherited_policies();
        Ok(())
    }

    /// POSIX rename; `no_replace` is RENAME_NOREPLACE (RENAME_EXCHANGE: [`SpaceFs::exchange`]).
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        no_replace: bool,
    ) -> FsResult<()> {
        let (p, np) = self.rename_dirs(parent, name, new_parent, new_name)?;
        let open = lock(&self.open);
        let kept = self
            .space
            .store
            .meta
            .rename_keep(p.ino, name, np.ino, new_name, no_replace, &|ino| {
                open.contains_key(&ino)
            })
            .map_err(errno)?;
        if let Some(ino) = kept {
            if let Some(o) = open.get(&ino) {
                lock(&o.state).orphan = true;
            }
        }
        // A directory moved elsewhere inherits from its new ancestors.
        self.forget_inherited_policies();
        Ok(())
    }

    /// The two directories of a rename or exchange, both writable store directories (else
    /// `EXDEV`: a move into or out of `/.space`), with valid names that are not `/.space`.
    fn rename_dirs(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
    ) -> FsResult<(Node, Node)> {
        let dir = |ino| {
            self.writable_dir(ino)
                .map_err(|e| if e == libc::EROFS { libc::EXDEV } else { e })
        };
        let (p, np) = (dir(parent)?, dir(new_parent)?);
        check_name(name)?;
        check_name(new_name)?;
        if (p.ino == ROOT_INO && name == SPACE_NAME)
            || (np.ino == ROOT_INO && new_name == SPACE_NAME)
        {
            return Err(libc::EBUSY);
        }
        Ok((p, np))
    }

    /// renameat2(RENAME_EXCHANGE): the two names swap nodes atomically.
    pub fn exchange(
        &self,
        parent: u64,
        name: &[u8],
        other_parent: u64,
        other_name: &[u8],
    ) -> FsResult<()> {
        let (p, op) = self.rename_dirs(parent, name, other_parent, other_name)?;
        self.space
            .store
            .meta
            .exchange(p.ino, name, op.ino, other_name)
            .map_err(errno)?;
        // Directories that moved inherit from their new ancestors.
        self.forget_inherited_policies();
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Attr> {
        let InoKind::Store(ino) = classify(ino) else {
            return Err(libc::EXDEV);
        };
        let np = self.writable_dir(new_parent)?;
        self.check_new_name(&np, new_name)?;
        let n = self.node(ino)?;
        if n.kind == NodeKind::Dir {
            return Err(libc::EPERM);
        }
        let n = self
            .space
            .store
            .meta
            .link(ino, np.ino, new_name)
            .map_err(errno)?;
        Ok(self.node_attr(&n))
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let path = std::ffi::CString::new(self.space.store.dir.as_os_str().as_encoded_bytes())
            .map_err(|_| libc::EINVAL)?;
        // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        let frsize = s.f_frsize.max(1);
        let scale = |blocks: u64| blocks * frsize / 4096;
        Ok(StatFs {
            blocks: scale(s.f_blocks as u64),
            bfree: scale(s.f_bfree as u64),
            bavail: scale(s.f_bavail as u64),
            files: s.f_files as u64,
            ffree: s.f_ffree as u64,
            bsize: 4096,
            namelen: NAME_MAX as u32,
        })
    }

    /// access(2) by mode bits (the kernel does the same with `default_permissions`, which
    /// spacefs always asks for; this serves kernels that ask anyway).
    pub fn access(&self, ino: u64, mask: i32, caller: Caller) -> FsResult<()> {
        let a = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0
            && (self.opts.read_only || !matches!(classify(ino), InoKind::Store(_)))
        {
            return Err(libc::EROFS);
        }
        let perm = a.perm as i32;
        if caller.uid == 0 {
            if mask & libc::X_OK != 0 && a.kind != Kind::Dir && perm & 0o111 == 0 {
                return Err(libc::EACCES);
            }
            return Ok(());
        }
        let bits = if caller.uid == a.uid {
            (perm >> 6) & 7
        } else if caller.gid == a.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if bits & mask == mask {
            Ok(())
        } else {
            Err(libc::EACCES)
        }
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let a = self.getattr(ino)?;
        if a.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(self.handles.insert(Handle {
            kind: HandleKind::Dir {
                ino,
                entries: std::sync::Mutex::new(None),
            },
        }))
    }

    fn list_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let mut out = vec![
            DirEntry {
                ino,
                name: b".".to_vec(),
                kind: Kind::Dir,
            },
            DirEntry {
                ino,
                name: b"..".to_vec(),
                kind: Kind::Dir,
            },
        ];
        match classify(ino) {
            InoKind::Store(i) => {
                for (name, n) in self.space.store.meta.list(i).map_err(errno)? {
                    if i == ROOT_INO && name == SPACE_NAME {
                        continue; // shadowed by the virtual directory
                    }
                    out.push(DirEntry {
                        ino: n.ino,
                        name,
                        kind: n.kind.into(),
                    });
                }
            }
            _ => out.extend(self.virtual_list(ino)?),
        }
        Ok(out)
    }

    /// Entries from index `offset` on, each with the offset of the entry after it.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        let h = self.handles.get(fh).ok_or(libc::EBADF)?;
        let HandleKind::Dir { ino, entries } = &h.kind else {
            return Err(libc::EBADF);
        };
        let mut e = lock(entries);
        if offset == 0 || e.is_none() {
            *e = Some(self.list_dir(*ino)?);
        }
        let list = e.as_ref().expect("listed above");
        Ok(list
            .iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, d)| (i as u64 + 1, d.clone()))
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub(crate) fn now() -> TimeNs {
        now_ns()
    }
}

/// For the adapter: an errno for an operation spacefs does not support.
pub const UNSUPPORTED: Errno = libc::EOPNOTSUPP;
