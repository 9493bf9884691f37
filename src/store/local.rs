//! The local-directory chunk backend.
//!
//! Store format 2 appends objects to **pack files** (`packs/<16 hex>.pack`, docs/FORMAT.md 4.2):
//! one sequential stream per writer instead of one file per ~256 KiB chunk, which on this
//! project's disk is the difference between ~300 MB/s (creating ~4,000 files per GiB) and the
//! disk's streaming rate. Writeback of each pack is started every few MiB (sync_file_range), so
//! the `fdatasync` before a commit finds little left to do. Format 1 stores keep **loose**
//! objects (`objects/<2 hex>/<64 hex>`, temp file + rename), which this backend still reads
//! and, for such stores, writes.
//!
//! A writer holds a shared flock on its active pack; gc only repacks or deletes packs it can
//! lock exclusively, so no process loses a pack it is still appending to.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::ChunkId;
use super::backend::{ChunkBackend, ObjectBytes, PackLoc};
use crate::util::lock;

/// Magic of a pack record header: `"SPKR" ‖ u32le(object length) ‖ chunk id (32 bytes)`.
pub const PACK_RECORD_MAGIC: &[u8; 4] = b"SPKR";
pub const PACK_RECORD_HEADER: u64 = 40;
/// Page size segmented objects' segments are aligned to in packs.
pub const PACK_ALIGN: u64 = 4096;
/// A pack is closed and a new one started past this size.
const PACK_LIMIT: u64 = 64 << 20;
/// Start writeback of a pack's dirty range once this much was appended since the last start.
const WRITEBACK_STEP: u64 = 8 << 20;

pub struct LocalBackend {
    root: PathBuf,
    tmp: PathBuf,
    /// `Some` for format-2 stores: new objects go to packs here.
    packs_dir: Option<PathBuf>,
    /// Fan-out directories that gained loose objects since the last `sync`.
    dirty_dirs: Mutex<HashSet<u8>>,
    /// Held across a whole `sync`: a concurrent caller that finds nothing left to sync must
    /// still wait until the flush covering its objects has finished.
    sync_lock: Mutex<()>,
    seq: AtomicU64,
    active: Mutex<Option<Arc<ActivePack>>>,
    /// Packs appended to since the last `sync`.
    dirty_packs: Mutex<HashMap<u64, Arc<ActivePack>>>,
    /// A pack file was created since the last `sync` (its directory entry needs a flush).
    new_pack: AtomicBool,
    readers: Mutex<LruCache<u64, Arc<File>>>,
    /// Pack descriptors for partial reads, opened with POSIX_FADV_RANDOM: no read-ahead, so
    /// reading two 4 KiB segments reads two pages (the sequential readers keep theirs).
    random_readers: Mutex<LruCache<u64, Arc<File>>>,
    /// Pack descriptors for streams, opened with POSIX_FADV_SEQUENTIAL (own read-ahead state).
    sequential_readers: Mutex<LruCache<u64, Arc<File>>>,
    /// Pack descriptors opened with O_DIRECT, for whole objects not in the page cache.
    direct_readers: Mutex<LruCache<u64, Arc<File>>>,
    /// Cleared when the file system refuses O_DIRECT or the kernel cannot tell what is in
    /// the page cache (no cachestat): then every read is buffered.
    direct_ok: AtomicBool,
}

/// The pack this process appends to (its flock marks it busy for gc).
struct ActivePack {
    id: u64,
    file: File,
    /// End of the space reserved so far.
    len: AtomicU64,
    /// Writeback has been started for everything before this offset.
    flushed_to: AtomicU64,
}

