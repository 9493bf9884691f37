//! Ordinary programs against a store mounted by the real `spacefs` daemon: cat, cp, dd, tail,
//! sha256sum, python3, tar + diff -r, mv, ln, chmod, setfattr/getfattr, the /.space tree,
//! signals and background mode.

mod fuse_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fuse_common::*;

fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

#[test]
fn programs_see_a_local_filesystem() {
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let m = s.mnt.display().to_string();
    let t = s.tmp.path().display().to_string();

    // cat / cp / sha256sum of a multi-chunk incompressible file.
    let data = random_bytes(5 << 20, 1);
    write(&s.tmp.path().join("big"), &data);
    sh(&format!("mkdir -p {m}/in && cp {t}/big {m}/in/big"));
    assert_eq!(std::fs::read(s.mnt.join("in/big")).unwrap(), data);
    let a = sh_out(&format!("sha256sum < {t}/big"));
    assert_eq!(sh_out(&format!("cat {m}/in/big | sha256sum")), a);
    assert_eq!(
        std::fs::metadata(s.mnt.join("in/big")).unwrap().len(),
        data.len() as u64
    );

    // dd: in-place overwrite at an offset (conv=notrunc), then a sparse write past the end.
    sh(&format!(
        "cp {m}/in/big {t}/model && \
         dd if=/dev/urandom of={t}/patch bs=4096 count=3 2>/dev/null && \
         dd if={t}/patch of={m}/in/big bs=4096 seek=100 conv=notrunc 2>/dev/null && \
         dd if={t}/patch of={t}/model bs=4096 seek=100 conv=notrunc 2>/dev/null && \
         dd if={t}/patch of={m}/in/big bs=1 seek=6000000 conv=notrunc 2>/dev/null && \
         dd if={t}/patch of={t}/model bs=1 seek=6000000 conv=notrunc 2>/dev/null && \
         cmp {t}/model {m}/in/big"
    ));
    // Reading a block back with dd skip, and tail.
    assert_eq!(
        sh_out(&format!(
            "dd if={m}/in/big bs=4096 skip=100 count=3 2>/dev/null | sha256sum"
        )),
        sh_out(&format!("sha256sum < {t}/patch"))
    );
    assert_eq!(
        sh_out(&format!("tail -c 5000 {m}/in/big | sha256sum")),
        sh_out(&format!("tail -c 5000 {t}/model | sha256sum"))
    );

    // Appends, truncate (shrink and grow), python3 reads and writes.
    sh(&format!(
        "printf 'one\\n' > {m}/log && printf 'two\\n' >> {m}/log && echo three >> {m}/log"
    ));
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("log")).unwrap(),
        "one\ntwo\nthree\n"
    );
    assert_eq!(sh_out(&format!("tail -n 1 {m}/log")), "three\n");
    sh(&format!("truncate -s 2 {m}/log && truncate -s 6 {m}/log"));
    assert_eq!(std::fs::read(s.mnt.join("log")).unwrap(), b"on\0\0\0\0");
    if which("python3").is_some() {
        sh(&format!(
            "python3 -c \"\
import os
p='{m}/py'
open(p,'wb').write(b'x'*100000)
f=open(p,'r+b'); f.seek(50000); f.write(b'HELLO'); f.flush(); os.fsync(f.fileno()); f.close()
d=open(p,'rb').read()
assert len(d)==100000 and d[50000:50005]==b'HELLO' and d[:5]==b'xxxxx', len(d)
assert open('{m}/in/big','rb').read()==open('{t}/model','rb').read()
\""
        ));
    }

    // tar a real source tree into the mount; diff -r against the original.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    sh(&format!(
        "tar -C {} -cf {t}/src.tar . && mkdir {m}/tree && tar -C {m}/tree -xf {t}/src.tar && diff -r {} {m}/tree",
        src.display(),
        src.display()
    ));

    // mv (atomic replace), ln, ln -s, chmod.
    sh(&format!(
        "echo old > {m}/a && echo new > {m}/b && mv {m}/b {m}/a && \
         ln {m}/a {m}/hard && ln -s a {m}/soft && chmod 640 {m}/a"
    ));
    assert_eq!(std::fs::read_to_string(s.mnt.join("a")).unwrap(), "new\n");
    assert!(!s.mnt.join("b").exists());
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("soft")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_link(s.mnt.join("soft")).unwrap(),
        Path::new("a")
    );
    let md = std::fs::metadata(s.mnt.join("hard")).unwrap();
    assert_eq!(md.nlink(), 2);
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(md.ino(), std::fs::metadata(s.mnt.join("a")).unwrap().ino());
    sh(&format!(
        "mv {m}/tree {m}/tree2 && test -f {m}/tree2/lib.rs && rm -r {m}/tree2"
    ));

    // Extended attributes: user.* stored; the policy and id views.
    sh(&format!("setfattr -n user.color -v blue {m}/a"));
    assert!(sh_out(&format!("getfattr -n user.color --only-values {m}/a")) == "blue");
    let id = sh_out(&format!("getfattr -n user.space.id --only-values {m}/a"));
    assert!(uuid_like(&id), "{id}");
    assert_eq!(
        std::fs::read(s.mnt.join(format!(".space/by-id/{id}"))).unwrap(),
        b"new\n"
    );
    sh(&format!(
        "setfattr -n user.space.policy -v 'dedup: false' {m}/in"
    ));
    let pol = sh_out(&format!(
        "getfattr -n user.space.policy --only-values {m}/in"
    ));
    assert!(pol.contains("dedup: false"), "{pol}");
    let bad = Command::new("setfattr")
        .args(["-n", "user.space.policy", "-v", "compresion: zstd"])
        .arg(s.mnt.join("in"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "an invalid policy must be refused");
    // As with `spacectl policy set`, a chain whose module cannot be loaded is refused too,
    // and the policy in place stays.
    let missing = Command::new("setfattr")
        .args(["-n", "user.space.policy", "-v"])
        .arg("transform: [{name: x, image: 'file:///nonexistent/x.wasm', trigger: on-read}]")
        .arg(s.mnt.join("in"))
        .output()
        .unwrap();
    assert!(
        !missing.status.success(),
        "a policy naming a missing module must be refused"
    );
    let kept = sh_out(&format!(
        "getfattr -n user.space.policy --only-values {m}/in"
    ));
    assert!(
        kept.contains("dedup: false") && !kept.contains("transform"),
        "{kept}"
    );
    let listed = sh_out(&format!("getfattr -d -m - {m}/a"));
    assert!(
        listed.contains("user.color") && listed.contains("user.space.id"),
        "{listed}"
    );
    sh(&format!("setfattr -x user.color {m}/a"));
    // security.* (as root): none at first (answered without a metadata query), then stored.
    if unsafe { libc::geteuid() } == 0 {
        let none = Command::new("getfattr")
            .args(["-n", "security.capability"])
            .arg(s.mnt.join("a"))
            .output()
            .unwrap();
        assert!(!none.status.success(), "no security.capability yet");
        sh(&format!("setfattr -n security.test -v one {m}/a"));
        assert_eq!(
            sh_out(&format!("getfattr -n security.test --only-values {m}/a")),
            "one"
        );
        sh(&format!(
            "echo more >> {m}/a && setfattr -x security.test {m}/a"
        ));
    }

    // /.space: raw view, stats; hidden from the root listing.
    assert_eq!(
        std::fs::read(s.mnt.join(".space/raw/in/big")).unwrap(),
        std::fs::read(s.tmp.path().join("model")).unwrap()
    );
    let stats = std::fs::read_to_string(s.mnt.join(".space/stats")).unwrap();
    for k in [
        "bytes_read:",
        "bytes_written:",
        "cache_hits:",
        "dedup_ratio:",
        "compression_ratio:",
        "wasm_calls:",
        "wasm_traps:",
        "wasm_timeouts:",
    ] {
        assert!(stats.contains(k), "{k} missing from stats:\n{stats}");
    }
    assert!(!sh_out(&format!("ls -a {m}")).contains(".space"));
    assert!(std::fs::write(s.mnt.join(".space/stats"), b"x").is_err());
    assert!(std::fs::write(s.mnt.join(".space/raw/a"), b"x").is_err());

    // df shows the disk's figures.
    let df = sh_out(&format!("df -k {m} | tail -1"));
    let total: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(total > 0, "{df}");

    // Everything is durable after unmount; the store is consistent.
    let status = d.unmount();
    assert!(status.success(), "spacefs exit status {status}");
    let space = open(&s.store);
    let n = space.resolve("/in/big").unwrap();
    let mut got = Vec::new();
    space
        .read_to(&n, space::space::View::Transformed, &mut got, &|_| {})
        .unwrap();
    assert_eq!(got, std::fs::read(s.tmp.path().join("model")).unwrap());
    let fsck = spacectl(&s.store, &["fsck"]);
    assert!(
        fsck.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn rename_exchange_swaps_two_names() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let m = &s.mnt;
    let exchange = |a: &str, b: &str| {
        let c = |p: &str| CString::new(m.join(p).as_os_str().as_bytes()).unwrap();
        let (a, b) = (c(a), c(b));
        // SAFETY: two NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        match r {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().raw_os_error()),
        }
    };
    let nlink = |p: &str| std::fs::metadata(m.join(p)).unwrap().nlink();
    std::fs::write(m.join("a"), b"first").unwrap();
    std::fs::write(m.join("b"), b"second").unwrap();
    let ino_a = std::fs::metadata(m.join("a")).unwrap().ino();
    assert_eq!(exchange("a", "b"), Ok(()));
    assert_eq!(std::fs::read(m.join("a")).unwrap(), b"second");
    assert_eq!(std::fs::read(m.join("b")).unwrap(), b"first");
    assert_eq!(std::fs::metadata(m.join("b")).unwrap().ino(), ino_a);
    // A directory and a file in different directories: each parent's link count follows
    // the subdirectory.
    std::fs::create_dir_all(m.join("p/sub/deep")).unwrap();
    std::fs::create_dir(m.join("q")).unwrap();
    std::fs::write(m.join("q/file"), b"f").unwrap();
    assert_eq!((nlink("p"), nlink("q")), (3, 2));
    assert_eq!(exchange("p/sub", "q/file"), Ok(()));
    assert_eq!((nlink("p"), nlink("q")), (2, 3));
    assert!(m.join("q/file/deep").is_dir());
    assert_eq!(std::fs::read(m.join("p/sub")).unwrap(), b"f");
    // Errors: a missing name; a directory swapped into its own subtree.
    assert_eq!(exchange("a", "missing"), Err(Some(libc::ENOENT)));
    assert_eq!(exchange("q", "q/file/deep"), Err(Some(libc::EINVAL)));
    assert!(d.unmount().success());
    // Committed: the store sees the swapped tree and is consistent.
    let space = open(&s.store);
    let node = space.resolve("/q/file/deep").unwrap();
    assert_eq!(node.kind, space::store::meta::NodeKind::Dir);
    assert!(spacectl(&s.store, &["fsck"]).status.success());
}

