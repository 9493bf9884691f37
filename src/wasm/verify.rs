//! Module integrity: sha256 pins and ed25519 publisher signatures, checked before compiling.
//!
//! Signature scheme (v1): `signature = ed25519(sign_key, b"space-module-v1\0" ++ sha256(module))`,
//! hex-encoded (128 hex chars). Signing the digest (not the raw module) keeps signing cheap and
//! lets tools sign a module they only know by hash; the domain prefix stops a SPACE module
//! signature from being replayed as any other kind of ed25519-signed message. Verification uses
//! `verify_strict` (rejects malleable / small-order-key signatures).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::policy::Verification;

/// Domain-separation prefix of the signed message.
pub const SIGNATURE_DOMAIN: &[u8] = b"space-module-v1\0";

/// Which publisher keys are trusted, and whether unsigned modules are acceptable.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// `(publisher name, key)` pairs; the name is reported in logs.
    pub trusted: Vec<(String, VerifyingKey)>,
    /// Refuse modules whose spec carries no `verification.signature`.
    pub require_signatures: bool,
}

/// Why a module failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("sha256 mismatch: expected {expected}, actual {actual}")]
    Sha256Mismatch { expected: String, actual: String },
    #[error("verification.sha256 `{0}` is not 64 hex characters")]
    BadSha256(String),
    #[error("signature is not 128 hex characters (64-byte ed25519 signature)")]
    MalformedSignature,
    #[error("signature check failed: no trusted key verifies it ({trusted} trusted keys)")]
    Untrusted { trusted: usize },
    #[error("a signature is required by the trust policy but the spec has none")]
    SignatureRequired,
}

/// Errors decoding keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key must be 64 hex characters (32 bytes)")]
    BadEncoding,
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
}

/// SHA-256 of module bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn signed_message(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 32);
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(digest);
    m
}

/// Sign module bytes; returns the hex signature to put in `verification.signature`.
pub fn sign_module(key: &SigningKey, module: &[u8]) -> String {
    hex::encode(key.sign(&signed_message(&sha256(module))).to_bytes())
}

/// Check `verification` for a module whose sha256 is `digest`. Returns the name of the
/// publisher whose key verified the signature, if any.
pub fn verify_module(
    digest: &[u8; 32],
    verification: &Verification,
    trust: &TrustPolicy,
) -> Result<Option<String>, VerifyError> {
    if let Some(expected) = &verification.sha256 {
        let want = expected.0.trim().to_ascii_lowercase();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(VerifyError::BadSha256(expected.0.clone()));
        }
        let actual = hex::encode(digest);
        if want != actual {
            return Err(VerifyError::Sha256Mismatch {
                expected: want,
                actual,
            });
        }
    }
    let Some(sig_hex) = &verification.signature else {
        return if trust.require_signatures {
            Err(VerifyError::SignatureRequired)
        } else {
            Ok(None)
        };
    };
    let raw = hex::decode(sig_hex.trim()).map_err(|_| VerifyError::MalformedSignature)?;
    let raw: [u8; 64] = raw
        .try_into()
        .map_err(|_| VerifyError::MalformedSignature)?;
    let sig = Signature::from_bytes(&raw);
    let msg = signed_message(digest);
    for (name, key) in &trust.trusted {
        if key.verify_strict(&msg, &sig).is_ok() {
            return Ok(Some(name.clone()));
        }
    }
    Err(VerifyError::Untrusted {
        trusted: trust.trusted.len(),
    })
}

/// Generate a fresh publisher signing key from the OS RNG.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// Hex of the 32-byte secret seed (what `spacectl key gen` stores).
pub fn encode_signing_key(key: &SigningKey) -> String {
    hex::encode(key.to_bytes())
}

pub fn decode_signing_key(s: &str) -> Result<SigningKey, KeyError> {
    let b: [u8; 32] = hex::decode(s.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(KeyError::BadEncoding)?;
    Ok(SigningKey::from_bytes(&b))
}

/// Hex of the 32-byte public key (what `spacectl key trust` takes).
pub fn encode_verifying_key(key: &VerifyingKey) -> String {
    hex::encode(key.to_bytes())
}

pub fn decode_verifying_key(s: &str) -> Result<VerifyingKey, KeyError> {
    let b: [u8; 32] = hex::decode(s.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(KeyError::BadEncoding)?;
    VerifyingKey::from_bytes(&b).map_err(|_| KeyError::InvalidPublicKey)
}

/// Short fingerprint for listing keys: first 16 hex chars of sha256(public key).
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    hex::encode(&sha256(key.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_roundtrip() {
        let sk = generate_signing_key();
        let module = b"\0asm\x01\0\0\0";
        let sig = sign_module(&sk, module);
        let d = sha256(module);
        let trust = TrustPolicy {
            trusted: vec![("me".into(), sk.verifying_key())],
            require_signatures: true,
        };
        let v = Verification {
            sha256: Some(
                crate::policy::Sha256Hex::try_from(hex::encode(d).to_uppercase()).unwrap(),
            ),
            signature: Some(sig),
        };
        assert_eq!(
            verify_module(&d, &v, &trust).unwrap().as_deref(),
            Some("me")
        );
        // Key encodings roundtrip.
        let sk2 = decode_signing_key(&encode_signing_key(&sk)).unwrap();
        assert_eq!(sk2.to_bytes(), sk.to_bytes());
        let vk = decode_verifying_key(&encode_verifying_key(&sk.verifying_key())).unwrap();
        assert_eq!(vk, sk.verifying_key());
        assert_eq!(decode_verifying_key("zz"), Err(KeyError::BadEncoding));
        // Other key: untrusted.
        let other = TrustPolicy {
            trusted: vec![("x".into(), generate_signing_key().verifying_key())],
            require_signatures: false,
        };
        assert_eq!(
            verify_module(&d, &v, &other),
            Err(VerifyError::Untrusted { trusted: 1 })
        );
        let none = Verification::default();
        assert_eq!(
            verify_module(&d, &none, &trust),
            Err(VerifyError::SignatureRequired)
        );
        assert_eq!(verify_module(&d, &none, &other), Ok(None));
    }
}
