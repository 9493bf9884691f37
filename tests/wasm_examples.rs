//! The example guests (examples/guests) through the real engine inside the real store, on
//! multi-chunk capsules: `put`/`get` run the chains end to end, on read and on write.

mod common;

use space::Space;
use space::policy::Policy;
use space::space::{PutOptions, View};
use space::store::Unlock;

/// A store with its runtime and every example module added under /wasm.
fn store_with_modules() -> (tempfile::TempDir, Space) {
    let (t, dir) = common::new_store();
    let space = Space::open_with_runtime(&dir, &Unlock::default()).unwrap();
    for m in [
        "identity",
        "uppercase",
        "append_bang",
        "v0_reverse_case",
        "redact_pii",
        "grep",
        "csv2jsonl",
        "gunzip",
    ] {
        let bytes = std::fs::read(common::example_guests().join(format!("{m}.wasm"))).unwrap();
        let opts = PutOptions {
            policy: Some(Policy::default()),
            parents: true,
            ..Default::default()
        };
        space
            .put(&mut &bytes[..], &format!("/wasm/{m}.wasm"), &opts, &|_| {})
            .unwrap();
    }
    (t, space)
}

/// Small chunks so every test capsule spans many chunks.
const SMALL_CHUNKS: &str = "chunking:\n  min_size: 1KiB\n  avg_size: 4KiB\n  max_size: 16KiB\n";

fn policy(transforms: &str) -> Policy {
    Policy::from_yaml(&format!("{SMALL_CHUNKS}transform:\n{transforms}")).unwrap()
}

fn put(space: &Space, path: &str, data: &[u8], p: Policy) {
    let opts = PutOptions {
        policy: Some(p),
        ..Default::default()
    };
    space.put(&mut &data[..], path, &opts, &|_| {}).unwrap();
}

fn get(space: &Space, path: &str, view: View) -> Vec<u8> {
    let node = space.resolve(path).unwrap();
    space.read_all(&node, view).unwrap()
}

#[test]
fn seed_example_on_read_and_on_write() {
    let (_t, space) = store_with_modules();
    put(
        &space,
        "/r",
        b"hello",
        policy("  - name: bang\n    image: capsule://wasm/append_bang.wasm\n"),
    );
    assert_eq!(get(&space, "/r", View::Transformed), b"hello!");
    assert_eq!(get(&space, "/r", View::Raw), b"hello");
    put(
        &space,
        "/w",
        b"hello",
        policy(
            "  - name: bang\n    image: capsule://wasm/append_bang.wasm\n    trigger: on-write\n",
        ),
    );
    assert_eq!(
        get(&space, "/w", View::Raw),
        b"hello!",
        "on-write stores the transformed bytes"
    );
    assert_eq!(get(&space, "/w", View::Transformed), b"hello!");
}

#[test]
fn identity_uppercase_and_v0_modules_on_multi_chunk_capsules() {
    let (_t, space) = store_with_modules();
    let data = common::text_bytes(300_000, 1);
    put(
        &space,
        "/id",
        &data,
        policy("  - name: id\n    image: capsule://wasm/identity.wasm\n"),
    );
    assert_eq!(get(&space, "/id", View::Transformed), data);
    let node = space.resolve("/id").unwrap();
    assert!(
        space
            .store
            .meta
            .extents_from(node.ino, 0, 1000)
            .unwrap()
            .len()
            > 10
    );

    put(
        &space,
        "/up",
        &data,
        policy(
            "  - name: up\n    image: capsule://wasm/uppercase.wasm\n    resources:\n      max_memory_pages: 16\n      fuel_limit: 10000000\n",
        ),
    );
    assert_eq!(
        get(&space, "/up", View::Transformed),
        data.to_ascii_uppercase()
    );

    let mixed = b"Hello World, mIxEd CaSe\n".repeat(5000);
    put(
        &space,
        "/v0",
        &mixed,
        policy("  - name: swap\n    image: capsule://wasm/v0_reverse_case.wasm\n"),
    );
    let swapped: Vec<u8> = mixed
        .iter()
        .map(|b| {
            if b.is_ascii_alphabetic() {
                b ^ 0x20
            } else {
                *b
            }
        })
        .collect();
    assert_eq!(get(&space, "/v0", View::Transformed), swapped);
}

