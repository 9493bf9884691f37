//! Wasmtime engine setup: the sandbox every transform runs in.
//!
//! Design choices (and why):
//! * **Pooling allocator**: instance slots (memories, tables) are reserved once up front, so a
//!   per-stream instantiation is a few µs instead of a round of `mmap`s. Falls back to on-demand
//!   allocation (with a warning) if the reservation is refused by the OS.
//! * **Epoch interruption** with a background ticker thread ([`EngineConfig::epoch_tick`]):
//!   cheap deadline checks (a load+compare at loop heads/function entries) giving every guest
//!   call a wall-clock timeout.
//! * **Two engine flavours**: `consume_fuel` is an engine-wide *compile-time* setting (it
//!   instruments the generated code). Instrumenting every module would tax the common case where
//!   no `fuel_limit` is set, so we keep an unfueled [`Flavour::Epoch`] engine and a lazily
//!   created [`Flavour::Fueled`] engine used only for specs with `fuel_limit`. The same module
//!   therefore may be compiled twice; caches key on `(sha256, flavour)`.
//! * **Bounded stack** via `max_wasm_stack`, memory capped per store via a
//!   [`ResourceLimiter`], no WASI and no host functions at all (modules that import anything are
//!   refused, see [`super::abi`]).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, ResourceLimiter,
};

/// One WebAssembly page.
pub const WASM_PAGE: u64 = 65_536;

/// Tunables for the engine. `Default` gives production defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Memory cap (in 64 KiB pages) when a spec sets no `max_memory_pages`. Default 1024 (64 MiB).
    pub default_memory_pages: u32,
    /// Hard cap: specs asking for more pages are refused. Also sizes the pooling allocator's
    /// memory slots. Default 4096 (256 MiB).
    pub max_memory_pages: u32,
    /// Per-call wall-clock deadline when a spec sets no `timeout_ms`. Default 5000 ms.
    pub default_timeout_ms: u64,
    /// Epoch ticker period; timeouts fire within one tick after the deadline. Default 5 ms.
    pub epoch_tick: Duration,
    /// Native stack budget for guest code. Default 512 KiB (the calling thread must have more).
    pub max_wasm_stack: usize,
    /// Largest output accepted from one `process`/`finish` call. Default 64 MiB.
    pub max_output_per_call: usize,
    /// Largest module binary accepted from a resolver. Default 64 MiB.
    pub max_module_bytes: usize,
    /// Use the pooling allocator (fast instantiation). Default true.
    pub pooling: bool,
    /// Pool size: concurrent live instances per engine flavour. Each slot reserves (virtual
    /// only) ~4 GiB of address space for guard-page bounds checking. Default 128.
    pub max_instances: u32,
    /// Largest table (elements) a guest may grow to. Default 100 000.
    pub max_table_elements: usize,
    /// Cranelift optimisation level. Default `Speed`.
    pub opt_level: OptLevel,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_memory_pages: 1024,
            max_memory_pages: 4096,
            default_timeout_ms: 5000,
            epoch_tick: Duration::from_millis(5),
            max_wasm_stack: 512 * 1024,
            max_output_per_call: 64 << 20,
            max_module_bytes: 64 << 20,
            pooling: true,
            max_instances: 128,
            max_table_elements: 100_000,
            opt_level: OptLevel::Speed,
        }
    }
}

/// Which engine a module is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// Epoch deadlines only (no fuel instrumentation). Used when `fuel_limit` is unset.
    Epoch,
    /// Fuel-metered code, plus epoch deadlines.
    Fueled,
}

impl Flavour {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Epoch => "epoch",
            Flavour::Fueled => "fueled",
        }
    }
}

