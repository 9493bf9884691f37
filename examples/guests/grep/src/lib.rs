//! `grep`: keeps (or with `invert=true`, drops) the lines containing a
//! substring.
//!
//! Arguments:
//! * `pattern` (required, non-empty): the substring to look for. Plain bytes,
//!   not a regex.
//! * `invert` (optional bool): emit the lines that do *not* match.
//! * `ignore_case` (optional bool): ASCII case-insensitive matching
//!   (non-ASCII bytes must match exactly).
//!
//! Lines end at `\n`; the newline is emitted with its line. A line cut by a
//! piece boundary is held back until its newline arrives; an unterminated
//! last line is judged and emitted by `finish`, without adding a newline.
//! Held-back data is a single line, so memory use is bounded by the longest
//! line, not the capsule.

use space_guest::{Args, Transform};

/// Line filter state for one stream.
#[derive(Default)]
pub struct Grep {
    /// Pattern, lowercased when `ignore_case` is set.
    pattern: Vec<u8>,
    invert: bool,
    ignore_case: bool,
    /// Start of a line whose newline has not arrived yet.
    partial: Vec<u8>,
}

impl Grep {
    fn matches(&self, line: &[u8]) -> bool {
        contains(line, &self.pattern, self.ignore_case) != self.invert
    }
}

/// Substring test. Scans for the pattern's first byte (a tight loop LLVM
/// vectorizes well) and only then compares the rest, which is fast for the
/// typical case of a rare first byte.
fn contains(hay: &[u8], needle: &[u8], ignore_case: bool) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    let last_start = hay.len() - needle.len();
    if ignore_case {
        // `first` is already lowercase (see configure).
        (0..=last_start).any(|i| {
            hay[i].to_ascii_lowercase() == first
                && hay[i + 1..i + needle.len()].eq_ignore_ascii_case(rest)
        })
    } else {
        let mut i = 0;
        while i <= last_start {
            match hay[i..=last_start].iter().position(|&b| b == first) {
                None => return false,
                Some(off) => {
                    i += off;
                    if &hay[i + 1..i + needle.len()] == rest {
                        return true;
                    }
                    i += 1;
                }
            }
        }
        false
    }
}

impl Transform for Grep {
    fn configure(&mut self, args: &Args) -> Result<(), String> {
        args.allow_only(&["ignore_case", "invert", "pattern"])?;
        let pattern = args.require("pattern")?;
        if pattern.is_empty() {
            return Err("argument `pattern` must not be empty".into());
        }
        self.invert = args.flag("invert")?;
        self.ignore_case = args.flag("ignore_case")?;
        self.pattern = if self.ignore_case {
            pattern.to_ascii_lowercase().into_bytes()
        } else {
            pattern.as_bytes().to_vec()
        };
        Ok(())
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.pattern.is_empty() {
            // `configure` was never called: there is nothing to filter by,
            // and guessing would silently drop or leak data. Pass through.
            out.extend_from_slice(input);
            return;
        }
        let mut rest = input;
        if !self.partial.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                None => {
                    self.partial.extend_from_slice(rest);
                    return;
                }
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&rest[..=nl]);
                    if self.matches(&line[..line.len() - 1]) {
                        out.extend_from_slice(&line);
                    }
                    // Reuse the allocation for the next partial line.
                    line.clear();
                    self.partial = line;
                    rest = &rest[nl + 1..];
                }
            }
        }
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.matches(&rest[..nl]) {
                out.extend_from_slice(&rest[..=nl]);
            }
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.partial.is_empty() && (self.pattern.is_empty() || self.matches(&self.partial)) {
            out.extend_from_slice(&self.partial);
        }
        self.partial = Vec::new();
    }
}

space_guest::export_transform!(Grep);

#[cfg(test)]
mod tests {
    use super::*;
    use space_guest::testing::{assert_split_invariant, run};

    const TEXT: &str = "alpha ERROR one\nbeta ok\ngamma error two\r\n\ndelta Error\nlast ERROR";

    fn grep(args: &[(&str, &str)]) -> String {
        String::from_utf8(assert_split_invariant(Grep::default, args, TEXT.as_bytes())).unwrap()
    }

    #[test]
    fn case_sensitive() {
        assert_eq!(grep(&[("pattern", "ERROR")]), "alpha ERROR one\nlast ERROR");
    }

    #[test]
    fn ignore_case() {
        assert_eq!(
            grep(&[("pattern", "error"), ("ignore_case", "true")]),
            "alpha ERROR one\ngamma error two\r\ndelta Error\nlast ERROR"
        );
    }

    #[test]
    fn invert() {
        assert_eq!(
            grep(&[("pattern", "ERROR"), ("invert", "true")]),
            "beta ok\ngamma error two\r\n\ndelta Error\n"
        );
        assert_eq!(
            grep(&[
                ("pattern", "eRRor"),
                ("invert", "yes"),
                ("ignore_case", "1")
            ]),
            "beta ok\n\n"
        );
    }

    #[test]
    fn pattern_edge_positions() {
        let out = assert_split_invariant(Grep::default, &[("pattern", "ab")], b"ab\nxab\naxb\nab");
        assert_eq!(out, b"ab\nxab\nab");
        let out = assert_split_invariant(Grep::default, &[("pattern", "aab")], b"aaab\naab\naa\n");
        assert_eq!(out, b"aaab\naab\n");
    }

    #[test]
    fn long_lines_across_many_pieces() {
        let mut input = Vec::new();
        for i in 0..300 {
            input.extend_from_slice(format!("line {i} {}\n", "x".repeat(i * 7 % 200)).as_bytes());
        }
        let out = assert_split_invariant(Grep::default, &[("pattern", "7 x")], &input);
        let want: String = String::from_utf8(input)
            .unwrap()
            .lines()
            .filter(|l| l.contains("7 x"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn configuration_errors() {
        assert!(run::<Grep>(&[], &[]).unwrap_err().contains("pattern"));
        assert!(run::<Grep>(&[("pattern", "")], &[])
            .unwrap_err()
            .contains("empty"));
        assert!(run::<Grep>(&[("pattern", "x"), ("invert", "maybe")], &[])
            .unwrap_err()
            .contains("invert"));
        assert!(run::<Grep>(&[("pattern", "x"), ("regex", "1")], &[])
            .unwrap_err()
            .contains("regex"));
    }

    #[test]
    fn contains_agrees_with_naive() {
        let hay = b"abcABCabxaBcab";
        for n in 1..5 {
            for s in 0..=hay.len() - n {
                let needle = &hay[s..s + n];
                for h in 0..hay.len() {
                    let naive = hay[h..].windows(n).any(|w| w == needle);
                    assert_eq!(contains(&hay[h..], needle, false), naive);
                    let lower = needle.to_ascii_lowercase();
                    let naive_ci = hay[h..].windows(n).any(|w| w.eq_ignore_ascii_case(&lower));
                    assert_eq!(contains(&hay[h..], &lower, true), naive_ci);
                }
            }
        }
    }
}
