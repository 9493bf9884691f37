//! The write path: input stream → [on-write chain] → content-defined chunks → id → (dedup) →
//! compress → encrypt → durable object write, in parallel workers with bounded queues.
//!
//! The on-write chain runs *before* chunking (a deviation from "chunk then transform" in the
//! issue text, on purpose): transforms may change lengths and keep state across pieces, and
//! chunking their output keeps dedup content-defined on the bytes actually stored.
//!
//! It returns the new [`Content`]; committing it is the caller's single metadata transaction.
//! Memory in flight is bounded by (queue depth + workers) × max chunk size.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::error::{Result, SpaceError};
use crate::pipeline::chunk_codec::{self, EncodeSettings};
use crate::pipeline::transform::TransformFailed;
use crate::policy::Chunking;
use crate::store::meta::{Content, ContentChunk, Extent, ObjectHead};
use crate::store::{ChunkId, Store};

/// Counters from one write, for progress and `put` output.
#[derive(Debug, Clone, Default)]
pub struct WriteReport {
    pub bytes: u64,
    pub chunks: u64,
    /// Chunks that were already stored (dedup hits).
    pub reused_chunks: u64,
    /// Object bytes newly written.
    pub stored_bytes: u64,
}

/// A chunk to store: its bytes are borrowed from the caller's buffer when the whole input is
/// in memory (the workers are scoped threads), owned when it came from a stream.
struct Job<'a> {
    seq: u64,
    offset: u64,
    data: std::borrow::Cow<'a, [u8]>,
}

/// A chunk as the chunker cut it: its offset in the input and its bytes.
type Cut<'a> = (u64, std::borrow::Cow<'a, [u8]>);

/// What the worker pipeline chunks.
enum Input<'a> {
    Stream(&'a mut dyn Read),
    /// Cut with the slice chunker, which cuts where the streaming one does, and handed to the
    /// workers without a copy: the streaming chunker copies every byte twice (into its buffer,
    /// then out into each chunk), ~9% of the daemon's CPU time in a 1 GiB write to a mount.
    Slice(&'a [u8]),
}

struct Done {
    seq: u64,
    chunk: ContentChunk,
    reused: bool,
    /// The object, when it is to be kept inline in the metadata instead of the backend.
    inline: Option<Vec<u8>>,
}

/// Objects up to this size written by a small write (content of at most one average chunk)
/// are kept inline in the metadata of a format-3 store (docs/FORMAT.md 4.5): committed with
/// the content in one transaction, they need no fdatasync of their own.
pub const INLINE_OBJECT_MAX: usize = 16 * 1024;

fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Chunks, encodes and stores everything `input` yields. `progress` gets the running byte count.
///
/// Input of at most one average chunk (small files) is chunked and encoded on the calling
/// thread: starting the workers would cost more than the work.
pub fn write_stream(
    store: &Store,
    input: &mut dyn Read,
    chunking: Chunking,
    settings: EncodeSettings,
    progress: &dyn Fn(u64),
) -> Result<(Content, WriteReport)> {
    let small = chunking.avg_size.0;
    let mut head = Vec::new();
    (&mut *input)
        .take(small + 1)
        .read_to_end(&mut head)
        .map_err(input_error)?;
    if head.len() as u64 <= small {
        return write_inline(store, &head, chunking, settings, progress);
    }
    let mut rest = std::io::Cursor::new(head).chain(input);
    write_parallel(
        store,
        Input::Stream(&mut rest),
        chunking,
        settings,
        progress,
        false,
    )
}

/// Stores the chunks of `data` that are final whatever is appended to it later: all but the
/// last one (content-defined boundaries depend only on the bytes since the previous boundary,
/// so chunking the whole content later cuts at the same places). Returns their content, with
/// offsets from the start of `data` and `size` = bytes covered. The objects are not synced
/// here: the write that completes the content syncs them with its own (see `ChunkBackend`).
pub fn write_prefix(
    store: &Store,
    data: &[u8],
    chunking: Chunking,
    settings: EncodeSettings,
) -> Result<(Content, WriteReport)> {
    write_parallel(store, Input::Slice(data), chunking, settings, &|_| {}, true)
}

/// The whole (small) input is in `data`: chunk and store it here, same result as the workers.
fn write_inline(
    store: &Store,
    data: &[u8],
    chunking: Chunking,
    settings: EncodeSettings,
    progress: &dyn Fn(u64),
) -> Result<(Content, WriteReport)> {
    let salt = chunk_codec::new_salt(settings);
    let written = Mutex::new(HashSet::new());
    let mut results = BTreeMap::new();
    let inline_max = if store.inline_objects_allowed() {
        INLINE_OBJECT_MAX
    } else {
        0
    };
    let mut seq = 0u64;
    // The slice chunker cuts exactly where the streaming one does, without the streaming
    // one's zero-filled buffer of `max_size` bytes (most of a small file's commit).
    for c in slice_chunker(data, chunking, store) {
        let job = Job {
            seq,
            offset: c.offset as u64,
            data: std::borrow::Cow::Borrowed(&data[c.offset..c.offset + c.length]),
        };
        results.insert(
            seq,
            store_chunk(store, settings, salt.as_ref(), &job, &written, inline_max)?,
        );
        seq += 1;
    }
    progress(data.len() as u64);
    finish(store, results, seq, data.len() as u64, true)
}

/// FastCDC normalization used by every chunker of the store (part of where cuts fall).
const LEVEL: fastcdc::v2020::Normalization = fastcdc::v2020::Normalization::Level1;

/// (min, avg, max) chunk sizes of a policy, as FastCDC takes them.
fn cut_sizes(c: Chunking) -> (u32, u32, u32) {
    (
        c.min_size.0 as u32,
        c.avg_size.0 as u32,
        c.max_size.0 as u32,
    )
}

/// The store's secret gear-table seed (so cut points do not reveal content to outsiders).
fn seed(store: &Store) -> u64 {
    store.keys.chunker_seed
}

fn chunker<R: Read>(input: R, chunking: Chunking, store: &Store) -> fastcdc::v2020::StreamCDC<R> {
    let (min, avg, max) = cut_sizes(chunking);
    fastcdc::v2020::StreamCDC::with_level_and_seed(input, min, avg, max, LEVEL, seed(store))
}

/// The chunker for input already in memory: cuts where [`chunker`] does, without copying.
fn slice_chunker<'a>(
    data: &'a [u8],
    chunking: Chunking,
    store: &Store,
) -> fastcdc::v2020::FastCDC<'a> {
    let (min, avg, max) = cut_sizes(chunking);
    fastcdc::v2020::FastCDC::with_level_and_seed(data, min, avg, max, LEVEL, seed(store))
}

