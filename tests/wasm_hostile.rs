//! Hostile guests. Each case must produce a clear typed error (no host panic), and the same
//! shared runtime must then still run a healthy chain correctly.

mod wasm_common;
use wasm_common as common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use space::pipeline::transform::{TransformError, TransformFailure};
use space::policy::TransformSpec;
use space::wasm::verify::{generate_signing_key, sha256, sign_module};
use space::wasm::{ModuleLoadError, RuntimeConfig, TransformRuntime, TrustPolicy, VerifyError};

struct Fixture {
    rt: Arc<TransformRuntime>,
    src: Arc<MemSource>,
    healthy: Vec<TransformSpec>,
}

/// One runtime shared by every test in this file (tests run on parallel threads).
fn fx() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let src = source();
        let b = src.put("bang.wasm", bin(&bang()));
        let u = src.put("up.wasm", bin(&upper()));
        let mut cfg = RuntimeConfig::default();
        cfg.engine.default_timeout_ms = 2000;
        let rt = Arc::new(TransformRuntime::new(cfg, src.clone()).unwrap());
        Fixture {
            rt,
            src,
            healthy: vec![spec("up", &u), spec("bang", &b)],
        }
    })
}

fn assert_healthy() {
    let f = fx();
    let mut t = f.rt.open_chain(&f.healthy).unwrap();
    assert_eq!(run(t.as_mut(), b"still fine", 3).unwrap(), b"STILL FINE!");
}

/// Run `wat` (text, compiled to binary) as a one-stage chain over `input`; return the error.
fn fail_with(
    name: &str,
    module: Vec<u8>,
    tweak: impl FnOnce(&mut TransformSpec),
) -> TransformError {
    let f = fx();
    let img = f.src.put(&format!("{name}.wasm"), module);
    let mut s = spec(name, &img);
    tweak(&mut s);
    let e = match f.rt.open_chain(&[s]) {
        Err(e) => e,
        Ok(mut t) => run(t.as_mut(), b"some input", 64).expect_err("hostile module must fail"),
    };
    assert_eq!(e.transform, name);
    println!("{name}: {e}");
    assert_healthy();
    e
}

#[test]
fn infinite_loop_times_out_within_deadline() {
    let start = Instant::now();
    let e = fail_with(
        "spin",
        bin(&with_process("(loop $l (br $l)) (i64.const 0)")),
        |s| {
            s.resources.timeout_ms = Some(100);
        },
    );
    // Measured around the whole case (includes instantiate, healthy re-run, compile).
    let elapsed = start.elapsed();
    assert!(
        matches!(e.cause, TransformFailure::Timeout { ms: 100 }),
        "{e}"
    );
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(100 + 400),
        "took {elapsed:?}"
    );
}

#[test]
fn timeout_is_precise_per_call() {
    let f = fx();
    let img = f.src.put(
        "spin2.wasm",
        bin(&with_process("(loop $l (br $l)) (i64.const 0)")),
    );
    let mut s = spec("spin2", &img);
    s.resources.timeout_ms = Some(50);
    let mut t = f.rt.open_chain(&[s]).unwrap();
    let start = Instant::now();
    let e = t.process(b"x", &mut Vec::new()).unwrap_err();
    let el = start.elapsed();
    assert!(
        matches!(e.cause, TransformFailure::Timeout { ms: 50 }),
        "{e}"
    );
    println!("50 ms timeout fired after {el:?}");
    // Deadline + one 5 ms tick, plus slack for a loaded 2-core CI machine.
    assert!(
        el >= Duration::from_millis(45) && el < Duration::from_millis(50 + 150),
        "{el:?}"
    );
    // The failed chain refuses further use.
    let e2 = t.process(b"x", &mut Vec::new()).unwrap_err();
    assert!(
        matches!(e2.cause, TransformFailure::InvalidState(_)),
        "{e2}"
    );
}

#[test]
fn fuel_exhaustion() {
    let e = fail_with(
        "burn",
        bin(&with_process("(loop $l (br $l)) (i64.const 0)")),
        |s| {
            s.resources.fuel_limit = Some(100_000);
        },
    );
    assert!(
        matches!(e.cause, TransformFailure::FuelExhausted { limit: 100_000 }),
        "{e}"
    );
}

