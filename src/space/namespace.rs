//! Namespace operations by path: mkdir, rm, mv, ls, policies.

use super::{Space, components, display_path};
use crate::error::{Result, SpaceError};
use crate::policy::Policy;
use crate::store::meta::{NewNode, Node, NodeKind};

impl Space {
    /// Creates a directory (and, with `parents`, missing ancestors; existing ones are fine).
    pub fn mkdir(&self, path: &str, parents: bool, policy: Option<&Policy>) -> Result<Node> {
        if let Some(p) = policy {
            self.check_policy(p)?;
        }
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let new = |p: Option<&Policy>| NewNode {
            kind: NodeKind::Dir,
            mode: 0o755,
            uid,
            gid,
            policy: p.map(|p| p.to_yaml()),
            target: None,
            rdev: 0,
        };
        if !parents {
            let (parent, name, _) = self.parent_of(path)?;
            return self
                .store
                .meta
                .create(parent.ino, name.as_bytes(), new(policy))
                .map_err(|e| match e {
                    SpaceError::AlreadyExists(_) => SpaceError::AlreadyExists(display_path(path)),
                    other => other,
                });
        }
        let comps = components(path);
        let mut cur = self.resolve("/")?;
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            cur = match self.store.meta.lookup(cur.ino, c.as_bytes())? {
                Some(n) if n.kind == NodeKind::Dir => {
                    if last {
                        if let Some(p) = policy {
                            self.store.meta.set_policy(n.ino, Some(&p.to_yaml()))?;
                        }
                    }
                    n
                }
                Some(_) => {
                    return Err(SpaceError::NotADirectory(format!(
                        "/{}",
                        comps[..=i].join("/")
                    )));
                }
                None => match self.store.meta.create(
                    cur.ino,
                    c.as_bytes(),
                    new(if last { policy } else { None }),
                ) {
                    Ok(n) => n,
                    // Lost a race with another creator: use theirs.
                    Err(SpaceError::AlreadyExists(_)) => self
                        .store
                        .meta
                        .lookup(cur.ino, c.as_bytes())?
                        .ok_or_else(|| SpaceError::NotFound(display_path(path)))?,
                    Err(e) => return Err(e),
                },
            };
        }
        Ok(cur)
    }

    /// Removes a capsule, symlink, or (with `recursive`, or if empty) a directory tree.
    pub fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let (parent, name, _) = self.parent_of(path)?;
        let node = self
            .store
            .meta
            .lookup(parent.ino, name.as_bytes())?
            .ok_or_else(|| SpaceError::NotFound(display_path(path)))?;
        if node.kind == NodeKind::Dir {
            if recursive {
                self.remove_children(&node)?;
            }
            return self
                .store
                .meta
                .rmdir(parent.ino, name.as_bytes())
                .map_err(|e| match e {
                    SpaceError::NotEmpty(_) => SpaceError::NotEmpty(format!(
                        "{} (use -r to remove it and its contents)",
                        display_path(path)
                    )),
                    other => other,
                });
        }
        self.store.meta.unlink(parent.ino, name.as_bytes())
    }

    fn remove_children(&self, dir: &Node) -> Result<()> {
        for (name, child) in self.store.meta.list(dir.ino)? {
            if child.kind == NodeKind::Dir {
                self.remove_children(&child)?;
                self.store.meta.rmdir(dir.ino, &name)?;
            } else {
                self.store.meta.unlink(dir.ino, &name)?;
            }
        }
        Ok(())
    }

    /// Renames `from` to `to`. If `to` is an existing directory, moves into it (like mv).
    /// An existing target file is replaced only with `replace`.
    pub fn rename(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        let (sp, sname, _) = self.parent_of(from)?;
        if self.store.meta.lookup(sp.ino, sname.as_bytes())?.is_none() {
            return Err(SpaceError::NotFound(display_path(from)));
        }
        let (dp, dname) = match self.resolve(to) {
            Ok(n) if n.kind == NodeKind::Dir => (n, sname.to_string()),
            _ => {
                let (dp, dname, _) = self.parent_of(to)?;
                (dp, dname.to_string())
            }
        };
        self.store
            .meta
            .rename(sp.ino, sname.as_bytes(), dp.ino, dname.as_bytes(), !replace)
            .map_err(|e| match e {
                SpaceError::AlreadyExists(_) => SpaceError::AlreadyExists(format!(
                    "{} (use --force to replace it)",
                    display_path(to)
                )),
                other => other,
            })
    }

    /// Entries of a directory (or the single entry for a file path).
    pub fn list(&self, path: &str) -> Result<Vec<(String, Node)>> {
        let node = self.resolve(path)?;
        if node.kind != NodeKind::Dir {
            let name = components(path)
                .last()
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Ok(vec![(name, node)]);
        }
        Ok(self
            .store
            .meta
            .list(node.ino)?
            .into_iter()
            .map(|(n, node)| (String::from_utf8_lossy(&n).into_owned(), node))
            .collect())
    }

    /// Attaches a policy to a capsule or directory (directories pass it to new children).
    /// Changing a capsule's on-write chain does not rewrite bytes already stored.
    pub fn set_policy(&self, path: &str, policy: Option<&Policy>) -> Result<Node> {
        let node = self.resolve(path)?;
        if let Some(p) = policy {
            self.check_policy(p)?;
        }
        self.store
            .meta
            .set_policy(node.ino, policy.map(|p| p.to_yaml()).as_deref())
    }
}

impl Space {
    /// The policy a new capsule created in directory `dir` inherits: the innermost policy on
    /// the way from the root to `dir` (what [`Space::put`] uses for a new path).
    pub fn inherited_policy(&self, dir: &Node) -> Result<Option<String>> {
        if dir.kind == NodeKind::Dir && dir.policy.is_some() {
            return Ok(dir.policy.clone());
        }
        self.store.meta.nearest_policy(dir.ino)
    }
}