fn chunking_error(e: fastcdc::v2020::Error) -> SpaceError {
    match e {
        fastcdc::v2020::Error::IoError(io) => input_error(io),
        other => SpaceError::io("chunking input", std::io::Error::other(other.to_string())),
    }
}

/// The worker pipeline; with `hold_last`, the final chunk is neither stored nor counted, and
/// nothing is synced.
fn write_parallel(
    store: &Store,
    input: Input<'_>,
    chunking: Chunking,
    settings: EncodeSettings,
    progress: &dyn Fn(u64),
    hold_last: bool,
) -> Result<(Content, WriteReport)> {
    let n_workers = workers();
    let (job_tx, job_rx) = mpsc::sync_channel::<Job<'_>>(n_workers * 2);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Result<Done>>();
    // Chunk ids written by this stream, so repeats within it are stored once.
    let written: Arc<Mutex<HashSet<ChunkId>>> = Arc::default();
    let salt = chunk_codec::new_salt(settings);

    std::thread::scope(|scope| {
        for _ in 0..n_workers {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let written = Arc::clone(&written);
            scope.spawn(move || worker(store, settings, salt, job_rx, done_tx, written));
        }
        drop(done_tx);
        let produced = produce(
            store, input, chunking, job_tx, &done_rx, progress, hold_last,
        );
        // Workers exit once the job channel is closed (produce dropped the sender).
        let mut results: BTreeMap<u64, Done> = BTreeMap::new();
        let mut first_err: Option<SpaceError> = None;
        let (total_chunks, total_bytes, pending) = match produced {
            Ok(v) => v,
            Err(e) => {
                first_err = Some(e);
                (0, 0, Vec::new())
            }
        };
        for r in pending.into_iter().chain(done_rx.iter()) {
            match r {
                Ok(d) => {
                    results.insert(d.seq, d);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        finish(store, results, total_chunks, total_bytes, !hold_last)
    })
}

/// Makes the stored objects durable and assembles the content from per-chunk results.
fn finish(
    store: &Store,
    results: BTreeMap<u64, Done>,
    total_chunks: u64,
    total_bytes: u64,
    sync: bool,
) -> Result<(Content, WriteReport)> {
    if results.len() as u64 != total_chunks {
        return Err(SpaceError::Io {
            context: "write pipeline".into(),
            source: std::io::Error::other("a worker stopped without reporting"),
        });
    }
    // Inline objects are committed with the metadata; only backend objects need a sync.
    let put_any = results.values().any(|d| !d.reused && d.inline.is_none());
    if sync && put_any {
        store
            .chunks
            .sync()
            .map_err(|e| SpaceError::io("syncing chunk directories", e))?;
    }
    let mut report = WriteReport {
        bytes: total_bytes,
        chunks: total_chunks,
        ..Default::default()
    };
    // A chunk repeated within the stream may have been reported as reused by one worker
    // while another wrote it: record the object size and location on every occurrence.
    let mut sizes: std::collections::HashMap<ChunkId, &ContentChunk> =
        std::collections::HashMap::new();
    for d in results.values() {
        let e = sizes.entry(d.chunk.extent.chunk).or_insert(&d.chunk);
        if d.chunk.stored_len > e.stored_len {
            *e = &d.chunk;
        }
    }
    let sizes: std::collections::HashMap<ChunkId, ContentChunk> =
        sizes.into_iter().map(|(id, c)| (id, *c)).collect();
    let mut inline_objects = Vec::new();
    let chunks: Vec<ContentChunk> = results
        .into_values()
        .map(|d| {
            if let Some(object) = d.inline {
                inline_objects.push((d.chunk.extent.chunk, object));
            }
            if d.reused {
                report.reused_chunks += 1;
            } else {
                report.stored_bytes += d.chunk.stored_len as u64;
            }
            let stored = sizes[&d.chunk.extent.chunk];
            ContentChunk {
                extent: d.chunk.extent,
                ..stored
            }
        })
        .collect();
    Ok((
        Content {
            chunks,
            size: total_bytes,
            provenance: None,
            inline_objects,
        },
        report,
    ))
}

/// Feeds chunks to the workers; returns (chunks, bytes, results drained early).
fn produce<'a>(
    store: &Store,
    input: Input<'a>,
    chunking: Chunking,
    job_tx: SyncSender<Job<'a>>,
    done_rx: &Receiver<Result<Done>>,
    progress: &dyn Fn(u64),
    hold_last: bool,
) -> Result<(u64, u64, Vec<Result<Done>>)> {
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut early = Vec::new();
    let chunks: Box<dyn Iterator<Item = Result<Cut<'a>>> + 'a> = match input {
        Input::Stream(r) => Box::new(chunker(r, chunking, store).map(|c| {
            c.map(|c| (c.offset, std::borrow::Cow::Owned(c.data)))
                .map_err(chunking_error)
        })),
        Input::Slice(data) => Box::new(slice_chunker(data, chunking, store).map(move |c| {
            let bytes = &data[c.offset..c.offset + c.length];
            Ok((c.offset as u64, std::borrow::Cow::Borrowed(bytes)))
        })),
    };
    let mut chunks = chunks.peekable();
    while let Some(c) = chunks.next() {
        let (offset, data) = c?;
        if hold_last && chunks.peek().is_none() {
            break;
        }
        // Fail fast: stop reading input as soon as a worker reports an error.
        while let Ok(r) = done_rx.try_recv() {
            let failed = r.is_err();
            early.push(r);
            if failed {
                return Ok((seq, bytes, early));
            }
        }
        bytes += data.len() as u64;
        let job = Job { seq, offset, data };
        seq += 1;
        if job_tx.send(job).is_err() {
            break;
        }
        progress(bytes);
    }
    Ok((seq, bytes, early))
}

/// Input errors that are really on-write transform failures are reported as such.
fn input_error(io: std::io::Error) -> SpaceError {
    if io
        .get_ref()
        .map(|e| e.is::<TransformFailed>())
        .unwrap_or(false)
    {
        return SpaceError::Transform(io.to_string());
    }
    SpaceError::io("reading input", io)
}

fn worker(
    store: &Store,
    s: EncodeSettings,
    salt: Option<[u8; 16]>,
    jobs: Arc<Mutex<Receiver<Job<'_>>>>,
    done: mpsc::Sender<Result<Done>>,
    written: Arc<Mutex<HashSet<ChunkId>>>,
) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let r = store_chunk(store, s, salt.as_ref(), &job, &written, 0);
        if done.send(r).is_err() {
            return;
        }
    }
}

