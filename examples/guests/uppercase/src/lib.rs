//! `uppercase`: ASCII-uppercases every piece in place.
//!
//! Benchmarked against native code, so the loop is written to be
//! branch-free: with `+simd128` LLVM turns it into 16-bytes-per-instruction
//! `v128` compare/subtract code. Non-ASCII bytes (including UTF-8
//! continuation bytes) are never in `a..=z`, so UTF-8 text stays valid.
//! Exports the v0 ABI only (takes no arguments).

/// Uppercases ASCII letters in `data`.
///
/// `b - 32 * is_lower` rather than `if`/`make_ascii_uppercase` keeps the body
/// a pure select-free arithmetic map, which is what the auto-vectorizer
/// recognizes reliably.
pub fn uppercase(data: &mut [u8]) {
    for b in data.iter_mut() {
        *b -= 32 * ((b'a' <= *b && *b <= b'z') as u8);
    }
}

space_guest::export_map_in_place!(uppercase);

#[cfg(test)]
mod tests {
    use super::uppercase;
    use space_guest::testing::{assert_split_invariant, run_with};
    use space_guest::MapInPlaceFn;

    #[test]
    fn matches_std_for_every_byte() {
        let mut all: Vec<u8> = (0..=255u8).collect();
        let expected: Vec<u8> = all.iter().map(u8::to_ascii_uppercase).collect();
        uppercase(&mut all);
        assert_eq!(all, expected);
    }

    #[test]
    fn streams_and_keeps_utf8() {
        let input = "hello, Wörld! ßtraße 123 zz{`".repeat(50);
        let out = assert_split_invariant(|| MapInPlaceFn(uppercase), &[], input.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), input.to_ascii_uppercase());
        assert_eq!(
            run_with(|| MapInPlaceFn(uppercase), &[], &[b"ab", b"c"]).unwrap(),
            b"ABC"
        );
    }
}
