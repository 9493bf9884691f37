//! Session threads of a real daemon: a client making one request at a time leaves the spare
//! threads parked, a request that takes long (a transform spinning to its deadline) never
//! holds up other clients (the governor releases a parked thread for them), and clients
//! creating and removing files side by side never see each other's errors.

mod fuse_common;
mod wasm_common;

use std::io::Write;
use std::time::{Duration, Instant};

use fuse_common::*;

/// The tests of this file run one at a time: the first counts parked threads and releases,
/// which another test's load on this 2-CPU VM would blur.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_slow_request_does_not_hold_up_other_clients() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = scratch();
    let spin = wasm_common::bin(&wasm_common::with_process(
        "(loop $l (br $l)) (i64.const 0)",
    ));
    put_behind_module(&s, "spin", &spin, "/slow", b"some bytes", 3000);
    let Some(d) = Daemon::start(&s.store, &s.mnt, "threads=8") else {
        return;
    };

    // One request at a time: all threads but the reader park.
    let dir = s.mnt.join("seq");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..300 {
        std::fs::File::create(dir.join(format!("f{i}")))
            .and_then(|mut f| f.write_all(b"small"))
            .unwrap();
    }
    let parked = stat_value(&s.mnt, "session_threads_parked");
    assert!(
        parked >= 5,
        "{parked} of 8 threads parked after 300 sequential creates"
    );
    let released_before = stat_value(&s.mnt, "session_threads_released");

    // A reader stuck in the daemon for 3 s (the module spins until its deadline)...
    let slow_path = s.mnt.join("slow");
    let slow = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = std::fs::read(&slow_path);
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));

    // ...while another client creates, reads and lists files without waiting for it.
    let t0 = Instant::now();
    let other = s.mnt.join("other");
    std::fs::create_dir(&other).unwrap();
    for i in 0..100 {
        let p = other.join(format!("g{i}"));
        std::fs::write(&p, format!("file {i}")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), format!("file {i}").as_bytes());
    }
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 100);
    let took = t0.elapsed();

    let (r, slow_took) = slow.join().unwrap();
    let e = r.expect_err("a module spinning to its deadline fails the read");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        slow_took >= Duration::from_millis(2500),
        "the slow read ended after {slow_took:?}, before the other client finished"
    );
    assert!(
        took < Duration::from_millis(2000),
        "the other client took {took:?} while a read spun in a transform"
    );
    assert!(
        stat_value(&s.mnt, "session_threads_released") > released_before,
        "no parked thread was released for the waiting client"
    );
    assert!(d.unmount().success());
}

/// Concurrent creates and removes in one directory: inode numbers are never handed out twice,
/// so the kernel never takes a new node for a removed one it still holds (before, ~0.5% of
/// these operations failed with EEXIST or ESTALE).
#[test]
fn concurrent_creates_and_removes_see_no_errors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "threads=8") else {
        return;
    };
    let dir = s.mnt.join("churn");
    std::fs::create_dir(&dir).unwrap();
    let errors = churn_in_one_directory(&dir, 6, 400);
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert!(d.unmount().success());
    let o = spacectl(&s.store, &["fsck"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
