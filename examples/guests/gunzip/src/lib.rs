//! `gunzip`: decompresses a gzip (RFC 1952) stream.
//!
//! Handles multi-member files (as written by `cat a.gz b.gz`), all optional
//! header fields (FEXTRA, FNAME, FCOMMENT, FHCRC), and checks each member's
//! CRC-32 and length. Inflate is `miniz_oxide`'s streaming decoder, which
//! keeps its 32 KiB window between pieces, so a piece boundary may fall
//! anywhere, including inside the header or trailer. Takes no arguments.
//!
//! Corrupt or truncated input cannot be reported through `process`, so the
//! module panics, which traps, and the host fails the read. Silently emitting
//! partial or garbage data would be worse. Empty input decodes to empty
//! output.
//!
//! Memory: the inflate state is about 40 KiB. A piece's output is returned
//! in one buffer, so a highly compressible piece needs memory for all of its
//! decompressed bytes. Use pieces small enough for the memory cap.

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
use space_guest::Transform;

/// Decoder position within the current gzip member.
enum Phase {
    /// Collecting header bytes (kept in `Gunzip::pending`).
    Header,
    /// Inflating the deflate body.
    Body,
    /// Collecting the 8-byte CRC-32/ISIZE trailer (in `pending`).
    Trailer,
}

/// Streaming gzip decoder state for one stream.
pub struct Gunzip {
    phase: Phase,
    /// Partial header or trailer bytes split across pieces.
    pending: Vec<u8>,
    inflater: Box<InflateState>,
    crc: u32,
    size: u32,
}

impl Default for Gunzip {
    fn default() -> Self {
        Self {
            phase: Phase::Header,
            pending: Vec::new(),
            inflater: InflateState::new_boxed(DataFormat::Raw),
            crc: 0,
            size: 0,
        }
    }
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Length of the complete header at the start of `h`, `None` if more bytes
/// are needed. Panics if `h` cannot be a gzip header.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 10 {
        if h.len() >= 2 {
            assert!(h[..2] == [0x1f, 0x8b], "gunzip: not gzip data (bad magic)");
        }
        return None;
    }
    assert!(h[..2] == [0x1f, 0x8b], "gunzip: not gzip data (bad magic)");
    assert!(h[2] == 8, "gunzip: unsupported compression method {}", h[2]);
    let flags = h[3];
    assert!(flags & 0xe0 == 0, "gunzip: reserved header flags set");
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        let xlen = usize::from(u16::from_le_bytes([*h.get(pos)?, *h.get(pos + 1)?]));
        pos += 2 + xlen;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            pos += h.get(pos..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    (h.len() >= pos).then_some(pos)
}

/// CRC-32 (IEEE, reflected), table-driven; the table is built at compile
/// time so the module has no start-up cost.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Output space offered to the inflater per call.
const CHUNK: usize = 32 * 1024;

impl Gunzip {
    /// Inflates from `input` until it is used up or the member ends;
    /// returns the number of input bytes consumed.
    fn inflate_body(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut consumed = 0;
        loop {
            let start = out.len();
            out.resize(start + CHUNK, 0);
            let r = inflate(
                &mut self.inflater,
                &input[consumed..],
                &mut out[start..],
                MZFlush::None,
            );
            out.truncate(start + r.bytes_written);
            consumed += r.bytes_consumed;
            self.crc = crc32_update(self.crc, &out[start..]);
            self.size = self.size.wrapping_add(r.bytes_written as u32);
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.phase = Phase::Trailer;
                    return consumed;
                }
                // Output space full: there may be more pending output.
                Ok(_) if r.bytes_written == CHUNK => continue,
                // Input used up, or no progress: wait for the next piece.
                Ok(_) if consumed == input.len() => return consumed,
                Ok(_) if r.bytes_consumed == 0 && r.bytes_written == 0 => return consumed,
                Ok(_) => continue,
                // No progress possible without more input.
                Err(MZError::Buf) => return consumed,
                Err(e) => panic!("gunzip: corrupt deflate data ({e:?})"),
            }
        }
    }
}

