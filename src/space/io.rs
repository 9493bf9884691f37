//! Putting capsules in and reading them out, with their policies' transform chains.

use std::io::{Read, Write};
use std::sync::Arc;

use super::Space;
use crate::error::{Result, SpaceError};
use crate::pipeline::chunk_codec::EncodeSettings;
use crate::pipeline::read_path::{ReaderName, stream_chunks};
use crate::pipeline::transform::{ChunkTransform, TransformReader};
use crate::pipeline::write_path::write_prefix;
use crate::pipeline::{CapsuleReader, WriteReport, write_stream};
use crate::policy::{Policy, TransformSpec};
use crate::store::LockMode;
use crate::store::meta::{Content, ContentChunk, NewNode, Node, NodeKind};

/// Options for [`Space::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Explicit policy; otherwise the existing capsule's, else the nearest directory's.
    pub policy: Option<Policy>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Create missing parent directories.
    pub parents: bool,
}

#[derive(Debug, Clone)]
pub struct PutResult {
    pub node: Node,
    /// True if an existing capsule got a new version.
    pub replaced: bool,
    pub report: WriteReport,
}

/// Which bytes a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The capsule's bytes after its on-read chain (what users normally see).
    Transformed,
    /// The stored bytes, without on-read transforms.
    Raw,
}

/// Size of the pieces the write path hands to an on-write chain (the chain re-splits them to
/// fit each module's limits).
const TRANSFORM_PIECE: usize = 256 * 1024;

impl Space {
    /// Opens the chain for `specs`, or explains why it can't run.
    pub fn open_chain(
        &self,
        specs: &[TransformSpec],
        what: &str,
    ) -> Result<Box<dyn ChunkTransform>> {
        let f = self.transforms.as_ref().ok_or_else(|| {
            SpaceError::Transform(format!(
                "{what}: the policy has transforms but no WASM runtime is loaded"
            ))
        })?;
        f.open_chain(specs)
            .map_err(|e| SpaceError::Transform(format!("{what}: {e}")))
    }

    /// Checks that a policy's chains can be opened (modules found, verified, compiled, args
    /// accepted), so a bad policy is refused when attached rather than on the first read.
    pub fn check_policy(&self, policy: &Policy) -> Result<()> {
        for trigger in [
            crate::policy::Trigger::OnRead,
            crate::policy::Trigger::OnWrite,
        ] {
            let specs: Vec<TransformSpec> = policy
                .transform
                .iter()
                .filter(|t| t.trigger == trigger)
                .cloned()
                .collect();
            if !specs.is_empty() {
                self.open_chain(&specs, "policy")?;
            }
        }
        Ok(())
    }

    /// Runs `input` through the policy's on-write chain (if any) and the write path. The
    /// caller holds the store lock and commits the returned content.
    fn write_through_policy(
        &self,
        input: &mut dyn Read,
        policy: &Policy,
        what: &str,
        progress: &dyn Fn(u64),
    ) -> Result<(Content, WriteReport)> {
        let chain: Vec<TransformSpec> = policy.on_write().cloned().collect();
        if chain.is_empty() {
            return write_stream(
                &self.store,
                input,
                policy.chunking,
                EncodeSettings::from(policy),
                progress,
            );
        }
        // Recorded with the commit: which modules (and signers, args) produced these bytes.
        let (_, provenance) = self.chain_provenance(&chain, what)?;
        let mut transformed =
            TransformReader::new(input, self.open_chain(&chain, what)?, TRANSFORM_PIECE);
        let (mut content, report) = write_stream(
            &self.store,
            &mut transformed,
            policy.chunking,
            EncodeSettings::from(policy),
            progress,
        )?;
        content.provenance =
            Some(serde_yaml::to_string(&provenance).expect("provenance serializes"));
        Ok((content, report))
    }

