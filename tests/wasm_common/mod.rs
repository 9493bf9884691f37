//! Shared test fixtures: WAT guests, an in-memory capsule source, spec builders.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use space::pipeline::transform::{ChunkTransform, TransformError};
use space::policy::{Resources, TransformSpec, Trigger, Verification};
use space::wasm::{CapsuleRef, ModuleSource, SourceError};

/// "Single slot" allocator used by most fixtures: every allocation lives at 1024 and memory
/// grows to fit. Input is transformed in place, so the host never frees a second buffer.
pub const SLOT_ALLOC: &str = r#"
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub
        (i32.shr_u (i32.add (i32.add (i32.const 1024) (local.get $len)) (i32.const 65535)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then unreachable))))
    (i32.const 1024))
  (func (export "dealloc") (param i32 i32))
"#;

fn with_alloc(body: &str) -> String {
    format!("(module (memory (export \"memory\") 1) {SLOT_ALLOC} {body})")
}

/// Return the input buffer unchanged (the v0 seed's shape).
pub fn identity() -> String {
    with_alloc(
        r#"(func (export "process") (param $p i32) (param $len i32) (result i64)
             (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
                     (i64.extend_i32_u (local.get $len))))"#,
    )
}

/// Identity plus a `finish` that emits "!".
pub fn bang() -> String {
    with_alloc(
        r#"(data (i32.const 16) "!")
           (func (export "process") (param $p i32) (param $len i32) (result i64)
             (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
                     (i64.extend_i32_u (local.get $len))))
           (func (export "finish") (result i64) (i64.const 0x0000001000000001))"#,
    )
}

/// ASCII uppercase in place: a v128 loop for 16-byte blocks, scalar tail.
pub fn upper() -> String {
    with_alloc(
        r#"(func (export "process") (param $p i32) (param $len i32) (result i64)
             (local $i i32) (local $end i32) (local $v v128) (local $m v128) (local $c i32)
             (local.set $i (local.get $p))
             (local.set $end (i32.add (local.get $p) (i32.and (local.get $len) (i32.const -16))))
             (block $done (loop $vec
               (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
               (local.set $v (v128.load (local.get $i)))
               (local.set $m (v128.and
                 (i8x16.gt_u (local.get $v) (i8x16.splat (i32.const 0x60)))
                 (i8x16.lt_u (local.get $v) (i8x16.splat (i32.const 0x7b)))))
               (v128.store (local.get $i)
                 (i8x16.sub (local.get $v) (v128.and (local.get $m) (i8x16.splat (i32.const 0x20)))))
               (local.set $i (i32.add (local.get $i) (i32.const 16)))
               (br $vec)))
             (local.set $end (i32.add (local.get $p) (local.get $len)))
             (block $tdone (loop $tail
               (br_if $tdone (i32.ge_u (local.get $i) (local.get $end)))
               (local.set $c (i32.load8_u (local.get $i)))
               (if (i32.and (i32.ge_u (local.get $c) (i32.const 0x61)) (i32.le_u (local.get $c) (i32.const 0x7a)))
                 (then (i32.store8 (local.get $i) (i32.sub (local.get $c) (i32.const 0x20)))))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br $tail)))
             (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
                     (i64.extend_i32_u (local.get $len))))"#,
    )
}

/// Stateful: swallows input, counts bytes and pieces; `finish` emits
/// `[total bytes: u64 LE][pieces: u64 LE]`.
pub fn counter() -> String {
    with_alloc(
        r#"(global $total (mut i64) (i64.const 0))
           (global $pieces (mut i64) (i64.const 0))
           (func (export "process") (param $p i32) (param $len i32) (result i64)
             (global.set $total (i64.add (global.get $total) (i64.extend_i32_u (local.get $len))))
             (global.set $pieces (i64.add (global.get $pieces) (i64.const 1)))
             (i64.const 0))
           (func (export "finish") (result i64)
             (i64.store (i32.const 32) (global.get $total))
             (i64.store (i32.const 40) (global.get $pieces))
             (i64.const 0x0000002000000010))"#,
    )
}

