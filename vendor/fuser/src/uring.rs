//! FUSE over io_uring (Linux 6.14+: `CONFIG_FUSE_IO_URING` and the `fuse` module parameter
//! `enable_uring`). Added to this copy of fuser by the SPACE project.
//!
//! With `/dev/fuse` every request costs the daemon a `read` and a `writev`, and the kernel
//! wakes whichever daemon thread waits longest, on whatever CPU it last ran. Over io_uring the
//! kernel keeps one queue per CPU: a request goes to the queue of the CPU its caller runs on,
//! into a buffer ("ring entry") the daemon registered there, and the daemon answers and takes
//! the next request with one `io_uring_enter`. Each thread here owns one entry of one queue.
//! The threads are not pinned to their queue's CPU: on the SPACE project's test VM pinning
//! made sequential writes through one `cp` ~12% slower (every request of one client is
//! served on its CPU) and random reads no faster.
//!
//! The kernel protocol (include/uapi/linux/fuse.h, fs/fuse/dev_uring.c):
//! * after FUSE_INIT negotiated `FUSE_OVER_IO_URING`, each entry is registered with an
//!   `IORING_OP_URING_CMD` (128-byte SQE) on the `/dev/fuse` descriptor, `cmd_op`
//!   `FUSE_IO_URING_CMD_REGISTER`, `addr` an array of two iovecs (the 288-byte header
//!   buffer and a payload buffer of at least the connection's largest request), and
//!   [`CmdReq`] naming the queue in the SQE's command area;
//! * once every queue has an entry, requests other than FORGET and INTERRUPT (which still
//!   come through `/dev/fuse`) complete an entry's command: the header buffer then holds the
//!   `fuse_in_header`, the operation's own header and [`EntInOut`] (payload size and the id
//!   to commit with), the payload buffer the rest of the request;
//! * the answer goes in the same buffers (`fuse_out_header` in the header buffer, everything
//!   after it in the payload), and `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` hands it over and
//!   makes the entry available for the next request;
//! * when the connection ends, the kernel completes the commands with an error.

use std::io;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::{debug, error, info, warn};

use crate::Filesystem;
use crate::channel::{Channel, ChannelSender};
use crate::ll::Operation;
use crate::reply::{ReplyEmpty, ReplySender};
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// How FUSE over io_uring is served.
#[derive(Debug, Clone, Copy, Eq, PartialEq)]
pub struct UringConfig {
    /// Threads (each with one ring entry) per CPU queue: how many requests made on one CPU
    /// are served at once.
    pub threads_per_queue: usize,
}

const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: `in_out` (the in or out header), `op_in` (the operation's
/// own header), then [`EntInOut`].
const HEADER_LEN: usize = 288;
const OP_IN_AT: usize = 128;
const OP_IN_MAX: usize = 128;
const ENT_IN_OUT_AT: usize = 256;
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;

/// The smallest payload buffer the kernel accepts (`FUSE_MIN_READ_BUFFER`).
const MIN_PAYLOAD: usize = 8192;

/// `struct fuse_uring_ent_in_out` inside the header buffer.
#[derive(Debug, Clone, Copy)]
struct EntInOut {
    commit_id: u64,
    payload_sz: u32,
}

/// `struct fuse_uring_cmd_req`, in the SQE's command area.
fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

/// A buffer the kernel reads and writes while a command is in flight: allocated once, never
/// moved, page-aligned.
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a plain heap allocation; access is coordinated by `Slot`'s mutex and the protocol
// (the kernel only touches it between handing a request over and our commit).
unsafe impl Send for RawBuf {}
// SAFETY: as above.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    fn new(len: usize) -> RawBuf {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("buffer layout");
        // SAFETY: non-zero size; zeroed so every byte is initialised.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        RawBuf { ptr, len }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("buffer layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// One ring entry's buffers and the handover of its reply, which fuser's reply objects may
/// send from any thread.
#[derive(Debug)]
pub(crate) struct Slot {
    header: RawBuf,
    payload: RawBuf,
    replied: Mutex<bool>,
    reply_done: Condvar,
    /// For passthrough backing ids, which need the device.
    pub(crate) channel: ChannelSender,
}

impl std::fmt::Debug for RawBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawBuf({} bytes)", self.len)
    }
}

