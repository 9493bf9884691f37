//! The `spacefs` command line, in mount-helper form: `spacefs STORE MOUNTPOINT [-o opt,...]
//! [-f] [-d] [-s]`, as `mount -t fuse.spacefs` and /etc/fstab call it (via mount.fuse3).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: spacefs STORE MOUNTPOINT [-o OPTION[,OPTION...]] [-f] [-d] [-s]

Mounts the SPACE store at STORE on MOUNTPOINT. Runs in the background once the mount is ready,
unless -f. Unmount with `umount MOUNTPOINT`, `fusermount3 -u MOUNTPOINT`, or SIGTERM/SIGINT.

  -f            stay in the foreground
  -d            debug logging (implies -f)
  -s            handle requests on one thread
  -o OPTIONS    comma-separated mount options:
       allow_other, allow_root     let other users (or root) use the mount
       default_permissions         (always on: the kernel checks mode bits)
       ro, rw, nosuid, nodev, noexec, suid, dev, exec, noatime, atime, async, dirsync
       sync                        every commit durable before close()/create/rename return
                                   (default: durable at fsync, unmount, or within 5 s)
       passphrase_file=FILE        passphrase of a protected key (else SPACE_PASSPHRASE)
       key_file=FILE               key file instead of the store's own
       attr_timeout=SECONDS        how long the kernel caches attributes (default 1)
       threads=N                   request threads at most (default 8; idle ones park)
       io_uring[=N]                serve requests over io_uring when the kernel offers it
                                   (Linux 6.14+, fuse module parameter enable_uring=Y):
                                   N threads per CPU (default 4); else /dev/fuse
       log_file=FILE               where a background daemon logs (default: nowhere)
       fsname=NAME                 source shown in /proc/mounts (default: STORE)
     ignored: auto, noauto, user, users, nouser, owner, group, nofail, _netdev, defaults,
              relatime, strictatime, lazytime, x-*, comment=*
";

/// Threads per CPU queue with `-o io_uring`: requests made on one CPU are served by that
/// CPU's queue only, so this many slow requests (a transform running to its deadline) from
/// one CPU hold up the next one made there.
pub const IO_URING_THREADS: usize = 4;

/// Parsed `-o` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub allow_root: bool,
    pub read_only: bool,
    /// Kernel mount flags passed through (nosuid, nodev, noatime, ...).
    pub kernel_flags: Vec<String>,
    pub passphrase_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub attr_timeout: Option<Duration>,
    pub threads: Option<usize>,
    /// Serve requests over io_uring with this many threads per CPU, if the kernel offers it.
    pub io_uring: Option<usize>,
    pub log_file: Option<PathBuf>,
    pub fsname: Option<String>,
}

/// The whole command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdLine {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
    pub options: MountOptions,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Mount(Box<CmdLine>),
    Help,
    Version,
}

const KERNEL_FLAGS: &[&str] = &[
    "nosuid", "nodev", "noexec", "suid", "dev", "exec", "noatime", "atime", "sync", "async",
    "dirsync",
];
const IGNORED: &[&str] = &[
    "rw",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "defaults",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "default_permissions",
];

impl MountOptions {
    /// Adds one `-o` argument (comma-separated).
    pub fn parse(&mut self, list: &str) -> Result<(), String> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let need = |v: Option<&str>| {
                v.filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| format!("mount option `{key}` needs a value ({key}=...)"))
            };
            match key {
                "allow_other" => self.allow_other = true,
                "allow_root" => self.allow_root = true,
                "ro" => self.read_only = true,
                "passphrase_file" => self.passphrase_file = Some(need(value)?.into()),
                "key_file" => self.key_file = Some(need(value)?.into()),
                "log_file" => self.log_file = Some(need(value)?.into()),
                "fsname" => self.fsname = Some(need(value)?),
                "attr_timeout" => {
                    let v = need(value)?;
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or_else(|| format!("attr_timeout=`{v}` is not a number of seconds"))?;
                    self.attr_timeout = Some(Duration::from_secs_f64(secs));
                }
                "threads" => {
                    let v = need(value)?;
                    let n: usize = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| format!("threads=`{v}` must be 1..256"))?;
                    self.threads = Some(n);
                }
                "io_uring" => {
                    let n = match value {
                        None => IO_URING_THREADS,
                        Some(v) => v
                            .parse()
                            .ok()
                            .filter(|n| (1..=64).contains(n))
                            .ok_or_else(|| format!("io_uring=`{v}` must be 1..64"))?,
                    };
                    self.io_uring = Some(n);
                }
                k if KERNEL_FLAGS.contains(&k) && value.is_none() => {
                    self.kernel_flags.push(k.to_string())
                }
                k if IGNORED.contains(&k)
                    || k.starts_with("x-")
                    || k == "comment"
                    || k == "subtype" => {}
                _ => return Err(format!("unknown mount option `{opt}` (see spacefs --help)")),
            }
        }
        Ok(())
    }
}

