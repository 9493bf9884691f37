//! Helpers shared by the integration tests: temporary stores, deterministic data, the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use space::Space;
use space::store::{InitOptions, Store, Unlock};

/// A fresh store in a temporary directory (kept alive by the returned TempDir).
pub fn new_store() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    Store::init(&dir, &InitOptions::default()).expect("init store");
    (tmp, dir)
}

pub fn open(dir: &Path) -> Space {
    Space::open(dir, &Unlock::default()).expect("open store")
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Text-like, compressible bytes.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "capsule",
        "space",
        "chunk",
        "the",
        "of",
        "transform",
        "wasm",
        "store",
        "read",
        "write",
    ];
    let r = random_bytes(len / 4 + 8, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        out.push(if r[(i + 1) % r.len()] % 11 == 0 {
            b'\n'
        } else {
            b' '
        });
        i += 1;
    }
    out.truncate(len);
    out
}

/// Runs the real `spacectl` binary against `store`.
pub fn spacectl(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spacectl"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("SPACE_PASSPHRASE")
        .env_remove("SPACE_KEY_FILE")
        .output()
        .expect("run spacectl")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn read_capsule(space: &Space, path: &str) -> Vec<u8> {
    let node = space.resolve(path).expect("resolve");
    space
        .read_all(&node, space::space::View::Raw)
        .expect("read")
}

/// The example guests' .wasm files, built once per test process if
/// `scripts/build-guests.sh` has not been run yet.
pub fn example_guests() -> PathBuf {
    static BUILD: Once = Once::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dist = root.join("examples/guests/dist");
    BUILD.call_once(|| {
        if !dist.join("gunzip.wasm").exists() {
            let ok = Command::new(root.join("scripts/build-guests.sh"))
                .stdout(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "building the example guests failed (scripts/build-guests.sh)"
            );
        }
    });
    dist
}
