//! The embedded metadata engine: SQLite in WAL mode with `synchronous=FULL`, so a commit that
//! returned survives power loss. A mounted filesystem may relax that to `synchronous=NORMAL`
//! (commits survive a crash of the process, and power loss after the next `sync`); see
//! [`MetaStore::set_durable_commits`]. Relaxed file creations, content commits and attribute
//! changes are grouped into one transaction, each kept safe meanwhile by a record in the redo
//! log: see [`SqliteMeta::write_recorded`]. Schema in docs/FORMAT.md ("Metadata").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::ChunkId;
use super::meta::*;
use super::redo::{RedoLog, RedoOp, RedoRecord, Tail, set_aside_path};
use crate::error::{Result, SpaceError};
use crate::util::lock;

/// 2: the redo log (docs/FORMAT.md 5.3). A build that reads only 1 would ignore the log and
/// build on a state that lacks its records, so it must refuse the store.
/// 3: chunks reach their inline objects by `chunks.inline_ref` (the object's rowid), and new
/// stores no longer index inline objects by id. A build that reads only 2 would look them up
/// by id (a scan) and store new ones without `inline_ref`, so it must refuse the store.
pub const SCHEMA_VERSION: i64 = 3;

/// Write-ahead log size (pages of 4 KiB, 128 MiB) that triggers a checkpoint inside a commit
/// under relaxed commits: a backstop. A mount's [`MetaStore::checkpoint`] copies the log
/// without holding up writers and starts it over at [`WAL_RESTART_FRAMES`]; this bounds the
/// log file when that cannot (another process kept it busy) or nobody calls it.
const WAL_CHECKPOINT_PAGES_RELAXED: i64 = 32768;

/// Write-ahead log size (frames of a 4 KiB page, 16 MiB) past which [`MetaStore::checkpoint`]
/// starts the log over: once its copies have caught up, it commits the open group and
/// restarts the log while it holds the writer's connection, which then costs only the
/// frames of the last moments. (Left to the 128 MiB backstop above, the restart held up
/// requests for 150-300 ms every ~7,000 small files created.)
const WAL_RESTART_FRAMES: i64 = 4096;

/// How long the writer's connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    ino INTEGER PRIMARY KEY,
    uuid BLOB NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    policy TEXT,
    target BLOB,
    rdev INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries(ino);
