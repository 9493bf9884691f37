//! Pack files (store format 2): objects appended to packs, found through the metadata, and
//! reclaimed by gc rewriting mostly-dead packs — without ever touching a pack a writer still
//! appends to, and without losing a byte.

mod common;

use space::space::PutOptions;

fn pack_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn gc_rewrites_mostly_dead_packs_and_keeps_live_data() {
    let (_t, dir) = common::new_store();
    // Ten capsules written by ten processes: ten packs.
    let mut data = Vec::new();
    for i in 0..10u64 {
        let d = common::random_bytes(3 << 20, 100 + i);
        let src = dir.join(format!("../in{i}"));
        std::fs::write(&src, &d).unwrap();
        let o = common::spacectl(
            &dir,
            &["put", src.to_str().unwrap(), "--as", &format!("/f{i}")],
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        data.push(d);
    }
    assert!(
        !dir.join("objects/00").exists(),
        "format 2 writes no loose objects"
    );
    let before = pack_files(&dir);
    assert_eq!(before.len(), 10, "{before:?}");
    // Remove all but f0 and f5, and overwrite f5 partly: most packs become dead.
    for i in [1, 2, 3, 4, 6, 7, 8, 9] {
        assert!(
            common::spacectl(&dir, &["rm", &format!("/f{i}")])
                .status
                .success()
        );
    }
    let space = common::open(&dir);
    let report = space.fsck(&|_, _| {}).unwrap();
    assert!(!report.damaged(), "{report:?}");
    assert!(report.dead_pack_bytes >= 8 * (3 << 20), "{report:?}");

    let gc = space.gc().unwrap();
    assert!(gc.chunks_removed > 0);
    assert_eq!(gc.packs_deleted, 8, "{gc:?}");
    let after = pack_files(&dir);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|p| before.contains(p)),
        "live packs are kept as they are"
    );
    for i in [0usize, 5] {
        assert_eq!(common::read_capsule(&space, &format!("/f{i}")), data[i]);
    }
    let report = space.fsck(&|_, _| {}).unwrap();
    // What is left is the padding that puts each segmented object's segments on page
    // boundaries (less than a page per object).
    assert!(
        !report.damaged() && report.dead_pack_bytes < 4096 * report.chunks_checked,
        "{report:?}"
    );

    // A pack that is mostly dead but still live in part is rewritten: replace most of f5's
    // chunks by writing new content that shares its first MiB.
    let mut v2 = data[5][..1 << 20].to_vec();
    v2.extend_from_slice(&common::random_bytes(1 << 20, 999));
    drop(space);
    let src = dir.join("../v2");
    std::fs::write(&src, &v2).unwrap();
    assert!(
        common::spacectl(&dir, &["put", src.to_str().unwrap(), "--as", "/f5"])
            .status
            .success()
    );
    let space = common::open(&dir);
    let gc = space.gc().unwrap();
    assert_eq!(gc.packs_repacked, 1, "{gc:?}");
    assert!(gc.pack_bytes_freed >= 1 << 20, "{gc:?}");
    assert_eq!(common::read_capsule(&space, "/f0"), data[0]);
    assert_eq!(common::read_capsule(&space, "/f5"), v2);
    let report = space.fsck(&|_, _| {}).unwrap();
    assert!(!report.damaged(), "{report:?}");
}

#[test]
fn gc_leaves_a_pack_alone_while_a_writer_appends_to_it() {
    let (_t, dir) = common::new_store();
    let space = common::open(&dir);
    let a = common::random_bytes(2 << 20, 1);
    space
        .put(&mut &a[..], "/a", &PutOptions::default(), &|_| {})
        .unwrap();
    space.remove("/a", false).unwrap();
    // This process still appends to that pack (it is its active pack): gc must skip it even
    // though nothing in it is live, and later writes to it must stay readable.
    let gc = space.gc().unwrap();
    assert_eq!(gc.packs_deleted + gc.packs_repacked, 0, "{gc:?}");
    let b = common::random_bytes(1 << 20, 2);
    space
        .put(&mut &b[..], "/b", &PutOptions::default(), &|_| {})
        .unwrap();
    assert_eq!(common::read_capsule(&space, "/b"), b);
    drop(space);
    // Once the writer is gone, a later gc rewrites it (it is mostly dead). Read-ahead jobs of
    // the process-wide pool may keep the old store (and its pack lock) alive for a moment
    // after the drop: gc then skips the pack, as it must; a later run rewrites it.
    let space = common::open(&dir);
    let mut repacked = 0;
    for _ in 0..100 {
        repacked += space.gc().unwrap().packs_repacked;
        if repacked > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(repacked, 1);
    assert_eq!(common::read_capsule(&space, "/b"), b);
    assert!(!space.fsck(&|_, _| {}).unwrap().damaged());
}

#[test]
fn gc_waits_for_a_mounts_open_group_of_changes() {
    use space::store::meta::{NewNode, NodeKind, ROOT_INO};
    let (_t, dir) = common::new_store();
    // Loose objects (format 1): an object whose metadata row is not visible yet would look
    // like an orphan to a gc that did not wait.
    let cfg = dir.join("store.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("format_version: 3", "format_version: 1")).unwrap();
    let collector = common::open(&dir);
    let mount = common::open(&dir);
    mount.store.meta.set_durable_commits(false).unwrap();
    // As the mount writes a file: creation and content join one open transaction.
    let node = mount
        .store
        .meta
        .create(
            ROOT_INO,
            b"f",
            NewNode {
                kind: NodeKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                policy: None,
                target: None,
                rdev: 0,
            },
        )
        .unwrap();
    let data = common::random_bytes(2 << 20, 77);
    mount.write_content(&node, &mut &data[..], None).unwrap();
    assert!(dir.join("objects").read_dir().unwrap().next().is_some());
    let gc = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            mount.store.meta.commit_deferred().unwrap();
        });
        collector.gc().unwrap()
    });
    assert_eq!(gc.orphans_removed, 0, "{gc:?}");
    assert_eq!(common::read_capsule(&collector, "/f"), data);
    assert!(!collector.fsck(&|_, _| {}).unwrap().damaged());
}
