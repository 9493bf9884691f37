//! Dedup at the sizes the issue names, scaled down for tests (the 1 GiB figures are in the
//! benchmark): identical data adds almost nothing, a 1-byte insert at the front adds little.

mod common;

use space::space::PutOptions;

fn stored(space: &space::Space) -> u64 {
    space.store.meta.stats().unwrap().stored_bytes
}

#[test]
fn same_data_twice_adds_under_one_percent() {
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let data = common::random_bytes(32 << 20, 11);
    space
        .put(&mut &data[..], "/a", &PutOptions::default(), &|_| {})
        .unwrap();
    let before = stored(&space);
    space
        .put(&mut &data[..], "/b", &PutOptions::default(), &|_| {})
        .unwrap();
    let after = stored(&space);
    assert!((after - before) * 100 < before, "{before} -> {after}");
}

#[test]
fn one_byte_insert_at_front_adds_under_ten_percent() {
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let data = common::random_bytes(64 << 20, 12);
    space
        .put(&mut &data[..], "/a", &PutOptions::default(), &|_| {})
        .unwrap();
    let before = stored(&space);
    let mut shifted = vec![b'!'];
    shifted.extend_from_slice(&data);
    space
        .put(&mut &shifted[..], "/b", &PutOptions::default(), &|_| {})
        .unwrap();
    let after = stored(&space);
    assert!((after - before) * 10 < before, "{before} -> {after}");
    assert_eq!(common::read_capsule(&space, "/b"), shifted);
}