#[test]
fn fallocate_extends_with_zeros() {
    use std::os::fd::AsRawFd;
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let path = s.mnt.join("pre");
    std::fs::write(&path, b"head").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let fd = f.as_raw_fd();
    let falloc = |mode: i32, off: i64, len: i64| {
        // SAFETY: plain syscall on a descriptor this test owns.
        match unsafe { libc::fallocate(fd, mode, off, len) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().raw_os_error()),
        }
    };
    // Mode 0 grows the file to offset + length with zeros, never shrinks it.
    assert_eq!(falloc(0, 1 << 20, 1 << 20), Ok(()));
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    assert_eq!(falloc(0, 0, 10), Ok(()));
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    // KEEP_SIZE reserves nothing and changes nothing; holes and ranges are not supported.
    assert_eq!(falloc(libc::FALLOC_FL_KEEP_SIZE, 0, 8 << 20), Ok(()));
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(falloc(punch, 0, 2), Err(Some(libc::EOPNOTSUPP)));
    drop(f);
    assert!(d.unmount().success());
    let mut want = b"head".to_vec();
    want.resize(2 << 20, 0);
    let space = open(&s.store);
    let node = space.resolve("/pre").unwrap();
    assert_eq!(
        space.read_all(&node, space::space::View::Raw).unwrap(),
        want,
        "committed at close"
    );
}