#[test]
fn redactor_masks_emails_and_cards_across_chunk_boundaries() {
    let (_t, space) = store_with_modules();
    let mut text = Vec::new();
    for i in 0..3000 {
        text.extend_from_slice(
            format!("line {i}: contact alice.{i}@example.com, card 4111 1111 1111 1111 ok\n")
                .as_bytes(),
        );
    }
    put(
        &space,
        "/pii",
        &text,
        policy("  - name: redact\n    image: capsule://wasm/redact_pii.wasm\n"),
    );
    let out = get(&space, "/pii", View::Transformed);
    assert_eq!(out.len(), text.len(), "the redactor keeps lengths");
    let s = String::from_utf8(out).unwrap();
    assert!(
        !s.contains("@example.com") && !s.contains("alice."),
        "e-mails leaked"
    );
    assert!(
        !s.contains("4111 1111 1111 1111") && s.contains("1111 ok"),
        "cards not masked to last 4"
    );
    assert_eq!(
        get(&space, "/pii", View::Raw),
        text,
        "stored bytes stay intact"
    );
}

#[test]
fn grep_keeps_matching_lines_including_ones_straddling_chunks() {
    let (_t, space) = store_with_modules();
    let mut text = Vec::new();
    let mut want = Vec::new();
    for i in 0..20_000 {
        let line = if i % 7 == 0 {
            format!("{i} ERROR something broke in module {}\n", i * 31)
        } else {
            format!("{i} info all good, nothing to see here {}\n", i * 17)
        };
        if line.to_lowercase().contains("error") {
            want.extend_from_slice(line.as_bytes());
        }
        text.extend_from_slice(line.as_bytes());
    }
    text.extend_from_slice(b"last line error without newline");
    want.extend_from_slice(b"last line error without newline");
    put(
        &space,
        "/log",
        &text,
        policy(
            "  - name: errors\n    image: capsule://wasm/grep.wasm\n    args:\n      pattern: error\n      ignore_case: true\n",
        ),
    );
    assert_eq!(get(&space, "/log", View::Transformed), want);
}

#[test]
fn csv_to_json_lines_on_write() {
    let (_t, space) = store_with_modules();
    let mut csv = b"id,name,note\n".to_vec();
    let mut want = Vec::new();
    for i in 0..5000 {
        csv.extend_from_slice(format!("{i},\"name, {i}\",\"said \"\"hi\"\"\"\n").as_bytes());
        want.extend_from_slice(
            format!("{{\"id\":\"{i}\",\"name\":\"name, {i}\",\"note\":\"said \\\"hi\\\"\"}}\n")
                .as_bytes(),
        );
    }
    put(
        &space,
        "/data.jsonl",
        &csv,
        policy(
            "  - name: csv2jsonl\n    image: capsule://wasm/csv2jsonl.wasm\n    trigger: on-write\n",
        ),
    );
    assert_eq!(get(&space, "/data.jsonl", View::Raw), want);
}

#[test]
fn gunzip_on_read_of_a_real_gzip_file_and_a_chain() {
    let (t, space) = store_with_modules();
    let data = common::text_bytes(400_000, 9);
    let plain = t.path().join("plain.txt");
    std::fs::write(&plain, &data).unwrap();
    let st = std::process::Command::new("gzip")
        .arg("-k")
        .arg(&plain)
        .status()
        .unwrap();
    assert!(st.success());
    let gz = std::fs::read(t.path().join("plain.txt.gz")).unwrap();
    put(
        &space,
        "/t.gz",
        &gz,
        policy("  - name: gunzip\n    image: capsule://wasm/gunzip.wasm\n"),
    );
    assert_eq!(get(&space, "/t.gz", View::Transformed), data);

    // A chain: decompress, then uppercase.
    put(
        &space,
        "/t2.gz",
        &gz,
        policy(
            "  - name: gunzip\n    image: capsule://wasm/gunzip.wasm\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n",
        ),
    );
    assert_eq!(
        get(&space, "/t2.gz", View::Transformed),
        data.to_ascii_uppercase()
    );
}

#[test]
fn a_trapping_module_fails_that_read_only_and_names_transform_and_chunk() {
    let (_t, space) = store_with_modules();
    let mut corrupt = b"\x1f\x8b\x08\x00\x00\x00\x00\x00".to_vec();
    corrupt.extend_from_slice(&common::random_bytes(100_000, 3));
    put(
        &space,
        "/bad.gz",
        &corrupt,
        policy("  - name: gunzip\n    image: capsule://wasm/gunzip.wasm\n"),
    );
    let node = space.resolve("/bad.gz").unwrap();
    let err = space.read_all(&node, View::Transformed).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 8, "{msg}");
    assert!(
        msg.contains("/bad.gz") && msg.contains("`gunzip`") && msg.contains("chunk"),
        "{msg}"
    );
    // The same process keeps serving healthy chains.
    put(
        &space,
        "/ok",
        b"fine",
        policy("  - name: bang\n    image: capsule://wasm/append_bang.wasm\n"),
    );
    assert_eq!(get(&space, "/ok", View::Transformed), b"fine!");
    // A failed on-write chain stores nothing.
    let opts = PutOptions {
        policy: Some(policy(
            "  - name: gunzip\n    image: capsule://wasm/gunzip.wasm\n    trigger: on-write\n",
        )),
        ..Default::default()
    };
    let before = space.store.meta.stats().unwrap();
    assert!(
        space
            .put(&mut &corrupt[..], "/never", &opts, &|_| {})
            .is_err()
    );
    assert!(space.resolve("/never").is_err());
    assert_eq!(space.store.meta.stats().unwrap().files, before.files);
}

