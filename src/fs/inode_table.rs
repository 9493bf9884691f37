//! Inode numbers as the kernel sees them.
//!
//! Store inode numbers are stable for a node's life, so they are used as FUSE inode numbers
//! unchanged. The virtual `/.space` tree lives in a reserved high range that SQLite row ids
//! never reach: fixed numbers for its directories and files, and `RAW_BIT | ino` for the raw
//! view of store inode `ino` under `/.space/raw`.

use crate::store::meta::{Ino, ROOT_INO};

/// Start of the virtual range.
const VIRTUAL: u64 = 1 << 62;
/// `/.space`
pub const SPACE_DIR: u64 = VIRTUAL + 1;
/// `/.space/raw` (the raw view of the root directory)
pub const RAW_DIR: u64 = VIRTUAL + 2;
/// `/.space/by-id`
pub const BY_ID_DIR: u64 = VIRTUAL + 3;
/// `/.space/stats`
pub const STATS_FILE: u64 = VIRTUAL + 4;
/// Raw view of store inode `x`: `RAW_BIT | x`.
const RAW_BIT: u64 = 1 << 61;

/// Name of the virtual directory in the root.
pub const SPACE_NAME: &[u8] = b".space";

/// What an inode number refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InoKind {
    /// A node of the store, as users normally see it.
    Store(Ino),
    /// The raw (stored bytes, no on-read chain) view of a store node; read-only.
    Raw(Ino),
    SpaceDir,
    ById,
    Stats,
    /// A number we never handed out.
    Unknown,
}

pub fn classify(ino: u64) -> InoKind {
    match ino {
        SPACE_DIR => InoKind::SpaceDir,
        RAW_DIR => InoKind::Raw(ROOT_INO),
        BY_ID_DIR => InoKind::ById,
        STATS_FILE => InoKind::Stats,
        i if i >= VIRTUAL => InoKind::Unknown,
        i if i & RAW_BIT != 0 => InoKind::Raw(i & !RAW_BIT),
        0 => InoKind::Unknown,
        i => InoKind::Store(i),
    }
}

/// The kernel inode number of the raw view of store inode `ino`.
pub fn raw_ino(ino: Ino) -> u64 {
    if ino == ROOT_INO {
        RAW_DIR
    } else {
        RAW_BIT | ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        assert_eq!(classify(1), InoKind::Store(1));
        assert_eq!(classify(raw_ino(1)), InoKind::Raw(1));
        assert_eq!(classify(raw_ino(77)), InoKind::Raw(77));
        assert_eq!(classify(SPACE_DIR), InoKind::SpaceDir);
        assert_eq!(classify(STATS_FILE), InoKind::Stats);
        assert_eq!(classify(BY_ID_DIR), InoKind::ById);
        assert_eq!(classify(0), InoKind::Unknown);
        assert_eq!(classify(VIRTUAL + 99), InoKind::Unknown);
    }
}