fn pack_name(id: u64) -> String {
    format!("{id:016x}.pack")
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl LocalBackend {
    /// Opens (creating if needed) an object tree at `root`; `packs` (format 2) appends new
    /// objects to pack files in `packs`.
    pub fn open(root: &Path, packs: Option<&Path>) -> io::Result<LocalBackend> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        if let Some(p) = packs {
            fs::create_dir_all(p)?;
        }
        Ok(LocalBackend {
            root: root.to_path_buf(),
            tmp,
            packs_dir: packs.map(Path::to_path_buf),
            dirty_dirs: Mutex::new(HashSet::new()),
            sync_lock: Mutex::new(()),
            seq: AtomicU64::new(0),
            active: Mutex::new(None),
            dirty_packs: Mutex::new(HashMap::new()),
            new_pack: AtomicBool::new(false),
            readers: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(64).expect("non-zero"),
            )),
            random_readers: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(64).expect("non-zero"),
            )),
            direct_readers: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(64).expect("non-zero"),
            )),
            sequential_readers: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(64).expect("non-zero"),
            )),
            direct_ok: AtomicBool::new(true),
        })
    }

    fn dir_of(&self, id: &ChunkId) -> PathBuf {
        self.root.join(format!("{:02x}", id.0[0]))
    }

    /// Path of a loose object.
    pub fn object_path(&self, id: &ChunkId) -> PathBuf {
        self.dir_of(id).join(id.to_hex())
    }

    /// Path of a pack file (exposed for tests that tamper with stored bytes).
    pub fn pack_path(&self, pack: u64) -> Option<PathBuf> {
        self.packs_dir.as_ref().map(|d| d.join(pack_name(pack)))
    }

    fn put_loose(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        let dir = self.dir_of(id);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{}", id.to_hex(), std::process::id(), n));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            drop(f);
            match fs::rename(&tmp, dir.join(id.to_hex())) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                    fsync_dir(&self.root)?;
                    fs::rename(&tmp, dir.join(id.to_hex()))
                }
                other => other,
            }
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        lock(&self.dirty_dirs).insert(id.0[0]);
        Ok(())
    }

    /// Starts a new pack file (exclusive create, shared flock while this process appends).
    fn new_pack(&self, dir: &Path) -> io::Result<Arc<ActivePack>> {
        loop {
            let id: u64 = rand::random();
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(pack_name(id)))
            {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => other?,
            };
            flock(&file, libc::LOCK_SH)?;
            self.new_pack.store(true, Ordering::SeqCst);
            return Ok(Arc::new(ActivePack {
                id,
                file,
                len: AtomicU64::new(0),
                flushed_to: AtomicU64::new(0),
            }));
        }
    }

    /// Reserves `record` bytes at the end of the active pack (or a new one), starting where
    /// byte `phase` of the record lands on a [`PACK_ALIGN`] boundary if `phase` is given.
    /// Returns the pack, where the padding before the record starts, and the record offset:
    /// the caller writes zeros in between (dead space, docs/FORMAT.md 4.2; written rather than
    /// left as a hole, which would split the file's extents and its sequential reads).
    fn reserve(
        &self,
        dir: &Path,
        record: u64,
        phase: Option<u64>,
    ) -> io::Result<(Arc<ActivePack>, u64, u64)> {
        let aligned = |at: u64| match phase {
            Some(ph) => at + (PACK_ALIGN - (at + ph) % PACK_ALIGN) % PACK_ALIGN,
            None => at,
        };
        let mut active = lock(&self.active);
        if let Some(p) = active.as_ref() {
            let end = p.len.load(Ordering::Relaxed);
            let at = aligned(end);
            if end == 0 || at + record <= PACK_LIMIT {
                p.len.store(at + record, Ordering::Relaxed);
                return Ok((Arc::clone(p), end, at));
            }
        }
        let p = self.new_pack(dir)?;
        let at = aligned(0);
        p.len.store(at + record, Ordering::Relaxed);
        *active = Some(Arc::clone(&p));
        Ok((p, 0, at))
    }

    fn put_packed(
        &self,
        dir: &Path,
        id: &ChunkId,
        bytes: &[u8],
        align_at: Option<usize>,
    ) -> io::Result<PackLoc> {
        let record = PACK_RECORD_HEADER + bytes.len() as u64;
        let phase = align_at.map(|a| PACK_RECORD_HEADER + a as u64);
        let (pack, pad_from, at) = self.reserve(dir, record, phase)?;
        lock(&self.dirty_packs).insert(pack.id, Arc::clone(&pack));
        let pad = (at - pad_from) as usize;
        let mut header = [0u8; PACK_RECORD_HEADER as usize];
        header[..4].copy_from_slice(PACK_RECORD_MAGIC);
        header[4..8].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        header[8..].copy_from_slice(&id.0);
        // Padding, header and object in one write, gathered (not copied into one buffer: that
        // copy, and the page faults of a fresh buffer per object, were ~6% of the daemon's
        // CPU time in a 1 GiB write to a mount).
        const ZEROS: [u8; PACK_ALIGN as usize] = [0; PACK_ALIGN as usize];
        let padding = ZEROS
            .get(..pad)
            .ok_or_else(|| io::Error::other("pack padding past a page"))?;
        write_all_vectored_at(&pack.file, &[padding, &header, bytes], pad_from)?;
        // Start writeback early (asynchronously), so the sync before the commit is short.
        let end = at + record;
        let from = pack.flushed_to.load(Ordering::Relaxed);
        if end >= from + WRITEBACK_STEP
            && pack
                .flushed_to
                .compare_exchange(from, end, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: sync_file_range on a descriptor we own; failure only loses the hint.
            unsafe {
                libc::sync_file_range(
                    pack.file.as_raw_fd(),
                    from as i64,
                    (end - from) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        Ok(PackLoc {
            pack: pack.id,
            offset: at + PACK_RECORD_HEADER,
        })
    }

    /// Appends to a pack (format 2 and later) or writes a loose object (format 1).
    fn put_object(
        &self,
        id: &ChunkId,
        bytes: &[u8],
        align_at: Option<usize>,
    ) -> io::Result<Option<PackLoc>> {
        match &self.packs_dir {
            Some(dir) => self.put_packed(dir, id, bytes, align_at).map(Some),
            None => self.put_loose(id, bytes).map(|_| None),
        }
    }

    /// A descriptor of `pack` for reads of kind `how` (each kind keeps its own descriptors).
    fn pack_reader(&self, pack: u64, how: PackRead) -> io::Result<Arc<File>> {
        let cache = match how {
            PackRead::Whole => &self.readers,
            PackRead::Segments => &self.random_readers,
            PackRead::Direct => &self.direct_readers,
            PackRead::Sequential => &self.sequential_readers,
        };
        if let Some(f) = lock(cache).get(&pack) {
            return Ok(Arc::clone(f));
        }
        let dir = self
            .packs_dir
            .as_ref()
            .ok_or_else(|| io::Error::other("packed object in a store without packs"))?;
        let mut options = OpenOptions::new();
        options.read(true);
        if how == PackRead::Direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let f = options.open(dir.join(pack_name(pack)))?;
        let advice = match how {
            PackRead::Segments => Some(libc::POSIX_FADV_RANDOM),
            PackRead::Sequential => Some(libc::POSIX_FADV_SEQUENTIAL),
            PackRead::Whole | PackRead::Direct => None,
        };
        if let Some(advice) = advice {
            // SAFETY: plain syscall on a descriptor we own; advice only, failure is harmless.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice) };
        }
        let f = Arc::new(f);
        lock(cache).put(pack, Arc::clone(&f));
        Ok(f)
    }
}

/// How a pack is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PackRead {
    /// Whole objects through the page cache (with the kernel's read-ahead).
    Whole,
    /// A few segments at random places: POSIX_FADV_RANDOM, so reading two 4 KiB segments
    /// reads two pages.
    Segments,
    /// Whole objects not in the page cache: O_DIRECT.
    Direct,
    /// Objects read in order by a stream: POSIX_FADV_SEQUENTIAL, so the kernel reads ahead in
    /// large requests.
    Sequential,
}

/// Objects at least this long that are not in the page cache are read with O_DIRECT.
const DIRECT_READ_MIN: usize = 64 << 10;
/// Drop-behind of in-order pack reads: the aligned window of this many bytes (the second) that
/// ended this far (the first) before the object being read is dropped from the page cache.
/// Whole windows, not the object's own range: the kernel keeps a large folio that lies only
/// partly inside the range it is told to drop, and read-ahead builds large folios that
/// straddle objects. The lag leaves room for read-ahead workers running slightly out of order.
const DROP_BEHIND: (u64, u64) = (8 << 20, 2 << 20);
/// Offset, length and buffer alignment O_DIRECT reads use (every block size up to 4 KiB).
const DIRECT_ALIGN: usize = 4096;

impl LocalBackend {
    /// Reads a whole packed object. A cold object (not in the page cache) is read with
    /// O_DIRECT straight into the buffer the decoder works in: a buffered read would have the
    /// kernel copy it out of the page cache, which was half of the daemon's CPU time in a cold
    /// sequential read, and would fill the page cache with ciphertext that is never read
    /// again (readers keep the decoded chunks). A cached object is copied from the page cache
    /// as before, so rereads of recent writes never wait for the disk.
    fn read_packed(&self, loc: PackLoc, len: usize) -> io::Result<ObjectBytes> {
        let f = self.pack_reader(loc.pack, PackRead::Whole)?;
        if len >= DIRECT_READ_MIN {
            if let Some(read) = self.read_if_uncached(&f, loc, len) {
                return read;
            }
        }
        read_exact_uninit(&f, len, loc.offset).map(ObjectBytes::from)
    }

    /// Reads `len` bytes at `loc` with O_DIRECT if none of them is in the page cache (`f` is
    /// the pack, opened for buffered reads); None when they are to be read through the page
    /// cache: some are cached, or the kernel or file system refuses O_DIRECT or cannot tell
    /// (then never again for this store).
    fn read_if_uncached(
        &self,
        f: &File,
        loc: PackLoc,
        len: usize,
    ) -> Option<io::Result<ObjectBytes>> {
        if !self.direct_ok.load(Ordering::Relaxed) {
            return None;
        }
        match page_cache_holds_none(f, loc.offset, len) {
            Some(true) => match self.read_direct(loc, len) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::info!(
                        "O_DIRECT reads refused ({e}); reading packs through the page cache"
                    );
                    self.direct_ok.store(false, Ordering::Relaxed);
                    None
                }
                other => Some(other),
            },
            Some(false) => None,
            None => {
                self.direct_ok.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Reads a whole packed object for a stream going through a pack in order: through the
    /// page cache with POSIX_FADV_SEQUENTIAL, so the kernel reads ahead of the stream in large
    /// requests (on this project's test VM, buffered 1 GiB stream reads ran about twice as
    /// fast as 256 KiB O_DIRECT reads; docs/BENCHMARKS.md). What the stream has left behind
    /// is then dropped from the page cache ([`DROP_BEHIND`]): the reader keeps the decoded
    /// chunks, and a stream should not push everything else out of memory with ciphertext
    /// nobody reads again.
    fn read_in_order(&self, loc: PackLoc, len: usize) -> io::Result<Vec<u8>> {
        let f = self.pack_reader(loc.pack, PackRead::Sequential)?;
        let bytes = read_exact_uninit(&f, len, loc.offset)?;
        let (lag, window) = DROP_BEHIND;
        let end = (loc.offset.saturating_sub(lag) / window) * window;
        if end >= window {
            // SAFETY: plain syscall on a descriptor we own; advice only.
            unsafe {
                libc::posix_fadvise(
                    f.as_raw_fd(),
                    (end - window) as libc::off_t,
                    window as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        }
        Ok(bytes)
    }

    /// Reads `len` bytes of segments at `offset` of a pack for a partial read. Bytes not in
    /// the page cache are read with O_DIRECT: a random read through the page cache pays for
    /// allocating, filling and freeing cache pages of ciphertext that is rarely read again
    /// (the kernel keeps the plaintext the reader asked for), about 5 us of the daemon's ~45
    /// us per cold random 4 KiB read on the test VM. Cached bytes are copied as before, so
    /// reads of recent writes never wait for the disk.
    fn read_segments(&self, pack: u64, offset: u64, len: usize) -> io::Result<ObjectBytes> {
        let f = self.pack_reader(pack, PackRead::Segments)?;
        if let Some(read) = self.read_if_uncached(&f, PackLoc { pack, offset }, len) {
            return read;
        }
        read_exact_uninit(&f, len, offset).map(ObjectBytes::from)
    }

    fn read_direct(&self, loc: PackLoc, len: usize) -> io::Result<ObjectBytes> {
        let f = self.pack_reader(loc.pack, PackRead::Direct)?;
        let from = loc.offset & !(DIRECT_ALIGN as u64 - 1);
        let lead = (loc.offset - from) as usize;
        let span = (lead + len).next_multiple_of(DIRECT_ALIGN);
        let mut buf: Vec<u8> = Vec::with_capacity(span + DIRECT_ALIGN);
        let shift = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let mut done = 0;
        while done < lead + len {
            // SAFETY: the kernel writes at most `span - done` bytes at `shift + done`, inside
            // the capacity; address, offset and length stay multiples of DIRECT_ALIGN.
            let n = unsafe {
                libc::pread(
                    f.as_raw_fd(),
                    buf.as_mut_ptr().add(shift + done) as *mut libc::c_void,
                    span - done,
                    (from + done as u64) as libc::off_t,
                )
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n > 0 && (n as usize) % DIRECT_ALIGN == 0 => done += n as usize,
                // A short read not ending on a block is the end of the file.
                n if n > 0 => {
                    done += n as usize;
                    if done < lead + len {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        // SAFETY: pread wrote bytes `shift..shift + done` (done >= lead + len); the alignment
        // gap before `shift` is zeroed here, so every byte of the new length is initialised
        // (the gap and the lead are never part of the object).
        unsafe {
            std::ptr::write_bytes(buf.as_mut_ptr(), 0, shift);
            buf.set_len(shift + lead + len);
        }
        Ok(ObjectBytes::new(buf, shift + lead))
    }
}

/// A pack that ends before an object it should hold, named in the error.
fn name_short_pack(e: io::Error, loc: PackLoc) -> io::Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "pack {} ends before the object at {}",
                pack_name(loc.pack),
                loc.offset
            ),
        ),
        _ => e,
    }
}

/// Writes all of `parts`, one after the other, at `offset` (pwritev, resumed after short
/// writes).
fn write_all_vectored_at(f: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0usize;
    while done < total {
        // The parts not yet written whole, the first one from where the last write stopped.
        let mut skip = done;
        let iov: Vec<libc::iovec> = parts
            .iter()
            .filter_map(|p| {
                if skip >= p.len() {
                    skip -= p.len();
                    return None;
                }
                let rest = &p[skip..];
                skip = 0;
                Some(libc::iovec {
                    iov_base: rest.as_ptr() as *mut libc::c_void,
                    iov_len: rest.len(),
                })
            })
            .take(libc::UIO_MAXIOV as usize)
            .collect();
        // SAFETY: every iovec points into a live slice of `parts`, which the kernel only reads.
        let n = unsafe {
            libc::pwritev(
                f.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes at `offset` into a new buffer without zero-filling it first
/// (zeroing every object before the kernel overwrites it was 8% of a cold `get`'s samples).
fn read_exact_uninit(f: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        // SAFETY: the kernel writes at most `len - done` bytes into the spare capacity, which
        // is valid for writes; only bytes it reports written become part of the vector.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                buf.as_mut_ptr().add(done) as *mut libc::c_void,
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            // SAFETY: the first `done + n` bytes have been written by pread.
            n if n > 0 => unsafe { buf.set_len(done + n as usize) },
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

/// Whether none of the `len` bytes at `offset` is in the page cache; None if the kernel
/// cannot tell (cachestat(2) came with Linux 6.5). Unlike a RWF_NOWAIT read as a probe, it
/// starts no read-ahead (which would read the object twice).
fn page_cache_holds_none(f: &File, offset: u64, len: usize) -> Option<bool> {
    /// cachestat's number, the same on every architecture (added after their tables merged).
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct CachestatRange {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = CachestatRange {
        off: offset,
        len: len as u64,
    };
    let mut stat = Cachestat::default();
    // SAFETY: both structs match the kernel's layout and outlive the call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    (rc == 0).then_some(stat.nr_cache == 0)
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

impl ChunkBackend for LocalBackend {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<Option<PackLoc>> {
        self.put_object(id, bytes, None)
    }

    fn put_aligned(
        &self,
        id: &ChunkId,
        bytes: &[u8],
        align_at: usize,
    ) -> io::Result<Option<PackLoc>> {
        self.put_object(id, bytes, Some(align_at))
    }

    fn get(&self, id: &ChunkId, loc: Option<PackLoc>, len: u32) -> io::Result<ObjectBytes> {
        let Some(loc) = loc else {
            return fs::read(self.object_path(id)).map(ObjectBytes::from);
        };
        self.read_packed(loc, len as usize)
            .map_err(|e| name_short_pack(e, loc))
    }

    fn get_sequential(
        &self,
        id: &ChunkId,
        loc: Option<PackLoc>,
        len: u32,
    ) -> io::Result<ObjectBytes> {
        let Some(loc) = loc else {
            return self.get(id, None, len);
        };
        self.read_in_order(loc, len as usize)
            .map(ObjectBytes::from)
            .map_err(|e| name_short_pack(e, loc))
    }

    fn get_range(
        &self,
        id: &ChunkId,
        loc: Option<PackLoc>,
        len: u32,
        range: std::ops::Range<usize>,
    ) -> io::Result<ObjectBytes> {
        let Some(loc) = loc else {
            return super::backend::range_of(self.get(id, None, len)?, range);
        };
        if range.end > len as usize || range.start > range.end {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.read_segments(loc.pack, loc.offset + range.start as u64, range.len())
            .map_err(|e| name_short_pack(e, loc))
    }

    fn delete(&self, id: &ChunkId) -> io::Result<()> {
        match fs::remove_file(self.object_path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self) -> io::Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        for d in fs::read_dir(&self.root)? {
            let d = d?;
            let name = d.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !d.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(d.path())? {
                let f = f?;
                if let Some(id) = ChunkId::from_hex(&f.file_name().to_string_lossy()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    fn sync(&self) -> io::Result<()> {
        let _one_at_a_time = lock(&self.sync_lock);
        let packs: Vec<Arc<ActivePack>> = lock(&self.dirty_packs).drain().map(|(_, p)| p).collect();
        for (i, p) in packs.iter().enumerate() {
            if let Err(e) = p.file.sync_data() {
                // Put the marks back so a retry syncs again.
                let mut d = lock(&self.dirty_packs);
                for q in &packs[i..] {
                    d.insert(q.id, Arc::clone(q));
                }
                return Err(e);
            }
        }
        if self.new_pack.swap(false, Ordering::SeqCst) {
            if let Some(dir) = &self.packs_dir {
                if let Err(e) = fsync_dir(dir) {
                    self.new_pack.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        let dirty = std::mem::take(&mut *lock(&self.dirty_dirs));
        if dirty.is_empty() {
            return Ok(());
        }
        let root = File::open(&self.root)?;
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(root.as_raw_fd()) } != 0 {
            let e = io::Error::last_os_error();
            lock(&self.dirty_dirs).extend(dirty);
            return Err(e);
        }
        Ok(())
    }

    fn clean_temporaries(&self) -> io::Result<usize> {
        let mut n = 0;
        for f in fs::read_dir(&self.tmp)? {
            fs::remove_file(f?.path())?;
            n += 1;
        }
        Ok(n)
    }

    fn free_space(&self) -> Option<(u64, u64)> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).ok()?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid NUL-terminated path and s a properly sized out-parameter.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        let frsize = s.f_frsize as u64;
        Some((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
    }

    fn packs(&self) -> io::Result<Vec<(u64, u64)>> {
        let Some(dir) = &self.packs_dir else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for f in fs::read_dir(dir)? {
            let f = f?;
            let name = f.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".pack") {
                if let Ok(id) = u64::from_str_radix(hex, 16) {
                    out.push((id, f.metadata()?.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete_pack(&self, pack: u64) -> io::Result<bool> {
        let Some(path) = self.pack_path(pack) else {
            return Ok(false);
        };
        let f = match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            other => other?,
        };
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            return Ok(false);
        }
        lock(&self.readers).pop(&pack);
        lock(&self.random_readers).pop(&pack);
        lock(&self.direct_readers).pop(&pack);
        fs::remove_file(&path)?;
        if let Some(dir) = &self.packs_dir {
            fsync_dir(dir)?;
        }
        Ok(true)
    }

    fn pack_in_use(&self, pack: u64) -> bool {
        let Some(path) = self.pack_path(pack) else {
            return true;
        };
        match File::open(path) {
            Ok(f) => flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_err(),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn gathered_writes_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        write_all_vectored_at(&f, &[b"", b"abc", &big, b"", b"z"], 5).unwrap();
        let mut want = vec![0u8; 5];
        want.extend_from_slice(b"abc");
        want.extend_from_slice(&big);
        want.push(b'z');
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), want);
    }

    /// Drops `path`'s clean pages from the page cache.
    fn evict(path: &Path) {
        let f = File::open(path).unwrap();
        f.sync_all().unwrap();
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }

    #[test]
    fn in_order_reads_match_what_was_stored_and_leave_little_behind() {
        let t = tempfile::tempdir().unwrap();
        let b =
            LocalBackend::open(&t.path().join("objects"), Some(&t.path().join("packs"))).unwrap();
        // 24 MiB of ~300 KiB objects, some aligned: more than the drop-behind lag.
        let mut objects = Vec::new();
        for i in 0..80usize {
            let len = 300_000 + i * 17;
            let bytes: Vec<u8> = (0..len).map(|j| (j * 13 + i * 5 + j / 999) as u8).collect();
            let id = ChunkId([i as u8; 32]);
            let loc = if i % 3 == 0 {
                b.put_aligned(&id, &bytes, 41)
            } else {
                b.put(&id, &bytes)
            };
            objects.push((id, loc.unwrap().unwrap(), bytes));
        }
        b.sync().unwrap();
        let pack = b.pack_path(objects[0].1.pack).unwrap();
        let pack_len = fs::metadata(&pack).unwrap().len();
        evict(&pack);
        for (id, loc, bytes) in &objects {
            let got = b
                .get_sequential(id, Some(*loc), bytes.len() as u32)
                .unwrap();
            assert_eq!(&got[..], &bytes[..], "object {id}");
        }
        // What the stream passed is dropped from the page cache, but for the last lag.
        let probe = File::open(&pack).unwrap();
        let (lag, window) = DROP_BEHIND;
        let behind = pack_len - lag - 2 * window;
        assert_eq!(
            page_cache_holds_none(&probe, 0, behind as usize),
            Some(true),
            "the first {behind} of {pack_len} bytes were dropped behind the stream"
        );
        // A pack that ends early is an error naming it.
        let (id, loc, bytes) = objects.last().unwrap();
        let e = b
            .get_sequential(id, Some(*loc), bytes.len() as u32 + 10_000)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("ends before the object"), "{e}");
    }

    #[test]
    fn cold_objects_are_read_directly_and_match_what_was_stored() {
        let t = tempfile::tempdir().unwrap();
        let b =
            LocalBackend::open(&t.path().join("objects"), Some(&t.path().join("packs"))).unwrap();
        // Odd lengths at unaligned and aligned places; the last object ends the pack, so its
        // direct read comes back short.
        let mut objects = Vec::new();
        for (i, len) in [70_001usize, 65_536, 300_000, 99_999]
            .into_iter()
            .enumerate()
        {
            let bytes: Vec<u8> = (0..len)
                .map(|j| (j * 31 + i * 7 + j / 4096) as u8)
                .collect();
            let id = ChunkId([i as u8; 32]);
            let loc = match i % 2 {
                0 => b.put(&id, &bytes),
                _ => b.put_aligned(&id, &bytes, 37),
            };
            objects.push((id, loc.unwrap().unwrap(), bytes));
        }
        b.sync().unwrap();
        let pack = b.pack_path(objects[0].1.pack).unwrap();
        let pack_len = fs::metadata(&pack).unwrap().len() as usize;
        evict(&pack);
        let probe = File::open(&pack).unwrap();
        let Some(true) = page_cache_holds_none(&probe, 0, pack_len) else {
            panic!(
                "cannot evict the pack or ask the kernel about its pages (cachestat, Linux 6.5)"
            );
        };
        for (id, loc, bytes) in &objects {
            let got = b.get(id, Some(*loc), bytes.len() as u32).unwrap();
            assert_eq!(&got[..], &bytes[..], "object {id}");
        }
        assert!(b.direct_ok.load(Ordering::Relaxed), "O_DIRECT works here");
        assert_eq!(
            page_cache_holds_none(&probe, 0, pack_len),
            Some(true),
            "direct reads leave no ciphertext in the page cache"
        );
        // An object in the page cache is read through it.
        let (id, loc, bytes) = &objects[2];
        let mut warm = vec![0u8; bytes.len()];
        probe.read_exact_at(&mut warm, loc.offset).unwrap();
        assert_eq!(
            page_cache_holds_none(&probe, loc.offset, bytes.len()),
            Some(false)
        );
        assert_eq!(
            &b.get(id, Some(*loc), bytes.len() as u32).unwrap()[..],
            &bytes[..]
        );
        // An object cut short by a damaged pack is an error, not short bytes.
        let (id, loc, bytes) = &objects[3];
        OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(loc.offset + 1000)
            .unwrap();
        evict(&pack);
        let e = b.get(id, Some(*loc), bytes.len() as u32).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}
