//! Large files written front to back through `SpaceFs` (no kernel needed): their leading chunks
//! are stored ahead of the commit instead of spilling the write buffer. The committed content
//! must be exactly what a single `put` of the same bytes stores (same chunks), and reads,
//! overwrites and truncates before the commit must see the merged content.

mod common;

use common::*;
use space::fs::ops::SetAttrRequest;
use space::fs::{Caller, FsOptions, SpaceFs};
use space::space::PutOptions;

fn caller() -> Caller {
    Caller {
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        pid: 1,
    }
}

fn opts() -> FsOptions {
    FsOptions {
        write_mem_limit: 4 << 20,
        ..Default::default()
    }
}

fn read_all(fs: &SpaceFs, fh: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let d = fs.read(fh, out.len() as u64, 1 << 20).unwrap();
        if d.is_empty() {
            break;
        }
        out.extend_from_slice(&d);
    }
    out
}

#[test]
fn appended_file_commits_the_same_chunks_as_put() {
    let (_t, dir) = new_store();
    let fs = SpaceFs::new(open(&dir), opts()).unwrap();
    let data = random_bytes(23 << 20, 5);
    let (attr, o) = fs
        .create(1, b"big", 0o644, libc::O_WRONLY, caller())
        .unwrap();
    for (i, piece) in data.chunks(128 * 1024).enumerate() {
        fs.write(o.fh, (i * 128 * 1024) as u64, piece).unwrap();
    }
    // Stored ahead, never spilled to a temporary file.
    assert_eq!(
        fs.stats.spills.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    fs.flush(o.fh).unwrap();
    fs.release(o.fh).unwrap();
    let space = open(&dir);
    assert_eq!(read_capsule(&space, "/big"), data);
    let mut input = &data[..];
    let put = space
        .put(&mut input, "/copy", &PutOptions::default(), &|_| {})
        .unwrap();
    let ext = |ino| {
        space
            .store
            .meta
            .extents_from(ino, 0, 100_000)
            .unwrap()
            .into_iter()
            .map(|e| (e.offset, e.len, e.chunk))
            .collect::<Vec<_>>()
    };
    assert_eq!(ext(attr.ino), ext(put.node.ino));
    assert_eq!(
        put.report.reused_chunks, put.report.chunks,
        "all deduplicated"
    );
}

#[test]
fn reads_overwrites_and_truncates_before_the_commit() {
    let (_t, dir) = new_store();
    let fs = SpaceFs::new(open(&dir), opts()).unwrap();
    let mut model = random_bytes(19 << 20, 9);
    let (attr, o) = fs.create(1, b"f", 0o644, libc::O_RDWR, caller()).unwrap();
    for (i, piece) in model.chunks(1 << 20).enumerate() {
        fs.write(o.fh, (i << 20) as u64, piece).unwrap();
    }
    // Reads inside the part stored ahead and across its end.
    assert_eq!(read_all(&fs, o.fh, model.len()), model);
    assert_eq!(
        fs.read(o.fh, 1234567, 4096).unwrap(),
        model[1234567..1234567 + 4096]
    );
    // Overwrite inside the stored part, then keep appending, then commit.
    let patch = random_bytes(70_000, 3);
    fs.write(o.fh, 3_000_000, &patch).unwrap();
    model[3_000_000..3_070_000].copy_from_slice(&patch);
    let more = random_bytes(9 << 20, 4);
    fs.write(o.fh, model.len() as u64, &more).unwrap();
    model.extend_from_slice(&more);
    assert_eq!(read_all(&fs, o.fh, model.len()), model);
    fs.flush(o.fh).unwrap();
    assert_eq!(read_capsule(&open(&dir), "/f"), model);
    fs.release(o.fh).unwrap();

    // Truncate into the part stored ahead, then append again.
    let (_, o) = fs.create(1, b"g", 0o644, libc::O_RDWR, caller()).unwrap();
    let mut model = random_bytes(13 << 20, 11);
    for (i, piece) in model.chunks(1 << 20).enumerate() {
        fs.write(o.fh, (i << 20) as u64, piece).unwrap();
    }
    let req = SetAttrRequest {
        size: Some(2_500_000),
        ..Default::default()
    };
    let g = fs.lookup(1, b"g").unwrap();
    fs.setattr(g.ino, &req, Some(o.fh)).unwrap();
    model.truncate(2_500_000);
    let tail = random_bytes(6 << 20, 12);
    fs.write(o.fh, model.len() as u64, &tail).unwrap();
    model.extend_from_slice(&tail);
    fs.release(o.fh).unwrap();
    assert_eq!(read_capsule(&open(&dir), "/g"), model);
    let _ = attr;
}