#[test]
fn fuel_is_per_call_not_per_stream() {
    // Upper over many pieces with a fuel budget that covers one piece but not the whole stream.
    let f = fx();
    let img = f.src.put("up-fuel.wasm", bin(&upper()));
    let mut s = spec("upf", &img);
    s.resources.fuel_limit = Some(200_000);
    let mut t = f.rt.open_chain(&[s]).unwrap();
    let input = vec![b'a'; 4096 * 64];
    let out = run(t.as_mut(), &input, 4096).unwrap();
    assert_eq!(out, vec![b'A'; 4096 * 64]);
}

#[test]
fn unbounded_memory_grow() {
    let body =
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable";
    let e = fail_with("grow", bin(&with_process(body)), |s| {
        s.resources.max_memory_pages = Some(32)
    });
    assert!(
        matches!(e.cause, TransformFailure::MemoryLimit { wanted_bytes, limit_bytes }
            if limit_bytes == 32 * 65536 && wanted_bytes > limit_bytes),
        "{e}"
    );
}

#[test]
fn initial_memory_above_limit() {
    let wat = identity().replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 40)",
    );
    let e = fail_with("fat", bin(&wat), |s| {
        s.resources.max_memory_pages = Some(16)
    });
    assert!(
        matches!(e.cause, TransformFailure::MemoryLimit { .. }),
        "{e}"
    );
    let e = fail_with("greedy", bin(&identity()), |s| {
        s.resources.max_memory_pages = Some(1 << 20)
    });
    assert!(
        matches!(e.cause, TransformFailure::InvalidResources(_)),
        "{e}"
    );
}

#[test]
fn out_of_bounds_output() {
    let cases = [
        ("oob-ptr", "(i64.const 0x00FF000000000010)"), // ptr beyond memory
        ("oob-len", "(i64.const 0x0000040000100000)"), // len runs past the end
        ("oob-wrap", "(i64.const 0xFFFFFFF000000020)"), // ptr+len overflows u32
        ("oob-max", "(i64.const -1)"),                 // ptr=len=u32::MAX
    ];
    for (name, body) in cases {
        let e = fail_with(name, bin(&with_process(body)), |_| {});
        assert!(
            matches!(&e.cause, TransformFailure::AbiViolation(m) if m.contains("outside guest memory"))
                || matches!(e.cause, TransformFailure::OutputTooLarge { .. }),
            "{name}: {e}"
        );
    }
}

#[test]
fn bad_alloc_results() {
    let wat = |alloc_body: &str| {
        format!(
            r#"(module (memory (export "memory") 1)
                (func (export "alloc") (param i32) (result i32) {alloc_body})
                (func (export "dealloc") (param i32 i32))
                (func (export "process") (param i32 i32) (result i64) (i64.const 0)))"#
        )
    };
    let e = fail_with("alloc-null", bin(&wat("(i32.const 0)")), |_| {});
    assert!(
        matches!(&e.cause, TransformFailure::AbiViolation(m) if m.contains("returned 0")),
        "{e}"
    );
    let e = fail_with("alloc-oob", bin(&wat("(i32.const 65530)")), |_| {});
    assert!(
        matches!(&e.cause, TransformFailure::AbiViolation(m) if m.contains("outside guest memory")),
        "{e}"
    );
    let e = fail_with("alloc-neg", bin(&wat("(i32.const -8)")), |_| {});
    assert!(matches!(&e.cause, TransformFailure::AbiViolation(_)), "{e}");
}

