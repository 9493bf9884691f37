//! Functional tests: ABI v0/v1, configure, multi-piece state, chains, resolution, artifacts.

mod wasm_common;
use wasm_common as common;

use std::sync::Arc;

use common::*;
use space::pipeline::transform::TransformFailure;
use space::wasm::verify::{generate_signing_key, sha256, sign_module};
use space::wasm::{
    ArtifactConfig, ModuleLoadError, NoCapsules, RuntimeConfig, TransformRuntime, TrustPolicy,
};

fn runtime(src: Arc<MemSource>) -> TransformRuntime {
    TransformRuntime::new(RuntimeConfig::default(), src).unwrap()
}

#[test]
fn v0_identity_and_bang() {
    let src = source();
    let id = src.put("id.wasm", bin(&identity()));
    let bang_img = src.put("bang.wasm", bin(&bang()));
    let rt = runtime(src);
    let mut t = rt.open_chain(&[spec("id", &id)]).unwrap();
    assert_eq!(run(t.as_mut(), b"hello", 100).unwrap(), b"hello");
    let mut t = rt.open_chain(&[spec("bang", &bang_img)]).unwrap();
    assert_eq!(run(t.as_mut(), b"hello", 2).unwrap(), b"hello!");
    // finish is called even when process never was.
    let mut t = rt.open_chain(&[spec("bang", &bang_img)]).unwrap();
    assert_eq!(run(t.as_mut(), b"", 1).unwrap(), b"!");
    // Empty chain = identity.
    let mut t = rt.open_chain(&[]).unwrap();
    assert_eq!(run(t.as_mut(), b"abc", 1).unwrap(), b"abc");
}

#[test]
fn same_bytes_share_one_compilation() {
    let src = source();
    let a = src.put("a.wasm", bin(&identity()));
    let b = src.put("b.wasm", bin(&identity()));
    let rt = runtime(src);
    rt.prepare(&spec("a", &a)).unwrap();
    rt.prepare(&spec("b", &b)).unwrap();
    assert_eq!(
        rt.stats().compiles,
        1,
        "same bytes under two names compile once"
    );
    // WAT text is not a deployment format.
    let src2 = source();
    let t = src2.put("t.wat", identity().into_bytes());
    let e = runtime(src2).prepare(&spec("t", &t)).err().unwrap();
    assert!(e.to_string().contains("not a WebAssembly binary"), "{e}");
}

#[test]
fn configure_accepts_and_rejects() {
    let src = source();
    let img = src.put("shift.wasm", bin(&shift()));
    let rt = runtime(src);
    let mut s = spec("shift", &img);
    s.args.insert("shift".into(), "1".into());
    let mut t = rt.open_chain(&[s.clone()]).unwrap();
    assert_eq!(run(t.as_mut(), b"HAL", 10).unwrap(), b"IBM");

    // No args: configure(0, 0) accepted, shift 0.
    let mut t = rt.open_chain(&[spec("shift", &img)]).unwrap();
    assert_eq!(run(t.as_mut(), b"HAL", 10).unwrap(), b"HAL");

    s.args.insert("shift".into(), "x".into());
    let e = rt.open_chain(&[s.clone()]).err().unwrap();
    assert!(
        matches!(&e.cause, TransformFailure::ConfigRejected(m) if m.contains("expected shift=<digit>")),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("transform `shift` failed at chunk 0: configuration rejected"),
        "{e}"
    );

    // NUL in args is refused by the host.
    let mut s2 = spec("shift", &img);
    s2.args.insert("shi\0ft".into(), "1".into());
    let e = rt.open_chain(&[s2]).err().unwrap();
    assert!(
        matches!(e.cause, TransformFailure::ConfigRejected(_)),
        "{e}"
    );

    // Args to a module without configure are refused.
    let src2 = source();
    let id = src2.put("id.wasm", bin(&identity()));
    let rt2 = runtime(src2);
    let mut s3 = spec("id", &id);
    s3.args.insert("k".into(), "v".into());
    let e = rt2.open_chain(&[s3]).err().unwrap();
    assert!(
        matches!(&e.cause, TransformFailure::ConfigRejected(m) if m.contains("no `configure`")),
        "{e}"
    );
}

#[test]
fn multi_piece_stateful() {
    let src = source();
    let img = src.put("count.wasm", bin(&counter()));
    let rt = runtime(src);
    let mut s = spec("count", &img);
    s.resources.max_memory_pages = Some(16); // the seed's limit: P = 240 KiB
    let p = rt.prepare(&s).unwrap();
    assert_eq!(p.piece_size(), 240 * 1024);
    let input = vec![7u8; 1_000_003];
    let mut t = rt.open_prepared(&[p]).unwrap();
    let out = run(t.as_mut(), &input, 300_000).unwrap();
    let total = u64::from_le_bytes(out[..8].try_into().unwrap());
    let pieces = u64::from_le_bytes(out[8..16].try_into().unwrap());
    assert_eq!(total, 1_000_003);
    // Calls of 300 000 ×3 and 100 003 bytes; each 300 000 splits at 245 760 into 2 pieces.
    assert_eq!(pieces, 7);
}

