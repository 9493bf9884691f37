//! The metadata redo log (`meta.db-redo`, docs/FORMAT.md 5.3): what lets a mount commit many
//! closes in one SQLite transaction and still keep each close's data safe from `kill -9`.
//!
//! A relaxed (mounted) connection leaves its transaction open across file creations and
//! content commits and appends one record per change here (one `write`), instead of
//! committing each: a commit rewrites every B-tree page the change touched, ~13 log frames per
//! small file. Records are appended only while the writer holds SQLite's write lock, so one
//! log serves every process. A commit bumps the generation in `meta` (`redo_gen`) and then
//! empties the log; a writer that begins a transaction and finds records left (their process
//! died holding the lock, or its commit failed) applies those of the current generation first.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::meta::{
    Content, ContentChunk, Extent, Ino, NewNode, NodeKind, ObjectHead, SetAttr, TimeNs,
};
use super::{ChunkId, PackLoc};

/// Bytes before each record's body: its length (u32 LE) and the first 8 bytes of its SHA-256.
const FRAME: usize = 12;

/// A change a relaxed connection made without committing it.
#[derive(Debug, Clone, PartialEq)]
pub enum RedoOp {
    /// A node created as `name` in `parent`, with the ino, uuid and time it got.
    Create {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
        uuid: Uuid,
        t: TimeNs,
        node: NewNode,
    },
    /// New content of file `ino`, committed at time `t`.
    Content {
        ino: Ino,
        t: TimeNs,
        expect_version: Option<u64>,
        content: Content,
    },
    /// Attributes of `ino` changed at time `t` (chmod, chown, utimens).
    SetAttr { ino: Ino, t: TimeNs, attr: SetAttr },
}

const OP_CREATE: u8 = 1;
const OP_CONTENT: u8 = 2;
const OP_SET_ATTR: u8 = 3;

/// One record: a change and the generation of the committed state it was made on.
#[derive(Debug, Clone, PartialEq)]
pub struct RedoRecord {
    pub generation: u64,
    pub op: RedoOp,
}

/// The log file, opened by every connection (writers check it at each transaction start).
pub struct RedoLog {
    file: File,
    path: PathBuf,
    /// Records were appended since the last truncation.
    dirty: bool,
    /// A failed append could not be cut off again: appending after its remains would hide
    /// the later records behind damage, so no more appends until the log is emptied.
    broken: bool,
}

/// What [`RedoLog::read_all`] found after the last whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The log ends with a whole record (or is empty).
    Clean,
    /// The last frame is cut short or unreadable to the end of the file, or the rest is
    /// zeros: appends that power loss kept only in part. Nothing after it was ever a record.
    Torn,
    /// An unreadable frame at this byte with other bytes after it: damage, not a torn append;
    /// what follows cannot be read (the caller keeps a copy of the log).
    Damaged { at: u64 },
}

/// Every whole record of the log, in order, and how it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub records: Vec<RedoRecord>,
    pub tail: Tail,
}

