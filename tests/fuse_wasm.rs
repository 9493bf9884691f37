//! Real WASM modules through a real `spacefs` daemon: the seed example and the example guests
//! show their transformed bytes at the normal path, the stored bytes under /.space/raw, and a
//! trapping module gives EIO to its reader while the daemon keeps serving.

mod fuse_common;

use fuse_common::*;

#[test]
fn wasm_chains_through_the_mount() {
    let s = scratch();
    add_example_modules(
        &s.store,
        &["append_bang", "redact_pii", "grep", "gunzip", "uppercase"],
    );
    let put = |name: &str, data: &[u8], policy: &str| {
        let src = s.tmp.path().join(format!("{name}.src"));
        std::fs::write(&src, data).unwrap();
        let pol = s.tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&pol, policy).unwrap();
        let o = spacectl(
            &s.store,
            &[
                "put",
                src.to_str().unwrap(),
                "--as",
                &format!("/{name}"),
                "--policy",
                pol.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    put(
        "hello",
        b"hello",
        "transform:\n  - name: bang\n    image: capsule://wasm/append_bang.wasm\n",
    );
    let mut pii = Vec::new();
    for i in 0..5000 {
        pii.extend_from_slice(
            format!("{i} mail bob{i}@example.com card 4111-1111-1111-1111\n").as_bytes(),
        );
    }
    put(
        "pii.txt",
        &pii,
        "chunking:\n  avg_size: 16KiB\ntransform:\n  - name: redact\n    image: capsule://wasm/redact_pii.wasm\n",
    );
    let mut corrupt = b"\x1f\x8b\x08\x00\x00\x00\x00\x00".to_vec();
    corrupt.extend_from_slice(&random_bytes(300_000, 4));
    put(
        "bad.gz",
        &corrupt,
        "transform:\n  - name: gunzip\n    image: capsule://wasm/gunzip.wasm\n",
    );
    let big = random_bytes(8 << 20, 5)
        .iter()
        .map(|b| b'a' + b % 26)
        .collect::<Vec<u8>>();
    put(
        "big.txt",
        &big,
        "transform:\n  - name: up\n    image: capsule://wasm/uppercase.wasm\n",
    );

    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let m = d.mnt.clone();
    assert_eq!(
        std::fs::read(m.join("hello")).unwrap(),
        b"hello!",
        "the seed example through cat/read"
    );
    assert_eq!(
        sh_out(&format!("cat {}", m.join("hello").display())),
        "hello!"
    );
    assert_eq!(std::fs::read(m.join(".space/raw/hello")).unwrap(), b"hello");
    let red = std::fs::read(m.join("pii.txt")).unwrap();
    assert_eq!(red.len(), pii.len());
    let red = String::from_utf8(red).unwrap();
    assert!(
        !red.contains("@example.com")
            && !red.contains("4111-1111-1111-1111")
            && red.contains("-1111\n")
    );
    assert_eq!(std::fs::read(m.join(".space/raw/pii.txt")).unwrap(), pii);
    // sha256sum sees exactly the transformed bytes.
    let want = sh_out(&format!(
        "tr a-z A-Z < {} | sha256sum | cut -d' ' -f1",
        s.tmp.path().join("big.txt.src").display()
    ));
    let got = sh_out(&format!(
        "sha256sum {} | cut -d' ' -f1",
        m.join("big.txt").display()
    ));
    assert_eq!(got, want);

    // A trapping module: EIO for that reader, while another reader keeps streaming.
    let bad = m.join("bad.gz");
    let reader = std::thread::spawn({
        let p = m.join("big.txt");
        move || std::fs::read(p).map(|v| v.len())
    });
    let err = std::fs::read(&bad).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(reader.join().unwrap().unwrap(), big.len());
    assert_eq!(
        std::fs::read(m.join("hello")).unwrap(),
        b"hello!",
        "the daemon still serves"
    );

    // A chain attached with setfattr, as `spacectl policy set` would: its modules must load,
    // and the next file created under the directory reads through it.
    std::fs::create_dir(m.join("loud")).unwrap();
    let set = |image: &str| {
        std::process::Command::new("setfattr")
            .args(["-n", "user.space.policy", "-v"])
            .arg(format!("transform:\n  - name: up\n    image: {image}\n"))
            .arg(m.join("loud"))
            .status()
            .unwrap()
    };
    assert!(!set("capsule://wasm/absent.wasm").success());
    assert!(set("capsule://wasm/uppercase.wasm").success());
    std::fs::write(m.join("loud/x"), b"quiet").unwrap();
    assert_eq!(std::fs::read(m.join("loud/x")).unwrap(), b"QUIET");

    let stats = std::fs::read_to_string(m.join(".space/stats")).unwrap();
    assert!(stats.contains("trap"), "{stats}");
    assert!(d.unmount().success());
}