#[test]
fn large_stream_through_identity_respects_piece_size() {
    let src = source();
    let img = src.put("up.wasm", bin(&upper()));
    let rt = runtime(src);
    let mut s = spec("up", &img);
    s.resources.max_memory_pages = Some(16);
    let input: Vec<u8> = (0..3_000_000u32)
        .map(|i| b"abcXYZ09 z{`"[(i % 12) as usize])
        .collect();
    let mut t = rt.open_chain(&[s]).unwrap();
    let out = run(t.as_mut(), &input, 1 << 20).unwrap();
    assert_eq!(out, input.to_ascii_uppercase());
}

#[test]
fn chains_run_in_order_and_forward_finish_tails() {
    let src = source();
    let b = src.put("bang.wasm", bin(&bang()));
    let u = src.put("up.wasm", bin(&upper()));
    let c = src.put("count.wasm", bin(&counter()));
    let rt = runtime(src);
    let mut t = rt
        .open_chain(&[spec("b1", &b), spec("b2", &b), spec("up", &u)])
        .unwrap();
    assert_eq!(run(t.as_mut(), b"hi", 1).unwrap(), b"HI!!");
    let mut t = rt
        .open_chain(&[spec("up", &u), spec("b", &b), spec("count", &c)])
        .unwrap();
    let out = run(t.as_mut(), b"hello", 2).unwrap();
    assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), 6);
}

#[test]
fn runtime_is_shareable_across_threads() {
    let src = source();
    let u = src.put("up.wasm", bin(&upper()));
    let rt = Arc::new(runtime(src));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let rt = rt.clone();
            let u = u.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let mut t = rt.open_chain(&[spec("up", &u)]).unwrap();
                    let s = format!("thread {i} says hi");
                    assert_eq!(
                        run(t.as_mut(), s.as_bytes(), 3).unwrap(),
                        s.to_uppercase().as_bytes()
                    );
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(rt.stats().compiles, 1);
}

#[test]
fn file_images_and_resolution_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bang.wasm");
    std::fs::write(&path, bin(&bang())).unwrap();
    let rt = TransformRuntime::new(RuntimeConfig::default(), Arc::new(NoCapsules)).unwrap();
    let image = format!("file://{}", path.display());
    for _ in 0..2 {
        let mut t = rt.open_chain(&[spec("bang", &image)]).unwrap();
        assert_eq!(run(t.as_mut(), b"x", 1).unwrap(), b"x!");
    }
    // Changing the file is noticed (memo keyed on len+mtime, cache keyed on sha256).
    std::fs::write(&path, bin(&upper())).unwrap();
    let mut t = rt.open_chain(&[spec("up", &image)]).unwrap();
    assert_eq!(run(t.as_mut(), b"x", 1).unwrap(), b"X");

    // Malformed image strings never reach the runtime: the policy parser refuses them.
    for img in ["file://rel/x.wasm", "http://example.com/x.wasm"] {
        assert!(
            space::policy::ModuleImage::try_from(img.to_string()).is_err(),
            "{img}"
        );
    }
    for (img, needle) in [
        ("capsule://nope", "not found"),
        ("file:///definitely/not/here.wasm", "cannot read"),
    ] {
        let e = rt.open_chain(&[spec("t", img)]).err().unwrap();
        assert!(matches!(e.cause, TransformFailure::Load(_)), "{e}");
        assert!(e.to_string().contains(needle), "{img}: {e}");
    }
}

#[test]
fn signatures_verified_with_trusted_keys() {
    let sk = generate_signing_key();
    let module = bin(&bang());
    let src = source();
    let img = src.put("bang.wasm", module.clone());
    let cfg = RuntimeConfig {
        trust: TrustPolicy {
            trusted: vec![("acme".into(), sk.verifying_key())],
            require_signatures: true,
        },
        ..Default::default()
    };
    let rt = TransformRuntime::new(cfg, src).unwrap();
    let mut s = spec("bang", &img);
    s.verification.sha256 = Some(
        space::policy::Sha256Hex::try_from(hex::encode(sha256(&module)).to_uppercase()).unwrap(),
    );
    s.verification.signature = Some(sign_module(&sk, &module));
    let p = rt.prepare(&s).unwrap();
    assert_eq!(p.publisher(), Some("acme"));
    let mut t = rt.open_prepared(&[p]).unwrap();
    assert_eq!(run(t.as_mut(), b"ok", 1).unwrap(), b"ok!");
}

fn artifact_cfg(dir: &std::path::Path, key: &[u8]) -> RuntimeConfig {
    RuntimeConfig {
        artifacts: Some(ArtifactConfig {
            dir: dir.to_path_buf(),
            key: key.to_vec(),
        }),
        ..Default::default()
    }
}

