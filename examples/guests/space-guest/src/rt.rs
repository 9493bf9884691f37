//! ABI runtime behind the export macros.
//!
//! Everything here works on native pointers and `usize` lengths and returns
//! `(ptr, len)` pairs; the macros only add the `extern "C"` shims that convert
//! to the wasm `i32`/`i64` signatures. Keeping the logic here (not in the
//! macro) means it is compiled, linted and unit-tested once, natively, and the
//! [`crate::testing`] harness drives exactly the code the module runs.

use crate::{Args, Transform};
use std::alloc::{self, Layout};
use std::cell::UnsafeCell;
use std::ptr::NonNull;

/// Per-module state: the user's transform plus the buffers the ABI needs.
struct Instance<T> {
    transform: T,
    /// Output of the last `process`/`finish` call. Owned here (not leaked to
    /// the host) so that the host's `dealloc(out_ptr, out_len)` can be matched
    /// to it and freed with the Vec's real capacity, which may exceed
    /// `out_len`; the GlobalAlloc contract requires the exact layout.
    out: Vec<u8>,
    /// Message returned by `last_error`; lives here because the host reads it
    /// after `configure` returns and never frees it.
    error: String,
}

/// Holder for the module's single transform instance.
///
/// A `static` of this type is what the export macros declare. The
/// `Sync` impl is sound only because wasm32-unknown-unknown modules run
/// single-threaded and the host never re-enters an export while another is
/// running; natively it is used only as a local in tests.
pub struct Slot<T> {
    cell: UnsafeCell<Option<Instance<T>>>,
    make: fn() -> T,
}

// SAFETY: see the type docs; guests have exactly one thread and no re-entry.
unsafe impl<T> Sync for Slot<T> {}

impl<T: Transform + Default> Default for Slot<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

impl<T> Slot<T> {
    /// An empty slot. The transform is built by `make` on first use (and
    /// again after `finish`), so the constructor need not be `const` and a
    /// plain function pointer can be wrapped without a `Default` impl.
    pub const fn new(make: fn() -> T) -> Self {
        Self {
            cell: UnsafeCell::new(None),
            make,
        }
    }
}

impl<T: Transform> Slot<T> {
    /// # Safety
    /// No other reference into the slot may be live (guaranteed by the
    /// single-threaded, non-reentrant call pattern of the host).
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self) -> &mut Instance<T> {
        let make = self.make;
        (*self.cell.get()).get_or_insert_with(|| Instance {
            transform: make(),
            out: Vec::new(),
            error: String::new(),
        })
    }

    /// Drops the instance so its buffers return to the allocator.
    unsafe fn reset(&self) {
        *self.cell.get() = None;
    }
}

/// Builds a byte slice from a host-supplied pointer, tolerating `len == 0`
/// (the host may pass any pointer then, including 0, which `from_raw_parts`
/// must never see).
unsafe fn slice_mut<'a>(ptr: *mut u8, len: usize) -> &'a mut [u8] {
    if len == 0 || ptr.is_null() {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(ptr, len)
    }
}

/// `alloc(len)`: a buffer for the host to copy a piece (or arguments) into.
///
/// Zero-length requests get a dangling non-null pointer so the host can
/// treat every return value uniformly; allocation failure traps instead of
/// returning 0, because a host writing to address 0 would corrupt the
/// module's data silently.
pub fn alloc(len: usize) -> *mut u8 {
    if len == 0 {
        return NonNull::<u8>::dangling().as_ptr();
    }
    // SAFETY: guests are single-threaded; the host never re-enters an export.
    unsafe {
        let pool = &mut *INPUT_POOL.0.get();
        if let Some((ptr, cap)) = pool.spare.take() {
            if cap >= len {
                pool.live = Some((ptr, cap));
                return ptr;
            }
            alloc::dealloc(ptr, Layout::from_size_align_unchecked(cap, BUF_ALIGN));
        }
        let layout = Layout::from_size_align(len, BUF_ALIGN).expect("allocation too large");
        let ptr = alloc::alloc(layout);
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        if pool.live.is_none() {
            pool.live = Some((ptr, len));
        }
        ptr
    }
}

/// Alignment of buffers handed to the host: the host fills and drains them with memcpy, and
/// x86 `rep movsb` copies run at a fraction of their speed into a destination that is not
/// cache-line aligned (64 KiB pieces measured 2.5x slower at an 8-byte-aligned address).
const BUF_ALIGN: usize = 64;

/// One input buffer kept between calls: the host allocates a piece-sized buffer for every
/// `process` call, and handing back the same block avoids an allocator round trip per piece
/// (measured at ~25 us per 64 KiB call with dlmalloc). Holds at most one piece's worth.
struct InputPool {
    /// The block handed out by the last `alloc`, with its real capacity.
    live: Option<(*mut u8, usize)>,
    /// A block the host gave back, ready for the next `alloc`.
    spare: Option<(*mut u8, usize)>,
}

