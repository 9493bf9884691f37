//! `csv2jsonl`: converts CSV (RFC 4180) to JSON Lines.
//!
//! The first record is the header; every later record becomes one JSON
//! object `{"header1":"value1",...}` followed by `\n`, keys in column order.
//!
//! Argument: `delimiter` (optional, one ASCII character other than `"`, CR or
//! LF; default `,`). A literal tab works; so does the word `tab`, because a
//! raw tab is awkward to write in a YAML policy.
//!
//! Parsing follows RFC 4180 (quoted fields, `""` as an escaped quote,
//! delimiters and line breaks inside quotes) and is lenient where the RFC is
//! silent, like Python's `csv` module:
//! * records end at LF, CRLF or a lone CR;
//! * completely empty lines are skipped;
//! * a `"` inside an unquoted field is literal, and text after a closing
//!   quote is appended to the field;
//! * an unterminated quoted field at end of input ends there.
//!
//! A record with fewer fields than the header gives `null` for the missing
//! columns; extra fields get the keys `_N` (N = 1-based column number), so no
//! data is dropped. Values are always JSON strings; bytes that are not valid
//! UTF-8 become U+FFFD. A record is emitted once its terminator arrives, so
//! the held-back state is at most one record.

use space_guest::{Args, Transform};

/// Where the parser is within the current field.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// At the start of a field (nothing consumed yet).
    #[default]
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just saw a `"` inside a quoted field: an escaped quote or the end.
    QuoteInQuoted,
}

/// Streaming CSV-to-JSONL converter state for one stream.
pub struct Csv2Jsonl {
    delimiter: u8,
    state: State,
    /// A CR ended the last record; swallow an immediately following LF.
    after_cr: bool,
    /// Bytes of the current record's fields, back to back.
    fields: Vec<u8>,
    /// End offset in `fields` of each completed field of the current record.
    ends: Vec<usize>,
    /// Whether the current record has consumed any byte (empty lines are
    /// skipped, but `""` or `,` are records).
    record_started: bool,
    /// JSON-encoded keys (`"name":`), built once from the header record.
    keys: Option<Vec<Vec<u8>>>,
}

impl Default for Csv2Jsonl {
    fn default() -> Self {
        Self {
            delimiter: b',',
            state: State::FieldStart,
            after_cr: false,
            fields: Vec::new(),
            ends: Vec::new(),
            record_started: false,
            keys: None,
        }
    }
}

impl Csv2Jsonl {
    fn end_field(&mut self) {
        self.ends.push(self.fields.len());
        self.state = State::FieldStart;
    }

    /// Completes the current record: the header is remembered, any other
    /// record is written to `out` as a JSON object.
    fn end_record(&mut self, out: &mut Vec<u8>) {
        if !self.record_started {
            // Empty line (or the LF of a CRLF pair).
            self.state = State::FieldStart;
            return;
        }
        self.end_field();
        let mut start = 0;
        let values = self.ends.iter().map(|&end| {
            let v = &self.fields[start..end];
            start = end;
            v
        });
        match &self.keys {
            None => {
                let keys = values
                    .map(|name| {
                        let mut k = Vec::with_capacity(name.len() + 3);
                        json_string(name, &mut k);
                        k.push(b':');
                        k
                    })
                    .collect();
                self.keys = Some(keys);
            }
            Some(keys) => {
                out.push(b'{');
                let mut count = 0;
                for (i, value) in values.enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match keys.get(i) {
                        Some(k) => out.extend_from_slice(k),
                        None => {
                            out.extend_from_slice(format!("\"_{}\":", i + 1).as_bytes());
                        }
                    }
                    json_string(value, out);
                    count += 1;
                }
                for key in keys.iter().skip(count) {
                    if count > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(key);
                    out.extend_from_slice(b"null");
                    count += 1;
                }
                out.extend_from_slice(b"}\n");
            }
        }
        self.fields.clear();
        self.ends.clear();
        self.record_started = false;
        self.state = State::FieldStart;
    }
}