#[test]
fn artifacts_persist_and_tampering_recompiles() {
    let dir = tempfile::tempdir().unwrap();
    let src = source();
    let img = src.put("up.wasm", bin(&upper()));
    let s = spec("up", &img);
    let check = |rt: &TransformRuntime| {
        let mut t = rt.open_chain(std::slice::from_ref(&s)).unwrap();
        assert_eq!(run(t.as_mut(), b"abc", 2).unwrap(), b"ABC");
    };

    let rt1 = TransformRuntime::new(artifact_cfg(dir.path(), b"k1"), src.clone()).unwrap();
    check(&rt1);
    assert_eq!(rt1.stats().compiles, 1);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let artifact = files[0].clone();

    // A second runtime over the same dir loads without compiling.
    let rt2 = TransformRuntime::new(artifact_cfg(dir.path(), b"k1"), src.clone()).unwrap();
    check(&rt2);
    assert_eq!((rt2.stats().compiles, rt2.stats().artifact_loads), (0, 1));

    // Wrong key: rejected, recompiled (and rewritten under the new key).
    let rt3 = TransformRuntime::new(artifact_cfg(dir.path(), b"other"), src.clone()).unwrap();
    check(&rt3);
    let st = rt3.stats();
    assert_eq!(
        (st.compiles, st.artifact_loads, st.artifact_rejects),
        (1, 0, 1)
    );

    // Flip one artifact byte: MAC fails, recompiled.
    let mut bytes = std::fs::read(&artifact).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x55;
    std::fs::write(&artifact, &bytes).unwrap();
    let rt4 = TransformRuntime::new(artifact_cfg(dir.path(), b"other"), src.clone()).unwrap();
    check(&rt4);
    assert_eq!((rt4.stats().compiles, rt4.stats().artifact_rejects), (1, 1));

    // Truncation: rejected, recompiled.
    let good = std::fs::read(&artifact).unwrap();
    std::fs::write(&artifact, &good[..good.len() / 2]).unwrap();
    let rt5 = TransformRuntime::new(artifact_cfg(dir.path(), b"other"), src.clone()).unwrap();
    check(&rt5);
    assert_eq!((rt5.stats().compiles, rt5.stats().artifact_rejects), (1, 1));

    // Header tampering (module hash field) is covered by the MAC too.
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes[60] ^= 1;
    std::fs::write(&artifact, &bytes).unwrap();
    let rt6 = TransformRuntime::new(artifact_cfg(dir.path(), b"other"), src.clone()).unwrap();
    check(&rt6);
    assert_eq!((rt6.stats().compiles, rt6.stats().artifact_rejects), (1, 1));

    // Different engine config (stack size) → stale fingerprint → recompiled.
    let mut cfg = artifact_cfg(dir.path(), b"other");
    cfg.engine.max_wasm_stack = 256 * 1024;
    let rt7 = TransformRuntime::new(cfg, src.clone()).unwrap();
    check(&rt7);
    assert_eq!((rt7.stats().compiles, rt7.stats().artifact_rejects), (1, 1));

    // Fueled flavour is a separate artifact.
    let mut fs = s.clone();
    fs.resources.fuel_limit = Some(1_000_000);
    let mut t = rt1.open_chain(&[fs]).unwrap();
    assert_eq!(run(t.as_mut(), b"q", 1).unwrap(), b"Q");
    assert_eq!(rt1.stats().compiles, 2);
}

#[test]
fn empty_artifact_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = TransformRuntime::new(artifact_cfg(dir.path(), b""), source())
        .err()
        .unwrap();
    assert!(e.to_string().contains("must not be empty"));
}

#[test]
fn load_error_types_are_specific() {
    let src = source();
    let img = src.put("id.wasm", bin(&identity()));
    let rt = runtime(src);
    let mut s = spec("id", &img);
    s.verification.sha256 = Some(space::policy::Sha256Hex::try_from("00".repeat(32)).unwrap());
    let e = rt.prepare(&s).err().unwrap();
    assert!(
        matches!(e.cause, TransformFailure::Load(ModuleLoadError::Verify(_))),
        "{e}"
    );
}

/// Fuel used is reported per chain (what `/.space/stats` adds up), growing with the work done,
/// and is 0 for modules that run without a fuel limit.
#[test]
fn fuel_used_is_counted_per_chain() {
    let src = source();
    let u = src.put("up.wasm", bin(&upper()));
    let rt = runtime(src);
    let mut fueled = spec("up", &u);
    fueled.resources.fuel_limit = Some(50_000_000);
    let mut t = rt.open_chain(std::slice::from_ref(&fueled)).unwrap();
    let mut out = Vec::new();
    t.process(&[b'a'; 1000], &mut out).unwrap();
    let small = t.fuel_used();
    assert!(small > 0, "fuel used after 1000 bytes: {small}");
    t.process(&[b'b'; 100_000], &mut out).unwrap();
    t.finish(&mut out).unwrap();
    let big = t.fuel_used();
    assert!(big > small * 10, "{small} then {big}");
    assert_eq!(out.len(), 101_000);

    let mut t = rt.open_chain(&[spec("up", &u)]).unwrap();
    t.process(&[b'a'; 1000], &mut out).unwrap();
    assert_eq!(t.fuel_used(), 0, "epoch-only modules use no fuel");
}