impl Slot {
    /// Writes a reply (`fuse_out_header` first, as fuser's responses are laid out) into the
    /// entry's buffers.
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut replied = self.replied.lock().unwrap();
        if *replied {
            return Err(io::Error::other("second reply to one io_uring request"));
        }
        let total: usize = data.iter().map(|d| d.len()).sum();
        let body = total.saturating_sub(OUT_HEADER_LEN);
        let mut at = 0usize;
        if total < OUT_HEADER_LEN || body > self.payload.len {
            // Not a reply the entry can carry: answer EIO instead of truncating it.
            error!("io_uring reply of {total} bytes does not fit its entry");
            // The request's id, from the reply's own out header.
            let unique = data
                .first()
                .and_then(|h| h.get(8..16))
                .map_or(0, |u| u64::from_ne_bytes(u.try_into().unwrap()));
            let out = out_header(unique, -libc::EIO);
            // SAFETY: the header buffer holds HEADER_LEN bytes; nothing else touches it
            // while the entry's request is ours.
            unsafe {
                std::ptr::copy_nonoverlapping(out.as_ptr(), self.header.ptr, OUT_HEADER_LEN);
            }
            self.set_payload_sz(0);
        } else {
            for d in data {
                let mut src: &[u8] = d;
                while !src.is_empty() {
                    let (dst, room) = if at < OUT_HEADER_LEN {
                        // SAFETY: within the header buffer's first 16 bytes.
                        (unsafe { self.header.ptr.add(at) }, OUT_HEADER_LEN - at)
                    } else {
                        // SAFETY: `at - 16 < body <= payload.len`.
                        (
                            unsafe { self.payload.ptr.add(at - OUT_HEADER_LEN) },
                            total - at,
                        )
                    };
                    let n = room.min(src.len());
                    // SAFETY: `n` bytes fit at `dst` (see above); the source is a caller's
                    // slice, never our own buffers.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n) };
                    src = &src[n..];
                    at += n;
                }
            }
            self.set_payload_sz(body as u32);
        }
        *replied = true;
        self.reply_done.notify_all();
        Ok(())
    }

    fn set_payload_sz(&self, n: u32) {
        // SAFETY: inside the header buffer (ENT_IN_OUT_AT + 16 + 4 <= HEADER_LEN).
        unsafe {
            std::ptr::copy_nonoverlapping(
                n.to_ne_bytes().as_ptr(),
                self.header.ptr.add(ENT_IN_OUT_AT + 16),
                4,
            );
        }
    }

    fn ent_in_out(&self) -> EntInOut {
        let mut b = [0u8; 32];
        // SAFETY: the last 32 bytes of the header buffer, written by the kernel before it
        // completed our command.
        unsafe {
            std::ptr::copy_nonoverlapping(self.header.ptr.add(ENT_IN_OUT_AT), b.as_mut_ptr(), 32)
        };
        EntInOut {
            commit_id: u64::from_ne_bytes(b[8..16].try_into().unwrap()),
            payload_sz: u32::from_ne_bytes(b[16..20].try_into().unwrap()),
        }
    }

    fn wait_for_reply(&self) {
        let mut replied = self.replied.lock().unwrap();
        while !*replied {
            replied = self.reply_done.wait(replied).unwrap();
        }
    }

    fn reset(&self) {
        *self.replied.lock().unwrap() = false;
    }
}