fn store_chunk(
    store: &Store,
    s: EncodeSettings,
    salt: Option<&[u8; 16]>,
    job: &Job<'_>,
    written: &Mutex<HashSet<ChunkId>>,
    inline_max: usize,
) -> Result<Done> {
    let id = chunk_codec::chunk_id(&store.keys, s, &job.data, salt);
    let extent = Extent {
        offset: job.offset,
        len: job.data.len() as u32,
        chunk: id,
    };
    let seen_here = !written.lock().unwrap().insert(id);
    if seen_here || (s.dedup && store.meta.has_chunk(&id)?) {
        return Ok(Done {
            seq: job.seq,
            chunk: ContentChunk {
                extent,
                stored_len: 0,
                loc: None,
                head: None,
            },
            reused: true,
            inline: None,
        });
    }
    let s = EncodeSettings {
        segmented: store.segmented_objects(),
        ..s
    };
    let object = chunk_codec::encode(&store.keys, s, &id, &job.data, salt);
    if object.len() <= inline_max {
        return Ok(Done {
            seq: job.seq,
            chunk: ContentChunk {
                extent,
                stored_len: object.len() as u32,
                loc: None,
                head: None,
            },
            reused: false,
            inline: Some(object),
        });
    }
    let loc = put_object(store.chunks.as_ref(), &id, &object)
        .map_err(|e| SpaceError::io(format!("writing chunk {id}"), e))?;
    let head = chunk_codec::segmented_head_len(&object).and_then(|n| ObjectHead::new(&object[..n]));
    Ok(Done {
        seq: job.seq,
        chunk: ContentChunk {
            extent,
            stored_len: object.len() as u32,
            loc,
            head,
        },
        reused: false,
        inline: None,
    })
}

