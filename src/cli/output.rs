//! Formatting for humans: sizes, modes, times, progress bars.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::store::meta::{Node, NodeKind, TimeNs};

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `drwxr-xr-x` style.
pub fn mode_string(node: &Node) -> String {
    let t = match node.kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::File => '-',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
    };
    let m = node.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    format!(
        "{t}{}{}{}{}{}{}{}{}{}",
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        if m & 0o4000 != 0 {
            's'
        } else {
            bit(0o100, 'x')
        },
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        if m & 0o2000 != 0 {
            's'
        } else {
            bit(0o010, 'x')
        },
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        if m & 0o1000 != 0 {
            't'
        } else {
            bit(0o001, 'x')
        },
    )
}

/// UTC time as `YYYY-MM-DD HH:MM:SS`.
pub fn time_string(t: TimeNs) -> String {
    crate::util::utc_string(t, ' ')
}

/// A byte progress bar on stderr, only when stderr is a terminal and the job is long.
pub fn progress_bar(total: Option<u64>, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    if matches!(total, Some(t) if t < 16 << 20) {
        return None;
    }
    let pb = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    pb.set_message(what.to_string());
    Some(pb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(time_string(0), "1970-01-01 00:00:00");
        assert_eq!(
            time_string(1_700_000_000 * 1_000_000_000),
            "2023-11-14 22:13:20"
        );
    }
}
