//! `append_bang`: the seed example. Passes data through unchanged and emits
//! a single `!` at end of stream, so `hello` becomes `hello!`.
//!
//! Small as it is, it exercises the whole v1 ABI: `configure` (no arguments
//! accepted), in-place `process`, and a non-empty `finish` tail, which is why
//! the engine's own tests use it.

use space_guest::Transform;

/// Stateless apart from the end-of-stream marker.
#[derive(Default)]
pub struct AppendBang;

impl Transform for AppendBang {
    fn process_in_place(&mut self, data: &mut [u8]) -> Option<usize> {
        // Pass-through: return the host's buffer untouched, no copy.
        Some(data.len())
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(input);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        out.push(b'!');
    }
}

space_guest::export_transform!(AppendBang);

#[cfg(test)]
mod tests {
    use super::AppendBang;
    use space_guest::testing::{assert_split_invariant, run};

    #[test]
    fn appends_bang() {
        assert_eq!(run::<AppendBang>(&[], &[b"hello"]).unwrap(), b"hello!");
        assert_eq!(run::<AppendBang>(&[], &[b"hel", b"lo"]).unwrap(), b"hello!");
        assert_eq!(run::<AppendBang>(&[], &[]).unwrap(), b"!");
        assert_eq!(
            assert_split_invariant(AppendBang::default, &[], b"abc"),
            b"abc!"
        );
    }

    #[test]
    fn rejects_arguments() {
        let err = run::<AppendBang>(&[("loud", "true")], &[]).unwrap_err();
        assert!(err.contains("loud"), "{err}");
    }
}
