//! Chunk objects: plaintext ⇄ sealed object bytes (compress, encrypt, id), per docs/FORMAT.md.
//!
//! ```text
//! 0   magic "SPCO"        4
//! 4   version = 1         1
//! 5   flags               1   bit0 zstd, bit1 encrypted, bit2 salted (dedup off)
//! 6   reserved = 0        2
//! 8   plain_len (LE u32)  4
//! 12  salt                16  only if salted
//! ..  nonce               12  only if encrypted
//! ..  payload                 body (zstd frame or raw), AES-256-GCM sealed (+16-byte tag) if encrypted
//! AAD = header bytes before the nonce ‖ chunk id
//! ```
//!
//! Version 2 (format-3 stores, encrypted objects only) seals the payload in segments of
//! 2^k - 16 bytes, each 2^k bytes sealed (k in byte 6), so a small read can authenticate and
//! decrypt only the segments it needs: `header ‖ nonce base ‖ (segment_0 ‖ tag_0) ‖ … ‖ (segment_n-1 ‖ tag_n-1)`, segment i
//! sealed under the base nonce with its last four bytes XORed with i (LE) and AAD = header ‖
//! chunk id ‖ i (LE u32) ‖ n (LE u32). docs/FORMAT.md 4.2.

use std::cell::RefCell;

use rand::RngCore;

use crate::crypto::{DataKeys, NONCE_LEN, TAG_LEN, ct_eq};
use crate::policy::{CompressionAlgorithm, Policy};
use crate::store::{ChunkId, ObjectBytes};

pub const MAGIC: &[u8; 4] = b"SPCO";
pub const VERSION: u8 = 1;
/// Object version with the payload sealed in segments (random reads decrypt only what they
/// need).
pub const VERSION_SEGMENTED: u8 = 2;
/// log2 of the sealed segment size written in version-2 objects: 4 KiB, of which 4080 bytes
/// plaintext and 16 tag. Writers store the segments page-aligned in packs, so a 4 KiB random
/// read reads two whole pages (the most a 4 KiB block cipher file system such as gocryptfs
/// reads), and authenticates 8 KiB instead of a whole ~256 KiB chunk; a whole-chunk decode pays
/// 64 AEAD calls per 256 KiB (benches/primitives.rs).
pub const SEGMENT_SHIFT: u8 = 12;
/// Segment sizes a reader accepts (2^12 to 2^24 bytes).
const SEGMENT_SHIFTS: std::ops::RangeInclusive<u8> = 12..=24;
const FLAG_ZSTD: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;
const FLAG_SALTED: u8 = 4;
const SALT_LEN: usize = 16;
const FIXED_HEADER: usize = 12;

/// How one capsule's chunks are encoded (derived from its policy).
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    pub zstd_level: Option<i32>,
    pub encrypt: bool,
    pub dedup: bool,
    /// Seal encrypted payloads in segments (object version 2; set by the store's format,
    /// not by policies).
    pub segmented: bool,
}

impl From<&Policy> for EncodeSettings {
    fn from(p: &Policy) -> Self {
        EncodeSettings {
            zstd_level: (p.compression.algorithm == CompressionAlgorithm::Zstd)
                .then_some(p.compression.level.0),
            encrypt: p.encryption,
            dedup: p.dedup,
            segmented: false,
        }
    }
}

/// Why a stored object was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error("object header is malformed ({0})")]
    Malformed(&'static str),
    #[error("object format version {0} is not supported")]
    Version(u8),
    #[error("authentication failed: the object was modified or belongs to another key")]
    Auth,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("content does not match its chunk id")]
    IdMismatch,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static PROBE_CTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Identity-domain byte: objects of different encodings never share an id.
fn domain(flags: u8) -> u8 {
    flags & (FLAG_ENCRYPTED | FLAG_SALTED)
}

/// Computes the id a chunk will be stored under (before doing the expensive encoding, so a
/// dedup hit can skip it).
pub fn chunk_id(
    keys: &DataKeys,
    s: EncodeSettings,
    plain: &[u8],
    salt: Option<&[u8; SALT_LEN]>,
) -> ChunkId {
    let flags =
        if s.encrypt { FLAG_ENCRYPTED } else { 0 } | if salt.is_some() { FLAG_SALTED } else { 0 };
    match salt {
        None => ChunkId(keys.chunk_id(domain(flags), plain)),
        Some(salt) => {
            let mut v = Vec::with_capacity(SALT_LEN + plain.len());
            v.extend_from_slice(salt);
            v.extend_from_slice(plain);
            ChunkId(keys.chunk_id(domain(flags), &v))
        }
    }
}

