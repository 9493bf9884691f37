//! The guest ABI (see `docs/ABI.md`): export validation and the per-call sequence.
//!
//! Everything a guest returns (pointers, lengths) is untrusted: it is checked against the
//! *current* size of linear memory using 64-bit arithmetic (so `ptr + len` cannot wrap) before
//! the host touches it. Guest misbehaviour becomes a [`TransformFailure`], never a host panic.

use std::ops::Range;

use wasmtime::{
    ExternType, FuncType, InstancePre, Memory, Module, Store, Trap, TypedFunc, ValType,
};

use super::engine::{HostState, Limiter, WASM_PAGE};
use super::error::ModuleLoadError;
use crate::pipeline::transform::TransformFailure;

/// Longest guest `last_error` message we copy out.
const MAX_GUEST_MESSAGE: usize = 4096;

/// Expected export signatures, as shown in error messages.
const SIG_ALLOC: &str = "func (param i32) (result i32)";
const SIG_DEALLOC: &str = "func (param i32 i32)";
const SIG_PROCESS: &str = "func (param i32 i32) (result i64)";
const SIG_CONFIGURE: &str = "func (param i32 i32) (result i32)";
const SIG_NULLARY_I64: &str = "func (result i64)";
const SIG_MEMORY: &str = "memory (32-bit, not shared)";

/// What the host learned about a module's exports at load time.
#[derive(Debug, Clone, Copy)]
pub struct AbiInfo {
    pub has_configure: bool,
    pub has_last_error: bool,
    pub has_finish: bool,
    /// Initial size of the exported memory, in bytes.
    pub initial_memory_bytes: u64,
}

fn describe_func(f: &FuncType) -> String {
    let list = |it: &mut dyn Iterator<Item = ValType>| {
        it.map(|t| t.to_string()).collect::<Vec<_>>().join(" ")
    };
    let params = list(&mut f.params());
    let results = list(&mut f.results());
    let mut s = "func".to_string();
    if !params.is_empty() {
        s += &format!(" (param {params})");
    }
    if !results.is_empty() {
        s += &format!(" (result {results})");
    }
    s
}