/// Appends `bytes` as a JSON string literal (with quotes), escaping `"`,
/// `\` and control characters and replacing invalid UTF-8 with U+FFFD.
/// Called on whole fields only, so a multibyte character split across
/// pieces is already reassembled by the time it is validated.
fn json_string(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let text = String::from_utf8_lossy(bytes);
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

impl Transform for Csv2Jsonl {
    fn configure(&mut self, args: &Args) -> Result<(), String> {
        args.allow_only(&["delimiter"])?;
        if let Some(d) = args.get("delimiter") {
            self.delimiter = match d {
                "tab" | "\\t" => b'\t',
                _ if d.len() == 1 && !matches!(d.as_bytes()[0], b'"' | b'\r' | b'\n') => d.as_bytes()[0],
                _ => {
                    return Err(format!(
                        "argument `delimiter`: expected one ASCII character other than a quote or line break, got `{d}`"
                    ))
                }
            };
        }
        Ok(())
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // JSON is somewhat larger than CSV; reserving avoids repeated
        // doubling of the output buffer on big pieces.
        out.reserve(input.len() + input.len() / 2);
        let delim = self.delimiter;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match self.state {
                State::FieldStart | State::Unquoted => {
                    if b == delim {
                        self.record_started = true;
                        self.end_field();
                    } else if b == b'\n' || b == b'\r' {
                        self.after_cr = b == b'\r';
                        self.end_record(out);
                    } else if b == b'"' && self.state == State::FieldStart {
                        self.record_started = true;
                        self.state = State::Quoted;
                    } else {
                        self.record_started = true;
                        self.state = State::Unquoted;
                        // Copy the run of plain bytes in one go: the
                        // per-byte state machine is the slow path.
                        let run_end = input[i..]
                            .iter()
                            .position(|&c| c == delim || c == b'\n' || c == b'\r')
                            .map_or(input.len(), |p| i + p);
                        self.fields.push(b);
                        self.fields.extend_from_slice(&input[i..run_end]);
                        i = run_end;
                    }
                }
                State::Quoted => {
                    if b == b'"' {
                        self.state = State::QuoteInQuoted;
                    } else {
                        let run_end = input[i..]
                            .iter()
                            .position(|&c| c == b'"')
                            .map_or(input.len(), |p| i + p);
                        self.fields.push(b);
                        self.fields.extend_from_slice(&input[i..run_end]);
                        i = run_end;
                    }
                }
                State::QuoteInQuoted => {
                    if b == b'"' {
                        self.fields.push(b'"');
                        self.state = State::Quoted;
                    } else if b == delim {
                        self.end_field();
                    } else if b == b'\n' || b == b'\r' {
                        self.after_cr = b == b'\r';
                        self.end_record(out);
                    } else {
                        self.fields.push(b);
                        self.state = State::Unquoted;
                    }
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.end_record(out);
    }
}

space_guest::export_transform!(Csv2Jsonl);

#[cfg(test)]
mod tests {
    use super::*;
    use space_guest::testing::{assert_split_invariant, run};

    fn convert(args: &[(&str, &str)], csv: &str) -> String {
        String::from_utf8(assert_split_invariant(
            Csv2Jsonl::default,
            args,
            csv.as_bytes(),
        ))
        .unwrap()
    }

    #[test]
    fn basic_records() {
        assert_eq!(
            convert(&[], "name,age\nann,31\nbob,42\n"),
            "{\"name\":\"ann\",\"age\":\"31\"}\n{\"name\":\"bob\",\"age\":\"42\"}\n"
        );
    }

    #[test]
    fn quoting_rules() {
        let csv = "a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",\"multi\r\nline\"\r\n\"\",,\"\"\"\"\r\n";
        assert_eq!(
            convert(&[], csv),
            "{\"a\":\"x, y\",\"b\":\"say \\\"hi\\\"\",\"c\":\"multi\\r\\nline\"}\n\
             {\"a\":\"\",\"b\":\"\",\"c\":\"\\\"\"}\n"
        );
    }

    #[test]
    fn json_escaping_and_utf8() {
        let csv = "k\n\"back\\slash\ttab\u{1}\"\nh\u{e9}llo \u{1F600}\nX\n";
        let mut bytes = csv.as_bytes().to_vec();
        // Replace the last line with an invalid UTF-8 byte.
        let n = bytes.len();
        bytes[n - 2] = 0xff;
        let out =
            String::from_utf8(assert_split_invariant(Csv2Jsonl::default, &[], &bytes)).unwrap();
        assert_eq!(
            out,
            "{\"k\":\"back\\\\slash\\ttab\\u0001\"}\n{\"k\":\"h\u{e9}llo \u{1F600}\"}\n{\"k\":\"\u{FFFD}\"}\n"
        );
    }

    #[test]
    fn ragged_records_blank_lines_and_no_final_newline() {
        assert_eq!(
            convert(&[], "a,b\n\n1\n1,2,3\n\n,\nlast,row"),
            "{\"a\":\"1\",\"b\":null}\n{\"a\":\"1\",\"b\":\"2\",\"_3\":\"3\"}\n\
             {\"a\":\"\",\"b\":\"\"}\n{\"a\":\"last\",\"b\":\"row\"}\n"
        );
    }

    #[test]
    fn lenient_quotes_and_line_endings() {
        assert_eq!(
            convert(&[], "a,b\rx\"y,\"q\"z\r\"open"),
            "{\"a\":\"x\\\"y\",\"b\":\"qz\"}\n{\"a\":\"open\",\"b\":null}\n"
        );
    }

    #[test]
    fn custom_delimiters() {
        assert_eq!(
            convert(&[("delimiter", ";")], "a;b\n1,5;2\n"),
            "{\"a\":\"1,5\",\"b\":\"2\"}\n"
        );
        assert_eq!(
            convert(&[("delimiter", "tab")], "a\tb\n1\t2\n"),
            "{\"a\":\"1\",\"b\":\"2\"}\n"
        );
        assert_eq!(
            convert(&[("delimiter", "\t")], "a\tb\n1\t2\n"),
            "{\"a\":\"1\",\"b\":\"2\"}\n"
        );
        for bad in ["", "ab", "\"", "\n", "é"] {
            assert!(
                run::<Csv2Jsonl>(&[("delimiter", bad)], &[]).is_err(),
                "{bad:?}"
            );
        }
        assert!(run::<Csv2Jsonl>(&[("sep", ",")], &[]).is_err());
    }

    #[test]
    fn header_only_or_empty() {
        assert_eq!(convert(&[], "a,b\n"), "");
        assert_eq!(convert(&[], ""), "");
    }

    #[test]
    fn larger_table_split_everywhere() {
        let mut csv = String::from("id,text,note\n");
        let mut want = String::new();
        for i in 0..120 {
            let text = format!("v{i}, \"q\"\nnext");
            csv.push_str(&format!("{i},\"{}\",n{i}\r\n", text.replace('"', "\"\"")));
            want.push_str(&format!(
                "{{\"id\":\"{i}\",\"text\":\"{}\",\"note\":\"n{i}\"}}\n",
                text.replace('"', "\\\"").replace('\n', "\\n")
            ));
        }
        assert_eq!(convert(&[], &csv), want);
    }
}