/// A fresh salt for capsules whose policy turns dedup off (so identical chunks get distinct ids).
pub fn new_salt(s: EncodeSettings) -> Option<[u8; SALT_LEN]> {
    (!s.dedup).then(|| {
        let mut salt = [0u8; SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        salt
    })
}

/// Compresses with zstd unless a quick probe says the data is incompressible; returns None to
/// store raw. The probe (first 16 KiB at level 1) keeps incompressible data from paying for a
/// full compression attempt; chunks too small for it (a small file) are probed by the entropy
/// of their bytes instead.
fn maybe_compress(level: i32, plain: &[u8]) -> Option<Vec<u8>> {
    const PROBE: usize = 16 * 1024;
    if plain.len() <= 4 * PROBE && looks_random(plain) {
        return None;
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.as_mut()?;
        if plain.len() > 4 * PROBE {
            let probe_len = PROBE_CTX.with(|p| {
                let mut p = p.borrow_mut();
                if p.is_none() {
                    *p = zstd::bulk::Compressor::new(1).ok();
                }
                p.as_mut()?.compress(&plain[..PROBE]).ok().map(|v| v.len())
            })?;
            if probe_len * 100 > PROBE * 97 {
                return None;
            }
        }
        let out = comp.compress(plain).ok()?;
        (out.len() + out.len() / 64 < plain.len()).then_some(out)
    })
}

/// Whether `data`'s bytes are so evenly spread that no compressor would save the 1.5% a
/// compressed object must (by the Shannon entropy of a byte histogram, as btrfs's compression
/// heuristic judges data):
/// then a small chunk is stored raw without a zstd attempt, which for a 1-4 KiB file cost
/// more than its encryption (11 us, 4% of a small file's create). Sampled in 16 spread-out
/// pieces of at most 256 bytes, so a chunk mixing random and repetitive parts is not judged
/// by its start. The estimate is corrected for the sample size (Miller-Madow), and data
/// with under 512 bytes sampled is never judged random. Structure that a byte histogram does
/// not see (a random block repeated) is missed; for small chunks that costs less than trying.
fn looks_random(data: &[u8]) -> bool {
    const PIECES: usize = 16;
    const PIECE: usize = 256;
    /// Bits per byte above which order-0 coding saves under ~1.2% (and LZ matches are unlikely).
    const RANDOM_BITS: f64 = 7.9;
    let mut histogram = [0u32; 256];
    let mut sampled = 0usize;
    if data.len() <= PIECES * PIECE {
        for &b in data {
            histogram[b as usize] += 1;
        }
        sampled = data.len();
    } else {
        let stride = data.len() / PIECES;
        for i in 0..PIECES {
            for &b in &data[i * stride..i * stride + PIECE] {
                histogram[b as usize] += 1;
            }
            sampled += PIECE;
        }
    }
    if sampled < 512 {
        return false;
    }
    let n = sampled as f64;
    let mut seen = 0u32;
    let mut bits = 0.0f64;
    for &c in &histogram {
        if c > 0 {
            seen += 1;
            let p = c as f64 / n;
            bits -= p * p.log2();
        }
    }
    let corrected = bits + (seen as f64 - 1.0) / (2.0 * n * std::f64::consts::LN_2);
    corrected >= RANDOM_BITS
}

