//! Guest-side SDK for SPACE WebAssembly transforms.
//!
//! SPACE applies a transform to a capsule's bytes piece by piece (4 KiB to
//! 1 MiB each) through a tiny pointer-and-length ABI. This crate hides that
//! ABI: implement [`Transform`] (or write one function) and invoke one of the
//! export macros; the macro emits `alloc`, `dealloc`, `process` and, for
//! stateful transforms, `configure`, `last_error` and `finish`.
//!
//! ```ignore
//! #[derive(Default)]
//! struct Shout;
//! impl space_guest::Transform for Shout {
//!     fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
//!         out.extend(input.iter().map(u8::to_ascii_uppercase));
//!     }
//! }
//! space_guest::export_transform!(Shout);
//! ```
//!
//! The extern functions are only emitted when compiling for `wasm32`, so the
//! same crate builds natively and its logic can be unit-tested with
//! `cargo test`, using [`testing`] to replay the host's call sequence.
//!
//! Modules built with this SDK have no imports: std on
//! `wasm32-unknown-unknown` allocates with its bundled dlmalloc (which grows
//! linear memory with `memory.grow`), and `panic = "abort"` turns panics into
//! a trap.

mod args;
#[doc(hidden)]
pub mod rt;
pub mod testing;

pub use args::Args;

/// A streaming transform: one value of this type serves one stream.
///
/// Pieces arrive in order; anything a match needs from a later piece (a line
/// or record split across a boundary) must be kept in `self` and emitted once
/// complete, or in [`Transform::finish`].
pub trait Transform {
    /// Called once before the first piece with the policy's arguments.
    /// Returning `Err` rejects the configuration; the message reaches the
    /// user through the host's `last_error` call.
    fn configure(&mut self, args: &Args) -> Result<(), String> {
        args.allow_only(&[])
    }

    /// Fast path for transforms whose output for a piece fits in the input
    /// buffer: rewrite `data` and return `Some(n)` to emit `data[..n]`.
    /// The buffer is handed back to the host as-is, saving a copy and an
    /// allocation per piece. Return `None` (the default) to use
    /// [`Transform::process`] instead.
    fn process_in_place(&mut self, data: &mut [u8]) -> Option<usize> {
        let _ = data;
        None
    }

    /// Transforms one piece, appending the output to `out` (empty on entry).
    /// Emitting nothing for a piece is fine.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>);

    /// End of stream: append any held-back tail to `out` (empty on entry).
    fn finish(&mut self, out: &mut Vec<u8>) {
        let _ = out;
    }
}

/// Adapts a stateless `fn(&[u8], &mut Vec<u8>)` to [`Transform`].
/// Used by [`export_map!`]; public so tests can drive such functions
/// through [`testing`].
pub struct MapFn(pub fn(&[u8], &mut Vec<u8>));

impl Transform for MapFn {
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        (self.0)(input, out)
    }
}

/// Adapts a stateless in-place `fn(&mut [u8])` to [`Transform`].
/// Used by [`export_map_in_place!`].
pub struct MapInPlaceFn(pub fn(&mut [u8]));

impl Transform for MapInPlaceFn {
    fn process_in_place(&mut self, data: &mut [u8]) -> Option<usize> {
        (self.0)(data);
        Some(data.len())
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // Unreachable through the ABI (process_in_place always succeeds) but
        // kept correct for direct callers.
        out.extend_from_slice(input);
        (self.0)(out);
    }
}

/// Exports a [`Transform`] type (which must implement `Default`) with the
/// full v1 ABI: `alloc`, `dealloc`, `process`, `configure`, `last_error`,
/// `finish`.
#[macro_export]
macro_rules! export_transform {
    ($ty:ty) => {
        $crate::__export_abi!(@v1 $ty, <$ty as ::core::default::Default>::default);
    };
}

/// Exports a stateless `fn(&[u8], &mut Vec<u8>)` with only the v0 ABI
/// (`alloc`, `dealloc`, `process`). Without `configure` the module takes no
/// arguments; without `finish` it emits nothing at end of stream.
#[macro_export]
macro_rules! export_map {
    ($f:expr) => {
        $crate::__export_abi!(@v0 $crate::MapFn, || $crate::MapFn($f));
    };
}

/// Exports a stateless in-place `fn(&mut [u8])` (same-length output) with
/// only the v0 ABI. The host's input buffer is returned as the output, so
/// no copy is made: the fastest shape for byte-wise maps.
#[macro_export]
macro_rules! export_map_in_place {
    ($f:expr) => {
        $crate::__export_abi!(@v0 $crate::MapInPlaceFn, || $crate::MapInPlaceFn($f));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_abi {
    (@v0 $ty:ty, $make:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __space_guest_exports {
            #[allow(unused_imports)]
            use super::*;
            $crate::__export_abi!(@common $ty, $make);
        }
    };
    (@v1 $ty:ty, $make:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __space_guest_exports {
            #[allow(unused_imports)]
            use super::*;
            $crate::__export_abi!(@common $ty, $make);

            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn configure(ptr: i32, len: i32) -> i32 {
                $crate::rt::configure(&SLOT, ptr as u32 as usize as *mut u8, len as u32 as usize)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn last_error() -> i64 {
                unsafe { $crate::rt::pack($crate::rt::last_error(&SLOT)) }
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn finish() -> i64 {
                unsafe { $crate::rt::pack($crate::rt::finish(&SLOT)) }
            }
        }
    };
    (@common $ty:ty, $make:expr) => {
        static SLOT: $crate::rt::Slot<$ty> = $crate::rt::Slot::new($make);

        #[unsafe(no_mangle)]
        pub extern "C" fn alloc(len: i32) -> i32 {
            $crate::rt::alloc(len as u32 as usize) as usize as i32
        }

        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn dealloc(ptr: i32, len: i32) {
            $crate::rt::dealloc(&SLOT, ptr as u32 as usize as *mut u8, len as u32 as usize)
        }

        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn process(ptr: i32, len: i32) -> i64 {
            $crate::rt::pack($crate::rt::process(
                &SLOT,
                ptr as u32 as usize as *mut u8,
                len as u32 as usize,
            ))
        }
    };
}
