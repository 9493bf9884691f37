//! Throughput of the data-path primitives on this machine (one core each), so the store's
//! numbers can be read against what its parts can do: `cargo bench --bench primitives`.

use std::time::Instant;

use space::crypto::{DataKeys, MasterKey};
use space::pipeline::chunk_codec::{self, EncodeSettings, IdCheck};
use space::store::ChunkId;

fn rate(name: &str, bytes: usize, f: impl Fn()) {
    f();
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{name:<40} {:>8.0} MB/s",
        (bytes * reps) as f64 / secs / 1e6
    );
}

fn main() {
    let keys = DataKeys::new(&MasterKey::generate());
    let n = 16 << 20;
    // Incompressible input (the store's worst case); zstd's own speed on text is zstd's.
    let mut data = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut data);
    let chunk = &data[..256 * 1024];
    rate("memcpy 256 KiB", chunk.len(), || {
        std::hint::black_box(chunk.to_vec());
    });
    rate("chunk id (HMAC-SHA256) 256 KiB", chunk.len(), || {
        std::hint::black_box(keys.chunk_id(2, chunk));
    });
    // The same MAC through ring's SHA-256 (OpenSSL's SHA-NI assembly), for comparison.
    let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    rate("HMAC-SHA256 via ring 256 KiB", chunk.len(), || {
        std::hint::black_box(ring::hmac::sign(&ring_key, chunk));
    });
    let mut buf = chunk.to_vec();
    rate("AES-256-GCM seal 256 KiB (in place)", chunk.len(), || {
        let mut b = std::mem::take(&mut buf.clone());
        std::hint::black_box(keys.seal(b"aad", &mut b));
    });
    buf.clear();
    rate("FastCDC 16 MiB", n, || {
        let c = fastcdc::v2020::FastCDC::new(&data, 64 * 1024, 256 * 1024, 1024 * 1024);
        std::hint::black_box(c.count());
    });
    let s = EncodeSettings {
        zstd_level: Some(3),
        encrypt: true,
        dedup: true,
        segmented: false,
    };
    let id = chunk_codec::chunk_id(&keys, s, chunk, None);
    rate("encode (id+probe+seal) 256 KiB", chunk.len(), || {
        std::hint::black_box(chunk_codec::encode(&keys, s, &id, chunk, None));
    });
    let obj = chunk_codec::encode(&keys, s, &id, chunk, None);
    rate("decode (open + id recomputed) 256 KiB", chunk.len(), || {
        let d = chunk_codec::decode(&keys, &id, obj.clone(), IdCheck::Always);
        std::hint::black_box(d.unwrap());
    });
    rate(
        "decode (open; tag binds the id) 256 KiB",
        chunk.len(),
        || {
            let d = chunk_codec::decode(&keys, &id, obj.clone(), IdCheck::Unauthenticated);
            std::hint::black_box(d.unwrap());
        },
    );
    let seg = EncodeSettings {
        segmented: true,
        ..s
    };
    let sobj = chunk_codec::encode(&keys, seg, &id, chunk, None);
    rate(
        "decode segmented object 256 KiB (id recomputed)",
        chunk.len(),
        || {
            let d = chunk_codec::decode(&keys, &id, sobj.clone(), IdCheck::Always);
            std::hint::black_box(d.unwrap());
        },
    );
    let plan = chunk_codec::SegmentedObject::parse(&id, &sobj[..40], sobj.len())
        .unwrap()
        .unwrap();
    let (segs, range) = plan.span(100_000, 4096);
    rate("open the segments of a 4 KiB read", 4096, || {
        let sealed = sobj[range.clone()].to_vec();
        std::hint::black_box(plan.open(&keys, segs.clone(), sealed).unwrap());
    });
    let _ = ChunkId([0; 32]);
}