    /// Stores `input` at `dest` atomically: the capsule is created, or gets a new version, in
    /// one metadata transaction after every chunk is durable. A failure stores nothing.
    pub fn put(
        &self,
        input: &mut dyn Read,
        dest: &str,
        opts: &PutOptions,
        progress: &dyn Fn(u64),
    ) -> Result<PutResult> {
        if opts.parents {
            let comps = super::components(dest);
            if comps.len() > 1 {
                self.mkdir(&comps[..comps.len() - 1].join("/"), true, None)?;
            }
        }
        let (parent, name, inherited) = self.parent_of(dest)?;
        let existing = self.store.meta.lookup(parent.ino, name.as_bytes())?;
        if let Some(n) = &existing {
            if n.kind == NodeKind::Dir {
                return Err(SpaceError::IsADirectory(super::display_path(dest)));
            }
        }
        let policy = match (&opts.policy, &existing) {
            (Some(p), _) => p.clone(),
            (None, Some(n)) => self.policy_of(n)?,
            (None, None) => match &inherited {
                Some(y) => Policy::from_yaml(y)?,
                None => Policy::default(),
            },
        };
        if opts.policy.is_some() {
            self.check_policy(&policy)?;
        }
        let what = format!("capsule {}", super::display_path(dest));
        let _guard = self.store.lock(LockMode::Shared)?;
        let (content, report) = self
            .write_through_policy(input, &policy, &what, progress)
            .map_err(|e| match e {
                SpaceError::Transform(m) => SpaceError::Transform(format!("{what}: {m}")),
                other => other,
            })?;
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let new = NewNode {
            kind: NodeKind::File,
            mode: opts.mode.unwrap_or(0o644),
            uid: opts.uid.unwrap_or(uid),
            gid: opts.gid.unwrap_or(gid),
            policy: Some(policy.to_yaml()),
            target: None,
            rdev: 0,
        };
        let (mut node, replaced) =
            self.store
                .meta
                .put_capsule(parent.ino, name.as_bytes(), new, &content)?;
        if replaced && opts.policy.is_some() {
            node = self
                .store
                .meta
                .set_policy(node.ino, Some(&policy.to_yaml()))?;
        }
        Ok(PutResult {
            node,
            replaced,
            report,
        })
    }

    /// Replaces the content of an existing file node from `input` (the FUSE write-back path).
    pub fn write_content(
        &self,
        node: &Node,
        input: &mut dyn Read,
        expect_version: Option<u64>,
    ) -> Result<(Node, WriteReport)> {
        self.write_content_named(node, &self.describe(node), input, expect_version)
    }

    /// [`Space::write_content`] for a caller that has the capsule's name for messages at
    /// hand already (finding it is a metadata lookup per path component).
    pub fn write_content_named(
        &self,
        node: &Node,
        what: &str,
        input: &mut dyn Read,
        expect_version: Option<u64>,
    ) -> Result<(Node, WriteReport)> {
        let policy = self.policy_of(node)?;
        let _guard = self.store.lock(LockMode::Shared)?;
        let (content, report) = self.write_through_policy(input, &policy, what, &|_| {})?;
        let node = self
            .store
            .meta
            .commit_content(node.ino, &content, expect_version)?;
        Ok((node, report))
    }

    /// Holds the store lock (shared, as writers do) until dropped: objects stored ahead of their
    /// metadata commit (see [`Space::store_prefix`]) must not be collected by a concurrent gc.
    pub fn hold_for_writing(&self) -> Result<WriteHold> {
        self.store.hold_shared().map(WriteHold)
    }

    /// Stores, ahead of the commit, the leading chunks of new content for `node` (which must
    /// have no on-write chain): `data` starts at a chunk boundary (offset 0 or the end of an
    /// earlier prefix); every chunk but the last is stored. Returns the stored chunks (offsets
    /// from the start of `data`) and how many bytes they cover. The caller holds a
    /// [`WriteHold`] until it commits with [`Space::write_content_after`].
    pub fn store_prefix(&self, node: &Node, data: &[u8]) -> Result<(Content, WriteReport)> {
        let policy = self.policy_of(node)?;
        if policy.on_write().next().is_some() {
            return Err(SpaceError::InvalidArgument(format!(
                "{}: content with an on-write chain is stored whole",
                self.describe(node)
            )));
        }
        write_prefix(
            &self.store,
            data,
            policy.chunking,
            EncodeSettings::from(&policy),
        )
    }

