//! Engine benchmarks (plain harness, prints tables). Run: `cargo bench --bench wasm`.
//!
//! * throughput of identity / SIMD-uppercase guests through the ABI vs native Rust,
//! * per-stream setup cost with a cached module,
//! * cold compile vs authenticated persisted-artifact load,
//! * fuel vs epoch-only metering.

#[path = "../tests/wasm_common/mod.rs"]
mod wasm_common;
use wasm_common as common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use space::wasm::{ArtifactConfig, NoCapsules, RuntimeConfig, TransformRuntime};

const STREAM: usize = 64 << 20;

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Best of `reps` runs of `f` (reduces noise on a shared 2-core machine).
fn best(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let src = source();
    let id_img = src.put("id.wasm", bin(&identity()));
    let up_img = src.put("up.wasm", bin(&upper()));
    let rt = TransformRuntime::new(RuntimeConfig::default(), src.clone()).unwrap();
    let input: Vec<u8> = (0..STREAM)
        .map(|i| b"Hello, World! abc xyz 0123"[i % 26])
        .collect();
    let mut out = Vec::with_capacity(STREAM + 16);

    println!(
        "== throughput: {} MiB stream, paired rounds ==",
        STREAM >> 20
    );
    println!(
        "{:<28} {:>10} {:>12} {:>12}",
        "case", "piece", "MB/s", "vs native"
    );
    // The native baselines, as functions so that each guest measurement can be paired with a
    // baseline measured right next to it (this VM's memory bandwidth drifts by +-15% within a
    // minute; a ratio of two measurements taken seconds apart measured the drift).
    fn native_copy(input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        for p in input.chunks(1 << 20) {
            out.extend_from_slice(black_box(p));
        }
        black_box(&out);
    }
    fn native_upper(input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        for p in input.chunks(1 << 20) {
            let s = out.len();
            out.extend_from_slice(p);
            out[s..].make_ascii_uppercase();
        }
        black_box(&out);
    }
    type Native = fn(&[u8], &mut Vec<u8>);
    println!(
        "{:<28} {:>10} {:>12.0} {:>12}",
        "native memcpy",
        "1 MiB",
        mbps(STREAM, best(3, || native_copy(&input, &mut out))),
        "1.00"
    );
    println!(
        "{:<28} {:>10} {:>12.0} {:>12}",
        "native copy+uppercase",
        "1 MiB",
        mbps(STREAM, best(3, || native_upper(&input, &mut out))),
        "1.00"
    );

    // The Rust SDK guests (built with +simd128 by scripts/build-guests.sh) when present, plus
    // hand-written WAT guests as a floor.
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/guests/dist");
    let mut cases: Vec<(&str, String, Native)> = Vec::new();
    if let (Ok(id), Ok(up)) = (
        std::fs::read(dist.join("identity.wasm")),
        std::fs::read(dist.join("uppercase.wasm")),
    ) {
        cases.push((
            "guest identity (Rust SDK)",
            src.put("gid.wasm", id),
            native_copy,
        ));
        cases.push((
            "guest uppercase (simd128)",
            src.put("gup.wasm", up),
            native_upper,
        ));
    } else {
        println!("(examples/guests/dist missing: run scripts/build-guests.sh for the Rust guests)");
    }
    cases.push(("WAT identity", id_img.clone(), native_copy));
    cases.push(("WAT uppercase (v128)", up_img.clone(), native_upper));
    println!(
        "(ratio = median over rounds of native time / guest time, each round timing the native \
         baseline and the guest back to back; MB/s = the guest's best round; pieces above 1 MiB \
         are re-split to P <= 1 MiB)"
    );
    // WASM_BENCH_ONLY=<substring> limits the throughput table to matching cases (profiling).
    let only = std::env::var("WASM_BENCH_ONLY").ok();
    for (label, img, native) in cases
        .iter()
        .filter(|c| only.as_deref().is_none_or(|o| c.0.contains(o)))
    {
        let prepared = rt.prepare(&spec("bench", img)).unwrap();
        // WASM_BENCH_PIECE=<KiB> limits the table to one piece size (profiling).
        let pieces: Vec<usize> = match std::env::var("WASM_BENCH_PIECE")
            .ok()
            .and_then(|k| k.parse::<usize>().ok())
        {
            Some(k) => vec![k << 10],
            None => vec![64 << 10, 1 << 20, 4 << 20],
        };
        // WASM_BENCH_ROUNDS=<n>: paired rounds per row (default 7; more for profiling).
        let rounds = std::env::var("WASM_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse::<usize>().ok())
            .unwrap_or(7)
            .max(1);
        for piece in pieces {
            let mut ratios = Vec::with_capacity(rounds);
            let mut fastest = Duration::MAX;
            for _ in 0..rounds {
                let n = best(1, || native(&input, &mut out));
                let d = best(1, || {
                    out.clear();
                    let mut t = rt.open_prepared(std::slice::from_ref(&prepared)).unwrap();
                    for p in input.chunks(piece) {
                        t.process(p, &mut out).unwrap();
                    }
                    t.finish(&mut out).unwrap();
                });
                assert_eq!(out.len(), STREAM);
                ratios.push(n.as_secs_f64() / d.as_secs_f64());
                fastest = fastest.min(d);
            }
            ratios.sort_by(f64::total_cmp);
            println!(
                "{:<28} {:>10} {:>12.0} {:>11.2}x   (rounds {:.2}..{:.2})",
                label,
                format!("{} KiB", piece >> 10),
                mbps(STREAM, fastest),
                ratios[ratios.len() / 2],
                ratios[0],
                ratios[ratios.len() - 1],
            );
        }
    }

    if only.is_some() {
        return;
    }
    println!("\n== fuel vs epoch (uppercase, 1 MiB pieces) ==");
    let epoch = rt.prepare(&spec("up", &up_img)).unwrap();
    let mut fs = spec("upf", &up_img);
    fs.resources.fuel_limit = Some(u64::MAX / 2);
    let fueled = rt.prepare(&fs).unwrap();
    let mut times = Vec::new();
    for (label, p) in [("epoch only", &epoch), ("fuel + epoch", &fueled)] {
        let d = best(3, || {
            out.clear();
            let mut t = rt.open_prepared(std::slice::from_ref(p)).unwrap();
            for piece in input.chunks(1 << 20) {
                t.process(piece, &mut out).unwrap();
            }
            t.finish(&mut out).unwrap();
        });
        times.push(d);
        println!("{:<28} {:>12.0} MB/s", label, mbps(STREAM, d));
    }
    println!(
        "fuel overhead: {:.2}x",
        times[1].as_secs_f64() / times[0].as_secs_f64()
    );

    println!("\n== per-stream setup (cached module) ==");
    let n = 5000;
    for (label, p) in [
        ("identity", rt.prepare(&spec("id", &id_img)).unwrap()),
        ("uppercase", epoch.clone()),
    ] {
        let d = best(3, || {
            for _ in 0..n {
                let t = rt.open_prepared(std::slice::from_ref(&p)).unwrap();
                black_box(t);
            }
        });
        println!(
            "{:<40} {:>8.2} µs",
            format!("open_prepared ({label})"),
            d.as_secs_f64() * 1e6 / n as f64
        );
        let d = best(3, || {
            for _ in 0..n {
                let mut t = rt.open_prepared(std::slice::from_ref(&p)).unwrap();
                let mut o = Vec::new();
                t.process(b"hello world", &mut o).unwrap();
                t.finish(&mut o).unwrap();
                black_box(o);
            }
        });
        println!(
            "{:<40} {:>8.2} µs",
            format!("open+11B+finish ({label})"),
            d.as_secs_f64() * 1e6 / n as f64
        );
    }
    let d = best(3, || {
        for _ in 0..n {
            black_box(rt.open_chain(&[spec("up", &up_img)]).unwrap());
        }
    });
    println!(
        "{:<40} {:>8.2} µs",
        "open_chain (capsule:// resolve+sha256)",
        d.as_secs_f64() * 1e6 / n as f64
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("up.wasm");
    std::fs::write(&path, bin(&upper())).unwrap();
    let file_img = format!("file://{}", path.display());
    let frt = TransformRuntime::new(RuntimeConfig::default(), Arc::new(NoCapsules)).unwrap();
    frt.prepare(&spec("up", &file_img)).unwrap();
    let d = best(3, || {
        for _ in 0..n {
            black_box(frt.open_chain(&[spec("up", &file_img)]).unwrap());
        }
    });
    println!(
        "{:<40} {:>8.2} µs",
        "open_chain (file://, memoised)",
        d.as_secs_f64() * 1e6 / n as f64
    );

    println!("\n== compile vs persisted artifact (uppercase module) ==");
    let art = tempfile::tempdir().unwrap();
    let cfg = || RuntimeConfig {
        artifacts: Some(ArtifactConfig {
            dir: art.path().to_path_buf(),
            key: b"bench-key".to_vec(),
        }),
        ..Default::default()
    };
    let reps = 10;
    let mut compile = Duration::MAX;
    let mut load = Duration::MAX;
    let mut create = Duration::MAX;
    for _ in 0..reps {
        let _ = std::fs::remove_dir_all(art.path());
        let t = Instant::now();
        let r = TransformRuntime::new(cfg(), src.clone()).unwrap();
        create = create.min(t.elapsed());
        let t = Instant::now();
        r.prepare(&spec("up", &up_img)).unwrap();
        compile = compile.min(t.elapsed());
        assert_eq!(r.stats().compiles, 1);
        let r2 = TransformRuntime::new(cfg(), src.clone()).unwrap();
        let t = Instant::now();
        r2.prepare(&spec("up", &up_img)).unwrap();
        load = load.min(t.elapsed());
        assert_eq!((r2.stats().compiles, r2.stats().artifact_loads), (0, 1));
    }
    println!(
        "{:<40} {:>8.1} µs",
        "runtime creation (engine + pool)",
        create.as_secs_f64() * 1e6
    );
    println!(
        "{:<40} {:>8.1} µs",
        "cold compile (+ persist)",
        compile.as_secs_f64() * 1e6
    );
    println!(
        "{:<40} {:>8.1} µs",
        "artifact load (HMAC + deserialize)",
        load.as_secs_f64() * 1e6
    );
}