/// Encodes `plain` into object bytes under `id` (from [`chunk_id`] with the same settings/salt).
pub fn encode(
    keys: &DataKeys,
    s: EncodeSettings,
    id: &ChunkId,
    plain: &[u8],
    salt: Option<&[u8; SALT_LEN]>,
) -> Vec<u8> {
    let compressed = s.zstd_level.and_then(|l| maybe_compress(l, plain));
    let mut flags = 0u8;
    if compressed.is_some() {
        flags |= FLAG_ZSTD;
    }
    if s.encrypt {
        flags |= FLAG_ENCRYPTED;
    }
    if salt.is_some() {
        flags |= FLAG_SALTED;
    }
    let segmented = s.encrypt && s.segmented;
    let mut header = Vec::with_capacity(FIXED_HEADER + SALT_LEN);
    header.extend_from_slice(MAGIC);
    header.push(if segmented {
        VERSION_SEGMENTED
    } else {
        VERSION
    });
    header.push(flags);
    header.extend_from_slice(&[if segmented { SEGMENT_SHIFT } else { 0 }, 0]);
    header.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    if let Some(salt) = salt {
        header.extend_from_slice(salt);
    }
    if !s.encrypt {
        header.extend_from_slice(compressed.as_deref().unwrap_or(plain));
        return header;
    }
    let mut aad = header.clone();
    aad.extend_from_slice(&id.0);
    let body: &[u8] = compressed.as_deref().unwrap_or(plain);
    if segmented {
        return seal_segments(keys, header, &aad, body);
    }
    // One buffer: header ‖ nonce ‖ body, sealed in place, then the tag appended.
    let mut out = header;
    let nonce_at = out.len();
    out.reserve(NONCE_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(&[0u8; NONCE_LEN]);
    out.extend_from_slice(body);
    let (nonce, tag) = keys.seal_detached(&aad, &mut out[nonce_at + NONCE_LEN..]);
    out[nonce_at..nonce_at + NONCE_LEN].copy_from_slice(&nonce);
    out.extend_from_slice(&tag);
    out
}

/// The version byte and the reserved bytes: `Some(k)` for a version-2 object sealed in
/// segments of 2^k bytes, `None` for version 1.
fn check_version(object: &[u8]) -> Result<Option<u8>, DecodeError> {
    let flags = object[5];
    if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED | FLAG_SALTED) != 0 || object[7] != 0 {
        return Err(DecodeError::Malformed("unknown flags"));
    }
    match object[4] {
        VERSION if object[6] == 0 => Ok(None),
        VERSION_SEGMENTED if flags & FLAG_ENCRYPTED != 0 && SEGMENT_SHIFTS.contains(&object[6]) => {
            Ok(Some(object[6]))
        }
        VERSION | VERSION_SEGMENTED => Err(DecodeError::Malformed("unknown flags")),
        v => Err(DecodeError::Version(v)),
    }
}

/// Plaintext bytes per segment of a version-2 object with byte 6 = `shift`: each sealed
/// segment (ciphertext and tag) is exactly 2^shift bytes, so segments stored at a page-aligned
/// offset occupy whole pages.
pub const fn segment_plain_len(shift: u8) -> usize {
    (1usize << shift) - TAG_LEN
}

/// Nonce of segment `i`: the object's base nonce with its last four bytes XORed with i.
fn segment_nonce(base: &[u8; NONCE_LEN], i: u32) -> [u8; NONCE_LEN] {
    let mut n = *base;
    for (b, x) in n[NONCE_LEN - 4..].iter_mut().zip(i.to_le_bytes()) {
        *b ^= x;
    }
    n
}

/// Where the sealed segments of a version-2 payload lie (offsets relative to the first one).
#[derive(Debug, Clone, Copy)]
struct Segments {
    /// Plaintext bytes per segment (the last may be shorter).
    len: usize,
    /// Number of segments (at least 1: an empty payload is one empty segment).
    count: u32,
    /// Sealed bytes in all (every segment carries its tag).
    sealed: usize,
}

impl Segments {
    fn new(shift: u8, sealed: usize) -> Result<Segments, DecodeError> {
        let stride = 1usize << shift;
        let len = segment_plain_len(shift);
        let count = sealed.div_ceil(stride).max(1);
        let last = sealed - (count - 1) * stride;
        if last < TAG_LEN {
            return Err(DecodeError::Malformed("truncated segment"));
        }
        let count =
            u32::try_from(count).map_err(|_| DecodeError::Malformed("too many segments"))?;
        Ok(Segments { len, count, sealed })
    }

    /// Sealed bytes (ciphertext ‖ tag) of segment `i`.
    fn stored_range(&self, i: u32) -> std::ops::Range<usize> {
        let stride = self.len + TAG_LEN;
        let start = i as usize * stride;
        start..(start + stride).min(self.sealed)
    }

    /// The per-segment part of the AAD: i and the segment count, so segments cannot be
    /// reordered, dropped or truncated away.
    fn extend_aad(&self, aad: &mut Vec<u8>, i: u32) {
        aad.extend_from_slice(&i.to_le_bytes());
        aad.extend_from_slice(&self.count.to_le_bytes());
    }

