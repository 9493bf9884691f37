//! Helpers for the FUSE integration tests: real mounts of a temporary store, by the `spacefs`
//! binary (daemon behaviour) or in-process (to install test transforms).
//!
//! Mounting needs /dev/fuse and root (or fusermount3). When it fails, tests skip with a printed
//! reason — except under `CI=true`, where a mount failure fails the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use space::Space;

#[path = "../common/mod.rs"]
mod common;
// Each test crate uses a different subset of these helpers.
#[allow(unused_imports)]
pub use common::{example_guests, random_bytes};
use space::fs::options::MountOptions;
use space::fs::{FsOptions, SpaceFs};
use space::store::{InitOptions, Store, Unlock};

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

/// Whether FUSE mounts can work here; prints why not (or panics under CI).
pub fn fuse_available() -> bool {
    let why = if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing".to_string())
    } else if unsafe { libc::geteuid() } != 0 && which("fusermount3").is_none() {
        Some("not root and no fusermount3".to_string())
    } else {
        None
    };
    runnable("FUSE tests", why)
}

/// Whether `what` can run: `why` says what is missing, which skips it with a printed reason,
/// except under CI, where every test must run and a missing prerequisite panics.
pub fn runnable(what: &str, why: Option<String>) -> bool {
    match why {
        None => true,
        Some(w) if in_ci() => panic!("{what} cannot run under CI: {w}"),
        Some(w) => {
            eprintln!("SKIPPED: {w}");
            false
        }
    }
}

pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// A temporary store and a mount point next to it.
pub struct Scratch {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
}

pub fn scratch() -> Scratch {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    Store::init(&store, &InitOptions::default()).expect("init store");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    Scratch { tmp, store, mnt }
}

pub fn is_mounted(mnt: &Path) -> bool {
    let Ok(canon) = mnt.canonicalize() else {
        return false;
    };
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|p| Path::new(p) == canon)
            .unwrap_or(false)
    })
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("timed out waiting for {what}");
    false
}

/// The `spacefs` daemon in the foreground (`-f`), as a child process.
pub struct Daemon {
    pub child: Option<Child>,
    pub mnt: PathBuf,
}

pub fn spacefs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_spacefs")
}