CREATE TABLE IF NOT EXISTS extents (
    ino INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    PRIMARY KEY (ino, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY,
    refcount INTEGER NOT NULL,
    plain_len INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    pack INTEGER,
    pack_offset INTEGER,
    head BLOB,
    inline_ref INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inline_objects (
    id BLOB NOT NULL,
    object BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS derived (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    used_ns INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    provenance TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS derived_by_use ON derived(used_ns);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
"#;

/// The columns `node_from_row` reads, as a macro so that hot queries are `concat!`ed at
/// compile time (a `format!` per query was a tenth of a node read).
macro_rules! node_cols {
    () => {
        "ino, uuid, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, version, policy, target, rdev"
    };
}
const NODE_COLS: &str = node_cols!();

pub struct SqliteMeta {
    conn: Mutex<Connection>,
    /// Commits use `synchronous=FULL` (each one durable when it returns).
    durable: AtomicBool,
    /// A commit since the last sync was made with `synchronous=NORMAL`.
    unsynced: AtomicBool,
    /// The write-ahead log (`<db>-wal`), which [`MetaStore::sync`] flushes.
    wal_path: PathBuf,
    db_path: PathBuf,
    /// The connection [`MetaStore::checkpoint`] uses (opened on first use).
    checkpointer: Mutex<Option<Connection>>,
    /// Log frames past which [`MetaStore::checkpoint`] restarts the log
    /// ([`WAL_RESTART_FRAMES`]; smaller in tests).
    restart_frames: i64,
    /// When the open deferred transaction began, if one is open; guarded together with the
    /// connection (taken after it), and waited on by [`MetaStore::commit_deferred_when_due`].
    deferred: Mutex<Option<Instant>>,
    deferred_open: Condvar,
    /// Records of the changes in the open deferred transaction (taken after `conn`).
    redo: Mutex<RedoLog>,
    /// This connection's open transaction was lost (a failed commit, or SQLite rolled it back
    /// after an I/O error) while the log held its records: they must be re-applied before a
    /// commit or sync reports success, and before this connection shows its own changes again.
    needs_replay: AtomicBool,
    /// When a read last tried to re-apply a lost group (reads retry at most once a second).
    replay_tried: Mutex<Option<Instant>>,
    /// The redo generation of the open transaction, once a record needed it: constant while
    /// this connection holds the write lock (only its own commit bumps it), so read once per
    /// transaction instead of once per record; forgotten whenever a transaction begins.
    open_generation: Mutex<Option<u64>>,
}

fn node_from_row(r: &Row) -> rusqlite::Result<Node> {
    node_from_row_at(r, 0)
}

/// A node from columns `NODE_COLS` starting at column `at`.
fn node_from_row_at(r: &Row, at: usize) -> rusqlite::Result<Node> {
    let uuid: Vec<u8> = r.get(at + 1)?;
    Ok(Node {
        ino: r.get::<_, i64>(at)? as u64,
        uuid: Uuid::from_slice(&uuid).unwrap_or_default(),
        kind: NodeKind::from_i64(r.get(at + 2)?).unwrap_or(NodeKind::File),
        mode: r.get::<_, i64>(at + 3)? as u32,
        uid: r.get::<_, i64>(at + 4)? as u32,
        gid: r.get::<_, i64>(at + 5)? as u32,
        size: r.get::<_, i64>(at + 6)? as u64,
        atime: r.get(at + 7)?,
        mtime: r.get(at + 8)?,
        ctime: r.get(at + 9)?,
        nlink: r.get::<_, i64>(at + 10)? as u32,
        version: r.get::<_, i64>(at + 11)? as u64,
        policy: r.get(at + 12)?,
        target: r.get(at + 13)?,
        rdev: r.get::<_, i64>(at + 14)? as u64,
    })
}

/// `execute` through the statement cache (parsing SQL was ~7% of a small file's commit).
fn exec<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

/// A statement without parameters or rows (transaction control).
fn run(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    exec(c, sql, []).map(|_| ())
}

/// `query_row` through the statement cache.
fn row<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(params, f)
}

fn chunk_id_from(v: Vec<u8>) -> ChunkId {
    let mut a = [0u8; 32];
    if v.len() == 32 {
        a.copy_from_slice(&v);
    }
    ChunkId(a)
}

/// A new node's UUID: version 7 (RFC 9562), whose leading bits are the creation time in
/// milliseconds, so the `nodes.uuid` index grows at its end like the ino; a random version 4
/// lands anywhere in it and dirtied one more B-tree page per created file.
fn new_uuid() -> Uuid {
    Uuid::now_v7()
}

fn display_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl SqliteMeta {
    /// Opens or creates the database, creating the root directory on first use.
    pub fn open(path: &Path, root_uid: u32, root_gid: u32) -> Result<SqliteMeta> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(128);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        // Writes go to the log in 4,120-byte frames, across page-cache pages: overwriting a
        // log that started over means reading each old page back from the disk first once the
        // cache has lost it. Truncated when it starts over, the log is only ever appended to.
        // (Creates right after the page cache was dropped: 1,731-1,978 -> 2,536-2,692 files/s
        // with this and the larger cache below.)
        conn.pragma_update(None, "journal_size_limit", 0)?;
        // Inserts under random keys (chunk ids) touch leaves all over their B-trees; keep up
        // to 32 MiB of pages in the process (SQLite's default is 2 MiB).
        conn.pragma_update(None, "cache_size", -32768)?;
        // Refuse a newer schema before anything here writes to it (the schema statements
        // below, or a replay of the redo log by the first transaction).
        let found: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        if let Some(v) =
            found.filter(|v| !["1", "2"].contains(&v.as_str()) && *v != SCHEMA_VERSION.to_string())
        {
            return Err(unsupported_schema(path, &v));
        }
        conn.execute_batch(SCHEMA)?;
        add_missing_columns(&conn)?;
        // Older stores index extents by chunk: only gc and error reports looked it up, and
        // every created file paid a B-tree page of metadata log for it. Dropped where the
        // store is writable; left (and kept up to date) where it is not.
        if let Err(e) = conn.execute_batch("DROP INDEX IF EXISTS extents_by_chunk") {
            log::debug!(
                "keeping the extents_by_chunk index of {}: {e}",
                path.display()
            );
        }
        let m = SqliteMeta {
            conn: Mutex::new(conn),
            durable: AtomicBool::new(true),
            unsynced: AtomicBool::new(false),
            db_path: path.to_path_buf(),
            checkpointer: Mutex::new(None),
            restart_frames: WAL_RESTART_FRAMES,
            wal_path: {
                let mut p = path.as_os_str().to_owned();
                p.push("-wal");
                PathBuf::from(p)
            },
            deferred: Mutex::new(None),
            deferred_open: Condvar::new(),
            redo: Mutex::new(RedoLog::open(path).map_err(|e| {
                SpaceError::io(format!("opening the redo log of {}", path.display()), e)
            })?),
            needs_replay: AtomicBool::new(false),
            replay_tried: Mutex::new(None),
            open_generation: Mutex::new(None),
        };
        m.write(|tx| {
            let v: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key='schema_version'", [], |r| r.get(0))
                .optional()?;
            match v {
                None => {
                    exec(tx, "INSERT INTO meta VALUES ('schema_version', ?1)", [SCHEMA_VERSION.to_string()])?;
                    let t = now_ns();
                    exec(tx,
                        &format!("INSERT INTO nodes ({NODE_COLS}) VALUES (?1, ?2, 2, 493, ?3, ?4, 0, ?5, ?5, ?5, 2, 0, NULL, NULL, 0)"),
                        params![ROOT_INO as i64, new_uuid().as_bytes().to_vec(), root_uid, root_gid, t],
                    )?;
                }
                Some(v) if v == SCHEMA_VERSION.to_string() => {}
                // Schema 1 is 2 without the redo log, 2 is 3 without `chunks.inline_ref` (added
                // and filled in by `add_missing_columns` above): upgraded in place, so that
                // builds that would ignore the log or the column refuse the store from now on
                // (processes of such a build still running on it must be stopped first:
                // docs/FORMAT.md 6).
                Some(v) if v == "1" || v == "2" => {
                    exec(tx, "UPDATE meta SET value=?1 WHERE key='schema_version'", [SCHEMA_VERSION.to_string()])?;
                }
                Some(v) => return Err(unsupported_schema(path, &v)),
            }
            Ok(())
        })?;
        Ok(m)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let c = lock(&self.conn);
        if self.needs_replay.load(Ordering::Relaxed) {
            // This connection lost a group whose calls returned: re-apply it before reading.
            // If that fails (a full disk, a busy store), reads go on from the committed
            // state, trying again at most once a second: commits and syncs still fail until
            // the group is back, but the mount stays readable.
            let mut last = lock(&self.replay_tried);
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last = Some(Instant::now());
                drop(last);
                if let Err(e) = self.commit_open(&c) {
                    log::warn!("re-applying a lost group of metadata changes failed: {e}");
                }
            }
        }
        let open = !c.is_autocommit();
        let out = f(&c);
        if open && c.is_autocommit() {
            // SQLite rolls the whole transaction back after some errors (I/O, a full disk),
            // even in a read-only statement: the group is gone, its records are not.
            log::error!(
                "the open metadata transaction was rolled back by a failed read; its changes will be re-applied from the redo log"
            );
            self.group_lost();
        }
        out
    }

    /// Runs `f` in an IMMEDIATE transaction (takes the write lock up front, so concurrent
    /// processes queue on busy_timeout instead of failing mid-transaction) and commits it.
    fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.write_inner(false, |c| f(c).map(|out| (out, None)))
    }

    /// Like [`SqliteMeta::write`], but with relaxed commits leaves the transaction open and
    /// appends the change `f` returns to the redo log instead (docs/FORMAT.md 5.3): the next
    /// write joins the transaction (as a savepoint, so its failure undoes only itself), and
    /// whichever commits first, a change that is not deferred, [`MetaStore::commit_deferred`]
    /// or [`MetaStore::commit_deferred_when_due`] (which bounds how long other processes wait
    /// to see it), commits them all in one go: a small file's creation and content cost two
    /// `write`s of the log instead of a commit that rewrites ~13 B-tree pages. This connection
    /// reads its own uncommitted changes, so the mount sees them at once; if the process dies
    /// first, the next writer re-applies them from the log.
    fn write_recorded<T>(&self, f: impl FnOnce(&Connection) -> Result<(T, RedoOp)>) -> Result<T> {
        self.write_inner(true, |c| f(c).map(|(out, op)| (out, Some(op))))
    }

    fn write_inner<T>(
        &self,
        defer: bool,
        f: impl FnOnce(&Connection) -> Result<(T, Option<RedoOp>)>,
    ) -> Result<T> {
        let c = lock(&self.conn);
        let joined = !c.is_autocommit();
        if joined {
            run(&c, "SAVEPOINT op")?;
        } else {
            self.begin(&c)?;
        }
        let defer = defer && !self.durable.load(Ordering::Relaxed);
        // The log's length before this change's record, once appended.
        let mut recorded_at = None;
        let done = f(&c)
            .and_then(|(out, op)| match op {
                Some(op) if defer => {
                    let generation = {
                        let mut known = lock(&self.open_generation);
                        match *known {
                            Some(g) => g,
                            None => *known.insert(redo_generation(&c)?),
                        }
                    };
                    recorded_at = Some(
                        lock(&self.redo)
                            .append(&RedoRecord { generation, op })
                            .map_err(|e| SpaceError::io("appending to the metadata redo log", e))?,
                    );
                    Ok(out)
                }
                _ => Ok(out),
            })
            .and_then(|out| {
                if joined {
                    run(&c, "RELEASE op")?;
                }
                Ok(out)
            });
        let out = match done {
            Ok(out) => out,
            Err(e) => {
                self.undo_failed(&c, joined, recorded_at);
                return Err(e);
            }
        };
        if defer {
            let mut since = lock(&self.deferred);
            if since.is_none() {
                *since = Some(Instant::now());
                self.deferred_open.notify_all();
            }
            return Ok(out);
        }
        self.commit_open(&c)?;
        Ok(out)
    }

    /// Undoes a change that failed: its savepoint (or the transaction it began) and its
    /// record, if it made one. If SQLite already rolled back the whole transaction (it does
    /// after some I/O errors), the group's earlier changes are gone from this connection but
    /// their records are in the log: they are re-applied before anything reports success.
    fn undo_failed(&self, c: &Connection, joined: bool, recorded_at: Option<u64>) {
        let lost = c.is_autocommit();
        // The record goes first, while this connection still holds the write lock (no other
        // process appends or empties the log meanwhile). If SQLite already rolled the whole
        // transaction back, the lock is gone and so is the right to cut: the record stays,
        // and is re-applied with the rest of the group (the change was valid when recorded;
        // only what came after it failed).
        if let (Some(len), false) = (recorded_at, lost) {
            let mut redo = lock(&self.redo);
            if let Err(e) = redo.cut_to(len) {
                // Harmless once the group commits (the record is then of an older
                // generation); until then no record may follow it.
                log::error!("removing the record of an undone change failed: {e}");
                redo.refuse_appends();
            }
        }
        let undo = if lost {
            Ok(())
        } else if joined {
            run(c, "ROLLBACK TO op").and_then(|()| run(c, "RELEASE op"))
        } else {
            run(c, "ROLLBACK")
        };
        if let Err(u) = undo {
            log::error!("undoing a failed metadata change failed: {u}");
            let _ = run(c, "ROLLBACK");
        }
        if joined && c.is_autocommit() {
            log::error!(
                "the open metadata transaction was rolled back; its changes will be re-applied from the redo log"
            );
            self.group_lost();
        }
    }

    /// The open transaction is gone but its records are in the log: the committer thread
    /// re-applies them as it would commit a group (`DEFER_LIMIT` later), as does any write or sync first.
    fn group_lost(&self) {
        self.needs_replay.store(true, Ordering::Relaxed);
        *lock(&self.deferred) = Some(Instant::now());
        self.deferred_open.notify_all();
    }

    /// Begins a write transaction. Records left in the redo log (a process died holding the
    /// write lock, or a commit failed) are applied and committed first, so that nothing is
    /// built on a state that lacks them. The log is emptied only here, while this connection
    /// holds the write lock and every record in it is of an older generation: no process can
    /// be appending then, and none of its records is still needed.
    fn begin(&self, c: &Connection) -> Result<()> {
        *lock(&self.open_generation) = None;
        let mut set_aside = false;
        loop {
            run(c, "BEGIN IMMEDIATE")?;
            let mut redo = lock(&self.redo);
            let failed = |e: SpaceError| {
                let _ = run(c, "ROLLBACK");
                e
            };
            let empty = redo
                .is_empty()
                .map_err(|e| SpaceError::io(format!("reading {}", redo.path().display()), e))
                .map_err(failed)?;
            if empty {
                redo.emptied();
                self.needs_replay.store(false, Ordering::Relaxed);
                return Ok(());
            }
            let current = redo_generation(c).map_err(|e| failed(e.into()))?;
            // Every begin() empties a log of older records, and a log whose emptying failed
            // takes no more records: so all records in the log are of one generation, and
            // the first one's tells whether the log is stale (the common case: the previous
            // group's records, left by its commit) without reading the rest.
            let first = redo
                .first_generation()
                .map_err(|e| SpaceError::io(format!("reading {}", redo.path().display()), e))
                .map_err(failed)?;
            if first.is_some_and(|g| g != current) {
                self.empty_log(&mut redo);
                self.needs_replay.store(false, Ordering::Relaxed);
                return Ok(());
            }
            // Unreadable (I/O, or a record of a newer build): nothing is written until it can
            // be read, rather than build on a state that may lack its records.
            let scan = redo
                .read_all()
                .map_err(|e| SpaceError::io("reading the metadata redo log", e))
                .map_err(failed)?;
            let live: Vec<RedoRecord> = scan
                .records
                .into_iter()
                .filter(|r| r.generation == current)
                .collect();
            let damaged = matches!(scan.tail, Tail::Damaged { .. });
            if live.is_empty() {
                if damaged && !set_aside {
                    keep_copy(&redo, "it is damaged").map_err(failed)?;
                }
                self.empty_log(&mut redo);
                self.needs_replay.store(false, Ordering::Relaxed);
                return Ok(());
            }
            if let Tail::Damaged { at } = scan.tail {
                log::error!(
                    "{}: unreadable record at byte {at}; the {} record(s) before it are re-applied",
                    redo.path().display(),
                    live.len()
                );
            }
            if scan.tail == Tail::Torn {
                log::warn!(
                    "{}: the log ends in a record cut short (written when the system lost power?); it is ignored",
                    redo.path().display()
                );
            }
            let (applied, rejected) = replay(c, &live).map_err(failed)?;
            if rejected > 0 || damaged {
                keep_copy(&redo, "some of it could not be applied").map_err(failed)?;
                set_aside = true;
            }
            bump_redo_generation(c).map_err(|e| failed(e.into()))?;
            // A failed commit keeps the log for the next writer to try again.
            run(c, "COMMIT").map_err(|e| failed(e.into()))?;
            // Committed as this connection commits: with relaxed commits, not durable until
            // the next sync, which must not skip it.
            self.unsynced.store(true, Ordering::Relaxed);
            log::warn!(
                "re-applied {applied} metadata change(s) that a process left uncommitted ({})",
                redo.path().display()
            );
            // Begin again: the log is emptied under the write lock, at the top.
        }
    }

    /// An empty transaction: its begin() re-applies records left in the log (committing them
    /// as this connection commits, and marking them for the next sync) and empties the log
    /// of older ones.
    fn settle_log(&self, c: &Connection) -> Result<()> {
        self.begin(c)?;
        Ok(run(c, "COMMIT")?)
    }

    /// Empties a log of older records (see [`SqliteMeta::begin`]). If that fails, the log
    /// takes no more records (appends fail) until it is emptied: a new record behind old
    /// ones could be hidden by damage among them, and the one-generation rule would break.
    fn empty_log(&self, redo: &mut RedoLog) {
        if let Err(e) = redo.truncate() {
            log::error!("emptying {} failed: {e}", redo.path().display());
            redo.refuse_appends();
        }
    }

    /// Commits the open transaction, if any (rolled back if the commit fails; records of
    /// its changes stay in the redo log, so the next transaction re-applies them, and until
    /// then nothing reports success). Changes of a transaction lost earlier are re-applied
    /// first.
    fn commit_open(&self, c: &Connection) -> Result<()> {
        if c.is_autocommit() {
            *lock(&self.deferred) = None;
            if self.needs_replay.load(Ordering::Relaxed) {
                self.settle_log(c)?;
                // Also when another process re-applied the group first, relaxed: this sync
                // must flush the log it committed to.
                self.unsynced.store(true, Ordering::Relaxed);
            }
            return Ok(());
        }
        let relaxed = !self.durable.load(Ordering::Relaxed);
        // A new generation with every relaxed commit: records made on top of it can never be
        // applied to an older state (power loss may drop relaxed commits but keep the log).
        let r = if relaxed {
            bump_redo_generation(c)
        } else {
            Ok(())
        }
        .and_then(|()| run(c, "COMMIT"));
        *lock(&self.deferred) = None;
        if let Err(e) = r {
            log::error!("metadata commit failed, its changes are undone until re-applied: {e}");
            let _ = run(c, "ROLLBACK");
            if lock(&self.redo).dirty() {
                self.group_lost();
            }
            return Err(e.into());
        }
        if relaxed {
            self.unsynced.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Keeps a copy of the redo log beside it (`meta.db-redo.failed-<ns>`) before records are
/// given up; if no copy can be made, nothing is given up.
fn keep_copy(redo: &RedoLog, why: &str) -> Result<()> {
    let kept = set_aside_path(redo.path(), now_ns());
    std::fs::copy(redo.path(), &kept)
        .and_then(|_| std::fs::File::open(&kept)?.sync_all())
        .map_err(|e| {
            SpaceError::io(
                format!(
                    "keeping a copy of {} ({why}) at {}",
                    redo.path().display(),
                    kept.display()
                ),
                e,
            )
        })?;
    log::error!(
        "{}: {why}; a copy is kept at {}",
        redo.path().display(),
        kept.display()
    );
    Ok(())
}

fn unsupported_schema(path: &Path, v: &str) -> SpaceError {
    SpaceError::BadStore {
        path: path.to_path_buf(),
        reason: format!(
            "metadata schema version {v} is not supported (this build reads {SCHEMA_VERSION})"
        ),
    }
}

/// The generation of the committed state (`meta.redo_gen`): records carry the one they were
/// made on, and only those of the current one are re-applied.
fn redo_generation(c: &Connection) -> rusqlite::Result<u64> {
    let v: Option<String> = c
        .prepare_cached("SELECT value FROM meta WHERE key='redo_gen'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Starts a new generation: a random value, not a counter, so that after power loss took
/// some relaxed commits (and the generations they had reached), the generations the store
/// reaches next can never equal those of records left from the lost history.
fn bump_redo_generation(c: &Connection) -> rusqlite::Result<()> {
    let now = redo_generation(c)?;
    let next = loop {
        let g = rand::random::<u64>();
        if g != now {
            break g;
        }
    };
    exec(
        c,
        "INSERT OR REPLACE INTO meta VALUES ('redo_gen', ?1)",
        [next.to_string()],
    )
    .map(|_| ())
}

/// Applies records (of the current generation) inside the open transaction, each in a
/// savepoint of its own; returns how many were applied and how many could not be (logged and
/// skipped: the state no longer admits them, e.g. a name taken meanwhile). Any other failure
/// (I/O, a full disk) is returned with nothing skipped, so the log is kept for a later try.
fn replay(c: &Connection, records: &[RedoRecord]) -> Result<(usize, usize)> {
    let (mut applied, mut rejected) = (0, 0);
    // Nodes whose creation was rejected: later records of the same ino describe that node,
    // not whichever node holds the number now, so they are rejected too.
    let mut not_created = std::collections::HashSet::new();
    for (i, r) in records.iter().enumerate() {
        let ino = match &r.op {
            RedoOp::Create { ino, .. }
            | RedoOp::Content { ino, .. }
            | RedoOp::SetAttr { ino, .. } => *ino,
        };
        if not_created.contains(&ino) {
            log::error!(
                "redo record {i} ({}) is skipped: it follows the rejected creation of inode {ino}",
                op_kind(&r.op)
            );
            rejected += 1;
            continue;
        }
        run(c, "SAVEPOINT rec")?;
        let done = match &r.op {
            RedoOp::Create {
                parent,
                name,
                ino,
                uuid,
                t,
                node,
            } => create_node(c, *parent, name, node, Some(*ino), *uuid, *t).map(|_| ()),
            RedoOp::Content {
                ino,
                t,
                expect_version,
                content,
            } => commit_content_at(c, *ino, content, *expect_version, *t).map(|_| ()),
            RedoOp::SetAttr { ino, t, attr } => set_attr_at(c, *ino, attr, *t).map(|_| ()),
        };
        match done {
            Ok(()) => {
                run(c, "RELEASE rec")?;
                applied += 1;
            }
            Err(e) if cannot_apply(&e) => {
                run(c, "ROLLBACK TO rec")?;
                run(c, "RELEASE rec")?;
                log::error!(
                    "redo record {i} ({}) cannot be applied: {e}",
                    op_kind(&r.op)
                );
                if matches!(r.op, RedoOp::Create { .. }) {
                    not_created.insert(ino);
                }
                rejected += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((applied, rejected))
}

/// Errors that say the state does not admit a record (it would fail the same way on every
/// try), as opposed to ones that may pass later (I/O, a full disk, a busy database).
fn cannot_apply(e: &SpaceError) -> bool {
    match e {
        SpaceError::NotFound(_)
        | SpaceError::AlreadyExists(_)
        | SpaceError::NotEmpty(_)
        | SpaceError::NotADirectory(_)
        | SpaceError::IsADirectory(_)
        | SpaceError::InvalidArgument(_)
        | SpaceError::Integrity { .. } => true,
        SpaceError::Meta(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        _ => false,
    }
}

fn op_kind(op: &RedoOp) -> &'static str {
    match op {
        RedoOp::Create { .. } => "create",
        RedoOp::Content { .. } => "content",
        RedoOp::SetAttr { .. } => "attributes",
    }
}

#[cfg(test)]
impl SqliteMeta {
    /// Drops the connection as a killed process would: the open transaction is lost, and
    /// nothing a clean close does (commit, emptying the log) happens.
    fn abandon(self) {
        {
            let c = lock(&self.conn);
            if !c.is_autocommit() {
                run(&c, "ROLLBACK").unwrap();
            }
        }
        // Skips Drop; the connection (holding no lock after the rollback) leaks, as a test
        // can afford.
        std::mem::forget(self);
    }
}

impl Drop for SqliteMeta {
    fn drop(&mut self) {
        let c = lock(&self.conn);
        if let Err(e) = self.commit_open(&c) {
            log::error!("committing deferred metadata changes at close failed: {e}");
            return;
        }
        // Leave no records behind a clean close (they would only be found stale by the next
        // writer): an empty transaction empties the log of this connection's records.
        if lock(&self.redo).dirty() {
            if let Err(e) = self.settle_log(&c) {
                log::warn!("emptying the metadata redo log at close failed: {e}");
            }
        }
    }
}

/// Columns added to schema version 1 after its first release (`CREATE TABLE IF NOT EXISTS`
/// does not add them to an existing table). Each has a default, so older rows stay valid.
fn add_missing_columns(c: &Connection) -> Result<()> {
    const ADDED: &[(&str, &str, &str)] = &[
        (
            "nodes",
            "rdev",
            "ALTER TABLE nodes ADD COLUMN rdev INTEGER NOT NULL DEFAULT 0",
        ),
        (
            "nodes",
            "provenance",
            "ALTER TABLE nodes ADD COLUMN provenance TEXT",
        ),
        (
            "chunks",
            "pack",
            "ALTER TABLE chunks ADD COLUMN pack INTEGER; \
             ALTER TABLE chunks ADD COLUMN pack_offset INTEGER",
        ),
        ("chunks", "head", "ALTER TABLE chunks ADD COLUMN head BLOB"),
        // Schema 3. Stores made before it index inline objects by id (their primary key),
        // which finds each chunk's object once here.
        (
            "chunks",
            "inline_ref",
            "ALTER TABLE chunks ADD COLUMN inline_ref INTEGER; \
             UPDATE chunks SET inline_ref = \
                 (SELECT i.rowid FROM inline_objects i WHERE i.id = chunks.id)",
        ),
    ];
    for (table, column, add) in ADDED {
        let present = c
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name=?2")?
            .exists([table, column])?;
        if !present {
            c.execute_batch(add)?;
        }
    }
    Ok(())
}

/// A [`ChunkRow`] from `id, refcount, plain_len, stored_len`.
fn chunk_row_from(r: &rusqlite::Row) -> rusqlite::Result<ChunkRow> {
    Ok(ChunkRow {
        id: chunk_id_from(r.get(0)?),
        refcount: r.get(1)?,
        plain_len: r.get::<_, i64>(2)? as u64,
        stored_len: r.get::<_, i64>(3)? as u64,
    })
}

fn get_node(c: &Connection, ino: Ino) -> Result<Option<Node>> {
    Ok(row(
        c,
        concat!("SELECT ", node_cols!(), " FROM nodes WHERE ino=?1"),
        [ino as i64],
        node_from_row,
    )
    .optional()?)
}

fn must_node(c: &Connection, ino: Ino) -> Result<Node> {
    get_node(c, ino)?.ok_or_else(|| SpaceError::NotFound(format!("inode {ino}")))
}

fn lookup(c: &Connection, parent: Ino, name: &[u8]) -> Result<Option<Node>> {
    Ok(row(
        c,
        concat!(
            "SELECT ",
            node_cols!(),
            " FROM nodes WHERE ino=(SELECT ino FROM dentries WHERE parent=?1 AND name=?2)"
        ),
        params![parent as i64, name],
        node_from_row,
    )
    .optional()?)
}

fn dir_node(c: &Connection, ino: Ino) -> Result<Node> {
    let n = must_node(c, ino)?;
    if n.kind != NodeKind::Dir {
        return Err(SpaceError::NotADirectory(format!("inode {ino}")));
    }
    Ok(n)
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name == b"."
        || name == b".."
        || name.contains(&b'/')
        || name.contains(&0)
        || name.len() > 255
    {
        return Err(SpaceError::InvalidArgument(format!(
            "invalid file name `{}`",
            display_name(name)
        )));
    }
    Ok(())
}

fn touch_dir(tx: &Connection, dir: Ino, t: TimeNs) -> Result<()> {
    exec(
        tx,
        "UPDATE nodes SET mtime_ns=?2, ctime_ns=?2 WHERE ino=?1",
        params![dir as i64, t],
    )?;
    Ok(())
}

/// Inserts node `new` with inode number `ino` (replayed records give theirs), or else one
/// never used before ([`next_free_ino`]), and returns it as written, so callers need not read
/// it back.
fn insert_node(
    tx: &Connection,
    new: &NewNode,
    t: TimeNs,
    ino: Option<Ino>,
    uuid: Uuid,
) -> Result<Node> {
    let mut node = Node {
        ino: 0,
        uuid,
        kind: new.kind,
        mode: new.mode & 0o7777,
        uid: new.uid,
        gid: new.gid,
        size: new.target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
        atime: t,
        mtime: t,
        ctime: t,
        nlink: if new.kind == NodeKind::Dir { 2 } else { 1 },
        version: 0,
        policy: new.policy.clone(),
        target: new.target.clone(),
        rdev: match new.kind {
            NodeKind::CharDevice | NodeKind::BlockDevice => new.rdev,
            _ => 0,
        },
    };
    let ino = match ino {
        Some(i) => i,
        None => next_free_ino(tx)?,
    };
    note_ino_used(tx, ino)?;
    exec(tx,
        "INSERT INTO nodes (uuid, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, version, policy, target, rdev, ino)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            node.uuid.as_bytes().to_vec(),
            node.kind as i64,
            node.mode,
            node.uid,
            node.gid,
            node.size as i64,
            t,
            node.nlink,
            node.version as i64,
            node.policy,
            node.target,
            node.rdev as i64,
            ino as i64
        ],
    )?;
    node.ino = ino;
    Ok(node)
}

/// The number for a new node: one no node of this store ever had. SQLite alone would give the
/// highest number again once that node is deleted, and a mount's kernel may still hold the
/// deleted node's inode under it (until it forgets it): it then takes the new node for the
/// old one, and concurrent creates and removes fail with EEXIST or ESTALE. The high-water
/// mark is `next_ino` in `meta` (docs/FORMAT.md); stores from before it start from the
/// highest number in use.
fn next_free_ino(tx: &Connection) -> Result<Ino> {
    let mut q = tx.prepare_cached(
        "SELECT MAX(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key='next_ino'), 0),
                    COALESCE((SELECT MAX(ino) FROM nodes), 0) + 1)",
    )?;
    Ok(q.query_row([], |r| r.get::<_, i64>(0))? as Ino)
}

/// Raises the high-water mark of [`next_free_ino`] past `ino`.
fn note_ino_used(tx: &Connection, ino: Ino) -> Result<()> {
    let mut q = tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('next_ino', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value
         WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
    )?;
    q.execute([(ino + 1).to_string()])?;
    Ok(())
}

/// Drops a node's chunk references (its content is going away or being replaced).
fn release_extents(tx: &Connection, ino: Ino) -> Result<()> {
    exec(tx,
        "UPDATE chunks SET refcount = refcount - (SELECT COUNT(*) FROM extents e WHERE e.ino=?1 AND e.chunk=chunks.id)
         WHERE id IN (SELECT chunk FROM extents WHERE ino=?1)",
        [ino as i64],
    )?;
    exec(tx, "DELETE FROM extents WHERE ino=?1", [ino as i64])?;
    Ok(())
}

/// Stores the content's inline objects that no chunk row has yet; returns each stored one's
/// rowid (its chunk row's `inline_ref`).
fn add_inline_objects(tx: &Connection, content: &Content) -> Result<Vec<(ChunkId, i64)>> {
    let mut stored: Vec<(ChunkId, i64)> = Vec::new();
    if content.inline_objects.is_empty() {
        return Ok(stored);
    }
    let mut known = tx.prepare_cached(
        "SELECT 1 FROM chunks WHERE id=?1 AND (pack IS NOT NULL OR inline_ref IS NOT NULL)",
    )?;
    // REPLACE: in a store made before schema 3 (inline objects keyed by id), a row that no
    // chunk names (left by damage) is replaced rather than failing the commit.
    let mut ins =
        tx.prepare_cached("INSERT OR REPLACE INTO inline_objects (id, object) VALUES (?1, ?2)")?;
    for (id, object) in &content.inline_objects {
        // A chunk whose row names a pack or an inline object has its object already.
        if stored.iter().any(|(s, _)| s == id) || known.exists([id.0.to_vec()])? {
            continue;
        }
        ins.execute(params![id.0.to_vec(), object])?;
        stored.push((*id, tx.last_insert_rowid()));
    }
    Ok(stored)
}

fn add_extents(tx: &Connection, ino: Ino, content: &Content) -> Result<()> {
    // Inline objects first: the chunk rows below make them reachable, in this transaction.
    let inline = add_inline_objects(tx, content)?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO extents (ino, offset, length, chunk) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut up = tx.prepare_cached(
        "INSERT INTO chunks (id, refcount, plain_len, stored_len, pack, pack_offset, head, inline_ref)
         VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(id) DO UPDATE SET refcount = refcount + 1,
             head = CASE WHEN pack IS NULL THEN excluded.head ELSE head END,
             pack = COALESCE(pack, excluded.pack),
             pack_offset = COALESCE(pack_offset, excluded.pack_offset),
             inline_ref = COALESCE(inline_ref, excluded.inline_ref)",
    )?;
    let mut expect = 0u64;
    for c in &content.chunks {
        let e = &c.extent;
        if e.offset != expect {
            return Err(SpaceError::InvalidArgument(format!(
                "content chunk list is not contiguous at offset {}",
                e.offset
            )));
        }
        expect += e.len as u64;
        ins.execute(params![
            ino as i64,
            e.offset as i64,
            e.len as i64,
            e.chunk.0.to_vec()
        ])?;
        let n = up.execute(params![
            e.chunk.0.to_vec(),
            e.len as i64,
            c.stored_len as i64,
            c.loc.map(|l| l.pack as i64),
            c.loc.map(|l| l.offset as i64),
            c.head.as_ref().map(|h| h.as_slice()),
            inline
                .iter()
                .find(|(id, _)| *id == e.chunk)
                .map(|(_, r)| *r)
        ])?;
        debug_assert_eq!(n, 1);
    }
    if expect != content.size {
        return Err(SpaceError::InvalidArgument(format!(
            "content chunks cover {expect} bytes but size is {}",
            content.size
        )));
    }
    Ok(())
}

/// Replaces the content of file `n`; returns the node as the update left it (no re-read).
fn set_content(tx: &Connection, n: &Node, content: &Content, t: TimeNs) -> Result<Node> {
    // Extents cover exactly [0, size) (fsck checks it): an empty file has none to release.
    if n.size > 0 {
        release_extents(tx, n.ino)?;
    }
    add_extents(tx, n.ino, content)?;
    exec(
        tx,
        "UPDATE nodes SET size=?2, version=version+1, mtime_ns=?3, ctime_ns=?3, provenance=?4 WHERE ino=?1",
        params![n.ino as i64, content.size as i64, t, content.provenance],
    )?;
    Ok(Node {
        size: content.size,
        version: n.version + 1,
        mtime: t,
        ctime: t,
        ..n.clone()
    })
}

/// Creates node `new` as `name` in directory `parent` (the body of [`MetaStore::create`],
/// shared with the redo log's replay, which passes the ino, uuid and time it recorded).
fn create_node(
    tx: &Connection,
    parent: Ino,
    name: &[u8],
    new: &NewNode,
    ino: Option<Ino>,
    uuid: Uuid,
    t: TimeNs,
) -> Result<Node> {
    dir_node(tx, parent)?;
    if lookup(tx, parent, name)?.is_some() {
        return Err(SpaceError::AlreadyExists(display_name(name)));
    }
    let node = insert_node(tx, new, t, ino, uuid)?;
    exec(
        tx,
        "INSERT INTO dentries VALUES (?1, ?2, ?3)",
        params![parent as i64, name, node.ino as i64],
    )?;
    if new.kind == NodeKind::Dir {
        exec(
            tx,
            "UPDATE nodes SET nlink=nlink+1 WHERE ino=?1",
            [parent as i64],
        )?;
    }
    touch_dir(tx, parent, t)?;
    Ok(node)
}

/// Replaces the content of file `ino` (the body of [`MetaStore::commit_content`], shared with
/// the redo log's replay).
fn commit_content_at(
    tx: &Connection,
    ino: Ino,
    content: &Content,
    expect_version: Option<u64>,
    t: TimeNs,
) -> Result<Node> {
    let n = must_node(tx, ino)?;
    if n.kind != NodeKind::File {
        return Err(SpaceError::IsADirectory(format!("inode {ino}")));
    }
    if let Some(v) = expect_version {
        if v != n.version {
            return Err(SpaceError::InvalidArgument(format!(
                "inode {ino} changed concurrently (version {} now, expected {v})",
                n.version
            )));
        }
    }
    set_content(tx, &n, content, t)
}

/// Changes attributes of `ino` at time `t` (the body of [`MetaStore::set_attr`], shared with
/// the redo log's replay).
fn set_attr_at(tx: &Connection, ino: Ino, a: &SetAttr, t: TimeNs) -> Result<Node> {
    must_node(tx, ino)?;
    if let Some(m) = a.mode {
        exec(
            tx,
            "UPDATE nodes SET mode=?2 WHERE ino=?1",
            params![ino as i64, m & 0o7777],
        )?;
    }
    if let Some(u) = a.uid {
        exec(
            tx,
            "UPDATE nodes SET uid=?2 WHERE ino=?1",
            params![ino as i64, u],
        )?;
    }
    if let Some(g) = a.gid {
        exec(
            tx,
            "UPDATE nodes SET gid=?2 WHERE ino=?1",
            params![ino as i64, g],
        )?;
    }
    if let Some(at) = a.atime {
        exec(
            tx,
            "UPDATE nodes SET atime_ns=?2 WHERE ino=?1",
            params![ino as i64, at],
        )?;
    }
    if let Some(mt) = a.mtime {
        exec(
            tx,
            "UPDATE nodes SET mtime_ns=?2 WHERE ino=?1",
            params![ino as i64, mt],
        )?;
    }
    exec(
        tx,
        "UPDATE nodes SET ctime_ns=?2 WHERE ino=?1",
        params![ino as i64, t],
    )?;
    must_node(tx, ino)
}

const DERIVED_COLS: &str = "id, key, size, created_ns, used_ns, hits, provenance";

fn derived_from_row(r: &Row) -> rusqlite::Result<DerivedEntry> {
    let key: Vec<u8> = r.get(1)?;
    let mut k = [0u8; 32];
    if key.len() == 32 {
        k.copy_from_slice(&key);
    }
    Ok(DerivedEntry {
        ino: DERIVED_INO_BIT | r.get::<_, i64>(0)? as u64,
        key: k,
        size: r.get::<_, i64>(2)? as u64,
        created: r.get(3)?,
        used: r.get(4)?,
        hits: r.get::<_, i64>(5)? as u64,
        provenance: r.get(6)?,
    })
}

fn derived_totals(c: &Connection) -> Result<DerivedTotals> {
    Ok(row(
        c,
        "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(hits), 0) FROM derived",
        [],
        |r| {
            Ok(DerivedTotals {
                entries: r.get::<_, i64>(0)? as u64,
                bytes: r.get::<_, i64>(1)? as u64,
                hits: r.get::<_, i64>(2)? as u64,
            })
        },
    )?)
}

/// Removes a derived entry and its chunk references.
fn drop_derived(tx: &Connection, id: i64) -> Result<()> {
    release_extents(tx, DERIVED_INO_BIT | id as u64)?;
    exec(tx, "DELETE FROM derived WHERE id=?1", [id])?;
    Ok(())
}

/// Removes a node entirely (last link gone).
fn destroy_node(tx: &Connection, ino: Ino) -> Result<()> {
    release_extents(tx, ino)?;
    exec(tx, "DELETE FROM xattrs WHERE ino=?1", [ino as i64])?;
    exec(tx, "DELETE FROM nodes WHERE ino=?1", [ino as i64])?;
    Ok(())
}

/// Drops one link; a node losing its last link is kept as an orphan (nlink 0) if `keep` says
/// so (returns its inode), else destroyed.
fn drop_link_keep(
    tx: &Connection,
    node: &Node,
    t: TimeNs,
    keep: &dyn Fn(Ino) -> bool,
) -> Result<Option<Ino>> {
    if node.nlink <= 1 && keep(node.ino) {
        exec(
            tx,
            "UPDATE nodes SET nlink=0, ctime_ns=?2 WHERE ino=?1",
            params![node.ino as i64, t],
        )?;
        Ok(Some(node.ino))
    } else if node.nlink <= 1 {
        destroy_node(tx, node.ino).map(|_| None)
    } else {
        exec(
            tx,
            "UPDATE nodes SET nlink=nlink-1, ctime_ns=?2 WHERE ino=?1",
            params![node.ino as i64, t],
        )?;
        Ok(None)
    }
}

fn is_empty_dir(c: &Connection, ino: Ino) -> Result<bool> {
    let n: i64 = row(
        c,
        "SELECT COUNT(*) FROM dentries WHERE parent=?1",
        [ino as i64],
        |r| r.get(0),
    )?;
    Ok(n == 0)
}

/// True if `ancestor` is `ino` or one of its ancestors (to refuse moving a dir into itself).
fn is_ancestor(c: &Connection, ancestor: Ino, mut ino: Ino) -> Result<bool> {
    loop {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == ROOT_INO {
            return Ok(false);
        }
        let p: Option<i64> = c
            .query_row(
                "SELECT parent FROM dentries WHERE ino=?1 LIMIT 1",
                [ino as i64],
                |r| r.get(0),
            )
            .optional()?;
        match p {
            Some(p) => ino = p as u64,
            None => return Ok(false),
        }
    }
}

/// `offset, length, chunk` columns of an extent row.
fn extent_from_row(r: &Row) -> rusqlite::Result<Extent> {
    Ok(Extent {
        offset: r.get::<_, i64>(0)? as u64,
        len: r.get::<_, i64>(1)? as u32,
        chunk: chunk_id_from(r.get(2)?),
    })
}

/// `stored_len, pack, pack_offset, inline object, head` columns from `at` on.
fn location_from_row(r: &Row, at: usize) -> rusqlite::Result<ChunkLocation> {
    Ok(ChunkLocation {
        stored_len: r.get::<_, i64>(at)? as u32,
        loc: pack_loc(r.get(at + 1)?, r.get(at + 2)?),
        inline: r.get(at + 3)?,
        head: r.get(at + 4)?,
    })
}

/// A chunk row's `pack`, `pack_offset` columns as a location (both NULL: a loose object).
fn pack_loc(pack: Option<i64>, offset: Option<i64>) -> Option<super::PackLoc> {
    match (pack, offset) {
        (Some(p), Some(o)) => Some(super::PackLoc {
            pack: p as u64,
            offset: o as u64,
        }),
        _ => None,
    }
}

impl MetaStore for SqliteMeta {
    fn get(&self, ino: Ino) -> Result<Option<Node>> {
        self.read(|c| get_node(c, ino))
    }

    fn get_by_uuid(&self, uuid: Uuid) -> Result<Option<Node>> {
        self.read(|c| {
            Ok(row(
                c,
                concat!("SELECT ", node_cols!(), " FROM nodes WHERE uuid=?1"),
                [uuid.as_bytes().to_vec()],
                node_from_row,
            )
            .optional()?)
        })
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Node>> {
        self.read(|c| lookup(c, parent, name))
    }

    fn list(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Node)>> {
        self.read(|c| {
            dir_node(c, dir)?;
            let mut st = c.prepare_cached(&format!(
                "SELECT d.name, {} FROM dentries d JOIN nodes n ON n.ino=d.ino WHERE d.parent=?1 ORDER BY d.name",
                NODE_COLS.split(", ").map(|col| format!("n.{col}")).collect::<Vec<_>>().join(", ")
            ))?;
            let rows = st.query_map([dir as i64], |r| Ok((r.get::<_, Vec<u8>>(0)?, node_from_row_at(r, 1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn path_of(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            let mut parts: Vec<Vec<u8>> = Vec::new();
            let mut cur = ino;
            while cur != ROOT_INO {
                let r: Option<(i64, Vec<u8>)> = row(
                    c,
                    "SELECT parent, name FROM dentries WHERE ino=?1 LIMIT 1",
                    [cur as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
                match r {
                    Some((p, n)) => {
                        parts.push(n);
                        cur = p as u64;
                    }
                    None => return Ok(None),
                }
                if parts.len() > 4096 {
                    return Ok(None);
                }
            }
            let mut out = Vec::new();
            for p in parts.iter().rev() {
                out.push(b'/');
                out.extend_from_slice(p);
            }
            if out.is_empty() {
                out.push(b'/');
            }
            Ok(Some(out))
        })
    }

    fn create(&self, parent: Ino, name: &[u8], new: NewNode) -> Result<Node> {
        check_name(name)?;
        let (uuid, t) = (new_uuid(), now_ns());
        if new.kind != NodeKind::File {
            // Committed at once (`mkdir d && spacectl policy set d …` must find d).
            return self.write(|tx| create_node(tx, parent, name, &new, None, uuid, t));
        }
        // A new file is about to get its content (or be closed): share that commit.
        self.write_recorded(|tx| {
            let n = create_node(tx, parent, name, &new, None, uuid, t)?;
            let op = RedoOp::Create {
                parent,
                name: name.to_vec(),
                ino: n.ino,
                uuid,
                t,
                node: new.clone(),
            };
            Ok((n, op))
        })
    }

    fn put_capsule(
        &self,
        parent: Ino,
        name: &[u8],
        new: NewNode,
        content: &Content,
    ) -> Result<(Node, bool)> {
        check_name(name)?;
        self.write(|tx| {
            dir_node(tx, parent)?;
            let t = now_ns();
            match lookup(tx, parent, name)? {
                Some(n) if n.kind == NodeKind::File => Ok((set_content(tx, &n, content, t)?, true)),
                Some(n) if n.kind == NodeKind::Dir => {
                    Err(SpaceError::IsADirectory(display_name(name)))
                }
                Some(_) => Err(SpaceError::AlreadyExists(format!(
                    "{} (not a regular file)",
                    display_name(name)
                ))),
                None => {
                    let node = insert_node(tx, &new, t, None, new_uuid())?;
                    exec(
                        tx,
                        "INSERT INTO dentries VALUES (?1, ?2, ?3)",
                        params![parent as i64, name, node.ino as i64],
                    )?;
                    let n = set_content(tx, &node, content, t)?;
                    touch_dir(tx, parent, t)?;
                    Ok((n, false))
                }
            }
        })
    }

    fn commit_content(
        &self,
        ino: Ino,
        content: &Content,
        expect_version: Option<u64>,
    ) -> Result<Node> {
        let t = now_ns();
        self.write_recorded(|tx| {
            let n = commit_content_at(tx, ino, content, expect_version, t)?;
            let op = RedoOp::Content {
                ino,
                t,
                expect_version,
                content: content.clone(),
            };
            Ok((n, op))
        })
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.unlink_keep(parent, name, &|_| false).map(|_| ())
    }

    fn unlink_keep(
        &self,
        parent: Ino,
        name: &[u8],
        keep: &dyn Fn(Ino) -> bool,
    ) -> Result<Option<Ino>> {
        self.write(|tx| {
            let n = lookup(tx, parent, name)?
                .ok_or_else(|| SpaceError::NotFound(display_name(name)))?;
            if n.kind == NodeKind::Dir {
                return Err(SpaceError::IsADirectory(display_name(name)));
            }
            let t = now_ns();
            exec(
                tx,
                "DELETE FROM dentries WHERE parent=?1 AND name=?2",
                params![parent as i64, name],
            )?;
            let kept = drop_link_keep(tx, &n, t, keep)?;
            touch_dir(tx, parent, t)?;
            Ok(kept)
        })
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.write(|tx| {
            let n = lookup(tx, parent, name)?
                .ok_or_else(|| SpaceError::NotFound(display_name(name)))?;
            if n.kind != NodeKind::Dir {
                return Err(SpaceError::NotADirectory(display_name(name)));
            }
            if !is_empty_dir(tx, n.ino)? {
                return Err(SpaceError::NotEmpty(display_name(name)));
            }
            let t = now_ns();
            exec(
                tx,
                "DELETE FROM dentries WHERE parent=?1 AND name=?2",
                params![parent as i64, name],
            )?;
            destroy_node(tx, n.ino)?;
            exec(
                tx,
                "UPDATE nodes SET nlink=nlink-1 WHERE ino=?1",
                [parent as i64],
            )?;
            touch_dir(tx, parent, t)
        })
    }

    fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        no_replace: bool,
    ) -> Result<()> {
        self.rename_keep(parent, name, new_parent, new_name, no_replace, &|_| false)
            .map(|_| ())
    }

    fn rename_keep(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        no_replace: bool,
        keep: &dyn Fn(Ino) -> bool,
    ) -> Result<Option<Ino>> {
        check_name(new_name)?;
        self.write(|tx| {
            let mut kept = None;
            let src = lookup(tx, parent, name)?
                .ok_or_else(|| SpaceError::NotFound(display_name(name)))?;
            dir_node(tx, new_parent)?;
            if src.kind == NodeKind::Dir && is_ancestor(tx, src.ino, new_parent)? {
                return Err(SpaceError::InvalidArgument(format!(
                    "cannot move directory `{}` into itself",
                    display_name(name)
                )));
            }
            let t = now_ns();
            if let Some(dst) = lookup(tx, new_parent, new_name)? {
                if dst.ino == src.ino {
                    return Ok(None); // same file (hard links or no-op): POSIX says do nothing
                }
                if no_replace {
                    return Err(SpaceError::AlreadyExists(display_name(new_name)));
                }
                match (src.kind == NodeKind::Dir, dst.kind == NodeKind::Dir) {
                    (true, false) => return Err(SpaceError::NotADirectory(display_name(new_name))),
                    (false, true) => return Err(SpaceError::IsADirectory(display_name(new_name))),
                    (true, true) => {
                        if !is_empty_dir(tx, dst.ino)? {
                            return Err(SpaceError::NotEmpty(display_name(new_name)));
                        }
                        destroy_node(tx, dst.ino)?;
                        exec(
                            tx,
                            "UPDATE nodes SET nlink=nlink-1 WHERE ino=?1",
                            [new_parent as i64],
                        )?;
                    }
                    (false, false) => kept = drop_link_keep(tx, &dst, t, keep)?,
                }
                exec(
                    tx,
                    "DELETE FROM dentries WHERE parent=?1 AND name=?2",
                    params![new_parent as i64, new_name],
                )?;
            }
            exec(
                tx,
                "UPDATE dentries SET parent=?3, name=?4 WHERE parent=?1 AND name=?2",
                params![parent as i64, name, new_parent as i64, new_name],
            )?;
            if src.kind == NodeKind::Dir && parent != new_parent {
                exec(
                    tx,
                    "UPDATE nodes SET nlink=nlink-1 WHERE ino=?1",
                    [parent as i64],
                )?;
                exec(
                    tx,
                    "UPDATE nodes SET nlink=nlink+1 WHERE ino=?1",
                    [new_parent as i64],
                )?;
            }
            exec(
                tx,
                "UPDATE nodes SET ctime_ns=?2 WHERE ino=?1",
                params![src.ino as i64, t],
            )?;
            touch_dir(tx, parent, t)?;
            touch_dir(tx, new_parent, t)?;
            Ok(kept)
        })
    }

    fn exchange(
        &self,
        parent: Ino,
        name: &[u8],
        other_parent: Ino,
        other_name: &[u8],
    ) -> Result<()> {
        self.write(|tx| {
            let a = lookup(tx, parent, name)?
                .ok_or_else(|| SpaceError::NotFound(display_name(name)))?;
            let b = lookup(tx, other_parent, other_name)?
                .ok_or_else(|| SpaceError::NotFound(display_name(other_name)))?;
            if a.ino == b.ino {
                return Ok(()); // two names of one node: nothing changes
            }
            // Neither may end up inside itself.
            if (a.kind == NodeKind::Dir && is_ancestor(tx, a.ino, other_parent)?)
                || (b.kind == NodeKind::Dir && is_ancestor(tx, b.ino, parent)?)
            {
                return Err(SpaceError::InvalidArgument(format!(
                    "cannot exchange `{}` and `{}`: one contains the other",
                    display_name(name),
                    display_name(other_name)
                )));
            }
            let point = |dir: Ino, n: &[u8], ino: Ino| {
                exec(
                    tx,
                    "UPDATE dentries SET ino=?3 WHERE parent=?1 AND name=?2",
                    params![dir as i64, n, ino as i64],
                )
            };
            point(parent, name, b.ino)?;
            point(other_parent, other_name, a.ino)?;
            // A directory that changes parent moves its `..` link with it.
            let moved_dirs = (a.kind == NodeKind::Dir) as i64 - (b.kind == NodeKind::Dir) as i64;
            if parent != other_parent && moved_dirs != 0 {
                for (dir, delta) in [(parent, -moved_dirs), (other_parent, moved_dirs)] {
                    exec(
                        tx,
                        "UPDATE nodes SET nlink=nlink+?2 WHERE ino=?1",
                        params![dir as i64, delta],
                    )?;
                }
            }
            let t = now_ns();
            exec(
                tx,
                "UPDATE nodes SET ctime_ns=?3 WHERE ino IN (?1, ?2)",
                params![a.ino as i64, b.ino as i64, t],
            )?;
            touch_dir(tx, parent, t)?;
            touch_dir(tx, other_parent, t)
        })
    }

    fn purge_orphan(&self, ino: Ino) -> Result<bool> {
        self.write(|tx| {
            let Some(n) = get_node(tx, ino)? else {
                return Ok(false);
            };
            let linked: i64 = row(
                tx,
                "SELECT COUNT(*) FROM dentries WHERE ino=?1",
                [ino as i64],
                |r| r.get(0),
            )?;
            if n.kind == NodeKind::Dir || n.nlink != 0 || linked != 0 {
                return Ok(false);
            }
            destroy_node(tx, ino)?;
            Ok(true)
        })
    }

    fn nearest_policy(&self, dir: Ino) -> Result<Option<String>> {
        self.read(|c| {
            Ok(row(
                c,
                "WITH RECURSIVE up(ino, depth) AS (
                     SELECT ?1, 0
                     UNION ALL
                     SELECT d.parent, up.depth + 1 FROM up JOIN dentries d ON d.ino = up.ino
                     WHERE up.ino != ?2 AND up.depth < 4096
                 )
                 SELECT n.policy FROM up JOIN nodes n ON n.ino = up.ino
                 WHERE n.policy IS NOT NULL AND n.kind = ?3
                 ORDER BY up.depth LIMIT 1",
                params![dir as i64, ROOT_INO as i64, NodeKind::Dir as i64],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn set_durable_commits(&self, durable: bool) -> Result<()> {
        let c = lock(&self.conn);
        // No pragma may change inside a transaction.
        self.commit_open(&c)?;
        c.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        // Relaxed commits come in streams of small transactions (a mount creating files):
        // checkpoint the log less often, so that pages rewritten by many of them (a busy
        // directory's) are copied back once per checkpoint, not once per ~80 files.
        c.pragma_update(
            None,
            "wal_autocheckpoint",
            if durable {
                1000
            } else {
                WAL_CHECKPOINT_PAGES_RELAXED
            },
        )?;
        self.durable.store(durable, Ordering::Relaxed);
        drop(c);
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        {
            let c = lock(&self.conn);
            self.commit_open(&c)?;
            if !self.unsynced.swap(false, Ordering::Relaxed) {
                return Ok(());
            }
            let marked = exec(
                &c,
                "INSERT OR REPLACE INTO meta VALUES ('synced_at_ns', ?1)",
                [now_ns().to_string()],
            );
            if let Err(e) = marked {
                self.unsynced.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        }
        // Every commit so far has its frames in the write-ahead log (or, once checkpointed, in
        // the database file, which a checkpoint syncs before the log is reused): syncing the
        // log makes them all durable. Done without the connection, so other threads keep
        // working while the disk flushes (tens of milliseconds on a busy disk).
        let synced = std::fs::File::open(&self.wal_path).and_then(|f| f.sync_data());
        if let Err(e) = synced {
            self.unsynced.store(true, Ordering::Relaxed);
            return Err(SpaceError::io(
                format!("syncing {}", self.wal_path.display()),
                e,
            ));
        }
        Ok(())
    }

    fn commit_deferred(&self) -> Result<()> {
        let c = lock(&self.conn);
        self.commit_open(&c)
    }

    fn checkpoint(&self) -> Result<()> {
        let mut slot = lock(&self.checkpointer);
        if slot.is_none() {
            let c = Connection::open(&self.db_path)?;
            // A checkpoint syncs the log before copying it and the database after, as the
            // commits' own (automatic) checkpoints do: the log is only reused once the
            // database holds its pages durably, which `sync` relies on.
            c.pragma_update(None, "synchronous", "NORMAL")?;
            *slot = Some(c);
        }
        let c = slot.as_ref().expect("opened above");
        // PASSIVE: copies what no reader still needs, never waits for or blocks a writer.
        // Returns (busy, frames in the log, frames copied).
        let passive = || -> Result<(i64, i64)> {
            Ok(c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?)
        };
        let (frames, copied) = passive()?;
        if frames < self.restart_frames || copied < frames {
            return Ok(());
        }
        // Caught up with the log as it was; once more for what was committed meanwhile,
        // so that what is left to copy with the writer held up is the last moments' frames.
        passive()?;
        let w = lock(&self.conn);
        let held = Instant::now();
        self.commit_open(&w)?;
        // TRUNCATE: copies the rest and starts the log over, or reports busy (the next round
        // tries again) if another process is reading or writing. Run by the writer's own
        // connection: one that finds the log restarted by another connection drops its
        // page cache (32 MiB of B-tree pages, read again from the disk after the kernel's
        // cache was dropped: 266 metadata reads in 3,000 cold random reads of a capsule).
        w.busy_timeout(Duration::ZERO)?;
        let busy = w.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        w.busy_timeout(BUSY_TIMEOUT)?;
        let busy = busy?;
        drop(w);
        log::debug!(
            "metadata log of {frames} frames {} in {:?}",
            if busy == 0 {
                "started over"
            } else {
                "busy, not started over"
            },
            held.elapsed()
        );
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.write(|_| Ok(()))
    }

    fn commit_deferred_when_due(&self, limit: Duration, idle: Duration) -> Result<()> {
        let since = {
            let g = lock(&self.deferred);
            let (g, _) = self
                .deferred_open
                .wait_timeout_while(g, idle, |d| d.is_none())
                .unwrap_or_else(|p| p.into_inner());
            *g
        };
        let Some(t0) = since else { return Ok(()) };
        std::thread::sleep(limit.saturating_sub(t0.elapsed()));
        let c = lock(&self.conn);
        if *lock(&self.deferred) != Some(t0) {
            // Committed meanwhile (normally by the file's close); a newer deferred transaction
            // is due later, at its own time (the caller loops).
            return Ok(());
        }
        self.commit_open(&c)
    }

    fn orphans(&self) -> Result<Vec<Ino>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT ino FROM nodes WHERE nlink=0 AND kind!=2")?;
            let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
            Ok(rows
                .map(|r| r.map(|i| i as u64))
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Node> {
        check_name(new_name)?;
        self.write(|tx| {
            let n = must_node(tx, ino)?;
            if n.kind == NodeKind::Dir {
                return Err(SpaceError::IsADirectory(
                    "cannot hard-link a directory".into(),
                ));
            }
            dir_node(tx, new_parent)?;
            if lookup(tx, new_parent, new_name)?.is_some() {
                return Err(SpaceError::AlreadyExists(display_name(new_name)));
            }
            let t = now_ns();
            exec(
                tx,
                "INSERT INTO dentries VALUES (?1, ?2, ?3)",
                params![new_parent as i64, new_name, ino as i64],
            )?;
            exec(
                tx,
                "UPDATE nodes SET nlink=nlink+1, ctime_ns=?2 WHERE ino=?1",
                params![ino as i64, t],
            )?;
            touch_dir(tx, new_parent, t)?;
            must_node(tx, ino)
        })
    }

    fn set_attr(&self, ino: Ino, a: &SetAttr) -> Result<Node> {
        // Grouped like content commits: `tar` and `cp -p` change attributes of every file.
        let t = now_ns();
        self.write_recorded(|tx| {
            let n = set_attr_at(tx, ino, a, t)?;
            let op = RedoOp::SetAttr {
                ino,
                t,
                attr: a.clone(),
            };
            Ok((n, op))
        })
    }

    fn set_policy(&self, ino: Ino, policy: Option<&str>) -> Result<Node> {
        self.write(|tx| {
            must_node(tx, ino)?;
            exec(
                tx,
                "UPDATE nodes SET policy=?2, ctime_ns=?3 WHERE ino=?1",
                params![ino as i64, policy, now_ns()],
            )?;
            must_node(tx, ino)
        })
    }

    fn extents_from(&self, ino: Ino, offset: u64, limit: usize) -> Result<Vec<Extent>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT offset, length, chunk FROM extents WHERE ino=?1 AND offset >=
                   COALESCE((SELECT MAX(offset) FROM extents WHERE ino=?1 AND offset <= ?2), 0)
                 ORDER BY offset LIMIT ?3",
            )?;
            let rows = st.query_map(
                params![ino as i64, offset as i64, limit as i64],
                extent_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn extents_located_from(
        &self,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<(Extent, Option<ChunkLocation>)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT e.offset, e.length, e.chunk, c.stored_len, c.pack, c.pack_offset, i.object,
                        c.head
                 FROM extents e LEFT JOIN chunks c ON c.id = e.chunk
                   LEFT JOIN inline_objects i ON i.rowid = c.inline_ref
                 WHERE e.ino=?1 AND e.offset >=
                   COALESCE((SELECT MAX(offset) FROM extents WHERE ino=?1 AND offset <= ?2), 0)
                 ORDER BY e.offset LIMIT ?3",
            )?;
            let rows = st.query_map(params![ino as i64, offset as i64, limit as i64], |r| {
                let extent = extent_from_row(r)?;
                let located = match r.get::<_, Option<i64>>(3)? {
                    Some(_) => Some(location_from_row(r, 3)?),
                    None => None,
                };
                Ok((extent, located))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT 1 FROM chunks WHERE id=?1")?
                .exists([id.0.to_vec()])?)
        })
    }

    fn any_xattr_with_prefix(&self, prefix: &str) -> Result<bool> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM xattrs WHERE substr(name, 1, ?2) = ?1 LIMIT 1")?
                    .exists(params![prefix, prefix.len() as i64])?,
            )
        })
    }

    fn get_xattr(&self, ino: Ino, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(row(
                c,
                "SELECT value FROM xattrs WHERE ino=?1 AND name=?2",
                params![ino as i64, name],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn set_xattr(&self, ino: Ino, name: &str, value: &[u8]) -> Result<()> {
        self.write(|tx| {
            must_node(tx, ino)?;
            exec(tx,
                "INSERT INTO xattrs VALUES (?1, ?2, ?3) ON CONFLICT(ino, name) DO UPDATE SET value=excluded.value",
                params![ino as i64, name, value],
            )?;
            exec(tx, "UPDATE nodes SET ctime_ns=?2 WHERE ino=?1", params![ino as i64, now_ns()])?;
            Ok(())
        })
    }

    fn list_xattr(&self, ino: Ino) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT name FROM xattrs WHERE ino=?1 ORDER BY name")?;
            let rows = st.query_map([ino as i64], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
    }

    fn remove_xattr(&self, ino: Ino, name: &str) -> Result<bool> {
        self.write(|tx| {
            Ok(exec(
                tx,
                "DELETE FROM xattrs WHERE ino=?1 AND name=?2",
                params![ino as i64, name],
            )? > 0)
        })
    }

    fn chunk_location(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        self.read(|c| {
            Ok(row(
                c,
                "SELECT c.stored_len, c.pack, c.pack_offset, i.object, c.head
                 FROM chunks c LEFT JOIN inline_objects i ON i.rowid = c.inline_ref WHERE c.id=?1",
                [id.0.to_vec()],
                |r| location_from_row(r, 0),
            )
            .optional()?)
        })
    }

    fn pack_usage(&self) -> Result<Vec<(u64, u64)>> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT pack, SUM(stored_len) + {} * COUNT(*) FROM chunks
                 WHERE pack IS NOT NULL AND refcount > 0 GROUP BY pack",
                super::local::PACK_RECORD_HEADER
            ))?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn chunks_in_pack(&self, pack: u64) -> Result<Vec<(ChunkId, super::PackLoc, u32)>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id, pack_offset, stored_len FROM chunks
                 WHERE pack = ?1 AND refcount > 0 ORDER BY pack_offset",
            )?;
            let rows = st.query_map([pack as i64], |r| {
                Ok((
                    chunk_id_from(r.get(0)?),
                    super::PackLoc {
                        pack,
                        offset: r.get::<_, i64>(1)? as u64,
                    },
                    r.get::<_, i64>(2)? as u32,
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn relocate(&self, moves: &[(ChunkId, super::PackLoc)]) -> Result<()> {
        self.write(|tx| {
            let mut st =
                tx.prepare_cached("UPDATE chunks SET pack = ?2, pack_offset = ?3 WHERE id = ?1")?;
            for (id, loc) in moves {
                st.execute(params![id.0.to_vec(), loc.pack as i64, loc.offset as i64])?;
            }
            Ok(())
        })
    }

    fn policies_containing(&self, needle: &str) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT policy FROM nodes WHERE policy IS NOT NULL AND instr(policy, ?1) > 0",
            )?;
            let rows = st.query_map([needle], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn provenance(&self, ino: Ino) -> Result<Option<String>> {
        self.read(|c| {
            Ok(row(
                c,
                "SELECT provenance FROM nodes WHERE ino=?1",
                [ino as i64],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
        })
    }

    fn derived_get(&self, key: &[u8; 32]) -> Result<Option<DerivedEntry>> {
        self.read(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {DERIVED_COLS} FROM derived WHERE key=?1"))?
                    .query_row([key.to_vec()], derived_from_row)
                    .optional()?,
            )
        })
    }

    fn derived_touch(&self, ino: Ino, now: TimeNs) -> Result<()> {
        self.write(|tx| {
            exec(
                tx,
                "UPDATE derived SET used_ns=MAX(used_ns, ?2), hits=hits+1 WHERE id=?1",
                params![(ino & !DERIVED_INO_BIT) as i64, now],
            )?;
            Ok(())
        })
    }

    fn derived_put(
        &self,
        key: &[u8; 32],
        content: &Content,
        provenance: &str,
    ) -> Result<DerivedEntry> {
        self.write(|tx| {
            let get = |tx: &Connection| {
                row(tx,
                    &format!("SELECT {DERIVED_COLS} FROM derived WHERE key=?1"),
                    [key.to_vec()],
                    derived_from_row,
                )
                .optional()
            };
            if let Some(e) = get(tx)? {
                return Ok(e);
            }
            let t = now_ns();
            exec(tx,
                "INSERT INTO derived (key, size, created_ns, used_ns, hits, provenance) VALUES (?1, ?2, ?3, ?3, 0, ?4)",
                params![key.to_vec(), content.size as i64, t, provenance],
            )?;
            let id = tx.last_insert_rowid() as u64;
            add_extents(tx, DERIVED_INO_BIT | id, content)?;
            Ok(get(tx)?.expect("inserted above"))
        })
    }

    fn derived_evict(&self, budget: u64, keep: Option<Ino>) -> Result<DerivedTotals> {
        self.write(|tx| {
            let total: i64 = row(tx, "SELECT COALESCE(SUM(size), 0) FROM derived", [], |r| {
                r.get(0)
            })?;
            let mut over = (total as u64).saturating_sub(budget);
            let mut dropped = DerivedTotals::default();
            if over == 0 {
                return Ok(dropped);
            }
            let keep_id = keep.map(|k| (k & !DERIVED_INO_BIT) as i64).unwrap_or(-1);
            let victims: Vec<(i64, i64, i64)> = tx
                .prepare("SELECT id, size, hits FROM derived WHERE id != ?1 ORDER BY used_ns, id")?
                .query_map([keep_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, size, hits) in victims {
                if over == 0 {
                    break;
                }
                drop_derived(tx, id)?;
                over = over.saturating_sub(size as u64);
                dropped.entries += 1;
                dropped.bytes += size as u64;
                dropped.hits += hits as u64;
            }
            Ok(dropped)
        })
    }

    fn derived_clear(&self) -> Result<DerivedTotals> {
        self.write(|tx| {
            let totals = derived_totals(tx)?;
            let ids: Vec<i64> = tx
                .prepare("SELECT id FROM derived")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in ids {
                drop_derived(tx, id)?;
            }
            Ok(totals)
        })
    }

    fn derived_totals(&self) -> Result<DerivedTotals> {
        self.read(derived_totals)
    }

    fn stats(&self) -> Result<MetaStats> {
        self.read(|c| {
            let q = |sql: &str| -> rusqlite::Result<i64> {
                row(c, sql, [], |r| r.get::<_, Option<i64>>(0)).map(|v| v.unwrap_or(0))
            };
            Ok(MetaStats {
                files: q("SELECT COUNT(*) FROM nodes WHERE kind=1")? as u64,
                directories: q("SELECT COUNT(*) FROM nodes WHERE kind=2")? as u64,
                logical_bytes: q("SELECT SUM(size) FROM nodes WHERE kind=1")? as u64,
                referenced_bytes: q("SELECT SUM(length) FROM extents")? as u64,
                unique_bytes: q("SELECT SUM(plain_len) FROM chunks WHERE refcount > 0")? as u64,
                stored_bytes: q("SELECT SUM(stored_len) FROM chunks WHERE refcount > 0")? as u64,
                chunks: q("SELECT COUNT(*) FROM chunks WHERE refcount > 0")? as u64,
                unreferenced_chunks: q("SELECT COUNT(*) FROM chunks WHERE refcount <= 0")? as u64,
            })
        })
    }

    fn chunk_rows(&self) -> Result<Vec<ChunkRow>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, refcount, plain_len, stored_len FROM chunks")?;
            let rows = st.query_map([], chunk_row_from)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn referrers(
        &self,
        chunks: &[ChunkId],
    ) -> Result<std::collections::HashMap<ChunkId, Vec<(Ino, u64)>>> {
        let mut found: std::collections::HashMap<ChunkId, Vec<(Ino, u64)>> =
            chunks.iter().map(|c| (*c, Vec::new())).collect();
        if chunks.is_empty() {
            return Ok(found);
        }
        self.read(|c| {
            let mut st = c.prepare("SELECT ino, offset, chunk FROM extents")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let Ok(id) = <[u8; 32]>::try_from(r.get_ref(2)?.as_blob().unwrap_or_default())
                else {
                    continue; // not a chunk id (fsck's metadata check reports it)
                };
                if let Some(list) = found.get_mut(&ChunkId(id)) {
                    list.push((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64));
                }
            }
            Ok(())
        })?;
        for list in found.values_mut() {
            list.sort_unstable();
        }
        Ok(found)
    }

    fn delete_unreferenced_chunks(&self) -> Result<Vec<ChunkRow>> {
        self.write(|tx| {
            // `NOT IN` builds a set of the referenced ids once: extents have no index by chunk
            // (it cost a B-tree page per created file), so a lookup per chunk would scan them.
            let dead = {
                let mut st = tx.prepare(
                    "SELECT id, refcount, plain_len, stored_len, inline_ref FROM chunks
                     WHERE refcount <= 0 AND id NOT IN (SELECT chunk FROM extents)",
                )?;
                let rows = st.query_map([], |r| Ok((chunk_row_from(r)?, r.get(4)?)))?;
                rows.collect::<rusqlite::Result<Vec<(ChunkRow, Option<i64>)>>>()?
            };
            let mut del_chunk = tx.prepare_cached("DELETE FROM chunks WHERE id=?1")?;
            let mut del_inline = tx.prepare_cached("DELETE FROM inline_objects WHERE rowid=?1")?;
            for (row, inline_ref) in &dead {
                del_chunk.execute([row.id.0.to_vec()])?;
                if let Some(r) = inline_ref {
                    del_inline.execute([r])?;
                }
            }
            Ok(dead.into_iter().map(|(row, _)| row).collect())
        })
    }

    fn check(&self) -> Result<Vec<MetaProblem>> {
        self.read(|c| {
            let mut out = Vec::new();
            let mut st = c.prepare(
                "SELECT c.id, c.refcount, COALESCE(x.n, 0) FROM chunks c
                 LEFT JOIN (SELECT chunk, COUNT(*) n FROM extents GROUP BY chunk) x ON x.chunk = c.id
                 WHERE c.refcount != COALESCE(x.n, 0)",
            )?;
            for r in st.query_map([], |r| Ok((chunk_id_from(r.get(0)?), r.get(1)?, r.get(2)?)))? {
                let (chunk, recorded, actual) = r?;
                out.push(MetaProblem::RefcountMismatch { chunk, recorded, actual });
            }
            let mut st = c.prepare(
                "SELECT e.ino, e.offset, e.chunk FROM extents e LEFT JOIN chunks c ON c.id = e.chunk WHERE c.id IS NULL",
            )?;
            for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, chunk_id_from(r.get(2)?))))? {
                let (ino, offset, chunk) = r?;
                out.push(MetaProblem::MissingChunkRow { ino: ino as u64, offset: offset as u64, chunk });
            }
            // Each file's extents must tile [0, size) exactly; special files (kinds 4-7) have
            // size 0 and no extents.
            // Derived entries (cached views) are checked the same way, under their pseudo-inodes.
            let mut st = c.prepare(
                "SELECT ino, size FROM nodes WHERE kind=1 OR kind BETWEEN 4 AND 7
                 UNION ALL SELECT id | (1 << 63), size FROM derived",
            )?;
            let files: Vec<(i64, i64)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            let mut ex = c.prepare("SELECT offset, length FROM extents WHERE ino=?1 ORDER BY offset")?;
            for (ino, size) in files {
                let mut expect = 0i64;
                for r in ex.query_map([ino], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
                    let (off, len) = r?;
                    if off != expect {
                        out.push(MetaProblem::ExtentGap { ino: ino as u64, expected_offset: expect as u64, found_offset: off as u64 });
                    }
                    expect = off + len;
                }
                if expect != size {
                    out.push(MetaProblem::SizeMismatch { ino: ino as u64, size: size as u64, extents_end: expect as u64 });
                }
            }
            let mut st = c.prepare("SELECT d.parent, d.name FROM dentries d LEFT JOIN nodes n ON n.ino=d.ino WHERE n.ino IS NULL")?;
            for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))? {
                let (parent, name) = r?;
                out.push(MetaProblem::DanglingEntry { parent: parent as u64, name: display_name(&name) });
            }
            let mut st = c.prepare(
                "SELECT n.ino, n.nlink, COALESCE(d.k, 0) FROM nodes n
                 LEFT JOIN (SELECT ino, COUNT(*) k FROM dentries GROUP BY ino) d ON d.ino = n.ino
                 WHERE n.kind != 2 AND n.nlink != COALESCE(d.k, 0)",
            )?;
            for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))? {
                let (ino, recorded, actual) = r?;
                out.push(MetaProblem::LinkCountMismatch { ino: ino as u64, recorded: recorded as u32, actual: actual as u32 });
            }
            let mut st = c.prepare(
                "SELECT n.ino FROM nodes n WHERE n.ino != 1 AND NOT (n.nlink = 0 AND n.kind != 2) AND NOT EXISTS (SELECT 1 FROM dentries d WHERE d.ino = n.ino)",
            )?;
            for r in st.query_map([], |r| r.get::<_, i64>(0))? {
                out.push(MetaProblem::Unreachable { ino: r? as u64 });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(kind: NodeKind, rdev: u64) -> NewNode {
        NewNode {
            kind,
            mode: 0o640,
            uid: 7,
            gid: 8,
            policy: None,
            target: None,
            rdev,
        }
    }

    #[test]
    fn a_created_node_is_returned_as_it_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(&dir.path().join("meta.db"), 0, 0).unwrap();
        let mut link = new(NodeKind::Symlink, 0);
        link.target = Some(b"../somewhere/else".to_vec());
        let mut file = new(NodeKind::File, 0);
        file.policy = Some("encryption: true\n".into());
        file.mode = 0o104755; // type bits are not stored
        let kinds = [
            (&b"d"[..], new(NodeKind::Dir, 0)),
            (b"f", file),
            (b"l", link),
            (b"c", new(NodeKind::CharDevice, 0x0501)),
            (b"p", new(NodeKind::Fifo, 0x0501)),
        ];
        for (name, node) in kinds {
            let made = m.create(ROOT_INO, name, node).unwrap();
            m.commit_deferred().unwrap();
            assert_eq!(Some(made.clone()), m.get(made.ino).unwrap(), "{name:?}");
        }
    }

    #[test]
    fn inode_numbers_are_never_used_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let mut seen = std::collections::HashSet::new();
        {
            let m = SqliteMeta::open(&path, 0, 0).unwrap();
            for i in 0..5 {
                // The newest node is the one with the highest number: SQLite's own choice
                // would hand its number out again.
                let d = m.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
                let f = m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
                assert!(
                    seen.insert(d.ino) && seen.insert(f.ino),
                    "round {i}: {seen:?}"
                );
                m.unlink(ROOT_INO, b"f").unwrap();
                m.rmdir(ROOT_INO, b"d").unwrap();
            }
            m.commit_deferred().unwrap();
        }
        // Also after reopening (the mark is stored).
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        let n = m.create(ROOT_INO, b"n", new(NodeKind::File, 0)).unwrap();
        assert!(!seen.contains(&n.ino), "{} reused", n.ino);
    }

    #[test]
    fn nearest_policy_is_the_innermost_directory_policy() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(&dir.path().join("meta.db"), 0, 0).unwrap();
        let a = m.create(ROOT_INO, b"a", new(NodeKind::Dir, 0)).unwrap();
        let b = m.create(a.ino, b"b", new(NodeKind::Dir, 0)).unwrap();
        let c = m.create(b.ino, b"c", new(NodeKind::Dir, 0)).unwrap();
        assert_eq!(m.nearest_policy(c.ino).unwrap(), None);
        m.set_policy(ROOT_INO, Some("root")).unwrap();
        assert_eq!(m.nearest_policy(c.ino).unwrap().as_deref(), Some("root"));
        m.set_policy(a.ino, Some("a")).unwrap();
        assert_eq!(m.nearest_policy(c.ino).unwrap().as_deref(), Some("a"));
        assert_eq!(m.nearest_policy(b.ino).unwrap().as_deref(), Some("a"));
        m.set_policy(c.ino, Some("c")).unwrap();
        assert_eq!(m.nearest_policy(c.ino).unwrap().as_deref(), Some("c"));
        assert_eq!(m.nearest_policy(ROOT_INO).unwrap().as_deref(), Some("root"));
    }

    #[test]
    fn relaxed_commits_switch_synchronous_and_sync_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(&dir.path().join("meta.db"), 0, 0).unwrap();
        let synchronous = |m: &SqliteMeta| -> i64 {
            m.read(|c| Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?))
                .unwrap()
        };
        let synced_at = |m: &SqliteMeta| -> Option<String> {
            m.read(|c| {
                Ok(
                    c.query_row("SELECT value FROM meta WHERE key='synced_at_ns'", [], |r| {
                        r.get(0)
                    })
                    .optional()?,
                )
            })
            .unwrap()
        };
        assert_eq!(synchronous(&m), 2, "FULL by default");
        m.sync().unwrap();
        assert_eq!(synced_at(&m), None, "nothing relaxed: sync writes nothing");
        m.set_durable_commits(false).unwrap();
        assert_eq!(synchronous(&m), 1, "NORMAL when relaxed");
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        m.sync().unwrap();
        let first = synced_at(&m).expect("a relaxed commit makes sync write a durable commit");
        assert_eq!(synchronous(&m), 1, "still relaxed after a sync");
        m.sync().unwrap();
        assert_eq!(synced_at(&m).unwrap(), first, "nothing new: no second sync");
        m.set_durable_commits(true).unwrap();
        assert_eq!(synchronous(&m), 2);
    }

    /// Two connections to one database: the mount's and another process's.
    fn two_connections(dir: &tempfile::TempDir) -> (SqliteMeta, SqliteMeta) {
        let path = dir.path().join("meta.db");
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        (m, SqliteMeta::open(&path, 0, 0).unwrap())
    }

    #[test]
    fn relaxed_file_creation_shares_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (m, other) = two_connections(&dir);
        let seen_by_other = |name: &[u8]| other.lookup(ROOT_INO, name).unwrap().is_some();
        m.set_durable_commits(false).unwrap();

        let f = m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        assert!(
            m.get(f.ino).unwrap().is_some(),
            "the creating connection sees it at once"
        );
        assert!(
            !seen_by_other(b"f"),
            "other processes see it once committed"
        );
        // A failing change joins the open transaction and undoes only itself.
        assert!(matches!(
            m.create(ROOT_INO, b"f", new(NodeKind::File, 0)),
            Err(SpaceError::AlreadyExists(_))
        ));
        assert!(
            m.get(f.ino).unwrap().is_some(),
            "the failure did not undo the creation"
        );
        // Directories are committed at once, and take the pending file with them.
        m.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        assert!(seen_by_other(b"d") && seen_by_other(b"f"));

        m.create(ROOT_INO, b"g", new(NodeKind::File, 0)).unwrap();
        let content = Content {
            chunks: Vec::new(),
            size: 0,
            provenance: None,
            inline_objects: Vec::new(),
        };
        let g = m.lookup(ROOT_INO, b"g").unwrap().unwrap();
        m.commit_content(g.ino, &content, None).unwrap();
        assert!(
            !seen_by_other(b"g"),
            "the content commit joins the group too"
        );
        m.commit_deferred().unwrap();
        assert!(seen_by_other(b"g"), "committed together");

        // (Taken before the group opens: its deadline counts from then.)
        let t = Instant::now();
        m.create(ROOT_INO, b"h", new(NodeKind::File, 0)).unwrap();
        m.commit_deferred_when_due(Duration::from_millis(50), Duration::from_secs(5))
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "committed no earlier than asked"
        );
        assert!(seen_by_other(b"h"), "and committed by then");
        let t = Instant::now();
        m.commit_deferred_when_due(Duration::ZERO, Duration::from_millis(20))
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(20),
            "nothing deferred: waits idle"
        );

        m.create(ROOT_INO, b"i", new(NodeKind::File, 0)).unwrap();
        m.sync().unwrap();
        assert!(seen_by_other(b"i"), "sync commits what was deferred");
        m.create(ROOT_INO, b"j", new(NodeKind::File, 0)).unwrap();
        drop(m);
        assert!(
            seen_by_other(b"j"),
            "closing the store commits what was deferred"
        );
    }

    fn small_content(id: u8, bytes: &[u8]) -> Content {
        let chunk = ChunkId([id; 32]);
        Content {
            chunks: vec![ContentChunk {
                extent: Extent {
                    offset: 0,
                    len: bytes.len() as u32,
                    chunk,
                },
                stored_len: bytes.len() as u32 + 28,
                loc: None,
                head: None,
            }],
            size: bytes.len() as u64,
            provenance: Some("test".into()),
            inline_objects: vec![(chunk, bytes.to_vec())],
        }
    }

    /// A file `name` in the root holding `bytes` as chunk `[id; 32]` (inline); the committed node.
    fn small_file(m: &SqliteMeta, name: &[u8], id: u8, bytes: &[u8]) -> Node {
        let f = m.create(ROOT_INO, name, new(NodeKind::File, 0)).unwrap();
        m.commit_content(f.ino, &small_content(id, bytes), None)
            .unwrap()
    }

    fn inline_object_count(m: &SqliteMeta) -> i64 {
        lock(&m.conn)
            .query_row("SELECT COUNT(*) FROM inline_objects", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn gc_deletes_only_chunks_no_extent_names() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(&dir.path().join("meta.db"), 0, 0).unwrap();
        small_file(&m, b"a", 1, b"kept");
        let b = small_file(&m, b"b", 2, b"replaced");
        m.commit_content(b.ino, &small_content(3, b"current"), None)
            .unwrap();
        // A wrong refcount must not cost a chunk that an extent still names.
        lock(&m.conn)
            .execute(
                "UPDATE chunks SET refcount = 0 WHERE id = ?1",
                [vec![1u8; 32]],
            )
            .unwrap();
        let deleted = m.delete_unreferenced_chunks().unwrap();
        assert_eq!(
            deleted.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![ChunkId([2; 32])]
        );
        let ids: Vec<ChunkId> = m.chunk_rows().unwrap().into_iter().map(|r| r.id).collect();
        assert!(ids.contains(&ChunkId([1; 32])) && ids.contains(&ChunkId([3; 32])));
        assert!(!ids.contains(&ChunkId([2; 32])));
        assert_eq!(
            inline_object_count(&m),
            2,
            "the deleted chunk's inline object stayed"
        );
        assert!(m.delete_unreferenced_chunks().unwrap().is_empty());
    }

    #[test]
    fn records_of_a_later_group_carry_its_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (m, other) = two_connections(&dir);
        m.set_durable_commits(false).unwrap();
        m.create(ROOT_INO, b"a", new(NodeKind::File, 0)).unwrap();
        m.commit_deferred().unwrap();
        // The generation read for the first group's record is not reused for the second's
        // (the commit started a new one): a stale record would be dropped, not re-applied.
        m.create(ROOT_INO, b"b", new(NodeKind::File, 0)).unwrap();
        m.create(ROOT_INO, b"c", new(NodeKind::File, 0)).unwrap();
        m.abandon();
        other.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        for name in [&b"a"[..], b"b", b"c"] {
            assert!(other.lookup(ROOT_INO, name).unwrap().is_some());
        }
    }

    #[test]
    fn a_killed_mounts_grouped_changes_are_reapplied_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (m, other) = two_connections(&dir);
        m.set_durable_commits(false).unwrap();
        let f = small_file(&m, b"f", 1, b"hello");
        let g = m.create(ROOT_INO, b"g", new(NodeKind::File, 0)).unwrap();
        m.commit_content(f.ino, &small_content(2, b"hello, world"), Some(f.version))
            .unwrap();
        let attr = SetAttr {
            mode: Some(0o600),
            mtime: Some(12345),
            ..Default::default()
        };
        let f2 = m.set_attr(f.ino, &attr).unwrap();
        assert_eq!((f2.mode, f2.mtime), (0o600, 12345));
        assert!(
            other.lookup(ROOT_INO, b"f").unwrap().is_none(),
            "grouped: nothing committed yet"
        );
        m.abandon();
        assert!(
            other.lookup(ROOT_INO, b"f").unwrap().is_none(),
            "the dead process's transaction is gone"
        );

        // The next write of any process applies the records first.
        other.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        assert_eq!(other.lookup(ROOT_INO, b"f").unwrap().as_ref(), Some(&f2));
        assert_eq!(other.lookup(ROOT_INO, b"g").unwrap().as_ref(), Some(&g));
        let extents = other.extents_from(f.ino, 0, 10).unwrap();
        assert_eq!(extents.len(), 1);
        assert_eq!(extents[0].chunk, ChunkId([2; 32]));
        assert!(other.has_chunk(&ChunkId([2; 32])).unwrap());
        assert!(other.check().unwrap().is_empty(), "consistent after replay");
        let d = other.lookup(ROOT_INO, b"d").unwrap().unwrap();
        assert!(
            d.ino > g.ino,
            "new nodes never take a replayed node's number"
        );

        // Applied once: a third connection finds nothing left to apply.
        let log = dir.path().join("meta.db-redo");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "log emptied");
        drop(other);
        let third = SqliteMeta::open(&dir.path().join("meta.db"), 0, 0).unwrap();
        assert_eq!(
            third.lookup(ROOT_INO, b"f").unwrap().unwrap().version,
            f2.version
        );
    }

    #[test]
    fn records_already_committed_are_never_reapplied() {
        let dir = tempfile::tempdir().unwrap();
        let (m, other) = two_connections(&dir);
        m.set_durable_commits(false).unwrap();
        small_file(&m, b"f", 1, b"one");
        let log = dir.path().join("meta.db-redo");
        let records = std::fs::read(&log).unwrap();
        assert!(!records.is_empty(), "grouped changes are in the log");
        m.commit_deferred().unwrap();
        m.unlink(ROOT_INO, b"f").unwrap();
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            0,
            "the next writer empties the log of committed records"
        );

        // As if the process died between its commit and emptying the log.
        std::fs::write(&log, &records).unwrap();
        other.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        assert!(
            other.lookup(ROOT_INO, b"f").unwrap().is_none(),
            "the committed (then unlinked) file does not come back"
        );
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert!(other.check().unwrap().is_empty());
    }

    /// A store with two connections, the first committing as a mount does (relaxed).
    fn relaxed_pair() -> (tempfile::TempDir, SqliteMeta, SqliteMeta) {
        let dir = tempfile::tempdir().unwrap();
        let (m, other) = two_connections(&dir);
        m.set_durable_commits(false).unwrap();
        (dir, m, other)
    }

    fn log_len(dir: &tempfile::TempDir) -> u64 {
        std::fs::metadata(dir.path().join("meta.db-redo"))
            .unwrap()
            .len()
    }

    fn kept_copies(dir: &tempfile::TempDir) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("meta.db-redo.failed-")
            })
            .collect()
    }

    #[test]
    fn a_committed_groups_records_stay_until_a_writer_holding_the_lock_empties_the_log() {
        // Emptying the log right after COMMIT (without the write lock) could wipe records
        // another mount appended in between; only a writer inside its transaction empties it.
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = two_connections(&dir);
        a.set_durable_commits(false).unwrap();
        b.set_durable_commits(false).unwrap();
        a.create(ROOT_INO, b"from-a", new(NodeKind::File, 0))
            .unwrap();
        a.commit_deferred().unwrap();
        assert!(log_len(&dir) > 0, "a's committed records are left");
        b.create(ROOT_INO, b"from-b", new(NodeKind::File, 0))
            .unwrap();
        let after_b = log_len(&dir);
        a.commit_deferred().unwrap();
        assert_eq!(
            log_len(&dir),
            after_b,
            "nothing open in a: the log is untouched"
        );
        b.abandon();
        // b died before its group committed: the next writer re-applies its record.
        a.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        assert!(a.lookup(ROOT_INO, b"from-b").unwrap().is_some());
        assert!(a.lookup(ROOT_INO, b"from-a").unwrap().is_some());
        assert!(a.check().unwrap().is_empty());
    }

    /// A mount's group (file "f" with content) whose commit fails; returns f.
    fn group_whose_commit_failed(m: &SqliteMeta) -> Node {
        let f = small_file(m, b"f", 1, b"kept");
        // The trigger is part of the transaction whose commit it fails, and goes with it.
        m.read(|c| {
            c.execute_batch(
                "CREATE TEMP TRIGGER fail_ins BEFORE INSERT ON meta WHEN NEW.key='redo_gen'
                   BEGIN SELECT RAISE(ABORT, 'injected commit failure'); END;
                 CREATE TEMP TRIGGER fail_upd BEFORE UPDATE ON meta WHEN NEW.key='redo_gen'
                   BEGIN SELECT RAISE(ABORT, 'injected commit failure'); END;",
            )?;
            Ok(())
        })
        .unwrap();
        let e = m.commit_deferred().unwrap_err();
        assert!(e.to_string().contains("injected"), "{e}");
        f
    }

    #[test]
    fn a_group_whose_commit_fails_is_reapplied_before_sync_reports_success() {
        let (_dir, m, other) = relaxed_pair();
        let f = group_whose_commit_failed(&m);
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_none());
        m.sync().unwrap();
        let seen = other.lookup(ROOT_INO, b"f").unwrap().unwrap();
        assert_eq!((seen.ino, seen.size, seen.version), (f.ino, 4, f.version));
        assert_eq!(
            other.extents_from(f.ino, 0, 10).unwrap()[0].chunk,
            ChunkId([1; 32])
        );
        assert!(other.check().unwrap().is_empty());
    }

    #[test]
    fn the_connection_that_lost_a_group_reads_it_back_at_once() {
        let (_dir, m, other) = relaxed_pair();
        let f = group_whose_commit_failed(&m);
        let seen = m.lookup(ROOT_INO, b"f").unwrap().unwrap();
        assert_eq!((seen.ino, seen.size), (f.ino, 4));
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_some());
    }

    #[test]
    fn a_group_rolled_back_under_a_read_is_noticed_and_reapplied() {
        let (_dir, m, other) = relaxed_pair();
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        // As SQLite does after an I/O error in any statement: the whole transaction goes.
        m.read(|c| {
            c.execute_batch("ROLLBACK")?;
            Ok(())
        })
        .unwrap();
        assert!(m.needs_replay.load(Ordering::Relaxed));
        m.sync().unwrap();
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_some());
    }

    #[test]
    fn a_replay_inside_a_later_write_is_synced_by_the_next_sync() {
        let (_dir, m, _other) = relaxed_pair();
        m.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        m.sync().unwrap();
        group_whose_commit_failed(&m);
        assert!(!m.unsynced.load(Ordering::Relaxed));
        // A change that fails after its transaction re-applied (and committed) the group.
        m.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap_err();
        assert!(
            m.unsynced.load(Ordering::Relaxed),
            "the replay's relaxed commit is left for sync to flush"
        );
    }

    #[test]
    fn records_of_a_node_whose_creation_was_rejected_are_not_applied_to_another() {
        let (dir, m, other) = relaxed_pair();
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        m.abandon();
        let x = {
            // A node that holds the number a record names (as a build without the log, or
            // a lost history, could leave).
            let c = Connection::open(dir.path().join("meta.db")).unwrap();
            let max: i64 = c
                .query_row("SELECT MAX(ino) FROM nodes", [], |r| r.get(0))
                .unwrap();
            drop(c);
            max as u64 + 100
        };
        let generation = other.read(|c| Ok(redo_generation(c)?)).unwrap();
        let mut redo = lock(&other.redo);
        let created = |name: &[u8], ino| RedoRecord {
            generation,
            op: RedoOp::Create {
                parent: ROOT_INO,
                name: name.to_vec(),
                ino,
                uuid: Uuid::new_v4(),
                t: 1,
                node: new(NodeKind::File, 0),
            },
        };
        redo.append(&created(b"x", x)).unwrap();
        redo.append(&created(b"y", x)).unwrap();
        redo.append(&RedoRecord {
            generation,
            op: RedoOp::SetAttr {
                ino: x,
                t: 2,
                attr: SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
            },
        })
        .unwrap();
        drop(redo);
        // x's record applies; y's is rejected (its ino is x's now); y's attributes, recorded
        // for the node y would have been, must not land on x.
        other.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        assert_eq!(other.lookup(ROOT_INO, b"x").unwrap().unwrap().ino, x);
        assert!(other.lookup(ROOT_INO, b"y").unwrap().is_none());
        assert_eq!(other.get(x).unwrap().unwrap().mode, 0o640);
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_some());
        assert_eq!(kept_copies(&dir).len(), 1);
    }

    #[test]
    fn a_newer_schema_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let (m, other) = two_connections(&dir);
        m.set_durable_commits(false).unwrap();
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        m.abandon();
        other
            .read(|c| {
                c.execute_batch("UPDATE meta SET value='4' WHERE key='schema_version'")?;
                Ok(())
            })
            .unwrap();
        drop(other);
        let log = std::fs::read(dir.path().join("meta.db-redo")).unwrap();
        assert!(!log.is_empty());
        let e = SqliteMeta::open(&path, 0, 0).err().unwrap();
        assert!(e.to_string().contains("schema version 4"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("meta.db-redo")).unwrap(), log);
        let c = Connection::open(&path).unwrap();
        let f: i64 = c
            .query_row("SELECT COUNT(*) FROM dentries WHERE name=x'66'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(f, 0, "the log was not replayed");
    }

    #[test]
    fn a_schema_1_store_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        drop(SqliteMeta::open(&path, 0, 0).unwrap());
        let c = Connection::open(&path).unwrap();
        c.execute_batch("UPDATE meta SET value='1' WHERE key='schema_version'")
            .unwrap();
        drop(c);
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        let v: String = m
            .read(|c| {
                Ok(c.query_row(
                    "SELECT value FROM meta WHERE key='schema_version'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(v, "3");
    }

    #[test]
    fn a_schema_2_store_reaches_its_inline_objects_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let old = ChunkId([5; 32]);
        {
            // As schema 2 wrote it: inline objects keyed by id, no `chunks.inline_ref`.
            let c = Connection::open(&path).unwrap();
            let schema2 = SCHEMA
                .replace("head BLOB,\n    inline_ref INTEGER", "head BLOB")
                .replace(
                    "id BLOB NOT NULL,\n    object BLOB NOT NULL",
                    "id BLOB PRIMARY KEY,\n    object BLOB NOT NULL",
                );
            assert_ne!(schema2, SCHEMA);
            c.execute_batch(&schema2).unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema_version', '2');
                 INSERT INTO nodes (ino, uuid, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, version)
                 VALUES (1, x'00112233445566778899aabbccddeeff', 2, 493, 0, 0, 0, 1, 1, 1, 2, 0),
                        (2, x'00112233445566778899aabbccddee00', 1, 420, 0, 0, 3, 1, 1, 1, 1, 1);
                 INSERT INTO dentries VALUES (1, x'6f6c64', 2);
                 INSERT INTO inline_objects (id, object) VALUES (zeroblob(0), x'00'), (x'0505050505050505050505050505050505050505050505050505050505050505', x'6f6c64');
                 INSERT INTO chunks (id, refcount, plain_len, stored_len) VALUES (x'0505050505050505050505050505050505050505050505050505050505050505', 1, 3, 3);
                 INSERT INTO extents VALUES (2, 0, 3, x'0505050505050505050505050505050505050505050505050505050505050505');",
            )
            .unwrap();
        }
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        let loc = m.chunk_location(&old).unwrap().unwrap();
        assert_eq!(loc.inline.as_deref(), Some(&b"old"[..]));
        let located = m.extents_located_from(2, 0, 10).unwrap();
        assert_eq!(
            located[0].1.as_ref().unwrap().inline.as_deref(),
            Some(&b"old"[..])
        );
        // New content dedups against the old object and stores a new one by reference.
        let f = m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        let mut c = small_content(5, b"old");
        c.inline_objects
            .push((ChunkId([6; 32]), b"unused".to_vec()));
        m.commit_content(f.ino, &c, None).unwrap();
        small_file(&m, b"g", 7, b"new");
        // An object row that no chunk names (damage) under the old key does not block a
        // commit of that chunk: it is replaced.
        lock(&m.conn)
            .execute(
                "INSERT INTO inline_objects (id, object) VALUES (?1, x'00')",
                [vec![8u8; 32]],
            )
            .unwrap();
        small_file(&m, b"h", 8, b"stray");
        let loc = m.chunk_location(&ChunkId([8; 32])).unwrap().unwrap();
        assert_eq!(loc.inline.as_deref(), Some(&b"stray"[..]));
        let loc = m.chunk_location(&ChunkId([7; 32])).unwrap().unwrap();
        assert_eq!(loc.inline.as_deref(), Some(&b"new"[..]));
        // The stray empty-id row, the old object, [6; 32] (listed, not a chunk: harmless),
        // [7; 32] and [8; 32] (the damaged row replaced): nothing stored twice.
        assert_eq!(inline_object_count(&m), 5);
        assert!(m.check().unwrap().is_empty());
        drop(m);
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        assert_eq!(
            m.chunk_location(&old).unwrap().unwrap().inline.as_deref(),
            Some(&b"old"[..])
        );
    }

    #[test]
    fn an_inline_object_is_stored_once_per_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(&dir.path().join("meta.db"), 0, 0).unwrap();
        for name in [&b"a"[..], b"b"] {
            let f = m.create(ROOT_INO, name, new(NodeKind::File, 0)).unwrap();
            let mut c = small_content(1, b"same");
            // The same chunk twice in one content (a repeated block).
            c.chunks.push(ContentChunk {
                extent: Extent {
                    offset: 4,
                    ..c.chunks[0].extent
                },
                ..c.chunks[0]
            });
            c.size = 8;
            c.inline_objects.push(c.inline_objects[0].clone());
            m.commit_content(f.ino, &c, None).unwrap();
        }
        let (objects, refcount): (i64, i64) = lock(&m.conn)
            .query_row(
                "SELECT (SELECT COUNT(*) FROM inline_objects), refcount FROM chunks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((objects, refcount), (1, 4));
        let loc = m.chunk_location(&ChunkId([1; 32])).unwrap().unwrap();
        assert_eq!(loc.inline.as_deref(), Some(&b"same"[..]));
        // gc removes the object with its chunk once nothing names it.
        m.unlink(ROOT_INO, b"a").unwrap();
        m.unlink(ROOT_INO, b"b").unwrap();
        let gone = m.delete_unreferenced_chunks().unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(inline_object_count(&m), 0);
    }

    #[test]
    fn a_log_that_cannot_be_read_stops_writes_and_is_kept() {
        let (dir, m, other) = relaxed_pair();
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        m.abandon();
        // A record of a kind this build does not know follows f's.
        let mut body = other
            .read(|c| Ok(redo_generation(c)?))
            .unwrap()
            .to_le_bytes()
            .to_vec();
        body.extend_from_slice(&[200, 0, 0]);
        let frame = super::super::redo::frame_of(&body);
        let log = dir.path().join("meta.db-redo");
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&frame);
        std::fs::write(&log, &bytes).unwrap();
        let e = other
            .create(ROOT_INO, b"d", new(NodeKind::Dir, 0))
            .unwrap_err();
        assert!(e.to_string().contains("does not know"), "{e}");
        assert_eq!(
            std::fs::read(&log).unwrap(),
            bytes,
            "the log is kept as it is"
        );
        assert!(other.lookup(ROOT_INO, b"d").unwrap().is_none());
    }

    #[test]
    fn records_before_damage_are_applied_and_the_log_is_kept_aside() {
        let (dir, m, other) = relaxed_pair();
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        let log = dir.path().join("meta.db-redo");
        let first = log_len(&dir) as usize;
        m.create(ROOT_INO, b"g", new(NodeKind::File, 0)).unwrap();
        m.create(ROOT_INO, b"h", new(NodeKind::File, 0)).unwrap();
        m.abandon();
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[first + 20] ^= 0x40; // inside g's record, with h's after it
        std::fs::write(&log, &bytes).unwrap();
        other.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_some());
        assert!(other.lookup(ROOT_INO, b"g").unwrap().is_none());
        assert_eq!(
            kept_copies(&dir).len(),
            1,
            "a copy of the damaged log is kept"
        );
        assert_eq!(std::fs::read(&kept_copies(&dir)[0]).unwrap(), bytes);
        assert_eq!(log_len(&dir), 0);
        other.create(ROOT_INO, b"e", new(NodeKind::Dir, 0)).unwrap();
        assert_eq!(kept_copies(&dir).len(), 1, "kept once");
    }

    #[test]
    fn a_record_that_cannot_be_applied_is_set_aside_and_the_ones_after_it_apply() {
        let (dir, m, other) = relaxed_pair();
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        m.abandon();
        let generation = other.read(|c| Ok(redo_generation(c)?)).unwrap();
        let mut redo = lock(&other.redo);
        redo.append(&RedoRecord {
            generation,
            op: RedoOp::Content {
                ino: 999,
                t: 0,
                expect_version: None,
                content: small_content(1, b"x"),
            },
        })
        .unwrap();
        redo.append(&RedoRecord {
            generation,
            op: RedoOp::Create {
                parent: ROOT_INO,
                name: b"g".to_vec(),
                ino: 5000,
                uuid: Uuid::new_v4(),
                t: 1,
                node: new(NodeKind::File, 0),
            },
        })
        .unwrap();
        drop(redo);
        other.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_some());
        assert_eq!(other.lookup(ROOT_INO, b"g").unwrap().unwrap().ino, 5000);
        assert!(
            other.lookup(ROOT_INO, b"d").unwrap().is_some(),
            "writes go on"
        );
        assert_eq!(kept_copies(&dir).len(), 1, "the log is kept for inspection");
        assert!(lock(&other.redo).is_empty().unwrap());
        assert!(other.check().unwrap().is_empty());
    }

    #[test]
    fn a_clean_close_leaves_the_log_empty() {
        let (dir, m, _other) = relaxed_pair();
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        m.commit_deferred().unwrap();
        assert!(
            log_len(&dir) > 0,
            "committed records stay until a writer empties the log"
        );
        drop(m);
        assert_eq!(log_len(&dir), 0);
    }

    #[test]
    fn durable_commits_write_no_records() {
        let dir = tempfile::tempdir().unwrap();
        let (m, other) = two_connections(&dir);
        small_file(&m, b"f", 1, b"one");
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_some());
        assert_eq!(
            std::fs::metadata(dir.path().join("meta.db-redo"))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn checkpoint_copies_the_log_without_the_writers_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        m.set_durable_commits(false).unwrap();
        for i in 0..300 {
            m.create(ROOT_INO, format!("f{i}").as_bytes(), new(NodeKind::File, 0))
                .unwrap();
        }
        m.commit_deferred().unwrap();
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let before = db_len();
        // With the writer's connection held (a request in the middle of a commit), the
        // checkpoint still copies the committed pages into the database file.
        let held = lock(&m.conn);
        m.checkpoint().unwrap();
        drop(held);
        assert!(
            db_len() > before,
            "the database file did not grow ({before} bytes): nothing was copied"
        );
        // Without checkpoints inside commits, relaxed commits leave the log to it.
        let auto: i64 = lock(&m.conn)
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto, WAL_CHECKPOINT_PAGES_RELAXED);
    }

    #[test]
    fn the_log_is_truncated_when_it_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        let (limit, cache): (i64, i64) = {
            let c = lock(&m.conn);
            (
                c.query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
                    .unwrap(),
                c.query_row("PRAGMA cache_size", [], |r| r.get(0)).unwrap(),
            )
        };
        assert_eq!((limit, cache), (0, -32768));
        // Durable commits checkpoint every ~4 MiB of log, and each time it starts over the
        // file is cut back: it never holds more than one checkpoint's worth.
        let wal = dir.path().join("meta.db-wal");
        let mut largest = 0;
        for i in 0..3000 {
            m.create(
                ROOT_INO,
                format!("file {i:04}").as_bytes(),
                new(NodeKind::File, 0),
            )
            .unwrap();
            largest = largest.max(std::fs::metadata(&wal).map(|x| x.len()).unwrap_or(0));
        }
        let now = std::fs::metadata(&wal).unwrap().len();
        assert!(
            now < largest,
            "the log never got shorter ({now} bytes, at most {largest})"
        );
    }

    #[test]
    fn a_long_log_starts_over_at_a_checkpoint_with_the_open_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let mut m = SqliteMeta::open(&path, 0, 0).unwrap();
        m.restart_frames = 64;
        m.set_durable_commits(false).unwrap();
        let wal = dir.path().join("meta.db-wal");
        let wal_len = || std::fs::metadata(&wal).unwrap().len();
        for i in 0..400 {
            m.create(ROOT_INO, format!("f{i}").as_bytes(), new(NodeKind::File, 0))
                .unwrap();
            if i % 20 == 19 {
                m.commit_deferred().unwrap();
            }
        }
        // Left open: the restart must commit it, not lose it.
        m.create(ROOT_INO, b"last", new(NodeKind::File, 0)).unwrap();
        assert!(wal_len() > 64 * 4096, "only {} bytes of log", wal_len());
        m.checkpoint().unwrap();
        assert_eq!(wal_len(), 0, "the log did not start over");
        assert!(
            lock(&m.conn).is_autocommit(),
            "the open group was not committed"
        );
        let other = SqliteMeta::open(&path, 0, 0).unwrap();
        assert!(other.lookup(ROOT_INO, b"last").unwrap().is_some());
        assert!(other.lookup(ROOT_INO, b"f399").unwrap().is_some());
        // Below the threshold a checkpoint only copies.
        m.create(ROOT_INO, b"again", new(NodeKind::File, 0))
            .unwrap();
        m.commit_deferred().unwrap();
        let before = wal_len();
        m.checkpoint().unwrap();
        assert_eq!(wal_len(), before);
    }

    #[test]
    fn new_nodes_get_time_ordered_uuids() {
        let dir = tempfile::tempdir().unwrap();
        let m = SqliteMeta::open(&dir.path().join("meta.db"), 0, 0).unwrap();
        let a = m.create(ROOT_INO, b"a", new(NodeKind::File, 0)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = m.create(ROOT_INO, b"b", new(NodeKind::Dir, 0)).unwrap();
        assert_eq!(a.uuid.get_version_num(), 7);
        assert_eq!(b.uuid.get_version_num(), 7);
        assert!(a.uuid < b.uuid, "{} then {}", a.uuid, b.uuid);
    }

    #[test]
    fn the_extents_by_chunk_index_of_older_stores_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        drop(SqliteMeta::open(&path, 0, 0).unwrap());
        let index_exists = || -> bool {
            Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name='extents_by_chunk'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                > 0
        };
        assert!(!index_exists());
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE INDEX extents_by_chunk ON extents(chunk)")
            .unwrap();
        assert!(index_exists());
        drop(SqliteMeta::open(&path, 0, 0).unwrap());
        assert!(!index_exists());
    }

    #[test]
    fn durable_commits_never_defer() {
        let dir = tempfile::tempdir().unwrap();
        let (m, other) = two_connections(&dir);
        m.create(ROOT_INO, b"f", new(NodeKind::File, 0)).unwrap();
        assert!(other.lookup(ROOT_INO, b"f").unwrap().is_some());
    }

    #[test]
    fn special_nodes_round_trip_with_rdev() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let dev = libc::makedev(8, 0x12345);
        {
            let m = SqliteMeta::open(&path, 0, 0).unwrap();
            let b = m
                .create(ROOT_INO, b"blk", new(NodeKind::BlockDevice, dev))
                .unwrap();
            assert_eq!(
                (b.kind, b.rdev, b.size, b.nlink),
                (NodeKind::BlockDevice, dev, 0, 1)
            );
            let c = m
                .create(
                    ROOT_INO,
                    b"chr",
                    new(NodeKind::CharDevice, libc::makedev(1, 3)),
                )
                .unwrap();
            assert_eq!(c.rdev, libc::makedev(1, 3));
            // A device number given for a non-device is not kept.
            let f = m
                .create(ROOT_INO, b"fifo", new(NodeKind::Fifo, 99))
                .unwrap();
            assert_eq!((f.kind, f.rdev), (NodeKind::Fifo, 0));
            m.create(ROOT_INO, b"sock", new(NodeKind::Socket, 0))
                .unwrap();
            // Hard links, rename (replacing another special file), unlink.
            m.create(ROOT_INO, b"d", new(NodeKind::Dir, 0)).unwrap();
            let d = m.lookup(ROOT_INO, b"d").unwrap().unwrap();
            let l = m.link(b.ino, d.ino, b"blk2").unwrap();
            assert_eq!((l.nlink, l.rdev), (2, dev));
            m.rename(ROOT_INO, b"sock", ROOT_INO, b"fifo", false)
                .unwrap();
            assert_eq!(
                m.lookup(ROOT_INO, b"fifo").unwrap().unwrap().kind,
                NodeKind::Socket
            );
            assert!(m.get(f.ino).unwrap().is_none());
            m.unlink(ROOT_INO, b"blk").unwrap();
            assert_eq!(m.get(b.ino).unwrap().unwrap().nlink, 1);
            let s = m.set_attr(
                c.ino,
                &SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
            );
            assert_eq!(s.unwrap().rdev, libc::makedev(1, 3));
            assert!(m.check().unwrap().is_empty());
        }
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        let list = m.list(ROOT_INO).unwrap();
        let kinds: Vec<_> = list
            .iter()
            .map(|(n, x)| (n.clone(), x.kind, x.rdev))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (b"chr".to_vec(), NodeKind::CharDevice, libc::makedev(1, 3)),
                (b"d".to_vec(), NodeKind::Dir, 0),
                (b"fifo".to_vec(), NodeKind::Socket, 0),
            ]
        );
        let d = m.lookup(ROOT_INO, b"d").unwrap().unwrap();
        let b = m.lookup(d.ino, b"blk2").unwrap().unwrap();
        assert_eq!((b.kind, b.rdev, b.nlink), (NodeKind::BlockDevice, dev, 1));
        assert!(m.check().unwrap().is_empty());
    }

    #[test]
    fn old_database_gains_the_rdev_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            // A database as the first release of schema 1 wrote it (no `rdev`).
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&SCHEMA.replace(",\n    rdev INTEGER NOT NULL DEFAULT 0", ""))
                .unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema_version', '1');
                 INSERT INTO nodes (ino, uuid, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, version)
                 VALUES (1, x'00112233445566778899aabbccddeeff', 2, 493, 0, 0, 0, 1, 1, 1, 2, 0);",
            )
            .unwrap();
            let cols: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('nodes') WHERE name='rdev'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(cols, 0);
        }
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        assert_eq!(m.get(ROOT_INO).unwrap().unwrap().rdev, 0);
        let n = m
            .create(
                ROOT_INO,
                b"null",
                new(NodeKind::CharDevice, libc::makedev(1, 3)),
            )
            .unwrap();
        assert_eq!(m.get(n.ino).unwrap().unwrap().rdev, libc::makedev(1, 3));
        drop(m);
        // Opening again does not try to add it twice.
        let m = SqliteMeta::open(&path, 0, 0).unwrap();
        assert!(m.check().unwrap().is_empty());
    }
}