/// Starts `config.threads_per_queue` threads per CPU queue of the kernel's ring for the
/// connection of `ch`, each registering one entry of `max_payload` bytes (at least what the
/// kernel accepts). `served` counts the requests they answer. The threads end when the
/// connection does.
pub(crate) fn start<FS: Filesystem>(
    config: UringConfig,
    ch: &Channel,
    make_loop: impl Fn(String) -> SessionEventLoop<FS>,
    max_payload: usize,
    served: Arc<AtomicU64>,
) -> io::Result<Vec<JoinHandle<io::Result<()>>>> {
    let queues = possible_cpus()?;
    let max_payload = max_payload.max(MIN_PAYLOAD);
    let mut threads = Vec::new();
    for qid in 0..queues {
        for k in 0..config.threads_per_queue.max(1) {
            let name = format!("fuser-uring-{qid}.{k}");
            let event_loop = make_loop(name.clone());
            let slot = Arc::new(Slot {
                header: RawBuf::new(4096),
                payload: RawBuf::new(max_payload),
                replied: Mutex::new(false),
                reply_done: Condvar::new(),
                channel: ch.sender(),
            });
            let served = Arc::clone(&served);
            let fd = ch.as_fd().as_raw_fd();
            threads.push(
                thread::Builder::new()
                    .name(name)
                    .spawn(move || serve_entry(&event_loop, fd, qid as u16, &slot, &served))?,
            );
        }
    }
    Ok(threads)
}

/// The kernel has one queue per possible CPU (`num_possible_cpus`).
fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    // "0-3", "0", "0-3,5-7": the count of the ranges (ids are dense in practice; the kernel
    // indexes queues by CPU id, so take the highest id + 1).
    let mut highest = 0usize;
    for part in s.trim().split(',') {
        let last = part.rsplit('-').next().unwrap_or(part);
        highest = highest.max(
            last.parse::<usize>()
                .map_err(|_| io::Error::other(format!("unreadable possible CPUs: {s}")))?,
        );
    }
    Ok(highest + 1)
}

/// A 128-byte URING_CMD SQE for `/dev/fuse`, with `len` set (io-uring's builder has no
/// setter for it; FUSE wants the iovec count there when registering).
fn fuse_cmd(fd: i32, cmd_op: u32, cmd: [u8; 80], addr: Option<u64>, len: u32) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(addr)
        .build();
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is repr(C) and 128 bytes: the kernel's SQE128 layout, in which `len`
    // is the u32 at byte 24.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above; every bit pattern is a valid SQE to build from.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn serve_entry<FS: Filesystem>(
    event_loop: &SessionEventLoop<FS>,
    fd: i32,
    qid: u16,
    slot: &Arc<Slot>,
    served: &AtomicU64,
) -> io::Result<()> {
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(4)?;
    let iov = [
        libc::iovec {
            iov_base: slot.header.ptr.cast(),
            iov_len: HEADER_LEN,
        },
        libc::iovec {
            iov_base: slot.payload.ptr.cast(),
            iov_len: slot.payload.len,
        },
    ];
    let register = fuse_cmd(
        fd,
        FUSE_IO_URING_CMD_REGISTER,
        cmd_req(0, qid),
        Some(iov.as_ptr() as u64),
        2,
    );
    // SAFETY: the iovecs and the buffers they name live until this function returns, and
    // the kernel's use of them ends with the connection (whose end this function waits for).
    unsafe { ring.submission().push(&register) }
        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    // The request, rebuilt as one `/dev/fuse` message for fuser's parser: in header, the
    // operation's header, then the payload (copied, so the reply may overwrite the
    // payload buffer while the request is still borrowed). u64s for alignment.
    let mut request: Vec<u64> = vec![0; (IN_HEADER_LEN + OP_IN_MAX + slot.payload.len) / 8 + 1];
    let mut first = true;
    let mut retries = 0u32;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        let Some(cqe) = ring.completion().next() else {
            continue;
        };
        let res = cqe.result();
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            match -res {
                libc::ENOTCONN | libc::ECANCELED | libc::ECONNABORTED | libc::ENODEV => {
                    debug!("io_uring queue {qid}: connection ended ({e})");
                    return Ok(());
                }
                // The connection is not initialised yet: register again shortly.
                libc::EAGAIN if first && retries < 100 => {
                    retries += 1;
                    thread::sleep(std::time::Duration::from_millis(10));
                }
                _ if first => {
                    warn!(
                        "FUSE over io_uring not available ({e}); serving requests through /dev/fuse"
                    );
                    return Ok(());
                }
                // A commit the kernel refused (its request is gone): the entry is stuck on
                // the kernel's side, so register the buffers again as a new one, or this
                // CPU's queue would lose a server.
                _ if retries < 1000 => {
                    retries += 1;
                    warn!("io_uring queue {qid}: {e}; registering the entry again");
                }
                _ => {
                    error!("io_uring queue {qid}: {e}");
                    return Err(e);
                }
            }
            // SAFETY: as for the first registration.
            unsafe { ring.submission().push(&register) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            continue;
        }
        if first {
            first = false;
            if qid == 0 {
                info!("serving FUSE requests over io_uring");
            }
        }
        let ent = slot.ent_in_out();
        let len = rebuild_request(slot, ent, &mut request);
        slot.reset();
        // SAFETY: `request` holds at least `len` initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(request.as_ptr().cast::<u8>(), len) };
        match RequestWithSender::new(ReplySender::Uring(Arc::clone(slot)), bytes) {
            Some(req) => match req.request.operation() {
                Ok(Operation::Destroy(_)) => req.reply::<ReplyEmpty>().ok(),
                Ok(Operation::Forget(_) | Operation::BatchForget(_)) => {
                    // No reply exists for these (they come through /dev/fuse in practice):
                    // commit an empty success so the entry comes back.
                    req.dispatch(event_loop);
                    let _ = slot.send(&[IoSlice::new(&out_header(ent.commit_id, 0))]);
                }
                _ => req.dispatch(event_loop),
            },
            None => {
                // fuser could not parse it: answer EIO so the caller is not left waiting.
                let _ = slot.send(&[IoSlice::new(&out_header(ent.commit_id, -libc::EIO))]);
            }
        }
        slot.wait_for_reply();
        served.fetch_add(1, Ordering::Relaxed);
        let commit = fuse_cmd(
            fd,
            FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
            cmd_req(ent.commit_id, qid),
            None,
            0,
        );
        // SAFETY: as for the registration: the buffers outlive the command.
        unsafe { ring.submission().push(&commit) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
    }
}