    /// Authenticates and decrypts `segments`, whose sealed bytes start at `buf[at..]`, in
    /// place, each plaintext written down over the bytes (tags, header) before it; `buf` ends
    /// up holding exactly their plaintext. `aad` is the object's header ‖ chunk id.
    fn open(
        &self,
        keys: &DataKeys,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
        segments: std::ops::Range<u32>,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<(), DecodeError> {
        let base = self.stored_range(segments.start).start;
        let mut seg_aad = Vec::with_capacity(aad.len() + 8);
        let mut plain_len = 0;
        for i in segments {
            let r = self.stored_range(i);
            let (s, e) = (at + r.start - base, at + r.end - base);
            if e > buf.len() {
                return Err(DecodeError::Malformed("truncated segment"));
            }
            seg_aad.clear();
            seg_aad.extend_from_slice(aad);
            self.extend_aad(&mut seg_aad, i);
            // Decrypted straight to where the plaintext goes: one pass, no move after.
            let n = keys
                .open_within(
                    &segment_nonce(nonce, i),
                    &seg_aad,
                    &mut buf[plain_len..e],
                    s - plain_len,
                )
                .map_err(|_| DecodeError::Auth)?;
            plain_len += n;
        }
        buf.truncate(plain_len);
        Ok(())
    }
}

/// Seals `body` after `header` as version 2: base nonce, then each segment with its tag.
fn seal_segments(keys: &DataKeys, mut out: Vec<u8>, aad: &[u8], body: &[u8]) -> Vec<u8> {
    let len = segment_plain_len(SEGMENT_SHIFT);
    let count = body.len().div_ceil(len).max(1);
    let mut base = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut base);
    out.reserve(NONCE_LEN + body.len() + count * TAG_LEN);
    out.extend_from_slice(&base);
    let layout = Segments {
        len,
        count: count as u32,
        sealed: body.len() + count * TAG_LEN,
    };
    let mut seg_aad = Vec::with_capacity(aad.len() + 8);
    for i in 0..layout.count {
        let plain =
            &body[(i as usize * len).min(body.len())..((i as usize + 1) * len).min(body.len())];
        let at = out.len();
        out.extend_from_slice(plain);
        seg_aad.clear();
        seg_aad.extend_from_slice(aad);
        layout.extend_aad(&mut seg_aad, i);
        let tag = keys.seal_with_nonce(&segment_nonce(&base, i), &seg_aad, &mut out[at..]);
        out.extend_from_slice(&tag);
    }
    out
}

/// Length of a version-2 object's head (header, salt, base nonce: what
/// [`SegmentedObject::parse`] reads); None for other objects.
pub fn segmented_head_len(object: &[u8]) -> Option<usize> {
    if object.len() < FIXED_HEADER || &object[..4] != MAGIC || object[4] != VERSION_SEGMENTED {
        return None;
    }
    Some(header_len(object[5]) + NONCE_LEN).filter(|&n| n <= object.len())
}

/// Length of the header (fixed part and salt) of an object with these flags: where its
/// nonce starts.
fn header_len(flags: u8) -> usize {
    FIXED_HEADER
        + if flags & FLAG_SALTED != 0 {
            SALT_LEN
        } else {
            0
        }
}

/// A version-2 object's header as a partial reader sees it: enough to find, authenticate and
/// decrypt the segments holding a byte range of an uncompressed chunk without reading the
/// rest of the object.
#[derive(Debug, Clone)]
pub struct SegmentedObject {
    aad: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    /// Offset of the first sealed segment in the object.
    sealed_at: usize,
    layout: Segments,
}

impl SegmentedObject {
    /// Bytes of an object's start that [`SegmentedObject::parse`] needs at most.
    pub const HEAD_LEN: usize = FIXED_HEADER + SALT_LEN + NONCE_LEN;

    /// Parses the first bytes of an object of `stored_len` bytes stored under `id`. `None`:
    /// not a version-2 object of an uncompressed payload (read it whole instead).
    pub fn parse(
        id: &ChunkId,
        head: &[u8],
        stored_len: usize,
    ) -> Result<Option<SegmentedObject>, DecodeError> {
        if head.len() < FIXED_HEADER || &head[..4] != MAGIC {
            return Err(DecodeError::Malformed("bad magic or too short"));
        }
        let Some(shift) = check_version(head)? else {
            return Ok(None);
        };
        let flags = head[5];
        if flags & FLAG_ZSTD != 0 {
            return Ok(None);
        }
        let pos = header_len(flags);
        let sealed_at = pos + NONCE_LEN;
        if head.len() < sealed_at || stored_len < sealed_at + TAG_LEN {
            return Err(DecodeError::Malformed("truncated header"));
        }
        let layout = Segments::new(shift, stored_len - sealed_at)?;
        let plain_len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
        if layout.sealed - layout.count as usize * TAG_LEN != plain_len {
            return Err(DecodeError::Malformed("length differs from header"));
        }
        let mut aad = head[..pos].to_vec();
        aad.extend_from_slice(&id.0);
        Ok(Some(SegmentedObject {
            aad,
            nonce: head[pos..sealed_at].try_into().unwrap(),
            sealed_at,
            layout,
        }))
    }

