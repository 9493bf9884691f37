//! One function per `spacectl` subcommand.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use super::output::{human_bytes, mode_string, progress_bar, time_string};
use super::{Cli, Command, PolicyAction, UsageError};
use crate::policy::Policy;
use crate::space::{PutOptions, Space, View};
use crate::store::meta::NodeKind;
use crate::store::{InitOptions, Store};

pub fn run(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Init { dir, encrypt_key } => init(cli, dir.as_deref(), *encrypt_key),
        Command::Module {
            action: super::ModuleAction::Sign { module, key },
        } => super::wasm_commands::sign(module, key),
        Command::Key {
            action: super::KeyAction::Gen { out },
        } => super::wasm_commands::key_gen(out),
        Command::Transform { action } => super::wasm_commands::transform(cli, action),
        Command::Mount {
            mountpoint,
            options,
            foreground,
        } => mount(cli, mountpoint, options.as_deref(), *foreground),
        Command::Umount { mountpoint } => umount(mountpoint),
        Command::Policy {
            action: PolicyAction::Check { file },
        } => {
            let p = read_policy(file)?;
            print!("{}", p.to_yaml());
            Ok(0)
        }
        _ => {
            let space = open(cli)?;
            dispatch(cli, &space)
        }
    }
}

pub fn open(cli: &Cli) -> Result<Space> {
    let dir = cli.store_dir()?;
    Ok(Space::open_with_runtime(&dir, &cli.unlock()?)?)
}

fn init(cli: &Cli, dir: Option<&Path>, encrypt_key: bool) -> Result<i32> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => cli.store_dir()?,
    };
    let unlock = cli.unlock()?;
    if encrypt_key && unlock.passphrase.is_none() {
        return Err(anyhow!(UsageError(
            "--encrypt-key needs a passphrase: pass --passphrase-file FILE or set SPACE_PASSPHRASE"
                .into()
        )));
    }
    let unlock = crate::store::Unlock {
        passphrase: if encrypt_key { unlock.passphrase } else { None },
        key_file: unlock.key_file,
    };
    let config = Store::init(&dir, &InitOptions { unlock, kdf: None })?;
    println!("initialized store {} at {}", config.store_id, dir.display());
    Ok(0)
}

/// Reads and validates a policy file (`-` = stdin); errors name the file, field and line.
fn read_policy(file: &Path) -> Result<Policy> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading policy from stdin")?;
        s
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("reading policy file {}", file.display()))?
    };
    Policy::from_yaml(&text).with_context(|| format!("policy file {}", file.display()))
}

fn dispatch(cli: &Cli, space: &Space) -> Result<i32> {
    match &cli.command {
        Command::Init { .. } => unreachable!("handled before opening"),
        Command::Put {
            file,
            dest,
            policy,
            parents,
            quiet,
        } => put(
            space,
            file,
            dest.as_deref(),
            policy.as_deref(),
            *parents,
            *quiet,
        ),
        Command::Get {
            target,
            output,
            raw,
            view,
        } => get(space, target, output.as_deref(), *raw, view.as_deref()),
        Command::Cache { action } => cache(space, action),
        Command::Ls { path, long } => ls(space, path, *long),
        Command::Stat { target } => stat(space, target),
        Command::Rm { path, recursive } => {
            space.remove(path, *recursive)?;
            Ok(0)
        }
        Command::Mv { from, to, force } => {
            space.rename(from, to, *force)?;
            Ok(0)
        }
        Command::Mkdir {
            path,
            parents,
            policy,
        } => {
            let p = policy.as_deref().map(read_policy).transpose()?;
            space.mkdir(path, *parents, p.as_ref())?;
            Ok(0)
        }
        Command::Policy { action } => match action {
            PolicyAction::Show { target } => {
                let (node, _) = space.resolve_target(target)?;
                match &node.policy {
                    Some(_) => print!("{}", space.policy_of(&node)?.to_yaml()),
                    None if node.kind == NodeKind::Dir => println!(
                        "# no policy: capsules created here get the nearest parent's or the default"
                    ),
                    None => print!("{}", Policy::default().to_yaml()),
                }
                Ok(0)
            }
            PolicyAction::Set { path, file, clear } => {
                let p = match (file, clear) {
                    (_, true) => None,
                    (Some(f), false) => Some(read_policy(f)?),
                    (None, false) => {
                        return Err(anyhow!(UsageError(
                            "policy set needs a FILE (or - for stdin) or --clear".into()
                        )));
                    }
                };
                space.set_policy(path, p.as_ref())?;
                Ok(0)
            }
            PolicyAction::Check { .. } => unreachable!("handled before opening"),
        },
        Command::Fsck => fsck(space),
        Command::Gc => {
            let r = space.gc()?;
            println!(
                "removed {} unreferenced chunks ({}), {} orphan objects, {} temporary files; \
                 repacked {} packs, deleted {} ({} given back)",
                r.chunks_removed,
                human_bytes(r.bytes_freed),
                r.orphans_removed,
                r.temporaries_removed,
                r.packs_repacked,
                r.packs_deleted,
                human_bytes(r.pack_bytes_freed)
            );
            Ok(0)
        }
        Command::Stats => stats(space),
        Command::Module { action } => super::wasm_commands::module(space, action),
        Command::Key { action } => super::wasm_commands::key(space, action),
        Command::Config { action } => super::wasm_commands::config(space, action),
        Command::Transform { .. } | Command::Mount { .. } | Command::Umount { .. } => {
            unreachable!("handled before opening")
        }
    }
}