impl RedoLog {
    /// Opens (creating) the log beside the database at `db`.
    pub fn open(db: &Path) -> io::Result<RedoLog> {
        let path = suffixed(db, "-redo");
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        Ok(RedoLog {
            file,
            path,
            dirty: false,
            broken: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the log holds anything (one `fstat`).
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.file.metadata()?.len() == 0)
    }

    /// Appends one record with a single `write` (O_APPEND), so a killed process leaves whole
    /// records; the checksum catches a torn one after power loss. Returns the log's length
    /// before the record, for [`RedoLog::cut_to`] if the change it records is undone. A
    /// failed or short write is cut off again, so a later record never follows a broken one.
    /// Callers hold SQLite's write lock (no other process appends or empties meanwhile).
    pub fn append(&mut self, rec: &RedoRecord) -> io::Result<u64> {
        if self.broken {
            return Err(io::Error::other(format!(
                "{} holds the remains of a failed append; no more records until it is emptied",
                self.path.display()
            )));
        }
        let mut body = Vec::with_capacity(128);
        encode(rec, &mut body);
        let frame = frame_of(&body);
        let before = self.file.metadata()?.len();
        let failure = match write_once(&self.file, &frame) {
            Ok(n) if n == frame.len() => None,
            Ok(n) => Some(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short write to {} ({n} of {} bytes)",
                    self.path.display(),
                    frame.len()
                ),
            )),
            Err(e) => Some(e),
        };
        match failure {
            None => {
                self.dirty = true;
                Ok(before)
            }
            Some(e) => {
                if let Err(cut) = self.cut_to(before) {
                    log::error!("cutting a failed append off {}: {cut}", self.path.display());
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Cuts the log back to `len` bytes (what [`RedoLog::append`] returned): the record
    /// after it is of a change that was undone.
    pub fn cut_to(&mut self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() < len {
            return Err(io::Error::other(format!(
                "{} is shorter than the length to cut it to ({len}): emptied meanwhile?",
                self.path.display()
            )));
        }
        self.file.set_len(len)
    }

    /// Empties the log: every record in it is of an older generation (a writer checks that
    /// while holding SQLite's write lock, so no process can be appending).
    pub fn truncate(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.dirty = false;
        self.broken = false;
        Ok(())
    }

    /// Records were appended since the last truncation (by this connection).
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// The log was found empty (perhaps emptied by another process): appends may go on.
    pub fn emptied(&mut self) {
        self.dirty = false;
        self.broken = false;
    }

    /// No more appends until the log is emptied (emptying it failed).
    pub fn refuse_appends(&mut self) {
        self.broken = true;
    }

    /// The generation of the first record, read from its first bytes alone (`None` if the
    /// log is shorter than that). The caller knows every record is of one generation.
    pub fn first_generation(&self) -> io::Result<Option<u64>> {
        let mut head = [0u8; FRAME + 8];
        match self.file.read_exact_at(&mut head, 0) {
            Ok(()) => Ok(Some(u64::from_le_bytes(
                head[FRAME..].try_into().expect("8 bytes"),
            ))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every whole record in the log, and how it ends. A record of a kind this build does
    /// not know (written by a newer one) is an error: skipping it could apply later records
    /// out of order, and treating it as a torn tail would drop them.
    pub fn read_all(&self) -> io::Result<Scan> {
        let len = self.file.metadata()?.len() as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, 0)?;
        let mut records = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let rest = &buf[at..];
            let Some((body, n)) = frame_at(rest) else {
                let tail = if torn(rest) {
                    Tail::Torn
                } else {
                    Tail::Damaged { at: at as u64 }
                };
                return Ok(Scan { records, tail });
            };
            match decode(body) {
                Some(rec) => records.push(rec),
                None => {
                    if let Some(kind) = body
                        .get(8)
                        .filter(|k| !(OP_CREATE..=OP_SET_ATTR).contains(k))
                    {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{}: the record at byte {at} is of kind {kind}, which this build \
                                 does not know (written by a newer SPACE?)",
                                self.path.display()
                            ),
                        ));
                    }
                    let tail = Tail::Damaged { at: at as u64 };
                    return Ok(Scan { records, tail });
                }
            }
            at += n;
        }
        Ok(Scan {
            records,
            tail: Tail::Clean,
        })
    }
}

/// Whether `rest`, which does not start with an intact frame, is what an append cut short by
/// power loss leaves: a frame reaching (by its own length) to the end of the file, or zeros.
fn torn(rest: &[u8]) -> bool {
    let reaches_end = rest
        .get(..4)
        .map(|l| FRAME as u64 + u32::from_le_bytes(l.try_into().expect("4 bytes")) as u64)
        .is_none_or(|end| end >= rest.len() as u64);
    reaches_end || rest.iter().all(|b| *b == 0)
}

/// `path` with `suffix` added to its file name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Where a copy of the log is set aside before records are given up (docs/FORMAT.md 5.3).
pub fn set_aside_path(log: &Path, ns: i64) -> PathBuf {
    suffixed(log, &format!(".failed-{ns}"))
}

/// The copies of the log of the database at `db` set aside so far, sorted.
pub fn set_aside_copies(db: &Path) -> io::Result<Vec<PathBuf>> {
    let prefix = suffixed(db, "-redo.failed-");
    let prefix = prefix
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            found.push(e.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A record body framed: its length, the start of its checksum, the body.
pub(super) fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&Sha256::digest(body)[..8]);
    frame.extend_from_slice(body);
    frame
}

/// `write(2)` once (File::write may be retried by callers; a record must be one call).
fn write_once(f: &File, b: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: writes from a live slice to a descriptor we own.
        let n = unsafe { libc::write(f.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The body of the frame at the start of `b` and the frame's length, if whole and intact.
fn frame_at(b: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let body = b.get(FRAME..FRAME.checked_add(len)?)?;
    (Sha256::digest(body)[..8] == b[4..FRAME]).then_some((body, FRAME + len))
}

fn put_u64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(o: &mut Vec<u8>, b: &[u8]) {
    put_u32(o, b.len() as u32);
    o.extend_from_slice(b);
}

fn put_opt_u64(o: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => o.push(0),
        Some(v) => {
            o.push(1);
            put_u64(o, v);
        }
    }
}

fn put_opt_bytes(o: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => o.push(0),
        Some(b) => {
            o.push(1);
            put_bytes(o, b);
        }
    }
}

fn encode(rec: &RedoRecord, o: &mut Vec<u8>) {
    put_u64(o, rec.generation);
    match &rec.op {
        RedoOp::Create {
            parent,
            name,
            ino,
            uuid,
            t,
            node,
        } => {
            o.push(OP_CREATE);
            put_u64(o, *parent);
            put_u64(o, *ino);
            o.extend_from_slice(uuid.as_bytes());
            put_u64(o, *t as u64);
            o.push(node.kind as u8);
            put_u32(o, node.mode);
            put_u32(o, node.uid);
            put_u32(o, node.gid);
            put_u64(o, node.rdev);
            put_bytes(o, name);
            put_opt_bytes(o, node.policy.as_deref().map(str::as_bytes));
            put_opt_bytes(o, node.target.as_deref());
        }
        RedoOp::Content {
            ino,
            t,
            expect_version,
            content,
        } => {
            o.push(OP_CONTENT);
            put_u64(o, *ino);
            put_u64(o, *t as u64);
            put_opt_u64(o, *expect_version);
            put_u64(o, content.size);
            put_opt_bytes(o, content.provenance.as_deref().map(str::as_bytes));
            put_u32(o, content.chunks.len() as u32);
            for c in &content.chunks {
                put_u64(o, c.extent.offset);
                put_u32(o, c.extent.len);
                o.extend_from_slice(&c.extent.chunk.0);
                put_u32(o, c.stored_len);
                match c.loc {
                    None => o.push(0),
                    Some(l) => {
                        o.push(1);
                        put_u64(o, l.pack);
                        put_u64(o, l.offset);
                    }
                }
                put_opt_bytes(o, c.head.as_ref().map(ObjectHead::as_slice));
            }
            put_u32(o, content.inline_objects.len() as u32);
            for (id, object) in &content.inline_objects {
                o.extend_from_slice(&id.0);
                put_bytes(o, object);
            }
        }
        RedoOp::SetAttr { ino, t, attr } => {
            o.push(OP_SET_ATTR);
            put_u64(o, *ino);
            put_u64(o, *t as u64);
            put_opt_u64(o, attr.mode.map(u64::from));
            put_opt_u64(o, attr.uid.map(u64::from));
            put_opt_u64(o, attr.gid.map(u64::from));
            put_opt_u64(o, attr.atime.map(|v| v as u64));
            put_opt_u64(o, attr.mtime.map(|v| v as u64));
        }
    }
}

/// Reads fields off the front of a record body.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (h, t) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
    fn opt_u64(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }
    fn opt_u32(&mut self) -> Option<Option<u32>> {
        match self.opt_u64()? {
            None => Some(None),
            Some(v) => Some(Some(u32::try_from(v).ok()?)),
        }
    }
    fn opt_bytes(&mut self) -> Option<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?)),
            _ => None,
        }
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.opt_bytes()? {
            None => Some(None),
            Some(b) => Some(Some(String::from_utf8(b).ok()?)),
        }
    }
}

