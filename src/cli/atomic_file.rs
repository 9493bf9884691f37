//! Writing `spacectl get -o FILE` so that FILE is either absent, as it was, or whole: the bytes
//! go to an unnamed file (`O_TMPFILE`) in FILE's directory, which vanishes with the process
//! however it dies (Ctrl-C, `kill -9`), and is given a name only once it is complete and
//! synced: linked under a temporary name and renamed over FILE.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Creates or replaces `target` with what `fill` writes, atomically.
pub fn write_replacing(target: &Path, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let partial = target.with_extension(format!("spacectl-partial-{}", std::process::id()));
    let unnamed = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o666)
        .open(&dir);
    let r = match unnamed {
        Ok(mut f) => fill(&mut f)
            .and_then(|()| f.sync_all().context("syncing the output"))
            .and_then(|()| link_unnamed(&f, &partial)),
        // Filesystems without O_TMPFILE: a named temporary file, removed if this fails
        // (a process killed meanwhile leaves it behind).
        Err(_) => File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))
            .and_then(|mut f| {
                fill(&mut f)?;
                f.sync_all().context("syncing the output")
            }),
    };
    let r = r.and_then(|()| {
        std::fs::rename(&partial, target)
            .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    r
}

/// Gives the unnamed file `f` the name `path` (through /proc, which needs no privilege,
/// unlike `AT_EMPTY_PATH`).
fn link_unnamed(f: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let to = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("naming the output {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_target_is_replaced_whole_or_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let failed = write_replacing(&target, |f: &mut File| {
            f.write_all(b"half of the new")?;
            Err(anyhow::anyhow!("source failed"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        write_replacing(&target, |f: &mut File| Ok(f.write_all(b"new bytes")?)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new bytes");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing else is left beside it");
    }
}
