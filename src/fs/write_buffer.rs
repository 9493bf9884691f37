//! Dirty data of one open capsule: an overlay of written ranges over the committed bytes.
//!
//! The buffer knows the file's logical size, which prefix of the committed version still shows
//! through (`base_len`: truncation cuts it), and which ranges were written. Written bytes live
//! in memory pages up to a threshold, then move to an unnamed temporary file (`O_TMPFILE`), so a
//! large `cp` never holds the file in RAM. A commit streams the merged view (base + overlay +
//! zeros for holes) through [`MergedReader`] into the write path, which re-chunks it; dedup
//! makes the unchanged chunks cheap.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Memory page of the in-RAM overlay.
const PAGE: u64 = 64 * 1024;

/// Reads committed bytes `[offset, offset + buf.len())` into `buf` (always inside `base_len`).
pub type BaseRead<'a> = dyn FnMut(u64, &mut [u8]) -> io::Result<()> + 'a;

/// Non-overlapping, non-adjacent half-open ranges `start -> end`.
#[derive(Debug, Default, Clone)]
struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Ranges touching [start, end] merge into it.
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    /// Drops everything at or beyond `size`.
    fn clip(&mut self, size: u64) {
        let beyond: Vec<u64> = self.0.range(size..).map(|(s, _)| *s).collect();
        for s in beyond {
            self.0.remove(&s);
        }
        if let Some((_, e)) = self.0.range_mut(..size).next_back() {
            if *e > size {
                *e = size;
            }
        }
    }

    /// The range containing `pos`, if any.
    fn containing(&self, pos: u64) -> Option<(u64, u64)> {
        self.0
            .range(..=pos)
            .next_back()
            .filter(|(_, e)| **e > pos)
            .map(|(s, e)| (*s, *e))
    }

    /// Start of the first range beginning after `pos`.
    fn next_start(&self, pos: u64) -> Option<u64> {
        self.0.range(pos + 1..).next().map(|(s, _)| *s)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

enum Pages {
    Memory(HashMap<u64, Box<[u8]>>),
    Spilled(File),
}

/// The overlay. Not thread-safe by itself: the open inode's mutex guards it.
pub struct WriteBuffer {
    size: u64,
    base_len: u64,
    dirty: RangeSet,
    pages: Pages,
    mem_limit: usize,
    spill_dir: PathBuf,
}

impl WriteBuffer {
    /// An overlay over a committed version of `base_len` bytes.
    pub fn new(base_len: u64, mem_limit: usize, spill_dir: &Path) -> WriteBuffer {
        WriteBuffer {
            size: base_len,
            base_len,
            dirty: RangeSet::default(),
            pages: Pages::Memory(HashMap::new()),
            mem_limit,
            spill_dir: spill_dir.to_path_buf(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many leading bytes still come from the committed version.
    pub fn base_len(&self) -> u64 {
        self.base_len
    }

    /// True once the overlay moved to a temporary file.
    pub fn spilled(&self) -> bool {
        matches!(self.pages, Pages::Spilled(_))
    }

    /// True if nothing was written and nothing truncated away.
    pub fn is_pristine(&self) -> bool {
        self.dirty.is_empty() && self.size == self.base_len
    }

    /// Start of the first written range, if any.
    pub fn dirty_start(&self) -> Option<u64> {
        self.dirty.0.keys().next().copied()
    }

    /// True if the overlay is one written range from `base_len` to the end, still in memory:
    /// what a program writing new content front to back leaves.
    pub fn is_append_only(&self) -> bool {
        !self.spilled()
            && self.dirty.0.len() == 1
            && self.dirty.0.first_key_value() == Some((&self.base_len, &self.size))
    }

    /// True if writing `len` bytes at `offset` would move the overlay to a temporary file.
    pub fn would_spill(&self, offset: u64, len: usize) -> bool {
        let Pages::Memory(m) = &self.pages else {
            return false;
        };
        if len == 0 {
            return false;
        }
        let new_pages = (offset / PAGE..=(offset + len as u64 - 1) / PAGE)
            .filter(|p| !m.contains_key(p))
            .count();
        (m.len() + new_pages) as u64 * PAGE > self.mem_limit as u64
    }

    /// Hands `[base_len, upto)` over to the base: those bytes were stored elsewhere and are
    /// read through the base reader from now on. Only for an append-only overlay.
    pub fn absorb(&mut self, upto: u64) {
        debug_assert!(self.is_append_only() && upto >= self.base_len && upto <= self.size);
        self.dirty = RangeSet::default();
        self.dirty.insert(upto, self.size);
        self.base_len = upto;
        if let Pages::Memory(m) = &mut self.pages {
            m.retain(|p, _| (p + 1) * PAGE > upto);
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        self.store(offset, data)?;
        self.dirty.insert(offset, end);
        self.size = self.size.max(end);
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) -> io::Result<()> {
        if size < self.size {
            self.dirty.clip(size);
            self.base_len = self.base_len.min(size);
            match &mut self.pages {
                Pages::Memory(m) => m.retain(|p, _| p * PAGE < size),
                Pages::Spilled(f) => f.set_len(size)?,
            }
        }
        self.size = size;
        Ok(())
    }

    fn store(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Pages::Memory(m) = &self.pages {
            let new_pages = (offset / PAGE..=(offset + data.len() as u64 - 1) / PAGE)
                .filter(|p| !m.contains_key(p))
                .count();
            if (m.len() + new_pages) as u64 * PAGE > self.mem_limit as u64 {
                self.spill()?;
            }
        }
        match &mut self.pages {
            Pages::Spilled(f) => f.write_all_at(data, offset),
            Pages::Memory(m) => {
                let mut done = 0usize;
                while done < data.len() {
                    let pos = offset + done as u64;
                    let (page, within) = (pos / PAGE, (pos % PAGE) as usize);
                    let n = (PAGE as usize - within).min(data.len() - done);
                    let bytes = &data[done..done + n];
                    match m.entry(page) {
                        // A new page the write covers whole (appends of whole pages): copied,
                        // not zeroed first.
                        std::collections::hash_map::Entry::Vacant(v) if n == PAGE as usize => {
                            v.insert(bytes.into());
                        }
                        e => e.or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice())
                            [within..within + n]
                            .copy_from_slice(bytes),
                    }
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Moves the memory pages to an unnamed temporary file.
    fn spill(&mut self) -> io::Result<()> {
        let file = open_tmpfile(&self.spill_dir)?;
        if let Pages::Memory(m) = &self.pages {
            for (p, data) in m {
                file.write_all_at(data, p * PAGE)?;
            }
        }
        log::debug!(
            "write buffer over {} bytes: spilled to a temporary file in {}",
            self.mem_limit,
            self.spill_dir.display()
        );
        self.pages = Pages::Spilled(file);
        Ok(())
    }

    fn load(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.pages {
            Pages::Spilled(f) => {
                // Holes of the sparse file read as zeros; past its end too.
                let mut done = 0;
                while done < buf.len() {
                    let n = f.read_at(&mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        buf[done..].fill(0);
                        break;
                    }
                    done += n;
                }
                Ok(())
            }
            Pages::Memory(m) => {
                let mut done = 0usize;
                while done < buf.len() {
                    let pos = offset + done as u64;
                    let (page, within) = (pos / PAGE, (pos % PAGE) as usize);
                    let n = (PAGE as usize - within).min(buf.len() - done);
                    match m.get(&page) {
                        Some(p) => buf[done..done + n].copy_from_slice(&p[within..within + n]),
                        None => buf[done..done + n].fill(0),
                    }
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Reads the merged view at `offset`; returns the number of bytes (0 at end of file).
    pub fn read(&self, offset: u64, buf: &mut [u8], base: &mut BaseRead<'_>) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let stop = self.size.min(offset + buf.len() as u64);
        let mut pos = offset;
        while pos < stop {
            let at = (pos - offset) as usize;
            if let Some((_, end)) = self.dirty.containing(pos) {
                let end = end.min(stop);
                self.load(pos, &mut buf[at..(end - offset) as usize])?;
                pos = end;
                continue;
            }
            let seg_end = self.dirty.next_start(pos).unwrap_or(stop).min(stop);
            let from_base = seg_end.min(self.base_len);
            if pos < from_base {
                base(pos, &mut buf[at..(from_base - offset) as usize])?;
                pos = from_base;
            }
            if pos < seg_end {
                buf[(pos - offset) as usize..(seg_end - offset) as usize].fill(0);
                pos = seg_end;
            }
        }
        Ok((stop - offset) as usize)
    }
}

/// An unnamed file in `dir` (falls back to the system temporary directory).
fn open_tmpfile(dir: &Path) -> io::Result<File> {
    let open = |d: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(d)
    };
    open(dir).or_else(|_| open(&std::env::temp_dir()))
}

/// The merged content, from offset 0, as a `Read` for the write path.
pub struct MergedReader<'a, 'b> {
    buf: &'a WriteBuffer,
    base: &'a mut BaseRead<'b>,
    pos: u64,
}

impl<'a, 'b> MergedReader<'a, 'b> {
    pub fn new(buf: &'a WriteBuffer, base: &'a mut BaseRead<'b>) -> Self {
        MergedReader { buf, base, pos: 0 }
    }

    /// The merged content from `pos` on.
    pub fn starting_at(buf: &'a WriteBuffer, base: &'a mut BaseRead<'b>, pos: u64) -> Self {
        MergedReader { buf, base, pos }
    }
}

impl Read for MergedReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(1 << 20);
        let n = self.buf.read(self.pos, &mut out[..n], self.base)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0u64..300_000,
                proptest::collection::vec(any::<u8>(), 1..70_000)
            )
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..350_000).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of writes and truncates over any base reads like a plain Vec would.
        #[test]
        fn overlay_matches_a_vec(base_len in 0usize..200_000, ops in proptest::collection::vec(op(), 1..25), limit in prop_oneof![Just(usize::MAX), Just(128 * 1024usize)]) {
            let base: Vec<u8> = (0..base_len).map(|i| (i % 251) as u8 + 1).collect();
            let mut model = base.clone();
            let dir = std::env::temp_dir();
            let mut wb = WriteBuffer::new(base_len as u64, limit, &dir);
            for op in &ops {
                match op {
                    Op::Write(o, d) => {
                        let o = *o as usize;
                        if model.len() < o + d.len() { model.resize(o + d.len(), 0); }
                        model[o..o + d.len()].copy_from_slice(d);
                        wb.write(o as u64, d).unwrap();
                    }
                    Op::Truncate(n) => {
                        model.resize(*n as usize, 0);
                        wb.truncate(*n).unwrap();
                    }
                }
            }
            prop_assert_eq!(wb.size(), model.len() as u64);
            let mut read_base = |off: u64, b: &mut [u8]| -> io::Result<()> {
                b.copy_from_slice(&base[off as usize..off as usize + b.len()]);
                Ok(())
            };
            let mut all = Vec::new();
            MergedReader::new(&wb, &mut read_base).read_to_end(&mut all).unwrap();
            prop_assert!(all == model, "merged content differs");
            // A random-access read in the middle agrees too.
            if !model.is_empty() {
                let off = model.len() / 3;
                let mut b = vec![0u8; 5000];
                let n = wb.read(off as u64, &mut b, &mut read_base).unwrap();
                prop_assert_eq!(&b[..n], &model[off..(off + 5000).min(model.len())]);
            }
        }
    }

    #[test]
    fn spills_beyond_the_threshold() {
        let dir = std::env::temp_dir();
        let mut wb = WriteBuffer::new(0, 256 * 1024, &dir);
        wb.write(0, &vec![7u8; 200 * 1024]).unwrap();
        assert!(!wb.spilled());
        wb.write(1 << 20, &[1, 2, 3]).unwrap();
        assert!(wb.spilled());
        let mut nobase = |_: u64, _: &mut [u8]| -> io::Result<()> { unreachable!() };
        let mut b = vec![9u8; 8];
        assert_eq!(wb.read((1 << 20) - 4, &mut b, &mut nobase).unwrap(), 7);
        assert_eq!(&b[..7], &[0, 0, 0, 0, 1, 2, 3]);
    }
}
