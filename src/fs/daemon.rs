//! The `spacefs` daemon: opens the store, mounts, goes to the background once the mount is
//! ready (so `mount` returns only then), and unmounts cleanly on SIGTERM/SIGINT/SIGHUP after
//! committing every pending write.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use super::fuse::FuseAdapter;
use super::options::{self, CmdLine, MountOptions, Parsed};
use super::{FsOptions, SpaceFs};
use crate::Space;
use crate::store::Unlock;

/// Default number of request threads.
const THREADS: usize = 8;

/// How many session threads serve requests.
fn session_threads(opts: &MountOptions) -> usize {
    opts.threads.unwrap_or(THREADS)
}

/// fuser's session configuration for `opts`.
pub fn fuser_config(store: &Path, opts: &MountOptions) -> Config {
    let mut c = Config::default();
    let mut m = vec![
        MountOption::FSName(opts.fsname.clone().unwrap_or_else(|| {
            let canon = store.canonicalize().unwrap_or_else(|_| store.to_path_buf());
            canon.display().to_string()
        })),
        // As a kernel option, not fuser's Subtype: fuser hands that only to fusermount3, so
        // a mount by root (the mount syscall) showed type `fuse` in /proc/mounts, not
        // `fuse.spacefs`. fusermount3 accepts it as an ordinary option too.
        MountOption::CUSTOM("subtype=spacefs".into()),
        // Permission checks by the kernel on mode bits, always (docs/SEMANTICS.md).
        MountOption::DefaultPermissions,
    ];
    m.push(if opts.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    for f in &opts.kernel_flags {
        m.push(match f.as_str() {
            "nosuid" => MountOption::NoSuid,
            "nodev" => MountOption::NoDev,
            "noexec" => MountOption::NoExec,
            "suid" => MountOption::Suid,
            "dev" => MountOption::Dev,
            "exec" => MountOption::Exec,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    // Later flags win (e.g. `nosuid` after the default `suid`): keep the last of each pair.
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<MountOption> = m
        .into_iter()
        .rev()
        .filter(|o| {
            let key = match o {
                MountOption::NoSuid | MountOption::Suid => "suid",
                MountOption::NoDev | MountOption::Dev => "dev",
                MountOption::NoExec | MountOption::Exec => "exec",
                MountOption::NoAtime | MountOption::Atime => "atime",
                MountOption::Sync | MountOption::Async => "sync",
                MountOption::RO | MountOption::RW => "ro",
                _ => return true,
            };
            seen.insert(key)
        })
        .collect();
    kept.reverse();
    c.mount_options = kept;
    c.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(session_threads(opts));
    c.clone_fd = true;
    c.io_uring = opts.io_uring.map(|n| fuser::UringConfig {
        threads_per_queue: n,
    });
    c
}

/// Filesystem settings for `opts`.
pub fn fs_options(opts: &MountOptions) -> FsOptions {
    let mut f = FsOptions {
        read_only: opts.read_only,
        // `-o sync` (a kernel flag for other filesystems) also makes every commit durable.
        durable_commits: opts.kernel_flags.iter().any(|k| k == "sync"),
        ..Default::default()
    };
    if let Some(t) = opts.attr_timeout {
        f.ttl = t;
    }
    f
}

/// Mounts `fs` at `mountpoint` and serves it from background threads of this process (tests,
/// embedding). Dropping or `umount_and_join`-ing the session unmounts.
pub fn mount_in_background(
    fs: Arc<SpaceFs>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<fuser::BackgroundSession> {
    let config = fuser_config(&fs.space.store.dir, opts);
    new_session(fs, mountpoint, opts, &config)?.spawn()
}

/// Mounts `fs` at `mountpoint` and gives the session's governor the request queue to watch.
fn new_session(
    fs: Arc<SpaceFs>,
    mountpoint: &Path,
    opts: &MountOptions,
    config: &Config,
) -> std::io::Result<fuser::Session<FuseAdapter>> {
    let adapter = FuseAdapter::new(Arc::clone(&fs), session_threads(opts));
    let governor = adapter.governor();
    let session = fuser::Session::new(adapter, mountpoint, config)?;
    let (over_io_uring, served) = session.io_uring();
    if over_io_uring {
        // Each CPU's requests go to threads of their own there: nothing to govern.
        governor.stop();
        fs.stats.io_uring_requests.set(served).ok();
    } else {
        if opts.io_uring.is_some() {
            log::warn!(
                "io_uring: the kernel does not offer FUSE over io_uring (it needs Linux 6.14+ \
                 built with CONFIG_FUSE_IO_URING and the fuse module parameter enable_uring=Y: \
                 `echo Y > /sys/module/fuse/parameters/enable_uring`); serving through /dev/fuse"
            );
        }
        governor.watch_queue(session.as_fd());
    }
    Ok(session)
}

fn unlock(opts: &MountOptions) -> Result<Unlock, String> {
    let passphrase = match &opts.passphrase_file {
        Some(f) => Some(
            std::fs::read(f)
                .map_err(|e| format!("reading passphrase file {}: {e}", f.display()))?
                .trim_ascii_end()
                .to_vec(),
        ),
        None => std::env::var_os("SPACE_PASSPHRASE").map(|p| p.into_encoded_bytes()),
    };
    Ok(Unlock {
        passphrase,
        key_file: opts
            .key_file
            .clone()
            .or_else(|| std::env::var_os("SPACE_KEY_FILE").map(PathBuf::from)),
    })
}

/// Opens the store with the WASM transform runtime installed (built on first use).
fn open_space(line: &CmdLine) -> Result<Space, String> {
    Space::open_with_runtime(&line.store, &unlock(&line.options)?)
        .map_err(|e| format!("cannot open store {}: {e}", line.store.display()))
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for a termination signal, then commits, unmounts, and makes sure the process ends.
fn spawn_signal_thread(
    fs: Arc<SpaceFs>,
    mut unmounter: fuser::SessionUnmounter,
    mountpoint: PathBuf,
    set: libc::sigset_t,
) {
    std::thread::Builder::new()
        .name("spacefs-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: sigwait on a signal set blocked in every thread.
            unsafe { libc::sigwait(&set, &mut sig) };
            log::info!("signal {sig}: committing pending writes and unmounting");
            fs.commit_all();
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount: {e}; detaching the mount instead (files still open)");
                if let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes()) {
                    // SAFETY: valid C string; MNT_DETACH only detaches.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
            // Open files keep a detached mount alive; don't wait for them forever.
            std::thread::sleep(Duration::from_secs(5));
            fs.commit_all();
            log::info!("exiting with the mount detached");
            std::process::exit(0);
        })
        .expect("spawn signal thread");
}

/// Forks: the parent waits until the child reports the mount ready (or failed) and exits with
/// that status; the child continues as the daemon and returns the write end to report on.
fn daemonize() -> Result<OwnedFd, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptors are fresh and ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other threads exist yet in this process.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(r);
            // SAFETY: detach from the controlling terminal and session of `mount`.
            unsafe { libc::setsid() };
            Ok(w)
        }
        _ => {
            drop(w);
            let mut f = std::fs::File::from(r);
            let mut msg = String::new();
            let _ = f.read_to_string(&mut msg);
            if msg == "ok" {
                std::process::exit(0);
            }
            if msg.is_empty() {
                msg = "the daemon exited before the mount was ready".into();
            }
            eprintln!("spacefs: {}", msg.trim_start_matches("err:"));
            std::process::exit(1);
        }
    }
}

/// Points stdin/stdout at /dev/null and stderr at the log file (or /dev/null).
fn detach_stdio(log_file: Option<&Path>) {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let log = log_file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    use std::os::fd::AsRawFd;
    if let Ok(null) = &null {
        // SAFETY: dup2 onto the standard descriptors.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            match &log {
                Some(l) => libc::dup2(l.as_raw_fd(), 2),
                None => libc::dup2(null.as_raw_fd(), 2),
            };
        }
    }
}

