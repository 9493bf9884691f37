//! Counters of the mounted filesystem, shown in `/.space/stats`, and the transform wrapper
//! that counts chain calls and failures on both the read and the write side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::Space;
use crate::pipeline::transform::TransformFailure;
use crate::pipeline::{ChunkTransform, TransformError, TransformFactory};
use crate::policy::TransformSpec;

#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub read_requests: AtomicU64,
    pub write_requests: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub bytes_committed: AtomicU64,
    pub chunks_reused: AtomicU64,
    pub chunks_committed: AtomicU64,
    pub transform_calls: AtomicU64,
    pub transform_failures: AtomicU64,
    pub transform_traps: AtomicU64,
    pub transform_timeouts: AtomicU64,
    pub transform_fuel_exhausted: AtomicU64,
    /// Fuel consumed by modules that run with a fuel limit.
    pub transform_fuel_used: AtomicU64,
    pub spills: AtomicU64,
    /// Session threads parked by the governor right now (not reading /dev/fuse).
    pub threads_parked: AtomicU64,
    /// Times the governor released a parked thread because requests waited unread.
    pub threads_released: AtomicU64,
    /// Requests answered over io_uring (set when the session serves that way).
    pub io_uring_requests: OnceLock<Arc<AtomicU64>>,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        add(c, 1);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        add(c, n);
    }

    /// Counts a failed transform by kind.
    pub fn transform_failed(&self, e: &TransformError) {
        add(&self.transform_failures, 1);
        match e.cause {
            TransformFailure::Timeout { .. } => add(&self.transform_timeouts, 1),
            TransformFailure::FuelExhausted { .. } => add(&self.transform_fuel_exhausted, 1),
            TransformFailure::Trap(_) => add(&self.transform_traps, 1),
            _ => {}
        }
    }

    /// The text of `/.space/stats`: `key: value` lines, stable keys.
    pub fn render(&self, space: &Space) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k}: {v}\n"));
        line("bytes_read", g(&self.bytes_read).to_string());
        line("bytes_written", g(&self.bytes_written).to_string());
        line("read_requests", g(&self.read_requests).to_string());
        line("write_requests", g(&self.write_requests).to_string());
        line("commits", g(&self.commits).to_string());
        line("commit_failures", g(&self.commit_failures).to_string());
        line("bytes_committed", g(&self.bytes_committed).to_string());
        line("chunks_committed", g(&self.chunks_committed).to_string());
        line("chunks_reused", g(&self.chunks_reused).to_string());
        line("write_buffer_spills", g(&self.spills).to_string());
        line(
            "session_threads_parked",
            g(&self.threads_parked).to_string(),
        );
        line(
            "session_threads_released",
            g(&self.threads_released).to_string(),
        );
        match self.io_uring_requests.get() {
            Some(served) => {
                line("fuse_transport", "io_uring".into());
                line("fuse_requests_io_uring", g(served).to_string());
            }
            None => line("fuse_transport", "/dev/fuse".into()),
        }
        let hits = space.cache.hits.load(Ordering::Relaxed);
        let misses = space.cache.misses.load(Ordering::Relaxed);
        line("cache_hits", hits.to_string());
        line("cache_misses", misses.to_string());
        line(
            "partial_chunk_reads",
            space
                .cache
                .partial_reads
                .load(Ordering::Relaxed)
                .to_string(),
        );
        match space.store.meta.stats() {
            Ok(m) => {
                let ratio = |a: u64, b: u64| {
                    if b == 0 {
                        "1.000".to_string()
                    } else {
                        format!("{:.3}", a as f64 / b as f64)
                    }
                };
                line("files", m.files.to_string());
                line("directories", m.directories.to_string());
                line("logical_bytes", m.logical_bytes.to_string());
                line("unique_bytes", m.unique_bytes.to_string());
                line("stored_bytes", m.stored_bytes.to_string());
                line("dedup_ratio", ratio(m.referenced_bytes, m.unique_bytes));
                line("compression_ratio", ratio(m.unique_bytes, m.stored_bytes));
            }
            Err(e) => line("store_stats_error", e.to_string()),
        }
        // The derived-output cache (materialized views): this mount's counters, then the
        // store's totals.
        let d = space.derived_counters();
        line("derived_hits", g(&d.hits).to_string());
        line("derived_misses", g(&d.misses).to_string());
        line("derived_stored", g(&d.stored).to_string());
        line("derived_stored_bytes", g(&d.stored_bytes).to_string());
        line("derived_evicted", g(&d.evicted).to_string());
        line("derived_abandoned", g(&d.abandoned).to_string());
        match space.derived_totals() {
            Ok(t) => {
                line("derived_entries", t.entries.to_string());
                line("derived_bytes", t.bytes.to_string());
                line(
                    "derived_budget",
                    space.store.config.derived_cache_bytes.to_string(),
                );
            }
            Err(e) => line("derived_stats_error", e.to_string()),
        }
        line("wasm_calls", g(&self.transform_calls).to_string());
        line("wasm_failures", g(&self.transform_failures).to_string());
        line("wasm_traps", g(&self.transform_traps).to_string());
        line("wasm_timeouts", g(&self.transform_timeouts).to_string());
        line(
            "wasm_fuel_exhausted",
            g(&self.transform_fuel_exhausted).to_string(),
        );
        line("wasm_fuel_used", g(&self.transform_fuel_used).to_string());
        s
    }
}

/// Wraps the installed transform factory so every chain call is counted.
pub struct CountingFactory {
    pub inner: Arc<dyn TransformFactory>,
    pub stats: Arc<Stats>,
}

impl TransformFactory for CountingFactory {
    fn open_chain(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Box<dyn ChunkTransform>, TransformError> {
        match self.inner.open_chain(specs) {
            Ok(inner) => Ok(Box::new(CountingChain {
                inner,
                stats: Arc::clone(&self.stats),
                fuel_counted: 0,
            })),
            Err(e) => {
                self.stats.transform_failed(&e);
                Err(e)
            }
        }
    }

    fn identify(
        &self,
        specs: &[TransformSpec],
    ) -> Result<Vec<crate::pipeline::transform::ModuleIdentity>, TransformError> {
        self.inner.identify(specs)
    }
}

struct CountingChain {
    inner: Box<dyn ChunkTransform>,
    stats: Arc<Stats>,
    /// Fuel already added to the stats.
    fuel_counted: u64,
}

impl CountingChain {
    fn count<T>(&mut self, r: Result<T, TransformError>) -> Result<T, TransformError> {
        add(&self.stats.transform_calls, 1);
        let fuel = self.inner.fuel_used();
        add(
            &self.stats.transform_fuel_used,
            fuel.saturating_sub(self.fuel_counted),
        );
        self.fuel_counted = fuel;
        if let Err(e) = &r {
            self.stats.transform_failed(e);
        }
        r
    }
}

impl ChunkTransform for CountingChain {
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        let r = self.inner.process(input, out);
        self.count(r)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError> {
        let r = self.inner.finish(out);
        self.count(r)
    }

    fn fuel_used(&self) -> u64 {
        self.inner.fuel_used()
    }
}