    /// The segments holding plaintext bytes `[offset, offset + len)` (`len` > 0): their
    /// indices and where their sealed bytes lie in the object.
    pub fn span(
        &self,
        offset: usize,
        len: usize,
    ) -> (std::ops::Range<u32>, std::ops::Range<usize>) {
        let first = (offset / self.layout.len) as u32;
        let last = (((offset + len).max(1) - 1) / self.layout.len) as u32;
        let last = last.min(self.layout.count - 1);
        let first = first.min(last);
        let start = self.sealed_at + self.layout.stored_range(first).start;
        let end = self.sealed_at + self.layout.stored_range(last).end;
        (first..last + 1, start..end)
    }

    /// Authenticates and decrypts the sealed bytes of `segments` (as read from [`span`]'s
    /// range) in place; returns their plaintext, which starts at byte `segments.start × 2^k`
    /// of the chunk.
    ///
    /// [`span`]: SegmentedObject::span
    pub fn open(
        &self,
        keys: &DataKeys,
        segments: std::ops::Range<u32>,
        sealed: impl Into<ObjectBytes>,
    ) -> Result<Vec<u8>, DecodeError> {
        let (mut buf, at) = sealed.into().into_parts();
        self.layout
            .open(keys, &self.aad, &self.nonce, segments, &mut buf, at)?;
        Ok(buf)
    }

    /// Plaintext bytes per segment.
    pub fn segment_len(&self) -> usize {
        self.layout.len
    }
}

/// When a reader recomputes the chunk id from the decoded plaintext (docs/FORMAT.md 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdCheck {
    /// Every object (fsck, and stores with `recompute_chunk_ids: true`).
    Always,
    /// Unless the plaintext is exactly bytes the AEAD authenticated under this id (an
    /// encrypted object stored raw): then the tag already proves they are the bytes the
    /// writer sealed, and the writer sealed the bytes it computed the id from. Unencrypted
    /// objects (no tag) and compressed ones (a decompressor between tag and output) are
    /// still checked.
    Unauthenticated,
}

