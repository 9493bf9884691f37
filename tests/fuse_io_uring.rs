//! FUSE over io_uring (`-o io_uring`): the same filesystem served through the kernel's per-CPU
//! ring queues instead of `/dev/fuse` reads and writes. Needs Linux 6.14+ built with
//! `CONFIG_FUSE_IO_URING`; the tests switch the fuse module's `enable_uring` parameter on
//! (root). Where that is impossible they skip, except under CI=true, where they fail.

mod fuse_common;
mod wasm_common;

use std::path::Path;
use std::time::{Duration, Instant};

use fuse_common::*;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Turns FUSE over io_uring on for new mounts; false (skip) where it cannot be.
fn uring_available() -> bool {
    if !fuse_available() {
        return false;
    }
    let on = || {
        std::fs::read_to_string(ENABLE_URING)
            .map(|v| v.trim() == "Y")
            .unwrap_or(false)
    };
    let why = if !Path::new(ENABLE_URING).exists() {
        Some("this kernel has no FUSE over io_uring (no fuse parameter enable_uring)".into())
    } else if !on() && std::fs::write(ENABLE_URING, "Y").is_err() {
        Some("cannot set the fuse parameter enable_uring (not root?)".into())
    } else if !on() {
        Some("the fuse parameter enable_uring did not stay on".into())
    } else {
        None
    };
    runnable("io_uring tests", why)
}

/// Pins the calling thread to `cpu`: the kernel queues a request on the ring of the CPU its
/// caller runs on.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in bounds for small cpu numbers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU {cpu}"
        );
    }
}

/// The tests of this file run one at a time: the next one measures how long a client waits.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn ordinary_programs_over_io_uring() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !uring_available() {
        return;
    }
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "io_uring") else {
        return;
    };
    assert_eq!(stat_text(&s.mnt, "fuse_transport"), "io_uring");
    let before = stat_value(&s.mnt, "fuse_requests_io_uring");
    let m = s.mnt.display();
    let t = s.tmp.path().display();
    let repo = env!("CARGO_MANIFEST_DIR");

    // Large writes and reads (1 MiB requests), checked end to end.
    std::fs::write(s.tmp.path().join("big"), random_bytes(24 << 20, 7)).unwrap();
    sh(&format!("cp {t}/big {m}/big && sync"));
    assert_eq!(
        sh_out(&format!("sha256sum < {t}/big")),
        sh_out(&format!("sha256sum < {m}/big"))
    );
    // In-place overwrite at an offset, the same on a local copy.
    sh(&format!("cp {t}/big {t}/big.local"));
    for f in [format!("{t}/big.local"), format!("{m}/big")] {
        sh(&format!(
            "head -c 100000 /dev/zero | tr '\\0' x | dd of={f} bs=1000 seek=3333 conv=notrunc status=none"
        ));
    }
    sh(&format!("cmp {t}/big.local {m}/big"));
    assert_eq!(
        sh_out(&format!("tail -c 100 {m}/big | wc -c")).trim(),
        "100"
    );

    // A real source tree through tar, compared file by file.
    sh(&format!("tar -C {repo} -cf - src docs | tar -C {m} -xf -"));
    sh(&format!(
        "diff -r {repo}/src {m}/src && diff -r {repo}/docs {m}/docs"
    ));

    // Namespace operations and attributes.
    sh(&format!(
        "mkdir -p {m}/a/b && mv {m}/src {m}/a/b/src && ln -s b/src {m}/a/link && \
         ln {m}/big {m}/a/hard && chmod 640 {m}/a/hard && \
         setfattr -n user.colour -v blue {m}/a/hard"
    ));
    assert_eq!(sh_out(&format!("stat -c %a {m}/big")).trim(), "640");
    assert_eq!(
        sh_out(&format!("getfattr --only-values -n user.colour {m}/big")),
        "blue"
    );
    assert!(
        sh_out(&format!("ls {m}/a/link/")).contains("lib.rs"),
        "symlink resolves"
    );
    let py = sh_out(&format!(
        "python3 -c \"import os; p='{m}/py'; open(p,'w').write('hello'*1000); \
         print(len(open(p).read()), os.stat(p).st_size)\""
    ));
    assert_eq!(py.trim(), "5000 5000");
    sh(&format!("rm -r {m}/a/b {m}/docs"));
    assert_eq!(sh_out(&format!("ls {m}")).split_whitespace().count(), 3);

    // Clients creating and removing side by side (several threads: several queues).
    std::fs::create_dir(s.mnt.join("churn")).unwrap();
    let errors = churn_in_one_directory(&s.mnt.join("churn"), 6, 200);
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    sh(&format!("rmdir {m}/churn"));

    let served = stat_value(&s.mnt, "fuse_requests_io_uring") - before;
    assert!(
        served > 500,
        "only {served} requests were answered over io_uring"
    );
    assert!(d.unmount().success(), "the daemon exits cleanly");

    // What was written over io_uring reads back the same through /dev/fuse.
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    assert_eq!(stat_text(&s.mnt, "fuse_transport"), "/dev/fuse");
    sh(&format!("cmp {t}/big.local {m}/big"));
    assert!(d.unmount().success());
}

/// A request held up in a transform occupies one thread of its CPU's queue; the next request
/// made on the same CPU is served by another.
#[test]
fn a_slow_request_leaves_its_cpu_queue_serving() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !uring_available() {
        return;
    }
    let s = scratch();
    let spin = wasm_common::bin(&wasm_common::with_process(
        "(loop $l (br $l)) (i64.const 0)",
    ));
    put_behind_module(&s, "spin", &spin, "/slow", b"some bytes", 5000);
    let Some(d) = Daemon::start(&s.store, &s.mnt, "io_uring=2") else {
        return;
    };
    let t0 = Instant::now();
    let slow_path = s.mnt.join("slow");
    let slow = std::thread::spawn(move || {
        pin_to(0);
        let r = std::fs::read(&slow_path);
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));

    let other = s.mnt.join("other");
    let fast = std::thread::spawn(move || {
        pin_to(0);
        std::fs::create_dir(&other).unwrap();
        for i in 0..50 {
            let p = other.join(format!("g{i}"));
            std::fs::write(&p, format!("file {i}")).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), format!("file {i}").as_bytes());
        }
        t0.elapsed()
    });
    let fast_done = fast.join().unwrap();
    let (r, slow_done) = slow.join().unwrap();
    let e = r.expect_err("a module spinning to its deadline fails the read");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        slow_done >= Duration::from_millis(4500),
        "the slow read ended after {slow_done:?}"
    );
    // Served beside the slow read, not after it (with one thread per queue the client is
    // done only once the read has failed).
    assert!(
        fast_done + Duration::from_millis(1500) < slow_done,
        "a client on the same CPU was done after {fast_done:?}, the slow read after {slow_done:?}"
    );
    assert!(stat_value(&s.mnt, "fuse_requests_io_uring") > 300);
    assert!(d.unmount().success());
}