// A segmented object's whole head fits the metadata's copy of it (else partial reads would
// always read the head from the object).
const _: () = assert!(chunk_codec::SegmentedObject::HEAD_LEN <= ObjectHead::MAX);

/// Stores an encoded object; a segmented object's segments go page-aligned into its pack, so
/// partial reads read whole pages (docs/FORMAT.md 4.2).
pub(crate) fn put_object(
    chunks: &dyn crate::store::ChunkBackend,
    id: &ChunkId,
    object: &[u8],
) -> std::io::Result<Option<crate::store::PackLoc>> {
    match chunk_codec::segmented_head_len(object) {
        Some(n) => chunks.put_aligned(id, object, n),
        None => chunks.put(id, object),
    }
}

#[cfg(test)]
mod tests {
    use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};
    use rand::{RngCore, SeedableRng};

    /// `write_inline` cuts a slice with `FastCDC`, the streaming paths with `StreamCDC`; both
    /// must cut at the same places or the same bytes would be stored as different chunks.
    #[test]
    fn slice_and_stream_chunkers_cut_alike() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (len, seed) in [(0usize, 0u64), (1000, 1), (300_000, 2), (3 << 20, 0x5eed)] {
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            let (min, avg, max) = (64 << 10, 256 << 10, 1 << 20);
            let slice: Vec<(u64, usize)> =
                FastCDC::with_level_and_seed(&data, min, avg, max, Normalization::Level1, seed)
                    .map(|c| (c.offset as u64, c.length))
                    .collect();
            let stream: Vec<(u64, usize)> = StreamCDC::with_level_and_seed(
                &data[..],
                min,
                avg,
                max,
                Normalization::Level1,
                seed,
            )
            .map(|c| c.map(|c| (c.offset, c.length)).unwrap())
            .collect();
            assert_eq!(slice, stream, "{len} bytes");
            assert_eq!(slice.iter().map(|c| c.1).sum::<usize>(), len);
        }
    }
}
