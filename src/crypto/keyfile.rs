//! The master key file: raw, or wrapped under a passphrase with Argon2id + AES-256-GCM.
//! Layout is specified in docs/FORMAT.md ("Key file").

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

use super::{KEY_LEN, MasterKey, NONCE_LEN, TAG_LEN};

const MAGIC: &[u8; 8] = b"SPKEY01\0";
const KIND_RAW: u8 = 0;
const KIND_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;

/// Argon2id cost parameters, stored in the key file so they can be raised later.
#[derive(Debug, Clone, Copy)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        // 64 MiB, 3 passes: OWASP's Argon2id guidance; ~0.2 s here.
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("key file {0} is not a SPACE key file (bad magic, kind or length)")]
    Malformed(String),
    #[error(
        "key file {0} is protected by a passphrase: set SPACE_PASSPHRASE or pass --passphrase-file"
    )]
    PassphraseRequired(String),
    #[error("the passphrase does not unlock key file {0}")]
    WrongPassphrase(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

fn derive_wrapping_key(
    pass: &[u8],
    salt: &[u8],
    p: KdfParams,
) -> Result<[u8; KEY_LEN], KeyFileError> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(KEY_LEN))
        .map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; KEY_LEN];
    argon
        .hash_password_into(pass, salt, &mut out)
        .map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    Ok(out)
}

/// Writes the key file with mode 0600 (created exclusively: never overwrites a key).
pub fn write_key_file(
    path: &Path,
    key: &MasterKey,
    passphrase: Option<&[u8]>,
    kdf: KdfParams,
) -> Result<(), KeyFileError> {
    let name = path.display().to_string();
    let mut bytes = MAGIC.to_vec();
    match passphrase {
        None => {
            bytes.push(KIND_RAW);
            bytes.extend_from_slice(&key.0);
        }
        Some(pass) => {
            bytes.push(KIND_ARGON2ID);
            bytes.extend_from_slice(&kdf.memory_kib.to_le_bytes());
            bytes.extend_from_slice(&kdf.iterations.to_le_bytes());
            bytes.extend_from_slice(&kdf.parallelism.to_le_bytes());
            let mut salt = [0u8; SALT_LEN];
            rand::rngs::OsRng.fill_bytes(&mut salt);
            let mut nonce = [0u8; NONCE_LEN];
            rand::rngs::OsRng.fill_bytes(&mut nonce);
            bytes.extend_from_slice(&salt);
            bytes.extend_from_slice(&nonce);
            let wrap = derive_wrapping_key(pass, &salt, kdf)?;
            let aead = Aes256Gcm::new_from_slice(&wrap).expect("32-byte key");
            let mut ct = key.0.to_vec();
            let aad = bytes.clone();
            aead.encrypt_in_place(Nonce::from_slice(&nonce), &aad, &mut ct)
                .expect("in-memory encryption");
            bytes.extend_from_slice(&ct);
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyFileError::Io(name.clone(), e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| KeyFileError::Io(name, e))
}

/// Reads and, if needed, unwraps the key file.
pub fn read_key_file(path: &Path, passphrase: Option<&[u8]>) -> Result<MasterKey, KeyFileError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| KeyFileError::Io(name.clone(), e))?;
    let malformed = || KeyFileError::Malformed(name.clone());
    if bytes.len() < MAGIC.len() + 1 || &bytes[..8] != MAGIC {
        return Err(malformed());
    }
    let body = &bytes[9..];
    match bytes[8] {
        KIND_RAW => {
            let k: [u8; KEY_LEN] = body.try_into().map_err(|_| malformed())?;
            Ok(MasterKey(k))
        }
        KIND_ARGON2ID => {
            if body.len() != 12 + SALT_LEN + NONCE_LEN + KEY_LEN + TAG_LEN {
                return Err(malformed());
            }
            let pass = passphrase.ok_or_else(|| KeyFileError::PassphraseRequired(name.clone()))?;
            let u = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap());
            let kdf = KdfParams {
                memory_kib: u(0),
                iterations: u(4),
                parallelism: u(8),
            };
            let salt = &body[12..12 + SALT_LEN];
            let nonce = &body[12 + SALT_LEN..12 + SALT_LEN + NONCE_LEN];
            let header_len = 9 + 12 + SALT_LEN + NONCE_LEN;
            let wrap = derive_wrapping_key(pass, salt, kdf)?;
            let aead = Aes256Gcm::new_from_slice(&wrap).expect("32-byte key");
            let mut ct = bytes[header_len..].to_vec();
            aead.decrypt_in_place(Nonce::from_slice(nonce), &bytes[..header_len], &mut ct)
                .map_err(|_| KeyFileError::WrongPassphrase(name.clone()))?;
            let k: [u8; KEY_LEN] = ct.as_slice().try_into().map_err(|_| malformed())?;
            Ok(MasterKey(k))
        }
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn raw_and_wrapped_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let raw = d.path().join("raw.key");
        write_key_file(&raw, &key, None, cheap()).unwrap();
        assert_eq!(read_key_file(&raw, None).unwrap().0, key.0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&raw).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let wrapped = d.path().join("wrapped.key");
        write_key_file(&wrapped, &key, Some(b"correct horse"), cheap()).unwrap();
        assert_eq!(
            read_key_file(&wrapped, Some(b"correct horse")).unwrap().0,
            key.0
        );
        assert!(matches!(
            read_key_file(&wrapped, Some(b"wrong")),
            Err(KeyFileError::WrongPassphrase(_))
        ));
        assert!(matches!(
            read_key_file(&wrapped, None),
            Err(KeyFileError::PassphraseRequired(_))
        ));
        // Never overwrites an existing key.
        assert!(write_key_file(&raw, &key, None, cheap()).is_err());
    }
}
