//! The derived-output cache with real WASM modules in a real store: hits and misses, no stale
//! output when the source, a module or an argument changes, LRU eviction under a budget,
//! abandoned and crashed cache writes, named views and provenance.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;

use space::Space;
use space::policy::Policy;
use space::space::{PutOptions, View};
use space::store::Unlock;

fn store_with(modules: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Space) {
    let (t, dir) = common::new_store();
    let space = Space::open_with_runtime(&dir, &Unlock::default()).unwrap();
    for m in modules {
        add_module(&space, m, &format!("/wasm/{m}.wasm"));
    }
    (t, dir, space)
}

fn add_module(space: &Space, module: &str, path: &str) {
    let bytes = std::fs::read(common::example_guests().join(format!("{module}.wasm"))).unwrap();
    let opts = PutOptions {
        policy: Some(Policy::default()),
        parents: true,
        ..Default::default()
    };
    space.put(&mut &bytes[..], path, &opts, &|_| {}).unwrap();
}

/// Small chunks so capsules and their cached outputs span many chunks.
const SMALL_CHUNKS: &str = "chunking:\n  min_size: 1KiB\n  avg_size: 4KiB\n  max_size: 16KiB\n";

fn put(space: &Space, path: &str, data: &[u8], policy_yaml: &str) {
    let opts = PutOptions {
        policy: Some(Policy::from_yaml(&format!("{SMALL_CHUNKS}{policy_yaml}")).unwrap()),
        ..Default::default()
    };
    space.put(&mut &data[..], path, &opts, &|_| {}).unwrap();
}

fn read(space: &Space, path: &str, view: Option<&str>) -> Vec<u8> {
    let node = space.resolve(path).unwrap();
    let mut out = Vec::new();
    space.read_view_to(&node, view, &mut out, &|_| {}).unwrap();
    out
}

fn hits(space: &Space) -> (u64, u64) {
    let c = space.derived_counters();
    (
        c.hits.load(Ordering::Relaxed),
        c.misses.load(Ordering::Relaxed),
    )
}

const UPPER: &str = "transform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n";

#[test]
fn second_read_is_served_from_the_cache() {
    let (_t, _dir, space) = store_with(&["uppercase"]);
    let data = common::text_bytes(300_000, 1);
    put(&space, "/a.txt", &data, UPPER);
    let want = data.to_ascii_uppercase();

    assert_eq!(read(&space, "/a.txt", None), want);
    assert_eq!(hits(&space), (0, 1), "first read misses");
    let totals = space.derived_totals().unwrap();
    assert_eq!(totals.entries, 1);
    assert_eq!(totals.bytes, want.len() as u64);

    assert_eq!(read(&space, "/a.txt", None), want);
    assert_eq!(hits(&space), (1, 1), "second read hits");
    // The normal read API goes through the cache too.
    let node = space.resolve("/a.txt").unwrap();
    assert_eq!(space.read_all(&node, View::Transformed).unwrap(), want);
    assert_eq!(hits(&space).0, 2);
    assert_eq!(space.read_all(&node, View::Raw).unwrap(), data);

    // Random access to the materialized view.
    let d = space.derivation(&node, None).unwrap().unwrap();
    let e = space.materialized(&d).unwrap().unwrap();
    let mut r = space.entry_reader(&e, "test".into());
    for off in [0u64, 4095, 123_457, 299_000] {
        let mut buf = vec![0u8; 1000];
        let n = r.read_at(off, &mut buf).unwrap();
        let end = (off as usize + 1000).min(want.len());
        assert_eq!(&buf[..n], &want[off as usize..end], "offset {off}");
    }

    let report = space.fsck(&|_, _| {}).unwrap();
    assert!(!report.damaged(), "{report:?}");
}

