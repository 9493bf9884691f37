//! Small random reads through a mount read only the segments under them (object version 2,
//! docs/FORMAT.md 4.2 "Partial reads") — and still never return a tampered byte.

mod fuse_common;

use std::os::unix::fs::FileExt;

use fuse_common::*;
use rand::{Rng, SeedableRng};

/// Sealed segment size of the objects this build writes, and the plaintext each holds.
const STRIDE: usize = 1 << space::pipeline::chunk_codec::SEGMENT_SHIFT;
const SEGMENT: usize = STRIDE - 16;

#[test]
fn random_reads_decrypt_only_their_segments_and_catch_tampering() {
    let s = scratch();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut data = vec![0u8; 16 << 20];
    rng.fill(&mut data[..]);
    let src = s.tmp.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let o = spacectl(&s.store, &["put", src.to_str().unwrap(), "--as", "/f"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Where a byte in the middle of the file is stored: chunk, pack and object offset.
    let target = 9_500_000u64;
    let (chunk_start, pack_file, byte_in_pack) = {
        let space = open(&s.store);
        let node = space.resolve("/f").unwrap();
        let e = space.store.meta.extents_from(node.ino, target, 1).unwrap()[0];
        let located = space.store.meta.chunk_location(&e.chunk).unwrap().unwrap();
        let loc = located.loc.expect("a 16 MiB put is packed");
        let within = (target - e.offset) as usize;
        // Header 12 + nonce 12, then sealed segments of STRIDE bytes, page-aligned in the pack.
        let at = 24 + (within / SEGMENT) * STRIDE + within % SEGMENT;
        assert_eq!(
            (loc.offset + 24) % 4096,
            0,
            "segments start on a page boundary"
        );
        let pack = s
            .store
            .join("packs")
            .join(format!("{:016x}.pack", loc.pack));
        (e.offset, pack, loc.offset + at as u64)
    };

    // Cold packs, so the segments are read with O_DIRECT (bytes in the page cache are read
    // through it).
    evict_packs(&s.store);
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let f = std::fs::File::open(s.mnt.join("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..200 {
        let off = rng.gen_range(0..(data.len() - 4096) as u64 / 512) * 512;
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(
            &buf[..],
            &data[off as usize..off as usize + 4096],
            "at {off}"
        );
    }
    let text = std::fs::read_to_string(s.mnt.join(".space/stats")).unwrap();
    assert!(
        stat_value(&s.mnt, "partial_chunk_reads") >= 100,
        "random reads were served from segments:\n{text}"
    );
    drop(f);
    assert!(d.unmount().success());

    // A damaged copy of the object's head in the metadata costs a read of the real one, not
    // a false integrity error.
    {
        // Half the rows get a wrong nonce (parses, fails to authenticate), half garbage.
        let db = rusqlite::Connection::open(s.store.join("meta.db")).unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = db
            .prepare("SELECT id, head FROM chunks WHERE head IS NOT NULL")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(
            rows.len() > 10,
            "segmented objects keep their head in the metadata"
        );
        for (i, (id, mut head)) in rows.into_iter().enumerate() {
            if i % 2 == 0 {
                *head.last_mut().unwrap() ^= 1;
            } else {
                head = vec![0; 24];
            }
            db.execute(
                "UPDATE chunks SET head = ?2 WHERE id = ?1",
                rusqlite::params![id, head],
            )
            .unwrap();
        }
    }
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let f = std::fs::File::open(s.mnt.join("f")).unwrap();
    for off in [target, 100_000, 12 << 20, 3 << 20, 6 << 20] {
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(
            &buf[..],
            &data[off as usize..off as usize + 4096],
            "at {off}"
        );
    }
    drop(f);
    assert!(d.unmount().success());

    // Flip one byte of the segment holding `target`.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack_file)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, byte_in_pack).unwrap();
    file.write_all_at(&[b[0] ^ 0x20], byte_in_pack).unwrap();
    drop(file);
    // Both ways of reading the damaged segment: from the page cache (the pack was just
    // written), then from the disk.
    for cold in [false, true] {
        if cold {
            evict_packs(&s.store);
        }
        let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
            return;
        };
        let f = std::fs::File::open(s.mnt.join("f")).unwrap();
        let err = f.read_exact_at(&mut buf, target - 1000).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "cold {cold}: {err}");
        drop(f);
        assert!(d.unmount().success());
    }

    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let f = std::fs::File::open(s.mnt.join("f")).unwrap();
    // Another chunk reads fine; a random read of the damaged segment is EIO, not wrong bytes.
    let far = if chunk_start > 1 << 20 { 0 } else { 12 << 20 };
    f.read_exact_at(&mut buf, far + 100_000).unwrap();
    assert_eq!(
        &buf[..],
        &data[(far + 100_000) as usize..(far + 100_000) as usize + 4096]
    );
    let err = f.read_exact_at(&mut buf, target - 1000).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(f);
    // Reading the whole file (sequentially, whole chunks) fails too.
    assert!(std::fs::read(s.mnt.join("f")).is_err());
    assert!(d.unmount().success());
    let o = spacectl(&s.store, &["fsck"]);
    assert!(!o.status.success(), "fsck reports the damage");
}

/// Writes the store's packs to disk and drops them from the page cache.
fn evict_packs(store: &std::path::Path) {
    use std::os::fd::AsRawFd;
    for entry in std::fs::read_dir(store.join("packs")).unwrap() {
        let file = std::fs::File::open(entry.unwrap().path()).unwrap();
        file.sync_all().unwrap();
        // SAFETY: advice on a descriptor we own.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }
}
