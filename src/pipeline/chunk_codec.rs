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

use std::cell::RefCell;

use rand::RngCore;

use crate::crypto::{DataKeys, NONCE_LEN, TAG_LEN, ct_eq};
use crate::policy::{CompressionAlgorithm, Policy};
use crate::store::ChunkId;

pub const MAGIC: &[u8; 4] = b"SPCO";
pub const VERSION: u8 = 1;
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
}

impl From<&Policy> for EncodeSettings {
    fn from(p: &Policy) -> Self {
        EncodeSettings {
            zstd_level: (p.compression.algorithm == CompressionAlgorithm::Zstd)
                .then_some(p.compression.level.0),
            encrypt: p.encryption,
            dedup: p.dedup,
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
/// full compression attempt.
fn maybe_compress(level: i32, plain: &[u8]) -> Option<Vec<u8>> {
    const PROBE: usize = 16 * 1024;
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
    let mut header = Vec::with_capacity(FIXED_HEADER + SALT_LEN);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.push(flags);
    header.extend_from_slice(&[0, 0]);
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
    // One buffer: header ‖ nonce ‖ body, sealed in place, then the tag appended.
    let body: &[u8] = compressed.as_deref().unwrap_or(plain);
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

/// Authenticates, decrypts, decompresses and verifies an object; never returns wrong bytes.
pub fn decode(keys: &DataKeys, id: &ChunkId, mut object: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
    if object.len() < FIXED_HEADER || &object[..4] != MAGIC {
        return Err(DecodeError::Malformed("bad magic or too short"));
    }
    if object[4] != VERSION {
        return Err(DecodeError::Version(object[4]));
    }
    let flags = object[5];
    if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED | FLAG_SALTED) != 0 || object[6] != 0 || object[7] != 0
    {
        return Err(DecodeError::Malformed("unknown flags"));
    }
    let plain_len = u32::from_le_bytes(object[8..12].try_into().unwrap()) as usize;
    let mut pos = FIXED_HEADER;
    let salt: Option<[u8; SALT_LEN]> = if flags & FLAG_SALTED != 0 {
        let s = object
            .get(pos..pos + SALT_LEN)
            .ok_or(DecodeError::Malformed("truncated salt"))?;
        pos += SALT_LEN;
        Some(s.try_into().unwrap())
    } else {
        None
    };
    let body_start;
    if flags & FLAG_ENCRYPTED != 0 {
        let nonce: [u8; NONCE_LEN] = object
            .get(pos..pos + NONCE_LEN)
            .ok_or(DecodeError::Malformed("truncated nonce"))?
            .try_into()
            .unwrap();
        body_start = pos + NONCE_LEN;
        if object.len() < body_start + TAG_LEN {
            return Err(DecodeError::Malformed("truncated ciphertext"));
        }
        let mut aad = object[..pos].to_vec();
        aad.extend_from_slice(&id.0);
        let n = keys
            .open_in_place(&nonce, &aad, &mut object[body_start..])
            .map_err(|_| DecodeError::Auth)?;
        object.truncate(body_start + n);
    } else {
        body_start = pos;
    }
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
    let s = EncodeSettings {
        zstd_level: None,
        encrypt: flags & FLAG_ENCRYPTED != 0,
        dedup: salt.is_none(),
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
                    v.push(EncodeSettings {
                        zstd_level: z,
                        encrypt,
                        dedup,
                    });
                }
            }
        }
        v
    }

    #[test]
    fn roundtrip_every_setting_and_every_bit_flip_is_caught() {
        let keys = DataKeys::new(&MasterKey::generate());
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8 + b'a').collect();
        for s in all_settings() {
            let salt = new_salt(s);
            let id = chunk_id(&keys, s, &data, salt.as_ref());
            let obj = encode(&keys, s, &id, &data, salt.as_ref());
            assert_eq!(decode(&keys, &id, obj.clone()).unwrap(), data, "{s:?}");
            for i in (0..obj.len()).step_by(97) {
                let mut t = obj.clone();
                t[i] ^= 0x10;
                assert!(
                    decode(&keys, &id, t).is_err(),
                    "flip at {i} undetected for {s:?}"
                );
            }
            assert!(decode(&keys, &id, obj[..obj.len() - 1].to_vec()).is_err());
        }
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
}
