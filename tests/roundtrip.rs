//! Round trips through the real store: every policy combination, sizes from 0 to several
//! chunks, random-offset reads, and new versions replacing old ones.

mod common;

use proptest::prelude::*;
use space::policy::Policy;
use space::space::{PutOptions, View};

fn policy(compress: bool, encrypt: bool, dedup: bool) -> Policy {
    let y = format!(
        "compression:\n  algorithm: {}\nencryption: {encrypt}\ndedup: {dedup}\nchunking:\n  min_size: 1KiB\n  avg_size: 4KiB\n  max_size: 16KiB\n",
        if compress { "zstd" } else { "none" }
    );
    Policy::from_yaml(&y).unwrap()
}

fn put(space: &space::Space, path: &str, data: &[u8], p: Policy) -> space::store::meta::Node {
    let opts = PutOptions {
        policy: Some(p),
        parents: true,
        ..Default::default()
    };
    space
        .put(&mut &data[..], path, &opts, &|_| {})
        .unwrap()
        .node
}

#[test]
fn every_policy_combination_roundtrips() {
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let sizes = [0usize, 1, 1023, 4096, 70_000, 200_000];
    for compress in [false, true] {
        for encrypt in [false, true] {
            for dedup in [false, true] {
                for (i, &n) in sizes.iter().enumerate() {
                    let data = if i % 2 == 0 {
                        common::random_bytes(n, i as u64)
                    } else {
                        common::text_bytes(n, i as u64)
                    };
                    let path = format!("/c{compress}/e{encrypt}/d{dedup}/f{n}");
                    let node = put(&space, &path, &data, policy(compress, encrypt, dedup));
                    assert_eq!(node.size, n as u64);
                    assert_eq!(common::read_capsule(&space, &path), data, "{path}");
                    let transformed = space.read_all(&node, View::Transformed).unwrap();
                    assert_eq!(transformed, data);
                }
            }
        }
    }
    let report = space.fsck(&|_, _| {}).unwrap();
    assert!(!report.damaged(), "{report:?}");
}

#[test]
fn random_offset_reads_match() {
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let data = common::text_bytes(300_000, 7);
    let node = put(&space, "/f", &data, policy(true, true, true));
    let mut reader = space.reader(&node);
    let r = common::random_bytes(4000, 99);
    for i in 0..500 {
        let off = u32::from_le_bytes(r[i * 8..i * 8 + 4].try_into().unwrap()) as usize
            % (data.len() + 100);
        let len = u32::from_le_bytes(r[i * 8 + 4..i * 8 + 8].try_into().unwrap()) as usize % 20_000;
        let mut buf = vec![0u8; len];
        let n = reader.read_at(off as u64, &mut buf).unwrap();
        let want = &data[off.min(data.len())..(off + len).min(data.len())];
        assert_eq!(&buf[..n], want, "offset {off} len {len}");
    }
    assert!(space.cache.hits.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn new_version_replaces_old_atomically() {
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let a = common::random_bytes(100_000, 1);
    let b = common::text_bytes(50_000, 2);
    let n1 = put(&space, "/v", &a, policy(true, true, true));
    let n2 = put(&space, "/v", &b, policy(true, true, true));
    assert_eq!(n1.uuid, n2.uuid, "identity survives new versions");
    assert_eq!(n2.version, n1.version + 1);
    assert_eq!(common::read_capsule(&space, "/v"), b);
    // The old version's chunks are now unreferenced; gc removes them and fsck stays clean.
    let gc = space.gc().unwrap();
    assert!(gc.chunks_removed > 0);
    assert!(!space.fsck(&|_, _| {}).unwrap().damaged());
    assert_eq!(common::read_capsule(&space, "/v"), b);
}

#[test]
fn directory_policy_is_inherited() {
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let p = Policy::from_yaml("compression:\n  algorithm: none\nencryption: false\n").unwrap();
    space.mkdir("/plain", false, Some(&p)).unwrap();
    space.mkdir("/plain/sub", false, None).unwrap();
    let node = space
        .put(
            &mut &b"hello"[..],
            "/plain/sub/x",
            &PutOptions::default(),
            &|_| {},
        )
        .unwrap()
        .node;
    let got = space.policy_of(&node).unwrap();
    assert!(!got.encryption);
    let elsewhere = space
        .put(&mut &b"hello"[..], "/y", &PutOptions::default(), &|_| {})
        .unwrap()
        .node;
    assert!(space.policy_of(&elsewhere).unwrap().encryption);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn prop_roundtrip(len in 0usize..120_000, seed in any::<u64>(), compress in any::<bool>(), encrypt in any::<bool>(), dedup in any::<bool>(), text in any::<bool>()) {
        let (_t, dir) = common::new_store();
        let space = common::open(&dir);
        let data = if text { common::text_bytes(len, seed) } else { common::random_bytes(len, seed) };
        let node = put(&space, "/p", &data, policy(compress, encrypt, dedup));
        prop_assert_eq!(common::read_capsule(&space, "/p"), data.clone());
        let mut reader = space.reader(&node);
        let off = (seed as usize) % (len + 1);
        let mut buf = vec![0u8; 5000];
        let n = reader.read_at(off as u64, &mut buf).unwrap();
        prop_assert_eq!(&buf[..n], &data[off..(off + 5000).min(len)]);
    }
}

/// Reads inside one chunk come back as that chunk's shared bytes (no copy), reads across
/// chunks are copied; both give exactly the stored bytes, at every offset and size tried.
#[test]
fn shared_and_copied_reads_return_the_same_bytes() {
    use space::pipeline::ReadOut;
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let data = common::random_bytes(200_000, 9);
    let node = put(&space, "/f", &data, policy(false, true, true));
    let mut reader = space.reader(&node);
    let (mut shared, mut copied) = (0, 0);
    let mut buf = vec![0u8; 20_000];
    // Sequential 20,000-byte reads over 4 KiB-average chunks, then random ones, then the tail.
    let mut offsets: Vec<u64> = (0..10).map(|i| i * 20_000).collect();
    offsets.extend([150_001, 3, 77_777, 199_990, 200_000, 250_000]);
    for off in offsets {
        for len in [1usize, 100, 4096, 20_000] {
            let want = &data[(off as usize).min(data.len())..(off as usize + len).min(data.len())];
            match reader.read_shared_or_into(off, &mut buf[..len]).unwrap() {
                ReadOut::Shared(chunk, range) => {
                    shared += 1;
                    assert_eq!(&chunk[range], want, "shared read of {len} at {off}");
                }
                ReadOut::Copied(n) => {
                    copied += 1;
                    assert_eq!(&buf[..n], want, "copied read of {len} at {off}");
                }
            }
        }
    }
    assert!(
        shared > 10 && copied > 10,
        "both paths taken: {shared} shared, {copied} copied"
    );
}
