//! Bad input and faults: tampered chunks, wrong keys, full disks, malformed policies, and the
//! exit codes scripts rely on. Each case must give a clear error and lose nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use space::space::PutOptions;
use space::store::faulty::FaultyBackend;
use space::store::meta::ROOT_INO;
use space::store::{ChunkBackend, InitOptions, LocalBackend, Store, Unlock};
use space::{Space, SpaceError};

/// Where each stored object is: (pack file, offset of the object, its length), by chunk id.
fn stored_objects(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, u32)> {
    let space = common::open(dir);
    let mut rows = space.store.meta.chunk_rows().unwrap();
    rows.sort_by_key(|r| r.id);
    rows.iter()
        .map(|r| {
            let located = space.store.meta.chunk_location(&r.id).unwrap().unwrap();
            let loc = located.loc.expect("large puts pack their objects");
            let pack = dir.join("packs").join(format!("{:016x}.pack", loc.pack));
            (pack, loc.offset, located.stored_len)
        })
        .collect()
}

#[test]
fn flipped_bit_in_any_chunk_is_an_integrity_error_naming_capsule_and_chunk() {
    let (_t, dir) = common::new_store();
    let data = common::random_bytes(3 << 20, 5);
    std::fs::write(dir.join("../in.bin"), &data).unwrap();
    let o = common::spacectl(
        &dir,
        &[
            "put",
            dir.join("../in.bin").to_str().unwrap(),
            "--as",
            "/victim",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let objects = stored_objects(&dir);
    assert!(objects.len() > 3);
    // Flip one bit in the middle of one object (header, nonce, body and tag are all covered
    // by the unit tests of the codec; here the whole CLI path is exercised).
    let (pack, offset, len) = &objects[objects.len() / 2];
    let mut bytes = std::fs::read(pack).unwrap();
    let pos = (*offset + *len as u64 / 2) as usize;
    bytes[pos] ^= 0x01;
    std::fs::write(pack, &bytes).unwrap();

    let o = common::spacectl(&dir, &["get", "/victim"]);
    assert_eq!(o.status.code(), Some(6), "{}", common::stderr(&o));
    let err = common::stderr(&o);
    assert!(
        err.contains("integrity error") && err.contains("/victim") && err.contains("chunk"),
        "{err}"
    );
    // Whatever was written before the bad chunk is a correct prefix, never wrong bytes.
    assert!(o.stdout.len() < data.len());
    assert_eq!(&o.stdout[..], &data[..o.stdout.len()]);

    // -o FILE leaves no partial file behind.
    let out = dir.join("../out.bin");
    let o = common::spacectl(&dir, &["get", "/victim", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6));
    assert!(!out.exists());

    let o = common::spacectl(&dir, &["fsck"]);
    assert_eq!(o.status.code(), Some(6));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains("DAMAGED chunk") && report.contains("/victim"),
        "{report}"
    );

    // A reader names the capsule by its path when it reports, not when it was opened (the
    // path is only worked out for a message): renamed meanwhile, the new path is named.
    let space = common::open(&dir);
    let meta = &space.store.meta;
    let node = meta.lookup(ROOT_INO, b"victim").unwrap().unwrap();
    let mut reader = space.reader(&node);
    meta.rename(ROOT_INO, b"victim", ROOT_INO, b"renamed", false)
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let err = loop {
        match reader.read_at(offset, &mut buf) {
            Ok(0) => panic!("read past the damaged chunk"),
            Ok(n) => offset += n as u64,
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        err.contains("capsule /renamed (") && err.contains(&node.uuid.to_string()),
        "{err}"
    );
}

#[test]
fn tampering_detected_through_the_backend_decorator() {
    let (_t, dir) = common::new_store();
    let faulty = Arc::new(FaultyBackend::new(Arc::new(
        LocalBackend::open(&dir.join("objects"), Some(&dir.join("packs"))).unwrap(),
    )));
    let store = Store::open(&dir, &Unlock::default()).unwrap();
    let f2 = Arc::clone(&faulty);
    let space = Space::new(store.with_chunk_backend(move |_| f2 as Arc<dyn ChunkBackend>));
    let data = common::text_bytes(200_000, 3);
    let node = space
        .put(&mut &data[..], "/t", &PutOptions::default(), &|_| {})
        .unwrap()
        .node;
    for at in [0u64, 5, 13, 40, 1000] {
        faulty.flip_at.store(at, Ordering::SeqCst);
        let err = space.read_all(&node, space::space::View::Raw).unwrap_err();
        assert!(
            matches!(err, SpaceError::Integrity { .. }),
            "flip at {at}: {err}"
        );
    }
    faulty.flip_at.store(u64::MAX, Ordering::SeqCst);
    assert_eq!(
        space.read_all(&node, space::space::View::Raw).unwrap(),
        data
    );
}

#[test]
fn wrong_key_and_wrong_passphrase_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    Store::init(&a, &InitOptions::default()).unwrap();
    Store::init(&b, &InitOptions::default()).unwrap();
    let err = Store::open(
        &a,
        &Unlock {
            key_file: Some(b.join("master.key")),
            passphrase: None,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, SpaceError::WrongKey(_)), "{err}");
    assert_eq!(err.exit_code(), 7);

    let c = tmp.path().join("c");
    let opts = InitOptions {
        unlock: Unlock {
            passphrase: Some(b"right".to_vec()),
            key_file: None,
        },
        kdf: Some(space::crypto::KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }),
    };
    Store::init(&c, &opts).unwrap();
    let err = Store::open(
        &c,
        &Unlock {
            passphrase: Some(b"wrong".to_vec()),
            key_file: None,
        },
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("passphrase does not unlock"),
        "{err}"
    );
    let err = Store::open(&c, &Unlock::default()).err().unwrap();
    assert!(err.to_string().contains("SPACE_PASSPHRASE"), "{err}");
    Store::open(
        &c,
        &Unlock {
            passphrase: Some(b"right".to_vec()),
            key_file: None,
        },
    )
    .unwrap();

    // Through the CLI: exit code 7 and nothing touched.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_spacectl"))
        .args([
            "--store",
            a.to_str().unwrap(),
            "--key-file",
            b.join("master.key").to_str().unwrap(),
            "ls",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("does not belong"));
}

#[test]
fn disk_full_during_put_fails_cleanly_and_keeps_the_old_version() {
    let (_t, dir) = common::new_store();
    let faulty = Arc::new(FaultyBackend::new(Arc::new(
        LocalBackend::open(&dir.join("objects"), Some(&dir.join("packs"))).unwrap(),
    )));
    let f2 = Arc::clone(&faulty);
    let store = Store::open(&dir, &Unlock::default()).unwrap();
    let space = Space::new(store.with_chunk_backend(move |_| f2 as Arc<dyn ChunkBackend>));
    let v1 = common::random_bytes(500_000, 1);
    space
        .put(&mut &v1[..], "/f", &PutOptions::default(), &|_| {})
        .unwrap();
    faulty.space_left.store(700_000, Ordering::SeqCst);
    let v2 = common::random_bytes(2_000_000, 2);
    let err = space
        .put(&mut &v2[..], "/f", &PutOptions::default(), &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    let err = space
        .put(&mut &v2[..], "/new", &PutOptions::default(), &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    faulty.space_left.store(u64::MAX, Ordering::SeqCst);
    assert_eq!(common::read_capsule(&space, "/f"), v1);
    assert!(
        space.resolve("/new").is_err(),
        "a failed put must leave nothing visible"
    );
    space.gc().unwrap();
    let report = space.fsck(&|_, _| {}).unwrap();
    assert!(
        !report.damaged() && report.orphan_objects == 0,
        "{report:?}"
    );
}

/// A real full filesystem (a 16 MiB tmpfs), when we may mount one (root, as in CI).
#[test]
fn disk_full_on_a_real_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=16m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must be able to mount a tmpfs for this test"
        );
        eprintln!("skipping: cannot mount tmpfs (not root)");
        return;
    }
    let dir = mnt.join("store");
    let result = std::panic::catch_unwind(|| {
        Store::init(&dir, &InitOptions::default()).unwrap();
        let src = tmp.path().join("big.bin");
        std::fs::write(&src, common::random_bytes(1 << 20, 1)).unwrap();
        let o = common::spacectl(&dir, &["put", src.to_str().unwrap(), "--as", "/keep"]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        std::fs::write(&src, common::random_bytes(40 << 20, 2)).unwrap();
        let o = common::spacectl(&dir, &["put", src.to_str().unwrap(), "--as", "/big"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            common::stderr(&o).contains("No space left"),
            "{}",
            common::stderr(&o)
        );
        let o = common::spacectl(&dir, &["ls"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout), "keep\n");
        let o = common::spacectl(&dir, &["gc"]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        let o = common::spacectl(&dir, &["fsck"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let o = common::spacectl(&dir, &["get", "/keep"]);
        assert_eq!(o.stdout, common::random_bytes(1 << 20, 1));
    });
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    result.unwrap();
}

#[test]
fn malformed_policy_names_field_and_line_and_stores_nothing() {
    let (t, dir) = common::new_store();
    let pol = t.path().join("bad.yaml");
    std::fs::write(&pol, "dedup: true\ntransform:\n  - name: redact\n    image: file:///r.wasm\n    triger: on-read\n").unwrap();
    let src = t.path().join("x");
    std::fs::write(&src, b"data").unwrap();
    let o = common::spacectl(
        &dir,
        &[
            "put",
            src.to_str().unwrap(),
            "--policy",
            pol.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = common::stderr(&o);
    assert!(
        err.contains("unknown field `triger`")
            && err.contains("line 5")
            && err.contains("transform[0]"),
        "{err}"
    );
    let o = common::spacectl(&dir, &["ls"]);
    assert!(o.stdout.is_empty());
    assert!(common::spacectl(&dir, &["fsck"]).status.success());
    let o = common::spacectl(&dir, &["stats"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("chunks:            0"));
}

#[test]
fn exit_codes_scripts_can_rely_on() {
    let (t, dir) = common::new_store();
    let src = t.path().join("x");
    std::fs::write(&src, b"data").unwrap();
    let code = |args: &[&str]| common::spacectl(&dir, args).status.code();
    assert_eq!(code(&["get", "/missing"]), Some(3));
    assert_eq!(
        code(&["get", "6f1c2b8e-4d3a-4b5c-9e8f-0a1b2c3d4e5f"]),
        Some(3)
    );
    assert_eq!(code(&["mkdir", "/d"]), Some(0));
    assert_eq!(code(&["mkdir", "/d"]), Some(4));
    assert_eq!(
        code(&["put", src.to_str().unwrap(), "--as", "/d/x"]),
        Some(0)
    );
    assert_eq!(
        code(&["put", src.to_str().unwrap(), "--as", "/d/x/y"]),
        Some(5)
    );
    assert_eq!(code(&["rm", "/d"]), Some(5));
    assert_eq!(
        code(&["put", src.to_str().unwrap(), "--as", "/other"]),
        Some(0)
    );
    assert_eq!(code(&["mv", "/other", "/d/x"]), Some(4));
    assert_eq!(code(&["mv", "-f", "/other", "/d/x"]), Some(0));
    assert_eq!(
        code(&["put", src.to_str().unwrap(), "--as", "/nodir/x"]),
        Some(3)
    );
    assert_eq!(code(&["rm", "-r", "/d"]), Some(0));
    assert_eq!(code(&["bogus-command"]), Some(2));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_spacectl"))
        .env_remove("SPACE_STORE")
        .arg("ls")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("SPACE_STORE"));
    let o = common::spacectl(&t.path().join("not-a-store"), &["ls"]);
    assert_ne!(o.status.code(), Some(0));
}

/// `get -o` into a device or a FIFO writes into it: the temporary-file-and-rename that protects
/// regular files must never replace `/dev/null` (or a named pipe) with a plain file.
#[test]
fn get_into_a_device_or_fifo_writes_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let (t, dir) = common::new_store();
    let src = t.path().join("x");
    let data = common::random_bytes(3 << 20, 9);
    std::fs::write(&src, &data).unwrap();
    let o = common::spacectl(&dir, &["put", src.to_str().unwrap(), "--as", "/x"]);
    assert!(o.status.success(), "{}", common::stderr(&o));

    let o = common::spacectl(&dir, &["get", "/x", "-o", "/dev/null"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let null = std::fs::metadata("/dev/null").unwrap();
    assert!(null.file_type().is_char_device(), "/dev/null replaced");

    let fifo = t.path().join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let o = common::spacectl(&dir, &["get", "/x", "-o", fifo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        reader.join().unwrap() == data,
        "bytes through the FIFO differ"
    );
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

/// A writer bug that sealed the wrong bytes under a chunk's id (simulated by re-sealing one
/// object with other plaintext of the same length): the AES-GCM tag is valid, so only a
/// recomputed chunk id can tell. fsck always recomputes; reads do when the store sets
/// `recompute_chunk_ids` (docs/FORMAT.md 4.2).
#[test]
fn recompute_chunk_ids_catches_bytes_sealed_under_the_wrong_id() {
    use space::pipeline::chunk_codec::{self, EncodeSettings};
    let (t, dir) = common::new_store();
    let data = common::random_bytes(300 << 10, 6);
    let src = t.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    let o = common::spacectl(&dir, &["put", src.to_str().unwrap(), "--as", "/x"]);
    assert!(o.status.success(), "{}", common::stderr(&o));

    let space = common::open(&dir);
    let mut rows = space.store.meta.chunk_rows().unwrap();
    rows.sort_by_key(|r| r.id); // as stored_objects lists them
    let (pack, offset, len) = stored_objects(&dir)[0].clone();
    let row = &rows[0];
    let settings = EncodeSettings {
        zstd_level: None,
        encrypt: true,
        dedup: true,
        segmented: space.store.segmented_objects(),
    };
    let other = common::random_bytes(row.plain_len as usize, 7);
    let forged = chunk_codec::encode(&space.store.keys, settings, &row.id, &other, None);
    assert_eq!(forged.len(), len as usize);
    drop(space);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[offset as usize..offset as usize + forged.len()].copy_from_slice(&forged);
    std::fs::write(&pack, &bytes).unwrap();

    let o = common::spacectl(&dir, &["fsck"]);
    assert_eq!(o.status.code(), Some(6), "fsck must recompute every id");
    // By default the tag is the check, and it holds: the reader returns the sealed bytes.
    let o = common::spacectl(&dir, &["get", "/x"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_ne!(o.stdout, data);
    let o = common::spacectl(&dir, &["config", "set", "recompute_chunk_ids", "true"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = common::spacectl(&dir, &["get", "/x"]);
    assert_eq!(o.status.code(), Some(6), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("integrity error"));
    assert!(o.stdout.len() < data.len() && o.stdout == data[..o.stdout.len()]);
}

/// `spacectl get … | head`: when the reader closes the pipe, get exits 141 (as if killed by
/// SIGPIPE, CLI.md) without an error message.
#[test]
fn get_into_a_closed_pipe_exits_141_quietly() {
    use std::io::Read;
    let (t, dir) = common::new_store();
    let src = t.path().join("x");
    std::fs::write(&src, common::random_bytes(8 << 20, 11)).unwrap();
    let o = common::spacectl(&dir, &["put", src.to_str().unwrap(), "--as", "/x"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spacectl"))
        .arg("--store")
        .arg(&dir)
        .args(["get", "/x"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap(); // then closed
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141), "{}", common::stderr(&o));
    assert_eq!(common::stderr(&o), "");
}

#[test]
fn fsck_reports_a_redo_log_set_aside_as_damage() {
    let (_t, dir) = common::new_store();
    assert!(common::spacectl(&dir, &["fsck"]).status.success());
    // What a writer leaves when records of a crashed mount could not be re-applied
    // (docs/FORMAT.md 5.3): the store is not clean until someone has looked.
    let kept = dir.join("meta.db-redo.failed-1765000000000000000");
    std::fs::write(&kept, b"records").unwrap();
    let o = common::spacectl(&dir, &["fsck"]);
    assert_eq!(o.status.code(), Some(6));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("could not be re-applied") && out.contains(kept.to_str().unwrap()),
        "{out}"
    );
    std::fs::remove_file(&kept).unwrap();
    assert!(common::spacectl(&dir, &["fsck"]).status.success());
}

/// `get -o FILE` killed halfway (Ctrl-C, kill -9) leaves FILE as it was and nothing beside it:
/// the bytes go to an unnamed file that dies with the process.
#[test]
fn a_killed_get_leaves_no_partial_output() {
    let (t, dir) = common::new_store();
    let src = t.path().join("big");
    let data = common::random_bytes(256 << 20, 11);
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let o = common::spacectl(&dir, &["put", src.to_str().unwrap(), "--as", "/big"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("big.bin");
    std::fs::write(&target, b"previous").unwrap();
    // A slow reader of the output is not possible with -o; kill as soon as the copy runs.
    let mut killed_midway = false;
    for delay_ms in [150u64, 60, 20] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spacectl"))
            .args(["--store", dir.to_str().unwrap(), "get", "/big", "-o"])
            .arg(&target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        let names: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["big.bin"], "nothing is left beside the target");
        let now = std::fs::read(&target).unwrap();
        if still_running && now == b"previous" {
            killed_midway = true;
            break;
        }
        // Finished before the kill: the target is whole; try again with a shorter delay.
        assert_eq!(now.len(), 256 << 20);
        std::fs::write(&target, b"previous").unwrap();
    }
    assert!(killed_midway, "spacectl get finished before every kill");
}

/// fsck names every capsule that uses each damaged chunk, with the offset, and no other:
/// a chunk shared by two capsules (dedup) names both.
#[test]
fn fsck_names_the_users_of_each_damaged_chunk() {
    let (_t, dir) = common::new_store();
    let shared = common::random_bytes(2 << 20, 21);
    let own = common::random_bytes(2 << 20, 22);
    let space = common::open(&dir);
    for (path, data) in [("/a", &shared), ("/b", &shared), ("/c", &own)] {
        space
            .put(&mut &data[..], path, &PutOptions::default(), &|_| {})
            .unwrap();
    }
    // The second chunk of /a (also /b's) and the second chunk of /c.
    let second = |path: &str| {
        let node = space.resolve(path).unwrap();
        space.store.meta.extents_from(node.ino, 0, 2).unwrap()[1]
    };
    let (ab, c) = (second("/a"), second("/c"));
    for e in [ab, c] {
        let located = space.store.meta.chunk_location(&e.chunk).unwrap().unwrap();
        let loc = located.loc.expect("packed");
        let pack = dir.join("packs").join(format!("{:016x}.pack", loc.pack));
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[(loc.offset + located.stored_len as u64 / 2) as usize] ^= 0x04;
        std::fs::write(&pack, &bytes).unwrap();
    }
    drop(space);

    let report = common::open(&dir).fsck(&|_, _| {}).unwrap();
    assert_eq!(report.bad_chunks.len(), 2, "{report:?}");
    let users = |id| {
        let (_, _, users) = report.bad_chunks.iter().find(|b| b.0 == id).unwrap();
        users.clone()
    };
    let ab_users = users(ab.chunk);
    assert_eq!(ab_users.len(), 2, "{ab_users:?}");
    assert!(ab_users[0].starts_with("capsule /a ("), "{ab_users:?}");
    assert!(ab_users[1].starts_with("capsule /b ("), "{ab_users:?}");
    let at = format!(" at offset {}", ab.offset);
    assert!(ab_users.iter().all(|u| u.ends_with(&at)), "{ab_users:?}");
    let c_users = users(c.chunk);
    assert_eq!(c_users.len(), 1, "{c_users:?}");
    assert!(
        c_users[0].starts_with("capsule /c (")
            && c_users[0].ends_with(&format!(" at offset {}", c.offset)),
        "{c_users:?}"
    );
}
