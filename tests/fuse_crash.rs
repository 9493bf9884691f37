//! kill -9 of the daemon during concurrent writes: after a remount, every file whose close()
//! returned is intact, and fsck is clean.

mod fuse_common;

use std::io::Write;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_common::*;

/// A file whose close() returned, and what it holds.
type Closed = (std::path::PathBuf, Vec<u8>);

/// Four writers of mixed sizes, and one of small files only (its closes are grouped into
/// few commits, docs/SEMANTICS.md), each in its own directory under the mount.
struct Writers {
    closed: Arc<Mutex<Vec<Closed>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(mnt: &std::path::Path) -> Writers {
        let closed: Arc<Mutex<Vec<Closed>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..5u64)
            .map(|t| {
                let dir = mnt.join(format!("w{t}"));
                std::fs::create_dir(&dir).unwrap();
                let (closed, stop) = (Arc::clone(&closed), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let len = match t {
                            4 => 100 + (i as usize * 37) % 4000,
                            _ => [1000usize, 70_000, 600_000, 2_000_000][(i % 4) as usize],
                        };
                        let data = random_bytes(len, t * 1_000_003 + i);
                        let p = dir.join(format!("f{i}"));
                        let Ok(mut f) = std::fs::File::create(&p) else {
                            break;
                        };
                        if f.write_all(&data).is_err() {
                            break;
                        }
                        // close(2) itself must succeed: that is when the data is committed.
                        if unsafe { libc::close(f.into_raw_fd()) } != 0 {
                            break;
                        }
                        closed.lock().unwrap().push((p, data));
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            closed,
            stop,
            threads,
        }
    }

    /// Stops the writers; returns every file whose close() returned (at least a few).
    fn finish(self) -> Vec<Closed> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.threads {
            w.join().unwrap();
        }
        let closed = self.closed.lock().unwrap().clone();
        assert!(
            closed.len() >= 4,
            "too few writes completed ({})",
            closed.len()
        );
        closed
    }
}

/// Every file in `closed` reads back as written (through the mount).
fn verify(closed: &[Closed], after: &str) {
    for (p, data) in closed {
        let got =
            std::fs::read(p).unwrap_or_else(|e| panic!("{} lost after {after}: {e}", p.display()));
        assert!(
            got == *data,
            "{} damaged after {after} ({} bytes, expected {})",
            p.display(),
            got.len(),
            data.len()
        );
    }
}

fn assert_fsck_clean(store: &std::path::Path, after: &str) {
    let fsck = spacectl(store, &["fsck"]);
    assert!(
        fsck.status.success(),
        "fsck after {after}: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn kill_dash_nine_during_concurrent_writes_keeps_closed_files() {
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    // The kill usually lands with some small files recorded only in the redo log.
    let writers = Writers::start(&s.mnt);
    std::thread::sleep(Duration::from_millis(2500));
    d.kill9();
    let closed = writers.finish();

    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    verify(&closed, "kill -9");
    assert!(d.unmount().success());
    assert_fsck_clean(&s.store, "kill -9");
    eprintln!("{} closed files verified after kill -9", closed.len());
}

#[test]
fn gc_while_a_mount_writes_keeps_every_closed_file() {
    // gc decides what nothing references while the mount's newest files are still in its
    // open group (committed up to 50 ms later): it must wait for them, not collect them.
    // End to end over real packs; the race itself is pinned down deterministically by
    // tests/packs.rs gc_waits_for_a_mounts_open_group_of_changes.
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let writers = Writers::start(&s.mnt);
    // At least two runs over at least 3 s of writing. A run waits for a moment when no file
    // is being committed (the writers' shared lock): usually well under a second, but seen
    // to take over 3 s with the other test of this file writing on the same two cores.
    let mut runs = 0;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(3000) || runs < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "gc starved: {runs} runs in 120 s of concurrent writes"
        );
        let gc = spacectl(&s.store, &["gc"]);
        assert!(
            gc.status.success(),
            "{}",
            String::from_utf8_lossy(&gc.stderr)
        );
        runs += 1;
    }
    let closed = writers.finish();
    verify(&closed, "gc");
    assert!(d.unmount().success());
    assert_fsck_clean(&s.store, "gc");
    eprintln!(
        "{} closed files verified after {runs} concurrent gc runs",
        closed.len()
    );
}