fn put(
    space: &Space,
    file: &str,
    dest: Option<&str>,
    policy: Option<&Path>,
    parents: bool,
    quiet: bool,
) -> Result<i32> {
    let policy = policy.map(read_policy).transpose()?;
    let (mut input, size, mode, default_name): (
        Box<dyn Read>,
        Option<u64>,
        Option<u32>,
        Option<String>,
    ) = if file == "-" {
        (Box::new(std::io::stdin().lock()), None, None, None)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {file}"))?;
        let md = f.metadata().with_context(|| format!("reading {file}"))?;
        if md.is_dir() {
            return Err(anyhow!(UsageError(format!(
                "{file} is a directory (put stores files)"
            ))));
        }
        use std::os::unix::fs::PermissionsExt;
        let name = Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        (
            Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
            Some(md.len()),
            Some(md.permissions().mode() & 0o7777),
            name,
        )
    };
    let dest = match (dest, default_name) {
        (Some(d), _) => d.to_string(),
        (None, Some(n)) => format!("/{n}"),
        (None, None) => return Err(anyhow!(UsageError("reading stdin needs --as PATH".into()))),
    };
    let pb = progress_bar(size, &format!("put {dest}"));
    let opts = PutOptions {
        policy,
        mode,
        parents,
        ..Default::default()
    };
    let r = space.put(&mut input, &dest, &opts, &|n| {
        if let Some(pb) = &pb {
            pb.set_position(n)
        }
    });
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let r = r.with_context(|| format!("storing {file} as {dest}"))?;
    println!("{}", r.node.uuid);
    if !quiet {
        eprintln!(
            "{} {} (version {}): {} in {} chunks, {} new ({} written), {} reused",
            if r.replaced { "updated" } else { "stored" },
            crate::space::display_path(&dest),
            r.node.version,
            human_bytes(r.report.bytes),
            r.report.chunks,
            r.report.chunks - r.report.reused_chunks,
            human_bytes(r.report.stored_bytes),
            r.report.reused_chunks
        );
    }
    Ok(0)
}

fn get(
    space: &Space,
    target: &str,
    output: Option<&Path>,
    raw: bool,
    named: Option<&str>,
) -> Result<i32> {
    let (node, path) = space.resolve_target(target)?;
    let view = if raw { View::Raw } else { View::Transformed };
    let read_to = |out: &mut dyn Write, progress: &dyn Fn(u64)| match named {
        Some(v) => space.read_view_to(&node, Some(v), out, progress),
        None => space.read_to(&node, view, out, progress),
    };
    let pb = progress_bar(Some(node.size), &format!("get {path}"));
    let progress = |n: u64| {
        if let Some(pb) = &pb {
            pb.set_position(n)
        }
    };
    // Every destination gets the bytes through one 1 MiB buffer.
    let copy_to = |w: &mut dyn Write| -> Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, w);
        read_to(&mut out, &progress)?;
        out.flush()?;
        Ok(())
    };
    let result = match output {
        None => copy_to(&mut std::io::stdout().lock()),
        Some(file) if is_special_file(file) => {
            // A device, FIFO or socket (`-o /dev/null`, `-o /dev/stdout`, a pipe): written in
            // place. Renaming a temporary file over it would replace the device with a file.
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .with_context(|| format!("opening {}", file.display()))
                .and_then(|mut f| copy_to(&mut f))
        }
        // Written to an unnamed file and renamed over the target once whole: a get that
        // fails or is killed leaves the target as it was and nothing beside it.
        Some(file) => super::atomic_file::write_replacing(file, |f| copy_to(f)),
    };
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    result.with_context(|| format!("reading {path}"))?;
    Ok(0)
}

/// True when `path` exists and is neither a regular file nor a directory (after following
/// symlinks): such outputs are written in place rather than replaced.
fn is_special_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