impl Daemon {
    /// Mounts `store` on `mnt` with extra `-o` options; None (skip) if FUSE is unavailable.
    pub fn start(store: &Path, mnt: &Path, opts: &str) -> Option<Daemon> {
        if !fuse_available() {
            return None;
        }
        let mut cmd = Command::new(spacefs_bin());
        cmd.arg(store).arg(mnt).arg("-f");
        if !opts.is_empty() {
            cmd.arg("-o").arg(opts);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn spacefs");
        let ok = wait_for("the mount", Duration::from_secs(20), || {
            is_mounted(mnt) || child.try_wait().ok().flatten().is_some()
        }) && is_mounted(mnt);
        if !ok {
            let _ = child.kill();
            let status = child.wait();
            let msg = format!("spacefs did not mount {} ({status:?})", mnt.display());
            if in_ci() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        Some(Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `fusermount3 -u` (or umount) and wait for the daemon to exit; returns its status.
    pub fn unmount(mut self) -> std::process::ExitStatus {
        unmount(&self.mnt);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("spacefs did not exit after unmount");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9; the stale mount is detached.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        force_unmount(&self.mnt);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unmount(&self.mnt);
            std::thread::sleep(Duration::from_millis(100));
            let _ = c.kill();
            let _ = c.wait();
            force_unmount(&self.mnt);
        }
    }
}

pub fn unmount(mnt: &Path) {
    for _ in 0..50 {
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            || Command::new("umount")
                .arg(mnt)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if ok || !is_mounted(mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn force_unmount(mnt: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// An in-process mount of `space` (used to install test transform factories).
pub struct InProcess {
    pub session: Option<fuser::BackgroundSession>,
    pub fs: Arc<SpaceFs>,
    pub mnt: PathBuf,
}

pub fn mount_in_process(space: Space, mnt: &Path, fs_opts: FsOptions) -> Option<InProcess> {
    if !fuse_available() {
        return None;
    }
    let fs = Arc::new(SpaceFs::new(space, fs_opts).expect("SpaceFs::new"));
    match space::fs::daemon::mount_in_background(Arc::clone(&fs), mnt, &MountOptions::default()) {
        Ok(session) => Some(InProcess {
            session: Some(session),
            fs,
            mnt: mnt.to_path_buf(),
        }),
        Err(e) if in_ci() => panic!("mount failed under CI: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: mount failed: {e}");
            None
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                eprintln!("unmount: {e}");
                force_unmount(&self.mnt);
            }
        }
    }
}

pub fn open(store: &Path) -> Space {
    Space::open(store, &Unlock::default()).expect("open store")
}

/// Runs a shell command; panics with its output if it fails.
pub fn sh(cmd: &str) -> Output {
    let o = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        o.status.success(),
        "`{cmd}` failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn sh_out(cmd: &str) -> String {
    String::from_utf8(sh(cmd).stdout).unwrap()
}

pub fn spacectl(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spacectl"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run spacectl")
}

/// `spacectl module add` of the example guests `names` (stored under /wasm).
pub fn add_example_modules(store: &Path, names: &[&str]) {
    let g = example_guests();
    for m in names {
        let o = spacectl(
            store,
            &[
                "module",
                "add",
                g.join(format!("{m}.wasm")).to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `spacectl put` of `data` at `dest` with the policy YAML `policy` (None: inherited).
pub fn put_with_policy(s: &Scratch, dest: &str, data: &[u8], policy: Option<&str>) {
    let tag = dest.replace('/', "_");
    let src = s.tmp.path().join(format!("{tag}.src"));
    std::fs::write(&src, data).unwrap();
    let mut args = vec![
        "put".to_string(),
        src.display().to_string(),
        "--as".into(),
        dest.into(),
    ];
    if let Some(p) = policy {
        let pol = s.tmp.path().join(format!("{tag}.yaml"));
        std::fs::write(&pol, p).unwrap();
        args.extend(["--policy".to_string(), pol.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = spacectl(&s.store, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A line's value from the mount's `/.space/stats`.
pub fn stat_text(mnt: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(mnt.join(".space/stats")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("{key} missing from stats:\n{text}"))
        .to_string()
}

/// A counter from the mount's `/.space/stats`.
pub fn stat_value(mnt: &Path, key: &str) -> u64 {
    let v = stat_text(mnt, key);
    v.parse()
        .unwrap_or_else(|_| panic!("stats {key}: `{v}` is not a number"))
}

/// `threads` threads each create and remove `rounds` directory trees (a directory, a
/// subdirectory and a file) side by side in `dir`; returns every error they met. A filesystem
/// must give none: the names never collide.
pub fn churn_in_one_directory(dir: &Path, threads: usize, rounds: usize) -> Vec<String> {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for i in 0..rounds {
                    let d = dir.join(format!("t{t}-{i}"));
                    let r = std::fs::create_dir(&d)
                        .and_then(|_| std::fs::create_dir(d.join("sub")))
                        .and_then(|_| std::fs::write(d.join("sub/f"), b"x"))
                        .and_then(|_| std::fs::metadata(d.join("sub/f")))
                        .and_then(|_| std::fs::remove_file(d.join("sub/f")))
                        .and_then(|_| std::fs::remove_dir(d.join("sub")))
                        .and_then(|_| std::fs::remove_dir(&d));
                    if let Err(e) = r {
                        errors.push(format!("thread {t} round {i}: {e}"));
                    }
                }
                errors
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect()
}

/// Adds `wasm` as module `name` (capsule://wasm/NAME.wasm) and puts `data` at `dest` with an
/// on-read chain of it that times out after `timeout_ms`.
pub fn put_behind_module(
    s: &Scratch,
    name: &str,
    wasm: &[u8],
    dest: &str,
    data: &[u8],
    timeout_ms: u64,
) {
    let path = s.tmp.path().join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    let o = spacectl(&s.store, &["module", "add", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let policy = format!(
        "transform:\n  - name: {name}\n    image: capsule://wasm/{name}.wasm\n    \
         resources:\n      timeout_ms: {timeout_ms}\n"
    );
    put_with_policy(s, dest, data, Some(&policy));
}