fn decode(body: &[u8]) -> Option<RedoRecord> {
    let mut f = Fields(body);
    let generation = f.u64()?;
    let op = match f.u8()? {
        OP_CREATE => {
            let parent = f.u64()?;
            let ino = f.u64()?;
            let uuid = Uuid::from_bytes(f.array()?);
            let t = f.u64()? as TimeNs;
            let kind = NodeKind::from_i64(f.u8()? as i64)?;
            let (mode, uid, gid) = (f.u32()?, f.u32()?, f.u32()?);
            let rdev = f.u64()?;
            let name = f.bytes()?;
            let policy = f.opt_string()?;
            let target = f.opt_bytes()?;
            RedoOp::Create {
                parent,
                name,
                ino,
                uuid,
                t,
                node: NewNode {
                    kind,
                    mode,
                    uid,
                    gid,
                    policy,
                    target,
                    rdev,
                },
            }
        }
        OP_CONTENT => {
            let ino = f.u64()?;
            let t = f.u64()? as TimeNs;
            let expect_version = f.opt_u64()?;
            let size = f.u64()?;
            let provenance = f.opt_string()?;
            let n = f.u32()? as usize;
            let mut chunks = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let offset = f.u64()?;
                let len = f.u32()?;
                let chunk = ChunkId(f.array()?);
                let stored_len = f.u32()?;
                let loc = match f.u8()? {
                    0 => None,
                    1 => Some(PackLoc {
                        pack: f.u64()?,
                        offset: f.u64()?,
                    }),
                    _ => return None,
                };
                let head = match f.opt_bytes()? {
                    None => None,
                    Some(h) => Some(ObjectHead::new(&h)?),
                };
                chunks.push(ContentChunk {
                    extent: Extent { offset, len, chunk },
                    stored_len,
                    loc,
                    head,
                });
            }
            let n = f.u32()? as usize;
            let mut inline_objects = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                inline_objects.push((ChunkId(f.array()?), f.bytes()?));
            }
            RedoOp::Content {
                ino,
                t,
                expect_version,
                content: Content {
                    chunks,
                    size,
                    provenance,
                    inline_objects,
                },
            }
        }
        OP_SET_ATTR => RedoOp::SetAttr {
            ino: f.u64()?,
            t: f.u64()? as TimeNs,
            attr: SetAttr {
                mode: f.opt_u32()?,
                uid: f.opt_u32()?,
                gid: f.opt_u32()?,
                atime: f.opt_u64()?.map(|v| v as TimeNs),
                mtime: f.opt_u64()?.map(|v| v as TimeNs),
            },
        },
        _ => return None,
    };
    f.0.is_empty().then_some(RedoRecord { generation, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<RedoRecord> {
        let chunk = ContentChunk {
            extent: Extent {
                offset: 0,
                len: 5,
                chunk: ChunkId([7; 32]),
            },
            stored_len: 33,
            loc: Some(PackLoc {
                pack: 3,
                offset: 4096,
            }),
            head: ObjectHead::new(b"head"),
        };
        vec![
            RedoRecord {
                generation: 4,
                op: RedoOp::Create {
                    parent: 1,
                    name: b"a\xffb".to_vec(),
                    ino: 42,
                    uuid: Uuid::from_u128(0x1234),
                    t: -5,
                    node: NewNode {
                        kind: NodeKind::File,
                        mode: 0o644,
                        uid: 1000,
                        gid: 100,
                        policy: Some("transform: []".into()),
                        target: None,
                        rdev: 0,
                    },
                },
            },
            RedoRecord {
                generation: 4,
                op: RedoOp::Content {
                    ino: 42,
                    t: 1_700_000_000_000_000_000,
                    expect_version: Some(2),
                    content: Content {
                        chunks: vec![chunk],
                        size: 5,
                        provenance: None,
                        inline_objects: vec![(ChunkId([9; 32]), b"object".to_vec())],
                    },
                },
            },
            RedoRecord {
                generation: 4,
                op: RedoOp::SetAttr {
                    ino: 42,
                    t: 9,
                    attr: SetAttr {
                        mode: Some(0o4755),
                        uid: None,
                        gid: Some(u32::MAX),
                        atime: Some(-1),
                        mtime: None,
                    },
                },
            },
        ]
    }

    fn scan(records: &[RedoRecord], tail: Tail) -> Scan {
        Scan {
            records: records.to_vec(),
            tail,
        }
    }

    #[test]
    fn records_read_back_as_written_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RedoLog::open(&dir.path().join("meta.db")).unwrap();
        assert!(log.is_empty().unwrap());
        let mut ends = Vec::new();
        for r in records() {
            ends.push(log.append(&r).unwrap());
        }
        assert_eq!(ends[0], 0, "append returns the length before the record");
        assert_eq!(log.read_all().unwrap(), scan(&records(), Tail::Clean));

        // A half-written third record (power loss) ends the log without failing it.
        let full = std::fs::read(log.path()).unwrap();
        std::fs::write(log.path(), &full[..full.len() - 3]).unwrap();
        assert_eq!(log.read_all().unwrap(), scan(&records()[..2], Tail::Torn));

        // So does a last record whose bytes did not all reach the disk, and a zeroed tail.
        let mut last_bad = full.clone();
        *last_bad.last_mut().unwrap() ^= 1;
        std::fs::write(log.path(), &last_bad).unwrap();
        assert_eq!(log.read_all().unwrap(), scan(&records()[..2], Tail::Torn));
        let mut zeros = full[..ends[2] as usize].to_vec();
        zeros.extend_from_slice(&[0; 300]);
        std::fs::write(log.path(), &zeros).unwrap();
        assert_eq!(log.read_all().unwrap(), scan(&records()[..2], Tail::Torn));

        // A flipped bit in the first record, with records after it, is damage.
        let mut bad = full.clone();
        bad[FRAME + 10] ^= 1;
        std::fs::write(log.path(), &bad).unwrap();
        assert_eq!(log.read_all().unwrap(), scan(&[], Tail::Damaged { at: 0 }));

        // Cutting the log back drops the records after the point.
        std::fs::write(log.path(), &full).unwrap();
        log.cut_to(ends[1]).unwrap();
        assert_eq!(log.read_all().unwrap(), scan(&records()[..1], Tail::Clean));

        log.truncate().unwrap();
        assert!(log.is_empty().unwrap() && !log.dirty());
    }

    #[test]
    fn a_record_of_an_unknown_kind_is_an_error_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RedoLog::open(&dir.path().join("meta.db")).unwrap();
        log.append(&records()[0]).unwrap();
        // A well-formed frame whose body is of kind 77 (a newer build's), then another record.
        let mut body = 4u64.to_le_bytes().to_vec();
        body.extend_from_slice(&[77, 1, 2, 3]);
        write_once(&log.file, &frame_of(&body)).unwrap();
        log.append(&records()[1]).unwrap();
        let e = log.read_all().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("kind 77"), "{e}");
    }
}