#[test]
fn unlinked_open_files_keep_working_until_closed() {
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    if which("python3").is_none() {
        return;
    }
    let m = s.mnt.display().to_string();
    sh(&format!(
        "python3 -c \"\
import os
f=open('{m}/tmp','w+b'); f.write(b'abc'*1000); f.flush()
os.unlink('{m}/tmp')
f.write(b'more'); f.flush(); os.fsync(f.fileno())
f.seek(0); d=f.read()
assert d==b'abc'*1000+b'more', len(d)
g=open('{m}/keep','wb'); g.write(b'x'); h=open('{m}/keep2','wb'); h.write(b'y'); h.close()
os.rename('{m}/keep2','{m}/keep')
g.write(b'z'); g.flush(); g.seek(0)
f.close(); g.close()
assert open('{m}/keep','rb').read()==b'y'
\""
    ));
    assert!(d.unmount().success());
    let space = open(&s.store);
    assert!(space.store.meta.orphans().unwrap().is_empty());
    assert!(spacectl(&s.store, &["fsck"]).status.success());
}

#[test]
fn spacectl_changes_show_up_within_the_attribute_timeout() {
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "attr_timeout=0.5") else {
        return;
    };
    write(&s.mnt.join("f"), b"mounted\n");
    let src = s.tmp.path().join("v2");
    write(&src, b"from spacectl, longer\n");
    let o = spacectl(&s.store, &["put", src.to_str().unwrap(), "--as", "/f"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = spacectl(&s.store, &["put", src.to_str().unwrap(), "--as", "/new"]);
    assert!(o.status.success());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        std::fs::read(s.mnt.join("f")).unwrap(),
        b"from spacectl, longer\n"
    );
    assert_eq!(
        std::fs::read(s.mnt.join("new")).unwrap(),
        b"from spacectl, longer\n"
    );
    drop(d);
}