fn run(line: CmdLine) -> Result<(), String> {
    let mountpoint = line
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", line.mountpoint.display()))?;
    // Check the store and key up front, so mistakes are reported by `mount` itself.
    drop(open_space(&line)?);
    let ready = if line.foreground {
        None
    } else {
        Some(daemonize()?)
    };
    let report = |ready: &Option<OwnedFd>, msg: &str| {
        if let Some(fd) = ready {
            let mut f = std::fs::File::from(fd.try_clone().expect("dup readiness pipe"));
            let _ = f.write_all(msg.as_bytes());
        }
    };
    let result = (|| {
        // Before any thread starts (the store's and the filesystem's own), so that only the
        // signal thread ever receives termination signals.
        let set = block_signals();
        let space = open_space(&line)?;
        let fs =
            Arc::new(SpaceFs::new(space, fs_options(&line.options)).map_err(|e| e.to_string())?);
        let config = fuser_config(&line.store, &line.options);
        let mut session = new_session(Arc::clone(&fs), &mountpoint, &line.options, &config)
            .map_err(|e| format!("mounting on {}: {e}", mountpoint.display()))?;
        spawn_signal_thread(
            Arc::clone(&fs),
            session.unmount_callable(),
            mountpoint.clone(),
            set,
        );
        Ok::<_, String>((fs, session))
    })();
    let (fs, session) = match result {
        Ok(x) => x,
        Err(e) => {
            report(&ready, &format!("err:{e}"));
            return Err(e);
        }
    };
    if let Some(fd) = ready {
        report(&Some(fd), "ok");
        detach_stdio(line.options.log_file.as_deref());
    }
    log::info!(
        "serving {} on {}",
        line.store.display(),
        mountpoint.display()
    );
    let r = session.run();
    fs.commit_all();
    r.map_err(|e| format!("session ended with an error: {e}"))
}

/// `spacefs` entry point; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let line = match options::parse_args(&args) {
        Ok(Parsed::Mount(l)) => *l,
        Ok(Parsed::Help) => {
            print!("{}", options::USAGE);
            return 0;
        }
        Ok(Parsed::Version) => {
            println!("spacefs {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => {
            eprintln!("spacefs: {e}");
            return 2;
        }
    };
    let default = if line.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
    match run(line) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            eprintln!("spacefs: {e}");
            1
        }
    }
}