#[test]
fn unreachable_trap_with_guest_message() {
    let e = fail_with("boom", bin(&with_process("unreachable")), |_| {});
    assert!(
        matches!(&e.cause, TransformFailure::Trap(m) if m.contains("unreachable")),
        "{e}"
    );
    assert_eq!(e.chunk, 0);

    // last_error enriches a trap message; chunk index counts pieces fed to that transform.
    let wat = identity().replace(
        "(func (export \"process\")",
        r#"(data (i32.const 200) "bad magic byte")
           (global $n (mut i32) (i32.const 0))
           (func (export "last_error") (result i64) (i64.const 0x000000C80000000E))
           (func (export "process") (param $p i32) (param $len i32) (result i64)
             (global.set $n (i32.add (global.get $n) (i32.const 1)))
             (if (i32.eq (global.get $n) (i32.const 3)) (then unreachable))
             (call $id (local.get $p) (local.get $len)))
           (func $id"#,
    );
    let f = fx();
    let img = f.src.put("third.wasm", bin(&wat));
    let mut t = f.rt.open_chain(&[spec("third", &img)]).unwrap();
    let e = run(t.as_mut(), b"abcdef", 2).unwrap_err();
    assert_eq!(e.chunk, 2, "{e}");
    assert!(e.to_string().contains("guest says: bad magic byte"), "{e}");
}

#[test]
fn deep_recursion_overflows_stack() {
    let wat = with_process("(call $r (i32.const 0)) (i64.extend_i32_u)").replace(
        "(func (export \"process\")",
        "(func $r (param i32) (result i32) (i32.add (call $r (local.get 0)) (i32.const 1)))\n(func (export \"process\")",
    );
    let e = fail_with("recurse", bin(&wat), |_| {});
    assert!(matches!(e.cause, TransformFailure::StackOverflow), "{e}");
}

#[test]
fn forbidden_imports_are_named() {
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1))"#;
    let e = fail_with("wasi", bin(wat), |_| {});
    assert!(
        matches!(&e.cause, TransformFailure::Load(ModuleLoadError::ForbiddenImport { module, field })
            if module == "wasi_snapshot_preview1" && field == "fd_write"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("`wasi_snapshot_preview1`.`fd_write`"),
        "{e}"
    );
    let e = fail_with(
        "imem",
        bin(r#"(module (import "env" "memory" (memory 1)))"#),
        |_| {},
    );
    assert!(e.to_string().contains("`env`.`memory`"), "{e}");
}

#[test]
fn missing_and_mistyped_exports() {
    let no_process = identity().replace("(export \"process\")", "");
    let e = fail_with("noproc", bin(&no_process), |_| {});
    assert!(
        matches!(
            &e.cause,
            TransformFailure::Load(ModuleLoadError::MissingExport {
                name: "process",
                ..
            })
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("func (param i32 i32) (result i64)"),
        "{e}"
    );

    let mistyped = r#"(module (memory (export "memory") 1)
        (func (export "alloc") (param i32) (result i32) (i32.const 1024))
        (func (export "dealloc") (param i32 i32))
        (func (export "process") (param i32) (result i32) (i32.const 0)))"#;
    let e = fail_with("badsig", bin(mistyped), |_| {});
    let msg = e.to_string();
    assert!(msg.contains("`process` has the wrong type"), "{msg}");
    assert!(msg.contains("found func (param i32) (result i32)"), "{msg}");

    let no_mem = r#"(module (memory 1)
        (func (export "alloc") (param i32) (result i32) (i32.const 1024))
        (func (export "dealloc") (param i32 i32))
        (func (export "process") (param i32 i32) (result i64) (i64.const 0)))"#;
    let e = fail_with("nomem", bin(no_mem), |_| {});
    assert!(
        e.to_string().contains("lacks required export `memory`"),
        "{e}"
    );

    let bad_finish = bang().replace(
        "(func (export \"finish\") (result i64)",
        "(func (export \"finish\") (result i32) (drop",
    );
    let bad_finish = bad_finish.replace(
        "(i64.const 0x0000001000000001))",
        "(i64.const 0x0000001000000001)) (i32.const 0))",
    );
    let e = fail_with("badfinish", bin(&bad_finish), |_| {});
    assert!(e.to_string().contains("`finish` has the wrong type"), "{e}");
}

#[test]
fn invalid_and_truncated_binaries() {
    let e = fail_with("garbage", b"definitely not wasm".to_vec(), |_| {});
    assert!(
        matches!(e.cause, TransformFailure::Load(ModuleLoadError::Invalid(_))),
        "{e}"
    );
    let good = bin(&upper());
    let e = fail_with("trunc", good[..good.len() / 2].to_vec(), |_| {});
    assert!(
        matches!(e.cause, TransformFailure::Load(ModuleLoadError::Invalid(_))),
        "{e}"
    );
    let e = fail_with("empty", Vec::new(), |_| {});
    assert!(
        matches!(e.cause, TransformFailure::Load(ModuleLoadError::Invalid(_))),
        "{e}"
    );
}