impl Transform for Gunzip {
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while !rest.is_empty() {
            match self.phase {
                Phase::Header => {
                    // Headers are short; buffering a copy keeps the parser
                    // simple for headers split across pieces.
                    let before = self.pending.len();
                    self.pending.extend_from_slice(rest);
                    match header_len(&self.pending) {
                        None => return,
                        Some(n) => {
                            rest = &rest[n - before..];
                            self.pending.clear();
                            self.inflater
                                .reset_as(miniz_oxide::inflate::stream::MinReset);
                            self.crc = 0;
                            self.size = 0;
                            self.phase = Phase::Body;
                        }
                    }
                }
                Phase::Body => {
                    let n = self.inflate_body(rest, out);
                    // Input left but none taken and the member not over:
                    // the decoder is stuck; fail rather than spin.
                    assert!(
                        n > 0 || !matches!(self.phase, Phase::Body),
                        "gunzip: corrupt deflate data (no progress)"
                    );
                    rest = &rest[n..];
                }
                Phase::Trailer => {
                    let need = 8 - self.pending.len();
                    let take = need.min(rest.len());
                    self.pending.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.pending.len() == 8 {
                        let t = &self.pending;
                        let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                        assert!(crc == self.crc, "gunzip: CRC-32 mismatch");
                        assert!(size == self.size, "gunzip: length mismatch");
                        self.pending.clear();
                        self.phase = Phase::Header;
                    }
                }
            }
        }
    }

    fn finish(&mut self, _out: &mut Vec<u8>) {
        let complete = matches!(self.phase, Phase::Header) && self.pending.is_empty();
        assert!(complete, "gunzip: truncated gzip data");
    }
}

space_guest::export_transform!(Gunzip);

#[cfg(test)]
mod tests {
    use super::*;
    use space_guest::testing::{assert_split_invariant, run, Lcg};

    /// Builds a gzip member around a raw deflate stream.
    fn gzip(data: &[u8], flags: u8, level: u8) -> Vec<u8> {
        let mut g = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3];
        if flags & FEXTRA != 0 {
            g.extend_from_slice(&[4, 0, b'x', b'y', 0, 0]);
        }
        if flags & FNAME != 0 {
            g.extend_from_slice(b"name.txt\0");
        }
        if flags & FCOMMENT != 0 {
            g.extend_from_slice(b"a comment\0");
        }
        if flags & FHCRC != 0 {
            g.extend_from_slice(&[0, 0]);
        }
        g.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, level));
        g.extend_from_slice(&crc32_update(0, data).to_le_bytes());
        g.extend_from_slice(&(data.len() as u32).to_le_bytes());
        g
    }

    fn sample(n: usize) -> Vec<u8> {
        let mut rng = Lcg(9);
        (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    (rng.next_u64() % 256) as u8
                } else {
                    b"abcab"[i % 5]
                }
            })
            .collect()
    }

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32_update(0, b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn round_trips_with_every_header_field() {
        let data = sample(3000);
        for flags in [0, FEXTRA | FNAME | FCOMMENT | FHCRC, FNAME] {
            let gz = gzip(&data, flags, 6);
            assert_eq!(assert_split_invariant(Gunzip::default, &[], &gz), data);
        }
    }

    #[test]
    fn multi_member_and_stored_blocks() {
        let a = sample(5000);
        let mut gz = gzip(&a, 0, 0);
        gz.extend(gzip(b"", 0, 6));
        gz.extend(gzip(b"tail", FNAME, 9));
        let mut want = a.clone();
        want.extend_from_slice(b"tail");
        assert_eq!(assert_split_invariant(Gunzip::default, &[], &gz), want);
        assert_eq!(run::<Gunzip>(&[], &[]).unwrap(), b"");
    }

    #[test]
    fn large_output_from_small_input() {
        let data = vec![b'z'; 1 << 20];
        let gz = gzip(&data, 0, 9);
        assert!(gz.len() < 4096);
        assert_eq!(run::<Gunzip>(&[], &[&gz]).unwrap(), data);
    }

    #[test]
    #[should_panic(expected = "CRC-32 mismatch")]
    fn bad_crc_traps() {
        let mut gz = gzip(b"hello", 0, 6);
        let n = gz.len();
        gz[n - 8] ^= 1;
        let _ = run::<Gunzip>(&[], &[&gz]);
    }

    #[test]
    #[should_panic(expected = "truncated")]
    fn truncation_traps() {
        let gz = gzip(&sample(1000), 0, 6);
        let _ = run::<Gunzip>(&[], &[&gz[..gz.len() - 3]]);
    }

    #[test]
    #[should_panic(expected = "not gzip")]
    fn non_gzip_traps() {
        let _ = run::<Gunzip>(&[], &[b"plain text"]);
    }
}
