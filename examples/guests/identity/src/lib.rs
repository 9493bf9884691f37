//! `identity`: emits every piece unchanged.
//!
//! Hands the host's input buffer straight back (in place), so it measures the
//! pure per-piece overhead of the transform engine: no copy inside the guest,
//! no extra allocation. Exports the v0 ABI only (takes no arguments).

/// Leaves `data` as is; the SDK returns the input buffer as the output.
pub fn identity(data: &mut [u8]) {
    let _ = data;
}

space_guest::export_map_in_place!(identity);

#[cfg(test)]
mod tests {
    use space_guest::testing::{assert_split_invariant, run_with};
    use space_guest::MapInPlaceFn;

    #[test]
    fn passes_bytes_through() {
        let input: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let out = assert_split_invariant(|| MapInPlaceFn(super::identity), &[], &input);
        assert_eq!(out, input);
        assert_eq!(
            run_with(|| MapInPlaceFn(super::identity), &[], &[]).unwrap(),
            b""
        );
    }
}
