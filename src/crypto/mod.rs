//! Keys and cryptographic primitives: the master key (optionally passphrase-wrapped), subkeys
//! derived from it, keyed chunk ids, and chunk sealing with AES-256-GCM.
//!
//! Nothing here knows about files or capsules; `store` decides what gets sealed and where.

mod keyfile;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

pub use keyfile::{KdfParams, KeyFileError, read_key_file, write_key_file};

type HmacSha256 = Hmac<Sha256>;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// The store's 32-byte root secret. Never leaves memory unwrapped except in a 0600 key file.
#[derive(Clone)]
pub struct MasterKey(pub(crate) [u8; KEY_LEN]);

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterKey(k)
    }

    pub fn from_bytes(b: [u8; KEY_LEN]) -> MasterKey {
        MasterKey(b)
    }

    /// A subkey for one purpose: HMAC-SHA256(master, "space/v1/" ‖ label).
    pub fn derive(&self, label: &str) -> [u8; KEY_LEN] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"space/v1/");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A short public fingerprint stored in the config, so a wrong key is refused up front.
    pub fn check_value(&self) -> String {
        hex::encode(&self.derive("key-check")[..16])
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Subkeys the data path needs, derived once when a store opens.
pub struct DataKeys {
    id_mac: HmacSha256,
    aead: Aes256Gcm,
    /// Authenticates persisted compiled WASM artifacts (they are native code).
    pub artifact_mac_key: [u8; KEY_LEN],
    /// Seeds the chunker's gear table, so chunk boundaries (and sizes) reveal nothing about
    /// content to someone without the key.
    pub chunker_seed: u64,
}

impl DataKeys {
    pub fn new(master: &MasterKey) -> DataKeys {
        let id_key = master.derive("chunk-id");
        let enc_key = master.derive("chunk-encryption");
        DataKeys {
            id_mac: <HmacSha256 as Mac>::new_from_slice(&id_key).expect("any key length"),
            aead: Aes256Gcm::new_from_slice(&enc_key).expect("32-byte key"),
            artifact_mac_key: master.derive("wasm-artifact"),
            chunker_seed: u64::from_le_bytes(
                master.derive("chunker-seed")[..8].try_into().unwrap(),
            ),
        }
    }

    /// Keyed chunk id: HMAC-SHA256(k_id, domain ‖ plaintext). The domain byte separates
    /// encrypted and plaintext objects so dedup never mixes the two encodings.
    pub fn chunk_id(&self, domain: u8, plaintext: &[u8]) -> [u8; 32] {
        let mut mac = self.id_mac.clone();
        mac.update(&[domain]);
        mac.update(plaintext);
        mac.finalize().into_bytes().into()
    }

    /// Encrypts `buf` in place and appends the tag; returns the fresh random nonce.
    pub fn seal(&self, aad: &[u8], buf: &mut Vec<u8>) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.aead
            .encrypt_in_place(Nonce::from_slice(&nonce), aad, buf)
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        nonce
    }

    /// Authenticates and decrypts `buf` (ciphertext ‖ tag) in place.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), AuthError> {
        self.aead
            .decrypt_in_place(Nonce::from_slice(nonce), aad, buf)
            .map_err(|_| AuthError)
    }
}

/// Ciphertext failed authentication: tampered, truncated, or sealed under another key.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("authentication failed (tampered or foreign ciphertext)")]
pub struct AuthError;

/// HMAC-SHA256 over parts, for callers that authenticate their own files.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison for MACs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let keys = DataKeys::new(&MasterKey::generate());
        let mut buf = b"hello capsule".to_vec();
        let nonce = keys.seal(b"aad", &mut buf);
        assert_ne!(&buf[..13], b"hello capsule");
        let mut ok = buf.clone();
        keys.open(&nonce, b"aad", &mut ok).unwrap();
        assert_eq!(ok, b"hello capsule");
        let mut wrong_aad = buf.clone();
        assert!(keys.open(&nonce, b"aae", &mut wrong_aad).is_err());
        let mut flipped = buf.clone();
        flipped[3] ^= 1;
        assert!(keys.open(&nonce, b"aad", &mut flipped).is_err());
    }

    #[test]
    fn chunk_ids_are_keyed_and_domain_separated() {
        let a = DataKeys::new(&MasterKey::generate());
        let b = DataKeys::new(&MasterKey::generate());
        assert_ne!(a.chunk_id(1, b"x"), b.chunk_id(1, b"x"));
        assert_ne!(a.chunk_id(1, b"x"), a.chunk_id(0, b"x"));
        assert_eq!(a.chunk_id(1, b"x"), a.chunk_id(1, b"x"));
    }
}
