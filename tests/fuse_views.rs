//! Views through a real `spacefs` mount: named views under /.space/views, exact sizes and
//! random reads once a view is materialized, the cache surviving a remount, provenance as an
//! extended attribute and cache counters in /.space/stats.

mod fuse_common;

use std::os::unix::fs::FileExt;

use fuse_common::*;

fn getxattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let r = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

#[test]
fn views_through_the_mount() {
    let s = scratch();
    add_example_modules(&s.store, &["uppercase", "redact_pii"]);
    let mut text = Vec::new();
    for i in 0..20_000 {
        text.extend_from_slice(format!("{i} mail bob{i}@example.com to alice\n").as_bytes());
    }
    let src = s.tmp.path().join("src.txt");
    std::fs::write(&src, &text).unwrap();
    let pol = s.tmp.path().join("p.yaml");
    std::fs::write(
        &pol,
        "chunking:\n  avg_size: 32KiB\ntransform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\nviews:\n  redacted:\n    - name: r\n      image: capsule://wasm/redact_pii.wasm\n",
    )
    .unwrap();
    let o = spacectl(&s.store, &["mkdir", "/docs"]);
    assert!(o.status.success());
    for dest in ["/docs/mail.txt", "/plain.txt"] {
        let mut args = vec!["put", src.to_str().unwrap(), "--as", dest];
        if dest != "/plain.txt" {
            args.extend(["--policy", pol.to_str().unwrap()]);
        }
        let o = spacectl(&s.store, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let upper = text.to_ascii_uppercase();
    let mut redacted = None;

    for round in 0..2 {
        let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
            return;
        };
        let m = d.mnt.clone();
        let file = m.join("docs/mail.txt");
        let view = m.join(".space/views/redacted/docs/mail.txt");
        let names: Vec<String> = std::fs::read_dir(m.join(".space/views"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["redacted"]);
        // Only capsules that declare the view show up in it (directories always).
        let mut listed: Vec<String> = std::fs::read_dir(m.join(".space/views/redacted"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, ["docs", "wasm"]);
        assert!(!m.join(".space/views/redacted/plain.txt").exists());
        assert!(!m.join(".space/views/typo").exists());

        if round == 0 {
            // Not materialized yet: size 0 (read to EOF), no provenance.
            assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
            assert_eq!(std::fs::metadata(&view).unwrap().len(), 0);
            assert!(getxattr(&file, "user.space.provenance").is_none());
            assert_eq!(std::fs::read(&file).unwrap(), upper);
            let r = std::fs::read(&view).unwrap();
            assert!(!r.windows(5).any(|w| w == b"bob1@"));
            assert!(r.windows(5).any(|w| w == b"alice"));
            redacted = Some(r);
            assert_eq!(stat_value(&m, "derived_stored"), 2);
        }
        let redacted = redacted.as_ref().unwrap();
        // Materialized (in round 1, by the earlier mount): exact sizes, random reads.
        assert_eq!(std::fs::metadata(&file).unwrap().len(), upper.len() as u64);
        assert_eq!(
            std::fs::metadata(&view).unwrap().len(),
            redacted.len() as u64
        );
        let f = std::fs::File::open(&file).unwrap();
        let v = std::fs::File::open(&view).unwrap();
        for off in [0usize, 1, 4096, 77_777, upper.len() - 10] {
            let mut buf = vec![0u8; 4096];
            let n = f.read_at(&mut buf, off as u64).unwrap();
            assert_eq!(&buf[..n], &upper[off..(off + 4096).min(upper.len())]);
            let n = v.read_at(&mut buf, off as u64).unwrap();
            assert_eq!(&buf[..n], &redacted[off..(off + 4096).min(redacted.len())]);
        }
        drop((f, v));
        if round == 1 {
            assert!(stat_value(&m, "derived_hits") >= 2);
            assert_eq!(stat_value(&m, "derived_stored"), 0, "nothing recomputed");
        }
        assert_eq!(stat_value(&m, "derived_entries"), 2);
        let prov = String::from_utf8(getxattr(&file, "user.space.provenance").unwrap()).unwrap();
        assert!(
            prov.contains("name: up") && prov.contains("view: default"),
            "{prov}"
        );
        let prov = String::from_utf8(getxattr(&view, "user.space.provenance").unwrap()).unwrap();
        assert!(
            prov.contains("name: r") && prov.contains("view: redacted"),
            "{prov}"
        );
        // Views are read-only.
        let e = std::fs::OpenOptions::new()
            .write(true)
            .open(&view)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        assert!(d.unmount().success());
    }

    // A rewrite of the source: the old output is not served; the new one is computed.
    std::fs::write(&src, b"new bob@example.com\n").unwrap();
    let o = spacectl(
        &s.store,
        &["put", src.to_str().unwrap(), "--as", "/docs/mail.txt"],
    );
    assert!(o.status.success());
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let file = d.mnt.join("docs/mail.txt");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    assert_eq!(std::fs::read(&file).unwrap(), b"NEW BOB@EXAMPLE.COM\n");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 20);
    assert!(d.unmount().success());
}

/// A chain whose every transform is `chunk_local` runs once per stored chunk: a read computes
/// only the chunks it touches (plus, the first time, the ones before it, to place it), reading
/// backwards recomputes one chunk instead of restarting, and the CLI gives the same bytes.
#[test]
fn chunk_local_views_compute_only_what_is_read() {
    let s = scratch();
    add_example_modules(&s.store, &["uppercase", "append_bang"]);
    let data = random_bytes(600_000, 9)
        .iter()
        .map(|b| b"abcdefghij \n"[(*b % 12) as usize])
        .collect::<Vec<u8>>();
    put_with_policy(
        &s,
        "/f",
        &data,
        Some(
            "cache: false\nchunking:\n  min_size: 16KiB\n  avg_size: 32KiB\n  max_size: 64KiB\ntransform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n    chunk_local: true\nviews:\n  bang:\n    - name: b\n      image: capsule://wasm/append_bang.wasm\n      chunk_local: true\n",
        ),
    );
    let o = spacectl(&s.store, &["stat", "/f"]);
    let stat = String::from_utf8_lossy(&o.stdout).into_owned();
    let chunks: usize = stat
        .lines()
        .find_map(|l| l.strip_prefix("chunks:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(chunks >= 8, "{stat}");
    // The CLI applies a chunk-local view per stored chunk too: one `!` per chunk.
    let o = spacectl(&s.store, &["get", "/f", "--view", "bang"]);
    assert!(o.status.success());
    let bang = o.stdout;
    assert_eq!(bang.len(), data.len() + chunks);
    assert_eq!(bang.iter().filter(|b| **b == b'!').count(), chunks);

    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let m = d.mnt.clone();
    let calls = || stat_value(&m, "wasm_calls");
    let upper = data.to_ascii_uppercase();
    let f = std::fs::File::open(m.join("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    let before = calls();
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
    assert_eq!(&buf[..], &upper[..4096]);
    assert_eq!(calls() - before, 2, "one chunk: process + finish");
    // Far ahead: the chunks before it are placed (computed once, in order).
    let far = 500_000usize;
    assert_eq!(f.read_at(&mut buf, far as u64).unwrap(), 4096);
    assert_eq!(&buf[..], &upper[far..far + 4096]);
    let placed = calls() - before;
    assert!(
        placed <= 2 * chunks as u64,
        "{placed} calls for {chunks} chunks"
    );
    // Backwards: one chunk recomputed, no restart from the beginning.
    let mid = 200_000usize;
    let at_mid = calls();
    assert_eq!(f.read_at(&mut buf, mid as u64).unwrap(), 4096);
    assert_eq!(&buf[..], &upper[mid..mid + 4096]);
    assert!(
        calls() - at_mid <= 4,
        "a backward read costs one or two chunks"
    );
    drop(f);
    assert_eq!(std::fs::read(m.join("f")).unwrap(), upper);
    assert_eq!(std::fs::read(m.join(".space/views/bang/f")).unwrap(), bang);
    assert!(d.unmount().success());
}

/// Chunk-local and size-preserving: the size is known before anything runs, and a read far
/// into the capsule computes only the chunk under it; a module breaking the promise gets EIO.
#[test]
fn size_preserving_chunk_local_views_place_reads_without_the_prefix() {
    let s = scratch();
    add_example_modules(&s.store, &["uppercase", "append_bang"]);
    let data = random_bytes(800_000, 3)
        .iter()
        .map(|b| b"klmnopqrs \n"[(*b % 11) as usize])
        .collect::<Vec<u8>>();
    for (dest, module) in [("/f", "uppercase"), ("/liar", "append_bang")] {
        put_with_policy(
            &s,
            dest,
            &data,
            Some(&format!(
                "chunking:\n  avg_size: 32KiB\ntransform:\n  - name: t\n    image: capsule://wasm/{module}.wasm\n    chunk_local: true\n    preserves_size: true\n"
            )),
        );
    }
    put_with_policy(
        &s,
        "/fueled",
        &data,
        Some(
            "transform:\n  - name: t\n    image: capsule://wasm/uppercase.wasm\n    resources:\n      fuel_limit: 100000000\n",
        ),
    );
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let m = d.mnt.clone();
    let upper = data.to_ascii_uppercase();
    assert_eq!(
        std::fs::metadata(m.join("f")).unwrap().len(),
        data.len() as u64
    );
    let f = std::fs::File::open(m.join("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    let before = stat_value(&m, "wasm_calls");
    let far = 700_000usize;
    assert_eq!(f.read_at(&mut buf, far as u64).unwrap(), 4096);
    assert_eq!(&buf[..], &upper[far..far + 4096]);
    let calls = stat_value(&m, "wasm_calls") - before;
    assert!(
        calls <= 4,
        "{calls} calls: only the chunk(s) under the read"
    );
    drop(f);
    assert_eq!(std::fs::read(m.join("f")).unwrap(), upper);
    assert_eq!(
        stat_value(&m, "wasm_fuel_used"),
        0,
        "no module so far has a fuel limit"
    );
    assert_eq!(std::fs::read(m.join("fueled")).unwrap(), upper);
    assert!(
        stat_value(&m, "wasm_fuel_used") > 800_000,
        "a metered module was run"
    );
    let e = std::fs::read(m.join("liar")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(d.unmount().success());
}
