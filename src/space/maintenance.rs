//! fsck (is every byte still what was written?) and gc (drop what nothing references).

use std::collections::HashSet;

use super::Space;
use crate::error::{Result, SpaceError};
use crate::pipeline::read_path::load_chunk_recomputing_id;
use crate::pipeline::write_path::put_object;
use crate::store::meta::MetaProblem;
use crate::store::{ChunkId, LockMode};

/// What fsck found. `damaged()` is what makes `spacectl fsck` exit non-zero.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub meta_problems: Vec<MetaProblem>,
    /// Chunks that are missing or fail authentication/verification, with the capsules hit.
    pub bad_chunks: Vec<(ChunkId, String, Vec<String>)>,
    /// Loose objects no metadata references (left by interrupted writes; gc removes them).
    pub orphan_objects: u64,
    /// Bytes in pack files that no live chunk uses, alignment padding included (gc repacks
    /// packs that are mostly dead).
    pub dead_pack_bytes: u64,
    /// Copies of the metadata redo log kept when some of its records could not be
    /// re-applied (docs/FORMAT.md 5.3): changes whose calls had returned were not kept, so
    /// the store counts as damaged until someone has looked and removed the copies.
    pub set_aside_logs: Vec<std::path::PathBuf>,
}

impl FsckReport {
    pub fn damaged(&self) -> bool {
        !self.meta_problems.is_empty()
            || !self.bad_chunks.is_empty()
            || !self.set_aside_logs.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    pub orphans_removed: u64,
    pub temporaries_removed: u64,
    /// Packs rewritten (live objects copied to a new pack) or deleted (nothing live).
    pub packs_repacked: u64,
    pub packs_deleted: u64,
    /// Pack bytes given back to the filesystem.
    pub pack_bytes_freed: u64,
}

/// A pack is rewritten when less than this share of it is live.
const REPACK_LIVE_SHARE: f64 = 0.5;

impl Space {
    /// Verifies metadata consistency and every live chunk (fetch, authenticate, decrypt,
    /// decompress, recompute id). `progress` gets (chunks done, chunks total).
    pub fn fsck(&self, progress: &dyn Fn(u64, u64)) -> Result<FsckReport> {
        let _guard = self.store.lock(LockMode::Shared)?;
        let mut report = FsckReport {
            meta_problems: self.store.meta.check()?,
            ..Default::default()
        };
        let rows = self.store.meta.chunk_rows()?;
        let known: HashSet<ChunkId> = rows.iter().map(|r| r.id).collect();
        let total = rows.iter().filter(|r| r.refcount > 0).count() as u64;
        for row in rows.iter().filter(|r| r.refcount > 0) {
            match load_chunk_recomputing_id(&self.store, &row.id, &|| "fsck".into()) {
                Ok(plain) => {
                    report.bytes_checked += plain.len() as u64;
                    if plain.len() as u64 != row.plain_len {
                        let reason = "length differs from metadata".into();
                        report.bad_chunks.push((row.id, reason, Vec::new()));
                    }
                }
                Err(SpaceError::Integrity { reason, .. }) => {
                    log::error!("fsck: chunk {} is damaged: {reason}", row.id);
                    report.bad_chunks.push((row.id, reason, Vec::new()));
                }
                Err(e) => return Err(e),
            }
            report.chunks_checked += 1;
            progress(report.chunks_checked, total);
        }
        self.name_referrers(&mut report.bad_chunks);
        let objects = self
            .store
            .chunks
            .list()
            .map_err(|e| SpaceError::io("listing chunk objects", e))?;
        report.orphan_objects = objects.iter().filter(|id| !known.contains(id)).count() as u64;
        let usage: std::collections::HashMap<u64, u64> =
            self.store.meta.pack_usage()?.into_iter().collect();
        for (pack, size) in self
            .store
            .chunks
            .packs()
            .map_err(|e| SpaceError::io("listing pack files", e))?
        {
            report.dead_pack_bytes += size.saturating_sub(usage.get(&pack).copied().unwrap_or(0));
        }
        report.set_aside_logs =
            crate::store::set_aside_redo_logs(&self.store.dir.join(crate::store::META_FILE))
                .map_err(|e| SpaceError::io("listing the store directory", e))?;
        Ok(report)
    }

