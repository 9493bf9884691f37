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
/// `/.space/views`
pub const VIEWS_DIR: u64 = VIRTUAL + 5;
/// Raw view of store inode `x`: `RAW_BIT | x`.
const RAW_BIT: u64 = 1 << 61;
/// Named view `v` (a small number given out per mount) of store inode `x`:
/// `VIEW_BIT | v << VIEW_SHIFT | x`. Store inode numbers stay far below 2^40.
const VIEW_BIT: u64 = 1 << 60;
const VIEW_SHIFT: u32 = 40;
const VIEW_MAX: u64 = (1 << (60 - VIEW_SHIFT)) - 1;

/// Name of the virtual directory in the root.
pub const SPACE_NAME: &[u8] = b".space";

/// What an inode number refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InoKind {
    /// A node of the store, as users normally see it.
    Store(Ino),
    /// The raw (stored bytes, no on-read chain) view of a store node; read-only.
    Raw(Ino),
    /// Store node `ino` seen through named view number `view` (`/.space/views/<name>/...`).
    View {
        view: u32,
        ino: Ino,
    },
    SpaceDir,
    ById,
    Stats,
    ViewsDir,
    /// A number we never handed out.
    Unknown,
}

pub fn classify(ino: u64) -> InoKind {
    match ino {
        SPACE_DIR => InoKind::SpaceDir,
        RAW_DIR => InoKind::Raw(ROOT_INO),
        BY_ID_DIR => InoKind::ById,
        STATS_FILE => InoKind::Stats,
        VIEWS_DIR => InoKind::ViewsDir,
        i if i >= VIRTUAL => InoKind::Unknown,
        i if i & RAW_BIT != 0 => InoKind::Raw(i & !RAW_BIT),
        i if i & VIEW_BIT != 0 => InoKind::View {
            view: ((i & !VIEW_BIT) >> VIEW_SHIFT) as u32,
            ino: i & ((1 << VIEW_SHIFT) - 1),
        },
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

/// The kernel inode number of store inode `ino` in view number `view` (None if out of range).
pub fn view_ino(view: u32, ino: Ino) -> Option<u64> {
    (view as u64 <= VIEW_MAX && view > 0 && ino < 1 << VIEW_SHIFT)
        .then_some(VIEW_BIT | (view as u64) << VIEW_SHIFT | ino)
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
        assert_eq!(classify(VIEWS_DIR), InoKind::ViewsDir);
        let v = view_ino(3, 77).unwrap();
        assert_eq!(classify(v), InoKind::View { view: 3, ino: 77 });
        assert_eq!(
            classify(view_ino(1, ROOT_INO).unwrap()),
            InoKind::View { view: 1, ino: 1 }
        );
        assert_eq!(view_ino(0, 5), None);
        assert_eq!(view_ino(1, 1 << 40), None);
    }
}