struct PoolCell(UnsafeCell<InputPool>);
// SAFETY: wasm32 guests are single-threaded.
unsafe impl Sync for PoolCell {}

static INPUT_POOL: PoolCell = PoolCell(UnsafeCell::new(InputPool {
    live: None,
    spare: None,
}));

/// `dealloc(ptr, len)`: frees an input buffer from [`alloc`] or the output
/// buffer last returned by [`process`]/[`finish`].
///
/// # Safety
/// `ptr`/`len` must come from one of those calls and not have been freed.
pub unsafe fn dealloc<T: Transform>(slot: &Slot<T>, ptr: *mut u8, len: usize) {
    if len == 0 || ptr.is_null() {
        return;
    }
    let inst = slot.get();
    if inst.out.capacity() > 0 && std::ptr::eq(inst.out.as_ptr(), ptr) {
        // Free now rather than keep it for reuse: under a 16-page memory cap
        // the next `alloc` for the input should not have to coexist with a
        // retained output buffer.
        inst.out = Vec::new();
        return;
    }
    let pool = &mut *INPUT_POOL.0.get();
    if let Some((live, cap)) = pool.live {
        if std::ptr::eq(live, ptr) {
            pool.live = None;
            if let Some((old, old_cap)) = pool.spare.replace((live, cap)) {
                alloc::dealloc(old, Layout::from_size_align_unchecked(old_cap, BUF_ALIGN));
            }
            return;
        }
    }
    alloc::dealloc(ptr, Layout::from_size_align_unchecked(len, BUF_ALIGN));
}

/// `process(ptr, len)`: transforms one piece; returns `(out_ptr, out_len)`.
///
/// Tries [`Transform::process_in_place`] first so same-size transforms hand
/// the input buffer straight back with no copy and no second allocation.
///
/// # Safety
/// `ptr` must point to `len` writable bytes obtained from [`alloc`].
pub unsafe fn process<T: Transform>(
    slot: &Slot<T>,
    ptr: *mut u8,
    len: usize,
) -> (*const u8, usize) {
    let inst = slot.get();
    let input = slice_mut(ptr, len);
    if let Some(n) = inst.transform.process_in_place(input) {
        assert!(
            n <= len,
            "process_in_place returned a length past the input"
        );
        return if n == 0 {
            (std::ptr::null(), 0)
        } else {
            (ptr, n)
        };
    }
    inst.out.clear();
    inst.transform.process(input, &mut inst.out);
    emit(&inst.out)
}

/// `configure(ptr, len)`: parses the argument block and hands it to the
/// transform. Returns 0 on success; on failure stores the message for
/// [`last_error`] and returns 1.
///
/// # Safety
/// `ptr` must point to `len` readable bytes.
pub unsafe fn configure<T: Transform>(slot: &Slot<T>, ptr: *mut u8, len: usize) -> i32 {
    let inst = slot.get();
    let result = Args::parse(slice_mut(ptr, len)).and_then(|a| inst.transform.configure(&a));
    match result {
        Ok(()) => {
            inst.error.clear();
            0
        }
        Err(msg) => {
            inst.error = msg;
            1
        }
    }
}

/// `last_error()`: the message from the last failed `configure`.
///
/// # Safety
/// Same single-threaded contract as the other entry points.
pub unsafe fn last_error<T: Transform>(slot: &Slot<T>) -> (*const u8, usize) {
    emit(slot.get().error.as_bytes())
}

/// `finish()`: end of stream; returns the transform's tail output.
///
/// Afterwards the instance is dropped (its state and buffers freed) and a
/// freshly made transform serves any later stream, so a host that reuses an
/// instance gets clean state rather than a half-finished one.
///
/// # Safety
/// Same single-threaded contract as the other entry points.
pub unsafe fn finish<T: Transform>(slot: &Slot<T>) -> (*const u8, usize) {
    let inst = slot.get();
    inst.out.clear();
    inst.transform.finish(&mut inst.out);
    if inst.out.is_empty() {
        slot.reset();
        return (std::ptr::null(), 0);
    }
    // The output must outlive this call until the host deallocs it, so keep
    // only the buffer and reset the transform state.
    let out = std::mem::take(&mut inst.out);
    let error = std::mem::take(&mut inst.error);
    *inst = Instance {
        transform: (slot.make)(),
        out,
        error,
    };
    emit(&inst.out)
}

fn emit(buf: &[u8]) -> (*const u8, usize) {
    if buf.is_empty() {
        (std::ptr::null(), 0)
    } else {
        (buf.as_ptr(), buf.len())
    }
}

/// Packs `(ptr, len)` into the ABI's `(ptr << 32) | len` result.
pub fn pack((ptr, len): (*const u8, usize)) -> i64 {
    (((ptr as usize as u64) << 32) | (len as u64 & 0xffff_ffff)) as i64
}