    /// Replaces the content of `node` with `prefix` (chunks stored by [`Space::store_prefix`],
    /// covering `[0, prefix_len)`) followed by `rest`, in one metadata transaction after every
    /// object is durable.
    pub fn write_content_after(
        &self,
        node: &Node,
        what: &str,
        prefix: &[ContentChunk],
        prefix_len: u64,
        rest: &mut dyn Read,
    ) -> Result<(Node, WriteReport)> {
        let policy = self.policy_of(node)?;
        if policy.on_write().next().is_some() {
            return Err(SpaceError::InvalidArgument(format!(
                "{what}: the policy gained an on-write chain while the file was written"
            )));
        }
        let _guard = self.store.lock(LockMode::Shared)?;
        let (tail, mut report) = self.write_through_policy(rest, &policy, what, &|_| {})?;
        // The tail's write synced every object stored before it, the prefix's included; sync
        // again in case the tail stored nothing (a no-op then for the local backend).
        self.store
            .chunks
            .sync()
            .map_err(|e| SpaceError::io("syncing chunk directories", e))?;
        let mut chunks = Vec::with_capacity(prefix.len() + tail.chunks.len());
        chunks.extend_from_slice(prefix);
        chunks.extend(tail.chunks.into_iter().map(|mut c| {
            c.extent.offset += prefix_len;
            c
        }));
        report.bytes += prefix_len;
        let content = Content {
            chunks,
            size: prefix_len + tail.size,
            provenance: None,
            // The tail's small objects, if kept inline, are committed with it.
            inline_objects: tail.inline_objects,
        };
        let node = self.store.meta.commit_content(node.ino, &content, None)?;
        Ok((node, report))
    }

    /// Truncates to zero length (cheap: no chunk is read).
    pub fn clear_content(&self, node: &Node) -> Result<Node> {
        self.store
            .meta
            .commit_content(node.ino, &Content::default(), None)
    }

    /// Random access to a capsule's stored bytes.
    pub fn reader(&self, node: &Node) -> CapsuleReader {
        CapsuleReader::new(
            Arc::clone(&self.store),
            Arc::clone(&self.cache),
            node,
            ReaderName::of_node(node, ""),
        )
    }

    /// Streams a capsule to `out`, through its on-read chain unless `view` is Raw.
    pub fn read_to(
        &self,
        node: &Node,
        view: View,
        out: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<u64> {
        match node.kind {
            NodeKind::File => {}
            NodeKind::Dir => return Err(SpaceError::IsADirectory(self.describe(node))),
            _ => {
                return Err(SpaceError::InvalidArgument(format!(
                    "{} is not a regular file (symlinks and special files have no content)",
                    self.describe(node)
                )));
            }
        }
        if view == View::Transformed {
            // Through the on-read chain, via the derived-output cache (see `views`).
            return self.read_view_to(node, None, out, progress);
        }
        let what = self.describe(node);
        let mut read = 0u64;
        stream_chunks(&self.store, node, &what, &mut |d| {
            out.write_all(d)
                .map_err(|e| SpaceError::io("writing output", e))?;
            read += d.len() as u64;
            progress(read);
            Ok(())
        })?;
        Ok(read)
    }

    /// Reads a whole (small) capsule into memory, e.g. a WASM module image.
    pub fn read_all(&self, node: &Node, view: View) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(node.size as usize);
        self.read_to(node, view, &mut v, &|_| {})?;
        Ok(v)
    }
}

/// The shared store lock, owned (see [`Space::hold_for_writing`]).
pub struct WriteHold(std::fs::File);

impl Drop for WriteHold {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own (closing it would release the lock as well).
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&self.0), libc::LOCK_UN) };
    }
}