#[test]
fn cli_transform_run_and_module_commands() {
    let (t, dir) = common::new_store();
    let dist = common::example_guests();
    let o = common::spacectl(
        &dir,
        &[
            "module",
            "add",
            dist.join("uppercase.wasm").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let sha = out
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("sha256: ")
        .to_string();
    let pol = t.path().join("p.yaml");
    std::fs::write(&pol, format!("transform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n    verification:\n      sha256: {sha}\n")).unwrap();
    let input = t.path().join("in.txt");
    std::fs::write(&input, b"make me loud\n").unwrap();
    let o = common::spacectl(
        &dir,
        &[
            "transform",
            "run",
            "--policy",
            pol.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(o.stdout, b"MAKE ME LOUD\n");

    // A wrong pin is refused before the module runs, saying which check failed.
    std::fs::write(&pol, format!("transform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n    verification:\n      sha256: {}\n", "0".repeat(64))).unwrap();
    let o = common::spacectl(
        &dir,
        &[
            "transform",
            "run",
            "--policy",
            pol.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(8));
    assert!(
        common::stderr(&o).contains("sha256 mismatch"),
        "{}",
        common::stderr(&o)
    );

    // Signatures: required by the store, made with a trusted key.
    let key = t.path().join("pub.key");
    let o = common::spacectl(&dir, &["key", "gen", "--out", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let public = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        common::spacectl(&dir, &["config", "set", "require_signatures", "true"])
            .status
            .success()
    );
    std::fs::write(
        &pol,
        "transform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n",
    )
    .unwrap();
    let o = common::spacectl(
        &dir,
        &[
            "transform",
            "run",
            "--policy",
            pol.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(8));
    assert!(
        common::stderr(&o).contains("signature is required"),
        "{}",
        common::stderr(&o)
    );
    let o = common::spacectl(
        &dir,
        &[
            "module",
            "sign",
            "--key",
            key.to_str().unwrap(),
            dist.join("uppercase.wasm").to_str().unwrap(),
        ],
    );
    let sig = String::from_utf8_lossy(&o.stdout).trim().to_string();
    std::fs::write(&pol, format!("transform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n    verification:\n      signature: {sig}\n")).unwrap();
    let o = common::spacectl(
        &dir,
        &[
            "transform",
            "run",
            "--policy",
            pol.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(8), "untrusted key must be refused");
    assert!(
        common::spacectl(&dir, &["key", "trust", "acme", &public])
            .status
            .success()
    );
    let o = common::spacectl(
        &dir,
        &[
            "transform",
            "run",
            "--policy",
            pol.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(o.stdout, b"MAKE ME LOUD\n");
    let o = common::spacectl(&dir, &["key", "list"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("acme\t"));
}

#[test]
fn compiled_artifacts_persist_across_processes() {
    let (t, dir) = common::new_store();
    let dist = common::example_guests();
    assert!(
        common::spacectl(
            &dir,
            &[
                "module",
                "add",
                dist.join("identity.wasm").to_str().unwrap()
            ]
        )
        .status
        .success()
    );
    let pol = t.path().join("p.yaml");
    std::fs::write(
        &pol,
        "transform:\n  - name: id\n    image: capsule://wasm/identity.wasm\n",
    )
    .unwrap();
    let input = t.path().join("in.txt");
    std::fs::write(&input, b"x").unwrap();
    let run = || {
        common::spacectl(
            &dir,
            &[
                "transform",
                "run",
                "--policy",
                pol.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
        )
    };
    assert!(run().status.success());
    let artifacts: Vec<_> = std::fs::read_dir(dir.join("artifacts")).unwrap().collect();
    assert_eq!(artifacts.len(), 1, "one authenticated artifact persisted");
    // A tampered artifact is recompiled, never loaded: the run still gives the right answer.
    let path = artifacts[0].as_ref().unwrap().path();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let o = run();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(o.stdout, b"x");
}