    /// Fills in, for each damaged chunk, "capsule /path (uuid) at offset N" for each use of
    /// it (one pass over the extents for all of them).
    fn name_referrers(&self, bad: &mut [(ChunkId, String, Vec<String>)]) {
        let ids: Vec<ChunkId> = bad.iter().map(|(id, _, _)| *id).collect();
        let mut refs = self.store.meta.referrers(&ids).unwrap_or_default();
        for (id, _, names) in bad.iter_mut() {
            *names = refs
                .remove(id)
                .unwrap_or_default()
                .into_iter()
                .map(|(ino, off)| match self.store.meta.get(ino).ok().flatten() {
                    Some(n) => format!("{} at offset {off}", self.describe(&n)),
                    None => format!("inode {ino} at offset {off}"),
                })
                .collect();
        }
    }

    /// Removes unreferenced chunks, orphan objects and temporaries. Holds the store lock
    /// exclusively, so no write in flight can lose an object it is about to reference; and
    /// before reading which objects are referenced, waits for a mount's open group of
    /// changes to commit (its objects are written, its rows not yet visible here).
    pub fn gc(&self) -> Result<GcReport> {
        let _guard = self.store.lock(LockMode::Exclusive)?;
        self.store.meta.barrier()?;
        let mut report = GcReport {
            temporaries_removed: self
                .store
                .chunks
                .clean_temporaries()
                .map_err(|e| SpaceError::io("removing temporary files", e))?
                as u64,
            ..Default::default()
        };
        // Rows first, then objects: a crash in between leaves only orphan objects.
        for row in self.store.meta.delete_unreferenced_chunks()? {
            self.store
                .chunks
                .delete(&row.id)
                .map_err(|e| SpaceError::io(format!("deleting chunk {}", row.id), e))?;
            report.chunks_removed += 1;
            report.bytes_freed += row.stored_len;
        }
        let live: HashSet<ChunkId> = self
            .store
            .meta
            .chunk_rows()?
            .into_iter()
            .map(|r| r.id)
            .collect();
        for id in self
            .store
            .chunks
            .list()
            .map_err(|e| SpaceError::io("listing chunk objects", e))?
        {
            if !live.contains(&id) {
                self.store
                    .chunks
                    .delete(&id)
                    .map_err(|e| SpaceError::io(format!("deleting orphan {id}"), e))?;
                report.orphans_removed += 1;
            }
        }
        self.repack(&mut report)?;
        log::info!(
            "gc: removed {} chunks ({} bytes), {} orphans, {} temporaries; {} packs repacked, \
             {} deleted, {} pack bytes freed",
            report.chunks_removed,
            report.bytes_freed,
            report.orphans_removed,
            report.temporaries_removed,
            report.packs_repacked,
            report.packs_deleted,
            report.pack_bytes_freed
        );
        Ok(report)
    }

    /// Deletes packs with nothing live and rewrites packs that are mostly dead: live objects
    /// are copied to the current pack, made durable, the metadata points at the copies (one
    /// transaction), then the old pack is deleted. Packs another process still appends to are
    /// left alone. The caller holds the store lock exclusively.
    fn repack(&self, report: &mut GcReport) -> Result<()> {
        let chunks = &self.store.chunks;
        let usage: std::collections::HashMap<u64, u64> =
            self.store.meta.pack_usage()?.into_iter().collect();
        let io = |what: &str| {
            let what = what.to_string();
            move |e| SpaceError::io(what.clone(), e)
        };
        for (pack, size) in chunks.packs().map_err(io("listing pack files"))? {
            let live = usage.get(&pack).copied().unwrap_or(0);
            if size == 0 || chunks.pack_in_use(pack) {
                continue;
            }
            if live as f64 >= size as f64 * REPACK_LIVE_SHARE {
                continue;
            }
            if live > 0 {
                let mut moves = Vec::new();
                for (id, loc, len) in self.store.meta.chunks_in_pack(pack)? {
                    let bytes = chunks
                        .get(&id, Some(loc), len)
                        .map_err(io(&format!("reading chunk {id} to repack")))?;
                    if let Some(new) = put_object(chunks.as_ref(), &id, &bytes)
                        .map_err(io(&format!("repacking chunk {id}")))?
                    {
                        moves.push((id, new));
                    }
                }
                chunks.sync().map_err(io("syncing repacked objects"))?;
                self.store.meta.relocate(&moves)?;
                report.packs_repacked += 1;
            }
            if chunks
                .delete_pack(pack)
                .map_err(io(&format!("deleting pack {pack:016x}")))?
            {
                if live == 0 {
                    report.packs_deleted += 1;
                }
                report.pack_bytes_freed += size.saturating_sub(live);
            }
        }
        Ok(())
    }
}