/// The engines plus their shared configuration. Held via `Arc` by the runtime and by every
/// live chain, so the epoch ticker keeps running as long as anything can still run guest code.
pub struct Engines {
    pub(crate) config: EngineConfig,
    epoch: Engine,
    fueled: OnceLock<Result<Engine, String>>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engines {
    /// Build the (eager) epoch engine and start the ticker thread. The ticker exits on its own
    /// once the returned `Arc` and all its clones are dropped.
    pub fn new(config: EngineConfig) -> Result<Arc<Self>, String> {
        if config.max_memory_pages == 0 || config.default_memory_pages > config.max_memory_pages {
            return Err(format!(
                "default_memory_pages ({}) must be in 1..=max_memory_pages ({})",
                config.default_memory_pages, config.max_memory_pages
            ));
        }
        let epoch = build_engine(&config, Flavour::Epoch)?;
        let engines = Arc::new(Self {
            config,
            epoch,
            fueled: OnceLock::new(),
        });
        spawn_ticker(Arc::downgrade(&engines), engines.config.epoch_tick);
        Ok(engines)
    }

    /// The engine for `flavour`, creating the fueled one on first use.
    pub fn get(&self, flavour: Flavour) -> Result<&Engine, String> {
        match flavour {
            Flavour::Epoch => Ok(&self.epoch),
            Flavour::Fueled => self
                .fueled
                .get_or_init(|| build_engine(&self.config, Flavour::Fueled))
                .as_ref()
                .map_err(Clone::clone),
        }
    }

    /// Fingerprint of everything that makes a compiled artifact valid for this engine:
    /// wasmtime's own compatibility hash (includes the wasmtime version and compiler
    /// settings), the flavour, and our sandbox settings. Persisted artifacts with a different
    /// fingerprint are recompiled.
    pub fn fingerprint(&self, flavour: Flavour) -> Result<[u8; 32], String> {
        use std::hash::Hash;
        let engine = self.get(flavour)?;
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        flavour.as_str().hash(&mut h);
        self.config.max_wasm_stack.hash(&mut h);
        self.config.max_memory_pages.hash(&mut h);
        self.config.pooling.hash(&mut h);
        Ok(h.0.finalize().into())
    }

    /// Ticks to pass to `set_epoch_deadline` for a timeout: rounded up, plus one because the
    /// next tick may come immediately. A call is therefore interrupted between `timeout` and
    /// `timeout + tick` after it started.
    pub(crate) fn deadline_ticks(&self, timeout_ms: u64) -> u64 {
        let tick = self.config.epoch_tick.as_millis().max(1) as u64;
        timeout_ms.div_ceil(tick) + 1
    }
}

fn build_engine(cfg: &EngineConfig, flavour: Flavour) -> Result<Engine, String> {
    let mut c = Config::new();
    c.epoch_interruption(true)
        .consume_fuel(flavour == Flavour::Fueled)
        .max_wasm_stack(cfg.max_wasm_stack)
        .cranelift_opt_level(cfg.opt_level)
        .wasm_memory64(false)
        .wasm_simd(true)
        .wasm_bulk_memory(true)
        .wasm_multi_value(true)
        .memory_init_cow(true)
        .parallel_compilation(true);
    // SPACE_WASM_PERFMAP=1 writes /tmp/perf-<pid>.map so `perf` can name JIT-compiled guest code.
    if std::env::var_os("SPACE_WASM_PERFMAP").is_some() {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if cfg.pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(cfg.max_instances)
            .total_memories(cfg.max_instances)
            .total_tables(cfg.max_instances)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(cfg.max_table_elements)
            .max_memory_size((cfg.max_memory_pages as u64 * WASM_PAGE) as usize);
        let mut pooled = c.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(e) => return Ok(e),
            Err(e) => log::warn!(
                "pooling allocator unavailable ({e:#}); falling back to on-demand instance allocation"
            ),
        }
    }
    Engine::new(&c).map_err(|e| format!("cannot create {} engine: {e:#}", flavour.as_str()))
}

fn spawn_ticker(engines: Weak<Engines>, tick: Duration) {
    let spawned = crate::util::spawn_periodic("space-wasm-epoch", tick, engines, |e| {
        e.epoch.increment_epoch();
        if let Some(Ok(f)) = e.fueled.get() {
            f.increment_epoch();
        }
    });
    if let Err(e) = spawned {
        // Without a ticker deadlines never fire; still usable but unbounded in time.
        log::error!("cannot spawn epoch ticker thread: {e}; wasm timeouts are disabled");
    }
}

/// `Hasher` feeding SHA-256, so wasmtime's `Hash` impl yields a stable, collision-resistant
/// fingerprint (std's `DefaultHasher` is neither).
struct ShaHasher(Sha256);

impl std::hash::Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Per-store state: only the memory/table limiter (there are no host functions).
/// Per-store data (opaque outside the engine).
pub struct HostState {
    pub(crate) limiter: Limiter,
}

/// Caps linear memory; remembers when it refused a growth so the resulting trap can be
/// reported as [`crate::pipeline::transform::TransformFailure::MemoryLimit`] rather than a generic trap.
pub(crate) struct Limiter {
    pub(crate) max_memory_bytes: usize,
    pub(crate) max_table_elements: usize,
    /// Bytes the guest asked for when it was refused.
    pub(crate) refused: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            // Trap immediately rather than returning -1 from memory.grow: a transform that
            // outgrows its budget is misbehaving, and the caller wants a precise reason.
            self.refused = Some(desired);
            return Err(wasmtime::format_err!(
                "memory limit exceeded: wanted {desired} bytes, limit {}",
                self.max_memory_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}