/// Parses the arguments after the program name.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Parsed, String> {
    let mut positional = Vec::new();
    let mut line = CmdLine::default();
    let mut it = args.iter().map(|a| a.as_ref());
    while let Some(a) = it.next() {
        match a {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "-f" => line.foreground = true,
            "-d" | "--debug" => {
                line.debug = true;
                line.foreground = true;
            }
            "-s" => line.options.threads = Some(1),
            // mount(8) passes these to helpers; nothing to do.
            "-n" | "-v" => {}
            "-o" => {
                let v = it.next().ok_or("-o needs an argument")?;
                line.options.parse(v)?;
            }
            o if o.starts_with("-o") => line.options.parse(&o[2..])?,
            o if o.starts_with('-') && o.len() > 1 => {
                return Err(format!("unknown flag `{o}` (see spacefs --help)"));
            }
            p => positional.push(p.to_string()),
        }
    }
    match positional.as_slice() {
        [store, mnt] => {
            line.store = store.into();
            line.mountpoint = mnt.into();
            Ok(Parsed::Mount(Box::new(line)))
        }
        _ => Err(format!(
            "expected STORE and MOUNTPOINT, got {} argument(s)\n{USAGE}",
            positional.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(args: &[&str]) -> CmdLine {
        match parse_args(args).unwrap() {
            Parsed::Mount(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mount_helper_forms() {
        // What mount.fuse3 passes for `mount -t fuse.spacefs /s /m -o allow_other,noatime`.
        let c = mount(&["/s", "/m", "-o", "rw,allow_other,noatime,dev,suid"]);
        assert_eq!(c.store, PathBuf::from("/s"));
        assert_eq!(c.mountpoint, PathBuf::from("/m"));
        assert!(c.options.allow_other && !c.options.read_only && !c.foreground);
        assert_eq!(c.options.kernel_flags, ["noatime", "dev", "suid"]);
        let c = mount(&["-f", "-oro,x-systemd.automount,_netdev,nofail", "/s", "/m"]);
        assert!(c.foreground && c.options.read_only);
        let c = mount(&[
            "/s",
            "/m",
            "-o",
            "passphrase_file=/p,threads=4,attr_timeout=0.5",
            "-d",
        ]);
        assert_eq!(c.options.passphrase_file, Some("/p".into()));
        assert_eq!(c.options.threads, Some(4));
        assert_eq!(c.options.attr_timeout, Some(Duration::from_millis(500)));
        assert!(c.debug && c.foreground);
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(
            parse_args(&["/s"])
                .unwrap_err()
                .contains("expected STORE and MOUNTPOINT")
        );
        assert!(
            parse_args(&["/s", "/m", "-o", "alow_other"])
                .unwrap_err()
                .contains("alow_other")
        );
        assert!(parse_args(&["/s", "/m", "-o", "threads=0"]).is_err());
        assert!(parse_args(&["/s", "/m", "-o", "io_uring=0"]).is_err());
        let io = |o: &str| match parse_args(&["/s", "/m", "-o", o]).unwrap() {
            Parsed::Mount(c) => c.options.io_uring,
            _ => unreachable!(),
        };
        assert_eq!(io("io_uring"), Some(IO_URING_THREADS));
        assert_eq!(io("io_uring=2"), Some(2));
        assert_eq!(io("rw"), None);
        assert!(parse_args(&["/s", "/m", "-o", "key_file"]).is_err());
        assert!(parse_args(&["/s", "/m", "-x"]).is_err());
        assert_eq!(parse_args(&["--help"]).unwrap(), Parsed::Help);
    }
}
