//! Native test harness that replays the host's call sequence.
//!
//! Transforms are tested on the build machine (no wasm runtime needed) but
//! through the same [`crate::rt`] code the module runs: `alloc` + copy +
//! `process` + copy out + `dealloc` per piece, with `configure` first and
//! `finish` last. [`assert_split_invariant`] checks the property every
//! streaming transform must have: the output does not depend on where the
//! host happens to cut the input into pieces.

use crate::{rt, Args, Transform};

/// Runs `pieces` through a fresh instance built by `make`, exactly as the
/// host would. Returns the concatenated output, or the `last_error` message
/// if `configure` rejected `args`.
pub fn run_with<T: Transform>(
    make: fn() -> T,
    args: &[(&str, &str)],
    pieces: &[&[u8]],
) -> Result<Vec<u8>, String> {
    let slot = rt::Slot::new(make);
    let mut out = Vec::new();
    // SAFETY: single-threaded use of a local slot with buffers from rt::alloc.
    unsafe {
        let block = Args::encode(args);
        let p = rt::alloc(block.len());
        copy_in(p, &block);
        let rc = rt::configure(&slot, p, block.len());
        rt::dealloc(&slot, p, block.len());
        if rc != 0 {
            let (ptr, len) = rt::last_error(&slot);
            return Err(String::from_utf8_lossy(copy_out(ptr, len)).into_owned());
        }
        for piece in pieces {
            let p = rt::alloc(piece.len());
            copy_in(p, piece);
            let (optr, olen) = rt::process(&slot, p, piece.len());
            out.extend_from_slice(copy_out(optr, olen));
            rt::dealloc(&slot, p, piece.len());
            if olen > 0 && !std::ptr::eq(optr, p) {
                rt::dealloc(&slot, optr as *mut u8, olen);
            }
        }
        let (ptr, len) = rt::finish(&slot);
        out.extend_from_slice(copy_out(ptr, len));
        if len > 0 {
            rt::dealloc(&slot, ptr as *mut u8, len);
        }
    }
    Ok(out)
}

/// [`run_with`] for a `Default` transform.
pub fn run<T: Transform + Default>(
    args: &[(&str, &str)],
    pieces: &[&[u8]],
) -> Result<Vec<u8>, String> {
    run_with(T::default, args, pieces)
}

/// Runs `input` whole, then split in many ways, and asserts every split
/// yields identical output. Returns the whole-input output.
///
/// Splits tried: every single cut point (for inputs up to 4 KiB; sampled
/// above), every pair of cuts for inputs up to 64 bytes, one-byte pieces,
/// and a batch of pseudo-random multi-piece splits.
pub fn assert_split_invariant<T: Transform>(
    make: fn() -> T,
    args: &[(&str, &str)],
    input: &[u8],
) -> Vec<u8> {
    let whole = run_with(make, args, &[input]).expect("configure failed");
    let check = |pieces: &[&[u8]]| {
        let got = run_with(make, args, pieces).expect("configure failed");
        if got != whole {
            let cuts: Vec<usize> = pieces
                .iter()
                .scan(0, |pos, p| {
                    *pos += p.len();
                    Some(*pos)
                })
                .collect();
            panic!(
                "output depends on piece boundaries (cuts at {cuts:?})\n whole: {:?}\n split: {:?}",
                String::from_utf8_lossy(&whole),
                String::from_utf8_lossy(&got)
            );
        }
    };
    let n = input.len();
    let step = (n / 4096).max(1);
    for cut in (0..=n).step_by(step) {
        check(&[&input[..cut], &input[cut..]]);
    }
    if n <= 64 {
        for a in 0..=n {
            for b in a..=n {
                check(&[&input[..a], &input[a..b], &input[b..]]);
            }
        }
    }
    if n <= 8192 {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        check(&bytes);
    }
    let mut rng = Lcg(0x5eed_u64 ^ n as u64);
    for _ in 0..50 {
        let mut pieces = Vec::new();
        let mut pos = 0;
        while pos < n {
            let max = if rng.next_u64() % 4 == 0 { 3 } else { 97 };
            let len = (rng.next_u64() as usize % max + 1).min(n - pos);
            pieces.push(&input[pos..pos + len]);
            pos += len;
        }
        check(&pieces);
    }
    whole
}

/// Tiny deterministic PRNG so tests need no dependencies and are repeatable.
pub struct Lcg(pub u64);

impl Lcg {
    /// Next pseudo-random value (upper bits of a 64-bit LCG).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

unsafe fn copy_in(dst: *mut u8, src: &[u8]) {
    if !src.is_empty() {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
    }
}

unsafe fn copy_out<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapFn;

    /// Stateful transform exercising every hook: counts bytes, doubles them
    /// in `process`, reports the count at finish.
    #[derive(Default)]
    struct Probe {
        seen: usize,
        prefix: String,
    }

    impl Transform for Probe {
        fn configure(&mut self, args: &Args) -> Result<(), String> {
            args.allow_only(&["prefix"])?;
            self.prefix = args.get("prefix").unwrap_or("").to_string();
            Ok(())
        }
        fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
            self.seen += input.len();
            for &b in input {
                out.extend_from_slice(&[b, b]);
            }
        }
        fn finish(&mut self, out: &mut Vec<u8>) {
            out.extend_from_slice(format!("|{}{}", self.prefix, self.seen).as_bytes());
        }
    }

    #[test]
    fn full_call_sequence() {
        let out = run::<Probe>(&[("prefix", "n=")], &[b"ab", b"", b"c"]).unwrap();
        assert_eq!(out, b"aabbcc|n=3");
    }

    #[test]
    fn configure_rejection_reported() {
        let err = run::<Probe>(&[("bogus", "1")], &[b"x"]).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn default_configure_rejects_arguments() {
        fn id(i: &[u8], o: &mut Vec<u8>) {
            o.extend_from_slice(i)
        }
        assert!(run_with(|| MapFn(id), &[("x", "1")], &[]).is_err());
        assert_eq!(run_with(|| MapFn(id), &[], &[b"q", b"r"]).unwrap(), b"qr");
    }

    #[test]
    fn in_place_shrinking_output() {
        /// Drops every other byte, in place.
        #[derive(Default)]
        struct Halve;
        impl Transform for Halve {
            fn process_in_place(&mut self, d: &mut [u8]) -> Option<usize> {
                let n = d.len().div_ceil(2);
                for i in 0..n {
                    d[i] = d[2 * i];
                }
                Some(n)
            }
            fn process(&mut self, _: &[u8], _: &mut Vec<u8>) {
                unreachable!()
            }
        }
        assert_eq!(run::<Halve>(&[], &[b"aXbYc", b"dZ"]).unwrap(), b"abcd");
    }

    #[test]
    fn split_invariance_harness() {
        let out = assert_split_invariant(Probe::default, &[], b"hello");
        assert_eq!(out, b"hheelllloo|5");
    }
}
