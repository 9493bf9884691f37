//! Links fuser's callbacks to [`SpaceFs`] operations; nothing else happens here.
//!
//! Each callback converts fuser types to plain ones, calls the operation and turns the result
//! into a reply. Requests are handled by several session threads (fuser's `n_threads` with
//! cloned `/dev/fuse` descriptors), so a slow read or commit never blocks the others; the
//! governor parks the threads a sequential client does not need (governor.rs).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::file_ops::Opened;
use super::governor::Governor;
use super::ops::SetAttrRequest;
use super::{Attr, Caller, FsResult, Kind, SpaceFs, from_system_time, to_system_time};

/// Largest read/write request the kernel is asked to send.
const MAX_IO: u32 = 1 << 20;

pub struct FuseAdapter {
    pub fs: Arc<SpaceFs>,
    /// Parks session threads a sequential client does not need (see [`Governor`]).
    governor: Arc<Governor>,
}

impl FuseAdapter {
    /// The callbacks for `fs`, served by `threads` session threads.
    pub fn new(fs: Arc<SpaceFs>, threads: usize) -> FuseAdapter {
        let governor = Governor::start(threads, Arc::clone(&fs.stats));
        FuseAdapter { fs, governor }
    }

    /// The governor, to give it the session's descriptor once mounted.
    pub fn governor(&self) -> Arc<Governor> {
        Arc::clone(&self.governor)
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// A device number as the FUSE protocol carries it (the kernel's `new_encode_dev`: 12-bit
/// major, 20-bit minor) → Linux `dev_t` (glibc `makedev`), what the store keeps.
fn dev_from_kernel(r: u32) -> u64 {
    let major = (r & 0xfff00) >> 8;
    let minor = (r & 0xff) | ((r >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// The inverse of [`dev_from_kernel`] (numbers the kernel cannot represent become 0).
fn dev_to_kernel(d: u64) -> u32 {
    let (major, minor) = (libc::major(d), libc::minor(d));
    if major > 0xfff || minor > 0xfffff {
        return 0;
    }
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: to_system_time(a.atime),
        mtime: to_system_time(a.mtime),
        ctime: to_system_time(a.ctime),
        crtime: to_system_time(a.ctime),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: dev_to_kernel(a.rdev),
        // Preferred I/O size: tools like cp and dd size their buffers by it, and every FUSE
        // request costs a round trip, so one request per MAX_IO instead of per 128 KiB.
        blksize: MAX_IO,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> i64 {
    match t {
        TimeOrNow::SpecificTime(t) => from_system_time(t),
        TimeOrNow::Now => from_system_time(SystemTime::now()),
    }
}

/// `open_flags` are the caller's: a descriptor opened read-only has nothing to commit when it
/// is closed, so the kernel is told not to send FLUSH for it (one round trip fewer per
/// `open`/`read`/`close`; pending writes of other descriptors are committed by their own close).
fn fopen_flags(o: &Opened, open_flags: i32) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if open_flags & libc::O_ACCMODE == libc::O_RDONLY {
        f |= FopenFlags::FOPEN_NOFLUSH;
    }
    f
}

impl FuseAdapter {
    fn ttl(&self) -> Duration {
        self.fs.opts.ttl
    }

    /// Attributes whose size is not known yet (a view not computed) are not cached by the
    /// kernel, so `ls -l` after the first full read shows the real size at once.
    fn ttl_for(&self, a: &Attr) -> Duration {
        if a.size_unknown {
            Duration::ZERO
        } else {
            self.ttl()
        }
    }

    fn entry(&self, r: FsResult<Attr>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&self.ttl_for(&a), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn empty(r: FsResult<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn xattr(r: FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(err(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(err(e)),
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = [
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ];
        for f in wanted {
            let _ = config.add_capabilities(f);
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        log::info!(
            "spacefs: mounted store {}",
            self.fs.space.store.dir.display()
        );
        Ok(())
    }

    fn destroy(&mut self) {
        self.governor.stop();
        self.fs.commit_all();
        log::info!("spacefs: unmounted");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _busy = self.governor.enter();
        self.entry(self.fs.lookup(parent.0, name.as_bytes()), reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _busy = self.governor.enter();
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl_for(&a), &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _busy = self.governor.enter();
        let req = SetAttrRequest {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.fs.setattr(ino.0, &req, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.ttl_for(&a), &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _busy = self.governor.enter();
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _busy = self.governor.enter();
        // `_umask`: the kernel applied it to `mode` already (no FUSE_DONT_MASK), as for
        // mkdir and create.
        let r = self.fs.mknod(
            parent.0,
            name.as_bytes(),
            mode,
            dev_from_kernel(rdev),
            caller(req),
        );
        self.entry(r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _busy = self.governor.enter();
        self.entry(
            self.fs.mkdir(parent.0, name.as_bytes(), mode, caller(req)),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _busy = self.governor.enter();
        Self::empty(self.fs.unlink(parent.0, name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _busy = self.governor.enter();
        Self::empty(self.fs.rmdir(parent.0, name.as_bytes()), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _busy = self.governor.enter();
        let r = self.fs.symlink(
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            caller(req),
        );
        self.entry(r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(err(libc::EINVAL));
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let (a, b) = (name.as_bytes(), newname.as_bytes());
            return Self::empty(self.fs.exchange(parent.0, a, newparent.0, b), reply);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = self.fs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            no_replace,
        );
        Self::empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _busy = self.governor.enter();
        self.entry(self.fs.link(ino.0, newparent.0, newname.as_bytes()), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _busy = self.governor.enter();
        match self.fs.open(ino.0, flags.0) {
            Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o, flags.0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _busy = self.governor.enter();
        // Replies from the reader's buffer (on success the closure consumes the reply).
        let mut reply = Some(reply);
        let sent = self.fs.read_with(fh.0, offset, size, |d| {
            if let Some(r) = reply.take() {
                r.data(d)
            }
        });
        if let (Err(e), Some(r)) = (sent, reply.take()) {
            r.error(err(e));
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _busy = self.governor.enter();
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        Self::empty(self.fs.flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        Self::empty(self.fs.release(fh.0), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        Self::empty(self.fs.fsync(fh.0), reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        Self::empty(self.fs.fallocate(ino.0, offset, length, mode), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _busy = self.governor.enter();
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _busy = self.governor.enter();
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    if reply.add(
                        INodeNo(e.ino),
                        next,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _busy = self.governor.enter();
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    // "." and ".." carry no attributes the kernel would use; others are looked up.
                    let attr = if e.name == b"." || e.name == b".." {
                        self.fs.getattr(ino.0)
                    } else {
                        self.fs.getattr(e.ino)
                    };
                    let Ok(a) = attr else { continue };
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(
                        INodeNo(e.ino),
                        next,
                        name,
                        &self.ttl_for(&a),
                        &file_attr(&a),
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    /// No file here is a device: every ioctl gets ENOTTY, as on a local filesystem (fuser's
    /// default answers ENOSYS and logs a warning, and Python's `open()` asks `isatty` on every
    /// file it opens).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _busy = self.governor.enter();
        reply.error(Errno::ENOTTY);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        // Namespace changes are atomic metadata commits; this makes them durable.
        match self.fs.sync_metadata() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _busy = self.governor.enter();
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _busy = self.governor.enter();
        let Some(name) = name.to_str() else {
            return reply.error(err(libc::EINVAL));
        };
        Self::empty(self.fs.setxattr(ino.0, name, value, flags), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _busy = self.governor.enter();
        let Some(name) = name.to_str() else {
            return reply.error(err(libc::ENODATA));
        };
        Self::xattr(self.fs.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _busy = self.governor.enter();
        Self::xattr(self.fs.listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _busy = self.governor.enter();
        let Some(name) = name.to_str() else {
            return reply.error(err(libc::ENODATA));
        };
        Self::empty(self.fs.removexattr(ino.0, name), reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _busy = self.governor.enter();
        Self::empty(self.fs.access(ino.0, mask.bits(), caller(req)), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _busy = self.governor.enter();
        match self
            .fs
            .create(parent.0, name.as_bytes(), mode, flags, caller(req))
        {
            Ok((a, o)) => reply.created(
                &self.ttl_for(&a),
                &file_attr(&a),
                Generation(0),
                FileHandle(o.fh),
                fopen_flags(&o, flags),
            ),
            Err(e) => reply.error(err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_convert_both_ways() {
        for (major, minor) in [(0, 0), (1, 3), (8, 17), (259, 0x12345), (0xfff, 0xfffff)] {
            let d = libc::makedev(major, minor);
            let k = dev_to_kernel(d);
            assert_eq!(dev_from_kernel(k), d, "{major}:{minor}");
        }
        // new_encode_dev(1, 3) and glibc agree for small numbers.
        assert_eq!(dev_to_kernel(libc::makedev(1, 3)), 0x103);
        assert_eq!(dev_to_kernel(libc::makedev(0x1000, 0)), 0);
    }
}