/// A `fuse_out_header` with no body.
fn out_header(unique: u64, error: i32) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// Copies the entry's request into `out` as `/dev/fuse` would have delivered it and returns
/// its length. The in header's `len` counts every argument, so the operation header's size is
/// what the payload leaves of it.
fn rebuild_request(slot: &Slot, ent: EntInOut, out: &mut [u64]) -> usize {
    let mut in_header = [0u8; IN_HEADER_LEN];
    // SAFETY: the header buffer's first 40 bytes, the kernel's `fuse_in_header`.
    unsafe {
        std::ptr::copy_nonoverlapping(slot.header.ptr, in_header.as_mut_ptr(), IN_HEADER_LEN)
    };
    let total = u32::from_ne_bytes(in_header[0..4].try_into().unwrap()) as usize;
    let payload = (ent.payload_sz as usize).min(slot.payload.len);
    let op_len = total.saturating_sub(IN_HEADER_LEN + payload).min(OP_IN_MAX);
    let len = IN_HEADER_LEN + op_len + payload;
    // SAFETY: `out` holds IN_HEADER_LEN + OP_IN_MAX + payload.len bytes; the sources are
    // inside the entry's buffers.
    unsafe {
        let dst = out.as_mut_ptr().cast::<u8>();
        std::ptr::copy_nonoverlapping(in_header.as_ptr(), dst, IN_HEADER_LEN);
        std::ptr::copy_nonoverlapping(
            slot.header.ptr.add(OP_IN_AT),
            dst.add(IN_HEADER_LEN),
            op_len,
        );
        std::ptr::copy_nonoverlapping(slot.payload.ptr, dst.add(IN_HEADER_LEN + op_len), payload);
    }
    // The parser checks the header's length against the message.
    if total != len {
        let fixed = (len as u32).to_ne_bytes();
        // SAFETY: the first 4 bytes of `out`.
        unsafe { std::ptr::copy_nonoverlapping(fixed.as_ptr(), out.as_mut_ptr().cast::<u8>(), 4) };
    }
    len
}