/// New files take the policy of their nearest directory that has one, however it changed:
/// through the mount (setfattr, mv of a directory: at once) or with spacectl (within the
/// attribute timeout, which bounds how long the mount remembers what a directory passes on).
#[test]
fn new_files_inherit_the_current_directory_policy() {
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "attr_timeout=0.5") else {
        return;
    };
    let m = s.mnt.display().to_string();
    let policy_of = |p: &str| {
        sh_out(&format!(
            "getfattr -n user.space.policy --only-values {m}/{p} 2>/dev/null || true"
        ))
    };
    sh(&format!(
        "mkdir -p {m}/top/mid/leaf {m}/other && echo 1 > {m}/top/mid/leaf/a"
    ));
    assert!(!policy_of("top/mid/leaf/a").contains("dedup: false"));
    // A policy set on an ancestor through the mount reaches the next file at once.
    sh(&format!(
        "setfattr -n user.space.policy -v 'dedup: false' {m}/top && echo 2 > {m}/top/mid/leaf/b"
    ));
    assert!(policy_of("top/mid/leaf/b").contains("dedup: false"));
    // A directory moved out from under it inherits from its new ancestors at once.
    sh(&format!(
        "mv {m}/top/mid {m}/other/mid && echo 3 > {m}/other/mid/leaf/c"
    ));
    assert!(!policy_of("other/mid/leaf/c").contains("dedup: false"));
    // A policy set with spacectl shows within the attribute timeout.
    let yaml = s.tmp.path().join("p.yaml");
    write(&yaml, b"compression:\n  algorithm: none\n");
    let o = spacectl(
        &s.store,
        &["policy", "set", "/other", yaml.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(700));
    sh(&format!("echo 4 > {m}/other/mid/leaf/d"));
    assert!(
        policy_of("other/mid/leaf/d").contains("none"),
        "{}",
        policy_of("other/mid/leaf/d")
    );
    drop(d);
}

