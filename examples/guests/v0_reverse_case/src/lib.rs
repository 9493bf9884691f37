//! `v0_reverse_case`: swaps the case of ASCII letters (`Hello` -> `hELLO`).
//!
//! Written against the raw v0 ABI with no SDK, to prove that minimal modules
//! keep working and to show the contract in full: export `memory` (the linker
//! does), `alloc`, `dealloc`, and `process` returning `(out_ptr << 32) |
//! out_len`. There is no `configure` (so no arguments) and no `finish`.
//! The piece is transformed in place and the input pointer returned, so the
//! host frees only the input buffer.

#[cfg(target_arch = "wasm32")]
use std::alloc::{alloc as raw_alloc, dealloc as raw_dealloc, Layout};

/// Swaps ASCII letter case; other bytes (incl. UTF-8 multibyte) unchanged.
/// XOR with 0x20 flips case; the mask limits it to letters, branch-free.
pub fn reverse_case(data: &mut [u8]) {
    for b in data.iter_mut() {
        *b ^= 0x20 * (b.is_ascii_alphabetic() as u8);
    }
}

/// `alloc(len) -> ptr`: byte-aligned heap buffer for the host to fill.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn alloc(len: i32) -> i32 {
    let len = len as u32 as usize;
    if len == 0 {
        // Non-null, never dereferenced, ignored by dealloc.
        return 1;
    }
    // SAFETY: non-zero size.
    let ptr = unsafe { raw_alloc(Layout::from_size_align(len, 1).unwrap()) };
    if ptr.is_null() {
        // Trap rather than hand the host address 0 to write into.
        core::arch::wasm32::unreachable();
    }
    ptr as usize as i32
}

/// `dealloc(ptr, len)`: frees a buffer from `alloc`.
///
/// # Safety
/// `ptr`/`len` must come from `alloc` and not have been freed.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dealloc(ptr: i32, len: i32) {
    let len = len as u32 as usize;
    if len != 0 {
        raw_dealloc(
            ptr as u32 as usize as *mut u8,
            Layout::from_size_align_unchecked(len, 1),
        );
    }
}

/// `process(ptr, len) -> (ptr << 32) | len`: in place, same length.
///
/// # Safety
/// `ptr` must point to `len` bytes from `alloc`.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn process(ptr: i32, len: i32) -> i64 {
    let n = len as u32 as usize;
    if n > 0 {
        reverse_case(std::slice::from_raw_parts_mut(
            ptr as u32 as usize as *mut u8,
            n,
        ));
    }
    (((ptr as u32 as u64) << 32) | len as u32 as u64) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn swaps_ascii_case_only() {
        let mut s = b"Hello, World! 123 \xc3\xa9".to_vec();
        super::reverse_case(&mut s);
        assert_eq!(s, b"hELLO, wORLD! 123 \xc3\xa9");
        let mut all: Vec<u8> = (0..=255u8).collect();
        super::reverse_case(&mut all);
        for (i, b) in all.into_iter().enumerate() {
            let c = i as u8;
            let want = if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            assert_eq!(b, want, "byte {i}");
        }
    }
}
