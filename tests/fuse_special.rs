//! Special files on a mounted store: FIFOs (`mkfifo`), UNIX sockets (`bind`), character and
//! block device nodes (`mknod`, root only) — their types and device numbers as `stat` shows
//! them, hard links, renames, chmod, and that all of it survives a remount.

mod fuse_common;

use fuse_common::*;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `stat -c '%F %t:%T %h %a'` of each name under `m` (type, device major:minor in hex, links,
/// mode).
fn stat_all(m: &str, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            sh_out(&format!("stat -c '%F %t:%T %h %a' {m}/{n}"))
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn fifos_sockets_and_device_nodes() {
    let s = scratch();
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    let m = s.mnt.display().to_string();
    let root = is_root();
    let python = which("python3").is_some();

    sh(&format!("mkdir {m}/dir && mkfifo -m 640 {m}/fifo"));
    if python {
        sh(&format!(
            "python3 -c \"\
import socket
s=socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind('{m}/sock'); s.close()
\""
        ));
    }
    if root {
        sh(&format!(
            "mknod -m 666 {m}/null c 1 3 && mknod -m 660 {m}/dir/blk b 8 17"
        ));
    }
    // mknod(2) of a regular file makes an empty capsule.
    if python {
        sh(&format!(
            "python3 -c \"\
import os, stat
os.mknod('{m}/regular', 0o600 | stat.S_IFREG)
assert os.stat('{m}/regular').st_size == 0
assert open('{m}/regular','rb').read() == b''
\""
        ));
    }

    let mut names = vec!["fifo"];
    let mut want = vec!["fifo 0:0 1 640".to_string()];
    if python {
        // bind(2) creates the socket with 0777 & ~umask.
        let umask = u32::from_str_radix(sh_out("umask").trim(), 8).unwrap();
        names.push("sock");
        want.push(format!("socket 0:0 1 {:o}", 0o777 & !umask));
    }
    if root {
        names.extend(["null", "dir/blk"]);
        want.push("character special file 1:3 1 666".to_string());
        want.push("block special file 8:11 1 660".to_string());
    }
    assert_eq!(stat_all(&m, &names), want);
    assert_eq!(sh_out(&format!("ls -l {m}/fifo")).chars().next(), Some('p'));

    // The kernel serves FIFO reads and writes itself; spacefs only keeps the node.
    assert_eq!(
        sh_out(&format!(
            "timeout 20 sh -c '(echo through the pipe > {m}/fifo &) ; cat {m}/fifo'"
        )),
        "through the pipe\n"
    );
    if root {
        assert_eq!(sh_out(&format!("head -c 4 {m}/null | wc -c")).trim(), "0");
    }

    // Hard links, rename (into another directory and over another special file), chmod.
    sh(&format!(
        "ln {m}/fifo {m}/dir/fifo-link && chmod 600 {m}/dir/fifo-link && \
         mkfifo {m}/victim && mv {m}/fifo {m}/victim"
    ));
    assert_eq!(
        sh_out(&format!("stat -c '%F %h %a' {m}/victim {m}/dir/fifo-link")),
        "fifo 2 600\nfifo 2 600\n"
    );
    assert!(!s.mnt.join("fifo").exists());
    if root {
        sh(&format!(
            "mv {m}/dir/blk {m}/blk2 && ln {m}/null {m}/dir/null-link"
        ));
    }
    if python {
        // ls -l shows the type letters, readdir the types.
        assert_eq!(sh_out(&format!("ls -l {m}/sock")).chars().next(), Some('s'));
        assert!(sh_out(&format!("find {m} -type s")).contains("/sock"));
    }
    assert!(sh_out(&format!("find {m} -type p")).contains("/victim"));

    let before_names: Vec<&str> = {
        let mut v = vec!["victim", "dir/fifo-link"];
        if python {
            v.push("sock");
        }
        if root {
            v.extend(["null", "dir/null-link", "blk2"]);
        }
        v
    };
    let before = stat_all(&m, &before_names);
    let inodes = sh_out(&format!("stat -c %i {m}/victim {m}/dir/fifo-link"));
    assert!(d.unmount().success());

    let o = spacectl(&s.store, &["fsck"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = spacectl(&s.store, &["stat", "/victim"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("kind:     fifo"));
    if root {
        let o = spacectl(&s.store, &["stat", "/blk2"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(out.contains("kind:     block device"), "{out}");
        assert!(out.contains("device:   8:17"), "{out}");
        let o = spacectl(&s.store, &["ls", "--long", "/"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(out.lines().any(|l| l.starts_with("crw-rw-rw-")), "{out}");
    }

    // Everything is still there after a remount.
    let Some(d) = Daemon::start(&s.store, &s.mnt, "") else {
        return;
    };
    assert_eq!(stat_all(&m, &before_names), before);
    assert_eq!(
        sh_out(&format!("stat -c %i {m}/victim {m}/dir/fifo-link")),
        inodes
    );
    assert_eq!(
        sh_out(&format!(
            "timeout 20 sh -c '(echo again > {m}/dir/fifo-link &) ; cat {m}/victim'"
        )),
        "again\n"
    );

    // Removing them leaves a clean store.
    sh(&format!(
        "rm -rf {m}/victim {m}/dir {m}/sock {m}/null {m}/blk2 {m}/regular"
    ));
    assert_eq!(sh_out(&format!("ls -A {m}")), "");
    assert!(d.unmount().success());
    let o = spacectl(&s.store, &["fsck"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