fn ls(space: &Space, path: &str, long: bool) -> Result<i32> {
    let entries = space.list(path)?;
    let mut out = std::io::stdout().lock();
    for (name, node) in entries {
        let suffix = if node.kind == NodeKind::Dir { "/" } else { "" };
        if long {
            writeln!(
                out,
                "{} {:>3} {:>5} {:>5} {:>12} {} {} {name}{suffix}",
                mode_string(&node),
                node.nlink,
                node.uid,
                node.gid,
                node.size,
                time_string(node.mtime),
                node.uuid,
            )?;
        } else {
            writeln!(out, "{name}{suffix}")?;
        }
    }
    Ok(0)
}

fn stat(space: &Space, target: &str) -> Result<i32> {
    let (node, path) = space.resolve_target(target)?;
    let kind = match node.kind {
        NodeKind::File => "capsule",
        NodeKind::Dir => "directory",
        NodeKind::Symlink => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
        NodeKind::CharDevice => "character device",
        NodeKind::BlockDevice => "block device",
    };
    println!("path:     {path}");
    println!("id:       {}", node.uuid);
    println!("kind:     {kind}");
    println!("size:     {} ({})", node.size, human_bytes(node.size));
    println!("mode:     {} ({:04o})", mode_string(&node), node.mode);
    println!("owner:    uid {} gid {}", node.uid, node.gid);
    println!("links:    {}", node.nlink);
    println!("version:  {}", node.version);
    println!("modified: {} UTC", time_string(node.mtime));
    println!("changed:  {} UTC", time_string(node.ctime));
    println!("accessed: {} UTC", time_string(node.atime));
    if node.kind == NodeKind::File {
        let extents = space
            .store
            .meta
            .extents_from(node.ino, 0, usize::MAX >> 1)?;
        println!("chunks:   {}", extents.len());
    }
    if let Some(t) = &node.target {
        println!("target:   {}", String::from_utf8_lossy(t));
    }
    if matches!(node.kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        println!(
            "device:   {}:{}",
            libc::major(node.rdev as libc::dev_t),
            libc::minor(node.rdev as libc::dev_t)
        );
    }
    match &node.policy {
        Some(_) => {
            println!("policy:");
            for line in space.policy_of(&node)?.to_yaml().lines() {
                println!("  {line}");
            }
        }
        None => println!("policy:   (none)"),
    }
    if node.kind == NodeKind::File {
        if let Some(p) = space.store.meta.provenance(node.ino)? {
            println!("provenance (on-write chain):");
            for line in p.lines() {
                println!("  {line}");
            }
        }
        stat_views(space, &node)?;
    }
    Ok(0)
}

/// The capsule's views and whether each is materialized in the derived-output cache.
fn stat_views(space: &Space, node: &crate::store::meta::Node) -> Result<()> {
    let policy = space.policy_of(node)?;
    let mut views: Vec<Option<&str>> = Vec::new();
    if policy.on_read().next().is_some() {
        views.push(None);
    }
    views.extend(policy.views.keys().map(|k| Some(&**k)));
    for v in views {
        let name = v.unwrap_or("default");
        match space.derivation(node, v) {
            Ok(Some(d)) => match space.store.meta.derived_get(&d.key)? {
                Some(e) => {
                    println!("view {name}: cached, {} ({})", e.size, human_bytes(e.size));
                    for line in e.provenance.lines() {
                        println!("  {line}");
                    }
                }
                None => println!("view {name}: not cached"),
            },
            Ok(None) => {}
            Err(e) => println!("view {name}: unavailable: {e}"),
        }
    }
    Ok(())
}

fn cache(space: &Space, action: &super::CacheAction) -> Result<i32> {
    use super::CacheAction;
    match action {
        CacheAction::Stats => {
            let t = space.derived_totals()?;
            let budget = space.store.config.derived_cache_bytes;
            println!("entries: {}", t.entries);
            println!("bytes:   {} ({})", t.bytes, human_bytes(t.bytes));
            println!("budget:  {} ({})", budget, human_bytes(budget));
            println!("hits:    {}", t.hits);
        }
        CacheAction::Clear => {
            let (dropped, gc) = space.cache_clear()?;
            println!(
                "dropped {} entries ({}); removed {} chunks ({})",
                dropped.entries,
                human_bytes(dropped.bytes),
                gc.chunks_removed,
                human_bytes(gc.bytes_freed)
            );
        }
        CacheAction::Warm { targets, view } => {
            for t in targets {
                let (node, path) = space.resolve_target(t)?;
                let walking = node.kind == NodeKind::Dir;
                for (node, path) in space.files_under(&node, &path)? {
                    if walking
                        && space
                            .policy_of(&node)?
                            .view_chain(view.as_deref())
                            .is_none()
                    {
                        continue; // capsules without this view are not an error in a tree
                    }
                    let pb = progress_bar(Some(node.size), &format!("warm {path}"));
                    let r = space.warm(&node, view.as_deref(), &|n| {
                        if let Some(pb) = &pb {
                            pb.set_position(n)
                        }
                    });
                    if let Some(pb) = &pb {
                        pb.finish_and_clear();
                    }
                    match r.with_context(|| format!("warming {path}"))? {
                        Some(e) => println!("{path}: {} ({})", e.size, human_bytes(e.size)),
                        None => println!("{path}: no transforms (nothing to cache)"),
                    }
                }
            }
        }
    }
    Ok(0)
}

