//! `spacectl`: the management CLI. Parses arguments, opens the store, calls [`Space`], and
//! turns errors into messages with context and stable exit codes (docs/CLI.md).

mod atomic_file;
mod commands;
mod output;
mod wasm_commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::error::SpaceError;
use crate::store::Unlock;

#[derive(Parser, Debug)]
#[command(name = "spacectl", version, about = "Manage a SPACE capsule store", long_about = None)]
pub struct Cli {
    /// The store directory.
    #[arg(long, global = true, env = "SPACE_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// File holding the passphrase of a protected key (else SPACE_PASSPHRASE).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Key file to use instead of the store's own.
    #[arg(long, global = true, env = "SPACE_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new store (in DIR, or --store).
    Init {
        dir: Option<PathBuf>,
        /// Protect the master key with a passphrase (from --passphrase-file or SPACE_PASSPHRASE).
        #[arg(long)]
        encrypt_key: bool,
    },
    /// Store a file (or stdin with `-`) as a capsule; prints its UUID.
    Put {
        file: String,
        /// Path in the store (default: /<file name>).
        #[arg(long = "as", value_name = "PATH")]
        dest: Option<String>,
        /// Policy YAML for the capsule (default: existing capsule's, else the directory's).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Create missing parent directories.
        #[arg(short, long)]
        parents: bool,
        /// Print only the UUID.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a capsule to stdout or a file, through its on-read transforms.
    Get {
        target: String,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The stored bytes, without on-read transforms.
        #[arg(long, conflicts_with = "view")]
        raw: bool,
        /// A named view from the capsule's policy (`views:`) instead of the default one.
        #[arg(long, value_name = "NAME")]
        view: Option<String>,
    },
    /// List a directory.
    Ls {
        #[arg(default_value = "/")]
        path: String,
        /// Long format: mode, owner, size, time, UUID.
        #[arg(short, long)]
        long: bool,
    },
    /// Show a capsule's or directory's metadata.
    Stat { target: String },
    /// Remove a capsule, symlink or empty directory (-r: a whole tree).
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Rename or move; refuses to replace an existing target unless --force.
    Mv {
        from: String,
        to: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Create a directory.
    Mkdir {
        path: String,
        #[arg(short, long)]
        parents: bool,
        /// Policy that capsules created under this directory inherit.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Show, set or check policies.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// The derived-output cache: materialized views of capsules.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Verify metadata and every stored chunk; exits non-zero on damage.
    Fsck,
    /// Remove unreferenced chunks and leftovers of interrupted writes.
    Gc,
    /// Logical vs stored bytes, dedup and compression ratios.
    Stats,
    /// Store WASM modules in the store and sign them.
    Module {
        #[command(subcommand)]
        action: ModuleAction,
    },
    /// Publisher keys: generate signing keys, trust or list public keys.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Run a policy's chain over a local file with the store's runtime (a dev loop).
    Transform {
        #[command(subcommand)]
        action: TransformAction,
    },
    /// Mount the store with spacefs (same as `spacefs STORE MOUNTPOINT -o ...`).
    Mount {
        mountpoint: PathBuf,
        /// Mount options, as for spacefs -o (e.g. allow_other,ro).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Option<String>,
        /// Stay in the foreground.
        #[arg(short, long)]
        foreground: bool,
    },
    /// Unmount a spacefs mount (pending writes are committed first).
    Umount { mountpoint: PathBuf },
    /// Show or change store settings (require_signatures, recompute_chunk_ids, chunk_cache_bytes,
    /// derived_cache_bytes).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModuleAction {
    /// Store a .wasm module as a capsule; prints its UUID and sha256.
    Add {
        file: PathBuf,
        /// Store path (default /wasm/<file name>).
        #[arg(long = "as", value_name = "PATH")]
        dest: Option<String>,
    },
    /// Sign a module with a publisher's secret key; prints the hex signature for
    /// `verification.signature`.
    Sign {
        module: PathBuf,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Generate a publisher signing key into FILE (mode 0600); prints the public key.
    Gen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Trust a publisher's public key (hex, or a file containing it) for module signatures.
    Trust { name: String, public_key: String },
    /// Stop trusting a publisher.
    Untrust { name: String },
    /// List trusted publishers.
    List,
}

#[derive(Subcommand, Debug)]
pub enum TransformAction {
    /// Run the chain of POLICY over FILE and write the output to stdout (or -o).
    Run {
        file: PathBuf,
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Which chain: the on-read one (default) or the on-write one.
        #[arg(long, value_enum, default_value = "on-read")]
        trigger: TriggerArg,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TriggerArg {
    OnRead,
    OnWrite,
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Print store.yaml.
    Show,
    /// Set a setting: require_signatures or recompute_chunk_ids (true|false), chunk_cache_bytes or derived_cache_bytes
    /// (sizes like 64MiB; derived_cache_bytes 0 turns the derived-output cache off).
    Set { key: String, value: String },
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Entries, bytes and hits of the cache, and its budget.
    Stats,
    /// Drop every cached view output and reclaim its chunks.
    Clear,
    /// Materialize views ahead of reads (every capsule under a directory), with progress.
    Warm {
        /// Capsules or directories (recursively).
        #[arg(required = true)]
        targets: Vec<String>,
        /// A named view instead of the default (on-read) one.
        #[arg(long, value_name = "NAME")]
        view: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyAction {
    /// Print the policy of a capsule or directory.
    Show { target: String },
    /// Attach a policy (YAML file, or - for stdin) to a capsule or directory.
    Set {
        path: String,
        file: Option<PathBuf>,
        /// Remove the policy instead (capsules fall back to defaults, directories stop passing one on).
        #[arg(long, conflicts_with = "file")]
        clear: bool,
    },
    /// Validate a policy file without a store.
    Check { file: PathBuf },
}

impl Cli {
    fn unlock(&self) -> anyhow::Result<Unlock> {
        let passphrase = match &self.passphrase_file {
            Some(f) => Some(
                std::fs::read(f)
                    .map_err(|e| anyhow::anyhow!("reading passphrase file {}: {e}", f.display()))?
                    .trim_ascii_end()
                    .to_vec(),
            ),
            None => std::env::var_os("SPACE_PASSPHRASE").map(|p| p.into_encoded_bytes()),
        };
        Ok(Unlock {
            passphrase,
            key_file: self.key_file.clone(),
        })
    }

    fn store_dir(&self) -> anyhow::Result<PathBuf> {
        self.store.clone().ok_or_else(|| {
            anyhow::anyhow!(UsageError(
                "no store given: pass --store DIR or set SPACE_STORE".into()
            ))
        })
    }
}

/// A usage problem found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match commands::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            // A closed output pipe is the reader's choice, not an error to report.
            if code != 141 {
                eprintln!("spacectl: error: {e:#}");
            }
            code
        }
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(se) = e.downcast_ref::<SpaceError>() {
        return se.exit_code();
    }
    if e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<crate::policy::PolicyError>().is_some()
    {
        return 2;
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return 141;
        }
    }
    1
}
