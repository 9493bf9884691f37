//! Extended attributes: `user.*`, `trusted.*` and `security.*` are stored with the node;
//! `user.space.policy` reads and sets the node's policy YAML; `user.space.id` shows its UUID;
//! `user.space.provenance` shows which modules produced the bytes (read-only).
//! `system.*` (POSIX ACLs) is not supported.

use std::sync::atomic::Ordering;

use super::inode_table::{InoKind, classify};
use super::{FsResult, SpaceFs, errno};
use crate::error::SpaceError;
use crate::policy::Policy;
use crate::store::meta::NodeKind;

pub const POLICY_XATTR: &str = "user.space.policy";
pub const ID_XATTR: &str = "user.space.id";
/// What produced the bytes a reader sees (read-only): the on-write chain's record for stored
/// bytes, or the derived entry's for a materialized view.
pub const PROVENANCE_XATTR: &str = "user.space.provenance";

/// setxattr flags.
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

fn stored_namespace(name: &str) -> FsResult<()> {
    if name.starts_with("user.") || name.starts_with("trusted.") || name.starts_with("security.") {
        Ok(())
    } else {
        Err(libc::EOPNOTSUPP)
    }
}

impl SpaceFs {
    /// The store inode behind `ino` and whether it may be changed.
    fn xattr_target(&self, ino: u64) -> FsResult<(u64, bool)> {
        match classify(ino) {
            InoKind::Store(i) => Ok((i, !self.opts.read_only)),
            InoKind::Raw(i) => Ok((i, false)),
            InoKind::Unknown => Err(libc::ENOENT),
            _ => Err(libc::ENODATA),
        }
    }

    /// Provenance of what `ino` reads as: for a capsule, the on-write chain's record, else its
    /// materialized default view's; for a named view, that view's entry.
    fn provenance(&self, ino: u64) -> FsResult<Option<String>> {
        let (i, view) = match classify(ino) {
            InoKind::Store(i) => (i, None),
            InoKind::View { view, ino } => (ino, Some(self.view_name(view)?)),
            _ => return Ok(None),
        };
        let node = self.node(i)?;
        if node.kind != NodeKind::File {
            return Ok(None);
        }
        if view.is_none() {
            if let Some(p) = self.space.store.meta.provenance(i).map_err(errno)? {
                return Ok(Some(p));
            }
        }
        let Ok(Some(d)) = self.space.derivation(&node, view.as_deref()) else {
            return Ok(None);
        };
        Ok(self
            .space
            .materialized(&d)
            .map_err(errno)?
            .map(|e| e.provenance))
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        // The kernel asks for security.capability before every write(2) to a file; while no
        // security.* attribute exists, answer without touching the metadata.
        if name.starts_with("security.")
            && !self.security_xattrs.load(Ordering::Relaxed)
            && matches!(classify(ino), InoKind::Store(_))
        {
            return Err(libc::ENODATA);
        }
        if name == PROVENANCE_XATTR {
            return self
                .provenance(ino)?
                .map(String::into_bytes)
                .ok_or(libc::ENODATA);
        }
        let (i, _) = self.xattr_target(ino)?;
        let node = self.node(i)?;
        match name {
            ID_XATTR => Ok(node.uuid.to_string().into_bytes()),
            POLICY_XATTR => match (&node.policy, node.kind) {
                (Some(p), _) => Ok(p.clone().into_bytes()),
                (None, NodeKind::File) => Ok(Policy::default().to_yaml().into_bytes()),
                (None, _) => Err(libc::ENODATA),
            },
            _ => {
                stored_namespace(name)?;
                self.space
                    .store
                    .meta
                    .get_xattr(i, name)
                    .map_err(errno)?
                    .ok_or(libc::ENODATA)
            }
        }
    }

    pub fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        let (i, writable) = self.xattr_target(ino)?;
        if !writable {
            return Err(libc::EROFS);
        }
        let node = self.node(i)?;
        match name {
            ID_XATTR | PROVENANCE_XATTR => Err(libc::EPERM),
            POLICY_XATTR => {
                if node.kind == NodeKind::Symlink {
                    return Err(libc::EPERM);
                }
                let text = std::str::from_utf8(value).map_err(|_| libc::EINVAL)?;
                // As `spacectl policy set`: valid YAML whose modules resolve, verify and load;
                // the reason goes to the log, as a setxattr can return only an errno.
                let policy = Policy::from_yaml(text)
                    .map_err(SpaceError::from)
                    .and_then(|p| self.space.check_policy(&p).map(|()| p))
                    .map_err(|e| {
                        log::warn!("{}: rejected policy: {e}", self.space.describe(&node));
                        libc::EINVAL
                    })?;
                self.space
                    .store
                    .meta
                    .set_policy(i, Some(&policy.to_yaml()))
                    .map_err(errno)?;
                self.forget_inherited_policies();
                Ok(())
            }
            _ => {
                stored_namespace(name)?;
                if name.len() > 255 {
                    return Err(libc::ERANGE);
                }
                if name.starts_with("security.") {
                    // Before the write, so no reader can miss it.
                    self.security_xattrs.store(true, Ordering::Relaxed);
                }
                if flags & (XATTR_CREATE | XATTR_REPLACE) != 0 {
                    let exists = self
                        .space
                        .store
                        .meta
                        .get_xattr(i, name)
                        .map_err(errno)?
                        .is_some();
                    if flags & XATTR_CREATE != 0 && exists {
                        return Err(libc::EEXIST);
                    }
                    if flags & XATTR_REPLACE != 0 && !exists {
                        return Err(libc::ENODATA);
                    }
                }
                self.space
                    .store
                    .meta
                    .set_xattr(i, name, value)
                    .map_err(errno)
            }
        }
    }

    /// Names, each followed by a NUL (the listxattr wire format).
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let provenance = matches!(self.provenance(ino), Ok(Some(_)));
        let (i, _) = match self.xattr_target(ino) {
            Ok(t) => t,
            Err(libc::ENODATA) if provenance => {
                return Ok(format!("{PROVENANCE_XATTR}\0").into_bytes());
            }
            Err(libc::ENODATA) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let node = self.node(i)?;
        let mut names = vec![ID_XATTR.to_string()];
        if node.policy.is_some() || node.kind == NodeKind::File {
            names.push(POLICY_XATTR.to_string());
        }
        if provenance {
            names.push(PROVENANCE_XATTR.to_string());
        }
        names.extend(self.space.store.meta.list_xattr(i).map_err(errno)?);
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        let (i, writable) = self.xattr_target(ino)?;
        if !writable {
            return Err(libc::EROFS);
        }
        match name {
            ID_XATTR | PROVENANCE_XATTR => Err(libc::EPERM),
            POLICY_XATTR => {
                let node = self.node(i)?;
                if node.policy.is_none() {
                    return Err(libc::ENODATA);
                }
                self.space.store.meta.set_policy(i, None).map_err(errno)?;
                self.forget_inherited_policies();
                Ok(())
            }
            _ => {
                stored_namespace(name)?;
                if self.space.store.meta.remove_xattr(i, name).map_err(errno)? {
                    Ok(())
                } else {
                    Err(libc::ENODATA)
                }
            }
        }
    }
}