/// Configurable: accepts exactly `shift=<digit>` (encoded `shift\0D\0`) or no args; adds the
/// digit to every byte. Rejections explain themselves through `last_error`.
pub fn shift() -> String {
    with_alloc(
        r#"(global $n (mut i32) (i32.const 0))
           (data (i32.const 64) "shift\00")
           (data (i32.const 96) "expected shift=<digit>")
           (func (export "configure") (param $p i32) (param $len i32) (result i32)
             (local $i i32) (local $d i32)
             (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
             (if (i32.ne (local.get $len) (i32.const 8)) (then (return (i32.const 1))))
             (block $bad
               (loop $cmp
                 (br_if $bad (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i)))
                                     (i32.load8_u (i32.add (i32.const 64) (local.get $i)))))
                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if $cmp (i32.lt_u (local.get $i) (i32.const 6))))
               (local.set $d (i32.sub (i32.load8_u (i32.add (local.get $p) (i32.const 6))) (i32.const 0x30)))
               (br_if $bad (i32.gt_u (local.get $d) (i32.const 9)))
               (br_if $bad (i32.ne (i32.load8_u (i32.add (local.get $p) (i32.const 7))) (i32.const 0)))
               (global.set $n (local.get $d))
               (return (i32.const 0)))
             (i32.const 2))
           (func (export "last_error") (result i64) (i64.const 0x0000006000000016))
           (func (export "process") (param $p i32) (param $len i32) (result i64)
             (local $i i32)
             (block $done (loop $l
               (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
               (i32.store8 (i32.add (local.get $p) (local.get $i))
                 (i32.add (i32.load8_u (i32.add (local.get $p) (local.get $i))) (global.get $n)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br $l)))
             (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
                     (i64.extend_i32_u (local.get $len))))"#,
    )
}

/// A module whose `process` body is `body` (result i64), with the slot allocator.
pub fn with_process(body: &str) -> String {
    with_alloc(&format!(
        r#"(func (export "process") (param $p i32) (param $len i32) (result i64) {body})"#
    ))
}

pub fn bin(wat_src: &str) -> Vec<u8> {
    wat::parse_str(wat_src).expect("fixture WAT parses")
}

/// In-memory capsule store.
#[derive(Default)]
pub struct MemSource(pub Mutex<HashMap<CapsuleRef, Vec<u8>>>);

impl MemSource {
    pub fn put(&self, path: &str, bytes: Vec<u8>) -> String {
        self.0
            .lock()
            .unwrap()
            .insert(CapsuleRef::Path(path.into()), bytes);
        format!("capsule://{path}")
    }
}

impl ModuleSource for MemSource {
    fn load_capsule(&self, reference: CapsuleRef) -> Result<Vec<u8>, SourceError> {
        self.0
            .lock()
            .unwrap()
            .get(&reference)
            .cloned()
            .ok_or(SourceError::NotFound(reference))
    }
}

pub fn spec(name: &str, image: &str) -> TransformSpec {
    TransformSpec {
        chunk_local: false,
        preserves_size: false,
        name: space::policy::TransformName::try_from(name.to_string()).unwrap(),
        image: space::policy::ModuleImage::try_from(image.to_string()).expect("valid image"),
        trigger: Trigger::OnRead,
        args: BTreeMap::new(),
        resources: Resources::default(),
        verification: Verification::default(),
    }
}

/// Run a whole stream through a chain in `piece`-sized process calls.
pub fn run(
    t: &mut dyn ChunkTransform,
    input: &[u8],
    piece: usize,
) -> Result<Vec<u8>, TransformError> {
    let mut out = Vec::new();
    for p in input.chunks(piece.max(1)) {
        t.process(p, &mut out)?;
    }
    t.finish(&mut out)?;
    Ok(out)
}

pub fn source() -> Arc<MemSource> {
    Arc::new(MemSource::default())
}