fn describe_extern(t: &ExternType) -> String {
    match t {
        ExternType::Func(f) => describe_func(f),
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

fn is_i32(t: &ValType) -> bool {
    matches!(t, ValType::I32)
}
fn is_i64(t: &ValType) -> bool {
    matches!(t, ValType::I64)
}

/// Check one function export. `Ok(false)` = absent (only allowed when `!required`).
fn check_func(
    module: &Module,
    name: &'static str,
    expected: &'static str,
    params: &[fn(&ValType) -> bool],
    results: &[fn(&ValType) -> bool],
    required: bool,
) -> Result<bool, ModuleLoadError> {
    let Some(ext) = module.get_export(name) else {
        return if required {
            Err(ModuleLoadError::MissingExport { name, expected })
        } else {
            Ok(false)
        };
    };
    let ok = match &ext {
        ExternType::Func(f) => {
            let p: Vec<ValType> = f.params().collect();
            let r: Vec<ValType> = f.results().collect();
            p.len() == params.len()
                && r.len() == results.len()
                && p.iter().zip(params).all(|(t, f)| f(t))
                && r.iter().zip(results).all(|(t, f)| f(t))
        }
        _ => false,
    };
    if ok {
        Ok(true)
    } else {
        Err(ModuleLoadError::MistypedExport {
            name,
            expected,
            found: describe_extern(&ext),
        })
    }
}

/// Validate imports and exports against the ABI.
pub fn validate_module(module: &Module) -> Result<AbiInfo, ModuleLoadError> {
    if let Some(imp) = module.imports().next() {
        return Err(ModuleLoadError::ForbiddenImport {
            module: imp.module().to_string(),
            field: imp.name().to_string(),
        });
    }
    let initial_memory_bytes = match module.get_export("memory") {
        None => {
            return Err(ModuleLoadError::MissingExport {
                name: "memory",
                expected: SIG_MEMORY,
            });
        }
        Some(ExternType::Memory(m)) if !m.is_64() && !m.is_shared() => {
            m.minimum().saturating_mul(WASM_PAGE)
        }
        Some(other) => {
            return Err(ModuleLoadError::MistypedExport {
                name: "memory",
                expected: SIG_MEMORY,
                found: describe_extern(&other),
            });
        }
    };
    check_func(module, "alloc", SIG_ALLOC, &[is_i32], &[is_i32], true)?;
    check_func(module, "dealloc", SIG_DEALLOC, &[is_i32, is_i32], &[], true)?;
    check_func(
        module,
        "process",
        SIG_PROCESS,
        &[is_i32, is_i32],
        &[is_i64],
        true,
    )?;
    let has_configure = check_func(
        module,
        "configure",
        SIG_CONFIGURE,
        &[is_i32, is_i32],
        &[is_i32],
        false,
    )?;
    let has_last_error = check_func(module, "last_error", SIG_NULLARY_I64, &[], &[is_i64], false)?;
    let has_finish = check_func(module, "finish", SIG_NULLARY_I64, &[], &[is_i64], false)?;
    Ok(AbiInfo {
        has_configure,
        has_last_error,
        has_finish,
        initial_memory_bytes,
    })
}

/// Encode args as `key\0value\0` pairs (BTreeMap order = sorted by key). NUL is rejected
/// because it is the separator.
pub fn encode_args(
    args: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<u8>, TransformFailure> {
    let mut out = Vec::new();
    for (k, v) in args {
        if k.contains('\0') || v.contains('\0') {
            return Err(TransformFailure::ConfigRejected(format!(
                "argument `{}` contains a NUL byte in its key or value",
                k.escape_default()
            )));
        }
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// Per-call limits applied to every guest call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub fuel: Option<u64>,
    pub timeout_ms: u64,
    pub deadline_ticks: u64,
    pub memory_limit_bytes: u64,
    pub max_output: usize,
}

/// One live guest instance (serves one stream). Any error leaves it unusable: callers
/// discard it.
pub struct GuestInstance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    dealloc: TypedFunc<(i32, i32), ()>,
    process: TypedFunc<(i32, i32), i64>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    last_error: Option<TypedFunc<(), i64>>,
    finish: Option<TypedFunc<(), i64>>,
    limits: CallLimits,
    /// Fuel consumed by calls before the current one (fueled instances only).
    fuel_used: u64,
    /// Fuel has been set for a call whose consumption is not yet in `fuel_used`.
    fuel_armed: bool,
}

/// Copies a piece between host and guest memory with 32-byte vector moves. glibc's memcpy
/// uses `rep movsb` for 64 KiB pieces, which on this project's AMD machines ran measurably
/// slower than a plain vector loop (benches/wasm.rs, `WASM_BENCH_PIECE=64`).
fn copy_piece(dst: &mut [u8], src: &[u8]) {
    // SAFETY: a &mut [u8] is a valid &mut [MaybeUninit<u8>] of the same length, and every
    // byte written is initialized.
    let dst = unsafe {
        std::slice::from_raw_parts_mut(
            dst.as_mut_ptr() as *mut std::mem::MaybeUninit<u8>,
            dst.len(),
        )
    };
    copy_piece_uninit(dst, src);
}

/// Appends `src` to `out` with [`copy_piece`]'s vector moves (no zero-fill first).
fn extend_with_piece(out: &mut Vec<u8>, src: &[u8]) {
    out.reserve(src.len());
    let start = out.len();
    copy_piece_uninit(&mut out.spare_capacity_mut()[..src.len()], src);
    // SAFETY: the `src.len()` bytes after `start` were just written.
    unsafe { out.set_len(start + src.len()) };
}

fn copy_piece_uninit(dst: &mut [std::mem::MaybeUninit<u8>], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; the loop stays within both slices (equal lengths).
        unsafe { copy_avx2(dst.as_mut_ptr() as *mut u8, src.as_ptr(), src.len()) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(*s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};
    let mut i = 0;
    // SAFETY (whole body): every access is below `len` for both pointers.
    unsafe {
        while i + 128 <= len {
            let a = _mm256_loadu_si256(src.add(i) as *const __m256i);
            let b = _mm256_loadu_si256(src.add(i + 32) as *const __m256i);
            let c = _mm256_loadu_si256(src.add(i + 64) as *const __m256i);
            let d = _mm256_loadu_si256(src.add(i + 96) as *const __m256i);
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, a);
            _mm256_storeu_si256(dst.add(i + 32) as *mut __m256i, b);
            _mm256_storeu_si256(dst.add(i + 64) as *mut __m256i, c);
            _mm256_storeu_si256(dst.add(i + 96) as *mut __m256i, d);
            i += 128;
        }
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
    }
}

fn split(r: i64) -> (u32, u32) {
    let r = r as u64;
    ((r >> 32) as u32, r as u32)
}

impl GuestInstance {
    /// Instantiate (no start-function surprises: a start function runs under the same limits).
    pub fn instantiate(
        pre: &InstancePre<HostState>,
        info: &AbiInfo,
        limits: CallLimits,
        max_table_elements: usize,
    ) -> Result<Self, TransformFailure> {
        let engine = pre.module().engine();
        let mut store = Store::new(
            engine,
            HostState {
                limiter: Limiter {
                    max_memory_bytes: limits.memory_limit_bytes as usize,
                    max_table_elements,
                    refused: None,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(limits.deadline_ticks);
        if let Some(f) = limits.fuel {
            store
                .set_fuel(f)
                .map_err(|e| TransformFailure::Instantiate(format!("{e:#}")))?;
        }
        let instance = match pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => {
                if let Some(wanted) = store.data().limiter.refused {
                    return Err(TransformFailure::MemoryLimit {
                        wanted_bytes: wanted as u64,
                        limit_bytes: limits.memory_limit_bytes,
                    });
                }
                if e.downcast_ref::<Trap>().is_some() {
                    return Err(classify_trap(&e, &limits));
                }
                return Err(TransformFailure::Instantiate(format!("{e:#}")));
            }
        };
        let abi = |e: wasmtime::Error| TransformFailure::AbiViolation(format!("{e:#}"));
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| TransformFailure::AbiViolation("no `memory` export".into()))?;
        let alloc = instance.get_typed_func(&mut store, "alloc").map_err(abi)?;
        let dealloc = instance
            .get_typed_func(&mut store, "dealloc")
            .map_err(abi)?;
        let process = instance
            .get_typed_func(&mut store, "process")
            .map_err(abi)?;
        let configure = if info.has_configure {
            Some(
                instance
                    .get_typed_func(&mut store, "configure")
                    .map_err(abi)?,
            )
        } else {
            None
        };
        let last_error = if info.has_last_error {
            Some(
                instance
                    .get_typed_func(&mut store, "last_error")
                    .map_err(abi)?,
            )
        } else {
            None
        };
        let finish = if info.has_finish {
            Some(instance.get_typed_func(&mut store, "finish").map_err(abi)?)
        } else {
            None
        };
        Ok(Self {
            store,
            memory,
            alloc,
            dealloc,
            process,
            configure,
            last_error,
            finish,
            limits,
            fuel_used: 0,
            fuel_armed: false,
        })
    }

    /// Fuel this instance's calls have consumed so far (0 without a fuel limit).
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used + self.current_call_fuel()
    }

    fn current_call_fuel(&self) -> u64 {
        match (self.limits.fuel, self.fuel_armed) {
            (Some(f), true) => f.saturating_sub(self.store.get_fuel().unwrap_or(f)),
            _ => 0,
        }
    }

    /// Reset the per-call budgets: fuel and deadline apply to each guest call separately, so
    /// a long stream never runs out of budget merely by being long.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.limits.deadline_ticks);
        if let Some(f) = self.limits.fuel {
            self.fuel_used += self.current_call_fuel();
            // Cannot fail: fuel is only set on stores of the fueled engine.
            let _ = self.store.set_fuel(f);
            self.fuel_armed = true;
        }
    }

    /// Map a wasmtime error from a guest call to a failure; enrich generic traps with the
    /// guest's `last_error` message when it provides one.
    fn fail(&mut self, call: &str, e: wasmtime::Error) -> TransformFailure {
        if let Some(wanted) = self.store.data().limiter.refused {
            return TransformFailure::MemoryLimit {
                wanted_bytes: wanted as u64,
                limit_bytes: self.limits.memory_limit_bytes,
            };
        }
        match classify_trap(&e, &self.limits) {
            TransformFailure::Trap(msg) => {
                let msg = format!("in `{call}`: {msg}");
                TransformFailure::Trap(match self.guest_message() {
                    Some(g) => format!("{msg} (guest says: {g})"),
                    None => msg,
                })
            }
            other => other,
        }
    }

    fn range(&mut self, what: &str, ptr: u32, len: u32) -> Result<Range<usize>, TransformFailure> {
        let size = self.memory.data_size(&self.store) as u64;
        let end = ptr as u64 + len as u64; // u64: cannot overflow
        if end > size {
            return Err(TransformFailure::AbiViolation(format!(
                "{what}: range [{ptr:#x}, {ptr:#x}+{len}) is outside guest memory ({size} bytes)"
            )));
        }
        Ok(ptr as usize..end as usize)
    }

    /// Copy `data` into a fresh guest allocation; returns its pointer.
    fn put(&mut self, call: &str, data: &[u8]) -> Result<u32, TransformFailure> {
        let len = i32::try_from(data.len()).map_err(|_| {
            TransformFailure::AbiViolation(format!(
                "{call}: input of {} bytes too large",
                data.len()
            ))
        })?;
        self.arm();
        let p = match self.alloc.call(&mut self.store, len) {
            Ok(p) => p as u32,
            Err(e) => return Err(self.fail("alloc", e)),
        };
        if p == 0 {
            return Err(TransformFailure::AbiViolation(format!(
                "alloc({len}) returned 0 (allocation failure)"
            )));
        }
        let r = self.range(&format!("alloc({len}) result"), p, len as u32)?;
        copy_piece(&mut self.memory.data_mut(&mut self.store)[r], data);
        Ok(p)
    }

    fn free(&mut self, ptr: u32, len: u32) -> Result<(), TransformFailure> {
        self.arm();
        match self.dealloc.call(&mut self.store, (ptr as i32, len as i32)) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail("dealloc", e)),
        }
    }

    /// Bounds- and size-check a returned buffer and append it to `out`.
    fn take_output(
        &mut self,
        what: &str,
        ptr: u32,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), TransformFailure> {
        if len as u64 > self.limits.max_output as u64 {
            return Err(TransformFailure::OutputTooLarge {
                len: len as u64,
                limit: self.limits.max_output as u64,
            });
        }
        let r = self.range(what, ptr, len)?;
        extend_with_piece(out, &self.memory.data(&self.store)[r]);
        Ok(())
    }

    /// Call `configure` with encoded args. Args given to a module without `configure` are
    /// refused (silently ignoring them would hide policy mistakes).
    pub fn configure(&mut self, encoded: &[u8]) -> Result<(), TransformFailure> {
        let Some(configure) = self.configure.clone() else {
            return if encoded.is_empty() {
                Ok(())
            } else {
                Err(TransformFailure::ConfigRejected(
                    "module exports no `configure` but args were given".into(),
                ))
            };
        };
        let (p, len) = if encoded.is_empty() {
            (0, 0)
        } else {
            (self.put("configure", encoded)?, encoded.len() as u32)
        };
        self.arm();
        let rc = match configure.call(&mut self.store, (p as i32, len as i32)) {
            Ok(rc) => rc,
            Err(e) => return Err(self.fail("configure", e)),
        };
        if rc != 0 {
            let msg = match self.guest_message() {
                Some(m) => format!("configure returned {rc}: {m}"),
                None => format!("configure returned {rc}"),
            };
            return Err(TransformFailure::ConfigRejected(msg));
        }
        if len > 0 {
            self.free(p, len)?;
        }
        Ok(())
    }

    /// Run one piece through `process`, appending output to `out`.
    pub fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformFailure> {
        let len = input.len() as u32;
        let p = self.put("process", input)?;
        self.arm();
        let r = match self.process.call(&mut self.store, (p as i32, len as i32)) {
            Ok(r) => r,
            Err(e) => return Err(self.fail("process", e)),
        };
        let (optr, olen) = split(r);
        self.take_output("process output", optr, olen, out)?;
        self.free(p, len)?;
        if olen > 0 && optr != p {
            self.free(optr, olen)?;
        }
        Ok(())
    }

    /// Call `finish` (if exported), appending the tail to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformFailure> {
        let Some(finish) = self.finish.clone() else {
            return Ok(());
        };
        self.arm();
        let r = match finish.call(&mut self.store, ()) {
            Ok(r) => r,
            Err(e) => return Err(self.fail("finish", e)),
        };
        let (ptr, len) = split(r);
        self.take_output("finish output", ptr, len, out)?;
        if len > 0 {
            self.free(ptr, len)?;
        }
        Ok(())
    }

    /// Best-effort `last_error()` message (bounded, lossy UTF-8); `None` on any problem.
    fn guest_message(&mut self) -> Option<String> {
        let f = self.last_error.clone()?;
        self.arm();
        let (ptr, len) = split(f.call(&mut self.store, ()).ok()?);
        if len == 0 {
            return None;
        }
        let len = len.min(MAX_GUEST_MESSAGE as u32);
        let r = self.range("last_error", ptr, len).ok()?;
        Some(String::from_utf8_lossy(&self.memory.data(&self.store)[r]).into_owned())
    }
}

/// Classify a wasmtime error by its trap code.
fn classify_trap(e: &wasmtime::Error, limits: &CallLimits) -> TransformFailure {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TransformFailure::Timeout {
            ms: limits.timeout_ms,
        },
        Some(Trap::OutOfFuel) => TransformFailure::FuelExhausted {
            limit: limits.fuel.unwrap_or(0),
        },
        Some(Trap::StackOverflow) => TransformFailure::StackOverflow,
        Some(t) => TransformFailure::Trap(t.to_string()),
        None => TransformFailure::Trap(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_piece_copies_every_length_exactly() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 31, 32, 127, 128, 129, 255, 1000, 4096, 4999] {
            let mut dst = vec![0xAAu8; len + 8];
            copy_piece(&mut dst[4..4 + len], &src[..len]);
            assert_eq!(&dst[4..4 + len], &src[..len], "len {len}");
            assert!(dst[..4].iter().chain(&dst[4 + len..]).all(|&b| b == 0xAA));
            let mut out = vec![1u8, 2];
            extend_with_piece(&mut out, &src[..len]);
            assert_eq!(&out[..2], &[1, 2]);
            assert_eq!(&out[2..], &src[..len]);
        }
    }
}