#[test]
fn a_changed_source_module_or_argument_is_never_served_stale() {
    let (_t, _dir, space) = store_with(&["uppercase", "grep"]);
    add_module(&space, "uppercase", "/wasm/m.wasm");
    let v1 = b"one ERROR line\nWARN two\nthree ERROR\n".repeat(2000);
    put(
        &space,
        "/log",
        &v1,
        "transform:\n  - name: m\n    image: capsule://wasm/m.wasm\nviews:\n  errors:\n    - name: g\n      image: capsule://wasm/grep.wasm\n      args:\n        pattern: ERROR\n",
    );
    assert_eq!(read(&space, "/log", None), v1.to_ascii_uppercase());
    assert_eq!(read(&space, "/log", None), v1.to_ascii_uppercase());
    assert_eq!(hits(&space), (1, 1));

    // Source changes: new content, new key.
    let v2 = b"fresh ERROR content\n".repeat(3000);
    let node = space.resolve("/log").unwrap();
    space.write_content(&node, &mut &v2[..], None).unwrap();
    assert_eq!(read(&space, "/log", None), v2.to_ascii_uppercase());
    assert_eq!(hits(&space), (1, 2), "changed source misses");

    // Module changes (same image name, different bytes).
    add_module(&space, "v0_reverse_case", "/wasm/m.wasm");
    let swapped: Vec<u8> = v2
        .iter()
        .map(|b| {
            if b.is_ascii_lowercase() {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect();
    assert_eq!(read(&space, "/log", None), swapped);
    assert_eq!(hits(&space), (1, 3), "changed module misses");

    // Argument changes: the grep view with another pattern.
    let errors = read(&space, "/log", Some("errors"));
    assert_eq!(errors, v2, "every line of v2 has ERROR");
    let mut p = space.policy_of(&space.resolve("/log").unwrap()).unwrap();
    p.views.values_mut().next().unwrap()[0]
        .args
        .insert("pattern".into(), "nothing-matches".into());
    space.set_policy("/log", Some(&p)).unwrap();
    assert_eq!(read(&space, "/log", Some("errors")), b"");
    let (h, m) = hits(&space);
    assert_eq!((h, m), (1, 5), "changed argument misses");
    assert_eq!(read(&space, "/log", Some("errors")), b"");
    assert_eq!(hits(&space).0, 2, "and is cached in turn");
}

#[test]
fn entries_are_evicted_least_recently_used_first() {
    let (_t, dir, space) = store_with(&["uppercase"]);
    let size = 100_000usize;
    for i in 0..5 {
        put(
            &space,
            &format!("/f{i}"),
            &common::text_bytes(size, i),
            UPPER,
        );
    }
    drop(space);
    // A budget for three outputs.
    let cfg_path = dir.join("store.yaml");
    let mut cfg = space::store::StoreConfig::read(&cfg_path).unwrap();
    cfg.derived_cache_bytes = 3 * size as u64 + 10;
    cfg.write(&cfg_path).unwrap();
    let space = Space::open_with_runtime(&dir, &Unlock::default()).unwrap();

    for i in 0..3 {
        read(&space, &format!("/f{i}"), None);
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    read(&space, "/f0", None); // f0 is now the most recently used
    assert_eq!(hits(&space), (1, 3));
    read(&space, "/f3", None); // evicts f1, the least recently used
    read(&space, "/f4", None); // evicts f2
    let totals = space.derived_totals().unwrap();
    assert_eq!(totals.entries, 3);
    assert!(totals.bytes <= 3 * size as u64 + 10);
    assert_eq!(space.derived_counters().evicted.load(Ordering::Relaxed), 2);

    let cached = |p: &str| {
        let n = space.resolve(p).unwrap();
        let d = space.derivation(&n, None).unwrap().unwrap();
        space.materialized(&d).unwrap().is_some()
    };
    assert!(cached("/f0") && cached("/f3") && cached("/f4"));
    assert!(!cached("/f1") && !cached("/f2"));
    // Evicted outputs are recomputed correctly, and gc reclaims their chunks.
    assert_eq!(
        read(&space, "/f1", None),
        common::text_bytes(size, 1).to_ascii_uppercase()
    );
    let gc = space.gc().unwrap();
    assert!(gc.chunks_removed > 0, "{gc:?}");
    assert!(!space.fsck(&|_, _| {}).unwrap().damaged());

    // cache clear drops every entry and its chunks.
    let (dropped, _) = space.cache_clear().unwrap();
    assert_eq!(dropped.entries, 3);
    assert_eq!(space.derived_totals().unwrap().entries, 0);
    let stats = space.store.meta.stats().unwrap();
    assert_eq!(stats.unreferenced_chunks, 0);
}

/// A reader that stops early (or fails) leaves no entry behind.
#[test]
fn an_abandoned_read_caches_nothing() {
    let (_t, _dir, space) = store_with(&["uppercase"]);
    let data = common::text_bytes(400_000, 7);
    put(&space, "/a", &data, UPPER);
    struct Breaks(usize);
    impl Write for Breaks {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 < b.len() {
                return Err(std::io::Error::other("reader went away"));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let node = space.resolve("/a").unwrap();
    let r = space.read_view_to(&node, None, &mut Breaks(50_000), &|_| {});
    assert!(r.is_err());
    assert_eq!(space.derived_totals().unwrap().entries, 0);
    assert_eq!(
        space.derived_counters().abandoned.load(Ordering::Relaxed),
        1
    );
    assert!(!space.fsck(&|_, _| {}).unwrap().damaged());
    // The next full read stores it.
    assert_eq!(read(&space, "/a", None), data.to_ascii_uppercase());
    assert_eq!(space.derived_totals().unwrap().entries, 1);
}

/// kill -9 while a cache entry is being written: no entry, or a complete and correct one;
/// the store stays consistent.
#[test]
fn a_crash_while_writing_a_cache_entry_leaves_no_partial_entry() {
    let (_t, dir, space) = store_with(&["uppercase"]);
    let data = common::text_bytes(48 << 20, 3);
    put(&space, "/big", &data, UPPER);
    drop(space);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spacectl"))
        .arg("--store")
        .arg(&dir)
        .args(["get", "/big", "-o", "/dev/null"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    let space = Space::open_with_runtime(&dir, &Unlock::default()).unwrap();
    let report = space.fsck(&|_, _| {}).unwrap();
    assert!(!report.damaged(), "{report:?}");
    let node = space.resolve("/big").unwrap();
    let d = space.derivation(&node, None).unwrap().unwrap();
    match space.materialized(&d).unwrap() {
        None => eprintln!("killed mid-read ({status:?}): no entry, as it must be"),
        Some(e) => {
            eprintln!("the read finished before the kill: the entry must be whole");
            assert_eq!(e.size, data.len() as u64);
        }
    }
    assert_eq!(read(&space, "/big", None), data.to_ascii_uppercase());
    assert_eq!(space.derived_totals().unwrap().entries, 1);
    // `-o /dev/null` wrote into the device: no temporary file beside it, nothing renamed over it.
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    space.gc().unwrap();
    assert!(!space.fsck(&|_, _| {}).unwrap().damaged());
}

#[test]
fn named_views_and_provenance() {
    let (_t, dir, space) = store_with(&["uppercase", "redact_pii", "append_bang"]);
    let text = b"mail bob@example.com now\n".repeat(1000);
    put(
        &space,
        "/p.txt",
        &text,
        "views:\n  upper:\n    - name: up\n      image: capsule://wasm/uppercase.wasm\n  redacted:\n    - name: r\n      image: capsule://wasm/redact_pii.wasm\n",
    );
    // No on-read chain: the default view is the stored bytes.
    assert_eq!(read(&space, "/p.txt", None), text);
    assert_eq!(
        read(&space, "/p.txt", Some("upper")),
        text.to_ascii_uppercase()
    );
    let redacted = read(&space, "/p.txt", Some("redacted"));
    assert!(!redacted.windows(3).any(|w| w == b"bob"));
    assert_eq!(space.derived_totals().unwrap().entries, 2);
    let node = space.resolve("/p.txt").unwrap();
    let err = space
        .read_view_to(&node, Some("nope"), &mut Vec::new(), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no view `nope`") && err.contains("redacted, upper"),
        "{err}"
    );

    // Provenance of a cache entry: the module's sha256, the view, the engine.
    let upper_sha = hex_sha256(&common::example_guests().join("uppercase.wasm"));
    let d = space.derivation(&node, Some("upper")).unwrap().unwrap();
    let e = space.materialized(&d).unwrap().unwrap();
    assert!(e.provenance.contains(&upper_sha), "{}", e.provenance);
    assert!(e.provenance.contains("view: upper"), "{}", e.provenance);
    assert!(e.provenance.contains("wasmtime"), "{}", e.provenance);

    // Provenance of a capsule written through an on-write chain, shown by `spacectl stat`.
    put(
        &space,
        "/w",
        b"hello",
        "transform:\n  - name: bang\n    image: capsule://wasm/append_bang.wasm\n    trigger: on-write\n",
    );
    let w = space.resolve("/w").unwrap();
    let prov = space.store.meta.provenance(w.ino).unwrap().unwrap();
    let bang_sha = hex_sha256(&common::example_guests().join("append_bang.wasm"));
    assert!(
        prov.contains(&bang_sha) && prov.contains("name: bang"),
        "{prov}"
    );
    assert_eq!(space.read_all(&w, View::Raw).unwrap(), b"hello!");
    // A capsule stored without a chain has none.
    assert!(space.store.meta.provenance(node.ino).unwrap().is_none());
    drop(space);
    let o = common::spacectl(&dir, &["stat", "/w"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("provenance (on-write chain):"));
    assert!(out.contains(&bang_sha), "{out}");
    let o = common::spacectl(&dir, &["stat", "/p.txt"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("view upper: cached") && out.contains(&upper_sha),
        "{out}"
    );

    // The CLI: get --view, cache stats, clear and warm.
    let o = common::spacectl(&dir, &["get", "/p.txt", "--view", "upper"]);
    assert!(o.status.success());
    assert_eq!(o.stdout, text.to_ascii_uppercase());
    let o = common::spacectl(&dir, &["get", "/p.txt", "--view", "nope"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("no view `nope`"));
    let o = common::spacectl(&dir, &["cache", "clear"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = common::spacectl(&dir, &["cache", "warm", "/", "--view", "redacted"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("/p.txt: 25000"));
    let o = common::spacectl(&dir, &["cache", "stats"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("entries: 1"), "{out}");
}

#[test]
fn views_must_be_read_only_chains() {
    let e = Policy::from_yaml(
        "views:\n  x:\n    - name: a\n      image: file:///a.wasm\n      trigger: on-write\n",
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("views.x[0].trigger"), "{e}");
    let e = Policy::from_yaml("views:\n  bad/name:\n    - name: a\n      image: file:///a.wasm\n")
        .unwrap_err();
    assert!(e.to_string().contains("bad/name"), "{e}");
    assert!(Policy::from_yaml("cache: maybe\n").is_err());
    let p = Policy::from_yaml("cache: false\n").unwrap();
    assert!(!p.cache);
}

fn hex_sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A module signed by a trusted publisher: provenance names the signer and its key.
#[test]
fn provenance_names_the_signer() {
    let (t, dir, space) = store_with(&["append_bang"]);
    drop(space);
    let key = t.path().join("signing.key");
    let o = common::spacectl(&dir, &["key", "gen", "--out", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let public = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        common::spacectl(&dir, &["key", "trust", "acme", &public])
            .status
            .success()
    );
    let wasm = common::example_guests().join("append_bang.wasm");
    let o = common::spacectl(
        &dir,
        &[
            "module",
            "sign",
            "--key",
            key.to_str().unwrap(),
            wasm.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let sig = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let pol = t.path().join("p.yaml");
    std::fs::write(
        &pol,
        format!("transform:\n  - name: bang\n    image: capsule://wasm/append_bang.wasm\n    trigger: on-write\n    verification:\n      signature: {sig}\n"),
    )
    .unwrap();
    let src = t.path().join("in");
    std::fs::write(&src, b"signed").unwrap();
    let o = common::spacectl(
        &dir,
        &[
            "put",
            src.to_str().unwrap(),
            "--as",
            "/s",
            "--policy",
            pol.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let space = Space::open_with_runtime(&dir, &Unlock::default()).unwrap();
    let node = space.resolve("/s").unwrap();
    let prov = space.store.meta.provenance(node.ino).unwrap().unwrap();
    let fp = space::wasm::verify::key_fingerprint(
        &space::wasm::verify::decode_verifying_key(&public).unwrap(),
    );
    assert!(prov.contains(&format!("signer: acme ({fp})")), "{prov}");
    let o = common::spacectl(&dir, &["stat", "/s"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("signer: acme"));
}

/// `preserves_size` is checked: a module that changes the length fails the read, naming it.
#[test]
fn a_broken_size_promise_fails_the_read() {
    let (_t, _dir, space) = store_with(&["append_bang", "uppercase"]);
    let data = common::text_bytes(100_000, 2);
    put(
        &space,
        "/ok",
        &data,
        "transform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n    chunk_local: true\n    preserves_size: true\n",
    );
    assert_eq!(read(&space, "/ok", None), data.to_ascii_uppercase());
    put(
        &space,
        "/liar",
        &data,
        "transform:\n  - name: bang\n    image: capsule://wasm/append_bang.wasm\n    chunk_local: true\n    preserves_size: true\n",
    );
    let node = space.resolve("/liar").unwrap();
    let e = space
        .read_view_to(&node, None, &mut Vec::new(), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("preserves_size") && e.contains("/liar"), "{e}");
    put(
        &space,
        "/liar2",
        &data,
        "transform:\n  - name: bang\n    image: capsule://wasm/append_bang.wasm\n    preserves_size: true\n",
    );
    let node = space.resolve("/liar2").unwrap();
    let e = space
        .read_view_to(&node, None, &mut Vec::new(), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("preserves_size"), "{e}");
    assert_eq!(
        space.derived_totals().unwrap().entries,
        1,
        "only /ok is cached"
    );
}