fn fsck(space: &Space) -> Result<i32> {
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Some(indicatif::ProgressBar::new(0))
    } else {
        None
    };
    let report = space.fsck(&|done, total| {
        if let Some(pb) = &pb {
            pb.set_length(total);
            pb.set_position(done);
        }
    })?;
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    for p in &report.meta_problems {
        println!("DAMAGED metadata: {p}");
    }
    for (id, reason, users) in &report.bad_chunks {
        println!("DAMAGED chunk {}: {reason}", id.to_hex());
        for u in users {
            println!("  used by {u}");
        }
    }
    println!(
        "checked {} chunks ({}); {} metadata problems, {} damaged chunks, {} orphan objects{}",
        report.chunks_checked,
        human_bytes(report.bytes_checked),
        report.meta_problems.len(),
        report.bad_chunks.len(),
        report.orphan_objects,
        if report.orphan_objects > 0 {
            " (left by interrupted writes; `spacectl gc` removes them)"
        } else {
            ""
        }
    );
    if report.dead_pack_bytes > 0 {
        println!(
            "{} in pack files belong to no live chunk or align segments to pages (gc rewrites packs that are mostly dead)",
            human_bytes(report.dead_pack_bytes)
        );
    }
    for p in &report.set_aside_logs {
        println!(
            "DAMAGED metadata: {} holds changes that could not be re-applied after a crash \
             (the daemon's log says which); remove it once inspected",
            p.display()
        );
    }
    if report.damaged() {
        println!("store is DAMAGED");
        Ok(6)
    } else {
        println!("store is clean");
        Ok(0)
    }
}

fn stats(space: &Space) -> Result<i32> {
    let s = space.store.meta.stats()?;
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    println!("files:             {}", s.files);
    println!("directories:       {}", s.directories);
    println!(
        "logical bytes:     {} ({})",
        s.logical_bytes,
        human_bytes(s.logical_bytes)
    );
    println!(
        "unique bytes:      {} ({})",
        s.unique_bytes,
        human_bytes(s.unique_bytes)
    );
    println!(
        "stored bytes:      {} ({})",
        s.stored_bytes,
        human_bytes(s.stored_bytes)
    );
    println!("chunks:            {}", s.chunks);
    println!(
        "unreferenced:      {} chunks (gc removes them)",
        s.unreferenced_chunks
    );
    println!(
        "dedup ratio:       {:.2}x",
        ratio(s.referenced_bytes, s.unique_bytes)
    );
    println!(
        "compression ratio: {:.2}x",
        ratio(s.unique_bytes, s.stored_bytes)
    );
    println!(
        "overall ratio:     {:.2}x",
        ratio(s.logical_bytes, s.stored_bytes)
    );
    Ok(0)
}

/// The spacefs binary: beside this one (same build), else from PATH.
fn spacefs_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("spacefs")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "spacefs".into())
}

fn mount(cli: &Cli, mountpoint: &Path, options: Option<&str>, foreground: bool) -> Result<i32> {
    let store = cli.store_dir()?;
    let mut cmd = std::process::Command::new(spacefs_binary());
    cmd.arg(&store).arg(mountpoint);
    let mut opts: Vec<String> = options
        .map(|o| o.split(',').map(String::from).collect())
        .unwrap_or_default();
    if let Some(p) = &cli.passphrase_file {
        opts.push(format!("passphrase_file={}", p.display()));
    }
    if let Some(k) = &cli.key_file {
        opts.push(format!("key_file={}", k.display()));
    }
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts.join(","));
    }
    if foreground {
        cmd.arg("-f");
    }
    let status = cmd.status().context("running spacefs")?;
    Ok(status.code().unwrap_or(1))
}

fn umount(mountpoint: &Path) -> Result<i32> {
    // fusermount3 works for unprivileged users; umount(8) for root when it is missing.
    for (prog, args) in [("fusermount3", vec!["-u"]), ("umount", vec![])] {
        match std::process::Command::new(prog)
            .args(&args)
            .arg(mountpoint)
            .status()
        {
            Ok(s) if s.success() => return Ok(0),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context(format!("running {prog}")),
        }
    }
    Err(anyhow!("could not unmount {}", mountpoint.display()))
}