/// A created file's commit waits to be shared with its content, but never long: `spacectl`
/// sees a file still open (nothing written) within the deferral limit, and a directory at once.
#[test]
fn new_files_reach_other_processes_promptly() {
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    std::fs::create_dir(s.mnt.join("d")).unwrap();
    let o = spacectl(&s.store, &["ls", "/d"]);
    assert!(
        o.status.success(),
        "mkdir is committed when it returns: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Held open by another process: a descriptor of ours would be closed (and the file
    // committed by that flush) in every child spawned below.
    let open = s.mnt.join("d/open");
    // (Python: a shell's `exec 3>f` closes a duplicate, which flushes.)
    let mut held = Command::new("python3")
        .args([
            "-c",
            "import os, sys, time; os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY); time.sleep(30)",
        ])
        .arg(&open)
        .spawn()
        .unwrap();
    while !open.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    // (spacectl writes to the metadata when it opens a store, so it would wait for the
    // mount's transaction: up to the 5-second sync without the deferral limit.)
    let t = std::time::Instant::now();
    let o = spacectl(&s.store, &["ls", "/d"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("open"),
        "a file still open is committed within the limit: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A spacectl write while the mount creates files queues briefly, then succeeds.
    let src = s.tmp.path().join("src");
    write(&src, b"x");
    for i in 0..20 {
        std::fs::File::create(s.mnt.join(format!("d/f{i}"))).unwrap();
        let o = spacectl(
            &s.store,
            &["put", src.to_str().unwrap(), "--as", &format!("/d/p{i}")],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    held.kill().unwrap();
    held.wait().unwrap();
    assert!(spacectl(&s.store, &["fsck"]).status.success());
    drop(d);
}

#[test]
fn sigterm_commits_and_unmounts() {
    let s = scratch();
    let Some(mut d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    write(&s.mnt.join("f"), b"before the signal");
    unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) };
    let mut child = d.child.take().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&s.mnt));
    let space = open(&s.store);
    assert_eq!(
        space
            .read_all(&space.resolve("/f").unwrap(), space::space::View::Raw)
            .unwrap(),
        b"before the signal"
    );
}

#[test]
fn background_mode_returns_when_ready() {
    let s = scratch();
    if !fuse_available() {
        return;
    }
    let o = Command::new(spacefs_bin())
        .arg(&s.store)
        .arg(&s.mnt)
        .output()
        .unwrap();
    if !o.status.success() {
        let msg = format!(
            "spacefs (background) failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    // The mount is ready as soon as the command returns.
    assert!(is_mounted(&s.mnt));
    write(&s.mnt.join("x"), b"hello");
    unmount(&s.mnt);
    assert!(!is_mounted(&s.mnt));
    // A bad store is reported by the command itself, with a non-zero status.
    let o = Command::new(spacefs_bin())
        .arg(s.tmp.path())
        .arg(&s.mnt)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open store"));
}

#[test]
fn mount_dash_t_fuse_spacefs() {
    let s = scratch();
    if !fuse_available() {
        return;
    }
    let why = if which("mount.fuse3").is_none() && which("mount.fuse").is_none() {
        Some("no mount.fuse3 (Debian package fuse3)".to_string())
    } else if unsafe { libc::geteuid() } != 0 {
        Some("mount(8) with a FUSE type needs root".to_string())
    } else {
        None
    };
    if !runnable("mount -t fuse.spacefs", why) {
        return;
    }
    // mount(8) runs helpers with a fixed PATH: put `spacefs` where mount.fuse3 finds it
    // (docs/SEMANTICS.md, "Mounting"), unless an installed one is there already.
    let link = Path::new("/usr/local/bin/spacefs");
    let created = !link.exists() && std::os::unix::fs::symlink(spacefs_bin(), link).is_ok();
    struct Unlink<'a>(&'a Path, bool);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            if self.1 {
                let _ = std::fs::remove_file(self.0);
            }
        }
    }
    let _unlink = Unlink(link, created);
    let o = Command::new("mount")
        .args(["-t", "fuse.spacefs"])
        .arg(&s.store)
        .arg(&s.mnt)
        .args(["-o", "allow_other,noatime"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mount -t fuse.spacefs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(is_mounted(&s.mnt));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    // The store is the source and the type is `fuse.spacefs`, as fstab names it.
    let canon = s.store.canonicalize().unwrap();
    let line = format!("{} {} fuse.spacefs ", canon.display(), s.mnt.display());
    assert!(
        mounts.lines().any(|l| l.starts_with(&line)),
        "{line}\n{mounts}"
    );
    write(&s.mnt.join("x"), b"via mount(8)");
    let o = Command::new("umount").arg(&s.mnt).output().unwrap();
    assert!(
        o.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let space = open(&s.store);
    assert_eq!(
        space
            .read_all(&space.resolve("/x").unwrap(), space::space::View::Raw)
            .unwrap(),
        b"via mount(8)"
    );
}