/// Authenticates, decrypts, decompresses and verifies an object; never returns wrong bytes.
pub fn decode(
    keys: &DataKeys,
    id: &ChunkId,
    object: impl Into<ObjectBytes>,
    check: IdCheck,
) -> Result<Vec<u8>, DecodeError> {
    let object = object.into();
    // A segmented object's plaintext is moved to the front segment by segment anyway; any
    // other object is moved there first (only segmented objects are read directly).
    let (mut object, start) = if object.get(4) == Some(&VERSION_SEGMENTED) {
        object.into_parts()
    } else {
        (object.into_vec(), 0)
    };
    let head = &object[start..];
    if head.len() < FIXED_HEADER || &head[..4] != MAGIC {
        return Err(DecodeError::Malformed("bad magic or too short"));
    }
    let flags = head[5];
    let segment_shift = check_version(head)?;
    let plain_len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
    let mut pos = start + FIXED_HEADER;
    let salt: Option<[u8; SALT_LEN]> = if flags & FLAG_SALTED != 0 {
        let s = object
            .get(pos..pos + SALT_LEN)
            .ok_or(DecodeError::Malformed("truncated salt"))?;
        pos += SALT_LEN;
        Some(s.try_into().unwrap())
    } else {
        None
    };
    let body_start = if flags & FLAG_ENCRYPTED != 0 {
        let nonce: [u8; NONCE_LEN] = object
            .get(pos..pos + NONCE_LEN)
            .ok_or(DecodeError::Malformed("truncated nonce"))?
            .try_into()
            .unwrap();
        let sealed_at = pos + NONCE_LEN;
        if object.len() < sealed_at + TAG_LEN {
            return Err(DecodeError::Malformed("truncated ciphertext"));
        }
        let mut aad = object[start..pos].to_vec();
        aad.extend_from_slice(&id.0);
        match segment_shift {
            Some(shift) => {
                // The body replaces the header in the buffer (no separate pass to drop it).
                let layout = Segments::new(shift, object.len() - sealed_at)?;
                layout.open(keys, &aad, &nonce, 0..layout.count, &mut object, sealed_at)?;
                0
            }
            None => {
                let n = keys
                    .open_in_place(&nonce, &aad, &mut object[sealed_at..])
                    .map_err(|_| DecodeError::Auth)?;
                object.truncate(sealed_at + n);
                sealed_at
            }
        }
    } else {
        pos
    };
    // Decrypted in place: drop the header so the buffer becomes the body (no new allocation).
    object.drain(..body_start);
    let body = object;
    let plain = if flags & FLAG_ZSTD != 0 {
        DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| DecodeError::Decompress(e.to_string()))?,
                );
            }
            d.as_mut()
                .unwrap()
                .decompress(&body, plain_len)
                .map_err(|e| DecodeError::Decompress(e.to_string()))
        })?
    } else {
        body
    };
    if plain.len() != plain_len {
        return Err(DecodeError::Malformed("length differs from header"));
    }
    let authenticated_as_is = flags & FLAG_ENCRYPTED != 0 && flags & FLAG_ZSTD == 0;
    if check == IdCheck::Unauthenticated && authenticated_as_is {
        return Ok(plain);
    }
    let s = EncodeSettings {
        zstd_level: None,
        encrypt: flags & FLAG_ENCRYPTED != 0,
        dedup: salt.is_none(),
        segmented: segment_shift.is_some(),
    };
    let actual = chunk_id(keys, s, &plain, salt.as_ref());
    if !ct_eq(&actual.0, &id.0) {
        return Err(DecodeError::IdMismatch);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn all_settings() -> Vec<EncodeSettings> {
        let mut v = Vec::new();
        for z in [None, Some(3)] {
            for encrypt in [false, true] {
                for dedup in [false, true] {
                    for segmented in [false, true] {
                        v.push(EncodeSettings {
                            zstd_level: z,
                            encrypt,
                            dedup,
                            segmented,
                        });
                    }
                }
            }
        }
        v
    }

    #[test]
    fn roundtrip_every_setting_and_every_bit_flip_is_caught() {
        let keys = DataKeys::new(&MasterKey::generate());
        let text: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8 + b'a').collect();
        let mut random = vec![0u8; 5000];
        rand::rngs::OsRng.fill_bytes(&mut random);
        for data in [&text, &random] {
            for s in all_settings() {
                let salt = new_salt(s);
                let id = chunk_id(&keys, s, data, salt.as_ref());
                let obj = encode(&keys, s, &id, data, salt.as_ref());
                for check in [IdCheck::Always, IdCheck::Unauthenticated] {
                    assert_eq!(&decode(&keys, &id, obj.clone(), check).unwrap(), data);
                    for i in (0..obj.len()).step_by(97) {
                        let mut t = obj.clone();
                        t[i] ^= 0x10;
                        assert!(
                            decode(&keys, &id, t, check).is_err(),
                            "flip at {i} undetected for {s:?} {check:?}"
                        );
                    }
                    let short = obj[..obj.len() - 1].to_vec();
                    assert!(decode(&keys, &id, short, check).is_err());
                }
            }
        }
    }

    /// An object sealed under an id that is not its plaintext's (a writer bug): `Always`
    /// catches it for every setting, `Unauthenticated` wherever no AEAD binds the output
    /// bytes to the id as they are (unencrypted or compressed objects).
    #[test]
    fn id_recomputation_is_skipped_only_for_authenticated_raw_objects() {
        let keys = DataKeys::new(&MasterKey::generate());
        let text = b"the quick brown fox ".repeat(500);
        let mut random = vec![0u8; 100_000];
        rand::rngs::OsRng.fill_bytes(&mut random);
        for data in [&text, &random] {
            for s in all_settings() {
                let salt = new_salt(s);
                let wrong = chunk_id(&keys, s, b"something else", salt.as_ref());
                let obj = encode(&keys, s, &wrong, data, salt.as_ref());
                assert!(matches!(
                    decode(&keys, &wrong, obj.clone(), IdCheck::Always),
                    Err(DecodeError::IdMismatch)
                ));
                let raw_and_sealed = obj[5] & FLAG_ENCRYPTED != 0 && obj[5] & FLAG_ZSTD == 0;
                let r = decode(&keys, &wrong, obj, IdCheck::Unauthenticated);
                if raw_and_sealed {
                    assert_eq!(&r.unwrap(), data, "{s:?}");
                } else {
                    assert!(matches!(r, Err(DecodeError::IdMismatch)), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn small_chunks_skip_compression_only_when_their_bytes_look_random() {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for len in [512usize, 1024, 2500, 4096, 4097, 20_000, 65_536] {
            let mut random = vec![0u8; len];
            rng.fill_bytes(&mut random);
            assert!(looks_random(&random), "{len} random bytes");
            assert!(maybe_compress(3, &random).is_none(), "{len} random bytes");
            // Text, base64-like and hex data are compressible and must be tried.
            let text: Vec<u8> = (0..len)
                .map(|i| b"the quick brown fox, 12345\n"[i % 27])
                .collect();
            assert!(!looks_random(&text), "{len} bytes of text");
            assert!(maybe_compress(3, &text).is_some(), "{len} bytes of text");
            let b64: Vec<u8> = random
                .iter()
                .map(|b| {
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                        [(b % 64) as usize]
                })
                .collect();
            assert!(!looks_random(&b64), "{len} bytes of base64");
            // Random but for a compressible half: judged by samples from everywhere.
            let mut mixed = random.clone();
            if len > 4096 {
                mixed[len / 2..].fill(b'a');
                assert!(!looks_random(&mixed), "{len} bytes, half random");
                assert!(
                    maybe_compress(3, &mixed).is_some(),
                    "{len} bytes, half random"
                );
            }
        }
        // Too little to judge: tried.
        let mut tiny = vec![0u8; 300];
        rng.fill_bytes(&mut tiny);
        assert!(!looks_random(&tiny));
    }

    #[test]
    fn incompressible_is_stored_raw() {
        let keys = DataKeys::new(&MasterKey::generate());
        let mut data = vec![0u8; 256 * 1024];
        rand::rngs::OsRng.fill_bytes(&mut data);
        let s = EncodeSettings {
            zstd_level: Some(3),
            encrypt: true,
            dedup: true,
            segmented: false,
        };
        let id = chunk_id(&keys, s, &data, None);
        let obj = encode(&keys, s, &id, &data, None);
        assert_eq!(obj[5] & FLAG_ZSTD, 0);
        assert_eq!(obj.len(), data.len() + FIXED_HEADER + NONCE_LEN + 16);
        let text = b"the quick brown fox ".repeat(10_000);
        let id = chunk_id(&keys, s, &text, None);
        let obj = encode(&keys, s, &id, &text, None);
        assert_eq!(obj[5] & FLAG_ZSTD, FLAG_ZSTD);
        assert!(obj.len() < text.len() / 10);
    }

    fn segmented() -> EncodeSettings {
        EncodeSettings {
            zstd_level: Some(3),
            encrypt: true,
            dedup: true,
            segmented: true,
        }
    }

    #[test]
    fn segmented_objects_round_trip_at_every_size_and_catch_tampering() {
        let keys = DataKeys::new(&MasterKey::generate());
        let seg = segment_plain_len(SEGMENT_SHIFT);
        for len in [0, 1, seg - 1, seg, seg + 1, 3 * seg, 256 * 1024 + 5] {
            let mut data = vec![0u8; len];
            rand::rngs::OsRng.fill_bytes(&mut data);
            let id = chunk_id(&keys, segmented(), &data, None);
            assert_eq!(
                id,
                chunk_id(
                    &keys,
                    EncodeSettings {
                        segmented: false,
                        ..segmented()
                    },
                    &data,
                    None
                ),
                "the id does not depend on the object layout (dedup across versions)"
            );
            let obj = encode(&keys, segmented(), &id, &data, None);
            assert_eq!(obj[4], VERSION_SEGMENTED);
            assert_eq!(
                decode(&keys, &id, obj.clone(), IdCheck::Always).unwrap(),
                data,
                "{len} bytes"
            );
            for i in (0..obj.len()).step_by(331) {
                let mut t = obj.clone();
                t[i] ^= 0x01;
                assert!(
                    decode(&keys, &id, t, IdCheck::Always).is_err(),
                    "flip at {i} of {len}"
                );
            }
            // Dropping the last segment (or its tag) is caught: the count is in every AAD.
            if len > seg {
                let cut = obj.len() - (len % seg).max(1) - TAG_LEN;
                assert!(decode(&keys, &id, obj[..cut].to_vec(), IdCheck::Always).is_err());
            }
            assert!(decode(&keys, &id, obj[..obj.len() - 1].to_vec(), IdCheck::Always).is_err());
        }
    }

    #[test]
    fn objects_starting_inside_their_buffer_decode_alike() {
        // A direct read hands the decoder the object some bytes into an aligned buffer.
        let keys = DataKeys::new(&MasterKey::generate());
        for s in all_settings() {
            let mut data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
            rand::rngs::OsRng.fill_bytes(&mut data[50_000..]);
            let salt = new_salt(s);
            let id = chunk_id(&keys, s, &data, salt.as_ref());
            let obj = encode(&keys, s, &id, &data, salt.as_ref());
            for lead in [1usize, 17, 4096 - 24] {
                let mut buf = vec![0xAA; lead];
                buf.extend_from_slice(&obj);
                let decoded = decode(
                    &keys,
                    &id,
                    ObjectBytes::new(buf.clone(), lead),
                    IdCheck::Always,
                );
                assert_eq!(decoded.unwrap(), data, "{s:?} lead {lead}");
                buf[lead + obj.len() / 2] ^= 1;
                assert!(
                    decode(&keys, &id, ObjectBytes::new(buf, lead), IdCheck::Always).is_err(),
                    "{s:?} lead {lead}: a flipped bit is still caught"
                );
            }
        }
    }

    #[test]
    fn partial_reads_open_only_the_segments_they_need() {
        let keys = DataKeys::new(&MasterKey::generate());
        let seg = segment_plain_len(SEGMENT_SHIFT);
        let mut data = vec![0u8; 5 * seg + 123];
        rand::rngs::OsRng.fill_bytes(&mut data);
        let id = chunk_id(&keys, segmented(), &data, None);
        let obj = encode(&keys, segmented(), &id, &data, None);
        let head = &obj[..SegmentedObject::HEAD_LEN];
        let so = SegmentedObject::parse(&id, head, obj.len())
            .unwrap()
            .unwrap();
        for (off, len) in [
            (0, 1),
            (seg - 2, 4),
            (2 * seg + 7, 4096),
            (5 * seg, 123),
            (0, data.len()),
        ] {
            let (segs, range) = so.span(off, len);
            let plain = so
                .open(&keys, segs.clone(), obj[range.clone()].to_vec())
                .unwrap();
            let start = segs.start as usize * seg;
            assert_eq!(
                &plain[off - start..off - start + len],
                &data[off..off + len]
            );
            // The same bytes behind an alignment gap in their buffer (as O_DIRECT reads
            // return them) open to the same plaintext.
            let mut padded = vec![0xee; 100];
            padded.extend_from_slice(&obj[range.clone()]);
            let from_padded = so
                .open(&keys, segs.clone(), ObjectBytes::new(padded, 100))
                .unwrap();
            assert_eq!(from_padded, plain);
            // A flipped bit in the bytes read, a wrong id or a shifted range: an error.
            let mut t = obj[range.clone()].to_vec();
            let at = t.len() / 2;
            t[at] ^= 0x80;
            assert!(matches!(
                so.open(&keys, segs.clone(), t),
                Err(DecodeError::Auth)
            ));
            let other = SegmentedObject::parse(&ChunkId([9; 32]), head, obj.len())
                .unwrap()
                .unwrap();
            assert!(
                other
                    .open(&keys, segs.clone(), obj[range.clone()].to_vec())
                    .is_err()
            );
            if segs.start > 0 {
                let (prev, prange) = so.span(off - seg, 1);
                assert!(
                    so.open(&keys, segs.clone(), obj[prange].to_vec()).is_err() || prev == segs
                );
            }
        }
        // Compressed and version-1 objects are read whole.
        let text = b"abc ".repeat(20_000);
        let tid = chunk_id(&keys, segmented(), &text, None);
        let tobj = encode(&keys, segmented(), &tid, &text, None);
        assert!(
            SegmentedObject::parse(&tid, &tobj[..40], tobj.len())
                .unwrap()
                .is_none()
        );
        let v1 = encode(
            &keys,
            EncodeSettings {
                segmented: false,
                ..segmented()
            },
            &id,
            &data,
            None,
        );
        assert!(
            SegmentedObject::parse(&id, &v1[..40], v1.len())
                .unwrap()
                .is_none()
        );
    }
}
