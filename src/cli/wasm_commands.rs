//! `spacectl module|key|transform|config`: managing WASM modules, publisher keys and settings.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};

use super::{Cli, ConfigAction, KeyAction, ModuleAction, TransformAction, TriggerArg, UsageError};
use crate::pipeline::transform::ChunkTransform;
use crate::policy::{ByteSize, Policy, TransformSpec, Trigger};
use crate::space::{PutOptions, Space};
use crate::store::{CONFIG_FILE, StoreConfig};
use crate::wasm::verify::{
    decode_signing_key, decode_verifying_key, encode_signing_key, encode_verifying_key,
    generate_signing_key, key_fingerprint, sha256, sign_module,
};
use crate::wasm::{NoCapsules, RuntimeConfig, TransformRuntime};

pub fn module(space: &Space, action: &ModuleAction) -> Result<i32> {
    match action {
        ModuleAction::Add { file, dest } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            if !bytes.starts_with(b"\0asm") {
                return Err(anyhow!(UsageError(format!(
                    "{} is not a WebAssembly binary",
                    file.display()
                ))));
            }
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dest = dest.clone().unwrap_or_else(|| format!("/wasm/{name}"));
            // Module capsules are stored as-is: never through a transform chain.
            let opts = PutOptions {
                policy: Some(Policy::default()),
                parents: true,
                ..Default::default()
            };
            let r = space.put(&mut &bytes[..], &dest, &opts, &|_| {})?;
            println!("{}", r.node.uuid);
            println!("sha256: {}", hex::encode(sha256(&bytes)));
            eprintln!(
                "stored module {} ({} bytes); use image: capsule://{} or capsule://{}",
                crate::space::display_path(&dest),
                bytes.len(),
                r.node.uuid,
                dest.trim_start_matches('/')
            );
            Ok(0)
        }
        ModuleAction::Sign { .. } => unreachable!("handled without a store"),
    }
}

pub fn sign(module: &Path, key: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("reading key file {}", key.display()))?;
    let sk =
        decode_signing_key(text.trim()).map_err(|e| anyhow!("key file {}: {e}", key.display()))?;
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    println!("{}", sign_module(&sk, &bytes));
    Ok(0)
}

pub fn key_gen(out: &Path) -> Result<i32> {
    let sk = generate_signing_key();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
    writeln!(f, "{}", encode_signing_key(&sk))?;
    f.sync_all()?;
    let vk = sk.verifying_key();
    println!("{}", encode_verifying_key(&vk));
    eprintln!(
        "wrote secret key to {} (keep it private); public key fingerprint {}",
        out.display(),
        key_fingerprint(&vk)
    );
    Ok(0)
}

fn save_config(space: &Space, config: &StoreConfig) -> Result<()> {
    config.write(&space.store.dir.join(CONFIG_FILE))?;
    Ok(())
}

pub fn key(space: &Space, action: &KeyAction) -> Result<i32> {
    let mut config = space.store.config.clone();
    match action {
        KeyAction::Gen { .. } => unreachable!("handled without a store"),
        KeyAction::Trust { name, public_key } => {
            let text = if Path::new(public_key).exists() {
                std::fs::read_to_string(public_key)
                    .with_context(|| format!("reading {public_key}"))?
            } else {
                public_key.clone()
            };
            let vk = decode_verifying_key(text.trim())
                .map_err(|e| anyhow!(UsageError(format!("public key for `{name}`: {e}"))))?;
            config
                .trusted_publishers
                .insert(name.clone(), encode_verifying_key(&vk));
            save_config(space, &config)?;
            eprintln!("trusting `{name}` ({})", key_fingerprint(&vk));
        }
        KeyAction::Untrust { name } => {
            if config.trusted_publishers.remove(name).is_none() {
                return Err(
                    crate::SpaceError::NotFound(format!("no trusted publisher `{name}`")).into(),
                );
            }
            save_config(space, &config)?;
        }
        KeyAction::List => {
            for (name, hex) in &config.trusted_publishers {
                let fp = decode_verifying_key(hex)
                    .map(|k| key_fingerprint(&k))
                    .unwrap_or_else(|e| e.to_string());
                println!("{name}\t{fp}\t{hex}");
            }
            if config.require_signatures {
                eprintln!("signatures are required for every module");
            }
        }
    }
    Ok(0)
}

pub fn config(space: &Space, action: &ConfigAction) -> Result<i32> {
    let mut config = space.store.config.clone();
    match action {
        ConfigAction::Show => print!("{}", serde_yaml::to_string(&config)?),
        ConfigAction::Set { key, value } => {
            match key.as_str() {
                "require_signatures" => {
                    config.require_signatures = value.parse().map_err(|_| {
                        anyhow!(UsageError(format!(
                            "require_signatures takes true or false, not `{value}`"
                        )))
                    })?
                }
                "recompute_chunk_ids" => {
                    config.recompute_chunk_ids = value.parse().map_err(|_| {
                        anyhow!(UsageError(format!(
                            "recompute_chunk_ids takes true or false, not `{value}`"
                        )))
                    })?
                }
                "chunk_cache_bytes" => {
                    config.chunk_cache_bytes = value
                        .parse::<ByteSize>()
                        .map_err(|e| anyhow!(UsageError(e)))?
                        .0
                }
                "derived_cache_bytes" => {
                    config.derived_cache_bytes = value
                        .parse::<ByteSize>()
                        .map_err(|e| anyhow!(UsageError(e)))?
                        .0
                }
                other => {
                    return Err(anyhow!(UsageError(format!(
                        "unknown setting `{other}` (settable: require_signatures, recompute_chunk_ids, chunk_cache_bytes, derived_cache_bytes)"
                    ))));
                }
            }
            save_config(space, &config)?;
        }
    }
    Ok(0)
}

/// `transform run`: the store's runtime when a store is given (capsule:// images, its trust
/// and artifacts), else a standalone runtime for file:// images.
pub fn transform(cli: &Cli, action: &TransformAction) -> Result<i32> {
    let TransformAction::Run {
        file,
        policy,
        trigger,
        output,
    } = action;
    let text = std::fs::read_to_string(policy)
        .with_context(|| format!("reading policy file {}", policy.display()))?;
    let policy =
        Policy::from_yaml(&text).with_context(|| format!("policy file {}", policy.display()))?;
    let want = match trigger {
        TriggerArg::OnRead => Trigger::OnRead,
        TriggerArg::OnWrite => Trigger::OnWrite,
    };
    let specs: Vec<TransformSpec> = policy
        .transform
        .iter()
        .filter(|t| t.trigger == want)
        .cloned()
        .collect();
    let mut chain: Box<dyn ChunkTransform> = if cli.store.is_some() {
        let space = super::commands::open(cli)?;
        space.open_chain(&specs, &format!("file {}", file.display()))?
    } else {
        let rt = TransformRuntime::new(RuntimeConfig::default(), Arc::new(NoCapsules))?;
        rt.open_chain(&specs)
            .map_err(|e| crate::SpaceError::Transform(format!("file {}: {e}", file.display())))?
    };
    let mut input =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut piece = vec![0u8; 1 << 20];
    let mut buf = Vec::new();
    let fail = |e| crate::SpaceError::Transform(format!("file {}: {e}", file.display()));
    loop {
        let n = crate::pipeline::transform::read_full(&mut input, &mut piece)?;
        buf.clear();
        if n == 0 {
            chain.finish(&mut buf).map_err(fail)?;
            out.write_all(&buf)?;
            break;
        }
        chain.process(&piece[..n], &mut buf).map_err(fail)?;
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(0)
}