#[test]
fn sha256_mismatch() {
    let m = bin(&identity());
    let e = fail_with("pinned", m.clone(), |s| {
        s.verification.sha256 = Some(space::policy::Sha256Hex::try_from("ab".repeat(32)).unwrap())
    });
    let actual = hex::encode(sha256(&m));
    assert!(
        matches!(&e.cause, TransformFailure::Load(ModuleLoadError::Verify(VerifyError::Sha256Mismatch { actual: a, .. })) if *a == actual),
        "{e}"
    );
    assert!(
        e.to_string().contains("sha256 mismatch: expected abab"),
        "{e}"
    );
}

#[test]
fn signatures() {
    // The shared fixture trusts nobody: any signature fails.
    let m = bin(&bang());
    let stranger = generate_signing_key();
    let e = fail_with("signed-by-stranger", m.clone(), |s| {
        s.verification.signature = Some(sign_module(&stranger, &m))
    });
    assert!(e.to_string().contains("no trusted key verifies it"), "{e}");
    let e = fail_with("bad-sig-hex", m.clone(), |s| {
        s.verification.signature = Some("xyz".into())
    });
    assert!(
        matches!(
            e.cause,
            TransformFailure::Load(ModuleLoadError::Verify(VerifyError::MalformedSignature))
        ),
        "{e}"
    );

    // A runtime requiring signatures.
    let trusted = generate_signing_key();
    let src = source();
    let img = src.put("m.wasm", m.clone());
    let cfg = RuntimeConfig {
        trust: TrustPolicy {
            trusted: vec![("acme".into(), trusted.verifying_key())],
            require_signatures: true,
        },
        ..Default::default()
    };
    let rt = TransformRuntime::new(cfg, src.clone()).unwrap();
    let e = rt.open_chain(&[spec("unsigned", &img)]).err().unwrap();
    assert!(
        matches!(
            e.cause,
            TransformFailure::Load(ModuleLoadError::Verify(VerifyError::SignatureRequired))
        ),
        "{e}"
    );
    // Signature of other bytes does not verify.
    let mut s = spec("wrong-bytes", &img);
    s.verification.signature = Some(sign_module(&trusted, &bin(&identity())));
    let e = rt.open_chain(&[s]).err().unwrap();
    assert!(e.to_string().contains("no trusted key verifies it"), "{e}");
    // Correctly signed: runs.
    let mut s = spec("good", &img);
    s.verification.signature = Some(sign_module(&trusted, &m));
    let mut t = rt.open_chain(&[s]).unwrap();
    assert_eq!(run(t.as_mut(), b"ok", 1).unwrap(), b"ok!");
    assert_eq!(rt.stats().compiles, 1, "refused modules are never compiled");
    assert_healthy();
}

#[test]
fn output_too_large() {
    let f = fx();
    let src = source();
    let img = src.put(
        "big.wasm",
        bin(&with_process("(i64.const 0x0000040000100000)")),
    );
    let mut cfg = RuntimeConfig::default();
    cfg.engine.max_output_per_call = 1000;
    let rt = TransformRuntime::new(cfg, src).unwrap();
    let mut t = rt.open_chain(&[spec("big", &img)]).unwrap();
    let e = t.process(b"x", &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            e.cause,
            TransformFailure::OutputTooLarge {
                len: 0x100000,
                limit: 1000
            }
        ),
        "{e}"
    );
    let _ = f;
}

#[test]
fn finish_twice_and_failures_in_finish() {
    let f = fx();
    let img = f.src.put("bang2.wasm", bin(&bang()));
    let mut t = f.rt.open_chain(&[spec("bang", &img)]).unwrap();
    let mut out = Vec::new();
    t.process(b"a", &mut out).unwrap();
    t.finish(&mut out).unwrap();
    let e = t.finish(&mut out).unwrap_err();
    assert!(matches!(e.cause, TransformFailure::InvalidState(_)), "{e}");

    let wat = bang().replace(
        "(i64.const 0x0000001000000001)",
        "(i64.const 0x7FFFFFF000000100)",
    );
    let img = f.src.put("badtail.wasm", bin(&wat));
    let mut t = f.rt.open_chain(&[spec("badtail", &img)]).unwrap();
    let e = run(t.as_mut(), b"abc", 1).unwrap_err();
    assert_eq!(
        e.chunk, 3,
        "finish failures report the number of pieces processed"
    );
    assert!(matches!(e.cause, TransformFailure::AbiViolation(_)), "{e}");
    assert_healthy();
}
