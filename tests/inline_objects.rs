//! Inline objects (store format 3, docs/FORMAT.md 4.5): small objects committed inside the
//! metadata transaction instead of a pack, and authenticated like any other object.

mod common;

use std::path::Path;

fn pack_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("packs"))
        .map(|rd| rd.map(|e| e.unwrap().metadata().unwrap().len()).sum())
        .unwrap_or(0)
}

fn inline_rows(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    let mut st = db
        .prepare("SELECT id, object FROM inline_objects ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn put(dir: &Path, data: &[u8], name: &str) {
    let src = dir.join(format!("../{}.in", name.trim_start_matches('/')));
    std::fs::write(&src, data).unwrap();
    let o = common::spacectl(dir, &["put", src.to_str().unwrap(), "--as", name]);
    assert!(o.status.success(), "{}", common::stderr(&o));
}

fn get(dir: &Path, name: &str) -> std::process::Output {
    common::spacectl(dir, &["get", name])
}

#[test]
fn small_files_live_in_the_metadata_and_large_ones_in_packs() {
    let (_t, dir) = common::new_store();
    let small = common::random_bytes(3000, 1);
    put(&dir, &small, "/small");
    assert_eq!(pack_bytes(&dir), 0, "a small put appends nothing to a pack");
    let rows = inline_rows(&dir);
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].1.len() > small.len(),
        "the object is sealed, not the plaintext"
    );
    assert!(
        !rows[0]
            .1
            .windows(64)
            .any(|w| small.windows(64).any(|s| s == w)),
        "no run of the plaintext appears in the inline object"
    );
    assert_eq!(get(&dir, "/small").stdout, small);

    let large = common::random_bytes(2 << 20, 2);
    put(&dir, &large, "/large");
    assert!(pack_bytes(&dir) > large.len() as u64);
    assert_eq!(inline_rows(&dir).len(), 1, "large chunks are packed");
    assert_eq!(get(&dir, "/large").stdout, large);

    // Dedup across inline objects: the same small content again adds nothing.
    put(&dir, &small, "/again");
    assert_eq!(inline_rows(&dir).len(), 1);
    let o = common::spacectl(&dir, &["fsck"]);
    assert!(o.status.success(), "{}", common::stderr(&o));

    // The last reference gone, gc removes the inline object with its chunk row.
    for p in ["/small", "/again"] {
        assert!(common::spacectl(&dir, &["rm", p]).status.success());
    }
    let o = common::spacectl(&dir, &["gc"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(inline_rows(&dir).is_empty());
    assert_eq!(get(&dir, "/large").stdout, large);
}

#[test]
fn a_flipped_bit_in_an_inline_object_is_an_integrity_error() {
    let (_t, dir) = common::new_store();
    let data = common::text_bytes(5000, 3);
    put(&dir, &data, "/victim");
    let (id, mut object) = inline_rows(&dir).remove(0);
    let at = object.len() / 2;
    object[at] ^= 0x10;
    let db = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    db.execute(
        "UPDATE inline_objects SET object=?2 WHERE id=?1",
        rusqlite::params![id, object],
    )
    .unwrap();
    drop(db);
    let o = get(&dir, "/victim");
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "no byte of a damaged chunk is output");
    let err = common::stderr(&o);
    assert!(
        err.contains("integrity") && err.contains("/victim"),
        "{err}"
    );
    let o = common::spacectl(&dir, &["fsck"]);
    assert!(!o.status.success(), "fsck reports the damage");
}

#[test]
fn a_format_2_store_keeps_writing_packs() {
    let (_t, dir) = common::new_store();
    let cfg = dir.join("store.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("format_version: 3"), "{text}");
    std::fs::write(&cfg, text.replace("format_version: 3", "format_version: 2")).unwrap();
    let small = common::random_bytes(3000, 4);
    put(&dir, &small, "/small");
    assert!(pack_bytes(&dir) > 0);
    assert!(inline_rows(&dir).is_empty());
    assert_eq!(get(&dir, "/small").stdout, small);
}
